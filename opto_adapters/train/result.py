"""What a training run produced: scores, the history of its steps, the values it kept.

``TrainResult`` is what ``optimize``/``Trainer.fit`` return; ``build_result`` reads one from a
store, so a finished (or stopped) run can be looked at again later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .store import AppUsage, Store

__all__ = ["DONE", "FrontCandidate", "Scores", "StepSummary", "TrainResult", "build_result"]

# the statuses of a finished step (a stopped run may have one "started")
DONE = ("accepted", "rejected", "no_change")


@dataclass(frozen=True)
class Scores:
    """Mean scores of one set of parameter values (``None`` where not evaluated).

    ``counts`` holds (split, examples scored, examples in the split); a mean over fewer
    examples than the split has (a run stopped while evaluating) is ``partial``."""

    train: float | None = None
    val: float | None = None
    counts: tuple[tuple[str, int, int], ...] = ()

    def partial(self, split: str) -> bool:
        """Whether the mean on ``split`` covers only some of its examples."""
        return any(s == split and 0 < n < size for s, n, size in self.counts)

    def text(self, split: str) -> str:
        """The mean on ``split`` as text: ``-`` when not evaluated, marked when partial."""
        score = self.train if split == "train" else self.val
        if score is None:
            return "-"
        n, size = next(((n, size) for s, n, size in self.counts if s == split), (0, 0))
        return f"{score:.3f} (partial: {n} of {size})" if self.partial(split) else f"{score:.3f}"


@dataclass(frozen=True)
class StepSummary:
    """What one step did.

    ``train_score`` is the minibatch mean before the step; ``gate_score`` the current values'
    score on the gate set (val, or the minibatch); ``candidate_scores`` the candidates' scores
    there (``None`` for a candidate that changed nothing); ``val_score`` the val score of the
    values kept after the step.
    """

    step: int
    epoch: int
    batch: list[int]
    status: str
    reason: str
    train_score: float | None
    gate_score: float | None
    candidate_scores: list[float | None]
    val_score: float | None


@dataclass(frozen=True)
class FrontCandidate:
    """A candidate on the Pareto search's front: no other candidate of the pool is at least as
    good on every validation example and better on one.

    ``scores`` holds its score on each validation example (on each training example when the
    run had no ``val``), ``mean`` their mean; ``parents`` are the version ids it came from
    (none for the seed, two for a merge); ``kind`` is ``seed``, ``mutation`` or ``merge``;
    ``tokens`` the app's own tokens per evaluation there (``None``: its model reported none).
    """

    version_id: int
    values: dict[str, Any]
    scores: list[float | None]
    mean: float | None
    parents: list[int]
    step: int
    kind: str
    tokens: float | None = None


@dataclass
class TrainResult:
    """The outcome of ``optimize``/``Trainer.fit``.

    ``baseline`` scores the starting values, ``final`` the values training ended with, and
    ``best`` the best values seen (on val, or on the full training set without val), which
    are written back into the app. ``status`` is ``completed``, ``max_steps``,
    ``interrupted``, ``budget_exhausted``, ``time_limit`` or ``max_metric_calls``. ``front``
    lists the Pareto search's front (empty for the greedy search).
    """

    run_id: int
    store_path: str
    status: str
    message: str | None
    baseline: Scores
    best: Scores
    final: Scores
    best_values: dict[str, Any]
    history: list[StepSummary] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    app_usage: dict[str, AppUsage] = field(default_factory=dict)
    """The app's own model usage per evaluation (tokens, model calls, latency) of the
    ``baseline``, ``best`` and ``final`` values, on val (on train without val)."""
    front: list[FrontCandidate] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        """How many steps changed the values."""
        return sum(1 for s in self.history if s.status == "accepted")

    @property
    def steps_done(self) -> int:
        """How many steps were completed (a stopped run may have one ``started``)."""
        return sum(1 for s in self.history if s.status in DONE)



def build_result(store: Store, run_id: int) -> TrainResult:
    """A ``TrainResult`` from what a store holds about a run."""
    run = store.run(run_id)

    def scores(version: int | None) -> Scores:
        if version is None:
            return Scores()
        (train, n_train), (val, n_val) = (store.mean_score(run_id, version, split) for split in ("train", "val"))
        sizes = run.config
        counts = (
            ("train", n_train, int(sizes.get("train_size") or 0)),
            ("val", n_val, int(sizes.get("val_size") or 0)),
        )
        return Scores(train=train, val=val, counts=counts)

    by_step: dict[int, list[float | None]] = {}
    for cand in store.candidates(run_id):
        by_step.setdefault(cand.step, []).append(cand.score)
    history = [
        StepSummary(
            step=s.step, epoch=s.epoch, batch=s.indices, status=s.status, reason=s.reason or "",
            train_score=s.train_score, gate_score=s.gate_score,
            candidate_scores=by_step.get(s.step, []), val_score=s.val_score,
        )
        for s in store.steps(run_id)
    ]
    best = run.best_version_id or run.current_version_id
    app = store.app_usage(run_id, "val" if run.config.get("val_size") else "train")
    versions = {"baseline": run.baseline_version_id, "best": best, "final": run.current_version_id}
    return TrainResult(
        front=front(store, run_id),
        run_id=run_id,
        store_path=store.path,
        status=run.status,
        message=run.message,
        baseline=scores(run.baseline_version_id),
        best=scores(best),
        final=scores(run.current_version_id),
        best_values=store.version_values(best) if best is not None else {},
        history=history,
        usage=store.usage(run_id),
        app_usage={k: app[v] for k, v in versions.items() if v in app},
    )


def front(store: Store, run_id: int) -> list[FrontCandidate]:
    """The front of a run's Pareto pool, as stored (in the order its members joined)."""
    members = [m for m in store.pool(run_id) if m.on_front]
    if not members:
        return []
    config = store.run(run_id).config
    split = "val" if config.get("val_size") else "train"
    size = int(config.get(f"{split}_size") or 0)
    matrix = store.score_matrix(run_id, [m.version_id for m in members], split, size)
    usage = store.app_usage(run_id, split)
    out = []
    for m in members:
        scores = matrix[m.version_id]
        known = [s for s in scores if s is not None]
        out.append(
            FrontCandidate(
                version_id=m.version_id, values=store.version_values(m.version_id), scores=scores,
                mean=sum(known) / len(known) if known else None, parents=list(m.parents),
                step=m.step, kind=m.kind,
                tokens=usage[m.version_id].tokens if m.version_id in usage else None,
            )
        )
    return out
