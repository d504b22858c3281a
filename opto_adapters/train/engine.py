"""The evaluation engine: run the app on examples (through an executor), score, store.

Every evaluation is stored as it completes, keyed by (parameter version, split, example,
repeat), so it is never computed twice in a run and a resumed run picks up where it stopped.
An example evaluated ``repeats`` times (noise-aware acceptance) has one row per repeat. With
each evaluation, the app's own model usage its run reported (``runs.usage``) is stored, and
how many tries it took (``attempts``: more than 1 when its worker was lost and it ran again
elsewhere). The app runs on threads, an event loop or Ray workers (``executors``); the engine
waits, checks the time limit, retries lost workers and stores the same way for all. When an
evaluation stops early (an error, a spent budget, the time limit, Ctrl-C), the runs already
in flight are settled (waited for, or cancelled) before the error goes on: whoever restores
the parameters next never changes them under a running app.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from tqdm import tqdm

from ..trace import Feedback, Graph, Parameter
from ..trace.tracer import TracedRun
from .apps import AppTracer
from .errors import InfrastructureError
from .executors import TICK, Executor, ThreadExecutor
from .graphs import graph_from_json
from .infra import failure
from .runner import Outcome, Runner
from .store import Store, StoredEvaluation

__all__ = ["Evaluator", "Result", "Stop", "by_example", "mean"]

logger = logging.getLogger("opto_adapters.train")

Guide = Callable[[Any, Any], Any]
_TICK = TICK  # seconds between checks of the time limit while runs are in flight
_GRACE = 10.0  # seconds runs in flight are waited for when the loop stops (time limit, error)
_INTERRUPT_GRACE = 3.0  # the same after Ctrl-C (a second Ctrl-C stops waiting at once)


class Stop(Exception):
    """Stop the loop cleanly (time limit, max_steps); everything done so far is stored."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Result:
    """An evaluated example: its score and feedback, and its graph when one was needed."""

    index: int
    feedback: Feedback
    error: str | None
    graph: Graph | None = None
    repeat: int = 0

    @property
    def score(self) -> float:
        return float(self.feedback.score)  # type: ignore[arg-type]  # guaranteed by the guide check


def mean(results: Sequence[Result]) -> float:
    """The mean score of some results."""
    return fmean(r.score for r in results)


def by_example(results: Sequence[Result]) -> list[list[float]]:
    """The scores of each example's repeats, examples in the order they first appear."""
    scores: dict[int, list[float]] = {}
    for r in results:
        scores.setdefault(r.index, []).append(r.score)
    return list(scores.values())


