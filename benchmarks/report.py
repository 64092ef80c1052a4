"""What every benchmark script shares: its command-line options for timing runs, and writing its result."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def timing_options(ap: argparse.ArgumentParser, pipeline_help: str) -> None:
    """--quick, --pipeline, --set, --out and the hidden --worker of the scripts that time steps and runs."""
    ap.add_argument("--quick", action="store_true", help="few short chunks (a smoke test; rough figures)")
    ap.add_argument("--pipeline", action="store_true", help=pipeline_help)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="passed to each pipeline run (e.g. pipeline.niter=3001 for a shorter one)")
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    ap.add_argument("--worker", type=int, metavar="CHUNK", help=argparse.SUPPRESS)


def made_by(res: dict[str, Any]) -> str:
    """The sentence that says which command made a report, on what machine and under what load."""
    m = res["machine"]
    return (f"Made by `{res['command']}` on {m['cpu']} ({m['cores']} cores, OPENBLAS_NUM_THREADS="
            f"{m['openblas_threads']}, load average at start {m['load_average'][0]:.2f}), {m['date']}.")


def write(out: str | Path, name: str, res: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    """``<out>/<name>.json`` and ``.md``, each written atomically, and the table on stdout."""
    from olmp import atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / f"{name}.json", res)
    atomic.write_text(out / f"{name}.md", markdown(res))
    print(markdown(res))
