"""The simulated world of benchmarks/bench_search.py behaves as specified, so the benchmark
measures what it claims: the oracle's prompts score highest, an instruction only helps in
its own prompt, the noise averages out to the known truth, the stand-in proposer is more often
useful when the feedback names the cause, and every engine keeps to its rollout budget."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from statistics import fmean

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_search  # noqa: E402
from search_world import (  # noqa: E402
    BY_KEY,
    CATALOGUE,
    CUE_RATE,
    GENERIC,
    KINDS,
    SEED_PROMPTS,
    OproStandIn,
    StandIn,
    StandInOptimizer,
    World,
    add_line,
    cause_of,
    instructions_in,
    remove_line,
)

from opto_adapters.trace import Feedback  # noqa: E402


@pytest.fixture(scope="module")
def world() -> World:
    return World(3)


def prompts_with(plan: set[str], answer: set[str]) -> dict[str, str]:
    values = dict(SEED_PROMPTS)
    for key in sorted(plan):
        values["plan"] = add_line(values["plan"], BY_KEY[key].text)
    for key in sorted(answer):
        values["answer"] = add_line(values["answer"], BY_KEY[key].text)
    return values


def test_prompt_text_edits_round_trip():
    text = add_line(SEED_PROMPTS["plan"], BY_KEY["steps"].text)
    assert instructions_in(text) == {"steps"}
    assert add_line(text, BY_KEY["steps"].text) == text  # added once
    assert instructions_in(remove_line(text, BY_KEY["steps"].text)) == set()


def test_oracle_prompts_score_highest(world):
    best, plan, answer = world.oracle()
    oracle_values = prompts_with(set(plan), set(answer))
    assert world.expected_score(oracle_values) == pytest.approx(best)
    assert best > world.expected_score(SEED_PROMPTS) + 0.3
    # no single edit of the oracle (add, remove, or move an instruction) scores higher
    for ins in CATALOGUE:
        chosen = {"plan": set(plan), "answer": set(answer)}
        other = "answer" if ins.home == "plan" else "plan"
        if ins.key in chosen[ins.home]:
            chosen[ins.home].discard(ins.key)
            assert world.expected_score(prompts_with(chosen["plan"], chosen["answer"])) < best
            chosen[other].add(ins.key)  # moved to the wrong prompt
        else:
            chosen[ins.home].add(ins.key)
        assert world.expected_score(prompts_with(chosen["plan"], chosen["answer"])) < best


def test_an_instruction_in_the_wrong_prompt_never_helps(world):
    rng = random.Random(0)
    for _ in range(30):
        plan = {i.key for i in CATALOGUE if i.home == "plan" and rng.random() < 0.5}
        answer = {i.key for i in CATALOGUE if i.home == "answer" and rng.random() < 0.5}
        for ins in CATALOGUE:
            wrong_plan, wrong_answer = set(plan), set(answer)
            (wrong_answer if ins.home == "plan" else wrong_plan).add(ins.key)
            before, after = prompts_with(plan, answer), prompts_with(wrong_plan, wrong_answer)
            if after == before:
                continue
            for e in world.splits["test"]:
                p_before = world.probability(e, instructions_in(before["plan"]), instructions_in(before["answer"]))
                p_after = world.probability(e, instructions_in(after["plan"]), instructions_in(after["answer"]))
                assert p_after < p_before


def test_instructions_help_some_examples_and_hurt_others(world):
    mixed = 0
    for ins in CATALOGUE:
        with_it = prompts_with({ins.key} if ins.home == "plan" else set(), {ins.key} if ins.home == "answer" else set())
        deltas = [
            world.probability(e, instructions_in(with_it["plan"]), instructions_in(with_it["answer"]))
            - world.probability(e, frozenset(), frozenset())
            for e in world.splits["test"]
        ]
        assert max(deltas) > 0 or min(deltas) < 0
        mixed += max(deltas) > 0 and min(deltas) < 0
    assert mixed >= 4  # trade-offs: no instruction set is best for every kind
    best_by_kind = {k: max(CATALOGUE, key=lambda i: i.effects.get(k, 0.0)).key for k in KINDS}
    assert len(set(best_by_kind.values())) == len(KINDS)


def test_runs_are_noisy_but_average_to_the_truth_and_replay_by_seed(world):
    values = prompts_with({"steps", "convert"}, {"unit"})
    val = world.splits["val"]
    means = []
    for _ in range(150):
        means.append(fmean(world.run(e.id, values["plan"], values["answer"]).right for e in val))
    assert len(set(means)) > 5  # repeats are new draws
    assert fmean(means) == pytest.approx(world.expected_score(values, "val"), abs=0.03)
    a, b = World(11), World(11)
    runs_a = [a.run(e.id, values["plan"], values["answer"]).right for e in a.splits["val"] * 3]
    runs_b = [b.run(e.id, values["plan"], values["answer"]).right for e in b.splits["val"] * 3]
    assert runs_a == runs_b


def test_feedback_names_the_cause_at_the_cue_rate(world):
    values = dict(SEED_PROMPTS)
    texts = []
    for e in world.splits["train"] * 20:
        out = world.run(e.id, values["plan"], values["answer"])
        fb = world.feedback(out)
        if out.right:
            assert fb == Feedback(score=1.0, text="")
        else:
            assert fb.score == 0.0
            texts.append(fb.text)
            if fb.text != GENERIC:
                key, how = cause_of(fb.text)
                # with nothing in the prompts, every cause is a helpful instruction left out
                assert how == "missing" and BY_KEY[key].effects[world.examples[e.id].kind] > 0
    named = sum(t != GENERIC for t in texts) / len(texts)
    assert named == pytest.approx(CUE_RATE, abs=0.06)


def useful_rate(world: World, feedback: list[str], editable: list[str], trials: int = 300) -> float:
    """How often one stand-in proposal from the seed prompts raises the expected score."""
    stand_in = StandIn(5)
    base = world.expected_score(SEED_PROMPTS)
    better = 0
    for _ in range(trials):
        new = {**SEED_PROMPTS, **stand_in.propose(dict(SEED_PROMPTS), feedback, editable)}
        better += world.expected_score(new) > base
    return better / trials


def test_the_stand_in_is_more_often_useful_when_the_feedback_names_the_cause(world):
    named = [BY_KEY["steps"].missing, BY_KEY["unit"].missing, GENERIC]
    with_cause = useful_rate(world, named, ["plan", "answer"])
    without = useful_rate(world, [GENERIC] * 3, ["plan", "answer"])
    assert with_cause > 0.7
    assert with_cause > without + 0.2


def test_the_stand_in_places_a_named_instruction_home_when_it_may():
    stand_in = StandIn(1, two_edits=0.0)
    cue = [BY_KEY["steps"].missing]
    homes = [stand_in.propose(dict(SEED_PROMPTS), cue, ["plan", "answer"]) for _ in range(300)]
    home = sum("plan" in new and "step by step" in new["plan"] for new in homes) / len(homes)
    assert home == pytest.approx(0.9 * 0.85, abs=0.08)  # acted on (1 - misread), placed right
    # asked to edit only the answer prompt (one component at a time), it puts it there: no help
    only_answer = stand_in.propose(dict(SEED_PROMPTS), cue * 3, ["answer"])
    assert set(only_answer) <= {"answer"}


def test_stand_in_optimizer_reads_the_trace_and_avoids_rejected_values(world):
    app, params = world.make_app()
    opt = StandInOptimizer(params, StandIn(2))
    out = app(world.dataset("train")[0]["input"])
    opt.zero_feedback()
    opt.backward(out, Feedback(score=0.0, text=BY_KEY["iso"].missing))
    proposal = opt.propose()
    assert proposal.values and set(proposal.values) <= {"plan", "answer"}
    opt.remember(proposal.values, "REJECTED: worse")
    rejected = {**opt.current_values(), **proposal.values}
    for _ in range(30):
        again = opt.propose()
        assert {**opt.current_values(), **again.values} != rejected
    assert opt.memory_state() and isinstance(opt.memory_state()[0], list)


def test_opro_stand_in_sees_scores_not_feedback_text(world):
    def proposals(text: str) -> list[dict]:
        app, params = world.make_app()
        opt = OproStandIn(params, StandIn(4))
        out = app(world.dataset("train")[0]["input"])
        seen = []
        for _ in range(10):
            opt.zero_feedback()
            opt.backward(out, Feedback(score=0.0, text=text))
            seen.append(opt.propose().values)
        return seen

    assert proposals(BY_KEY["steps"].missing) == proposals(GENERIC)


def test_greedy_engine_keeps_to_its_budget_and_returns_validated_values():
    world = World(0)
    engine = next(e for e in bench_search.engines() if e.name.startswith("greedy (today"))
    out = engine.run(world, 0, 90)
    assert out.rollouts == len(world.log) <= 90
    assert set(out.values) == {"plan", "answer"}
    # the values returned were validated on every validation example
    val_ids = {e.id for e in world.splits["val"]}
    validated = {p for _, p, split, _, _ in world.log if split == "val"}
    key = (instructions_in(out.values["plan"]), instructions_in(out.values["answer"]))
    assert key in validated
    assert {i for _, p, s, i, _ in world.log if s == "val" and p == key} == val_ids


def test_report_lists_every_engine_and_says_which_cannot_run():
    data = bench_search.measure(2, (60,))
    text = bench_search.report(data, 2, (60,), 1.0)
    for engine in bench_search.engines():
        assert f"| {engine.name} |" in text
        if engine.run is None:
            assert bench_search.NOT_AVAILABLE in engine.missing
    for name, spent in data["spent"].items():
        assert max(spent[60]) <= 60, name


def test_rollouts_to_target_follows_the_best_validated_candidate():
    world = World(0)
    val = world.splits["val"]
    good = prompts_with({"steps", "convert", "iso", "enumerate"}, {"unit", "yesno", "spell", "format"})
    for values, score in ((SEED_PROMPTS, 0.0), (good, 1.0)):
        for e in val:
            out = world.run(e.id, values["plan"], values["answer"])
            world.record(out, "val", score)
    target = world.expected_score(good) - 1e-9
    assert bench_search.rollouts_to_target(world, target) == 2 * len(val)
    assert bench_search.rollouts_to_target(world, world.expected_score(good) + 0.01) is None


def test_engines_pass_the_issue_13_options_when_the_trainer_has_them(monkeypatch):
    """With search/merge/repeats/max_metric_calls present (as after the Pareto and acceptance
    branches), each engine asks for its own; today's trainer runs the call without them."""
    monkeypatch.setattr(bench_search, "trainer_supports", lambda: dict.fromkeys(
        ("search", "pareto", "merge", "repeats", "max_metric_calls"), True))
    calls: list[dict] = []
    real = bench_search.optimize

    def recording(*args, **kwargs):
        calls.append({k: kwargs.pop(k) for k in ("search", "merge", "repeats", "max_metric_calls") if k in kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_search, "optimize", recording)
    engines = {e.name: e for e in bench_search.engines()}
    assert all(engines[n].run is not None for n in engines if not n.startswith("gepa"))
    expected = {
        "greedy (today's search)": {"search": "greedy"},
        "greedy + repeats": {"search": "greedy", "repeats": bench_search.REPEATS},
        "pareto": {"search": "pareto"},
        "pareto + merge": {"search": "pareto", "merge": True},
        "pareto + repeats": {"search": "pareto", "repeats": bench_search.REPEATS},
        "pareto + merge + repeats": {"search": "pareto", "merge": True, "repeats": bench_search.REPEATS},
        "OPRO-style, graph-free (greedy)": {"search": "greedy"},
    }
    for name, options in expected.items():
        calls.clear()
        engines[name].run(World(1), 1, 70)
        assert calls == [{**options, "max_metric_calls": 70}], name
