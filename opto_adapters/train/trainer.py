"""The training loop: minibatches, feedback, proposals, validation gating, a stored history.

One step: run a minibatch of training examples (concurrently), score each output with the
guide, propagate the feedback through each run's graph, ask the optimizer for candidate
values, and keep the best candidate only if it does not score worse than the current values
on the gate set (``val``, or the minibatch itself when there is no ``val``). A rejected
candidate is reverted and its failure is added to the optimizer's memory.

Every evaluation is stored as it completes, keyed by (parameter version, split, example):
it is never computed twice in a run, and a resumed run picks up exactly where it stopped.
"""

from __future__ import annotations

import contextvars
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from tqdm import tqdm

from ..llm import Budget, BudgetExceeded
from ..trace import Feedback, Graph, Parameter, apply_updates
from ..trace.render import short_repr, value_text
from ..trace.tracer import TracedRun
from .apps import AppTracer, PythonApp, as_tracer, no_parameters_error
from .data import InputKey, app_inputs, call_guide, examples_list, fingerprint
from .errors import AppError, TrainingError
from .graphs import graph_from_json, graph_to_json
from .store import Store, StoredEvaluation

__all__ = ["Scores", "StepSummary", "TrainResult", "Trainer", "optimize"]

logger = logging.getLogger("opto_adapters.train")

Guide = Callable[[Any, Any], Any]
_EPS = 1e-9
_DONE = ("accepted", "rejected", "no_change")


@dataclass(frozen=True)
class Scores:
    """Mean scores of one set of parameter values (``None`` where not evaluated)."""

    train: float | None = None
    val: float | None = None


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


@dataclass
class TrainResult:
    """The outcome of ``optimize``/``Trainer.fit``.

    ``baseline`` scores the starting values, ``final`` the values training ended with, and
    ``best`` the best values seen (on val, or on the full training set without val), which
    are written back into the app. ``status`` is ``completed``, ``max_steps``,
    ``interrupted``, ``budget_exhausted`` or ``time_limit``.
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

    @property
    def accepted(self) -> int:
        """How many steps changed the values."""
        return sum(1 for s in self.history if s.status == "accepted")

    @property
    def steps_done(self) -> int:
        """How many steps were completed (a stopped run may have one ``started``)."""
        return sum(1 for s in self.history if s.status in _DONE)


class _Stop(Exception):
    """Stop the loop cleanly (time limit, max_steps); everything done so far is stored."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Result:
    """An evaluated example: its score and feedback, and its graph when one was needed."""

    index: int
    feedback: Feedback
    error: str | None
    graph: Graph | None = None

    @property
    def score(self) -> float:
        return float(self.feedback.score)  # type: ignore[arg-type]  # guaranteed by the guide check


@dataclass
class _Outcome:
    traced: TracedRun
    feedback: Feedback
    duration: float
    graph_json: dict[str, Any] | None


def _mean(results: Sequence[_Result]) -> float:
    return fmean(r.score for r in results)


