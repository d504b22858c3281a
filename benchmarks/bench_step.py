"""Optimizer step overhead with a stub LLM: our OptoPrime vs trace-opt's on the same program.

Run: python benchmarks/bench_step.py
The program is the 3-parameter toy of bench_prompt.py, traced and given feedback by each
library (untimed); then one ``optimizer.step()`` is timed: summarize the feedback, render the
prompt, call the LLM, parse the reply, check and write the new values. The LLM is a stub
that answers at once with the same suggestion for both (in each library's variable names):
ours is the real ``opto_adapters.llm.LLM`` over a stub OpenAI client object (so our reply
parsing runs), trace-opt's OptoPrime gets a stub in place of its LLM object. No network.
Each repetition times STEPS steps per library, the order flipped every repetition. The
Python bytecodes executed per step are counted too (a figure the machine's load leaves alone).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer  # noqa: E402
from bench_prompt import our_programs, peer_programs  # noqa: E402

from opto_adapters.llm import LLM  # noqa: E402
from opto_adapters.optimizers import OptoPrime  # noqa: E402

STEPS = 200
REPEAT = 7
NEW_VALUES = {
    "qa_template": "Answer with a number only: {question}",
    "temperature": 0.2,
    "suffix": ".",
}


def reply(names: dict[str, str], padding: int) -> Callable[[list[dict[str, Any]]], str]:
    """The stub's answer: a JSON reply suggesting NEW_VALUES under each library's names."""
    reasoning = "The answer carries words around the number; ask for the number only. "
    reasoning += "x" * max(0, padding - len(reasoning))
    text = json.dumps(
        {"reasoning": reasoning, "suggestion": {names[k]: v for k, v in NEW_VALUES.items()}}
    )
    return lambda messages: text


class StubOpenAIClient:
    """The part of ``openai.OpenAI`` that ``LLM`` uses, answering from ``reply``."""

    base_url = "http://stub.invalid/v1"

    def __init__(self, answer: Callable[[list[dict[str, Any]]], str]) -> None:
        self.answer = answer
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def with_options(self, **options: Any) -> StubOpenAIClient:
        return self

    def create(self, **kwargs: Any) -> peer.StubCompletion:
        return peer.StubCompletion(self.answer(kwargs["messages"]))

    def close(self) -> None:
        pass


def our_optimizer(padding: int) -> Callable[[], Callable[[], Any]]:
    """A maker of fresh (traced, backwarded) toy optimizers; each returns its ``step``."""
    programs = our_programs()
    llm = LLM(model="stub", client=StubOpenAIClient(reply({k: k for k in NEW_VALUES}, padding)))

    def fresh() -> Callable[[], Any]:
        optimizer = OptoPrime(programs.toy(), llm)

        def step() -> None:
            record = optimizer.step()
            assert set(record.applied) == set(NEW_VALUES), record

        return step

    return fresh


def peer_optimizer(padding: int) -> Callable[[], Callable[[], Any]]:
    programs = peer_programs()
    optimizers = peer.load_optimizers()
    stub = peer.StubPeerLLM(reply({k: f"{k}0" for k in NEW_VALUES}, padding))

    def fresh() -> Callable[[], Any]:
        peer.clear_graph()  # so the parameters are named qa_template0, ... every time
        params = programs.toy()
        optimizer = optimizers.OptoPrime(params, llm=stub)

        def step() -> None:
            optimizer.step()
            assert [p.data for p in params] == list(NEW_VALUES.values()), [p.data for p in params]

        return step

    return fresh


def timed_steps(fresh: Callable[[], Callable[[], Any]]) -> Callable[[], float]:
    """One repetition: STEPS steps, each on a fresh program (built untimed); mean seconds."""

    def run() -> float:
        spent = 0.0
        for _ in range(STEPS):
            step = fresh()
            start = time.perf_counter()
            step()
            spent += time.perf_counter() - start
        return spent / STEPS

    return run


def bytecodes(fresh: Callable[[], Callable[[], Any]], steps: int = 20) -> float:
    """Python bytecodes executed per step (``sys.settrace`` opcode events): a count the
    machine's load does not change, for when the wall times are noisy (C work such as
    ``json.loads`` is not in it)."""
    fresh()()  # first step: imports and caches
    pending = [fresh() for _ in range(steps)]
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        for step in pending:
            step()
    finally:
        sys.settrace(None)
    return count / steps


def main() -> None:
    peer_on = peer.available()
    print("## Optimizer step overhead with a stub LLM (3-parameter toy)\n")
    if not peer_on:
        print(peer.missing_note() + "\n")
    print(
        f"one `optimizer.step()` on a traced and backwarded toy program, {STEPS} steps per "
        f"repetition, {REPEAT} repetitions\n"
    )
    print(
        "| step, stub LLM | reply | opto_adapters min us | median us | trace-opt min us | median us "
        "| ours / trace-opt (min) | bytecodes a step: ours | trace-opt |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, padding in [("short reply", 0), ("32 KB reply", 32_000)]:
        makers = {"ours": our_optimizer(padding)}
        if peer_on:
            makers["trace-opt"] = peer_optimizer(padding)
        times = peer.alternate({name: timed_steps(fresh) for name, fresh in makers.items()}, REPEAT)
        ops = {name: bytecodes(fresh) for name, fresh in makers.items()}
        o_lo, o_med = peer.stats(times["ours"])
        size = len(reply({k: k for k in NEW_VALUES}, padding)([]))
        cells = [f"{size:,} chars", f"{o_lo * 1e6:.0f}", f"{o_med * 1e6:.0f}"]
        if peer_on:
            t_lo, t_med = peer.stats(times["trace-opt"])
            cells += [f"{t_lo * 1e6:.0f}", f"{t_med * 1e6:.0f}", f"{o_lo / t_lo:.2f}"]
        else:
            cells += ["n/a", "", ""]
        cells += [f"{ops['ours']:,.0f}", f"{ops['trace-opt']:,.0f}" if peer_on else "n/a"]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
