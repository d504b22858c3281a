"""One evaluation as data: run the app on an example, retry its endpoint, score it with the guide.

``Runner`` is what every executor runs, in a thread (``run``), on an event loop (``arun``) or
in a Ray worker process: the app's run with the endpoint retries of ``infra``, the guide's
feedback, and the ``Outcome`` (texts, feedback, usage, the graph and, when asked, its JSON),
which holds nothing a process boundary cannot carry except the graph itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..llm import BudgetExceeded
from ..trace import Feedback, Graph
from ..trace.render import value_text
from ..trace.tracer import TracedRun
from .data import call_guide
from .errors import InfrastructureError
from .graphs import graph_to_json
from .infra import failure

__all__ = ["Outcome", "Runner"]

logger = logging.getLogger("opto_adapters.train")

Guide = Callable[[Any, Any], Any]


@dataclass
class Outcome:
    """What one evaluation gave: the guide's feedback, the app's error or output as text, how
    long it took, the app's own model usage, and its graph (``graph_json`` is the graph as data,
    the only form a Ray worker sends back)."""

    feedback: Feedback
    error: str | None
    output: str | None
    duration: float
    usage: dict[str, Any] | None = None
    graph: Graph | None = None
    graph_json: dict[str, Any] | None = None


class Runner:
    """Runs ``tracer``'s app on example ``i`` of a split and scores it; ``graph_json`` says
    whether the outcome carries the graph as data too."""

    def __init__(
        self,
        *,
        tracer: Any,
        inputs: dict[str, list[Any]],
        examples: dict[str, list[Any]],
        guide: Guide,
        error_score: float,
        retries: int,
        graph_json: bool,
    ) -> None:
        self.tracer, self.inputs, self.examples, self.guide = tracer, inputs, examples, guide
        self.error_score, self.retries, self.graph_json = error_score, retries, graph_json

    def run(self, split: str, i: int, stopping: threading.Event | None = None) -> Outcome:
        """One evaluation in this thread; ``stopping`` cuts the endpoint retries short."""
        stopping = stopping or threading.Event()
        start = time.perf_counter()
        for attempt in range(self.retries + 1):
            traced = self.tracer.run(self.inputs[split][i])
            delay = self._retry_delay(split, i, traced, attempt, stopping)
            if delay is None:
                return self.outcome(split, i, traced, start)
            if stopping.wait(delay):
                self._give_up(split, i, traced, attempt)
        raise AssertionError("unreachable")

    async def arun(self, split: str, i: int, stopping: threading.Event | None = None) -> Outcome:
        """One evaluation on the running event loop, through the app's async entry point
        (``tracer.arun``); a tracer without one runs in a worker thread."""
        stopping = stopping or threading.Event()
        start = time.perf_counter()
        arun = getattr(self.tracer, "arun", None)
        for attempt in range(self.retries + 1):
            if arun is not None:
                traced = await arun(self.inputs[split][i])
            else:
                traced = await asyncio.to_thread(self.tracer.run, self.inputs[split][i])
            delay = self._retry_delay(split, i, traced, attempt, stopping)
            if delay is None:
                return self.outcome(split, i, traced, start)
            await asyncio.sleep(delay)
            if stopping.is_set():
                self._give_up(split, i, traced, attempt)
        raise AssertionError("unreachable")

    def outcome(self, split: str, i: int, traced: TracedRun, start: float) -> Outcome:
        """Score a finished run (a spent budget in the app is raised, never scored)."""
        if isinstance(traced.error, BudgetExceeded):
            raise traced.error
        feedback = call_guide(
            self.guide, self.examples[split][i], traced.output, traced.error,
            split=split, index=i, error_score=self.error_score,
        )
        error = f"{type(traced.error).__name__}: {traced.error}" if traced.error is not None else None
        graph = traced.graph
        data = graph_to_json(graph) if graph is not None and self.graph_json else None
        found = graph.metadata.get("usage") if graph is not None else None
        return Outcome(
            feedback=feedback, error=error, output=None if error else value_text(traced.output),
            duration=time.perf_counter() - start, usage=found.to_data() if found is not None else None,
            graph=graph, graph_json=data,
        )

    def _retry_delay(
        self, split: str, i: int, traced: TracedRun, attempt: int, stopping: threading.Event
    ) -> float | None:
        """``None`` when the run is done (scored as it is); else how long to wait before the
        next try. A run that failed for its endpoint is tried again, then raised as
        ``InfrastructureError``: it is never scored."""
        found = failure(traced.error)
        if found is None:
            return None
        if attempt >= self.retries or stopping.is_set():
            self._give_up(split, i, traced, attempt)
        delay = 0.5 * 2**attempt
        logger.warning(
            "%s example %d: the app's model endpoint failed (%s); trying again in %.1f s",
            split, i, found.error, delay,
        )
        return delay

    def _give_up(self, split: str, i: int, traced: TracedRun, attempt: int) -> None:
        found = failure(traced.error)
        assert found is not None
        raise InfrastructureError(
            f"the app failed on {split} example {i} for its endpoint, {attempt + 1} time(s) "
            f"({found.error}): {found.advice()}. Nothing of it was scored; the run stopped as "
            "failed and continues where it stopped with resume=True (CLI: --resume)",
            kind=found.kind, url=found.url,
        ) from traced.error
