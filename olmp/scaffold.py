"""``olmp init``: an experiment file for a user's own Caffe net, with the paper's settings.

Copying a shipped experiment and editing its paths and layer names is where newcomers go
wrong, so the file is written from the net itself: its prunable layers, the
paths relative to the file's folder (README "Paths"), and the crate bounds, delta and step
sizes of the paper's closest setting (LeNet-5 for a net with convolutions, else
LeNet-300-100). Everything is checked before anything is written: the text goes through every
check ``olmp prune`` makes before its first step (the run is built in a throwaway folder, Caffe's
first step included), so a file ``olmp init`` writes is one ``olmp prune`` accepts.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmp import atomic, caffe_bridge, config, paths, prototxt, weights
from olmp.errors import OlmpError


@dataclass(frozen=True)
class Closest:
    """The paper's setting an own net borrows (scripts/experiments/lenet5.toml, lenet300100.toml)."""

    model: str
    bounds: tuple[float, float]
    delta: float
    sigma: str  # TOML text of search.sigma
    sigma_note: str


LENET5 = Closest("LeNet-5", (0.0, 20.0), 0.05, "[[0, 5.0], [10000, 0.5]]", "5, then 0.5 from iteration 10000")
LENET300100 = Closest("LeNet-300-100", (0.0, 10.0), 0.08, "5.0", "5 throughout")


@dataclass(frozen=True)
class Layer:
    """One prunable layer as the net builds it: its type and its blobs' shapes."""

    name: str
    type: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def weights(self) -> int:
        return math.prod(self.shapes[0])

    @property
    def biases(self) -> int:
        return sum(math.prod(s) for s in self.shapes[1:])

    @property
    def total(self) -> int:
        return self.weights + self.biases


def closest_setting(layers: list[Layer]) -> Closest:
    """Convolutions make a net LeNet-5-like; an all-inner-product net is LeNet-300-100-like."""
    return LENET5 if any(lay.type == "Convolution" for lay in layers) else LENET300100


def find_solver(net_file: Path) -> Path:
    """The one solver prototxt beside ``net_file`` that trains it, or an error asking for --solver."""
    found = []
    for cand in sorted(net_file.parent.glob("*.prototxt")):
        if cand.resolve() == net_file.resolve():
            continue
        msg = caffe_bridge.caffe_pb2().SolverParameter()
        try:
            prototxt._parse(cand, msg, "solver prototxt")
        except OlmpError:
            continue  # a net or anything else: not a solver
        if not msg.net:
            continue
        # the solver's net read olmp's way (repository root) or Caffe's (beside it): either names this net
        for target in (prototxt.resolve_path(msg.net), cand.parent / msg.net):
            if target.is_file() and target.samefile(net_file):
                found.append(cand)
                break
    if not found:
        raise OlmpError("no solver prototxt beside it trains this net; give one with --solver S "
                        "(its SGD settings drive the retraining while pruning)", net_file)
    if len(found) > 1:
        raise OlmpError(f"several solvers beside it train this net ({', '.join(p.name for p in found)}); "
                        "pick one with --solver", net_file)
    return found[0]


def _check_solver(solver_file: Path, net_file: Path, net_param: Any) -> None:
    """The solver must parse, run and train exactly this net (the pipeline builds everything from it)."""
    raw = caffe_bridge.caffe_pb2().SolverParameter()
    prototxt._parse(solver_file, raw, "solver prototxt")
    if raw.net and not Path(raw.net).is_absolute() and not prototxt.resolve_path(raw.net).is_file() \
            and (solver_file.parent / raw.net).is_file():
        raise OlmpError(f"its net '{raw.net}' is read relative to the olmp repository, not to the solver's "
                        f"folder (README \"Paths\"); write the absolute path {solver_file.parent / raw.net}",
                        solver_file)
    solver = prototxt.read_solver(solver_file)
    if solver.net_param != net_param:
        named = prototxt.resolve_path(raw.net) if raw.net else "its inline net_param"
        raise OlmpError(f"trains another net ({named}), not {net_file}; give the solver of this net", solver_file)


