"""One crate search (reference doc §3): the selected layers' crates, the others fixed.

    x0 = the selected layers' current crates
    ask/tell the optimizer until its budget is spent; a candidate's fitness is the model's
      size with its crates, or ``infeasible_fitness`` when its accuracy on the evaluation
      batch falls more than delta below the current model's ("penalty"), or the raw size
      plus the constraint violation for pycma's augmented Lagrangian ("al")
    apply the best crates (the mode decides when: olmp/modes.py)

The OLMP policy (olmp/policies/olmp.py) calls it every K iterations; the returned dict is the
search's entry in the run record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from olmp.adjusting import MaskedLayers
from olmp.candidate import Chunk, Evaluation
from olmp.modes import MODES
from olmp.search import make_optimizer
from olmp.thresholds import LayerStats

if TYPE_CHECKING:
    from olmp.config import Experiment


@dataclass
class Scoring:
    """Where candidates are scored, in this process: the evaluation net and its chunk copies (runs, not
    candidates, are spread over cores: worker processes per population did not pay on 2 cores)."""

    net: Any
    chunks: list[Chunk]


def fitness(evals: Sequence[Evaluation], constraint: str, infeasible_fitness: float) -> list[float]:
    """The value the optimizer minimises: with "penalty" infeasible candidates get a fixed worst value."""
    if constraint == "penalty":
        return [e.size if e.feasible else infeasible_fitness for e in evals]
    return [e.size for e in evals]  # "al": the optimizer reads the violations itself


def search_crates(
    exp: Experiment,
    itr: int,
    selected: list[str],
    crates: dict[str, float],
    layers: MaskedLayers,
    stats: dict[str, LayerStats],
    scoring: Scoring,
    draws: Any,
) -> dict[str, Any]:
    """Search the crates of ``selected``, starting from ``crates`` (updated in place); return the record entry."""
    s = exp.search
    mode = MODES[exp.mode]
    t0 = time.perf_counter()
    seed, shared_rng = draws.for_search()
    x0 = np.array([crates[n] for n in selected])
    opt = make_optimizer(exp.optimizer, x0, s.sigma_at(itr), s.bounds, s.population, s.budget, seed,
                         rng=shared_rng, constraint=s.constraint, **mode.optimizer_options)
    evaluator = mode.evaluator(scoring.net, layers, stats, selected, s.delta, crates,
                                                   chunks=scoring.chunks)
    size_before = layers.size()
    trace = []
    with evaluator.session():
        margin = evaluator.begin(opt, x0, s.infeasible_fitness)
        while not opt.stop():
            xs = opt.ask()
            if not xs:
                break
            evals = [evaluator(x) for x in xs]
            opt.tell(xs, fitness(evals, s.constraint, s.infeasible_fitness), violations=[-e.margin for e in evals])
            res = opt.result
            trace.append([evaluator.evaluations, None if res.xbest is None else float(res.fbest)])
        res = opt.result
        margin = evaluator.check_best(res, margin)
        ref_acc = evaluator.reference_accuracy
    applied = evaluator.apply(res, margin, size_before, crates)
    seconds = time.perf_counter() - t0
    return {
        "iteration": itr,
        "layers": selected,
        "sigma": s.sigma_at(itr),
        "seed": seed,
        "start_crates": x0.tolist(),
        "best_crates": None if res.xbest is None else [float(c) for c in res.xbest],
        "applied": bool(applied),
        "size_before": size_before,
        "size": layers.size(),
        "batch_accuracy": ref_acc,
        "accuracy_margin": margin,
        "evaluations": evaluator.evaluations,
        "trace": trace,
        "seconds": round(seconds, 3),
    }
