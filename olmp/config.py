"""One experiment = one readable TOML file (scripts/experiments/*.toml).

The dataclasses below hold the settings of reference doc §3; their defaults are
the paper's LeNet settings. Loading checks every value and reports a bad one in
one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from olmp import paths
from olmp.errors import OlmpError

OPTIMIZER_NAMES = ("ncs", "cmaes", "sampling")
CONSTRAINTS = ("penalty", "al")
# threshold policies (olmp/policies.py holds the classes; a test checks the two agree)
METHOD_NAMES = ("olmp", "deep-compression", "dns", "global-magnitude", "uniform")
SCANNED_METHODS = ("deep-compression", "dns")  # per-layer values from a sensitivity scan
ROUND_METHODS = ("deep-compression", "global-magnitude", "uniform")  # prune in rounds, no splicing
# the optimizers' min_popsize (olmp/search/, a test checks they agree), without importing pycma here
MIN_POPULATION = {"cmaes": 2}
INT_MAX = 2**31 - 1  # Caffe's solver counts iterations (and takes its seed) in 32 bits


@dataclass(frozen=True)
class SearchConfig:
    every: int = 1000  # K: search every K iterations
    min_layers: int = 2  # a search needs at least this many selected layers (the paper: 2)
    population: int = 10
    budget: int = 1600  # fitness evaluations per search
    bounds: tuple[float, float] = (0.0, 10.0)  # crate bounds
    sigma: tuple[tuple[int, float], ...] = ((0, 5.0),)  # (from iteration, step size)
    delta: float = 0.08  # allowed accuracy loss
    constraint: str = "penalty"  # infeasible -> infeasible_fitness, or cma's augmented Lagrangian
    infeasible_fitness: float = 1.1
    accuracy_on: str = "minibatch"  # "minibatch" (paper) or "validation"
    validation_images: int = 0  # size of the fixed held-out batch when accuracy_on = "validation"
    workers: int = 1  # processes scoring a population (results do not depend on it)
    chunks: int = 1  # score the batch in this many parts, stopping once infeasible (exact; olmp/candidate.py)

    def sigma_at(self, itr: int) -> float:
        """The step-size schedule: the last entry whose start iteration is <= itr."""
        value = self.sigma[0][1]
        for start, s in self.sigma:
            if itr >= start:
                value = s
        return value


@dataclass(frozen=True)
class PipelineConfig:
    niter: int = 30001
    prune_stop_iter: int = 15000
    initial_crate: float = 0.001
    gamma: dict[str, float] = field(default_factory=lambda: {"Convolution": 2e-5, "InnerProduct": 2e-4})
    record_every: int = 500
    checkpoint_every: int = 1000
    retrain_lr: str = "continue"  # "rewind": the retraining phase restarts the solver's lr schedule at 0


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the baseline policies (olmp/policies.py); OLMP ignores them.

    deep-compression: threshold_l = quality_l * std(weights_l); dns: T_l = max(mu_l + crate_l * sigma_l, 0).
    Their per-layer value comes from ``values`` when given, else from a sensitivity scan over ``grid``
    on ``validation_images`` TRAINING images (never the test set): per layer, the largest grid value
    before the first one whose one-shot accuracy drop exceeds ``tolerance``; then times ``scale``.
    """

    validation_images: int = 2000  # fixed batch from the start of the TRAIN source, for the scan
    grid: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0)
    tolerance: float = 0.02  # allowed one-shot accuracy drop per layer on the validation batch
    scale: float = 1.0  # multiplies the scanned values (the trade-off knob: several runs, several scales)
    values: dict[str, float] = field(default_factory=dict)  # per-layer quality/crate: skips the scan
    rounds: int = 5  # deep-compression, global-magnitude, uniform: prune -> retrain rounds
    sparsity: float = 0.0  # global-magnitude, uniform: final fraction of parameters pruned
    gamma: float = 1e-4  # dns: mask update probability (1 + gamma * iter) ** -power
    gamma_by_type: dict[str, float] = field(default_factory=dict)  # dns: per layer type, overrides gamma
    power: float = 1.0