def prunable_layers(net_file: Path, weights_file: Path) -> tuple[Any, list[Layer], weights.Model]:
    """Parse the net and the weights; its prunable layers in the TEST phase, with their blobs' shapes
    (checked against the built nets by :func:`prune_checks`)."""
    net_param = prototxt.read_net(net_file)
    names = prototxt.prunable_layer_names(net_param)
    if not names:
        raise OlmpError(f"net has no prunable layer (types {', '.join(prototxt.PRUNABLE_TYPES)})", net_file)
    pb = caffe_bridge.caffe_pb2()
    for phase in (pb.TRAIN, pb.TEST):  # olmp reads logits at the loss and scores on the TEST data
        prototxt.require_loss(net_param, net_file, phase)
    model = weights.read_caffemodel(weights_file)
    in_test = {lay.name for lay in prototxt.layers_in_phase(net_param, pb.TEST)}
    names = [n for n in names if n in in_test]
    if not names:
        raise OlmpError("net has no prunable layer in its TEST phase", net_file)
    for n in names:
        if n not in model.layers:
            raise OlmpError(f"weights do not match the net: no layer '{n}' (file has: {', '.join(model.layers)})",
                            weights_file)
    types = {lay.name: lay.type for lay in net_param.layer}
    layers = [Layer(n, types[n], tuple(tuple(int(d) for d in b.shape) for b in model.layers[n].blobs)) for n in names]
    return net_param, layers, model


def prune_checks(exp_file: Path, model: weights.Model, net_file: Path) -> None:
    """What ``olmp prune`` checks before its first step, on the experiment file ``exp_file``: the file
    loaded, then the run built as prune builds it, in a throwaway folder (Caffe's build of the solver and
    its first step in a forked child, the layers, the weights loaded into the training net, the nets the
    search scores on); the weights also against the TEST net. A refusal naming ``exp_file``, a file
    nobody will see, names ``net_file`` instead."""
    from olmp import pipeline  # noqa: PLC0415  (the whole pipeline: only once everything else is checked)

    try:
        exp = config.load(exp_file)
        with tempfile.TemporaryDirectory(prefix="olmp-init-run-") as tmp:
            run = pipeline.Pipeline(exp, Path(tmp), progress=False)
            weights.check_against_net(model, run.test_net)
    except OlmpError as exc:
        msg = str(exc)
        if msg.startswith(f"{exp_file}: "):
            raise OlmpError(f"olmp prune would refuse the experiment written for it: {msg[len(str(exp_file)) + 2:]}",
                            net_file) from None
        raise


def _train_batch(net_param: Any) -> int:
    """Batch size of the TRAIN data layer: the minibatch the search judges candidates on."""
    for layer in prototxt.layers_in_phase(net_param, caffe_bridge.caffe_pb2().TRAIN):
        if layer.type == "Data":
            return int(layer.data_param.batch_size)
    return 0


