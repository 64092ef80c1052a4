"""A test hook: ``OLMP_TEST_KILL_AT="phase:iteration"`` makes olmp SIGKILL itself there.

Only tests set it (tests/test_resume.py), to kill a real run at an exact point and
check that ``--resume`` still gives the uninterrupted result. Phases:

* ``sgd:N``: just after the solver step of pipeline iteration N;
* ``search:N``: in the search of iteration N, after its first generation;
* ``checkpoint:N``: halfway through writing the checkpoint that resumes at iteration N
  (its state.json half written in the temporary folder, before the rename).
"""

from __future__ import annotations

import os
import signal

ENV = "OLMP_TEST_KILL_AT"


def kill_at(phase: str, itr: int) -> None:
    """SIGKILL this process if the hook names this point; otherwise nothing."""
    if os.environ.get(ENV) == f"{phase}:{itr}":
        os.kill(os.getpid(), signal.SIGKILL)
