"""The rollout budget: app runs scored by the guide (``max_metric_calls``), never exceeded.

Every evaluation the engine runs is one app run and one guide call, on training or validation
examples alike. ``CountingEvaluator`` counts them and, before each batch of runs, checks that
the whole batch fits the budget: if it does not, nothing of it runs and the loop stops with
status ``max_metric_calls`` (everything done so far is stored; a resumed run continues the
count from the evaluations its store holds). Stored evaluations are reused, so they cost nothing.
"""

from __future__ import annotations

import threading
from typing import Any

from .engine import Evaluator, Stop

__all__ = ["MAX_METRIC_CALLS", "CountingEvaluator"]

MAX_METRIC_CALLS = "max_metric_calls"
"""The status of a run stopped by its rollout budget."""


class CountingEvaluator(Evaluator):
    """An ``Evaluator`` that counts its app runs (``used``, starting at ``used``) and refuses a
    batch of runs that would take the count past ``limit`` (``None``: no limit)."""

    def __init__(self, *, limit: int | None, used: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit, self.used = limit, used
        self._count_lock = threading.Lock()

    @property
    def remaining(self) -> int | None:
        """App runs still allowed (``None``: no limit)."""
        return None if self.limit is None else max(0, self.limit - self.used)

    def fits(self, runs: int) -> bool:
        """Whether ``runs`` more app runs fit the budget."""
        return self.limit is None or self.used + runs <= self.limit

    def _run_all(self, version: int, split: str, todo: list[int], *args: Any, **kwargs: Any) -> None:
        if not self.fits(len(todo)):
            raise Stop(
                MAX_METRIC_CALLS,
                f"max_metric_calls={self.limit} reached: {self.used} app runs were scored and "
                f"the next evaluation needs {len(todo)} more ({split}); continue with "
                "resume=True and a larger max_metric_calls",
            )
        super()._run_all(version, split, todo, *args, **kwargs)

    def _counted(self) -> None:
        with self._count_lock:  # one per stored evaluation: a run tried again counts once
            self.used += 1
