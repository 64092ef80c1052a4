"""Opening a Caffe run: the one place a solver, its nets, the masks and the data replay are made.

Every run of this package (the pipeline, a mask transplant, the benchmarks, the CaffeNet speed
script) trains through Caffe's own solver on W*M and tests the masked model itself, so each opens
Caffe the same way:

    the solver prototxt with our settings (seeded; Caffe never tests, prints or snapshots on its own)
    Caffe's random seed, then the solver, its TRAIN net and its TEST net sharing the weights
    the reference weights, checked against the net
    mu_l, sigma_l of every prunable layer, from those weights
    the masks of the prunable layers, registered on the solver
    replay(n): the minibatches n solver steps would have read, so a run can start mid-schedule
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmp import caffe_bridge, evaluate, prototxt, weights
from olmp.adjusting import MaskedLayers
from olmp.errors import OlmpError
from olmp.thresholds import LayerStats, layer_stats

NEVER = 2**31 - 1  # Caffe's test_interval for "never": the package tests W*M itself


def solver_param(solver: Any, seed: int, max_iter: int | None = None, snapshot_prefix: Path | None = None) -> Any:
    """The solver's settings for a run of ours (``solver``: a prototxt path or a SolverParameter, edited).

    Caffe would test the dense W and snapshot on its own schedule; the package does both itself."""
    sp = prototxt.read_solver(solver) if isinstance(solver, (str, Path)) else solver
    sp.random_seed = seed
    sp.test_interval = NEVER
    sp.test_initialization = False
    sp.display = 0
    sp.snapshot = 0
    if max_iter is not None:
        sp.max_iter = max_iter
    if snapshot_prefix is not None:  # solver states for checkpoints, written when the run asks
        sp.snapshot_format = caffe_bridge.caffe_pb2().SolverParameter.BINARYPROTO
        sp.snapshot_prefix = str(snapshot_prefix)
    return sp


def make_solver(sp: Any, seed: int, source: str | Path | None = None) -> Any:
    """Caffe's solver, its random generator seeded first (the data order and any random layer follow it)."""
    caffe_bridge.set_random_seed(seed)
    try:
        return caffe_bridge.make_solver(sp, source=source)
    except caffe_bridge.CaffeError as exc:
        raise OlmpError(str(exc)) from None


@dataclass
class CaffeRun:
    """A live run: the solver, its nets sharing the weights, and the masks of the prunable layers."""

    solver: Any
    net: Any  # the TRAIN net
    test_net: Any  # the TEST net (the test set), sharing the TRAIN net's weights
    net_param: Any  # the solver's NetParameter
    test_images: int
    types: dict[str, str]  # layer name -> Caffe type
    layers: MaskedLayers
    stats: dict[str, LayerStats]  # mu_l, sigma_l of the weights loaded at opening (the reference)
    reference: weights.Model | None  # the weights file loaded at opening

    @property
    def data_layer(self) -> str:
        return str(self.net._layer_names[0])

    def replay(self, steps: int) -> None:
        """Read the minibatches ``steps`` solver steps would read (the data layer only)."""
        for _ in range(steps):
            self.net.forward(end=self.data_layer)


def open_run(sp: Any, seed: int, layers: list[str] | tuple[str, ...], *, weights_file: str | Path | None,
             straight_through: bool = True, source: str | Path | None = None,
             layers_source: str | Path | None = None) -> CaffeRun:
    """Open a run of solver settings ``sp`` (see ``solver_param``); ``source`` names the solver in errors,
    ``layers_source`` the file that lists ``layers`` (an experiment)."""
    solver = make_solver(sp, seed, source)
    net, test_net = solver.net, solver.test_nets[0]
    test_net.share_with(net)  # Caffe only shares inside its own Test(); we test ourselves
    types = {n: lay.type for n, lay in zip(net._layer_names, net.layers)}
    for name in layers:
        if name not in types:
            raise OlmpError(f"unknown layer '{name}' (net has {', '.join(net.params)})", layers_source)
        if types[name] not in prototxt.PRUNABLE_TYPES:
            raise OlmpError(f"layer '{name}' is a {types[name]}, not Convolution/InnerProduct", layers_source)
    reference = weights.load_weights(net, prototxt.resolve_path(weights_file)) if weights_file else None
    stats = {n: layer_stats(*([b.data for b in net.params[n]][:2] + [None])[:2]) for n in layers}
    masked = MaskedLayers(net, layers, straight_through=straight_through)
    if layers:  # no prunable layers (a plain baseline): Caffe's own step, no callbacks
        masked.attach(solver)
    return CaffeRun(solver, net, test_net, sp.net_param, evaluate.test_set_size(sp.net_param), types, masked,
                    stats, reference)
