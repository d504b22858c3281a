"""The trainer's settings, in one small validated object.

``TrainConfig`` holds the plain settings of a run, grouped by what they control; the objects a
run works with (the app, the data, the guide, the optimizer, the store, the budget) are passed
to ``Trainer``/``optimize`` directly. Every field can also be given to ``optimize(...)`` and
``Trainer(...)`` as a keyword of the same name (``optimize(app, train, epochs=3)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["ACCEPTANCE", "OBJECTIVES", "SEARCHES", "TrainConfig"]

SEARCHES = ("greedy", "pareto")
"""The search strategies (``TrainConfig.search``)."""

ACCEPTANCE = ("mean", "bootstrap")
"""The acceptance rules (see ``TrainConfig``)."""

OBJECTIVES = ("score", "tokens")
"""What the Pareto search keeps a front over (``TrainConfig.objectives``)."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run.

    Minibatches and proposals: ``epochs``, ``batch_size``, ``shuffle``, ``seed`` (the order of
    the minibatches), ``n_candidates`` (proposals per step; the best one is gated).

    Search: ``search`` (``"greedy"``: one incumbent, a candidate kept if it does not score
    worse on the gate set; ``"pareto"``: a pool of candidates, parents drawn from the Pareto
    front of per-example validation scores, see ``opto_adapters.train.search``),
    ``proposals_per_step`` (pareto: children per step, from different parents), ``merge``
    (pareto: also try combining two candidates that changed different parameters),
    ``objectives`` (pareto: ``("score",)``, or ``("score", "tokens")`` to keep on the front,
    and let through the minibatch gate, a candidate as good as another but cheaper in the app's
    own tokens per evaluation; the best values stay the best score, ``export --pick`` chooses a
    cheaper point). Both
    searches take up to ``epochs`` × (minibatches per epoch) steps: with ``max_metric_calls``,
    give enough epochs for the budget to be what stops the run.

    Limits: ``max_steps``, ``time_limit`` (seconds of one ``fit``), ``max_metric_calls`` (app
    runs scored by the guide, training and validation together, never exceeded); a token/call
    limit for the optimizer's LLM is a ``Budget`` passed as ``budget=``.

    Evaluation: ``max_concurrency`` (app runs in flight at once), ``executor`` (what runs them:
    ``"threads"``, the default, calls the app's sync entry point in ``max_concurrency``
    threads; ``"asyncio"`` its async one, ``ainvoke``/``aquery``/``achat``, as coroutines on one
    event loop; ``"ray"`` sends them to Ray workers, on the cluster at ``ray_address`` or the
    one already initialized or a local one, ``ray_workers`` of them; or an ``Executor`` such as
    ``RayExecutor(app_factory=...)``, see ``opto_adapters.train.executors``), ``error_score`` (the score
    of a run whose app raised, unless the guide scores it), ``tolerate_app_errors`` (do not stop
    when the app raises on every training example), ``infra_retries`` (how many times an app
    run whose model endpoint could not be reached, timed out or failed with a 5xx is tried
    again, waiting 0.5 s, 1 s, 2 s...; then the run stops as ``failed``, resumable: such a
    failure is never scored).

    Acceptance (``opto_adapters.train.acceptance``): ``repeats`` (evaluations of each gate
    and val example), ``acceptance`` (``"mean"``: today's rule, the candidate's mean gate score
    may not drop more than ``tolerance``; ``"bootstrap"``: the lower bound of the ``confidence``
    paired bootstrap interval of (candidate - current) must be at least ``-tolerance``;
    ``None``: ``"mean"``, over each example's mean of its repeats). The interval is not the
    default with repeats: under a rollout budget, requiring every step to be significant
    rejects most real but small improvements (see benchmarks/bench_search.py).

    Overfitting guard (``opto_adapters.train.guard``): ``guard_copies``, the share of a
    training example's word 6-grams a candidate prompt may newly contain before it is refused
    unevaluated (``None`` or ``False``: no guard; ``True``: the default 0.5).

    Record: ``run_name`` (a label in the store), ``store_graphs`` (keep every run's graph, which
    lets a resumed run reuse them), ``progress`` (tqdm bars on stderr).
    """

    epochs: int = 1
    batch_size: int = 4
    shuffle: bool = True
    seed: int = 0
    n_candidates: int = 1
    search: str = "greedy"
    proposals_per_step: int = 1
    merge: bool = False
    objectives: tuple[str, ...] = ("score",)
    max_steps: int | None = None
    max_metric_calls: int | None = None
    time_limit: float | None = None
    max_concurrency: int = 4
    executor: Any = "threads"
    ray_address: str | None = None
    ray_workers: int | None = None
    error_score: float = 0.0
    tolerate_app_errors: bool = False
    infra_retries: int = 2
    repeats: int = 1
    acceptance: str | None = None
    tolerance: float = 0.0
    confidence: float = 0.95
    guard_copies: float | bool | None = True
    run_name: str = ""
    store_graphs: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_concurrency", "n_candidates", "proposals_per_step", "repeats"):
            _positive_int(name, getattr(self, name))
        _check_executor(self.executor)
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            raise ValueError(f"ray_address must be a Ray cluster address (a str) or None, got {self.ray_address!r}")
        if self.ray_workers is not None:
            _positive_int("ray_workers", self.ray_workers)
        if isinstance(self.infra_retries, bool) or not isinstance(self.infra_retries, int) or self.infra_retries < 0:
            raise ValueError(f"infra_retries must be an int >= 0, got {self.infra_retries!r}")
        for name in ("max_steps", "max_metric_calls"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {list(SEARCHES)}, got {self.search!r}")
        object.__setattr__(self, "objectives", _objectives(self.objectives))
        if not isinstance(self.merge, bool):
            raise ValueError(f"merge must be True or False, got {self.merge!r}")
        limit = self.time_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
            raise ValueError(f"time_limit must be a positive number of seconds or None, got {limit!r}")
        score = self.error_score
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"error_score must be a finite number, got {score!r}")
        if self.acceptance not in (None, *ACCEPTANCE):
            raise ValueError(
                f"acceptance must be one of {ACCEPTANCE} or None (the mean rule), "
                f"got {self.acceptance!r}"
            )
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tolerance must be a finite number >= 0 (a score difference), got {tol!r}")
        conf = self.confidence
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 < conf < 1:
            raise ValueError(f"confidence must be a number between 0 and 1 (e.g. 0.95), got {conf!r}")
        guard = self.guard_copies
        if guard is not None and not isinstance(guard, bool) and (
            not isinstance(guard, (int, float)) or not 0 < guard <= 1
        ):
            raise ValueError(
                "guard_copies must be True (the default threshold), a share of an example's "
                f"word n-grams in (0, 1], or None/False (no guard), got {guard!r}"
            )

    @property
    def acceptance_rule(self) -> str:
        """The rule in force: ``acceptance``, or what ``None`` means for ``repeats``."""
        if self.acceptance is not None:
            return self.acceptance
        return "mean"  # repeats alone average each example; the interval is asked for

    @classmethod
    def names(cls) -> frozenset[str]:
        """The settings' names (each is also a keyword of ``optimize`` and ``Trainer``)."""
        return frozenset(f.name for f in fields(cls))

    def with_settings(self, settings: dict[str, Any]) -> TrainConfig:
        """A copy with ``settings`` changed; an unknown name is a ``TypeError`` naming the known ones."""
        unknown = sorted(set(settings) - self.names())
        if unknown:
            raise TypeError(
                f"unknown training option(s) {unknown}; the options are {sorted(self.names())} "
                "(and app, train, val, guide, optimizer, llm, objective, parameters, input_key, "
                "store, resume, budget, config)"
            )
        return replace(self, **settings) if settings else self


def _check_executor(executor: Any) -> None:
    from .executors import EXECUTORS, Executor

    if isinstance(executor, Executor) or executor in EXECUTORS:
        return
    raise ValueError(
        f"executor must be one of {list(EXECUTORS)} or an opto_adapters.train.executors.Executor, "
        f"got {executor!r}"
    )


def _objectives(value: Any) -> tuple[str, ...]:
    """``objectives`` as a tuple: a sequence of names, or one text such as "score,tokens"."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else value
    try:
        found = tuple(names)
    except TypeError:
        found = ()
    if not found or found[0] != "score" or len(set(found)) != len(found) or not set(found) <= set(OBJECTIVES):
        raise ValueError(
            f"objectives must be ('score',) or ('score', 'tokens') (the score first; 'tokens': "
            f"the app's own tokens per evaluation), got {value!r}"
        )
    return found


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
