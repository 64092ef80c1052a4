"""Run ``olmp`` and SIGKILL it at an exact point: ``python tests/killpoints.py PHASE:N ARGS...``.

tests/test_resume.py kills real runs here and checks that ``--resume`` gives the uninterrupted
result. The points are put in from outside the package (nothing under olmp/ exists for tests):

* ``sgd:N``: just after the solver step of pipeline iteration N;
* ``search:N``: in the search of iteration N, after its first generation;
* ``checkpoint:N``: halfway through writing the checkpoint that resumes at iteration N
  (its state.json half written in the temporary folder, before the rename).
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
from typing import Any


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(owner: Any, name: str, check: Any) -> None:
    """Wrap ``owner.name`` so that ``check(*args)`` runs after it."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        check(*args, **kwargs)
        return out

    setattr(owner, name, wrapped)


def install(point: str) -> None:
    phase, _, at = point.partition(":")
    n = int(at)
    if phase == "sgd":
        from olmp.pipeline import Pipeline

        _after(Pipeline, "sgd_step", lambda self, itr: itr == n and _kill())
    elif phase == "search":
        from olmp.policies import olmp as olmp_policy
        from olmp.search.base import Optimizer

        searching = {"itr": None}
        search = olmp_policy.search_crates

        def search_crates(exp: Any, itr: int, *args: Any, **kwargs: Any) -> Any:
            searching["itr"] = itr
            return search(exp, itr, *args, **kwargs)

        olmp_policy.search_crates = search_crates
        _after(Optimizer, "tell", lambda *a, **k: searching["itr"] == n and _kill())
    elif phase == "checkpoint":
        from olmp import checkpoint

        saving = {"next_itr": None}
        save = checkpoint.save

        def save_noting(out: Any, solver: Any, mask_state: Any, state: dict, arrays: Any = None) -> None:
            saving["next_itr"] = state["next_itr"]
            save(out, solver, mask_state, state, arrays)

        def open_halfway(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            fh = builtins.open(file, mode, *args, **kwargs)
            if os.path.basename(str(file)) != "state.json" or "w" not in mode or saving["next_itr"] != n:
                return fh
            write = fh.write

            def half_then_kill(text: str) -> int:
                write(text[: len(text) // 2])
                fh.flush()
                _kill()
                return 0

            fh.write = half_then_kill
            return fh

        checkpoint.save = save_noting
        checkpoint.open = open_halfway  # the module's own open(), not the builtin's
    else:
        raise SystemExit(f"killpoints: unknown phase {phase!r} (sgd, search or checkpoint)")


if __name__ == "__main__":
    install(sys.argv[1])
    from olmp.cli import main

    sys.exit(main(sys.argv[2:]))