@dataclass(frozen=True)
class Experiment:
    name: str
    solver: str
    net: str
    weights: str
    layers: tuple[str, ...]
    optimizer: str = "ncs"
    seed: int = 1
    method: str = "olmp"  # threshold policy: olmp | deep-compression | dns | global-magnitude | uniform
    mode: str = "standard"  # "released": the authors' scripts exactly (reference doc §9, olmp/draws.py)
    search: SearchConfig = SearchConfig()
    pipeline: PipelineConfig = PipelineConfig()
    baseline: BaselineConfig = BaselineConfig()
    source: str = ""  # the file it came from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Experiment":
        return dataclasses.replace(self, **changes)


def _section(cls: type, raw: dict[str, Any], path: Path, prefix: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise OlmpError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}", path)
    kwargs = {}
    for key, value in raw.items():
        default = getattr(cls(), key) if cls is not Experiment else None
        kwargs[key] = _coerce(value, default, path, prefix + key)
    return cls(**kwargs)


def _coerce(value: Any, default: Any, path: Path, key: str) -> Any:
    def bad(want: str) -> OlmpError:
        return OlmpError(f"{key} must be {want}, got {value!r}", path)

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if abs(value) > INT_MAX:
            raise bad(f"an integer of at most {INT_MAX}")
        return value
    if isinstance(default, float):
        if not _is_num(value):
            raise bad("a finite number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict) or not all(_is_num(v) for v in value.values()):
            raise bad("a table of finite numbers")
        return {str(k): float(v) for k, v in value.items()}
    if key.endswith("grid"):
        if not (isinstance(value, list) and value and all(_is_num(v) for v in value)):
            raise bad("a non-empty list of finite numbers")
        return tuple(float(v) for v in value)
    if key.endswith("bounds"):
        if not (isinstance(value, list) and len(value) == 2 and all(_is_num(v) for v in value)):
            raise bad("[lower, upper], two finite numbers")
        return (float(value[0]), float(value[1]))
    if key.endswith("sigma"):
        if _is_num(value):
            return ((0, float(value)),)
        if not (isinstance(value, list) and value and all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and not isinstance(v[0], bool)
            and _is_num(v[1]) for v in value
        )):
            raise bad("a number or a list of [from_iteration, step_size] pairs")
        return tuple((int(a), float(b)) for a, b in value)
    return value


