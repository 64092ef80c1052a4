"""``olmp sweep FILE``: the driver. It submits each selected run as a Ray task, watches the run
folders, rewrites the status table, and regenerates the reports of the models it touched.

Ray does the scheduling. Whether the workers share the driver's file system is given
(``--no-shared-fs``) or found out at start by a probe task that looks for the driver's status file,
which carries the sweep's random id; where they do not, the driver owns its run folders and writes
what the tasks send back (olmp/sweep/ray_tasks.py).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from olmp import atomic, caffe_bridge, checkpoint, record, regenerate
from olmp.errors import OlmpError
from olmp.sweep.file import Experiments, Run, Sweep, shown
from olmp.sweep.ray_tasks import POLL_SECONDS, Task, read_folder, run_task, sees_marker, write_checkpoint
from olmp.sweep.status import Status, read_progress, status_table


def _start_ray(address: str | None, max_parallel: int | None) -> Any:
    """ray.init on the local cores (as many as --max-parallel), or joining the cluster at ``address``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a reproduction
    import ray  # noqa: PLC0415  (seconds to import, after the setting above; --dry-run never needs it)

    host, sep, port = (address or "").rpartition(":")
    if sep and host and port.isdigit() and "://" not in host:  # Ray itself retries a dead address for ever
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as exc:
            raise OlmpError(f"cannot reach the Ray cluster ({exc.strerror or exc}); is `ray start --head` "
                            "running there?", address) from None
    # runs at once share the cores: each gets its share of OpenMP threads (the results do not depend on
    # the count, only the speed: Caffe patch 0012); oversubscribed threads wait for each other
    share = max(1, caffe_bridge.usable_cores() // max(1, max_parallel or caffe_bridge.usable_cores()))
    env = {"env_vars": {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(share))}}
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                          "runtime_env": env}
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=max_parallel or os.cpu_count() or 1, **kw)
    except Exception as exc:  # noqa: BLE001  (Ray's errors are many kinds; each is one line here)
        raise OlmpError(f"Ray did not start: {type(exc).__name__}: {exc}", address) from None
    return ray


