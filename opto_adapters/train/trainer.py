"""The training loop: minibatches, feedback, proposals, validation gating.

One step: run a minibatch of training examples (``engine.Evaluator``), score each output with
the guide, propagate the feedback through each run's graph, ask the optimizer for candidate
values, and keep the best candidate only if it does not score worse than the current values
on the gate set (``val``, or the minibatch itself when there is no ``val``). A rejected
candidate is reverted and its failure is added to the optimizer's memory. The run and its
resumption are ``record``'s job, the result ``result``'s, the settings ``config``'s.

``Trainer(...)`` only checks its arguments; the app is looked at (its tracer made, its
parameters discovered, for a plain function by running it once) on first use: ``fit()``, or
reading ``trainer.parameters`` / ``trainer.optimizer`` / ``trainer.tracer``.

``afit()`` is ``fit()`` for async code: the step logic (one decision at a time) runs in one
driver thread while the app runs (``executor="asyncio"``) and the optimizer's requests (when
it has ``apropose``) run on the caller's event loop; ``fit()`` with ``executor="asyncio"``
does the same on a private loop. Both are the same engine (``engine.Evaluator`` over an
``executors.Executor``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from tqdm import tqdm

from ..llm import Budget, BudgetExceeded, DeadlineExceeded
from ..trace import Feedback, Parameter, apply_updates
from ..trace.render import short_repr
from ..trace.tracer import TracedRun
from .acceptance import accept
from .apps import AppTracer, PythonApp, adopt_parameters, as_tracer, no_parameters_error
from .config import TrainConfig
from .data import InputKey, app_inputs, examples_list, fingerprint
from .engine import Evaluator, Result, Stop, by_example, mean
from .errors import AppError, InfrastructureError
from .executors import TICK, Executor, make_executor
from .guard import DEFAULT_THRESHOLD, CopyGuard
from .record import open_run
from .result import DONE, FrontCandidate, Scores, StepSummary, TrainResult, build_result
from .rollouts import MAX_METRIC_CALLS, CountingEvaluator
from .store import Store

__all__ = [
    "FrontCandidate", "Scores", "StepSummary", "TrainConfig", "TrainResult", "Trainer", "build_result", "optimize",
    "optimize_async",
]

logger = logging.getLogger("opto_adapters.train")

Guide = Callable[[Any, Any], Any]
_EPS = 1e-9
_OPTIMIZER_API = ("zero_feedback", "backward", "propose", "apply", "parameters")
_AFIT_GRACE = 30.0  # seconds a cancelled afit() waits for the driver to store what it did


MAX_SCORE = 1.0
NOTHING_TO_LEARN = (
    f"every run of the minibatch scored {MAX_SCORE:g} with no feedback text: nothing to learn, "
    "so no optimizer call was made"
)


_UNREACHABLE = ("connection error", "connectionerror", "connection refused", "connecterror")


def _unreachable(error: str | None) -> bool:
    """Whether an app error says the app's model endpoint could not be reached."""
    return error is not None and any(hint in error.lower() for hint in _UNREACHABLE)


def _nothing_to_learn(results: list[Result]) -> bool:
    """Whether every run of a minibatch got the best score and no text to learn from."""
    return bool(results) and all(
        r.error is None and r.score >= MAX_SCORE and not r.feedback.text.strip() for r in results
    )


def nothing_to_learn(results: list[Result]) -> bool:
    """Whether every run of a minibatch got the best score and no text to learn from (the
    check both searches make before asking the optimizer)."""
    return _nothing_to_learn(results)


def _answered(sent: list[Any]) -> list[Any]:
    """The proposals among what ``Trainer._send`` brought back (not the errors)."""
    return [p for p in sent if not isinstance(p, BaseException)]


def no_change_reason(proposal: Any) -> str:
    """Why a proposal brought no values: its error, or no change, and what was refused."""
    reason = proposal.error or "the optimizer suggested no change"
    if proposal.rejected:
        reason += "; refused: " + "; ".join(f"{n}: {r}" for n, r in proposal.rejected.items())
    return reason


