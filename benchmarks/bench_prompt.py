"""Size of the OptoPrime prompt for reference problems, with and without value budgets.

Run: python benchmarks/bench_prompt.py
Counts characters, and tokens when a tokenizer is available offline (tiktoken with the
encoding cache that llama-index-core ships). For orientation: trace-opt's OptoPrime sent
about 3,100 characters for a 3-parameter toy program, repeats the whole code for every run of
a minibatch, and does not cut long values.
"""

from __future__ import annotations

from collections.abc import Callable

from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import Parameter, bundle, node


def tokenizer() -> Callable[[str], int] | None:
    try:
        from llama_index.core.utils import get_tokenizer

        encode = get_tokenizer()
        encode("probe")
        return lambda text: len(encode(text))
    except Exception:  # no tokenizer installed or no cached encoding: characters only
        return None


@bundle()
def fill(template, question):
    """Fill the question into the template."""
    return template.format(question=question)


@bundle()
def call_model(prompt, temperature):
    """The application model answers the prompt."""
    return f"An answer to: {prompt[:60]}"


@bundle()
def postprocess(text, suffix):
    """Append the suffix to the answer."""
    return text + suffix


@bundle()
def step(x, k):
    """One processing step."""
    return x + k


@bundle()
def retrieve(query):
    """Return the documents retrieved for the query."""
    return "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 880  # ~50 KB


def toy() -> list[Parameter]:
    template = node("Answer the question: {question}", name="qa_template", trainable=True,
                    kind="prompt", description="Prompt template of the QA step.")
    temperature = node(0.7, name="temperature", trainable=True, description="Sampling temperature.")
    suffix = node("", name="suffix", trainable=True, description="Text appended to answers.")
    out = postprocess(call_model(fill(template, "What is 2+2?"), temperature), suffix)
    out.backward("The answer should be the number 4 only.")
    return [template, temperature, suffix]


def chain20(runs: int = 1) -> list[Parameter]:
    k = node(1, name="k", trainable=True, description="Increment of every step.")
    for r in range(runs):
        out = node(r, name="start")
        for _ in range(20):
            out = step(out, k)
        out.backward(f"run {r}: the result should be 100")
    return [k]


def rag() -> list[Parameter]:
    template = node("Context: {question}\nAnswer briefly.", name="rag_template", trainable=True,
                    kind="prompt", description="Prompt with the retrieved context.")
    docs = retrieve("What is lorem ipsum?")
    out = call_model(fill(template, docs), 0.0)
    out.backward("The answer ignores the context.")
    return [template]


def main() -> None:
    count = tokenizer()
    problems = [
        ("3 parameters (toy)", toy),
        ("20-step chain", chain20),
        ("minibatch of 8 x 20-step chain", lambda: chain20(8)),
        ("RAG with 50 KB of documents", rag),
    ]
    print("## OptoPrime prompt size\n")
    print("| problem | budget | characters | tokens |")
    print("|---|---|---:|---:|")
    for label, build in problems:
        params = build()
        for budget_label, budget in [("1,000 chars/value", 1000), ("none", None)]:
            opt = OptoPrime(params, llm=None, value_budget=budget)
            text = "\n".join(m["content"] for m in opt.messages())
            tokens = f"{count(text):,}" if count else "n/a"
            print(f"| {label} | {budget_label} | {len(text):,} | {tokens} |")
        for p in params:
            p.zero_feedback()


if __name__ == "__main__":
    main()
