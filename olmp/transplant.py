"""Mask transplant: is a pruned model's accuracy limited by its masks or by its retraining?

One model's masks go onto another model's weights, and Caffe's solver retrains with the
masks frozen for the pipeline's retraining phase: the experiment's solver, its learning-rate
schedule picked up where OLMP stops pruning (solver iteration ``prune_stop_iter + 1``, fresh
momentum), the training minibatches the pipeline would read from there, and
``niter - prune_stop_iter`` steps. Pruned weights never reach the forward pass. Comparing
mask sources on the same weights, and weight sources under the same masks, separates the two.

The experiment's retraining levers apply here too (``--set retrain.average_last=5000``, ``--set
retrain.distill_weight=0.5``: the dense weights being retrained are the teacher), so a lever can be
judged on masks that no search of ours made, such as the released ones.

    olmp transplant --experiment lenet5 --masks M.caffemodel --weights W.caffemodel --out DIR [--set K=V ...]
    olmp transplant --table results/diagnosis      # mask-transplant.json and .md from the records
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from olmp import (
    atomic,
    averaging,
    caffe_bridge,
    caffe_run,
    distill,
    evaluate,
    prototxt,
    provenance,
    schemas,
    tables,
    train,
    weights,
)
from olmp.averaging import WeightAverage
from olmp.config import Experiment
from olmp.errors import OlmpError

TEST_EVERY = 1000  # solver steps between test-set points of the retraining curve


def masks_of(model: weights.Model | str | Path, layers: tuple[str, ...]) -> dict[str, list[np.ndarray]]:
    """A model's masks: the mask blobs of a 4-blob fork file, else its nonzero entries."""
    if not isinstance(model, weights.Model):
        model = weights.read_caffemodel(model)
    out = {}
    for n in layers:
        if n not in model.layers:
            raise OlmpError(f"no layer '{n}' to take masks from (file has: {', '.join(model.layers)})", model.path)
        lp = model.layers[n]
        out[n] = [(m != 0).astype(np.float32) for m in (lp.masks if lp.masks is not None else lp.blobs)]
    return out


def _set_iteration(solver: Any, iteration: int) -> None:
    """Put the solver at ``iteration`` with zero momentum (a SolverState restored through Caffe)."""
    pb = caffe_bridge.caffe_pb2()
    ss = pb.SolverState()
    ss.iter = iteration
    ss.current_step = 0
    for blobs in solver.net.params.values():
        for b in blobs:
            h = ss.history.add()
            h.shape.dim.extend(b.data.shape)
            h.data.extend(np.zeros(b.data.size, dtype=np.float32).tolist())
    caffe_bridge.restore_solver(solver, ss)