def _is_num(v: Any) -> bool:
    """A finite int or float (TOML also spells nan and inf, which no setting accepts)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check(exp: Experiment, path: Path | str = "") -> Experiment:
    """Range checks shared by files and command-line overrides."""
    s, p = exp.search, exp.pipeline

    def fail(msg: str) -> None:
        raise OlmpError(msg, path or exp.source or None)

    if exp.optimizer not in OPTIMIZER_NAMES:
        fail(f"unknown optimizer '{exp.optimizer}' (choose from {', '.join(OPTIMIZER_NAMES)})")
    if not exp.layers or len(set(exp.layers)) != len(exp.layers):
        fail("layers must be a non-empty list of distinct layer names")
    if s.delta < 0 or s.delta > 1:
        fail(f"search.delta must be in [0, 1], got {s.delta}")
    if not s.bounds[0] < s.bounds[1]:
        fail(f"search.bounds must satisfy lower < upper, got {list(s.bounds)}")
    for name, v, lo in (("search.every", s.every, 1), ("search.population", s.population, 1),
                        ("search.budget", s.budget, 1), ("search.workers", s.workers, 1),
                        ("search.chunks", s.chunks, 1),
                        ("pipeline.niter", p.niter, 1),
                        ("pipeline.record_every", p.record_every, 1),
                        ("pipeline.checkpoint_every", p.checkpoint_every, 1)):
        if v < lo:
            fail(f"{name} must be >= {lo}, got {v}")
    if p.niter >= INT_MAX:
        fail(f"pipeline.niter must be < {INT_MAX}, got {p.niter}")
    if exp.method == "olmp" and not 1 <= s.min_layers <= len(exp.layers):
        fail(f"search.min_layers must be in [1, {len(exp.layers)}] (the number of layers), got {s.min_layers}")
    if s.chunks > 1 and s.constraint == "al":
        fail("search.chunks > 1 stops infeasible candidates early with a bound on their accuracy; "
             "constraint = 'al' needs exact margins, use search.chunks = 1")
    if s.workers > s.population:
        fail(f"search.workers ({s.workers}) must be <= search.population ({s.population}): no more than one each")
    if s.budget < s.population:
        fail(f"search.budget ({s.budget}) must be >= search.population ({s.population}): one generation at least")
    if exp.method == "olmp" and not s.bounds[0] <= p.initial_crate <= s.bounds[1]:
        fail(f"pipeline.initial_crate {p.initial_crate} lies outside search.bounds {list(s.bounds)}")
    if p.prune_stop_iter < 0:
        fail(f"pipeline.prune_stop_iter must be >= 0, got {p.prune_stop_iter}")
    if any(sig <= 0 for _, sig in s.sigma) or s.sigma[0][0] != 0:
        fail("search.sigma: step sizes must be > 0 and the first entry must start at iteration 0")
    if s.constraint not in CONSTRAINTS:
        fail(f"search.constraint must be one of {', '.join(CONSTRAINTS)}, got '{s.constraint}'")
    if s.constraint == "al" and exp.optimizer != "cmaes" and exp.method == "olmp":
        # only pycma's augmented Lagrangian reads the violations; ncs and sampling would ignore them
        fail(f"search.constraint = 'al' needs optimizer = 'cmaes' (got '{exp.optimizer}'); use 'penalty'")
    if p.retrain_lr not in ("continue", "rewind"):
        fail(f"pipeline.retrain_lr must be 'continue' or 'rewind', got '{p.retrain_lr}'")
    if s.accuracy_on not in ("minibatch", "validation"):
        fail(f"search.accuracy_on must be 'minibatch' or 'validation', got '{s.accuracy_on}'")
    if s.accuracy_on == "validation" and s.validation_images <= 0:
        fail("search.validation_images must be > 0 when search.accuracy_on = 'validation'")
    if set(p.gamma) - {"Convolution", "InnerProduct"} or any(g < 0 for g in p.gamma.values()):
        fail("pipeline.gamma must map Convolution/InnerProduct to numbers >= 0")
    if not 0 <= exp.seed <= INT_MAX:
        fail(f"seed must be in [0, {INT_MAX}], got {exp.seed}")
    _check_baseline(exp, fail)
    _check_mode(exp, fail)
    least = MIN_POPULATION.get(exp.optimizer, 1)
    if exp.method == "olmp" and s.population < least:
        fail(f"search.population must be >= {least} for {exp.optimizer}, got {s.population}")
    return exp


def _check_mode(exp: Experiment, fail: Any) -> None:
    """The released mode re-enacts the scripts' search; only what they did is accepted with it."""
    from olmp.draws import MODES  # noqa: PLC0415

    if exp.mode not in MODES:
        fail(f"unknown mode '{exp.mode}' (choose from {', '.join(MODES)})")
    if exp.mode != "released":
        return
    s = exp.search
    for ok, why in ((exp.method == "olmp", "method = 'olmp'"),
                    (exp.optimizer == "sampling", "optimizer = 'sampling' (what the released NCS effectively ran)"),
                    (s.accuracy_on == "minibatch", "search.accuracy_on = 'minibatch'"),
                    (s.constraint == "penalty", "search.constraint = 'penalty'"),
                    (s.chunks == 1 and s.workers == 1, "search.chunks = 1 and search.workers = 1"),
                    (s.budget % s.population == 0, "search.budget a multiple of search.population")):
        if not ok:
            fail(f"mode = 'released' needs {why}")


def _check_baseline(exp: Experiment, fail: Any) -> None:
    b, m = exp.baseline, exp.method
    if m not in METHOD_NAMES:
        fail(f"unknown method '{m}' (choose from {', '.join(METHOD_NAMES)})")
    if list(b.grid) != sorted(set(b.grid)):
        fail("baseline.grid must be strictly increasing")
    if not 0 <= b.tolerance <= 1:
        fail(f"baseline.tolerance must be in [0, 1], got {b.tolerance}")
    if b.scale <= 0:
        fail(f"baseline.scale must be > 0, got {b.scale}")
    if set(b.values) - set(exp.layers):
        fail(f"baseline.values names unknown layer(s) {', '.join(sorted(set(b.values) - set(exp.layers)))}")
    if m in SCANNED_METHODS and set(b.values) != set(exp.layers) and b.validation_images <= 0:
        fail("baseline.validation_images must be > 0 for the sensitivity scan")
    if b.rounds < 1:
        fail(f"baseline.rounds must be >= 1, got {b.rounds}")
    if m in ROUND_METHODS and exp.pipeline.prune_stop_iter < b.rounds:
        fail(f"pipeline.prune_stop_iter must be >= baseline.rounds for {m}")
    if m in ("global-magnitude", "uniform") and not 0 < b.sparsity < 1:
        fail(f"baseline.sparsity must be in (0, 1) for {m}, got {b.sparsity}")
    if b.gamma < 0 or b.power < 0:
        fail("baseline.gamma and baseline.power must be >= 0")
    if set(b.gamma_by_type) - {"Convolution", "InnerProduct"} or any(g < 0 for g in b.gamma_by_type.values()):
        fail("baseline.gamma_by_type must map Convolution/InnerProduct to numbers >= 0")


