"""Noise-aware acceptance: is a candidate really better than the incumbent, or just lucky?

A candidate and the incumbent are scored on the same gate examples, each example possibly
evaluated several times (``repeats``). ``paired_bootstrap`` gives a confidence interval of the
mean difference (candidate - incumbent) over examples; ``accept`` keeps the candidate only if
the interval's lower bound is at least ``-tolerance``.

Pairing: the unit is the example, not the (example, repeat): repeat ``i`` of the candidate and
repeat ``i`` of the incumbent are independent draws, so nothing pairs them. The bootstrap is
two-level: each resample draws examples with replacement (the pairing, which removes the
examples' own difficulty from the comparison) and, inside each drawn example, redraws each
side's repeats with replacement (the evaluation noise; 256 such redraws are made per example
once, and each resample picks among them, so a resample costs one draw per example). With one
repeat per example it is the ordinary paired bootstrap over examples. So that the noise is not
counted twice (an example's observed difference holds its noise already), the examples'
differences are drawn around the mean difference with the spread that remains once the repeats'
noise is taken out (their unbiased variance, as a bootstrap mean varies (n - 1)/n as much as the
mean itself), and the redraws add the noise back. Percentile interval; pure Python,
deterministic for a given ``seed``.

How well it holds its level (``benchmarks/bench_acceptance.py``, noise sd 0.2): a candidate
that is no better is accepted 3-4% of the time with 10 or 30 examples, with or without repeats
(2.5% is the one-sided level at 95%; the mean rule accepts about half), and a +0.1 better one
46% of the time with 10 examples x 3 repeats, 90% with 30 x 3. With 3 examples and one repeat a
bootstrap sees too little of the noise and about 12% pass: give small gate sets ``repeats``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

__all__ = ["DEFAULT_RESAMPLES", "Decision", "Interval", "accept", "paired_bootstrap"]

DEFAULT_RESAMPLES = 2000
_EPS = 1e-9
_POOL = 256  # redraws of one example's repeats kept to resample from

Scores = Sequence[float] | Sequence[Sequence[float]]
"""Per example: one score, or the scores of its repeats."""


@dataclass(frozen=True)
class Interval:
    """A confidence interval of the mean difference (candidate - incumbent) over examples."""

    low: float
    high: float
    mean_diff: float
    confidence: float

    def __str__(self) -> str:
        return f"{self.mean_diff:+.4g} ({self.confidence:.0%} CI [{self.low:+.4g}, {self.high:+.4g}])"


@dataclass(frozen=True)
class Decision:
    """Whether a candidate is accepted, why (a sentence), and the interval it was judged on."""

    accepted: bool
    reason: str
    interval: Interval


def _var(xs: list[float]) -> float:
    """The variance of ``xs`` (divided by its length: what redrawing them gives their mean)."""
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / len(xs)


def _repeats(scores: Scores, side: str) -> list[list[float]]:
    out = []
    for i, s in enumerate(scores):
        reps = [float(s)] if isinstance(s, (int, float)) else [float(x) for x in s]
        if not reps:
            raise ValueError(f"{side} example {i} has no score: every example needs at least one")
        if not all(math.isfinite(x) for x in reps):
            raise ValueError(f"{side} example {i} has a score that is not a finite number: {reps}")
        out.append(reps)
    return out


def paired_bootstrap(
    child: Scores,
    incumbent: Scores,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The ``confidence`` interval of mean(child - incumbent) over examples (see the module
    docstring). ``child[i]`` and ``incumbent[i]`` score the same example ``i``: one score each,
    or the scores of its repeats (the two sides may have different numbers of repeats)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive int, got {resamples!r}")
    a, b = _repeats(child, "child"), _repeats(incumbent, "incumbent")
    if len(a) != len(b):
        raise ValueError(
            f"child and incumbent must score the same examples: {len(a)} child vs {len(b)} incumbent"
        )
    if not a:
        raise ValueError("no examples to compare: the gate set is empty")
    mean_diff = fmean(fmean(x) - fmean(y) for x, y in zip(a, b, strict=True))
    rng = random.Random(seed)
    n = len(a)
    noisy = any(len(set(x)) > 1 for x in a) or any(len(set(y)) > 1 for y in b)
    diffs = [fmean(x) - fmean(y) for x, y in zip(a, b, strict=True)]
    # how much the examples' differences spread: their unbiased variance (a bootstrap mean varies
    # (n - 1)/n as much as the mean does), less the part the repeats' noise explains, which the
    # redraws below add back (else the noise would count twice)
    spread = sum((d - mean_diff) ** 2 for d in diffs) / n
    unbiased = spread * n / (n - 1) if n > 1 else 0.0
    noise = fmean(_var(x) / len(x) + _var(y) / len(y) for x, y in zip(a, b, strict=True)) if noisy else 0.0
    scale = math.sqrt(max(0.0, unbiased - noise) / spread) if spread > 0 else 0.0
    centres = [mean_diff + (d - mean_diff) * scale for d in diffs]
    if noisy:
        # each example's redraws of its repeats, made once: drawing an example, then one of its
        # _POOL redraws, is one draw from the whole pool (every example has as many)
        pool: list[float] = []
        for x, y, d, c in zip(a, b, diffs, centres, strict=True):
            rx, ry = len(x), len(y)
            xs, ys = rng.choices(x, k=rx * _POOL), rng.choices(y, k=ry * _POOL)
            pool.extend(
                c + sum(xs[j * rx : (j + 1) * rx]) / rx - sum(ys[j * ry : (j + 1) * ry]) / ry - d
                for j in range(_POOL)
            )
    else:  # no spread inside any example: only the examples are redrawn
        pool = centres
    means = [sum(rng.choices(pool, k=n)) / n for _ in range(resamples)]
    means.sort()
    alpha = (1 - confidence) / 2
    low = means[min(resamples - 1, max(0, math.floor(alpha * resamples)))]
    high = means[min(resamples - 1, max(0, math.ceil((1 - alpha) * resamples) - 1))]
    return Interval(low=low, high=high, mean_diff=mean_diff, confidence=confidence)


def accept(
    child_scores: Scores,
    incumbent_scores: Scores,
    *,
    tolerance: float = 0.0,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Decision:
    """Accept the child if the lower bound of the paired bootstrap interval of
    (child - incumbent) is at least ``-tolerance`` (ties within float rounding count)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    interval = paired_bootstrap(
        child_scores, incumbent_scores, confidence=confidence, resamples=resamples, seed=seed
    )
    bound = -float(tolerance) if tolerance else 0.0
    shown = f"{bound:.4g}" if bound else "0"
    if interval.low >= bound - _EPS:
        reason = f"difference {interval}: its lower bound is >= {shown}"
        return Decision(True, reason, interval)
    reason = f"difference {interval}: its lower bound is below {shown}, it may be luck"
    return Decision(False, reason, interval)
