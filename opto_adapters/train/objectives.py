"""Score and cost as two objectives: the front of candidates over (score, -tokens), and a pick.

A candidate is a ``Point``: its score (higher is better) and the app's tokens per evaluation
(lower is better; ``None`` when the app's model reported none, which counts as the most
expensive). The front holds every point no other point dominates (at least as good on both,
better on one). ``pick`` chooses one point of a front by a rule:

- ``"best"``: the highest score (the cheapest of those tied);
- ``"cheapest"``: the fewest tokens (the best score of those tied);
- ``"cheapest-within:D"``: the cheapest point whose score is at most ``D`` below the best
  (``"cheapest-within:0.01"``: within 1 point, for scores in [0, 1]).

``points_from_store`` reads the points of a stored run: each version scored on the whole
selection split (val, or train without val).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .store import Store

__all__ = ["RULES", "Point", "front", "parse_rule", "pick", "points_from_store"]

RULES = ("best", "cheapest", "cheapest-within:D")
_EPS = 1e-12


@dataclass(frozen=True)
class Point:
    """A candidate on the two objectives; ``key`` names it (a version id, a candidate...)."""

    key: Any
    score: float
    tokens: float | None = None

    @property
    def cost(self) -> float:
        return math.inf if self.tokens is None else float(self.tokens)


def _dominates(a: Point, b: Point) -> bool:
    at_least = a.score >= b.score - _EPS and a.cost <= b.cost + _EPS
    better = a.score > b.score + _EPS or a.cost < b.cost - _EPS
    return at_least and better


def front(points: Iterable[Point]) -> list[Point]:
    """The points no other point dominates, best score first (ties: cheapest first). Points
    equal on both objectives are all kept."""
    pts = sorted(points, key=lambda p: (-p.score, p.cost))
    return [p for p in pts if not any(_dominates(q, p) for q in pts)]  # a pool is small: O(n^2)


def parse_rule(rule: str) -> tuple[str, float]:
    """(rule name, margin) of a rule text (see the module docstring)."""
    name, _, margin = rule.strip().partition(":")
    if name in ("best", "cheapest") and not margin:
        return name, 0.0
    if name == "cheapest-within":
        try:
            d = float(margin)
        except ValueError:
            d = math.nan
        if math.isfinite(d) and d >= 0:
            return name, d
        raise ValueError(f"the rule {rule!r} needs a score margin >= 0: e.g. 'cheapest-within:0.01'")
    raise ValueError(f"unknown pick rule {rule!r}; the rules are {RULES} (D: a score margin, e.g. 0.01)")


def pick(points: Sequence[Point], rule: str = "best") -> Point:
    """The point of ``points`` (a front, or any points: the front is taken first) ``rule`` chooses."""
    name, margin = parse_rule(rule)
    candidates = front(points)
    if not candidates:
        raise ValueError("no points to pick from: no candidate was scored on the whole selection split")
    if name == "best":
        return min(candidates, key=lambda p: (-p.score, p.cost))
    if name == "cheapest":
        return min(candidates, key=lambda p: (p.cost, -p.score))
    best = max(p.score for p in candidates)
    near = [p for p in candidates if p.score >= best - margin - _EPS]
    return min(near, key=lambda p: (p.cost, -p.score))


def points_from_store(store: Store, run_id: int) -> list[Point]:
    """Every version of a run scored on its whole selection split (val, else train), as points
    keyed by version id: the mean score and the mean app tokens per evaluation there."""
    run = store.run(run_id)
    split = "val" if run.config.get("val_size") else "train"
    size = int(run.config.get(f"{split}_size") or 0)
    scores: dict[int, dict[int, list[float]]] = {}  # version -> example -> its repeats' scores
    for e in store.evaluations(run_id, split=split):
        if e.score is not None:
            scores.setdefault(e.version_id, {}).setdefault(e.index, []).append(float(e.score))
    usage = store.app_usage(run_id, split)
    return [
        Point(v, sum(sum(r) / len(r) for r in per.values()) / len(per), usage[v].tokens if v in usage else None)
        for v, per in sorted(scores.items())
        if size and len(per) == size
    ]
