"""A run record (``record.json``): the one place that reads, names and writes it.

Tables, the comparison, the figures, the side-by-side table and ``olmp prune``'s default folder all
name runs the same way, so that naming lives here once:

- ``kind``: what a run is filed under: the optimizer for a method that searches (OLMP), else the
  method (a baseline runs no search); the record's ``optimizer`` field holds it, and folders are
  ``<kind>-seed<seed>``;
- ``label``: the method as the comparison names it (``olmp-ncs``, ``dns``);
- ``variant``: the run's departure from its method's usual settings (``rewind``, ``released``...),
  ``""`` for the paper's settings; the experiment's ``variant`` setting, recorded with it;
- ``group``: the summary row of ``runs.md``: the kind, with the variant and the authors' reference apart.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmp import atomic, paths, schemas
from olmp.errors import OlmpError

FILE = "record.json"


def kind(method: str, optimizer: str, searches: bool) -> str:
    """The optimizer where the method searches (the policy's ``searches``), else the method, which
    then names the run alone: tables group a baseline's runs under it."""
    return optimizer if searches else method


def run_name(method: str, optimizer: str, seed: int, searches: bool) -> str:
    """A run's default folder name, ``<kind>-seed<seed>`` (``ncs-seed1``, ``dns-seed1``)."""
    return f"{kind(method, optimizer, searches)}-seed{seed}"


def _own_reference(weights: str) -> bool:
    """Pruned from the project's own reference model, not from one of the authors' released ones."""
    return paths.external_models_dir().name not in Path(weights).parts


@dataclass(frozen=True, eq=False)
class RunRecord:
    """One run record as the reports read it: its identity up front, the raw JSON in ``raw``."""

    method: str
    optimizer: str  # the record's optimizer field: the kind (the method, for a baseline)
    variant: str  # "" for the method's usual (the paper's) settings
    seed: int
    own_reference: bool
    provenance: dict[str, Any] | None  # which code and machine made it; None in records before it existed
    raw: dict[str, Any] = field(repr=False)
    path: Path | None = None  # the record.json it was read from

    @classmethod
    def from_dict(cls, data: Any, path: str | Path | None = None) -> RunRecord:
        """Check and wrap a record's JSON; a malformed one is a one-line error naming ``path``."""
        where = None if path is None else Path(path)
        if not isinstance(data, dict):
            raise OlmpError("a run record must be a JSON object", where)
        finished = data.get("finished") is True
        schemas.check(schemas.FinishedRunRecord if finished else schemas.RunRecordFile, data,
                      "finished run record" if finished else "run record", where)
        exp = data["experiment"]
        return cls(method=data["method"], optimizer=data["optimizer"], variant=exp["variant"],
                   seed=data["seed"], own_reference=_own_reference(exp["weights"]),
                   provenance=data.get("provenance"), raw=data, path=where)

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """Read ``path`` (a record.json); unreadable or malformed is a one-line error naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise OlmpError("run record not found", path) from None
        except (OSError, ValueError) as exc:
            raise OlmpError(f"unreadable run record ({exc})", path) from None
        return cls.from_dict(data, path)

    # -- names ------------------------------------------------------------------------------
    @property
    def searched(self) -> bool:
        """Whether the run searched: the record files it under its optimizer, not under its method."""
        return self.optimizer != self.method

    @property
    def method_searches(self) -> bool:
        """Whether the run's method searches crates, as its policy class says (OLMP's runs, not the baselines')."""
        from olmp.policies import POLICIES  # noqa: PLC0415  (the policies import pycma: only when asked)

        policy = POLICIES.get(self.method)
        return policy is not None and policy.searches

    @property
    def policy_label(self) -> str:
        """The method's short name in the reports, as its policy class gives it (else the method)."""
        from olmp.policies import POLICIES  # noqa: PLC0415

        policy = POLICIES.get(self.method)
        return (policy.short or policy.name) if policy is not None else self.method

    @property
    def label(self) -> str:
        """The method as the comparison names it: ``<method>-<optimizer>`` where it searched, else the method."""
        return f"{self.method}-{self.optimizer}" if self.searched else self.method

    @property
    def series(self) -> str:
        """The label, with the variant where the run departs from the paper's settings."""
        return self.label + (f" ({self.variant})" if self.variant else "")

    @property
    def group(self) -> str:
        """The summary group: the kind, with the variant and the authors' reference models apart."""
        tags = [self.variant] if self.variant else []
        if not self.own_reference:
            tags.append("authors' reference")
        return self.optimizer + (f" ({', '.join(tags)})" if tags else "")

    @property
    def name(self) -> str:
        """The run's folder name where known (as in runs.csv), else ``<kind>-seed<seed>``."""
        return self.path.parent.name if self.path is not None else f"{self.optimizer}-seed{self.seed}"

    @property
    def paper_setting(self) -> bool:
        """The paper's settings on the project's own reference model: what the method is judged by."""
        return self.own_reference and not self.variant

    # -- contents ---------------------------------------------------------------------------
    @property
    def dir(self) -> Path | None:
        return None if self.path is None else self.path.parent

    @property
    def finished(self) -> bool:
        return bool(self.raw.get("finished"))

    @property
    def experiment(self) -> dict[str, Any]:
        return self.raw["experiment"]

    @property
    def reference(self) -> dict[str, Any]:
        return self.raw.get("reference") or {}

    @property
    def final(self) -> dict[str, Any]:
        return self.raw["final"]

    @property
    def seconds(self) -> dict[str, Any]:
        return self.raw.get("seconds") or {}

    @property
    def progress(self) -> list[dict[str, Any]]:
        return self.raw.get("progress") or []

    @property
    def searches(self) -> list[dict[str, Any]]:
        return self.raw.get("searches") or []

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON, as a copy (the record itself stays as read)."""
        return copy.deepcopy(self.raw)


def new_record(experiment: Mapping[str, Any], reference: dict[str, Any], *, searches: bool,
               provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record a new run starts and fills in (progress, searches, then final and seconds).

    ``experiment`` is the experiment's settings as a dict (``Experiment.to_dict()``): its ``variant``
    is recorded with it, and the record's identity fields (seed, method, kind) are taken from it.
    ``searches``: whether the method searches (its policy's ``searches``), which decides the kind.
    """
    if provenance is None:
        from olmp import provenance as prov  # noqa: PLC0415  (runs git: only when a run starts)

        provenance = prov.collect()
    exp = dict(experiment)
    method = exp["method"]
    return {
        "experiment": exp,
        "seed": exp["seed"],
        "method": method,
        "optimizer": kind(method, exp["optimizer"], searches),
        "reference": reference,
        "searches": [],
        "selections": {n: 0 for n in exp["layers"]},  # iterations each layer was selected (all niter)
        "progress": [],
        "finished": False,
        "provenance": provenance,  # which code and machine made it
    }


def write(path: str | Path, rec: RunRecord | Mapping[str, Any]) -> None:
    """Write a run record atomically (never seen half-written); the only writer of record.json."""
    atomic.write_json(path, rec.to_dict() if isinstance(rec, RunRecord) else dict(rec))