class Evaluator:
    """Evaluates parameter versions of one run of ``store``; ``check`` is called between
    runs (it raises ``Stop`` at the time limit). ``executor`` runs the app (default: threads,
    ``max_concurrency`` of them; see ``executors``). Use as a context manager: the workers
    live until it is left."""

    def __init__(
        self,
        *,
        store: Store,
        run_id: int,
        tracer: AppTracer,
        inputs: dict[str, list[Any]],
        examples: dict[str, list[Any]],
        guide: Guide,
        parameters: dict[str, Parameter],
        error_score: float,
        max_concurrency: int,
        store_graphs: bool,
        progress: bool,
        check: Callable[[], None],
        probe: TracedRun | None = None,
        retries: int = 2,
        executor: Executor | None = None,
    ) -> None:
        self.store, self.run_id, self.tracer = store, run_id, tracer
        self.inputs, self.examples, self.guide = inputs, examples, guide
        self.parameters = parameters
        self.error_score, self.store_graphs, self.progress = error_score, store_graphs, progress
        self.max_concurrency = max_concurrency
        self.check = check
        self.probe = probe  # a first run already made (discovery): train example 0's baseline
        self.retries = retries
        self.cache: dict[tuple[int, str, int], Graph] = {}
        self.executor = executor if executor is not None else ThreadExecutor(max_concurrency)
        self.runner = Runner(
            tracer=tracer, inputs=inputs, examples=examples, guide=guide, error_score=error_score,
            retries=retries, graph_json=store_graphs or self.executor.needs_graph_json,
        )

    def __enter__(self) -> Evaluator:
        if getattr(self.executor, "max_concurrency", 0) is None:  # an executor given without one
            self.executor.max_concurrency = self.max_concurrency  # type: ignore[attr-defined]
        self.executor.open(self.runner)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # no run is in flight here: evaluate() waits for its own before it returns or raises
        self.executor.close()

    def keep_graphs_of(self, version: int) -> None:
        """Forget the cached graphs of every other version."""
        self.cache = {k: g for k, g in self.cache.items() if k[0] == version}

    def evaluate(
        self,
        version: int,
        split: str,
        indices: Iterable[int],
        phase: str,
        *,
        step: int | None = None,
        graphs: bool = False,
        repeats: int = 1,
    ) -> list[Result]:
        """Results of ``version`` on examples of ``split``, ``repeats`` per example (ordered by
        example, then repeat); stored ones are not run again. Graphs are kept of repeat 0."""
        indices = list(indices)
        stored = {
            (e.index, e.repeat): e
            for e in self.store.evaluations(self.run_id, version_id=version, split=split, indices=indices)
        }
        results: dict[tuple[int, int], Result] = {}
        todo = []
        for i in indices:
            for rep in range(repeats):
                e = stored.get((i, rep))
                graph = None
                want = graphs and rep == 0
                if e is not None and want:
                    graph = self.cache.get((version, split, i)) or self._restored_graph(e)
                if e is None or (want and graph is None):
                    todo.append((i, rep))
                else:
                    results[(i, rep)] = Result(i, Feedback(score=e.score, text=e.feedback), e.error, graph, rep)
        if todo:
            desc = f"{phase} {split}" + (f" (step {step})" if step is not None else "")
            self._run_all(version, split, todo, phase, step, graphs, results, desc)
        return [results[(i, rep)] for i in indices for rep in range(repeats)]

    def _restored_graph(self, e: StoredEvaluation) -> Graph | None:
        data = self.store.graph(e.id)
        if data is None:
            return None
        try:
            return graph_from_json(data, self.parameters)
        except Exception:
            logger.exception("could not rebuild the stored graph of evaluation %d; running again", e.id)
            return None

    def _run_all(
        self,
        version: int,
        split: str,
        todo: list[tuple[int, int]],
        phase: str,
        step: int | None,
        graphs: bool,
        results: dict[tuple[int, int], Result],
        desc: str,
    ) -> None:
        sampled = False
        attempts: dict[tuple[int, int], int] = {}

        def record(key: tuple[int, int], outcome: Outcome) -> None:
            nonlocal sampled
            i, rep = key
            graph = outcome.graph
            if graph is None and outcome.graph_json is not None:  # sent as data by a worker
                graph = graph_from_json(outcome.graph_json, self.parameters)
            dot = text = None
            if graph is not None and not sampled and self.store_graphs:
                dot, text, sampled = graph.to_dot(), graph.to_text(), True
            self.store.add_evaluation(
                self.run_id, version, split, i, phase=phase, step=step, score=outcome.feedback.score,
                feedback=outcome.feedback.text, output=outcome.output, error=outcome.error,
                duration=outcome.duration, graph=outcome.graph_json if self.store_graphs else None,
                dot=dot, text=text, repeat=rep, usage=outcome.usage, attempts=attempts.get(key, 1),
            )
            self._counted()
            if split == "train" and graph is not None and rep == 0:  # a later minibatch may need it
                self.cache[(version, split, i)] = graph
            results[key] = Result(i, outcome.feedback, outcome.error, graph if graphs and rep == 0 else None, rep)
            bar.update()

        bar = tqdm(total=len(todo), desc=desc, unit="ex", leave=False, disable=not self.progress)
        try:
            todo = self._probe_first(split, todo, record)
            if self.executor.inline:
                for key in todo:
                    self.check()
                    record(key, self.runner.run(split, key[0], self.executor.stopping))
                return
            self.executor.begin(version, {name: p.value for name, p in self.parameters.items()})
            futures: dict[Future[Outcome], tuple[int, int]] = {
                self.executor.submit(split, key[0]): key for key in todo
            }
            try:
                pending = set(futures)
                while pending:
                    # the time limit is checked while runs are in flight, not only between them
                    done, pending = wait(pending, timeout=_TICK, return_when=FIRST_COMPLETED)
                    for future in done:
                        key = futures.pop(future)
                        exc = future.exception()
                        if exc is not None and self.executor.lost(exc):
                            pending.add(self._again(split, key, attempts, exc, futures))
                            continue
                        record(key, future.result())
                    self.check()
            except BaseException as exc:
                self.executor.stopping.set()  # runs waiting to retry give up at once
                try:
                    interrupted = isinstance(exc, KeyboardInterrupt)
                    self.executor.settle(futures, interrupted=interrupted, grace=_INTERRUPT_GRACE if interrupted else _GRACE)
                finally:
                    self.executor.stopping.clear()
                raise
        finally:
            bar.close()

    def _again(
        self,
        split: str,
        key: tuple[int, int],
        attempts: dict[tuple[int, int], int],
        exc: BaseException,
        futures: dict[Future[Outcome], tuple[int, int]],
    ) -> Future[Outcome]:
        """Submit an evaluation whose worker was lost once more (to another worker)."""
        tries = attempts.get(key, 1)
        limit = getattr(self.executor, "max_attempts", 3)
        if tries >= limit:
            raise InfrastructureError(
                f"{split} example {key[0]}: its {self.executor.name} worker was lost {tries} "
                f"time(s) ({type(exc).__name__}: {exc}); nothing of it was scored. Check the "
                "cluster (memory, nodes), then continue with resume=True (CLI: --resume)",
                kind="worker",
            ) from exc
        attempts[key] = tries + 1
        logger.warning(
            "%s example %d: its %s worker was lost (%s); running it again (attempt %d)",
            split, key[0], self.executor.name, type(exc).__name__, tries + 1,
        )
        future = self.executor.submit(split, key[0])
        futures[future] = key
        return future

    def _probe_first(
        self, split: str, todo: list[tuple[int, int]], record: Callable[[tuple[int, int], Outcome], None]
    ) -> list[tuple[int, int]]:
        """Score the discovery run (train example 0, made before the run began) instead of
        running it again; the other evaluations are left to do."""
        probe = self.probe
        if probe is None or split != "train" or (0, 0) not in todo or failure(probe.error) is not None:
            return todo
        self.probe = None
        record((0, 0), self.runner.outcome(split, 0, probe, time.perf_counter()))
        return [k for k in todo if k != (0, 0)]

    def _counted(self) -> None:
        """Called once per stored evaluation (``CountingEvaluator`` counts them)."""


