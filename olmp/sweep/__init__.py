"""``olmp sweep``: many ``olmp prune`` runs listed in one file, run as Ray tasks.

A sweep file (TOML) says how each run folder is made: its experiment, optimizer, seed, reference
weights, ``--set`` overrides and output folder. ``sweeps/paper.toml`` lists every committed run
under ``results/``; it is generated from the records (:func:`from_results`) and checked against them
(:func:`plan`, ``--dry-run``), so a drift between the two is caught.

Each run is one Ray task calling the library's ``pipeline.prune(exp, out, resume=True)``: a finished
run is returned as it is, an interrupted one resumes from its checkpoint, and a folder made with other
settings is refused exactly as ``olmp prune`` refuses it. Ray does the scheduling; the driver only
submits, watches the run folders and writes the status table.

One module per job: ``file`` (the sweep file), ``records`` (which folders hold prune runs),
``generate`` (``--from-results``), ``planning`` (``--dry-run``), ``ray_tasks`` (what a worker runs,
with or without a shared file system), ``status`` (the status table) and ``driver`` (the sweep itself).
"""

from __future__ import annotations

from olmp.sweep.driver import run
from olmp.sweep.file import RUN_KEYS, TOP_KEYS, Experiments, Run, RunEntry, Sweep, SweepFile, read
from olmp.sweep.generate import from_results, write_from_results
from olmp.sweep.planning import Row, describe, plan
from olmp.sweep.ray_tasks import (
    POLL_SECONDS,
    Task,
    read_checkpoint,
    read_folder,
    run_task,
    sees_marker,
    write_checkpoint,
)
from olmp.sweep.records import parse_source, prune_records
from olmp.sweep.status import Status, read_progress, status_table

__all__ = [
    "POLL_SECONDS", "RUN_KEYS", "TOP_KEYS", "Experiments", "Row", "Run", "RunEntry", "Status", "Sweep", "SweepFile",
    "Task", "describe", "from_results", "parse_source", "plan", "prune_records", "read", "read_checkpoint",
    "read_folder", "read_progress", "run", "run_task", "sees_marker", "status_table", "write_checkpoint",
    "write_from_results",
]
