"""The experiment's ``mode``: the random stream, the candidate evaluation, the optimizer options.

The three go together, so they are chosen together here and nowhere else:

- standard: draws from PCG64 with one seed per search; candidates start from the live masks,
  which are put back, and the best is re-checked on the whole batch; no optimizer options.
- released (reference doc §9): the scripts' legacy MT19937 stream, shared by everything;
  cumulative evaluation (nothing put back); the optimizer's ``released`` option (clipping,
  draw order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from olmp.candidate import CandidateEvaluator, CumulativeEvaluator
from olmp.draws import ReleasedDraws, StandardDraws

if TYPE_CHECKING:
    from olmp.config import Experiment

# (experiment, the policy registry) -> [(met, what the mode needs, in the error's words)]
Requirements = Callable[["Experiment", Mapping[str, Any]], list[tuple[bool, str]]]


def _nothing(exp: Experiment, policies: Mapping[str, Any]) -> list[tuple[bool, str]]:
    return []


def _what_the_scripts_did(exp: Experiment, policies: Mapping[str, Any]) -> list[tuple[bool, str]]:
    """The released mode re-enacts the scripts' search; only what they did is accepted with it."""
    s = exp.search
    searching = " or ".join(f"'{name}'" for name, cls in policies.items() if cls.searches)
    return [(policies[exp.method].searches, f"method = {searching}"),
            (exp.optimizer == "sampling", "optimizer = 'sampling' (what the released NCS effectively ran)"),
            (s.accuracy_on == "minibatch", "search.accuracy_on = 'minibatch'"),
            (s.constraint == "penalty", "search.constraint = 'penalty'"),
            (s.chunks == 1, "search.chunks = 1"),
            (s.budget % s.population == 0, "search.budget a multiple of search.population")]


@dataclass(frozen=True)
class Mode:
    name: str
    draws: type[StandardDraws] | type[ReleasedDraws]
    evaluator: type[CandidateEvaluator] | type[CumulativeEvaluator]
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    requires: Requirements = _nothing  # what the config checks an experiment in this mode for
    reenacts_scripts: bool = False  # the authors' released scripts, not the paper's rule (reports set it apart)

    def unmet(self, exp: Experiment, policies: Mapping[str, Any]) -> list[str]:
        """What ``exp`` lacks for this mode, in the error's words (the config's check)."""
        return [why for ok, why in self.requires(exp, policies) if not ok]


MODES: dict[str, Mode] = {
    "standard": Mode("standard", StandardDraws, CandidateEvaluator),
    "released": Mode("released", ReleasedDraws, CumulativeEvaluator, {"released": True},
                     requires=_what_the_scripts_did, reenacts_scripts=True),
}


def reenacts_scripts(mode: str) -> bool:
    """Whether a record's ``experiment.mode`` re-enacted the authors' scripts (unknown: no)."""
    m = MODES.get(mode)
    return m is not None and m.reenacts_scripts
