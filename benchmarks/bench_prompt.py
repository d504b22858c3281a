"""Size of the OptoPrime prompt for reference problems, ours (with and without value budgets)
next to trace-opt's OptoPrime on the same programs, in one process.

Run: python benchmarks/bench_prompt.py
Counts characters (system + user message), and tokens when a tokenizer is available offline
(tiktoken with the encoding cache that llama-index-core ships). trace-opt has no value
budget: its one column is compared with ours at the default budget (1,000 characters per
value). trace-opt's OptoPrime refuses a minibatch whose runs got different feedback (it
asserts one feedback text), so that row is ours only. Without trace-opt only our columns are filled (install: see benchmarks/peer.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer  # noqa: E402

from opto_adapters import trace as ours  # noqa: E402
from opto_adapters.optimizers import OptoPrime  # noqa: E402

DOCS = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 880  # ~50 KB


def fill(template, question):
    """Fill the question into the template."""
    return template.format(question=question)


def call_model(prompt, temperature):
    """The application model answers the prompt."""
    return f"An answer to: {prompt[:60]}"


def postprocess(text, suffix):
    """Append the suffix to the answer."""
    return text + suffix


def step(x, k):
    """One processing step."""
    return x + k


def retrieve(query):
    """Return the documents retrieved for the query."""
    return DOCS


class Programs:
    """The reference programs, written once, traced with either library's ``node``/``bundle``."""

    def __init__(
        self, node: Callable[..., Any], bundle: Callable[..., Any], backward: Callable[..., Any]
    ):
        self.node = node
        self.fill, self.call_model, self.postprocess, self.step, self.retrieve = (
            bundle(f) for f in (fill, call_model, postprocess, step, retrieve)
        )
        self.backward = backward

    def toy(self) -> list[Any]:
        template = self.node(
            "Answer the question: {question}", "qa_template", "Prompt template of the QA step."
        )
        temperature = self.node(0.7, "temperature", "Sampling temperature.")
        suffix = self.node("", "suffix", "Text appended to answers.")
        out = self.postprocess(
            self.call_model(self.fill(template, "What is 2+2?"), temperature), suffix
        )
        self.backward(out, "The answer should be the number 4 only.")
        return [template, temperature, suffix]

    def chain20(self, runs: int = 1, same_feedback: bool = True) -> list[Any]:
        k = self.node(1, "k", "Increment of every step.")
        for r in range(runs):
            out = self.node(r, "start", None)
            for _ in range(20):
                out = self.step(out, k)
            self.backward(
                out, "the result should be 100" if same_feedback else f"run {r}: make it {100 + r}"
            )
        return [k]

    def rag(self) -> list[Any]:
        template = self.node(
            "Context: {question}\nAnswer briefly.",
            "rag_template",
            "Prompt with the retrieved context.",
        )
        out = self.call_model(self.fill(template, self.retrieve("What is lorem ipsum?")), 0.0)
        self.backward(out, "The answer ignores the context.")
        return [template]


def our_programs() -> Programs:
    def node(value, name, description):
        if description is None:
            return ours.node(value, name=name)
        kind = "prompt" if name.endswith("template") else None
        extra = {"kind": kind} if kind else {}
        return ours.node(value, name=name, trainable=True, description=description, **extra)

    return Programs(node, lambda f: ours.bundle()(f), lambda out, fb: ours.backward(out, fb))


def peer_programs() -> Programs:
    import opto.trace as t

    def node(value, name, description):
        if description is None:
            return t.node(value, name=name)
        return t.node(value, name=name, trainable=True, description=description)

    return Programs(node, lambda f: t.bundle()(f), lambda out, fb: out.backward(fb))


def our_prompt(params: list[Any], budget: int | None = 1000) -> str:
    return "\n".join(
        m["content"] for m in OptoPrime(params, llm=None, value_budget=budget).messages()
    )


def peer_prompt(params: list[Any]) -> str:
    optimizer = peer.load_optimizers().OptoPrime(params, llm=peer.StubPeerLLM(lambda m: "{}"))
    system, user = optimizer.construct_prompt(optimizer.summarize())
    return system + "\n" + user


PROBLEMS = [
    ("3 parameters (toy)", lambda p: p.toy()),
    ("20-step chain", lambda p: p.chain20()),
    ("minibatch of 8 x 20-step chain, one feedback text", lambda p: p.chain20(8)),
    ("minibatch of 8 x 20-step chain, feedback per run", lambda p: p.chain20(8, False)),
    ("RAG with 50 KB of documents", lambda p: p.rag()),
]


def tokenizer() -> Callable[[str], int] | None:
    try:
        from llama_index.core.utils import get_tokenizer

        encode = get_tokenizer()
        encode("probe")
        return lambda text: len(encode(text))
    except Exception:  # no tokenizer installed or no cached encoding: characters only
        return None


def main() -> None:
    count = tokenizer()
    peer_on = peer.available()
    print("## OptoPrime prompt size: the same programs traced and rendered by each library\n")
    if not peer_on:
        print(peer.missing_note() + "\n")

    def tok(text: str) -> str:
        return f"{count(text):,}" if count else "n/a"

    print(
        "| problem | ours, 1,000 chars/value: chars | tokens | ours, no budget: chars "
        "| trace-opt: chars | tokens | ours (1,000 chars/value) / trace-opt |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, build in PROBLEMS:
        params = build(our_programs())
        cut, whole = our_prompt(params, 1000), our_prompt(params, None)
        row = [f"{len(cut):,}", tok(cut), f"{len(whole):,}"]
        if peer_on and "feedback per run" in label:  # trace-opt asserts one feedback text
            row += ["not possible", "", ""]
        elif peer_on:
            theirs = peer_prompt(build(peer_programs()))
            peer.clear_graph()
            row += [f"{len(theirs):,}", tok(theirs), f"{len(cut) / len(theirs):.2f}"]
        else:
            row += ["n/a", "n/a", "n/a"]
        print(f"| {label} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
