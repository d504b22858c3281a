"""OptoPrime: show an LLM the execution trace and the feedback, get new values back."""

from __future__ import annotations

from collections.abc import Iterable

from ..llm import LLM
from ..trace import Parameter, render
from ..trace.render import DEFAULT_INSTRUCTION, ProblemInstance
from .base import Proposal
from .llm_optimizer import REPLY_FORMAT, LLMOptimizer

__all__ = ["OptoPrime"]

SYSTEM_PROMPT = f"""You improve the trainable values (#Variables) of a program from feedback on what it produced.
The problem comes in sections:
#Instruction: the goal.
#Code: how the outputs were computed, one operation per line as `result = operation(argument=value_name, ...)`, in the order they ran.
#Documentation: what each operation does.
#Variables: the values you may change, each as `(type) name=value`; a `# name: ...` line above one says what it is for.
#Constraints: rules a new value must follow; a value that breaks one is refused.
#Inputs: values the program received; you cannot change them.
#Others: values computed along the way.
#Outputs: what the program returned (or the error it raised).
#Feedback: what was wrong with the outputs, or their score.
#Memory (when shown): earlier values of the variables and the feedback they got.
When several runs are shown, `[run N]` marks each run's own values; the code and the variables are shared, and `[all runs]` marks values common to every run.
Work out how each variable influenced the outputs and so the feedback, then suggest new values for the variables that should change, so that future runs get better feedback (not only these).
{REPLY_FORMAT}"""


class OptoPrime(LLMOptimizer):
    """The OptoPrime optimizer (Trace, NeurIPS 2024) over any OpenAI-compatible endpoint.

    ``objective`` replaces the default #Instruction; ``memory_size`` earlier (values,
    feedback) pairs are shown; ``value_budget`` cuts long inputs and intermediate values (the
    variables themselves are shown whole unless ``variable_budget`` is set).
    """

    def __init__(
        self,
        parameters: Iterable[Parameter],
        llm: LLM | None = None,
        *,
        objective: str | None = None,
        memory_size: int = 5,
        value_budget: int | None = 1000,
        variable_budget: int | None = None,
        feedback_budget: int | None = 4000,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        super().__init__(
            parameters, llm, objective=objective, memory_size=memory_size, value_budget=value_budget
        )
        self.variable_budget = variable_budget
        self.feedback_budget = feedback_budget
        self.system_prompt = system_prompt

    def problem(self) -> ProblemInstance:
        """The problem instance for the accumulated feedback (what ``propose`` sends)."""
        instruction = DEFAULT_INSTRUCTION
        if self.objective:
            instruction = f"{self.objective}\n{DEFAULT_INSTRUCTION}"
        return render(
            self.feedback_subgraphs(),
            self.parameters,
            instruction=instruction,
            value_budget=self.value_budget,
            variable_budget=self.variable_budget,
            feedback_budget=self.feedback_budget,
        )

    def messages(self) -> list[dict[str, str]]:
        """The exact messages ``propose`` would send now."""
        body = str(self.problem())
        memory = self.memory_text()
        if memory:
            body += f"\n\n#Memory\n{memory}"
        body += f"\n\n{REPLY_FORMAT}"
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": body},
        ]

    def _propose(self) -> Proposal:
        messages = self.messages()
        proposal = self.ask(messages)
        self.remember(self.current_values(), self.feedback_summary(self.feedback_subgraphs()))
        return proposal
