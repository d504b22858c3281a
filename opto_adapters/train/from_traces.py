"""Optimize from what already ran: imported runs propose, live validation decides.

``TraceTrainer`` is the greedy trainer with one difference: a step's minibatch is a batch of
imported runs (``opto_adapters.from_traces``: LangSmith runs, OpenInference spans, with the
feedback users left) instead of fresh app runs. Their graphs are over the live app's
parameters, so the optimizer proposes from them as from any traced run; every candidate is
then run live on ``val`` and kept only if it does not score worse there, so nothing untested
is ever written back. The app itself never runs on the imported inputs.
"""

from __future__ import annotations

import logging
from typing import Any

from ..trace.render import short_repr, value_text
from .apps import as_tracer
from .data import examples_list
from .engine import Result, mean
from .errors import DatasetError
from .trainer import Trainer

__all__ = ["TraceTrainer"]

logger = logging.getLogger("opto_adapters.train")


class TraceTrainer(Trainer):
    """Propose from imported runs of ``app`` (``traces``, ``feedback``: what
    ``from_traces`` reads), validate live on ``val`` with ``guide``. Only runs with feedback
    are used; the other options are ``Trainer``'s (``epochs`` and ``batch_size`` go over the
    imported runs)."""

    def __init__(
        self,
        app: Any,
        traces: Any,
        val: Any,
        *,
        guide: Any,
        feedback: Any = None,
        format: str | None = None,
        parameters: Any = None,
        **options: Any,
    ) -> None:
        from ..traces import from_traces

        val = examples_list(val, "val", required=False)
        if not val:
            raise DatasetError(
                "optimizing from traces validates every candidate live: pass val=[...] (examples "
                "the guide can score), since imported runs cannot be re-run"
            )
        tracer = as_tracer(app, parameters=parameters)
        imported = from_traces(tracer, traces, feedback, format=format)
        self.imported = [r for r in imported.with_feedback if r.graph is not None]
        self.import_report = imported.report
        if not self.imported:
            raise DatasetError(
                f"none of the {len(imported)} imported run(s) has feedback ({imported.report.feedback} "
                "feedback record(s) matched): pass feedback=... (scores or comments on those runs)\n"
                + imported.report.summary()
            )
        skipped = len(imported) - len(self.imported)
        if skipped:
            logger.warning("%d imported run(s) have no feedback and are not used", skipped)
        super().__init__(tracer, val, val, guide=guide, **options)
        # the training split is the imported runs: stored as a record of what was learned from
        self.train = [
            {"trace_id": r.trace_id, "source": r.source, "output": short_repr(value_text(r.output), 300)}
            for r in self.imported
        ]
        self.examples["train"] = self.train
        self.inputs["train"] = [None] * len(self.train)
        self.batch_size = min(self.config.batch_size, len(self.train))

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config["source"] = "traces"
        return config

    def _baseline_phase(self) -> None:
        self._consider_best(self._current, self._selection_score(self._current, "baseline"))

    def _forward(self, version: int, step: int, batch: list[int]) -> list[Result]:
        return [self._imported_result(i) for i in batch]  # what already ran: nothing is run

    def _imported_result(self, i: int) -> Result:
        run = self.imported[i]
        assert run.feedback is not None
        feedback = run.feedback
        if feedback.score is None:  # a comment without a score: the mean of the minibatch ignores it
            feedback = type(feedback)(score=0.0, text=feedback.text)
        error = None if run.error is None else f"{type(run.error).__name__}: {run.error}"
        return Result(i, feedback, error, run.graph)

    def _evaluate_all(self, version: int) -> None:
        self._evaluate(version, "val", range(len(self.val)), "final")

    def _selection_score(self, version: int, phase: str) -> float:
        return mean(self._evaluate(version, "val", range(len(self.val)), phase))
