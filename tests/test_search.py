"""The crate searchers (reference §4): quality against random search, the protocol, seeding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from olmp.errors import OlmpError
from olmp.search import CMAES, NCS, OPTIMIZERS, Optimizer, Sampling, make_optimizer, reflect
from olmp.search.ncs import bhattacharyya

Fitness = Callable[[np.ndarray], float]

DIM = 6
LB, UB = 0.0, 10.0
OPTIMUM = np.linspace(3.0, 7.0, DIM)  # inside the bounds
SCALES = 10.0 ** (3 * np.arange(DIM) / (DIM - 1))  # ellipsoid with condition 1e3


def sphere(x: np.ndarray) -> float:
    return float(np.sum((x - OPTIMUM) ** 2))


def ellipsoid(x: np.ndarray) -> float:
    return float(np.sum(SCALES * (x - OPTIMUM) ** 2))


def run(opt: Optimizer, f: Fitness) -> Optimizer:
    while not opt.stop():
        X = opt.ask()
        opt.tell(X, [f(x) for x in X])
    return opt


def random_search(f: Fitness, budget: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return min(f(x) for x in rng.uniform(LB, UB, (budget, DIM)))


# --- quality ---------------------------------------------------------------------------


@pytest.mark.parametrize("f", [sphere, ellipsoid], ids=["sphere", "ellipsoid"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_beats_uniform_random_search(name: str, f: Fitness) -> None:
    # x0 is 1.5 per coordinate (1.5 sigma0) away from the optimum. Sampling never
    # leaves x0, so it can only win while the optimum is within reach of sigma0;
    # NCS and CMA-ES must win anyway.
    budget, seeds = 300, range(9)
    x0 = OPTIMUM + 1.5
    best = [
        run(make_optimizer(name, x0, 1.0, (LB, UB), 10, budget, seed), f).result.fbest
        for seed in seeds
    ]
    baseline = [random_search(f, budget, seed) for seed in seeds]
    assert np.median(best) < np.median(baseline), (name, best, baseline)


@pytest.mark.parametrize("name", ["ncs", "cmaes"])
def test_moving_searchers_beat_the_released_sampling_from_far_away(name: str) -> None:
    # OLMP's initial crates (0.001) sit at the lower bound, far from this optimum
    budget, seeds, x0 = 300, range(5), np.full(DIM, 0.001)
    best = [run(make_optimizer(name, x0, 2.0, (LB, UB), 10, budget, s), sphere).result.fbest for s in seeds]
    released = [
        run(make_optimizer("sampling", x0, 2.0, (LB, UB), 10, budget, s), sphere).result.fbest
        for s in seeds
    ]
    assert np.median(best) < np.median(released), (best, released)


def test_ncs_population_moves_towards_the_optimum() -> None:
    # The released scripts' NCS never accepted a trial; this one must.
    opt = NCS(np.full(DIM, 1.0), 1.0, (LB, UB), 10, 1500, seed=3)
    X = opt.ask()
    opt.tell(X, [sphere(x) for x in X])
    start = np.linalg.norm(opt.population - OPTIMUM, axis=1).mean()
    run(opt, sphere)
    end = np.linalg.norm(opt.population - OPTIMUM, axis=1).mean()
    assert end < 0.7 * start, (start, end)


def test_bhattacharyya_closed_form_matches_the_general_formula() -> None:
    rng = np.random.default_rng(0)
    ma, mb = rng.normal(size=(2, 3)), rng.normal(size=(3, 3))
    sa, sb = np.array([0.5, 2.0]), np.array([1.0, 0.3, 2.0])
    got = bhattacharyya(ma, sa, mb, sb)
    for i in range(2):
        for j in range(3):
            c1, c2 = sa[i] ** 2 * np.eye(3), sb[j] ** 2 * np.eye(3)
            c = (c1 + c2) / 2
            d = ma[i] - mb[j]
            want = d @ np.linalg.solve(c, d) / 8 + 0.5 * np.log(
                np.linalg.det(c) / np.sqrt(np.linalg.det(c1) * np.linalg.det(c2))
            )
            assert got[i, j] == pytest.approx(want, rel=1e-12)


def test_sampling_stays_around_x0_and_shrinks_sigma() -> None:
    x0 = np.full(DIM, 5.0)
    opt = Sampling(x0, 1.0, (LB, UB), 4, 4 * 20, seed=0, epoch=10)
    samples = []
    while not opt.stop():
        X = opt.ask()
        samples += X
        opt.tell(X, [sphere(x) for x in X])
    assert np.abs(np.mean(samples, axis=0) - x0).max() < 0.5
    assert opt.sigma == pytest.approx(0.99**2)


def test_cmaes_augmented_lagrangian_ends_feasible() -> None:
    # minimise sum(x) subject to |x - 5|^2 <= 4, from a corner on the bound (infeasible)
    centre, radius, dim = np.full(5, 5.0), 2.0, 5
    fopt = dim * (5.0 - radius / np.sqrt(dim))

    def g(x: np.ndarray) -> float:
        return float(np.sum((x - centre) ** 2) - radius**2)

    opt = CMAES(np.zeros(dim), 2.0, (LB, UB), 10, 1000, seed=1, constraint="al")
    while not opt.stop():
        X = opt.ask()
        opt.tell(X, [float(np.sum(x)) for x in X], [g(x) for x in X])
    xbest, fbest, evaluations = opt.result
    assert evaluations == 1000
    assert xbest is not None and g(xbest) <= 0
    assert fbest == pytest.approx(fopt, abs=1e-3)
    assert g(np.asarray(opt.es.result.xfavorite)) < 1e-3  # the distribution ended at the boundary


def test_cmaes_al_needs_violations() -> None:
    opt = make_optimizer("cmaes", [1.0, 1.0], 1.0, (0, 10), 4, 20, 0, constraint="al")
    X = opt.ask()
    with pytest.raises(OlmpError, match="needs violations"):
        opt.tell(X, [1.0] * len(X))


# --- the protocol ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_budget_and_bounds_are_never_exceeded(name: str) -> None:
    lb, ub = np.array([0.0, -1.0, 2.0]), np.array([10.0, 1.0, 2.5])
    x0 = np.array([0.0, 1.0, 2.0])  # on the bounds
    opt = make_optimizer(name, x0, 3.0, (lb, ub), 10, 37, seed=0)
    asked = 0
    while not opt.stop():
        X = opt.ask()
        assert X, "ask() returned nothing before the budget was spent"
        for x in X:
            assert np.all(x >= lb) and np.all(x <= ub), x
        asked += len(X)
        opt.tell(X, [-float(np.sum(np.abs(x))) for x in X])  # pushes towards the bounds
    assert asked == opt.result.evaluations == 37
    assert opt.stop()["maxfevals"] == 37
    assert opt.ask() == []
    opt.tell([], [])  # telling the empty ask is harmless


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_same_seed_same_run_other_seed_other_run(name: str) -> None:
    def trace(seed: int) -> list[np.ndarray]:
        opt = make_optimizer(name, np.full(4, 2.0), 1.0, (0, 10), 6, 120, seed)
        out = []
        while not opt.stop():
            X = opt.ask()
            opt.tell(X, [sphere4(x) for x in X])
            out += X + [opt.result.xbest]
        return out

    state = np.random.get_state()
    a, b, c = trace(7), trace(7), trace(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]  # np.random untouched


def sphere4(x: np.ndarray) -> float:
    return float(np.sum((x - 5.0) ** 2))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_result_tracks_only_feasible_solutions(name: str) -> None:
    # the fitness rewards large x, the constraint forbids sum(x) > 8
    opt = make_optimizer(name, np.full(3, 2.0), 2.0, (0, 10), 6, 90, seed=2)
    told = []
    while not opt.stop():
        X = opt.ask()
        f = [-float(np.sum(x)) for x in X]
        v = [float(np.sum(x)) - 8.0 for x in X]
        opt.tell(X, f, v)
        told += [(fi, vi) for fi, vi in zip(f, v)]
    xbest, fbest, _ = opt.result
    assert any(vi > 0 for _, vi in told) and any(vi <= 0 for _, vi in told)
    assert xbest is not None and np.sum(xbest) <= 8.0
    assert fbest == min(fi for fi, vi in told if vi <= 0)
    assert fbest == -float(np.sum(xbest))


def test_no_feasible_solution_means_no_result() -> None:
    opt = make_optimizer("ncs", [1.0], 1.0, (0, 2), 3, 9, 0)
    while not opt.stop():
        X = opt.ask()
        opt.tell(X, [0.0] * len(X), [1.0] * len(X))
    assert opt.result.xbest is None and opt.result.fbest == np.inf


def test_pycma_optimize_loop_works() -> None:
    opt = make_optimizer("ncs", [1.0, 1.0], 1.0, (0, 10), 5, 50, 0).optimize(sphere4)
    assert opt.result.evaluations == 50 and opt.result.fbest < sphere4(np.array([1.0, 1.0]))


def test_tell_must_follow_ask_with_the_same_solutions() -> None:
    opt = make_optimizer("sampling", [1.0, 1.0], 1.0, (0, 10), 3, 30, 0)
    with pytest.raises(OlmpError, match="without a preceding ask"):
        opt.tell([np.zeros(2)], [0.0])
    X = opt.ask()
    with pytest.raises(OlmpError, match="solutions of the last ask"):
        opt.tell(X[::-1], [0.0] * len(X))
    with pytest.raises(OlmpError, match="fitness values"):
        opt.tell(X, [0.0])
    with pytest.raises(OlmpError, match="finite"):
        opt.tell(X, [np.nan] * len(X))


def test_reflect_mirrors_then_clips() -> None:
    lb, ub = np.zeros(4), np.full(4, 10.0)
    x = np.array([-1.0, 12.0, 5.0, -25.0])
    assert reflect(x, lb, ub).tolist() == [1.0, 8.0, 5.0, 10.0]


# --- the registry and argument checks -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_searches_a_real_net_within_bounds_and_budget(tmp_path: Path, name: str) -> None:
    """Each registered optimizer drives OLMP's crate search on LeNet-300-100 (the committed reference):
    crates inside bounds the search would like to leave, the budget kept, and a rerun is the same run."""
    from conftest import REPO, experiment_300100, without_timing

    from olmp import config, pipeline

    text = experiment_300100(REPO / "results/references/lenet300100/model.caffemodel", optimizer=name, niter=21,
                             prune_stop=10, record_every=10, checkpoint_every=10, every=5, population=4, budget=12)
    (tmp_path / "exp.toml").write_text(text.replace("bounds = [0.0, 10.0]", "bounds = [0.0, 0.8]"))
    exp = config.load(tmp_path / "exp.toml")
    first, again = (pipeline.Pipeline(exp, tmp_path / out, progress=False).run() for out in ("a", "b"))
    assert first["optimizer"] == name and len(first["searches"]) == 2  # iterations 0 and 5
    for s in first["searches"]:
        assert s["evaluations"] <= 12 + 1  # the budget, plus the current crates' own score
        assert all(0.0 <= c <= 0.8 for c in s["best_crates"]), s["best_crates"]
    assert all(0.0 <= c <= 0.8 for c in first["final"]["crates"].values())
    assert without_timing(first) == without_timing(again)


def test_unknown_optimizer_name() -> None:
    with pytest.raises(OlmpError) as err:
        make_optimizer("ga", [1.0], 1.0, (0, 10), 4, 10, 0)
    msg = str(err.value)  # one line naming the bad name and every name that would work
    assert "'ga'" in msg and "\n" not in msg and all(n in msg for n in OPTIMIZERS)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"budget": 0}, "budget"),
        ({"budget": 2.5}, "budget"),
        ({"popsize": 0}, "popsize"),
        ({"sigma0": 0.0}, "sigma0"),
        ({"sigma0": float("nan")}, "sigma0"),
        ({"bounds": (5, 5)}, "lb < ub"),
        ({"bounds": (10, 0)}, "lb < ub"),
        ({"bounds": ([0, 0, 0], [10, 10, 10])}, "bounds"),
        ({"x0": [1.0, 2.0, 3.0], "bounds": ([0, 0], [10, 10])}, "len(x0)"),
        ({"x0": [11.0, 1.0]}, "outside the bounds"),
        ({"x0": [[1.0, 2.0]]}, "1-D"),
        ({"seed": -1}, "seed"),
        ({"epoch": 0}, "epoch"),
        ({"r": 1.5}, "r must be"),
        ({"colour": "red"}, "unknown option 'colour'"),
    ],
)
def test_bad_arguments_are_one_line_olmp_errors(kwargs: dict, words: str) -> None:
    args = {"x0": [1.0, 2.0], "sigma0": 1.0, "bounds": (0, 10), "popsize": 4, "budget": 10, "seed": 0}
    args.update(kwargs)
    with pytest.raises(OlmpError) as err:
        make_optimizer("ncs", **args)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"popsize": 1}, "popsize"),
        ({"constraint": "death"}, "handles constraint 'penalty' or 'al', got 'death'"),
        ({"cma_options": {"seed": 3}}, "may not set 'seed'"),
    ],
)
def test_bad_cmaes_arguments(kwargs: dict, words: str) -> None:
    args = {"x0": [1.0, 2.0], "sigma0": 1.0, "bounds": (0, 10), "popsize": 4, "budget": 10, "seed": 0}
    args.update(kwargs)
    with pytest.raises(OlmpError, match=words):
        make_optimizer("cmaes", **args)


class _ScriptedNormals:
    """Hands out given standard-normal draws in order, so every number below can be worked by hand."""

    def __init__(self, *draws: list) -> None:
        self.draws = [np.array(d, dtype=np.float64) for d in draws]

    def standard_normal(self, size: object) -> np.ndarray:
        return self.draws.pop(0).reshape(size)


def test_one_ncs_step_by_hand_two_searchers() -> None:
    """Two 1-D searchers, two trial generations, every quantity of §4 computed here by hand.

    Draws: initial noise [0, 2], trial noise [-1, 0.5], lambda noise [1, -2], trial noise [0.5, 2],
    lambda noise [0, 0]. epoch 1 and r 0.5, so the 1/5 rule acts after every generation.
    """
    import math

    rng = _ScriptedNormals([[0.0], [2.0]], [[-1.0], [0.5]], [1.0, -2.0], [[0.5], [2.0]], [0.0, 0.0])
    opt = NCS([5.0], 1.0, (0.0, 10.0), 2, 40, seed=0, rng=rng, epoch=1, r=0.5)
    X = opt.ask()
    assert [float(x[0]) for x in X] == [5.0, 7.0]  # searcher 0 at x0, searcher 1 at 5 + 1.0 * 2
    opt.tell(X, [0.6, 0.8])
    # generation 1: trials 5 - 1 = 4 and 7 + 0.5 = 7.5
    X = opt.ask()
    assert [float(x[0]) for x in X] == [4.0, 7.5]
    opt.tell(X, [0.5, 0.9])
    # f* = 0.5. NF' = (f' - f*) / ((f' - f*) + (f - f*)): searcher 0: 0 / 0.1 = 0; searcher 1: 0.4 / 0.7
    nf = [0.0, 0.4 / 0.7]
    # equal sigmas 1, d = 1: D = dist^2 / (4 * 2) + 0.5 * ln(2 / 2) = dist^2 / 8
    corr_parent = [(7 - 5) ** 2 / 8, (5 - 7) ** 2 / 8]  # 0.5 each
    corr_trial = [(4 - 7) ** 2 / 8, (7.5 - 5) ** 2 / 8]  # 1.125, 0.78125
    nc = [t / (p + t) for p, t in zip(corr_parent, corr_trial)]
    # lambda_sigma = 0.1 * (1 - 2 / 40) = 0.095: lambdas 1 + 0.095 * [1, -2] = [1.095, 0.81]
    lambdas = [1.095, 0.81]
    accept = [lam * c > f for lam, c, f in zip(lambdas, nc, nf)]
    assert accept == [True, False]  # searcher 1 would move with lambda = 1 (0.6098 > 0.5714): lambda decides
    assert nc[1] > nf[1] and 0.81 * nc[1] < nf[1]
    assert opt.means[:, 0].tolist() == [4.0, 7.0] and opt.fitness.tolist() == [0.5, 0.8]
    # 1/5 rule with epoch 1: success rates 1 and 0 -> sigma / r = 2 and sigma * r = 0.5
    assert opt.sigmas.tolist() == [2.0, 0.5]
    # generation 2: trials 4 + 2 * 0.5 = 5 and 7 + 0.5 * 2 = 8, lambdas 1 (noise 0)
    X = opt.ask()
    assert [float(x[0]) for x in X] == [5.0, 8.0]
    opt.tell(X, [0.7, 0.45])
    # f* = 0.45: NF' = 0.25 / 0.30 and 0 / 0.35
    nf = [0.25 / 0.30, 0.0]
    # sigmas 2 and 0.5: var = 4.25, log term 0.5 * ln(4.25 / (2 * 2 * 0.5)) = 0.5 * ln(2.125)
    log_term = 0.5 * math.log(2.125)
    corr_parent = [9 / 17 + log_term, 9 / 17 + log_term]  # |4 - 7|^2 / (4 * 4.25)
    corr_trial = [4 / 17 + log_term, 16 / 17 + log_term]  # |5 - 7|^2 / 17, |8 - 4|^2 / 17
    nc = [t / (p + t) for p, t in zip(corr_parent, corr_trial)]
    assert [c > f for c, f in zip(nc, nf)] == [False, True]
    assert opt.means[:, 0].tolist() == [4.0, 8.0] and opt.fitness.tolist() == [0.5, 0.45]
    assert opt.sigmas.tolist() == [1.0, 1.0]  # rates 0 and 1: 2 * 0.5 and 0.5 / 0.5
    assert opt.result.xbest.tolist() == [8.0] and opt.result.fbest == 0.45 and opt.result.evaluations == 6
