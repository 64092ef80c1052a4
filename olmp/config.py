"""One experiment = one readable TOML file (scripts/experiments/*.toml).

An experiment is four frozen dataclasses (Experiment and its [search], [pipeline] and [baseline]
tables) whose fields carry their types and ranges; pydantic (v2) validates a file against them.
Their defaults are the paper's LeNet settings (reference doc §3). ``check`` then applies the rules
that tie several settings together, and the names that only the registries know: methods
(olmp.policies.POLICIES, whose classes say what each needs), optimizers (olmp.search.OPTIMIZERS)
and modes (olmp.modes.MODES).

Any bad value is reported in one line naming the file and the key, e.g.
``exp.toml: search.delta must be in [0, 1], got -0.1``.

The models are pydantic *dataclasses* rather than BaseModels because run records store
``Experiment.to_dict()``, which is ``dataclasses.asdict``: tuples stay tuples, floats stay floats,
and the records' JSON does not change by a byte (tests/test_config.py compares them).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, get_args

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from olmp import paths
from olmp.errors import OlmpError

INT_MAX = 2**31 - 1  # Caffe's solver counts iterations (and takes its seed) in 32 bits
SECTIONS = ("search", "pipeline", "baseline", "retrain")


# ---- value types: what a key accepts, and the words that say so in an error ------------------------
# Strict: TOML has real types, so "3" is not a number and true is not 1; an int is a fine float.

def _int32(value: int) -> int:
    if abs(value) > INT_MAX:
        raise PydanticCustomError("int32", f"an integer of at most {INT_MAX}")
    return value


def _one_step_size(value: Any) -> Any:
    """``sigma = 5.0`` is short for one step size from iteration 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ((0, value),)
    return value


Int = Annotated[int, Strict(), AfterValidator(_int32), Field(description="an integer")]
Count = Annotated[Int, Field(ge=1)]  # a number of iterations, images, candidates...: at least one
Float = Annotated[float, Strict(), AllowInfNan(False), Field(description="a finite number")]
Fraction = Annotated[Float, Field(ge=0, le=1)]
NonNegative = Annotated[Float, Field(ge=0)]
Str = Annotated[str, Strict(), Field(description="a string")]
Table = Annotated[dict[str, Float], Field(description="a table of finite numbers")]
ByLayerType = Annotated[  # Caffe layer type -> value; the prunable types only
    dict[Literal["Convolution", "InnerProduct"], NonNegative],
    Field(description="a table mapping Convolution/InnerProduct to numbers >= 0"),
]
Bounds = Annotated[tuple[Float, Float], Field(description="[lower, upper], two finite numbers")]
Grid = Annotated[tuple[Float, ...], Field(min_length=1, description="a non-empty list of finite numbers")]
Schedule = Annotated[  # (from iteration, step size), in the file [[0, 5.0], [15000, 0.5]] or a number
    tuple[tuple[Int, Float], ...],
    BeforeValidator(_one_step_size),
    Field(min_length=1, description="a number or a list of [from_iteration, step_size] pairs"),
]
LayerNames = Annotated[tuple[Annotated[str, Strict()], ...], Field(description="a list of layer names")]
Seed = Annotated[int, Strict(), Field(ge=0, le=INT_MAX, description="an integer")]

_NO_EXTRA = ConfigDict(extra="forbid")  # an unknown key is an error, never silently ignored


# ---- [search] ------------------------------------------------------------------------------------

@dataclass(frozen=True, config=_NO_EXTRA)
class SearchConfig:
    """OLMP's search for per-layer crates (reference doc §3, §4); policies that do not search ignore it."""

    every: Count = 1000  # K: search every K iterations
    min_layers: Int = 2  # a search needs at least this many selected layers (the paper: 2)
    population: Count = 10
    budget: Count = 1600  # fitness evaluations per search
    bounds: Bounds = (0.0, 10.0)  # crate bounds
    sigma: Schedule = ((0, 5.0),)  # (from iteration, step size)
    delta: Fraction = 0.08  # allowed accuracy loss
    constraint: Str = "penalty"  # infeasible -> infeasible_fitness, or cma's augmented Lagrangian ("al")
    infeasible_fitness: Float = 1.1
    accuracy_on: Literal["minibatch", "validation"] = "minibatch"  # the paper: the current minibatch
    validation_images: Int = 0  # size of the fixed held-out batch when accuracy_on = "validation"
    chunks: Count = 1  # score the batch in this many parts, stopping once infeasible (exact; olmp/candidate.py)

    def sigma_at(self, itr: int) -> float:
        """The step-size schedule: the last entry whose start iteration is <= itr."""
        value = self.sigma[0][1]
        for start, s in self.sigma:
            if itr >= start:
                value = s
        return value