class Trainer:
    """Optimize an app's parameters on ``train``, gated on ``val``; ``fit()`` runs it.

    What to train: ``app`` (a LangChain runnable, a LlamaIndex engine or agent, a tracer, or
    a traced Python callable, see ``as_tracer``), ``train``/``val`` (lists of examples),
    ``guide(example, output)`` (a score or scored ``Feedback``, see
    ``opto_adapters.train.data``), ``input_key`` (how an example becomes the app's input) and,
    for a plain callable, ``parameters``.

    How to propose: ``optimizer`` (default ``OptoPrime`` over the app's parameters, with
    ``llm`` and ``objective``); ``budget`` (an ``opto_adapters.llm.Budget`` for the optimizer's
    LLM). An optimizer built from another tracer over the same live objects
    (``OptoPrime(OptoTracer(app).parameters)``) is adopted: its parameters are replaced by
    the trainer's tracer's ones bound to the same slots.

    Where to keep it: ``store`` (a ``Store``, an SQLite path, or ``None`` for memory),
    ``resume`` (``True``: the latest run of the store, or a run id).

    Settings: ``config`` (a ``TrainConfig``), or any of its fields as keywords (``epochs``,
    ``batch_size``, ``shuffle``, ``seed``, ``n_candidates``, ``search``,
    ``proposals_per_step``, ``merge``, ``max_steps``, ``max_metric_calls``, ``time_limit``,
    ``max_concurrency``, ``error_score``, ``tolerate_app_errors``, ``run_name``,
    ``store_graphs``, ``progress``, ``executor``, ``ray_address``, ``ray_workers``), which
    override ``config``'s.

    Where the app runs: ``executor="threads"`` (default), ``"asyncio"`` (the app's async entry
    points, many runs in flight on one event loop; ``await trainer.afit()``), ``"ray"`` (Ray
    workers), or an ``Executor`` (``opto_adapters.train.executors``).

    How to search: ``search="greedy"`` (the default) keeps one incumbent and the loop below;
    ``search="pareto"`` keeps a pool of candidates (``opto_adapters.train.search``).
    """

    def __init__(
        self,
        app: Any,
        train: Iterable[Any],
        val: Iterable[Any] | None = None,
        *,
        guide: Guide,
        input_key: InputKey = None,
        parameters: Iterable[Parameter] | None = None,
        optimizer: Any = None,
        llm: Any = None,
        objective: str | None = None,
        budget: Budget | None = None,
        store: str | Store | None = None,
        resume: bool | int = False,
        config: TrainConfig | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}: {config!r:.80}")
        self.config = (config or TrainConfig()).with_settings(settings)
        if not callable(guide):
            raise TypeError(
                f"guide must be a function guide(example, output) -> score or Feedback, got "
                f"{type(guide).__name__}: {guide!r:.80}"
            )
        if optimizer is not None:
            if llm is not None:
                raise TypeError("pass llm= only when the trainer builds the optimizer (optimizer=None)")
            for name in _OPTIMIZER_API:
                if not hasattr(optimizer, name):
                    raise TypeError(
                        f"optimizer must be an opto_adapters Optimizer (OptoPrime, OPRO...), got "
                        f"{type(optimizer).__name__} without .{name}"
                    )
        if budget is not None:
            if not isinstance(budget, Budget):
                raise TypeError(f"budget must be an opto_adapters.llm.Budget, got {type(budget).__name__}")
            _check_budget(budget)
        self.train = examples_list(train, "train", required=True)
        self.val = examples_list(val, "val", required=False)
        self.inputs = {
            "train": app_inputs(self.train, "train", input_key),
            "val": app_inputs(self.val, "val", input_key),
        }
        self.examples = {"train": self.train, "val": self.val}
        self.guide = guide
        self.input_key = input_key
        self.objective = objective
        self.resume = resume
        self.batch_size = min(self.config.batch_size, len(self.train))
        self._app, self._app_parameters = app, parameters
        self._given = (optimizer, llm, budget)
        self._owns_store = not isinstance(store, Store)
        self.store = store if isinstance(store, Store) else Store(store if store is not None else ":memory:")
        self.run_id: int | None = None
        self._prepared: tuple[AppTracer, Any, list[Parameter], Budget | None] | None = None
        self._probe: TracedRun | None = None
        self._evaluator: Evaluator | None = None
        self._deadline: float | None = None
        self._baseline = self._current = self._best = 0
        self._best_score: float | None = None
        self._steps_bar: Any = None
        self._guard: CopyGuard | None = None
        self._refused: dict[int, str] = {}
        self._event_loop: asyncio.AbstractEventLoop | None = None  # afit's: async calls run there
        self._interrupt = threading.Event()  # afit cancelled: the driver stops as after Ctrl-C

    # -- set-up, on first use ----------------------------------------------------------------

    @property
    def tracer(self) -> AppTracer:
        """The app's tracer (made on first use)."""
        return self._prepare()[0]

    @property
    def optimizer(self) -> Any:
        """The optimizer (built, or adopted, on first use)."""
        return self._prepare()[1]

    @property
    def parameters(self) -> list[Parameter]:
        """The parameters being trained (discovered on first use; a plain function runs once)."""
        return self._prepare()[2]

    @property
    def budget(self) -> Budget | None:
        """The optimizer's LLM budget, if any."""
        return self._prepare()[3]

    def _prepare(self) -> tuple[AppTracer, Any, list[Parameter], Budget | None]:
        if self._prepared is not None:
            return self._prepared
        optimizer, llm, budget = self._given
        tracer = as_tracer(self._app, parameters=self._app_parameters)
        if optimizer is None and not tracer.parameters and isinstance(tracer, PythonApp):
            # a plain function: its parameters are what its trace reaches; the run is reused
            # as the baseline evaluation of the first example
            self._probe = tracer.discover(self.inputs["train"][0])
        if optimizer is None:
            if not tracer.parameters:
                raise no_parameters_error(tracer)
            from ..optimizers import OptoPrime

            optimizer = OptoPrime(list(tracer.parameters), llm, objective=self.objective)
        else:
            self._adopt(optimizer, tracer)
        params = list(optimizer.parameters)
        _check_parameters(params, tracer)
        budget = _attach_budget(optimizer, budget)
        self._prepared = (tracer, optimizer, params, budget)
        self._by_name = {p.name: p for p in params}
        return self._prepared

    @staticmethod
    def _adopt(optimizer: Any, tracer: AppTracer) -> None:
        """Use the tracer's parameters in place of the optimizer's that bind the same slots."""
        adopted, n = adopt_parameters(optimizer.parameters, tracer.parameters)
        if n:
            optimizer.parameters[:] = adopted
            logger.info(
                "the optimizer's parameters %s were made by another tracer over the same live "
                "objects: the trainer's tracer's ones are used in their place",
                [p.name for p in adopted],
            )

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
        cfg = self.config
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
            "epochs": cfg.epochs,
            "batch_size": self.batch_size,
            "n_candidates": cfg.n_candidates,
            "max_concurrency": cfg.max_concurrency,
            "executor": cfg.executor if isinstance(cfg.executor, str) else cfg.executor.name,
            "shuffle": cfg.shuffle,
            "seed": cfg.seed,
            "error_score": float(cfg.error_score),
            "input_key": getattr(key, "__name__", None) if callable(key) else key,
            "optimizer": type(self.optimizer).__name__,
            "model": getattr(llm, "model", None),
            "objective": self.objective or getattr(self.optimizer, "objective", None),
            "app": short_repr(self.tracer, 200),
            "time_limit": cfg.time_limit,
            "max_steps": cfg.max_steps,
            "search": cfg.search,
            "proposals_per_step": cfg.proposals_per_step,
            "merge": cfg.merge,
            "objectives": list(cfg.objectives),
            "max_metric_calls": cfg.max_metric_calls,
            "repeats": cfg.repeats,
            "acceptance": cfg.acceptance_rule,
            "tolerance": float(cfg.tolerance),
            "confidence": float(cfg.confidence),
            "guard_copies": _guard_threshold(cfg.guard_copies),
        }

    def _values(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.parameters}

    def _write(self, values: dict[str, Any]) -> None:
        apply_updates({self._by_name[name]: value for name, value in values.items()})

    def _open_run(self) -> None:
        """Open a new run, or pick up the stored one (its values written back, its rejected
        candidates remembered); sets ``run_id`` only once the run is in the store."""
        opened = open_run(
            self.store, self._config(), self.examples, self._values(),
            resume=self.resume, name=self.config.run_name,
        )
        self.run_id = opened.run_id
        self._baseline, self._current, self._best = opened.baseline, opened.current, opened.best
        self._best_score = opened.best_score
        if opened.resumed is None:
            return
        self._probe = None
        self._write(self.store.version_values(self._current))
        stored = self.store.optimizer_memory(self.run_id)
        restore = getattr(self.optimizer, "restore_memory", None)
        if stored is not None and restore is not None:
            restore(stored)  # exactly what it remembered after the last finished step
            return
        remember = getattr(self.optimizer, "remember", None)
        if remember is not None:  # a store from before the memory was kept
            for cand in self.store.candidates(self.run_id):
                if cand.status in ("rejected", "refused"):
                    remember(cand.values, f"{cand.status.upper()}: {cand.reason}")

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train; returns the result (also after Ctrl-C, a spent budget or the time limit).

        However training stops, app runs in flight finish before any value is restored (after
        Ctrl-C too, unless Ctrl-C is pressed again)."""
        try:
            return self._fit()
        finally:
            evaluator, self._evaluator = self._evaluator, None
            if evaluator is not None:  # its workers served the final evaluations too
                evaluator.__exit__(None, None, None)

    def _fit(self) -> TrainResult:
        self._prepare()
        limit = self.config.time_limit
        self._deadline = time.monotonic() + limit if limit else None
        if hasattr(self.optimizer, "deadline"):  # the limit holds inside optimizer requests too
            self.optimizer.deadline = self._deadline
        self.run_id = None
        status, message = "completed", None
        try:
            self._open_run()
            self._make_evaluator().__enter__()
            self._search()
        except KeyboardInterrupt:
            if self.run_id is None:  # nothing was stored: there is no run to report
                raise
            status, message = "interrupted", "stopped by Ctrl-C; continue with resume=True"
        except BudgetExceeded as exc:
            status, message = "budget_exhausted", str(exc)
        except Stop as stop:
            status, message = stop.status, stop.message
        except InfrastructureError as exc:
            if self.run_id is not None:
                self._restore_best()
                self.store.update_run(self.run_id, status="failed", message=str(exc))
            raise
        except BaseException as exc:
            if self.run_id is not None:
                self._restore_best()
                self.store.update_run(self.run_id, status="failed", message=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self._steps_bar is not None:
                self._steps_bar.close()
                self._steps_bar = None
        if message:
            logger.warning("training stopped: %s", message)
        if status in ("completed", "max_steps", "budget_exhausted", MAX_METRIC_CALLS):
            try:
                self._final_evaluations()
            except KeyboardInterrupt:
                status, message = "interrupted", "interrupted during the final evaluation"
            except BudgetExceeded as exc:
                status, message = "budget_exhausted", str(exc)
            except Stop as stop:  # the rollout budget: what does not fit is not evaluated
                logger.warning("the final evaluation is incomplete: %s", stop.message)
        self._restore_best()
        self.store.update_run(self.run_id, status=status, message=message)
        return self.result()

    async def afit(self) -> TrainResult:
        """``fit()`` from async code (``await trainer.afit()``): the app's runs
        (``executor="asyncio"``) and the optimizer's requests (``apropose``, when it has one)
        run on this event loop, the step logic in one thread. Cancelling the task (Ctrl-C under
        ``asyncio.run``) stops the run as Ctrl-C stops ``fit``: the runs in flight are
        cancelled, the run is stored as interrupted (continue with ``resume=True``), and the
        cancellation goes on."""
        self._event_loop = asyncio.get_running_loop()
        self._interrupt.clear()
        driver = asyncio.ensure_future(asyncio.to_thread(self.fit))
        try:
            return await asyncio.shield(driver)
        except asyncio.CancelledError:
            self._interrupt.set()
            try:
                await asyncio.wait_for(asyncio.shield(driver), timeout=_AFIT_GRACE)
            except BaseException:  # the run's own error or a slow stop: the cancellation wins
                logger.warning("afit() was cancelled; the run stops in the background", exc_info=True)
            raise
        finally:
            self._event_loop = None

    def _make_executor(self) -> Executor:
        cfg = self.config
        executor = make_executor(
            cfg.executor, max_concurrency=cfg.max_concurrency, loop=self._event_loop,
            **({"address": cfg.ray_address, "workers": cfg.ray_workers} if cfg.executor == "ray" else {}),
        )
        if executor.name == "ray":
            executor.app = self._app  # type: ignore[attr-defined]  # what to ship if the tracer is not
        return executor

    def _make_evaluator(self) -> Evaluator:
        assert self.run_id is not None
        self._evaluator = CountingEvaluator(executor=self._make_executor(),
            limit=self.config.max_metric_calls, used=self.store.evaluation_count(self.run_id),
            store=self.store, run_id=self.run_id, tracer=self.tracer, inputs=self.inputs,
            examples=self.examples, guide=self.guide, parameters=self._by_name,
            error_score=float(self.config.error_score), max_concurrency=self.config.max_concurrency,
            store_graphs=self.config.store_graphs, progress=self.config.progress,
            check=self._check_time, probe=self._probe, retries=self.config.infra_retries,
        )
        self._probe = None
        return self._evaluator

    def _evaluate(
        self, version: int, split: str, indices: Iterable[int], phase: str, *,
        step: int | None = None, graphs: bool = False, repeats: int | None = None,
    ) -> list[Result]:
        """``repeats``: evaluations per example (default: ``config.repeats`` on val, else 1)."""
        assert self._evaluator is not None
        if repeats is None:
            repeats = self.config.repeats if split == "val" else 1
        return self._evaluator.evaluate(version, split, indices, phase, step=step, graphs=graphs, repeats=repeats)

    def _search(self) -> None:
        """Run the configured search: today's greedy loop, or the Pareto search."""
        cfg = self.config
        if cfg.search == "pareto":
            from .search import ParetoSearch

            if type(self)._forward is not Trainer._forward:  # e.g. TraceTrainer: steps from imported runs
                raise TypeError(
                    f"search='pareto' runs the app on training minibatches; {type(self).__name__} "
                    "takes its steps another way: use search='greedy' with it"
                )

            if cfg.n_candidates != 1:
                logger.warning("n_candidates=%d is for search='greedy'; the Pareto search uses proposals_per_step", cfg.n_candidates)
            ParetoSearch(self).run()
            return
        if cfg.proposals_per_step != 1 or cfg.merge or cfg.objectives != ("score",):
            logger.warning(
                "proposals_per_step, merge and objectives are for search='pareto'; search='greedy' "
                "ignores them (export --pick still chooses among the versions it scored on val)"
            )
        self._loop()

    def _loop(self) -> None:
        if self._current == self._baseline:
            self._baseline_phase()
        self._run_steps(self._step, after_epoch=None if self.val else self._epoch_end)

    def _epoch_end(self) -> None:
        """Without val, the best values are chosen on the whole training set after each epoch."""
        self._consider_best(self._current, self._selection_score(self._current, "epoch"))

    def _run_steps(
        self, take_step: Callable[[int, int, int, list[int]], None], *, after_epoch: Callable[[], None] | None = None
    ) -> None:
        """Take every step of every epoch not yet done (``take_step(step, epoch, batch_no,
        batch)``), with the steps bar, ``max_steps`` and the time limit; shared by both searches."""
        run_id = self.run_id
        assert run_id is not None
        cfg = self.config
        done = {s.step for s in self.store.steps(run_id) if s.status in DONE}
        per_epoch = math.ceil(len(self.train) / self.batch_size)
        total = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        self._steps_bar = tqdm(
            total=total, initial=len(done & set(range(1, total + 1))), desc="steps",
            unit="step", disable=not cfg.progress,
        )
        for epoch in range(cfg.epochs):
            for b, batch in enumerate(self._batches(epoch)):
                step = epoch * per_epoch + b + 1
                if step in done:
                    continue
                if cfg.max_steps is not None and step > cfg.max_steps:
                    raise Stop("max_steps", f"stopped after max_steps={cfg.max_steps} steps")
                self._check_time()
                take_step(step, epoch, b, batch)
                self._steps_bar.update()
            if after_epoch is not None:
                after_epoch()

    def _baseline_phase(self) -> None:
        results = self._evaluate(self._current, "train", range(len(self.train)), "baseline", graphs=True)
        self._check_app_runs(results, "train")
        self._consider_best(self._current, self._selection_score(self._current, "baseline"))

    def _check_app_runs(self, results: list[Result], split: str) -> None:
        """Refuse to train an app that raised on every example of the baseline."""
        failed = [r for r in results if r.error is not None]
        if len(failed) == len(results) and not self.config.tolerate_app_errors:
            if all(_unreachable(r.error) for r in failed):
                advice = (
                    "the app could not reach its model endpoint: start the server, or check its "
                    "URL and key (OPENAI_BASE_URL, OPENAI_API_KEY, or the app's own model settings)"
                )
            else:
                advice = (
                    "Fix the app or what it is given (input_key=...); if the optimizer is meant to "
                    "repair a failing app (e.g. trainable code), pass tolerate_app_errors=True"
                )
            raise AppError(
                f"the app raised on all {len(results)} {split} examples ({split} example "
                f"{failed[0].index}: {failed[0].error}); there is nothing to learn from. {advice}"
            )

    def _batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.train)))
        if self.config.shuffle:
            random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _selection_score(self, version: int, phase: str) -> float:
        """The score that decides the best values: val, or the whole training set."""
        split = "val" if self.val else "train"
        results = self._evaluate(version, split, range(len(self.examples[split])), phase, graphs=not self.val)
        return mean(results)

    def _consider_best(self, version: int, score: float) -> None:
        if self._best_score is None or score >= self._best_score - _EPS:
            self._best, self._best_score = version, score
            self.store.update_run(self.run_id, best_version_id=version, best_score=score)

    def _check_time(self) -> None:
        if self._interrupt.is_set():
            raise KeyboardInterrupt("afit() was cancelled")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise Stop("time_limit", f"time limit of {self.config.time_limit:g} s reached")

    def _step(self, step: int, epoch: int, b: int, batch: list[int]) -> None:
        run_id = self.run_id
        assert run_id is not None
        before = self._current
        self.store.start_step(run_id, step, epoch=epoch, batch=b, indices=batch, version_id=before)
        forward = self._forward(before, step, batch)
        train_score = mean(forward)
        if self.val:
            gate_split, gate_idx = "val", list(range(len(self.val)))
            gate_now = self._evaluate(before, "val", gate_idx, "val", step=step)
        elif self.config.repeats > 1:  # the minibatch is the gate: repeated like val
            gate_split, gate_idx = "train", batch
            gate_now = self._evaluate(before, "train", batch, "step", step=step, repeats=self.config.repeats)
        else:
            gate_split, gate_idx, gate_now = "train", batch, forward
        gate_score = mean(gate_now)
        self.store.update_step(run_id, step, train_score=train_score, gate_score=gate_score)

        if _nothing_to_learn(forward):
            # a perfect minibatch with no feedback text: an optimizer call could only cost
            status, reason, accepted = "no_change", NOTHING_TO_LEARN, None
            logger.info("step %d: %s", step, reason)
        else:
            candidates = self._proposals(step, forward)
            scored: list[tuple[int, dict[str, Any], float, list[Result]]] = []
            for cid, values in candidates:
                outcome = self._try_candidate(step, cid, values, gate_split, gate_idx)
                if outcome is not None:
                    scored.append((cid, values, *outcome))
            status, reason, accepted = self._decide(step, scored, gate_score, gate_split, gate_now)
        val_score = self.store.mean_score(run_id, self._current, "val")[0] if self.val else None
        self.store.finish_step(
            run_id, step, memory=self._memory_state(),
            status=status, reason=reason, accepted_candidate_id=accepted,
            result_version_id=self._current, val_score=val_score, finished_at=time.time(),
        )
        logger.info("step %d: %s (%s)", step, status, reason)
        if self._steps_bar is not None:
            self._steps_bar.set_postfix_str(f"{gate_split} {(val_score if self.val else gate_score) or 0:.3g}")
        assert self._evaluator is not None
        self._evaluator.keep_graphs_of(self._current)

    def _forward(self, version: int, step: int, batch: list[int]) -> list[Result]:
        """The minibatch's runs (with graphs) that the optimizer learns from."""
        return self._evaluate(version, "train", batch, "step", step=step, graphs=True)

    def _decide(
        self,
        step: int,
        scored: list[tuple[int, dict[str, Any], float, list[Result]]],
        gate_score: float,
        gate_split: str,
        gate_now: list[Result],
    ) -> tuple[str, str, int | None]:
        """Keep the best candidate if it does not score worse than the current values, else
        reject (and remember) them all; returns (status, reason, accepted candidate id)."""
        run_id = self.run_id
        assert run_id is not None
        refused = [self._refused.pop(c) for c in list(self._refused)]
        if not scored:
            if refused:
                return "rejected", refused[0] if len(refused) == 1 else f"{len(refused)} candidates refused: {refused[0]}", None
            return "no_change", "no candidate changed any value", None
        gate_name = "validation" if self.val else "minibatch"
        verdicts = self._verdicts(step, scored, gate_score, gate_now)
        cid, values, score, _ = max(scored, key=lambda s: s[2])
        plain = self.config.acceptance_rule == "mean" and not self.config.tolerance  # today's rule
        if not verdicts[cid][0]:
            for other, other_values, other_score, other_results in scored:
                if plain:
                    why = f"{gate_name} score {other_score:.4g} is worse than the current values' {gate_score:.4g}; reverted"
                else:
                    why = f"{gate_name} score {other_score:.4g} vs current {gate_score:.4g}: {verdicts[other][1]}; reverted"
                self.store.update_candidate(other, status="rejected", reason=why)
                self._remember(other_values, why, gate_split, gate_now, other_results)
            if plain:
                return "rejected", f"{gate_name} score {score:.4g} < current {gate_score:.4g}; reverted", None
            return "rejected", f"{gate_name} score {score:.4g} vs current {gate_score:.4g}: {verdicts[cid][1]}; reverted", None
        before = self._current
        self._write(values)
        self._current = self.store.version(run_id, self._values(), parent_id=before, step=step)
        self.store.update_run(run_id, current_version_id=self._current)
        if plain:
            reason = f"{gate_name} score {score:.4g} >= current {gate_score:.4g}"
        else:
            reason = f"{gate_name} score {score:.4g} vs current {gate_score:.4g}: {verdicts[cid][1]}"
        self.store.update_candidate(cid, status="accepted", reason=reason)
        for other, _, other_score, _ in scored:
            if other != cid:
                why = f"scored {other_score:.4g}, below the accepted candidate's {score:.4g}"
                self.store.update_candidate(other, status="rejected", reason=why)
        if self.val:
            self._consider_best(self._current, score)
        return "accepted", reason, cid

    def _verdicts(
        self,
        step: int,
        scored: list[tuple[int, dict[str, Any], float, list[Result]]],
        gate_score: float,
        gate_now: list[Result],
    ) -> dict[int, tuple[bool, str]]:
        """(passes, why) of each scored candidate against the current values: its mean may not
        drop more than ``tolerance``, or (``acceptance="bootstrap"``) the lower bound of the
        paired bootstrap interval of (candidate - current) must be at least ``-tolerance``; the
        interval is stored with the candidate."""
        cfg = self.config
        out: dict[int, tuple[bool, str]] = {}
        for k, (cid, _, score, results) in enumerate(scored):
            if cfg.acceptance_rule == "bootstrap":
                decision = accept(
                    by_example(results), by_example(gate_now), tolerance=cfg.tolerance,
                    confidence=cfg.confidence, seed=cfg.seed * 1_000_003 + step * 1_009 + k,
                )
                self.store.update_candidate(cid, ci_low=decision.interval.low, ci_high=decision.interval.high)
                out[cid] = (decision.accepted, decision.reason)
            elif score < gate_score - cfg.tolerance - _EPS:
                out[cid] = (False, f"more than the tolerance {cfg.tolerance:g} below")
            else:
                out[cid] = (True, f"within the tolerance {cfg.tolerance:g}")
        return out

    def _memory_state(self) -> list[Any] | None:
        """The optimizer's memory as data, to store (``None``: it keeps none)."""
        state = getattr(self.optimizer, "memory_state", None)
        return state() if state is not None else None

    def _proposals(self, step: int, forward: list[Result]) -> list[tuple[int, dict[str, Any]]]:
        """(candidate id, suggested values): the stored ones of a resumed step, then new ones."""
        run_id = self.run_id
        assert run_id is not None
        everything = self.store.candidates(run_id, step)
        stored = [c for c in everything if c.status != "failed"]  # unanswered calls are asked again
        next_k = max((c.k for c in everything), default=-1) + 1
        out = [(c.id, c.values) for c in stored]
        if len(stored) >= self.config.n_candidates:
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
        self._check_time()
        pending = [self._request() for _ in range(len(stored), self.config.n_candidates)]
        sent = self._send(pending)
        for proposal in _answered(sent):
            cid = self._store_proposal(step, next_k, proposal)
            next_k += 1
            if proposal.values:
                out.append((cid, proposal.values))
        self._raise_if_unanswered(step, sent)
        return out

    def _request(self) -> Any:
        """The optimizer's next request, made from its feedback and values now
        (``Optimizer.prepare``); an optimizer without ``prepare`` proposes at once."""
        prepare = getattr(self.optimizer, "prepare", None)
        if prepare is None:
            from ..optimizers import PendingProposal

            return PendingProposal.ready(self.optimizer.propose())
        return prepare()

    def _send(self, pending: list[Any]) -> list[Any]:
        """Send prepared requests all at once; their proposals in the same order, or the error
        a request raised (a spent budget: the others' answers are still stored). On the event
        loop when there is one (``afit``, or ``executor="asyncio"``), else one thread each
        (one request: this thread). The time limit is checked while they are in flight."""
        if not pending:
            return []
        loop = self._event_loop
        if loop is None and self._evaluator is not None:
            loop = self._evaluator.executor.loop
        if loop is not None and loop.is_running():

            async def together() -> list[Any]:
                return list(await asyncio.gather(*(p.arun() for p in pending), return_exceptions=True))

            future: Future[Any] = asyncio.run_coroutine_threadsafe(together(), loop)
            self._wait_for([future])
            return future.result()
        if len(pending) == 1:
            try:
                return [pending[0].run()]
            except Exception as exc:  # e.g. the budget: raised once the step stored the rest
                return [exc]
        pool = ThreadPoolExecutor(len(pending), thread_name_prefix="opto-propose")
        try:
            futures = [pool.submit(contextvars.copy_context().run, p.run) for p in pending]
            self._wait_for(futures)
            return [f.exception() or f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _wait_for(self, futures: list[Future[Any]]) -> None:
        """Wait for ``futures``, checking the time limit; on a stop they are cancelled."""
        try:
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=TICK, return_when=FIRST_COMPLETED)
                self._check_time()
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def _store_proposal(
        self, step: int, k: int, proposal: Any, *, lineage: tuple[str, list[int]] | None = None
    ) -> int:
        """Store a proposal as candidate ``k`` of ``step``: ``pending`` with values, ``failed``
        when its request got no answer (a resume asks again), else ``no_change`` with why."""
        assert self.run_id is not None
        usage = proposal.usage or {}
        reason = None if proposal.values else no_change_reason(proposal)
        status = "pending" if proposal.values else "failed" if proposal.unanswered else "no_change"
        return self.store.add_candidate(
            self.run_id, step, k,
            values=proposal.values, invalid=proposal.rejected, reasoning=proposal.reasoning,
            prompt=proposal.prompt, reply=proposal.raw, error=proposal.error,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            status=status, reason=reason, memory=self._memory_state(), lineage=lineage,
        )

    def _raise_if_unanswered(self, step: int, sent: list[Any]) -> None:
        """Once every answered proposal of a step is stored: raise what a request raised (a
        spent budget), stop at the time limit if a request ran into it, or fail the step
        (resumable) if one got no answer."""
        for found in sent:
            if isinstance(found, BaseException):
                raise found
        unanswered = [p for p in sent if p.unanswered]
        if any(isinstance(p.cause, DeadlineExceeded) for p in unanswered):
            raise Stop("time_limit", f"time limit of {self.config.time_limit:g} s reached during an optimizer request")
        if unanswered:
            self._optimizer_failed(step, unanswered[0].error or "the optimizer request failed")

    def _optimizer_failed(self, step: int, error: str) -> None:
        """An optimizer call got no answer: the step is not done (a resume asks again)."""
        assert self.run_id is not None
        llm = getattr(self.optimizer, "llm_if_created", None)
        url = getattr(llm, "base_url", None)
        message = (
            f"step {step}: the optimizer's endpoint{f' at {url}' if url else ''} gave no answer "
            f"after its retries ({error}). Nothing of the step was kept; check the endpoint "
            "(OPENAI_BASE_URL, OPTO_MODEL, OPENAI_API_KEY, its context size), then continue with "
            "resume=True (CLI: --resume)"
        )
        self.store.update_step(self.run_id, step, status="failed", reason=message)
        raise InfrastructureError(message, kind="optimizer", url=str(url) if url else None)

    def _try_candidate(
        self, step: int, cid: int, values: dict[str, Any], split: str, indices: list[int]
    ) -> tuple[float, list[Result]] | None:
        """Score a candidate on the gate set, then put the current values back."""
        run_id = self.run_id
        assert run_id is not None
        if not values:
            return None
        why = self._refuse_if_copied(step, cid, values)
        if why is not None:
            self._refused[cid] = why
            return None
        try:
            previous = apply_updates({self._by_name[n]: v for n, v in values.items() if n in self._by_name})
        except Exception as exc:  # a value that became invalid, or a failing binding
            self.store.update_candidate(cid, status="no_change", reason=f"could not be applied: {exc}")
            return None
        try:
            version = self.store.version(run_id, self._values(), parent_id=self._current, step=step)
            self.store.update_candidate(cid, version_id=version)
            repeats = self.config.repeats  # the gate set is repeated, val or minibatch
            results = self._evaluate(version, split, indices, "candidate", step=step, repeats=repeats)
        finally:
            apply_updates(previous)
        score = mean(results)
        self.store.update_candidate(cid, score=score)
        return score, results

    def _refuse_if_copied(
        self, step: int, cid: int, values: dict[str, Any], current: dict[str, Any] | None = None
    ) -> str | None:
        """Refuse (store, remember, log) a candidate that copies a training example, before any
        app run; returns why, or ``None`` when it copies nothing."""
        why = self._copy_guard_check(values, current)
        if why is None:
            return None
        self.store.update_candidate(cid, status="refused", reason=why)
        remember = getattr(self.optimizer, "remember", None)
        if remember is not None:
            remember(values, f"REFUSED: {why}.")
        logger.info("step %d: candidate %d %s", step, cid, why)
        return why

    def _copy_guard_check(self, values: dict[str, Any], current: dict[str, Any] | None = None) -> str | None:
        """Why ``values`` copy a training example into a prompt (see ``guard``), or ``None``;
        text ``current`` (default: the values in the app now) already holds does not count."""
        threshold = _guard_threshold(self.config.guard_copies)
        if threshold is None:
            return None
        if self._guard is None:
            self._guard = CopyGuard(self.train, self.inputs["train"], threshold=threshold)
        return self._guard.check(values, self._values() if current is None else current)

    def _remember(
        self,
        values: dict[str, Any],
        why: str,
        split: str,
        now: list[Result],
        results: list[Result],
    ) -> None:
        remember = getattr(self.optimizer, "remember", None)
        if remember is None:
            return
        if self.config.repeats > 1:  # one line per example: its mean over the repeats
            results, now = _example_means(results), _example_means(now)
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
                try:
                    self._evaluate(version, split, range(len(self.examples[split])), "final")
                except Stop as stop:
                    if stop.status != MAX_METRIC_CALLS:
                        raise
                    logger.warning("version %d is not scored on all of %s: %s", version, split, stop.message)

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