def _override(raw: dict[str, Any], setting: str, path: Path) -> None:
    """Apply one ``section.key=value`` (value in TOML syntax; a bare word is a string) to the parsed file."""
    key, sep, text = setting.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts) or len(parts) > 2:
        raise OlmpError(f"--set wants KEY=VALUE or SECTION.KEY=VALUE, got {setting!r}", path)
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    table = raw
    if len(parts) == 2:
        table = raw.setdefault(parts[0], {})
        if not isinstance(table, dict):
            raise OlmpError(f"--set {setting}: [{parts[0]}] is not a table", path)
    table[parts[-1]] = value


def load(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read and check an experiment file; a bare name means scripts/experiments/NAME.toml.

    ``overrides`` ("search.delta=0.04", ...) change single settings for sweeps, such as the trade-off
    curves, without a copy of the file; they are checked like the file and kept in ``source``.
    """
    path = Path(path)
    if not path.suffix and not path.exists():
        path = paths.EXPERIMENTS_DIR / f"{path}.toml"
    if not path.is_file():
        raise OlmpError("experiment file not found", path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OlmpError(f"malformed TOML: {exc}", path) from exc
    for setting in overrides:
        _override(raw, setting, path)
    top = {k: v for k, v in raw.items() if k not in ("search", "pipeline", "baseline")}
    required = ("name", "solver", "net", "weights", "layers")
    missing = [k for k in required if k not in top]
    if missing:
        raise OlmpError(f"missing key(s) {', '.join(missing)}", path)
    unknown = sorted(set(top) - ({f.name for f in dataclasses.fields(Experiment)} - {"source"}))  # source: ours
    if unknown:
        raise OlmpError(f"unknown key(s) {', '.join(unknown)}", path)
    for key in ("name", "solver", "net", "weights", "optimizer", "method", "mode"):
        if key in top and not isinstance(top[key], str):
            raise OlmpError(f"{key} must be a string, got {top[key]!r}", path)
    if not isinstance(top["layers"], list) or not all(isinstance(x, str) for x in top["layers"]):
        raise OlmpError(f"layers must be a list of layer names, got {top['layers']!r}", path)
    if "seed" in top and (isinstance(top["seed"], bool) or not isinstance(top["seed"], int)):
        raise OlmpError(f"seed must be an integer, got {top['seed']!r}", path)
    for sec in ("search", "pipeline", "baseline"):
        if sec in raw and not isinstance(raw[sec], dict):
            raise OlmpError(f"[{sec}] must be a table", path)
    for key in ("solver", "net", "weights"):  # relative to the file's folder (paths.in_experiment_file)
        top[key] = paths.in_experiment_file(top[key], path)
    exp = Experiment(
        **{**top, "layers": tuple(top["layers"])},
        search=_section(SearchConfig, raw.get("search", {}), path, "search."),
        pipeline=_section(PipelineConfig, raw.get("pipeline", {}), path, "pipeline."),
        baseline=_section(BaselineConfig, raw.get("baseline", {}), path, "baseline."),
        source=" ".join([str(path), *(f"--set {o}" for o in overrides)]),
    )
    exp = check(exp, path)
    from olmp.prototxt import resolve_path  # noqa: PLC0415

    if not resolve_path(exp.solver).is_file():
        raise OlmpError(f"solver {resolve_path(exp.solver)} does not exist", path)
    if not resolve_path(exp.net).is_file():
        raise OlmpError(f"net {resolve_path(exp.net)} does not exist", path)
    from olmp.prototxt import check_experiment_net  # noqa: PLC0415  (imports Caffe: after every other check)

    check_experiment_net(exp.net, exp.solver, path)
    return exp
