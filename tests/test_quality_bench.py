"""benchmarks/quality.py in its tiny form against the scripted server: the mechanics only (no
quality claim). Every engine gives a row per task, with its rollouts counted and within the
budget, optimizer tokens for the engines that optimize, and no connection leaves the machine."""

from __future__ import annotations

import logging
import random
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality  # noqa: E402

from opto_adapters.testing import ScriptedLLMServer  # noqa: E402

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
def loopback_only(monkeypatch):
    """Refuse any connection that is not to this machine."""
    connect = socket.socket.connect
    seen: list[str] = []

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        seen.append(host)
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in LOOPBACK:
            raise AssertionError(f"the benchmark tried to reach {host}: it must stay offline")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return seen


def test_tiny_run_gives_every_engine_a_row_with_rollouts_counted(loopback_only, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    tasks = ["object_counting", "langchain_notes", "llama_index_rag"]
    level = logging.getLogger("opto_adapters.train").level
    with ScriptedLLMServer(quality.scripted_reply) as server:
        rows = quality.main(["--tiny", "--base-url", server.base_url, "--tasks", ",".join(tasks)])
        served = len(server.requests)
    assert logging.getLogger("opto_adapters.train").level == level  # put back after the run
    assert served > 0 and loopback_only and set(loopback_only) <= set(LOOPBACK)
    budget = quality.TINY.budget
    by = {(r.task, r.engine): r for r in rows}
    assert set(by) == {(t, e) for t in tasks for e in quality.ENGINES}
    for (task, engine), row in by.items():
        if row.test is None:  # an engine this build or this task cannot run says why
            assert row.note, (task, engine)
            if engine == "pareto":
                assert not quality.trainer_supports()["pareto"] and quality.NOT_AVAILABLE in row.note
            elif engine == "trace-opt":
                assert quality.peer_version("trace-opt") is None or task != "object_counting"
            else:
                assert engine == "gepa" and quality.peer_version("gepa") is None
            continue
        assert 0.0 <= row.test <= 1.0
        if engine == "none":
            assert row.rollouts == 0 and row.tokens == 0 and row.test == 0.0
            continue
        assert 0 < row.rollouts <= budget, (task, engine, row.rollouts)
        assert row.tokens > 0, (task, engine)
        # the scripted optimizer's change makes the scripted app right: what an engine
        # returned is what was scored on test
        assert row.changed and row.test == 1.0, (task, engine, row)
    for engine in ("opro", "greedy"):
        for task in tasks:
            assert by[(task, engine)].test is not None
    out = capsys.readouterr().out
    assert "| task | engine | test score | rollouts | optimizer tokens | note |" in out
    assert "| object_counting | greedy | 1.000 |" in out


def test_generated_tasks_carry_their_gold_answers():
    rng = random.Random(7)
    for name, make in quality.GENERATORS.items():
        for _ in range(50):
            row = make(rng)
            assert quality.solve_generated(row["question"]) == row["answer"], (name, row)
    sort = quality.word_sorting(random.Random(1))
    words = sort["answer"].split()
    assert words == sorted(words) and set(words) == set(sort["question"].split("List: ")[1].split())


def test_final_answer_is_read_from_the_reply_and_graded_exactly():
    assert quality.final_answer("Let me count.\n3 + 4 = 7\nAnswer: 7") == "7"
    assert quality.final_answer("The answer is: **04/01/2021**.") == "04/01/2021"
    assert quality.final_answer("apple banana\ncherry date") == "cherry date"
    example = {"question": "q", "answer": "7"}
    assert quality.exact_guide(example, "Answer: 7").score == 1.0
    wrong = quality.exact_guide(example, "Answer: 8")
    assert wrong.score == 0.0 and "'7'" in wrong.text and "'8'" in wrong.text
    assert quality.exact_guide(example, RuntimeError("boom")).score == 0.0


def test_budgeted_guide_refuses_the_call_past_the_budget():
    guide = quality.BudgetedGuide(lambda ex, out: 1.0, budget=2)
    assert guide({}, "a") == 1.0 and guide({}, "b") == 1.0
    with pytest.raises(quality.BudgetExceeded):
        guide({}, "c")
    assert guide.used == 2 and guide.refused == 1