def _guard_threshold(setting: float | bool | None) -> float | None:
    """The copy guard's threshold for ``guard_copies`` (``None``: no guard)."""
    if setting is None or setting is False:
        return None
    return DEFAULT_THRESHOLD if setting is True else float(setting)


def _example_means(results: list[Result]) -> list[Result]:
    """One result per example, scored by the mean of its repeats (the first repeat's text)."""
    firsts: dict[int, Result] = {}
    scores: dict[int, list[float]] = {}
    for r in results:
        firsts.setdefault(r.index, r)
        scores.setdefault(r.index, []).append(r.score)
    return [
        Result(i, Feedback(score=sum(scores[i]) / len(scores[i]), text=r.feedback.text), r.error)
        for i, r in firsts.items()
    ]


def _check_parameters(params: list[Parameter], tracer: AppTracer) -> None:
    mine = {id(p) for p in tracer.parameters}
    if mine and not any(id(p) in mine for p in params):
        raise AppError(
            f"the optimizer's parameters {sorted(p.name for p in params)} are not the app's "
            f"{sorted(p.name for p in tracer.parameters)} (same names are not enough: they must "
            "be the same objects, or bound to the same live objects). Build the optimizer from "
            "the tracer you train: tracer = OptoTracer(app); optimize(tracer, ..., "
            "optimizer=OptoPrime(tracer.parameters))"
        )


