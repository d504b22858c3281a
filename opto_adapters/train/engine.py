"""The evaluation engine: run the app on examples (in parallel threads), score, store.

Every evaluation is stored as it completes, keyed by (parameter version, split, example,
repeat), so it is never computed twice in a run and a resumed run picks up where it stopped.
An example evaluated ``repeats`` times (noise-aware acceptance) has one row per repeat. With
each evaluation, the app's own model usage its run reported (``runs.usage``) is stored. When an
evaluation stops early (an error, a spent budget, the time limit, Ctrl-C), the runs already
in flight are waited for before the error goes on: whoever restores the parameters next never
changes them under a running app.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from tqdm import tqdm

from ..llm import BudgetExceeded
from ..trace import Feedback, Graph, Parameter
from ..trace.render import value_text
from ..trace.tracer import TracedRun
from .apps import AppTracer
from .data import call_guide
from .errors import InfrastructureError
from .graphs import graph_from_json, graph_to_json
from .infra import failure
from .store import Store, StoredEvaluation

__all__ = ["Evaluator", "Result", "Stop", "by_example", "mean"]

logger = logging.getLogger("opto_adapters.train")

Guide = Callable[[Any, Any], Any]
_TICK = 0.25  # seconds between checks of the time limit while runs are in flight
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


@dataclass
class _Outcome:
    traced: TracedRun
    feedback: Feedback
    duration: float
    graph_json: dict[str, Any] | None


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
    runs (it raises ``Stop`` at the time limit). Use as a context manager: the worker threads
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
        self._stopping = threading.Event()
        self._executor: ThreadPoolExecutor | None = None

    def __enter__(self) -> Evaluator:
        if self.max_concurrency > 1:
            self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="opto-train")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is not None:
            # no run is in flight here: evaluate() waits for its own before it returns or raises
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

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

        def record(key: tuple[int, int], outcome: _Outcome) -> None:
            nonlocal sampled
            i, rep = key
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
                repeat=rep, usage=_usage(graph),
            )
            if split == "train" and graph is not None and rep == 0:  # a later minibatch may need it
                self.cache[(version, split, i)] = graph
            results[key] = Result(i, fb, error, graph if graphs and rep == 0 else None, rep)
            bar.update()

        bar = tqdm(total=len(todo), desc=desc, unit="ex", leave=False, disable=not self.progress)
        try:
            if self._executor is None:
                for key in todo:
                    self.check()
                    record(key, self._run_one(split, key[0]))
                return
            futures: dict[Future[_Outcome], tuple[int, int]] = {
                self._executor.submit(contextvars.copy_context().run, self._run_one, split, key[0]): key
                for key in todo
            }
            try:
                pending = set(futures)
                while pending:
                    # the time limit is checked while runs are in flight, not only between them
                    done, pending = wait(pending, timeout=_TICK, return_when=FIRST_COMPLETED)
                    for future in done:
                        record(futures[future], future.result())
                    self.check()
            except BaseException as exc:
                self._stopping.set()  # runs waiting to retry give up at once
                try:
                    interrupted = isinstance(exc, KeyboardInterrupt)
                    _settle(futures, interrupted=interrupted, grace=_INTERRUPT_GRACE if interrupted else _GRACE)
                finally:
                    self._stopping.clear()
                raise
        finally:
            bar.close()

    def _run_one(self, split: str, i: int) -> _Outcome:
        start = time.perf_counter()
        if self.probe is not None and split == "train" and i == 0 and failure(self.probe.error) is None:
            traced, self.probe = self.probe, None
        else:
            traced = self._run_app(split, i)
        if isinstance(traced.error, BudgetExceeded):
            raise traced.error
        feedback = call_guide(
            self.guide, self.examples[split][i], traced.output, traced.error,
            split=split, index=i, error_score=self.error_score,
        )
        graph_json = graph_to_json(traced.graph) if traced.graph is not None and self.store_graphs else None
        return _Outcome(traced, feedback, time.perf_counter() - start, graph_json)

    def _run_app(self, split: str, i: int) -> TracedRun:
        """Run the app on one example; a run that failed for its endpoint (see ``infra``) is
        tried again, then raised as ``InfrastructureError``: it is never scored."""
        for attempt in range(self.retries + 1):
            traced = self.tracer.run(self.inputs[split][i])
            found = failure(traced.error)
            if found is None:
                return traced
            if attempt < self.retries and not self._stopping.is_set():
                delay = 0.5 * 2**attempt
                logger.warning(
                    "%s example %d: the app's model endpoint failed (%s); trying again in %.1f s",
                    split, i, found.error, delay,
                )
                if not self._stopping.wait(delay):
                    continue
            raise InfrastructureError(
                f"the app failed on {split} example {i} for its endpoint, {attempt + 1} time(s) "
                f"({found.error}): {found.advice()}. Nothing of it was scored; the run stopped as "
                "failed and continues where it stopped with resume=True (CLI: --resume)",
                kind=found.kind, url=found.url,
            ) from traced.error
        raise AssertionError("unreachable")


def _usage(graph: Graph | None) -> dict[str, Any] | None:
    """The app's own model usage of a run, from its graph (``runs.usage``), if it reported any."""
    found = graph.metadata.get("usage") if graph is not None else None
    return found.to_data() if found is not None else None


def _settle(futures: Iterable[Future[Any]], *, interrupted: bool, grace: float | None = None) -> None:
    """Cancel the runs not started and wait for those in flight (their results are dropped),
    so the parameters are not changed under a running app. After Ctrl-C a second Ctrl-C
    stops waiting; otherwise (the time limit, an error) at most ``grace`` seconds are waited."""
    running = [f for f in futures if not f.cancel() and not f.done()]
    if not running:
        return
    if interrupted:
        logger.warning(
            "waiting up to %.0f s for %d app run(s) in flight before the parameters are restored; "
            "press Ctrl-C again to stop without waiting", grace or 0, len(running),
        )
    deadline = None if grace is None else time.monotonic() + grace
    try:
        pending = set(running)
        while pending:
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning(
                    "stopped waiting after %.0f s: %d app run(s) still in flight may see the "
                    "parameters change (their results are not used)", grace, len(pending),
                )
                return
            _, pending = wait(pending, timeout=_TICK, return_when=FIRST_COMPLETED)
    except KeyboardInterrupt:
        if not interrupted:
            raise
        logger.warning("stopped waiting: %d app run(s) may still see the parameters change", len(running))
