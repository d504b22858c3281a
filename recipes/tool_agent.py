"""LangChain agent with tools: tune the system prompt and the tool descriptions from task
success.

A `create_agent` agent answers shipping, currency and order questions with three tools whose
descriptions start out vague. The guide checks the final answer against the expected value;
OptoPrime sees every model call, tool call and tool result of the run and rewrites the system
prompt and the tool descriptions the model is given.

    python recipes/tool_agent.py --dry-run            # fake tool-calling model, trace + prompt
    python recipes/tool_agent.py --epochs 2           # OPENAI_BASE_URL / OPENAI_API_KEY / OPTO_MODEL
"""

from __future__ import annotations

import re

from common import load_json

from opto_adapters import Feedback

OBJECTIVE = (
    "The agent must answer each task with the exact figure or status, using the tools: "
    "shipping costs are in US dollars unless the task asks for euros."
)
SETTINGS = {"batch_size": 3, "max_concurrency": 3}

_data = load_json("agent_tasks.json")
train = _data["train"]
val = _data["val"]

RATES = {"A": (5.0, 2.5), "B": (8.0, 4.5), "C": (10.0, 4.0)}  # base USD, USD per kg
USD_TO_EUR = 0.92
ORDERS = {
    "A-1001": "delivered on 2026-11-20",
    "A-1002": "shipped, arriving 2026-11-28",
    "A-1003": "processing, estimated delivery 2026-12-02",
}


def INPUT_KEY(example):  # noqa: N802 - the recipe convention's name
    return {"messages": [{"role": "user", "content": example["task"]}]}


def build_app(dry_run: bool = False):
    from langchain.agents import create_agent
    from langchain_core.messages import SystemMessage
    from langchain_core.tools import tool

    @tool
    def shipping_cost(weight_kg: float, zone: str) -> float:
        """Shipping."""
        base, per_kg = RATES[zone.strip().upper()]
        return round(base + per_kg * weight_kg, 2)

    @tool
    def convert_currency(amount: float, from_currency: str, to_currency: str) -> float:
        """Convert."""
        pair = (from_currency.strip().upper(), to_currency.strip().upper())
        if pair == ("USD", "EUR"):
            return round(amount * USD_TO_EUR, 2)
        if pair == ("EUR", "USD"):
            return round(amount / USD_TO_EUR, 2)
        raise ValueError(f"unsupported currency pair {pair}; only USD and EUR")

    @tool
    def order_status(order_id: str) -> str:
        """Order."""
        return ORDERS.get(order_id.strip().upper(), f"no order {order_id}")

    if dry_run:
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        from langchain_core.messages import AIMessage
        from langchain_core.utils.function_calling import convert_to_openai_tool

        class FakeToolModel(GenericFakeChatModel):
            def bind_tools(self, tools, **kwargs):
                return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

        call = {"name": "shipping_cost", "args": {"weight_kg": 3, "zone": "B"}, "id": "call_1"}
        model = FakeToolModel(
            messages=iter([AIMessage(content="", tool_calls=[call]), AIMessage(content="About 20.")])
        )
    else:
        from common import chat_openai

        from opto_adapters.train.recipe import app_model

        model = chat_openai(app_model())
    return create_agent(
        model,
        tools=[shipping_cost, convert_currency, order_status],
        system_prompt=SystemMessage(content="You are a helpful assistant."),
    )


def final_text(output) -> str:
    messages = output.get("messages", []) if isinstance(output, dict) else []
    return str(messages[-1].content) if messages else str(output)


def guide(example, output):
    if isinstance(output, BaseException):
        return Feedback(score=0.0, text=f"the agent failed: {type(output).__name__}: {output}")
    answer, expected = final_text(output), example["answer"]
    try:
        target = float(expected)
    except ValueError:
        ok = expected.lower() in answer.lower()
    else:
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", answer.replace(",", ""))]
        ok = any(abs(n - target) < 0.011 for n in numbers)
    if ok:
        return Feedback(score=1.0, text="correct")
    return Feedback(score=0.0, text=f"wrong: expected {expected}, the agent answered {answer[:200]!r}")


if __name__ == "__main__":
    from opto_adapters.cli import run_recipe

    raise SystemExit(run_recipe(__file__))
