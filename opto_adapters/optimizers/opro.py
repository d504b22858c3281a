"""OPRO: optimize from the history of values and their scores only (no execution trace).

The graph-free baseline to compare OptoPrime with (Yang et al., "Large Language Models as
Optimizers", 2023).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from statistics import fmean
from typing import Any

from ..llm import BaseLLM
from ..trace import Parameter, Subgraph
from ..trace.render import cut, value_text
from .llm_optimizer import LLMOptimizer

__all__ = ["OPRO"]

SYSTEM_PROMPT = """You improve a set of values (the variables) from a history of earlier values and how they scored.
Higher scores are better. Study which values scored well and which did poorly, then suggest new values that should score higher than all of them."""


class OPRO(LLMOptimizer):
    """Shows the LLM only (values, score) pairs, best last, and asks for better values.

    The score of a step is the mean of the feedback scores; feedback without a score is
    shown as its text instead.
    """

    def __init__(
        self,
        parameters: Iterable[Parameter],
        llm: BaseLLM | None = None,
        *,
        objective: str | None = None,
        memory_size: int = 20,
        value_budget: int | None = 1000,
        max_tokens: int | None | str = "auto",
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        super().__init__(
            parameters, llm, objective=objective, memory_size=memory_size,
            value_budget=value_budget, max_tokens=max_tokens,
        )
        self.system_prompt = system_prompt
        self.history: deque[tuple[dict[str, Any], float | None, str]] = deque(maxlen=memory_size)

    def score_now(self, subgraphs: list[Subgraph] | None = None) -> tuple[float | None, str]:
        """Mean feedback score of the accumulated runs (or None), and their feedback text."""
        subs = self.feedback_subgraphs() if subgraphs is None else subgraphs
        scores = [s.feedback.score for s in subs if s.feedback.score is not None]
        return (fmean(scores) if scores else None), self.feedback_summary(subs, 200)

    def messages(self, subgraphs: list[Subgraph] | None = None) -> list[dict[str, str]]:
        """The exact messages ``propose`` would send now."""
        score, text = self.score_now(subgraphs)
        with self._memory_lock:
            entries = [*self.history, (self.current_values(), score, text)]
        entries.sort(key=lambda e: float("-inf") if e[1] is None else e[1])
        blocks = []
        for values, s, fb in entries:
            head = f"score: {s:g}" if s is not None else f"feedback: {fb}"
            lines = "\n".join(
                f"{name}={cut(value_text(v), self.value_budget)}" for name, v in values.items()
            )
            blocks.append(f"[{head}]\n{lines}")
        kinds = "\n".join(f"{p.name} ({p.kind})" for p in self.parameters)
        body = (
            f"#Instruction\n{self.objective or 'Find values that score higher.'}\n\n"
            f"#Variables\n{kinds}\n\n#History (lowest score first)\n" + "\n\n".join(blocks)
        )
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": f"{body}\n\n{self.reply_format()}"},
        ]

    def _prompt(self, subgraphs: list[Subgraph]) -> list[dict[str, str]]:
        messages = self.messages(subgraphs)
        score, text = self.score_now(subgraphs)
        with self._memory_lock:
            self.history.append((self.current_values(), score, text))
        return messages