def retrain(exp: Experiment, masks_path: str | Path, weights_path: str | Path, progress: bool = True) -> dict[str, Any]:
    """Retrain ``weights_path`` under the frozen masks of ``masks_path``; return the record."""
    p = exp.pipeline
    start_iter, steps = p.prune_stop_iter + 1, p.niter - p.prune_stop_iter
    r = exp.retrain
    sp = caffe_run.solver_param(exp.solver, exp.seed, start_iter + steps)
    net_param = sp.net_param
    key = f"transplant {masks_path} on {weights_path}"
    if r.distills:  # the dense weights being retrained teach their masked selves
        sp = distill.student(sp, key)
    run = caffe_run.open_run(sp, exp.seed, exp.layers, weights_file=weights_path, source=exp.solver,
                             layers_source=exp.source)
    solver, net, test_net, layers = run.solver, run.net, run.test_net, run.layers
    donor = weights.read_caffemodel(prototxt.resolve_path(masks_path))  # read once: checked, then its masks
    weights.check_against_net(donor, net)
    masks = masks_of(donor, exp.layers)
    for n in exp.layers:
        layers.set_masks(n, masks[n])
    _set_iteration(solver, start_iter)
    run.replay(start_iter)  # the minibatches the pipeline read before its retraining phase
    images = run.test_images

    def test() -> float:
        with layers.masked():
            return evaluate.evaluate_net(test_net, images)["accuracy"]

    curve = [{"iteration": int(solver.iter), "test_accuracy": test()}]
    average = WeightAverage(net) if r.averages else None
    if r.distills:
        distill.activate(key, distill.teacher(net, net_param, weights_path, r, exp.source))
    t0 = time.perf_counter()
    try:
        for k in tqdm(range(steps), desc=f"transplant {Path(masks_path).stem} on {Path(weights_path).stem}",
                      unit="it", disable=not progress, mininterval=1.0):
            solver.step(1)
            why = train.divergence(net, exp.layers)
            if why:
                raise OlmpError(f"retraining diverged at step {k} ({why})", exp.solver)
            if average and averaging.due(steps - 1 - k, r):
                average.add(layers)
            if (k + 1) % TEST_EVERY == 0 or k + 1 == steps:
                curve.append({"iteration": int(solver.iter), "test_accuracy": test()})
    finally:
        distill.deactivate(key)
    levers: dict[str, Any] = {}
    if r.distills:
        levers["distillation"] = {"weight": r.distill_weight, "temperature": r.distill_temperature}
    if average:  # the final model is the mean; the curve's last point is the last iterate
        average.apply(layers)
        levers["averaging"] = {"snapshots": average.count, "last": r.average_last, "every": r.average_every,
                               "test_last_iterate": curve[-1]["test_accuracy"]}
    total, remaining = layers.total(), layers.remaining()
    return {
        **levers,
        "provenance": provenance.collect(),  # the convolution group (the build's arithmetic) among the rest
        "experiment": exp.source,
        "masks": str(masks_path),
        "weights": str(weights_path),
        "solver_iterations": [start_iter, start_iter + steps],
        "remaining": remaining,
        "ratio": total / max(remaining, 1),
        "test_before": curve[0]["test_accuracy"],
        "test_final": test() if average else curve[-1]["test_accuracy"],
        "test_best_over_curve": max(c["test_accuracy"] for c in curve),
        "curve": curve,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run(exp: Experiment, masks_path: str, weights_path: str, out: Path, progress: bool = True) -> dict[str, Any]:
    """``olmp transplant``: one record.json per (masks, weights) pair; a finished one is returned as is."""
    rec_path = Path(out) / "record.json"
    if rec_path.is_file():
        rec = read_record(rec_path)
        if (rec.get("masks"), rec.get("weights"), rec.get("experiment")) == (masks_path, weights_path, exp.source):
            return rec
        raise OlmpError("holds a transplant record of other inputs; choose another --out", out)
    atomic.check_target(out, folder=True)  # before the retraining, not after it
    atomic.check_target(rec_path)
    rec = retrain(exp, masks_path, weights_path, progress)
    atomic.write_json(rec_path, rec)  # makes the folder; a failed write leaves none
    return rec


def read_record(path: Path) -> dict[str, Any]:
    """A transplant record, checked (olmp.schemas.TransplantRecord): damaged is one line naming it."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OlmpError(f"unreadable transplant record ({exc})", path) from None
    schemas.check(schemas.TransplantRecord, rec, "transplant record", path)
    return rec


def levers_of(rec: dict[str, Any]) -> str:
    """The retraining levers a transplant record says it used; "-" for the plain retraining."""
    out = []
    if "distillation" in rec:
        out.append(f"distillation (weight {rec['distillation']['weight']:g}, T {rec['distillation']['temperature']:g})")
    if "averaging" in rec:
        a = rec["averaging"]
        out.append(f"averaging (last {a['last']}, every {a['every']}; last iterate "
                   f"{100 * a['test_last_iterate']:.2f}%)")
    return ", ".join(out) or "-"


def write_table(folder: str | Path) -> dict[str, Any]:
    """mask-transplant.json and .md from every ``*/record.json`` under ``folder``/transplant."""
    folder = Path(folder)
    rows = []
    for p in sorted((folder / "transplant").glob("*/record.json")):
        r = read_record(p)
        rows.append({"run": p.parent.name, **{k: r[k] for k in ("masks", "weights", "ratio", "test_before",
                                                                 "test_final", "test_best_over_curve")},
                     "levers": levers_of(r)})
    if not rows:
        raise OlmpError("no transplant records (*/record.json) found", folder / "transplant")
    atomic.write_json(folder / "mask-transplant.json", {"rows": rows})
    lines = tables.markdown(
        ["run", "masks from", "weights from", "retraining levers", "ratio", "test before retraining",
         "final test accuracy", "best over the curve (chosen on the test set)"],
        ([r["run"], f"`{r['masks']}`", f"`{r['weights']}`", r["levers"], f"{r['ratio']:.1f}x",
          f"{100 * r['test_before']:.2f}%", f"{100 * r['test_final']:.2f}%", f"{100 * r['test_best_over_curve']:.2f}%"]
         for r in rows))
    text = (folder / "mask-transplant.md").read_text() if (folder / "mask-transplant.md").is_file() else ""
    head, sep, tail = text.partition("<!-- table -->")
    table = "\n".join(lines) + "\n"
    if sep:  # keep the hand-written paragraphs around the generated table
        end = tail.find("<!-- /table -->")
        text = head + sep + "\n" + table + (tail[end:] if end >= 0 else "<!-- /table -->\n")
    else:
        text = "# Mask transplant\n\n<!-- table -->\n" + table + "<!-- /table -->\n"
    atomic.write_text(folder / "mask-transplant.md", text)
    return {"rows": len(rows)}
