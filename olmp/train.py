"""Training from scratch with Caffe's own solver (the reference models)."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from olmp import atomic, caffe_bridge, caffe_run, evaluate, prototxt, weights
from olmp.errors import OlmpError

CHUNK = 100  # solver steps between progress updates
WEIGHT_LIMIT = 1e8  # |w| beyond this means divergence: stop before a NaN reaches Caffe
# a blob's sum of squares below this proves every |w| < WEIGHT_LIMIT: any |w| >= 1e8 puts a term >= 1e16 in it
SQUARES_LIMIT = WEIGHT_LIMIT**2 / 10


def divergence(net: Any, layers: Any = None) -> str | None:
    """What diverged in the last step (loss, max |w| of ``layers`` or all), or None.

    Checked after every step: a NaN weight must never reach the next forward, since Caffe's
    max-pool backward then writes out of bounds. One BLAS pass per blob decides the usual case:
    the sum of squares is NaN or inf when any weight is, and never below its largest term
    (adding non-negative floats never rounds below an addend). Only a sum at or over
    SQUARES_LIMIT takes the exact max/min check, which also names the largest |w|.
    """
    loss = float(net.blobs["loss"].data)
    names = list(net.params) if layers is None else layers
    blobs = [b.data.reshape(-1) for n in names for b in net.params[n]]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing square goes to the exact check
        if math.isfinite(loss) and all(float(w @ w) < SQUARES_LIMIT for w in blobs):
            return None
    each = [max(float(w.max()), -float(w.min())) for w in blobs]
    big = math.nan if any(math.isnan(x) for x in each) else max(each)  # a NaN in any blob, not only the first
    if math.isfinite(loss) and big < WEIGHT_LIMIT:
        return None
    return f"loss {loss}, max |w| {big:.3g}"


def chance(accuracy: float, images: int, classes: int | None) -> bool:
    """Whether a test accuracy is no better than guessing among ``classes``: within two standard
    deviations of 1/classes over ``images`` guesses (0.106 for MNIST's 10 classes and 10,000 images)."""
    if not classes or classes < 2 or images <= 0:
        return False
    p = 1.0 / classes
    return accuracy <= p + 2.0 * math.sqrt(p * (1 - p) / images)


def check_outputs(out: Path, solver: Path | None = None, force: bool = False) -> None:
    """``out`` must be (or become) a folder where model.caffemodel and train.json can be written: new
    ones, unless ``force`` replaces them; never the solver or its net."""
    atomic.check_target(out, folder=True)
    net = None
    if solver is not None:
        raw = caffe_bridge.caffe_pb2().SolverParameter()
        with contextlib.suppress(OlmpError):  # read_solver reports it
            prototxt._parse(solver, raw, "solver prototxt")
        net = prototxt.resolve_path(raw.net) if raw.net else None
    for name in ("model.caffemodel", "train.json"):
        atomic.check_target(out / name)
        atomic.check_new(out / name, (solver, net), force)


def train(
    solver_path: str | Path,
    iters: int | None = None,
    out: str | Path | None = None,
    seed: int = 1,
    progress: bool = True,
    force: bool = False,
    require_progress: bool = False,
) -> dict[str, Any]:
    """Train, evaluate on the test set, save ``model.caffemodel`` and ``train.json`` (replacing
    existing ones only with ``force``). With ``require_progress`` (``olmp train``), training that
    left every weight as it was, or ends at chance accuracy, is an error once both files are written."""
    if not 0 <= seed < 2**31:  # Caffe takes the seed in 32 bits
        raise OlmpError(f"--seed must be in [0, {2**31 - 1}], got {seed}")
    solver_path = prototxt.resolve_path(solver_path)
    out = Path(out) if out else Path("runs") / "train" / solver_path.stem
    check_outputs(out, solver_path, force)  # before the training, not after it
    sp = prototxt.read_solver(solver_path)
    if iters is None and not 0 < sp.max_iter < 2**31:  # the solver's setting, not an option the user gave
        raise OlmpError(f"max_iter must be in [1, {2**31 - 1}] (or give --iters), got {sp.max_iter}", solver_path)
    iters = int(iters if iters is not None else sp.max_iter)
    if not 0 < iters < 2**31:  # Caffe counts iterations in an int
        raise OlmpError(f"--iters must be in [1, {2**31 - 1}], got {iters}")
    solver = caffe_run.make_solver(caffe_run.solver_param(sp, seed, iters), seed, source=solver_path)
    initial = [b.data.copy() for blobs in solver.net.params.values() for b in blobs] if require_progress else []
    start = time.perf_counter()
    curve = []
    with tqdm(total=iters, desc=f"train {solver_path.stem}", unit="it", disable=not progress) as bar:
        done = 0
        while done < iters:
            n = min(CHUNK, iters - done)
            for _ in range(n):  # one step at a time, each checked (the same steps as solver.step(n))
                solver.step(1)
                done += 1
                why = divergence(solver.net)
                if why:
                    raise OlmpError(f"training diverged at iteration {done} ({why}); lower base_lr in the solver",
                                    solver_path)
            loss = float(solver.net.blobs["loss"].data)
            curve.append({"iter": done, "loss": loss})
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(n)
    seconds = time.perf_counter() - start
    test_net = solver.test_nets[0]
    test_net.share_with(solver.net)  # Caffe shares weights only inside its own Test()
    test = evaluate.evaluate_net(test_net, evaluate.test_set_size(sp.net_param), solver_path)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        weights.save_net(solver.net, out / "model.caffemodel", sp.net_param, caffe_bridge.caffe_pb2().TRAIN)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # leave no empty folder behind a failed save
        raise
    record = {
        "solver": str(solver_path.relative_to(prototxt.resolve_path("."))
                      if solver_path.is_relative_to(prototxt.resolve_path(".")) else solver_path),
        "iters": iters,
        "seed": seed,
        "device": "cpu" if caffe_bridge.gpu_device() is None else f"gpu{caffe_bridge.gpu_device()}",
        "train_seconds": round(seconds, 2),
        "test": test,
        "loss_curve": curve,
    }
    atomic.write_json(out / "train.json", record)
    if require_progress:
        now = [b.data for blobs in solver.net.params.values() for b in blobs]
        if now and all(np.array_equal(a, b) for a, b in zip(initial, now)):
            raise OlmpError(f"training left every weight as it was (a zero learning rate or lr_mult?); "
                            f"the model is kept in {out} for inspection", solver_path)
        classes = prototxt.loss_classes(sp.net_param, caffe_bridge.caffe_pb2().TEST)
        if chance(test["accuracy"], test["images"], classes):
            raise OlmpError(f"training made no progress: test accuracy {test['accuracy']:.4f} is chance level for "
                            f"{classes} classes; the model is kept in {out} for inspection", solver_path)
    return {"model": str(out / "model.caffemodel"), **{k: record[k] for k in ("iters", "train_seconds", "test")}}
