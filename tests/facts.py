"""The capitals world several tests share: facts, a model stand-in's answer and the guide.
It imports nothing of the frameworks, so Ray workers can import it too."""

from __future__ import annotations

from opto_adapters.trace import Feedback

MARK = "Reply with the bare answer ONLY."
FACTS = {"capital of France": "Paris", "capital of Italy": "Rome", "capital of Spain": "Madrid", "capital of Peru": "Lima"}


def answer_for(text: str) -> str:
    asked = max(FACTS, key=text.rfind)  # the question comes after any retrieved context
    answer = FACTS[asked]
    return answer if MARK in text else f"Well, I believe that the answer is {answer}, most likely."


def guide(example, output):
    text = str(output)
    if text.strip() == example["answer"]:
        return Feedback(score=1.0, text="correct")
    return Feedback(score=0.5 if example["answer"] in text else 0.0, text=f"answer with just {example['answer']!r}")