class Trainer:
    """Optimize an app's parameters on ``train``, gated on ``val``; ``fit()`` runs it.

    ``app``: a LangChain runnable, a LlamaIndex engine or agent, a tracer, or a traced Python
    callable (see ``as_tracer``); ``guide(example, output)``: a score or scored ``Feedback``
    (see ``opto_adapters.train.data``).

    Options: ``optimizer`` (default ``OptoPrime`` over the app's parameters, with ``llm`` and
    ``objective``); ``parameters`` (for a plain callable); ``input_key`` (how an example
    becomes the app's input); ``epochs``, ``batch_size``, ``shuffle``, ``seed`` (the
    minibatches); ``max_concurrency`` (app runs in parallel threads); ``n_candidates``
    (proposals per step, the best is gated); ``store`` (a ``Store``, an SQLite path, or
    ``None`` for memory) and ``run_name``; ``resume`` (``True``: the latest run of the store,
    or a run id); ``budget`` (an ``opto_adapters.llm.Budget`` for the optimizer's LLM),
    ``time_limit`` (seconds of this ``fit``), ``max_steps``; ``error_score`` (the score of a
    run whose app raised, unless the guide scores it); ``tolerate_app_errors`` (do not stop
    when the app raises on every training example); ``store_graphs`` (keep every run's graph,
    which lets a resumed run reuse them); ``progress`` (tqdm bars on stderr).
    """

    def __init__(
        self,
        app: Any,
        train: Iterable[Any],
        val: Iterable[Any] | None = None,
        *,
        guide: Guide,
        optimizer: Any = None,
        llm: Any = None,
        objective: str | None = None,
        parameters: Iterable[Parameter] | None = None,
        input_key: InputKey = None,
        epochs: int = 1,
        batch_size: int = 4,
        max_concurrency: int = 4,
        n_candidates: int = 1,
        store: str | Store | None = None,
        resume: bool | int = False,
        run_name: str = "",
        budget: Budget | None = None,
        time_limit: float | None = None,
        max_steps: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        error_score: float = 0.0,
        tolerate_app_errors: bool = False,
        store_graphs: bool = True,
        progress: bool = True,
    ) -> None:
        _positive_int("epochs", epochs)
        _positive_int("batch_size", batch_size)
        _positive_int("max_concurrency", max_concurrency)
        _positive_int("n_candidates", n_candidates)
        if max_steps is not None:
            _positive_int("max_steps", max_steps)
        if time_limit is not None and (not isinstance(time_limit, (int, float)) or time_limit <= 0):
            raise ValueError(f"time_limit must be a positive number of seconds or None, got {time_limit!r}")
        if not callable(guide):
            raise TypeError(
                f"guide must be a function guide(example, output) -> score or Feedback, got "
                f"{type(guide).__name__}: {guide!r:.80}"
            )
        if not isinstance(error_score, (int, float)) or not math.isfinite(error_score):
            raise ValueError(f"error_score must be a finite number, got {error_score!r}")
        self.train = examples_list(train, "train", required=True)
        self.val = examples_list(val, "val", required=False)
        self.inputs = {
            "train": app_inputs(self.train, "train", input_key),
            "val": app_inputs(self.val, "val", input_key),
        }
        self.examples = {"train": self.train, "val": self.val}
        self.guide = guide
        self.tracer: AppTracer = as_tracer(app, parameters=parameters)
        self._probe: TracedRun | None = None
        if optimizer is None and not self.tracer.parameters and isinstance(self.tracer, PythonApp):
            # a plain function: its parameters are what its trace reaches; the run is reused
            # as the baseline evaluation of the first example
            self._probe = self.tracer.discover(self.inputs["train"][0])
        self.optimizer = self._make_optimizer(optimizer, llm, objective)
        self.parameters: list[Parameter] = list(self.optimizer.parameters)
        self._by_name = {p.name: p for p in self.parameters}
        self._check_parameters()
        self.budget = self._attach_budget(budget)
        self.epochs = epochs
        self.batch_size = min(batch_size, len(self.train))
        self.max_concurrency = max_concurrency
        self.n_candidates = n_candidates
        self.time_limit = time_limit
        self.max_steps = max_steps
        self.shuffle = shuffle
        self.seed = seed
        self.error_score = float(error_score)
        self.tolerate_app_errors = tolerate_app_errors
        self.store_graphs = store_graphs
        self.progress = progress
        self.resume = resume
        self.run_name = run_name
        self.objective = objective
        self.input_key = input_key
        self._owns_store = not isinstance(store, Store)
        self.store = store if isinstance(store, Store) else Store(store if store is not None else ":memory:")
        self.run_id: int | None = None
        self._cache: dict[tuple[int, str, int], Graph] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._deadline: float | None = None
        self._baseline: int = 0
        self._current: int = 0
        self._best: int = 0
        self._best_score: float | None = None
        self._steps_bar: Any = None

    # -- set-up ------------------------------------------------------------------------------

    def _make_optimizer(self, optimizer: Any, llm: Any, objective: str | None) -> Any:
        if optimizer is not None:
            if llm is not None:
                raise TypeError("pass llm= only when the trainer builds the optimizer (optimizer=None)")
            for name in ("zero_feedback", "backward", "propose", "apply", "parameters"):
                if not hasattr(optimizer, name):
                    raise TypeError(
                        f"optimizer must be an opto_adapters Optimizer (OptoPrime, OPRO...), got "
                        f"{type(optimizer).__name__} without .{name}"
                    )
            return optimizer
        params = list(self.tracer.parameters)
        if not params:
            raise no_parameters_error(self.tracer)
        from ..optimizers import OptoPrime

        return OptoPrime(params, llm, objective=objective)

    def _check_parameters(self) -> None:
        mine = {id(p) for p in self.tracer.parameters}
        if mine and not any(id(p) in mine for p in self.parameters):
            raise AppError(
                f"the optimizer's parameters {sorted(self._by_name)} are not the app's "
                f"{sorted(p.name for p in self.tracer.parameters)} (same names are not enough: "
                "they must be the same objects). Build the optimizer from the tracer you train: "
                "tracer = OptoTracer(app); optimize(tracer, ..., optimizer=OptoPrime(tracer.parameters))"
            )

    def _attach_budget(self, budget: Budget | None) -> Budget | None:
        """Give ``budget`` to the optimizer's LLM; refuse a budget that allows no call."""
        has_llm = isinstance(getattr(type(self.optimizer), "llm", None), property)
        if budget is not None:
            if not isinstance(budget, Budget):
                raise TypeError(f"budget must be an opto_adapters.llm.Budget, got {type(budget).__name__}")
            if not has_llm:
                raise TypeError(
                    f"budget= limits an LLM optimizer's calls; {type(self.optimizer).__name__} has no .llm"
                )
            llm = self.optimizer.llm
            if llm.budget is not None and llm.budget is not budget:
                raise ValueError("the optimizer's LLM already has a different Budget; pass one or the other")
            llm.budget = budget
        elif has_llm and self.optimizer.llm_if_created is not None:
            budget = self.optimizer.llm_if_created.budget
        if budget is not None and budget.exhausted:
            raise ValueError(
                f"the budget allows no optimizer call ({budget!r}): raise max_calls/max_tokens, "
                "or pass budget=None for no limit"
            )
        return budget

    def close(self) -> None:
        """Close the store if the trainer opened it from a file path."""
        if self._owns_store and self.store.path != ":memory:":
            self.store.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the run record ----------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        llm = getattr(self.optimizer, "llm_if_created", None)
        key = self.input_key
        return {
            "parameters": [
                {"name": p.name, "kind": p.kind, "description": p.description} for p in self.parameters
            ],
            "train_size": len(self.train),
            "val_size": len(self.val),
            "train_fingerprint": fingerprint(self.train),
            "val_fingerprint": fingerprint(self.val),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "n_candidates": self.n_candidates,
            "max_concurrency": self.max_concurrency,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "error_score": self.error_score,
            "input_key": getattr(key, "__name__", None) if callable(key) else key,
            "optimizer": type(self.optimizer).__name__,
            "model": getattr(llm, "model", None),
            "objective": self.objective or getattr(self.optimizer, "objective", None),
            "app": short_repr(self.tracer, 200),
            "time_limit": self.time_limit,
            "max_steps": self.max_steps,
        }

    def _values(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.parameters}

    def _write(self, values: dict[str, Any]) -> None:
        apply_updates({self._by_name[name]: value for name, value in values.items()})

    def _open_run(self) -> None:
        config = self._config()
        previous = None
        if self.resume is not False:
            if self.resume is True:
                previous = self.store.latest_run()
                if previous is None:
                    logger.warning("nothing to resume in %s: starting a new run", self.store.path)
            else:
                previous = self.store.run(int(self.resume))
        self._cache, self._best_score = {}, None
        if previous is None:
            self.run_id = self.store.create_run(config, name=self.run_name)
            self.store.add_examples(self.run_id, "train", self.train)
            if self.val:
                self.store.add_examples(self.run_id, "val", self.val)
            v0 = self.store.version(self.run_id, self._values())
            self.store.update_run(self.run_id, baseline_version_id=v0, current_version_id=v0)
            self._baseline = self._current = self._best = v0
            return
        self._check_resumable(previous.config, config, previous.id)
        self._probe = None
        self.run_id = previous.id
        self._baseline = previous.baseline_version_id or 0
        self._current = previous.current_version_id or self._baseline
        self._best = previous.best_version_id or self._current
        self._best_score = previous.best_score
        self._write(self.store.version_values(self._current))
        self.store.update_run(self.run_id, status="running", message=None, config=config)
        remember = getattr(self.optimizer, "remember", None)
        if remember is not None:
            for cand in self.store.candidates(self.run_id):
                if cand.status == "rejected":
                    remember(cand.values, f"REJECTED: {cand.reason}")
        logger.info("resuming run %d of %s", self.run_id, self.store.path)

    @staticmethod
    def _check_resumable(stored: dict[str, Any], now: dict[str, Any], run_id: int) -> None:
        problems = []
        before, after = (sorted(p["name"] for p in c.get("parameters", [])) for c in (stored, now))
        if before != after:
            problems.append(f"the parameters changed ({before} -> {after})")
        for key, what in (
            ("train_fingerprint", "the train data changed"),
            ("val_fingerprint", "the val data changed"),
            ("batch_size", "batch_size changed"),
            ("seed", "seed changed"),
            ("shuffle", "shuffle changed"),
        ):
            if stored.get(key) != now.get(key):
                problems.append(f"{what} ({stored.get(key)!r} -> {now.get(key)!r})")
        if problems:
            raise TrainingError(
                f"cannot resume run {run_id}: " + "; ".join(problems)
                + ". Resume with the same data and settings, or start a new run (resume=False)"
            )

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train; returns the result (also after Ctrl-C, a spent budget or the time limit)."""
        self._deadline = time.monotonic() + self.time_limit if self.time_limit else None
        self._open_run()
        assert self.run_id is not None
        if self.max_concurrency > 1:
            self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="opto-train")
        status, message = "completed", None
        try:
            self._loop()
        except KeyboardInterrupt:
            status, message = "interrupted", "stopped by Ctrl-C; continue with resume=True"
        except BudgetExceeded as exc:
            status, message = "budget_exhausted", str(exc)
        except _Stop as stop:
            status, message = stop.status, stop.message
        except BaseException as exc:
            self._restore_best()
            self.store.update_run(self.run_id, status="failed", message=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self._executor is not None:
                # wait for the (at most max_concurrency) runs in flight, so none of them reads
                # parameters while they are restored; after Ctrl-C, do not make the user wait
                self._executor.shutdown(wait=status != "interrupted", cancel_futures=True)
                self._executor = None
            if self._steps_bar is not None:
                self._steps_bar.close()
                self._steps_bar = None
        if message:
            logger.warning("training stopped: %s", message)
        if status in ("completed", "max_steps", "budget_exhausted"):
            try:
                self._final_evaluations()
            except KeyboardInterrupt:
                status, message = "interrupted", "interrupted during the final evaluation"
            except BudgetExceeded as exc:
                status, message = "budget_exhausted", str(exc)
        self._restore_best()
        self.store.update_run(self.run_id, status=status, message=message)
        return self.result()

    def _loop(self) -> None:
        run_id = self.run_id
        assert run_id is not None
        done = {s.step for s in self.store.steps(run_id) if s.status in _DONE}
        per_epoch = math.ceil(len(self.train) / self.batch_size)
        total = self.epochs * per_epoch
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        if self._current == self._baseline:
            self._baseline_phase()
        self._steps_bar = tqdm(
            total=total, initial=len(done & set(range(1, total + 1))), desc="steps",
            unit="step", disable=not self.progress,
        )
        for epoch in range(self.epochs):
            for b, batch in enumerate(self._batches(epoch)):
                step = epoch * per_epoch + b + 1
                if step in done:
                    continue
                if self.max_steps is not None and step > self.max_steps:
                    raise _Stop("max_steps", f"stopped after max_steps={self.max_steps} steps")
                self._check_time()
                self._step(step, epoch, b, batch)
                self._steps_bar.update()
            if not self.val:
                self._consider_best(self._current, self._selection_score(self._current, "epoch"))

    def _baseline_phase(self) -> None:
        results = self._evaluate(self._current, "train", range(len(self.train)), "baseline", graphs=True)
        failed = [r for r in results if r.error is not None]
        if len(failed) == len(results) and not self.tolerate_app_errors:
            raise AppError(
                f"the app raised on all {len(results)} train examples (train example "
                f"{failed[0].index}: {failed[0].error}); there is nothing to learn from. Fix the app "
                "or what it is given (input_key=...); if the optimizer is meant to repair a failing "
                "app (e.g. trainable code), pass tolerate_app_errors=True"
            )
        self._consider_best(self._current, self._selection_score(self._current, "baseline"))

    def _batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.train)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _selection_score(self, version: int, phase: str) -> float:
        """The score that decides the best values: val, or the whole training set."""
        split = "val" if self.val else "train"
        results = self._evaluate(version, split, range(len(self.examples[split])), phase, graphs=not self.val)
        return _mean(results)

    def _consider_best(self, version: int, score: float) -> None:
        if self._best_score is None or score >= self._best_score - _EPS:
            self._best, self._best_score = version, score
            self.store.update_run(self.run_id, best_version_id=version, best_score=score)

    def _check_time(self) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise _Stop("time_limit", f"time limit of {self.time_limit:g} s reached")

    def _step(self, step: int, epoch: int, b: int, batch: list[int]) -> None:
        run_id = self.run_id
        assert run_id is not None
        before = self._current
        self.store.start_step(run_id, step, epoch=epoch, batch=b, indices=batch, version_id=before)
        forward = self._evaluate(before, "train", batch, "step", step=step, graphs=True)
        train_score = _mean(forward)
        if self.val:
            gate_split, gate_idx = "val", list(range(len(self.val)))
            gate_now = self._evaluate(before, "val", gate_idx, "val", step=step)
        else:
            gate_split, gate_idx, gate_now = "train", batch, forward
        gate_score = _mean(gate_now)
        self.store.update_step(run_id, step, train_score=train_score, gate_score=gate_score)

        candidates = self._proposals(step, forward)
        scored: list[tuple[int, dict[str, Any], float, list[_Result]]] = []
        for cid, values in candidates:
            outcome = self._try_candidate(step, cid, values, gate_split, gate_idx)
            if outcome is not None:
                scored.append((cid, values, *outcome))

        status, reason, accepted = self._decide(step, scored, gate_score, gate_split, gate_now)
        val_score = self.store.mean_score(run_id, self._current, "val")[0] if self.val else None
        self.store.update_step(
            run_id, step, status=status, reason=reason, accepted_candidate_id=accepted,
            result_version_id=self._current, val_score=val_score, finished_at=time.time(),
        )
        logger.info("step %d: %s (%s)", step, status, reason)
        if self._steps_bar is not None:
            self._steps_bar.set_postfix_str(f"{gate_split} {(val_score if self.val else gate_score) or 0:.3g}")
        self._cache = {k: g for k, g in self._cache.items() if k[0] == self._current}

    def _decide(
        self,
        step: int,
        scored: list[tuple[int, dict[str, Any], float, list[_Result]]],
        gate_score: float,
        gate_split: str,
        gate_now: list[_Result],
    ) -> tuple[str, str, int | None]:
        """Keep the best candidate if it does not score worse than the current values, else
        reject (and remember) them all; returns (status, reason, accepted candidate id)."""
        run_id = self.run_id
        assert run_id is not None
        if not scored:
            return "no_change", "no candidate changed any value", None
        gate_name = "validation" if self.val else "minibatch"
        cid, values, score, _ = max(scored, key=lambda s: s[2])
        if score < gate_score - _EPS:
            for other, other_values, other_score, other_results in scored:
                why = f"{gate_name} score {other_score:.4g} is worse than the current values' {gate_score:.4g}; reverted"
                self.store.update_candidate(other, status="rejected", reason=why)
                self._remember(other_values, why, gate_split, gate_now, other_results)
            return "rejected", f"{gate_name} score {score:.4g} < current {gate_score:.4g}; reverted", None
        before = self._current
        self._write(values)
        self._current = self.store.version(run_id, self._values(), parent_id=before, step=step)
        self.store.update_run(run_id, current_version_id=self._current)
        reason = f"{gate_name} score {score:.4g} >= current {gate_score:.4g}"
        self.store.update_candidate(cid, status="accepted", reason=reason)
        for other, _, other_score, _ in scored:
            if other != cid:
                why = f"scored {other_score:.4g}, below the accepted candidate's {score:.4g}"
                self.store.update_candidate(other, status="rejected", reason=why)
        if self.val:
            self._consider_best(self._current, score)
        return "accepted", reason, cid

    def _proposals(self, step: int, forward: list[_Result]) -> list[tuple[int, dict[str, Any]]]:
        """(candidate id, suggested values): the stored ones of a resumed step, then new ones."""
        run_id = self.run_id
        assert run_id is not None
        stored = self.store.candidates(run_id, step)
        out = [(c.id, c.values) for c in stored]
        if len(stored) >= self.n_candidates:
            return out
        self.optimizer.zero_feedback()
        for r in forward:
            if r.graph is not None:
                self.optimizer.backward(r.graph, r.feedback)
        if not self.optimizer.feedback_subgraphs():
            raise AppError(
                f"the feedback on step {step}'s minibatch reached none of the parameters "
                f"{sorted(self._by_name)}: the app's output must be computed from them (through "
                "@bundle operations, or the framework tracer's graph)"
            )
        for k in range(len(stored), self.n_candidates):
            self._check_time()
            proposal = self.optimizer.propose()
            usage = proposal.usage or {}
            reason = None
            if not proposal.values:
                reason = proposal.error or "the optimizer suggested no change"
                if proposal.rejected:
                    reason += "; refused: " + "; ".join(f"{n}: {r}" for n, r in proposal.rejected.items())
            cid = self.store.add_candidate(
                run_id, step, k,
                values=proposal.values, invalid=proposal.rejected, reasoning=proposal.reasoning,
                prompt=proposal.prompt, reply=proposal.raw, error=proposal.error,
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
                status="pending" if proposal.values else "no_change", reason=reason,
            )
            if proposal.values:
                out.append((cid, proposal.values))
        return out

    def _try_candidate(
        self, step: int, cid: int, values: dict[str, Any], split: str, indices: list[int]
    ) -> tuple[float, list[_Result]] | None:
        """Score a candidate on the gate set, then put the current values back."""
        run_id = self.run_id
        assert run_id is not None
        if not values:
            return None
        try:
            previous = apply_updates({self._by_name[n]: v for n, v in values.items() if n in self._by_name})
        except Exception as exc:  # a value that became invalid, or a failing binding
            self.store.update_candidate(cid, status="no_change", reason=f"could not be applied: {exc}")
            return None
        try:
            version = self.store.version(run_id, self._values(), parent_id=self._current, step=step)
            self.store.update_candidate(cid, version_id=version)
            results = self._evaluate(version, split, indices, "candidate", step=step)
        finally:
            apply_updates(previous)
        score = _mean(results)
        self.store.update_candidate(cid, score=score)
        return score, results

    def _remember(
        self,
        values: dict[str, Any],
        why: str,
        split: str,
        now: list[_Result],
        results: list[_Result],
    ) -> None:
        remember = getattr(self.optimizer, "remember", None)
        if remember is None:
            return
        worse = [
            (r, old) for r, old in zip(results, now, strict=True) if r.score < old.score - _EPS
        ][:2]
        text = f"REJECTED: {why}."
        if worse:
            text += " It did worse on " + "; ".join(
                f"{split} example {r.index} (score {old.score:.3g} -> {r.score:.3g}: "
                f"{short_repr(r.feedback.text, 150) or 'no text'})"
                for r, old in worse
            )
        remember(values, text)

    # -- evaluation --------------------------------------------------------------------------

    def _evaluate(
        self,
        version: int,
        split: str,
        indices: Iterable[int],
        phase: str,
        *,
        step: int | None = None,
        graphs: bool = False,
    ) -> list[_Result]:
        """Results of ``version`` on examples of ``split``; stored ones are not run again."""
        run_id = self.run_id
        assert run_id is not None
        indices = list(indices)
        stored = {
            e.index: e
            for e in self.store.evaluations(run_id, version_id=version, split=split, indices=indices)
        }
        results: dict[int, _Result] = {}
        todo = []
        for i in indices:
            e = stored.get(i)
            graph = None
            if e is not None and graphs:
                graph = self._cache.get((version, split, i)) or self._restored_graph(e)
            if e is None or (graphs and graph is None):
                todo.append(i)
            else:
                results[i] = _Result(i, Feedback(score=e.score, text=e.feedback), e.error, graph)
        if todo:
            desc = f"{phase} {split}" + (f" (step {step})" if step is not None else "")
            self._run_all(version, split, todo, phase, step, graphs, results, desc)
        return [results[i] for i in indices]

    def _restored_graph(self, e: StoredEvaluation) -> Graph | None:
        data = self.store.graph(e.id)
        if data is None:
            return None
        try:
            return graph_from_json(data, self._by_name)
        except Exception:
            logger.exception("could not rebuild the stored graph of evaluation %d; running again", e.id)
            return None

    def _run_all(
        self,
        version: int,
        split: str,
        todo: list[int],
        phase: str,
        step: int | None,
        graphs: bool,
        results: dict[int, _Result],
        desc: str,
    ) -> None:
        sampled = False

        def record(i: int, outcome: _Outcome) -> None:
            nonlocal sampled
            traced, fb = outcome.traced, outcome.feedback
            graph = traced.graph
            error = f"{type(traced.error).__name__}: {traced.error}" if traced.error is not None else None
            dot = text = None
            if graph is not None and not sampled and self.store_graphs:
                dot, text, sampled = graph.to_dot(), graph.to_text(), True
            self.store.add_evaluation(
                self.run_id, version, split, i, phase=phase, step=step, score=fb.score,
                feedback=fb.text, output=None if error else value_text(traced.output),
                error=error, duration=outcome.duration, graph=outcome.graph_json, dot=dot, text=text,
            )
            if split == "train" and graph is not None:  # a later minibatch may need it
                self._cache[(version, split, i)] = graph
            results[i] = _Result(i, fb, error, graph if graphs else None)
            bar.update()

        bar = tqdm(total=len(todo), desc=desc, unit="ex", leave=False, disable=not self.progress)
        try:
            if self._executor is None:
                for i in todo:
                    self._check_time()
                    record(i, self._run_one(split, i))
                return
            futures: dict[Future[_Outcome], int] = {
                self._executor.submit(contextvars.copy_context().run, self._run_one, split, i): i
                for i in todo
            }
            try:
                for future in as_completed(futures):
                    record(futures[future], future.result())
                    self._check_time()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        finally:
            bar.close()

    def _run_one(self, split: str, i: int) -> _Outcome:
        start = time.perf_counter()
        if self._probe is not None and split == "train" and i == 0:
            traced, self._probe = self._probe, None
        else:
            traced = self.tracer.run(self.inputs[split][i])
        if isinstance(traced.error, BudgetExceeded):
            raise traced.error
        feedback = call_guide(
            self.guide, self.examples[split][i], traced.output, traced.error,
            split=split, index=i, error_score=self.error_score,
        )
        graph_json = graph_to_json(traced.graph) if traced.graph is not None and self.store_graphs else None
        return _Outcome(traced, feedback, time.perf_counter() - start, graph_json)

    # -- the end -----------------------------------------------------------------------------

    def _final_evaluations(self) -> None:
        """Score the final values, then the best, on every split (stored ones are reused)."""
        self._evaluate_all(self._current)
        self._consider_best(self._current, self._selection_score(self._current, "final"))
        if self._best != self._current:
            self._write(self.store.version_values(self._best))
            self._evaluate_all(self._best)

    def _evaluate_all(self, version: int) -> None:
        for split in ("train", "val"):
            if self.examples[split]:
                self._evaluate(version, split, range(len(self.examples[split])), "final")

    def _restore_best(self) -> None:
        """Write the best values seen back into the app."""
        try:
            self._write(self.store.version_values(self._best))
        except Exception:
            logger.exception("could not write the best values back")

    def result(self) -> TrainResult:
        """The run's result, read from the store."""
        if self.run_id is None:
            raise RuntimeError("the trainer has not run yet: call fit() first")
        return build_result(self.store, self.run_id)


