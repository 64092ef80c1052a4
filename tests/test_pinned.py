"""A pinned short run gives the same weights, bit for bit, as the code that made the pin.

``tests/pinned/*.json`` holds, per run, the SHA-256 of every parameter blob of ``pruned.caffemodel``
(in layer order; the file itself also names the data folder, which moves with the checkout) and
the CPU model that made it. Floating-point order differs between CPU models, so the bit-for-bit
check runs on that CPU model; elsewhere the run must still land within a tolerance of the pin.
Regenerate a pin only after a deliberate change of results: ``python tests/test_pinned.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_olmp

PINS = REPO / "tests" / "pinned"
REFERENCE = REPO / "results" / "references" / "lenet300100" / "model.caffemodel"
SHORT = ["--set", "pipeline.niter=3001", "--set", "pipeline.prune_stop_iter=2000", "--set", "pipeline.checkpoint_every=700"]
RUNS = {  # name -> olmp prune arguments (a short LeNet-300-100 run from the committed reference)
    "lenet300100-ncs-seed7": ["--experiment", "lenet300100", "--seed", "7"],
    "lenet300100-released-seed961449": ["--experiment", "lenet300100_released", "--seed", "961449"],
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def fingerprint(run: Path) -> dict:
    from olmp import weights

    model = weights.read_caffemodel(run / "pruned.caffemodel")
    blobs = hashlib.sha256()
    for name, layer in model.layers.items():
        blobs.update(name.encode())
        for b in layer.blobs:
            blobs.update(b.tobytes())
    rec = json.loads((run / "record.json").read_text())
    return {"blobs_sha256": blobs.hexdigest(), "ratio": rec["final"]["ratio"],
            "test_accuracy": rec["final"]["test"]["accuracy"], "searches": len(rec["searches"]), "cpu": cpu_model()}


def prune(name: str, out: Path) -> dict:
    r = run_olmp("prune", *RUNS[name], "--weights", str(REFERENCE), *SHORT, "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return fingerprint(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_pinned_run_is_unchanged(name: str, tmp_path: Path) -> None:
    pin = json.loads((PINS / f"{name}.json").read_text())
    got = prune(name, tmp_path / name)
    if got["cpu"] == pin["cpu"]:
        assert got == pin
    else:  # another CPU model: another floating-point order; the same run within a tolerance
        assert got["searches"] == pin["searches"]
        assert got["ratio"] == pytest.approx(pin["ratio"], rel=0.15)
        assert got["test_accuracy"] == pytest.approx(pin["test_accuracy"], abs=0.005)


if __name__ == "__main__":  # regenerate the pins from a folder of finished runs, or by running them
    import tempfile

    src = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(RUNS):
            fp = fingerprint(src / name) if src else prune(name, Path(tmp) / name)
            (PINS / f"{name}.json").write_text(json.dumps(fp, indent=1) + "\n")
            print(name, fp)