def _check_budget(budget: Budget) -> None:
    if budget.exhausted:
        raise ValueError(
            f"the budget allows no optimizer call ({budget!r}): raise max_calls/max_tokens, "
            "or pass budget=None for no limit"
        )


def _attach_budget(optimizer: Any, budget: Budget | None) -> Budget | None:
    """Give ``budget`` to the optimizer's LLM; refuse a budget that allows no call."""
    has_llm = isinstance(getattr(type(optimizer), "llm", None), property)
    if budget is not None:
        if not has_llm:
            raise TypeError(
                f"budget= limits an LLM optimizer's calls; {type(optimizer).__name__} has no .llm"
            )
        llm = optimizer.llm
        if llm.budget is not None and llm.budget is not budget:
            raise ValueError("the optimizer's LLM already has a different Budget; pass one or the other")
        llm.budget = budget
    elif has_llm and optimizer.llm_if_created is not None:
        budget = optimizer.llm_if_created.budget
    if budget is not None:
        _check_budget(budget)
    return budget


def _trainer(
    app: Any, train: Any, val: Any, *, guide: Guide, optimizer: Any, store: Any, budget: Any,
    traces: Any, feedback: Any, options: dict[str, Any],
) -> Trainer:
    if traces is not None:
        if train is not None:
            raise TypeError("pass train= (examples to run) or traces= (runs that already happened), not both")
        from .from_traces import TraceTrainer

        return TraceTrainer(
            app, traces, val, guide=guide, feedback=feedback, optimizer=optimizer, store=store,
            budget=budget, **options,
        )
    if feedback is not None:
        raise TypeError("feedback= goes with traces= (feedback on imported runs); a train run's feedback comes from guide")
    if train is None:
        raise TypeError("optimize() needs train= (examples to run the app on) or traces= (runs to learn from)")
    return Trainer(app, train, val, guide=guide, optimizer=optimizer, store=store, budget=budget, **options)