# ---- [pipeline] ----------------------------------------------------------------------------------

@dataclass(frozen=True, config=_NO_EXTRA)
class PipelineConfig:
    """The pruning run around the policy: Caffe's SGD steps, mask updates, records and checkpoints."""

    niter: Annotated[Count, Field(lt=INT_MAX)] = 30001
    prune_stop_iter: Annotated[Int, Field(ge=0)] = 15000
    initial_crate: Float = 0.001
    gamma: ByLayerType = dataclasses.field(default_factory=lambda: {"Convolution": 2e-5, "InnerProduct": 2e-4})
    record_every: Count = 500
    checkpoint_every: Count = 1000
    retrain_lr: Literal["continue", "rewind"] = "continue"  # rewind: retraining restarts the lr schedule at 0


# ---- [baseline] ----------------------------------------------------------------------------------

@dataclass(frozen=True, config=_NO_EXTRA)
class BaselineConfig:
    """Settings of the baseline policies (olmp/policies/); OLMP ignores them.

    deep-compression: threshold_l = quality_l * std(weights_l); dns: T_l = max(mu_l + crate_l * sigma_l, 0).
    Their per-layer value comes from ``values`` when given, else from a sensitivity scan over ``grid``
    on ``validation_images`` TRAINING images (never the test set): per layer, the largest grid value
    before the first one whose one-shot accuracy drop exceeds ``tolerance``; then times ``scale``.
    """

    validation_images: Int = 2000  # fixed batch from the start of the TRAIN source, for the scan
    grid: Grid = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0)
    tolerance: Fraction = 0.02  # allowed one-shot accuracy drop per layer on the validation batch
    scale: Annotated[Float, Field(gt=0)] = 1.0  # multiplies the scanned values (the trade-off knob)
    values: Table = dataclasses.field(default_factory=dict)  # per-layer quality/crate: skips the scan
    rounds: Count = 5  # deep-compression, global-magnitude, uniform: prune -> retrain rounds
    sparsity: Float = 0.0  # global-magnitude, uniform: final fraction of parameters pruned
    gamma: NonNegative = 1e-4  # dns: mask update probability (1 + gamma * iter) ** -power
    gamma_by_type: ByLayerType = dataclasses.field(default_factory=dict)  # dns: per layer type, overrides gamma
    power: NonNegative = 1.0
    iter_stop: Table = dataclasses.field(default_factory=dict)  # dns: per layer, no mask update from here on


# ---- [retrain] -----------------------------------------------------------------------------------

@dataclass(frozen=True, config=_NO_EXTRA)
class RetrainConfig:
    """What a lossless run adds: held-out images, levers of the retraining phase, the no-loss guarantee.

    Every choice these make reads ``holdout_source`` (training images the run's net and its
    reference never trained on: models/*/train_test_holdout.prototxt), never the test set. The
    levers start at pipeline.prune_stop_iter, after the last mask change, so a run with them has the
    masks of the same seed's run without them. All off by default.
    """

    holdout_source: Str = ""  # LMDB of held-out training images (data/mnist/mnist_holdout5k_lmdb); "": none
    distill_weight: Fraction = 0.0  # soft-target share of the loss (Hinton et al. 2015); 0: no distillation
    distill_temperature: Annotated[Float, Field(gt=0)] = 4.0
    average_last: Annotated[Int, Field(ge=0)] = 0  # average the masked weights over the last N iterations; 0: off
    average_every: Count = 100  # ... taking them every M iterations
    guarantee: bool = False  # restore weights until the held-out accuracy is the reference's (needs holdout_source)
    guarantee_factor: Annotated[Float, Field(gt=0, lt=1)] = 0.8  # a restoring step multiplies one layer's crate by this
    guarantee_retrain: Count = 500  # masked SGD iterations after each restoring step
    guarantee_max_steps: Count = 30
    # regrowth instead of restoring: each step switches on, in every layer, 1/guarantee_factor - 1 times its
    # kept weights more, the pruned ones of largest training-loss gradient, at zero (not their stale dense
    # values), and averages the retraining between steps like the run's tail (average_last/every)
    guarantee_regrow: bool = False

    @property
    def distills(self) -> bool:
        return self.distill_weight > 0

    @property
    def averages(self) -> bool:
        return self.average_last > 0


# ---- the experiment ------------------------------------------------------------------------------

