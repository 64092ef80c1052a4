"""Which folders under a results tree hold runs made by ``olmp prune``: what a complete sweep file
lists, and what ``--from-results`` generates it from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from olmp import record
from olmp.errors import OlmpError


def prune_records(root: Path) -> Iterator[Path]:
    """Every record.json under ``root`` of a run made by ``olmp prune``.

    Left aside: ``best/`` (``olmp report``'s copy of another run, marked by its SOURCE file),
    transplant records (their ``experiment`` is a file name, not the settings) and anything that is
    not a finished run record (reference models keep train.json, benchmarks their own JSON).
    """
    for path in sorted(root.rglob(record.FILE)):
        if (path.parent / "SOURCE").is_file():
            continue
        try:
            data = json.loads(path.read_text())
            rec = record.RunRecord.from_dict(data, path)
        except (OSError, ValueError, OlmpError):
            continue
        if rec.finished and isinstance(rec.experiment.get("source"), str) and "progress" in data:
            yield path


def parse_source(source: str) -> tuple[str, tuple[str, ...]]:
    """A record's ``experiment.source`` ("FILE --set K=V ...") as (file name, overrides)."""
    head, *sets = source.split(" --set ")
    return Path(head.strip()).name, tuple(s.strip() for s in sets)