def _name(net_param: Any, net_file: Path) -> str:
    """A name for the run folders (runs/<name>/...): the net's own name, else its file's."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", net_param.name or net_file.stem).strip("_.").lower()
    return slug or "mynet"


def _rel(path: Path, folder: Path) -> str:
    """``path`` as the experiment file will read it (paths.in_experiment_file)."""
    if folder.resolve() == paths.EXPERIMENTS_DIR:  # there, paths are read from the repository root
        folder = paths.REPO_ROOT
    return os.path.relpath(path.resolve(), folder.resolve())


def _c(text: object) -> str:
    """Text for a comment line: a newline in a path or layer name must not end the comment."""
    return " ".join(str(text).splitlines())


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def render(name: str, files: dict[str, str], layers: list[Layer], setting: Closest, batch: int,
           origin: dict[str, Path]) -> str:
    """The experiment file's text: the released settings, each with a line on what it does."""
    lo, hi = setting.bounds
    chunks = min(8, batch) if batch > 0 else 8  # no more parts than images in the batch
    judged = f"the current {batch}-image training minibatch" if batch else "the current training minibatch"
    # one prunable layer: a search can only select it (the paper's searches select at least 2)
    min_layers = "min_layers = 1             # a search of the one layer (the paper: 2)\n" if len(layers) == 1 else ""
    table = "\n".join(f"#   {_c(lay.name):<16} {lay.type:<13} {lay.weights:>10} + {lay.biases:>6} = {lay.total:>10}"
                      for lay in layers)
    return f"""\
# OLMP experiment written by `olmp init` for the net {_c(origin['net'])}
#   weights {_c(origin['weights'])}
#   solver  {_c(origin['solver'])}
# Paths below are relative to this file's folder. Run it with
#   olmp prune --experiment THIS_FILE --out run
#
# Prunable layers (weights + biases = total parameters):
{table}
#   {'all':<16} {'':<13} {sum(lay.weights for lay in layers):>10} + {sum(lay.biases for lay in layers):>6} = \
{sum(lay.total for lay in layers):>10}
#
# Settings: the paper's released ones for {setting.model}, the closest setting to this net
# ({'it has convolutions' if setting is LENET5 else 'inner-product layers only'}).
name = {_q(name)}
solver = {_q(files['solver'])}   # the retraining's SGD settings (lr policy, momentum)
net = {_q(files['net'])}   # the net that solver trains
weights = {_q(files['weights'])}   # the trained reference model to prune
layers = [{', '.join(_q(lay.name) for lay in layers)}]   # drop a layer to leave it dense
optimizer = "ncs"          # ncs | cmaes | sampling
seed = 1

[pipeline]
niter = 30001              # SGD iterations in all (pruning, then retraining with the masks)
prune_stop_iter = 15000    # searches and mask updates stop here; the rest retrains
initial_crate = 0.001      # every layer's crate before the first search
gamma = {{ Convolution = 2e-5, InnerProduct = 2e-4 }}   # how fast mask updates become rarer, per layer type
record_every = 500
checkpoint_every = 1000    # a killed run continues with --resume

[search]
every = 1000               # K: a search of the crates every K iterations
{min_layers}\
population = 10
budget = 1600              # evaluations per search
# Crates: layer l's threshold is T_l = max(mu_l + crate_l * sigma_l, 0), with mu_l and sigma_l the
# mean and standard deviation of |w| over the layer's weights and biases in the reference model;
# weights below T_l are pruned. crate 0 prunes those below the mean |w|; the upper bound caps how
# hard one layer can be pruned. The paper: [0, 10] for LeNet-300-100, [0, 20] for LeNet-5.
# If the searched crates (record.json: searches[].best_crates, one per searches[].layers) sit at
# the upper bound, raise it; lower it to keep every layer denser.
bounds = [{lo}, {hi}]
sigma = {setting.sigma}   # the search's step size: {setting.sigma_note}
# delta: the accuracy a candidate may lose, against the current model, on the batch it is judged on
# (here {judged}, as in the paper). Larger prunes more and loses more test accuracy;
# the paper: 0.08 for LeNet-300-100, 0.05 for LeNet-5. A small batch makes the accuracy coarse
# (steps of 1/batch): keep delta a few steps wide, or judge on a fixed held-out batch of training
# images with accuracy_on = "validation" and validation_images = 2000.
delta = {setting.delta}
constraint = "penalty"     # a candidate that loses more than delta gets infeasible_fitness
infeasible_fitness = 1.1
chunks = {chunks:<17} # the batch scored in {chunks} part(s), infeasible candidates stopped early (same decisions)
accuracy_on = "minibatch"  # the current training minibatch, as in the paper
"""


def init(net: str | Path, weights_path: str | Path, solver: str | Path | None, out: str | Path,
         force: bool = False) -> dict[str, Any]:
    """Check the net, weights and solver, write the experiment file ``out``; what ``olmp init`` prints."""
    out = Path(out)
    if out.exists() and not force:
        raise OlmpError("exists; pass --force to replace it", out)
    atomic.check_target(out)
    net_file = prototxt.resolve_path(net)
    weights_file = prototxt.resolve_path(weights_path)
    if not net_file.is_file():
        raise OlmpError("net prototxt not found", net_file)
    net_param, layers, model = prunable_layers(net_file, weights_file)
    solver_file = prototxt.resolve_path(solver) if solver is not None else find_solver(net_file)
    atomic.check_new(out, (net_file, weights_file, solver_file), force=True)  # never over an input, even with --force
    _check_solver(solver_file, net_file, net_param)
    setting = closest_setting(layers)
    name, batch = _name(net_param, net_file), _train_batch(net_param)
    origin = {"net": net_file, "weights": weights_file, "solver": solver_file}
    folder = out.absolute().parent
    text = render(name, {k: _rel(v, folder) for k, v in origin.items()}, layers, setting, batch, origin)
    # the same text with absolute paths must pass every check `olmp prune` makes before its first step
    with tempfile.TemporaryDirectory(prefix="olmp-init-") as tmp:
        probe = Path(tmp) / "exp.toml"
        probe.write_text(render(name, {k: str(v) for k, v in origin.items()}, layers, setting, batch, origin),
                         encoding="utf-8")
        prune_checks(probe, model, net_file)
    atomic.write_text(out, text)
    return {
        "out": str(out), "name": name, "closest": setting.model, "solver": str(solver_file),
        "bounds": list(setting.bounds), "delta": setting.delta,
        "layers": {lay.name: {"type": lay.type, "weights": lay.weights, "biases": lay.biases, "total": lay.total}
                   for lay in layers},
        "total": sum(lay.total for lay in layers),
    }