@dataclass(frozen=True, config=_NO_EXTRA)
class Experiment:
    """One experiment file: what to prune (solver, net, weights, layers), how, and with which seed."""

    name: Str
    solver: Str
    net: Str
    weights: Str
    layers: LayerNames
    optimizer: Str = "ncs"  # a key of olmp.search.OPTIMIZERS
    seed: Seed = 1
    method: Str = "olmp"  # threshold policy: a key of olmp.policies.POLICIES
    mode: Str = "standard"  # a key of olmp.modes.MODES; "released": the authors' scripts exactly (§9)
    variant: Str = ""  # a short tag where the run departs from its method's usual settings ("rewind", ...)
    search: SearchConfig = SearchConfig()
    pipeline: PipelineConfig = PipelineConfig()
    baseline: BaselineConfig = BaselineConfig()
    retrain: RetrainConfig = RetrainConfig()
    source: Str = ""  # the file it came from and its --set overrides (written by load, never read from a file)

    def to_dict(self) -> dict[str, Any]:
        """What run records store (and checkpoint.changed_settings compares)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Experiment:
        """A copy with some settings changed, validated like a file (``check`` for the rules between them)."""
        try:
            return dataclasses.replace(self, **changes)
        except ValidationError as exc:
            raise OlmpError(explain(exc, changes), self.source or None) from None


_EXPERIMENT = TypeAdapter(Experiment)


# ---- pydantic's errors, in one line --------------------------------------------------------------

_RANGE = {  # pydantic's error type -> the bound it broke, in the messages' words
    "greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}", "less_than": "< {lt}",
}


def explain(exc: ValidationError, given: Mapping[str, Any], unknown: Sequence[str] = (),
            model: Any = Experiment) -> str:
    """The first problem of a ValidationError as ``KEY must be WHAT, got VALUE`` (or the missing/unknown keys).

    ``given`` is what was validated (the parsed file, or replace()'s changes): the value shown is the
    whole value of the key as written, even when pydantic found the fault inside it. ``model`` is the
    class validated: every hand-written file (an experiment, a sweep) says what a key takes in the
    same words, from its fields' descriptions and bounds.
    """
    errors = exc.errors(include_url=False)
    if not errors[0]["loc"]:  # not about one key (the file is always a table: not expected)
        return str(errors[0]["msg"])
    missing = [_key(e["loc"]) for e in errors if e["type"] == "missing" and len(e["loc"]) == 1]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    unknown = sorted([*unknown, *(_key(e["loc"]) for e in errors
                                  if e["type"] in ("unexpected_keyword_argument", "extra_forbidden"))])
    if unknown:
        return f"unknown key(s) {', '.join(unknown)}"
    err = next((e for e in errors if e["type"] not in _RANGE), errors[0])  # a wrong type before a wrong size
    key, info = _key(err["loc"]), _field(err["loc"], model)
    if key in SECTIONS:
        return f"[{key}] must be a table"
    if err["type"] in _RANGE and len(err["loc"]) == key.count(".") + 1:  # the value itself, not a part of it
        value = float(err["input"]) if info.annotation is float else err["input"]
        return f"{key} must be {_allowed_range(info, err['type'])}, got {value}"
    want = err["msg"] if err["type"] == "int32" else _want(info)
    got: Any = given
    for part in key.split("."):
        got = got.get(part) if isinstance(got, Mapping) else None
    return f"{key} must be {want}, got {got!r}"


def _key(loc: tuple[int | str, ...]) -> str:
    """The setting a pydantic location points into: ``name``, or ``section.name`` for the three tables."""
    head = str(loc[0])
    return f"{head}.{loc[1]}" if head in SECTIONS and len(loc) > 1 else head


def _field(loc: tuple[int | str, ...], model: Any) -> FieldInfo:
    fields = model.__pydantic_fields__
    if str(loc[0]) in SECTIONS and len(loc) > 1:
        fields = fields[str(loc[0])].annotation.__pydantic_fields__
        loc = loc[1:]
    return fields[str(loc[0])]


def _want(info: FieldInfo) -> str:
    if info.description:
        return info.description
    return " or ".join(map(repr, get_args(info.annotation)))  # a Literal


def _allowed_range(info: FieldInfo, failed: str) -> str:
    """``in [lo, hi]`` for a closed range, else the bound that failed, as the field declares them."""
    bound = {name: getattr(m, name) for m in info.metadata for name in ("ge", "gt", "le", "lt") if hasattr(m, name)}
    if "ge" in bound and "le" in bound:
        return f"in [{bound['ge']}, {bound['le']}]"
    return _RANGE[failed].format(**bound)


# ---- the rules between settings ------------------------------------------------------------------

def _registries() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(POLICIES, OPTIMIZERS, MODES), imported when first needed: the policies and optimizers import
    pycma (seconds), and olmp/policies/ refers back to this module's Experiment."""
    from olmp.modes import MODES  # noqa: PLC0415
    from olmp.policies import POLICIES  # noqa: PLC0415
    from olmp.search import OPTIMIZERS  # noqa: PLC0415

    return POLICIES, OPTIMIZERS, MODES


def _quoted_where(registry: Mapping[str, Any], has: Any) -> str:
    """The registered names whose class ``has(cls)``, as "'a' or 'b'"."""
    return " or ".join(f"'{name}'" for name, cls in registry.items() if has(cls))


def check(exp: Experiment, path: Path | str = "") -> Experiment:
    """The rules that read several settings at once or a registry; shared by files and overrides.

    Each value's own type and range were checked when ``exp`` was built. What a method needs is read
    from its policy class (``searches``, ``scanned``, ``in_rounds``, ``needs_sparsity``), what an
    optimizer handles from its class (``constraints``, ``min_popsize``), never from a list of names.
    """
    policies, optimizers, modes = _registries()
    s, p = exp.search, exp.pipeline

    def fail(msg: str) -> NoReturn:
        raise OlmpError(msg, path or exp.source or None)

    for what, value, registry in (("optimizer", exp.optimizer, optimizers), ("method", exp.method, policies),
                                  ("mode", exp.mode, modes)):
        if value not in registry:
            fail(f"unknown {what} '{value}' (choose from {', '.join(registry)})")
    policy, optimizer = policies[exp.method], optimizers[exp.optimizer]
    if not exp.layers or len(set(exp.layers)) != len(exp.layers):
        fail("layers must be a non-empty list of distinct layer names")
    if not s.bounds[0] < s.bounds[1]:
        fail(f"search.bounds must satisfy lower < upper, got {list(s.bounds)}")
    if policy.searches and not 1 <= s.min_layers <= len(exp.layers):
        fail(f"search.min_layers must be in [1, {len(exp.layers)}] (the number of layers), got {s.min_layers}")
    if s.chunks > 1 and s.constraint == "al":
        fail("search.chunks > 1 stops infeasible candidates early with a bound on their accuracy; "
             "constraint = 'al' needs exact margins, use search.chunks = 1")
    if s.budget < s.population:
        fail(f"search.budget ({s.budget}) must be >= search.population ({s.population}): one generation at least")
    if policy.searches and not s.bounds[0] <= p.initial_crate <= s.bounds[1]:
        fail(f"pipeline.initial_crate {p.initial_crate} lies outside search.bounds {list(s.bounds)}")
    if any(sig <= 0 for _, sig in s.sigma) or s.sigma[0][0] != 0:
        fail("search.sigma: step sizes must be > 0 and the first entry must start at iteration 0")
    handled = list(dict.fromkeys(c for cls in optimizers.values() for c in cls.constraints))
    if s.constraint not in handled:
        fail(f"search.constraint must be one of {', '.join(handled)}, got '{s.constraint}'")
    if policy.searches and s.constraint not in optimizer.constraints:
        # e.g. only pycma's augmented Lagrangian reads the violations; ncs and sampling would ignore them
        able = _quoted_where(optimizers, lambda cls: s.constraint in cls.constraints)
        fail(f"search.constraint = '{s.constraint}' needs optimizer = {able} (got '{exp.optimizer}'); use 'penalty'")
    if s.accuracy_on == "validation" and s.validation_images <= 0:
        fail("search.validation_images must be > 0 when search.accuracy_on = 'validation'")
    _check_baseline(exp, policy, fail)
    _check_retrain(exp, fail)
    _check_iter_stop(exp, fail)
    _check_mode(exp, modes, policies, fail)
    if policy.searches and s.population < optimizer.min_popsize:
        fail(f"search.population must be >= {optimizer.min_popsize} for {exp.optimizer}, got {s.population}")
    return exp


def _check_iter_stop(exp: Experiment, fail: Any) -> None:
    stops = exp.baseline.iter_stop
    unknown = sorted(set(stops) - set(exp.layers))
    if unknown:
        fail(f"baseline.iter_stop names layers the experiment does not prune: {', '.join(unknown)}")
    late = sorted(n for n, v in stops.items() if not 0 <= v <= exp.pipeline.prune_stop_iter or v != int(v))
    if late:
        fail(f"baseline.iter_stop must be whole iterations in [0, pipeline.prune_stop_iter = "
             f"{exp.pipeline.prune_stop_iter}]: {', '.join(late)}")


def _check_retrain(exp: Experiment, fail: Any) -> None:
    r, p = exp.retrain, exp.pipeline
    if r.guarantee and not r.holdout_source:
        fail("retrain.guarantee needs retrain.holdout_source: the guarantee reads held-out images, never the test set")
    if r.averages and r.average_last > p.niter - p.prune_stop_iter:
        fail(f"retrain.average_last ({r.average_last}) must be <= pipeline.niter - pipeline.prune_stop_iter "
             f"({p.niter - p.prune_stop_iter}): the masks must not change inside the average")


def _check_baseline(exp: Experiment, policy: Any, fail: Any) -> None:
    """[baseline] against the layers, and what the method's policy class says it reads."""
    b, m = exp.baseline, exp.method
    if list(b.grid) != sorted(set(b.grid)):
        fail("baseline.grid must be strictly increasing")
    if set(b.values) - set(exp.layers):
        fail(f"baseline.values names unknown layer(s) {', '.join(sorted(set(b.values) - set(exp.layers)))}")
    if policy.scanned and set(b.values) != set(exp.layers) and b.validation_images <= 0:
        fail("baseline.validation_images must be > 0 for the sensitivity scan")
    if policy.in_rounds and exp.pipeline.prune_stop_iter < b.rounds:
        fail(f"pipeline.prune_stop_iter must be >= baseline.rounds for {m}")
    if policy.needs_sparsity and not 0 < b.sparsity < 1:
        fail(f"baseline.sparsity must be in (0, 1) for {m}, got {b.sparsity}")


def _check_mode(exp: Experiment, modes: Mapping[str, Any], policies: Mapping[str, Any], fail: Any) -> None:
    """What the experiment's mode declares it requires (olmp/modes.py)."""
    unmet = modes[exp.mode].unmet(exp, policies)
    if unmet:
        fail(f"mode = '{exp.mode}' needs {unmet[0]}")


# ---- reading a file ------------------------------------------------------------------------------

def _override(raw: dict[str, Any], setting: str, path: Path) -> None:
    """Apply one ``section.key=value`` (value in TOML syntax; a bare word is a string) to the parsed file.

    The key is checked with the file's, against the dataclasses' fields: an unknown one is refused.
    """
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


def _validate(raw: dict[str, Any], path: Path) -> Experiment:
    """The parsed file as an Experiment: every key known, every value of its type and in its range."""
    ours = [k for k in ("source",) if k in raw]  # written by load, never read from a file
    try:
        exp = _EXPERIMENT.validate_python({k: v for k, v in raw.items() if k not in ours})
    except ValidationError as exc:
        raise OlmpError(explain(exc, raw, ours), path) from None
    if ours:
        raise OlmpError(f"unknown key(s) {', '.join(ours)}", path)
    return exp


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's table; a missing or malformed file is one OlmpError line naming it."""
    if not path.is_file():
        raise OlmpError(f"{what} not found", path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OlmpError(f"malformed TOML: {exc}", path) from None


def settings(path: str | Path) -> Experiment:
    """An experiment file's settings, typed but not checked against its net: what the reports compare
    run records with, which must not need Caffe."""
    path = Path(path)
    return _validate(read_toml(path, "experiment file"), path)


def load(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read and check an experiment file; a bare name means scripts/experiments/NAME.toml.

    ``overrides`` ("search.delta=0.04", ...) change single settings for sweeps, such as the trade-off
    curves, without a copy of the file; they are checked like the file and kept in ``source``.
    """
    path = Path(path)
    if not path.suffix and not path.exists():
        path = paths.EXPERIMENTS_DIR / f"{path}.toml"
    raw = read_toml(path, "experiment file")
    for setting in overrides:
        _override(raw, setting, path)
    exp = _validate(raw, path)
    exp = exp.replace(  # paths relative to the file's folder (paths.in_experiment_file)
        **{key: paths.in_experiment_file(getattr(exp, key), path) for key in ("solver", "net", "weights")},
        source=" ".join([str(path), *(f"--set {o}" for o in overrides)]),
    )
    exp = check(exp, path)
    resolve_path = paths.resolve_path
    if not resolve_path(exp.solver).is_file():
        raise OlmpError(f"solver {resolve_path(exp.solver)} does not exist", path)
    if not resolve_path(exp.net).is_file():
        raise OlmpError(f"net {resolve_path(exp.net)} does not exist", path)
    from olmp.prototxt import check_experiment_net  # noqa: PLC0415  (imports Caffe: after every other check)

    check_experiment_net(exp.net, exp.solver, path)
    return exp
