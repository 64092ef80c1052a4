"""The experiment's ``mode``: the random stream, the candidate evaluation, the optimizer options.

The three go together, so they are chosen together here and nowhere else:

- standard: draws from PCG64 with one seed per search; candidates start from the live masks,
  which are put back, and the best is re-checked on the whole batch; no optimizer options.
- released (reference doc §9): the scripts' legacy MT19937 stream, shared by everything;
  cumulative evaluation (nothing put back); the optimizer's ``released`` option (clipping,
  draw order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from olmp.candidate import CandidateEvaluator, CumulativeEvaluator
from olmp.draws import ReleasedDraws, StandardDraws


@dataclass(frozen=True)
class Mode:
    name: str
    draws: type[StandardDraws] | type[ReleasedDraws]
    evaluator: type[CandidateEvaluator] | type[CumulativeEvaluator]
    optimizer_options: dict[str, Any] = field(default_factory=dict)


MODES: dict[str, Mode] = {
    "standard": Mode("standard", StandardDraws, CandidateEvaluator),
    "released": Mode("released", ReleasedDraws, CumulativeEvaluator, {"released": True}),
}
