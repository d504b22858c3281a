"""The Pareto pool's arithmetic, as pure functions: the front, parent sampling, merge choice.

Candidates are keys (the search uses parameter version ids) with one score per validation
example. A candidate is on the **front** when no other is at least as good on every example
and better on one. A candidate **leads** on an example when no other scores higher there;
parents are drawn from the front with a weight equal to the number of examples each leads
on, so a candidate that is best on a few examples survives beside one that is best on
average (examples every candidate scores alike are not counted: everyone leads there). A **merge** takes two candidates that descend from a common ancestor and changed
different parameters, and keeps each changed parameter from the candidate that changed it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "Merge",
    "ancestors",
    "changed",
    "common_ancestor",
    "dominates",
    "find_merge",
    "leads",
    "merge_values",
    "pareto_front",
    "sample_parents",
]

K = TypeVar("K", bound=Hashable)

EPS = 1e-9


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every example and better on one."""
    if len(a) != len(b):
        raise ValueError(f"score vectors of different lengths ({len(a)} and {len(b)}) cannot be compared")
    better = False
    for x, y in zip(a, b, strict=True):
        if x < y - EPS:
            return False
        if x > y + EPS:
            better = True
    return better


def pareto_front(scores: Mapping[K, Sequence[float]]) -> list[K]:
    """The candidates no other dominates, in the order of ``scores``."""
    keys = list(scores)
    return [k for k in keys if not any(dominates(scores[o], scores[k]) for o in keys if o != k)]


def leads(scores: Mapping[K, Sequence[float]]) -> dict[K, int]:
    """For each candidate, on how many examples no other candidate scores higher."""
    counts = dict.fromkeys(scores, 0)
    vectors = list(scores.values())
    if not vectors:
        return counts
    for i in range(len(vectors[0])):
        top = max(v[i] for v in vectors)
        for k, v in scores.items():
            if v[i] >= top - EPS:
                counts[k] += 1
    return counts


def sample_parents(scores: Mapping[K, Sequence[float]], k: int, rng: random.Random) -> list[K]:
    """Up to ``k`` distinct parents from the front, drawn with weights = examples led (fewer
    when fewer front candidates lead somewhere: the same parent twice would show the optimizer
    the same evidence twice)."""
    if not scores:
        raise ValueError("no candidates to sample parents from")
    counts = leads(_telling(scores))
    left = [(c, counts[c]) for c in pareto_front(scores) if counts[c] > 0]
    if not left:  # no example tells the candidates apart: every front candidate alike
        left = [(c, 1) for c in pareto_front(scores)]
    chosen: list[K] = []
    while left and len(chosen) < k:
        pick = rng.random() * sum(w for _, w in left)
        for j, (c, w) in enumerate(left):
            pick -= w
            if pick < 0 or j == len(left) - 1:
                chosen.append(c)
                del left[j]
                break
    return chosen


def _telling(scores: Mapping[K, Sequence[float]]) -> dict[K, list[float]]:
    """The score vectors without the examples on which every candidate scores the same: a
    lead there (everyone leads) says nothing about which candidate is stronger."""
    vectors = list(scores.values())
    if not vectors:
        return {}
    keep = [i for i in range(len(vectors[0])) if max(v[i] for v in vectors) - min(v[i] for v in vectors) > EPS]
    return {k: [v[i] for i in keep] for k, v in scores.items()}


def ancestors(key: K, parents: Mapping[K, Sequence[K]]) -> set[K]:
    """``key`` and every candidate it descends from."""
    seen = {key}
    todo = [key]
    while todo:
        for p in parents.get(todo.pop(), ()):
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return seen


def common_ancestor(a: K, b: K, parents: Mapping[K, Sequence[K]], order: Sequence[K]) -> K | None:
    """The most recent (latest in ``order``) candidate both ``a`` and ``b`` descend from."""
    shared = ancestors(a, parents) & ancestors(b, parents)
    latest = [k for k in order if k in shared]
    return latest[-1] if latest else None


def changed(values: Mapping[str, Any], base: Mapping[str, Any]) -> set[str]:
    """The parameter names whose value in ``values`` differs from ``base``'s."""
    return {n for n, v in values.items() if n not in base or base[n] != v}


def merge_values(
    a: Mapping[str, Any], b: Mapping[str, Any], ancestor: Mapping[str, Any]
) -> dict[str, Any] | None:
    """``ancestor``'s values with each parameter ``a`` changed taken from ``a`` and each one
    ``b`` changed from ``b``; ``None`` unless both changed something and nothing in common."""
    ca, cb = changed(a, ancestor), changed(b, ancestor)
    if not ca or not cb or ca & cb:
        return None
    merged = dict(ancestor)
    merged.update({n: a[n] for n in ca})
    merged.update({n: b[n] for n in cb})
    return merged


@dataclass(frozen=True)
class Merge:
    """Two candidates to combine, their common ancestor and the combined values."""

    a: Any
    b: Any
    ancestor: Any
    values: dict[str, Any]


def find_merge(
    order: Sequence[K],
    scores: Mapping[K, Sequence[float]],
    parents: Mapping[K, Sequence[K]],
    values: Mapping[K, Mapping[str, Any]],
    tried: Iterable[frozenset[K]] = (),
    front: Iterable[K] | None = None,
) -> Merge | None:
    """The first pair worth merging, or ``None``: pairs of front candidates first, then pairs
    with one on the front, each group by the sum of their mean scores (best first); a pair
    already ``tried`` or whose combination is already a candidate is skipped. ``front``: the
    front when it is kept over more than ``scores`` (e.g. tokens too)."""
    front = set(pareto_front({k: scores[k] for k in order}) if front is None else front)
    known = {_frozen(values[k]) for k in order}
    done = set(tried)
    position = {k: i for i, k in enumerate(order)}

    def mean(k: K) -> float:
        s = scores[k]
        return sum(s) / len(s) if s else 0.0

    pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1 :] if a in front or b in front]
    pairs.sort(key=lambda p: (-((p[0] in front) + (p[1] in front)), -(mean(p[0]) + mean(p[1])), position[p[0]], position[p[1]]))
    for a, b in pairs:
        if frozenset((a, b)) in done:
            continue
        anc = common_ancestor(a, b, parents, order)
        if anc is None or anc in (a, b):
            continue
        merged = merge_values(values[a], values[b], values[anc])
        if merged is not None and _frozen(merged) not in known:
            return Merge(a, b, anc, merged)
    return None


def _frozen(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), sort_keys=True, default=repr)