def build_result(store: Store, run_id: int) -> TrainResult:
    """A ``TrainResult`` from what a store holds about a run."""
    run = store.run(run_id)

    def scores(version: int | None) -> Scores:
        if version is None:
            return Scores()
        return Scores(
            train=store.mean_score(run_id, version, "train")[0],
            val=store.mean_score(run_id, version, "val")[0],
        )

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
    return TrainResult(
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
    )


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def optimize(
    app: Any,
    train: Iterable[Any],
    val: Iterable[Any] | None = None,
    *,
    guide: Guide,
    optimizer: Any = None,
    epochs: int = 1,
    batch_size: int = 4,
    max_concurrency: int = 4,
    store: str | Store | None = None,
    budget: Budget | None = None,
    **options: Any,
) -> TrainResult:
    """Optimize ``app``'s trainable parameters on ``train``, keeping only what does not score
    worse on ``val``; the best values are written back into the app.

    ``app``: a LangChain runnable, a LlamaIndex engine or agent, a tracer, or a traced Python
    callable. ``guide(example, output)`` returns a score or ``Feedback(score=..., text=...)``.
    ``optimizer`` defaults to ``OptoPrime`` over the app's parameters (``llm=``,
    ``objective=``). ``store`` is an SQLite file path (default: in memory). Further options
    are ``Trainer``'s: ``input_key``, ``n_candidates``, ``resume``, ``time_limit``,
    ``max_steps``, ``progress``...
    """
    trainer = Trainer(
        app, train, val, guide=guide, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        max_concurrency=max_concurrency, store=store, budget=budget, **options,
    )
    with trainer:
        return trainer.fit()

