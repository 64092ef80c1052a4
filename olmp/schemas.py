"""The shapes of the files olmp writes and reads back: one check per file kind.

Run records (``record.json``), a checkpoint's ``state.json`` and ``masks.npz``, the sparse npz's
``meta``, ``olmp train``'s ``train.json`` and transplant records are read by later commands; a file
damaged by hand, by a crash of another tool or by a disk is refused here in one line naming the file
and the key (``run/record.json: malformed run record: final.test.accuracy must be a number, got 'x'``),
never met later as a KeyError or TypeError deep inside a report.

The models check only what a reader reads, with its type; other keys are kept as written (records
from older versions of olmp carry keys newer ones do not, and the other way round). Numbers must be
finite: olmp writes ``null`` for a number that is not (see :func:`finite`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from olmp.errors import OlmpError


def finite(obj: Any) -> Any:
    """``obj`` for JSON, with every NaN or infinity replaced by ``null``: olmp's JSON is strict JSON,
    and ``null`` in a number's place means "not a finite number" (e.g. the ratio of a model with no
    parameter left). Containers are copied; tuples become lists, as JSON writes them anyway."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def _no_bool(value: Any) -> Any:
    """JSON's true is not the number 1."""
    if isinstance(value, bool):
        raise ValueError("a number, not true/false")
    return value


Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
Fraction = Annotated[Number, Field(ge=0, le=1)]
Count = Annotated[StrictInt, Field(ge=0)]
M = TypeVar("M", bound=BaseModel)
_KEEP = ConfigDict(extra="allow")  # keys a reader does not read are kept as written


class _Part(BaseModel):
    model_config = _KEEP


# ---- record.json -------------------------------------------------------------------------------

class TestResult(_Part):
    accuracy: Fraction


class LayerCount(_Part):
    total: Annotated[StrictInt, Field(ge=1)]
    remaining: Count


class Final(_Part):
    total: Annotated[StrictInt, Field(ge=1)]
    remaining: Count
    ratio: Annotated[Number, Field(ge=0)]
    layers: dict[str, LayerCount]
    test: TestResult


class Reference(_Part):
    weights: StrictStr | None = None
    test: TestResult


class Seconds(_Part):
    sgd: Number
    search: Number
    wall: Number | None = None
    this_session_wall: Number | None = None


class Progress(_Part):
    iteration: StrictInt
    ratio: Number
    test_accuracy: Fraction
    batch_accuracy: Fraction | None = None


class Search(_Part):
    trace: list[tuple[Number, Number | None]] = []


class PipelineSettings(_Part):
    prune_stop_iter: StrictInt = 0


class RecordedExperiment(_Part):
    name: StrictStr
    weights: StrictStr
    variant: StrictStr
    pipeline: PipelineSettings = PipelineSettings()


class RunRecordFile(_Part):
    """A run record as ``olmp prune`` writes it; unfinished ones live only inside a checkpoint."""

    experiment: RecordedExperiment
    optimizer: StrictStr
    seed: StrictInt
    method: StrictStr
    finished: StrictBool = False
    progress: list[Progress] = []
    searches: list[Search] = []
    provenance: dict[str, Any] | None = None


class FinishedRunRecord(RunRecordFile):
    reference: Reference
    final: Final
    seconds: Seconds


# ---- a checkpoint's state.json -----------------------------------------------------------------

class CheckpointState(_Part):
    """What ``Pipeline._state`` writes: where the run stands and what it has drawn."""

    class Record(RunRecordFile):
        progress: list[Progress]
        searches: list[Search]

    next_itr: Count
    rng: dict[str, Any]
    test_batches: Count
    record: Record
    sgd_seconds: Number
    search_seconds: Number
    wall_seconds: Number = 0.0
    policy: dict[str, dict[str, Number]]
    rewound: Count = 0


# ---- other files -------------------------------------------------------------------------------

class TrainTest(_Part):
    accuracy: Fraction
    loss: Number


class TrainRecord(_Part):
    """``olmp train``'s train.json, as references.md reads it."""

    iters: Annotated[StrictInt, Field(ge=1)]
    seed: Count
    train_seconds: Number
    test: TrainTest


class TransplantRecord(_Part):
    """A transplant record (``transplant/<pair>/record.json``), as mask-transplant.md reads it."""

    experiment: StrictStr | None = None  # the experiment's source: compared on a rerun, not tabulated
    masks: StrictStr
    weights: StrictStr
    ratio: Number
    test_before: Fraction
    test_final: Fraction
    test_best_over_curve: Fraction


class SparseBlob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shape: list[Annotated[StrictInt, Field(ge=0)]]


class SparseLayer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    type: StrictStr
    blobs: list[SparseBlob]


class SparseMeta(BaseModel):
    """The ``meta`` entry of an olmp sparse npz (olmp/sparse.py)."""

    model_config = ConfigDict(extra="forbid")
    format: StrictStr
    version: StrictInt
    index_bits: StrictInt
    source: StrictStr
    layers: list[SparseLayer]


# ---- checking ----------------------------------------------------------------------------------

def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def explain(exc: ValidationError) -> str:
    """The first problem of a ValidationError as ``KEY: what``, in one line."""
    err = exc.errors(include_url=False)[0]
    where = _loc(tuple(p for p in err["loc"] if p not in ("function-after", "function-before")))
    if err["type"] == "missing":
        return f"lacks {where}"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = str(err["msg"]).replace("Value error, ", "")
    return f"{where or 'the file'}: {msg[:1].lower() + msg[1:]}, got {shown}"


def check(model: type[M], data: Any, what: str, path: str | Path | None) -> M:
    """``data`` as ``model``; anything else is one OlmpError naming ``path`` and the key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise OlmpError(f"malformed {what}: {explain(exc)}", path) from None


def check_masks(masks: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], path: str | Path) -> None:
    """A checkpoint's masks.npz against the run's masks: the same keys and shapes, each value 0 or 1."""
    missing = sorted(set(shapes) - set(masks))
    extra = sorted(set(masks) - set(shapes))
    if missing or extra:
        parts = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"has unknown {', '.join(extra)}"]
                                                                        if extra else [])
        raise OlmpError(f"malformed masks archive: {'; '.join(parts)}", path)
    for key, shape in shapes.items():
        m = masks[key]
        if tuple(m.shape) != tuple(shape):
            raise OlmpError(f"malformed masks archive: {key} has shape {tuple(m.shape)}, the net's blob "
                            f"{tuple(shape)}", path)
        if m.dtype.kind not in "fiub" or not np.all((m == 0) | (m == 1)):
            raise OlmpError(f"malformed masks archive: {key} holds values other than 0 and 1", path)


def check_rng(state: Any, path: str | Path) -> None:
    """A drawn-numbers state (olmp/draws.py) that numpy accepts back: tried on a throwaway generator."""
    try:
        if "legacy_mt19937" in state:
            st = state["legacy_mt19937"]
            if len(st["key"]) != 624 or not 0 <= int(st["pos"]) <= 624:
                raise ValueError("key must hold 624 numbers and pos be in [0, 624]")
            np.random.RandomState().set_state(
                {"bit_generator": "MT19937", "state": {"key": np.array(st["key"], dtype=np.uint32),
                                                       "pos": int(st["pos"])},
                 "has_gauss": int(st["has_gauss"]), "gauss": float(st["gauss"])})
        else:
            np.random.default_rng().bit_generator.state = state
    except (KeyError, TypeError, ValueError, OverflowError, IndexError) as exc:
        raise OlmpError(f"malformed checkpoint state: rng: not a random generator's state ({exc})", path) from None