async def optimize_async(
    app: Any,
    train: Iterable[Any] | None = None,
    val: Iterable[Any] | None = None,
    *,
    guide: Guide,
    optimizer: Any = None,
    store: str | Store | None = None,
    budget: Budget | None = None,
    traces: Any = None,
    feedback: Any = None,
    **options: Any,
) -> TrainResult:
    """``optimize`` for async code: ``await optimize_async(app, train, val, guide=...,
    executor="asyncio", max_concurrency=64)`` runs the app through its async entry points on
    this event loop (see ``Trainer.afit``); the arguments are ``optimize``'s."""
    trainer = _trainer(
        app, train, val, guide=guide, optimizer=optimizer, store=store, budget=budget,
        traces=traces, feedback=feedback, options=options,
    )
    with trainer:
        return await trainer.afit()


def optimize(
    app: Any,
    train: Iterable[Any] | None = None,
    val: Iterable[Any] | None = None,
    *,
    guide: Guide,
    optimizer: Any = None,
    store: str | Store | None = None,
    budget: Budget | None = None,
    traces: Any = None,
    feedback: Any = None,
    **options: Any,
) -> TrainResult:
    """Optimize ``app``'s trainable parameters on ``train``, keeping only what does not score
    worse on ``val``; the best values are written back into the app.

    ``app``: a LangChain runnable, a LlamaIndex engine or agent, a tracer, or a traced Python
    callable. ``guide(example, output)`` returns a score or ``Feedback(score=..., text=...)``.
    ``optimizer`` defaults to ``OptoPrime`` over the app's parameters (``llm=``,
    ``objective=``). ``store`` is an SQLite file path (default: in memory). Further options
    are ``Trainer``'s: ``input_key``, ``parameters``, ``resume``, ``config=TrainConfig(...)``,
    or any ``TrainConfig`` field as a keyword (``epochs``, ``batch_size``,
    ``max_concurrency``, ``n_candidates``, ``time_limit``, ``max_steps``, ``progress``,
    ``search="pareto"``, ``proposals_per_step``, ``merge``, ``max_metric_calls``...).
    ``executor`` says where the app runs: ``"threads"`` (default), ``"asyncio"`` (its async
    entry points, ``max_concurrency`` runs in flight on one event loop) or ``"ray"`` (Ray
    workers; ``ray_address``, ``ray_workers``); from async code use ``optimize_async``.

    ``traces`` (with ``feedback``) instead of ``train``: propose from runs recorded elsewhere
    (LangSmith runs, OpenInference spans; see ``opto_adapters.from_traces``) and validate
    every candidate live on ``val`` (required), see ``TraceTrainer``.
    """
    trainer = _trainer(
        app, train, val, guide=guide, optimizer=optimizer, store=store, budget=budget,
        traces=traces, feedback=feedback, options=options,
    )
    with trainer:
        return trainer.fit()
