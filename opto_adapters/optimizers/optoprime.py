"""OptoPrime: show an LLM the execution trace and the feedback, get new values back."""

from __future__ import annotations

from collections.abc import Iterable

from ..llm import BaseLLM
from ..trace import Parameter, Subgraph, render
from ..trace.render import DEFAULT_INSTRUCTION, ProblemInstance
from .base import Proposal
from .llm_optimizer import LLMOptimizer

__all__ = ["OptoPrime"]

SYSTEM_PROMPT = """You improve the trainable #Variables of a program from #Feedback on its #Outputs.
Sections: #Instruction (the goal); #Code (the run, one line per operation, `result = op(arg=value_name)`, in order); #Documentation (what each op does); #Variables (`(type) name=value`, changeable; a `# name:` line says what it is for); #Constraints (a value breaking one is refused); #Inputs (fixed); #Others (intermediate values); #Outputs; #Feedback; #Memory (earlier values and their feedback).
`[run N]` marks one run's values in a minibatch (`[runs 1, 3]` several, `[all runs]` every run); code and variables are shared.
Work out how each variable led to the feedback, then suggest values that make future runs better, not only these."""


class OptoPrime(LLMOptimizer):
    """The OptoPrime optimizer (Trace, NeurIPS 2024) over any OpenAI-compatible endpoint.

    ``objective`` replaces the default #Instruction; ``memory_size`` earlier (values,
    feedback) pairs are shown; ``value_budget`` cuts long inputs and intermediate values (the
    variables themselves are shown whole unless ``variable_budget`` is set).
    """

    def __init__(
        self,
        parameters: Iterable[Parameter],
        llm: BaseLLM | None = None,
        *,
        objective: str | None = None,
        memory_size: int = 5,
        value_budget: int | None = 1000,
        max_tokens: int | None | str = "auto",
        variable_budget: int | None = None,
        feedback_budget: int | None = 4000,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        super().__init__(
            parameters, llm, objective=objective, memory_size=memory_size,
            value_budget=value_budget, max_tokens=max_tokens,
        )
        self.variable_budget = variable_budget
        self.feedback_budget = feedback_budget
        self.system_prompt = system_prompt

    def problem(self, subgraphs: list[Subgraph] | None = None) -> ProblemInstance:
        """The problem instance for the accumulated feedback (what ``propose`` sends);
        ``subgraphs``: ``feedback_subgraphs()`` when the caller has it already."""
        instruction = DEFAULT_INSTRUCTION
        if self.objective:
            instruction = f"{self.objective}\n{DEFAULT_INSTRUCTION}"
        return render(
            self.feedback_subgraphs() if subgraphs is None else subgraphs,
            self.parameters,
            instruction=instruction,
            value_budget=self.value_budget,
            variable_budget=self.variable_budget,
            feedback_budget=self.feedback_budget,
        )

    def messages(self, subgraphs: list[Subgraph] | None = None) -> list[dict[str, str]]:
        """The exact messages ``propose`` would send now."""
        body = str(self.problem(subgraphs))
        memory = self.memory_text()
        if memory:
            body += f"\n\n#Memory\n{memory}"
        body += f"\n\n{self.reply_format()}"
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": body},
        ]

    def _prompt(self, subgraphs: list[Subgraph]) -> list[dict[str, str]]:
        return self.messages(subgraphs)

    def _answered(self, proposal: Proposal, subgraphs: list[Subgraph]) -> Proposal:
        basis = proposal.basis if proposal.basis is not None else self.current_values()
        self.remember(basis, self.feedback_summary(subgraphs))
        return proposal
