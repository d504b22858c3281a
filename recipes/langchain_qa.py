"""LangChain LCEL chain: tune the system prompt and the answer format from a guide that gives
both a score and a written critique.

The chain is `ChatPromptTemplate | chat model | StrOutputParser`. Both message templates are
trainable: the system prompt and the human message that carries the answer format.

    python recipes/langchain_qa.py --dry-run          # fake chat model, prints trace and prompt
    python recipes/langchain_qa.py --epochs 2         # OPENAI_BASE_URL / OPENAI_API_KEY / OPTO_MODEL
"""

from __future__ import annotations

from common import answer_feedback, load_json

SYSTEM_PROMPT = "You are a helpful assistant."
HUMAN_TEMPLATE = "{question}\n\nPlease explain your answer."
OBJECTIVE = (
    "Answers are graded automatically against a short reference answer: they must be correct "
    "and consist of the answer alone (a name, a number or a few words), no explanation."
)
INPUT_KEY = ["question"]  # the chain gets {"question": ...}; the reference answer stays out
SETTINGS = {"batch_size": 4}

_data = load_json("capitals_qa.json")
train = _data["train"]
val = _data["val"]


def build_app(dry_run: bool = False):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", HUMAN_TEMPLATE)])
    if dry_run:
        from langchain_core.language_models.fake_chat_models import FakeListChatModel

        model = FakeListChatModel(
            responses=[
                "The capital of Australia is Canberra, not Sydney as many people think; it was "
                "chosen in 1908 as a compromise between Sydney and Melbourne."
            ]
        )
    else:
        from common import chat_openai

        from opto_adapters.train.recipe import app_model

        model = chat_openai(app_model())
    return prompt | model | StrOutputParser()


def guide(example, output):
    return answer_feedback(example["answer"], output)


if __name__ == "__main__":
    from opto_adapters.cli import run_recipe

    raise SystemExit(run_recipe(__file__))