def run(sweep: Sweep, only: str | None = None, max_parallel: int | None = None, address: str | None = None,
        gpu: bool = False, shared_fs: bool | None = None, status_file: str | Path | None = None,
        report: bool = True, say: Callable[[str], None] = print) -> int:
    """Run the selected runs as Ray tasks; 0 when every one finished, 2 when any failed."""
    runs = sweep.select(only)
    exps = Experiments(sweep)
    loaded = {r.out: exps(r) for r in runs}  # every file read and checked before Ray starts
    status_path = Path(status_file) if status_file else sweep.root / "sweeps" / f"{sweep.name}-status.md"
    atomic.check_target(status_path)
    for r in runs:
        atomic.check_target(sweep.folder(r), folder=True)
    statuses = {r.out: Status(r, loaded[r.out].pipeline.niter) for r in runs}
    started, token = time.time(), uuid.uuid4().hex

    def write_status() -> None:
        atomic.write_text(status_path, status_table(sweep, list(statuses.values()), started, token))

    ray = _start_ray(address, max_parallel)
    marker = status_path.resolve()
    locks: list[checkpoint.RunLock] = []
    try:
        write_status()  # also the marker a probe task looks for
        if shared_fs is None:
            shared_fs = bool(ray.get(ray.remote(num_cpus=0)(sees_marker).remote(str(marker), token)))
        mirror = None
        if not shared_fs:
            from ray.util.queue import Queue  # noqa: PLC0415  (Ray: imported only once it runs)

            mirror = Queue(actor_options={"num_cpus": 0})
            for r in runs:  # the driver owns its folders; the tasks work in their own
                locks.append(checkpoint.RunLock(sweep.folder(r)))
                checkpoint.clean(sweep.folder(r))
        where = f"the Ray cluster at {address}" if address else f"local Ray ({max_parallel or os.cpu_count()} cores)"
        say(f"sweep {sweep.name}: {len(runs)} run{'s' if len(runs) > 1 else ''} on {where}, "
            f"{'shared' if shared_fs else 'no shared'} file system; status in {shown(status_path)}")
        # a fresh worker process per run (max_calls=1), as `olmp prune` would have: Caffe's first net of a
        # process is probed in a forked child, and no run inherits another's Caffe state
        remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=2, max_calls=1)(run_task)
        queue = list(runs)
        window = max_parallel if address and max_parallel else len(runs)  # local: Ray's num_cpus limits
        pending: dict[Any, Run] = {}
        failed: list[str] = []
        while queue or pending:
            while queue and len(pending) < window:
                r = queue.pop(0)
                folder = sweep.folder(r)
                task = Task(out=r.out, folder=str(folder.resolve()), exp=loaded[r.out], shared=shared_fs,
                            marker=str(marker), token=token, gpu=gpu, mirror=mirror,
                            files={} if shared_fs else read_folder(folder))
                pending[remote.remote(task)] = r
                statuses[r.out].state = "submitted"
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            changed = _drain(mirror, sweep, statuses)
            for ref in done:
                r = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001  (a crashed worker: its run fails, the sweep goes on)
                    res = {"out": r.out, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"}
                _finish(sweep, r, res, statuses[r.out], failed, say)
                changed = True
            for s in statuses.values():
                if s.state in ("submitted", "running"):
                    p = read_progress(sweep.folder(s.run))
                    if p and p.get("iteration") != s.iteration:
                        s.state, s.iteration = "running", int(p["iteration"])
                        s.ratio, s.test = p.get("ratio"), p.get("test_accuracy")
                        say(f"{s.run.out}: iteration {s.iteration}/{s.niter}, "
                            f"{s.ratio or 0:.1f}x, test {s.test or 0:.4f}")
                        changed = True
            if changed:
                write_status()
        write_status()
    finally:
        for lock in locks:
            lock.release()
        ray.shutdown()
    ok = [statuses[r.out].state == "done" for r in runs]
    say(f"sweep {sweep.name}: {sum(ok)} of {len(runs)} runs done" + (f", {len(failed)} failed" if failed else ""))
    reported = _report(sweep, [r for r, good in zip(runs, ok) if good]) if report and any(ok) else True
    for line in failed:
        print(f"olmp: error: {line}", file=sys.stderr)
    return 2 if failed or not reported else 0


def _drain(mirror: Any, sweep: Sweep, statuses: dict[str, Status]) -> bool:
    """Write the checkpoints the workers sent (not shared file system) into the driver's folders."""
    if mirror is None:
        return False
    got = False
    while not mirror.empty():
        out, files = mirror.get(block=False)
        if statuses[out].state in ("submitted", "running"):  # a late one after the result is dropped
            write_checkpoint(sweep.folder(statuses[out].run), files)
            got = True
    return got


def _finish(sweep: Sweep, r: Run, res: dict[str, Any], s: Status, failed: list[str],
            say: Callable[[str], None]) -> None:
    """A task's result: its files written (not shared), its status and line."""
    folder = sweep.folder(r)
    if "error" in res:
        s.state, s.note = "failed", res["error"]
        failed.append(res["error"])
        say(f"{r.out}: failed: {res['error']}")
        return
    files = res.get("files")
    if files is not None:  # not shared: the finished folder, as the worker left it
        for name in ("pruned.caffemodel", record.FILE, *sorted(set(files) - {"pruned.caffemodel", record.FILE})):
            target = folder / name
            if name in files and not (target.is_file() and target.read_bytes() == files[name]):
                atomic.write_bytes(target, files[name])  # a finished run's files are rewritten only if new
        checkpoint.remove(folder)
    s.state, s.iteration, s.ratio, s.test = "done", s.niter - 1, res["ratio"], res["test"]
    s.note = res["how"]
    say(f"{r.out}: done ({res['how']}): {res['ratio']:.1f}x, test {res['test']:.4f}")


def _report(sweep: Sweep, runs: Sequence[Run]) -> bool:
    """The reports (``olmp report`` and ``olmp compare``'s) of the models the runs belong to
    (``root/<model>/``); False if one failed (it said why)."""
    return regenerate.models(sorted({sweep.root / Path(r.out).parts[0] if len(Path(r.out).parts) > 1 else sweep.root
                                     for r in runs}))
