"""When to run another round (docs/design.md §3.2: "stop when mIoU(k) - best < rounds.min_delta").

Round k+1 is requested only when the UDA method is multi-round, ``k < max_round`` and
``score(k) - max(score(0..k-1)) >= min_delta`` (round 0 has no previous round, so it always
continues when ``max_round > 0``). Scores are in the evaluation CSV's units (percent).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class RoundDecision:
    """What happened after round ``round``: its score, the best before it, and whether to go on."""

    round: int
    score: float
    best_before: float | None
    delta: float | None
    next_round: bool
    reason: str


def decide(round_: int, scores: Sequence[float], max_round: int, min_delta: float, multi_round: bool) -> RoundDecision:
    """Decision after round ``round_`` given ``scores[0..round_]``."""
    if len(scores) < round_ + 1:
        raise ValueError(f"need scores of rounds 0..{round_}, got {len(scores)}")
    score = float(scores[round_])
    previous = [float(s) for s in scores[:round_] if not math.isnan(float(s))]
    best_before = max(previous) if previous else None
    delta = None if best_before is None else score - best_before
    if not multi_round:
        return RoundDecision(round_, score, best_before, delta, False, "single-round method")
    if round_ >= max_round:
        return RoundDecision(round_, score, best_before, delta, False, f"reached rounds.max={max_round}")
    if math.isnan(score):
        return RoundDecision(round_, score, best_before, delta, False, "score is NaN")
    if delta is not None and delta < min_delta:
        return RoundDecision(round_, score, best_before, delta, False,
                             f"improvement {delta:+.3f} < rounds.min_delta={min_delta}")
    why = "first round" if delta is None else f"improvement {delta:+.3f} >= rounds.min_delta={min_delta}"
    return RoundDecision(round_, score, best_before, delta, True, why)


def best_round(scores: Sequence[float]) -> int:
    """Index of the best score (the first one on ties; NaN never wins)."""
    best, index = -math.inf, 0
    for k, s in enumerate(scores):
        s = float(s)
        if not math.isnan(s) and s > best:
            best, index = s, k
    return index
