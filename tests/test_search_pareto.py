"""The Pareto search through the scripted server: the front, minibatch acceptance, merge, the
rollout budget, resume; and the pure functions of ``opto_adapters.train.pareto``."""

import json
import random
import re
from xml.etree import ElementTree

import pytest

from opto_adapters import cli
from opto_adapters.llm import Budget
from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import Feedback, bundle, node
from opto_adapters.train import Store, TrainConfig, optimize
from opto_adapters.train.pareto import (
    common_ancestor,
    dominates,
    find_merge,
    leads,
    merge_values,
    pareto_front,
    sample_parents,
)
from opto_adapters.train.report import render_report
from tests.test_cli import RECIPE
from tests.train_apps import (
    data,
    guide,
    improve_then_worsen,
    llm_for,
    make_app,
    section,
    user_prompts,
)

# -- a world where candidates are good at different examples ------------------------------------


class TwoPartApp:
    """``prefix q suffix``: two trainable parameters, each changing what some examples want."""

    def __init__(self, prefix="Reply", suffix="."):
        self.prefix = node(prefix, name="prefix", trainable=True, kind="prompt", description="Opening word.")
        self.suffix = node(suffix, name="suffix", trainable=True, kind="prompt", description="Closing mark.")
        self.calls = []
        app = self

        @bundle()
        def respond(prefix, suffix, q):
            """Put the question between the prefix and the suffix."""
            app.calls.append(q)
            return f"{prefix} {q}{suffix}"

        self.respond = respond

    @property
    def parameters(self):
        return [self.prefix, self.suffix]

    def __call__(self, q):
        return self.respond(self.prefix, self.suffix, q)


def wanting(*wants, prefix="q"):
    """Examples, each wanting one marker in the output."""
    return [{"input": f"{prefix}{i}", "want": w} for i, w in enumerate(wants)]


def want_guide(example, output):
    ok = example["want"] in output
    return Feedback(score=float(ok), text="good" if ok else f"the reply needs {example['want']!r}")


def suggest(**values):
    return json.dumps({"reasoning": "because", "suggestion": values})


def variables(body):
    return section(body["messages"][-1]["content"], "Variables")


def two_part(server, train, val, **kw):
    app = TwoPartApp()
    store = kw.pop("store", None) or Store()
    result = optimize(
        app, train, val, guide=kw.pop("guide", want_guide),
        optimizer=OptoPrime(app.parameters, llm_for(server)), store=store, batch_size=2,
        shuffle=False, max_concurrency=1, progress=False, search="pareto", **kw,
    )
    return app, store, result


# -- the front -----------------------------------------------------------------------------------


def test_the_front_keeps_a_candidate_that_leads_on_one_example_though_its_mean_is_lower(scripted_llm):
    scripted_llm.script(suggest(prefix="A"), suggest(prefix="B"))
    train = wanting("A", "A", "B", "B")
    val = wanting("A", "B", "B", prefix="v")
    app, store, result = two_part(scripted_llm, train, val)
    assert [s.status for s in result.history] == ["accepted", "accepted"]
    by_values = {f.values["prefix"]: f for f in result.front}
    assert set(by_values) == {"A", "B"}  # the seed is dominated; A is not, though its mean is lower
    a, b = by_values["A"], by_values["B"]
    assert a.scores == [1.0, 0.0, 0.0] and a.mean == pytest.approx(1 / 3)
    assert b.scores == [0.0, 1.0, 1.0] and b.mean == pytest.approx(2 / 3)
    assert b.parents == [a.version_id] and a.parents == [store.run(result.run_id).baseline_version_id]
    assert result.best.val == pytest.approx(2 / 3) and app.prefix.value == "B"
    pool = store.pool(result.run_id)
    assert [m.kind for m in pool] == ["seed", "mutation", "mutation"]
    assert [m.on_front for m in pool] == [False, True, True]
    # the second step mutated the only front member, A, from the trace of its runs
    second = user_prompts(scripted_llm)[1]
    assert "prefix=A" in section(second, "Variables")
    assert "the reply needs 'B'" in second
    assert store.check() == []


def test_parents_are_drawn_from_the_front_by_examples_led(scripted_llm):
    # A leads on one val example, B on two: with two proposals per step, both are mutated each step
    seen = []

    def reply(body):
        prefix = variables(body).split("prefix=", 1)[1].split("\n", 1)[0].strip()
        seen.append(prefix)
        if prefix == "Reply":
            return suggest(prefix="A")
        if prefix == "A" and seen.count("A") == 1:
            return suggest(prefix="B")
        return suggest(suffix="?")

    scripted_llm.set_default(reply)
    train = wanting("A", "A", "B", "B", *["x"] * 8)
    val = wanting("A", "B", "B", prefix="v")
    _, store, result = two_part(scripted_llm, train, val, proposals_per_step=2)
    # step 1: only the seed; step 2: only A (it dominates the seed); then A and B, every step
    assert seen[:2] == ["Reply", "A"]
    later = seen[2:]
    assert len(later) == 2 * (len(result.history) - 2) == 8
    assert all({later[i], later[i + 1]} == {"A", "B"} for i in range(0, len(later), 2))
    assert [m.kind for m in store.pool(result.run_id)] == ["seed", "mutation", "mutation"]


# -- minibatch acceptance ------------------------------------------------------------------------


def test_a_child_worse_on_its_minibatch_is_never_validated_and_is_remembered(scripted_llm):
    scripted_llm.script(suggest(prefix="B"), suggest(prefix="Reply!"), suggest(prefix="A"))
    train = wanting("A", "A", "A", "x", "A", "x")
    val = wanting("A", "A", prefix="v")
    app = TwoPartApp(prefix="A")
    calls = []

    def counting(example, output):
        calls.append(example["input"])
        return want_guide(example, output)

    store = Store()
    result = optimize(
        app, train, val, guide=counting, optimizer=OptoPrime(app.parameters, llm_for(scripted_llm)),
        store=store, batch_size=2, shuffle=False, max_concurrency=1, progress=False, search="pareto",
    )
    cands = store.candidates(result.run_id)
    assert [(c.values, c.status) for c in cands] == [
        ({"prefix": "B"}, "rejected"), ({"prefix": "Reply!"}, "rejected"), ({}, "no_change"),
    ]
    assert "not above the parent's 1; not validated" in cands[0].reason
    for c in cands[:2]:  # worse, and equal (0.5 vs 0.5 on [A, x]) on the minibatch: never on val
        assert store.evaluations(result.run_id, version_id=c.version_id, split="val") == []
        assert len(store.evaluations(result.run_id, version_id=c.version_id, split="train")) == 2
    assert cands[2].reason == "the optimizer suggested no change"  # "A" is the parent's own value
    memory = section(user_prompts(scripted_llm)[1], "Memory")
    assert "prefix=B" in memory and "REJECTED: minibatch score 0 is not above the parent's 1" in memory
    # rollouts: the seed on val (2), the seed on minibatches (6), two children on theirs (4);
    # the final values are the seed, scored on the rest of train (0: all six were minibatches)
    assert len(calls) == 2 + 6 + 4 == len(store.evaluations(result.run_id))
    assert [m.kind for m in store.pool(result.run_id)] == ["seed"]
    assert app.prefix.value == "A"


def test_without_val_the_training_set_is_the_validation_set(scripted_llm, caplog):
    caplog.set_level("INFO", "opto_adapters.train")
    scripted_llm.script(suggest(prefix="A"), suggest(suffix="!"))
    train = wanting("A", "x", "!", "x")
    _, store, result = two_part(scripted_llm, train, None)
    assert "the Pareto search scores each candidate on the whole training set" in caplog.text
    assert [s.status for s in result.history] == ["accepted", "accepted"]
    (best,) = result.front
    assert best.values == {"prefix": "A", "suffix": "!"} and best.scores == [1.0, 0.0, 1.0, 0.0]
    assert result.best.train == 0.5 and result.best.val is None


# -- merge ---------------------------------------------------------------------------------------


def test_merge_combines_parameters_changed_by_different_candidates(scripted_llm):
    seed_calls = []

    def reply(body):
        v = variables(body)
        if "prefix=Reply" in v and "suffix=." in v:
            seed_calls.append(1)
            return suggest(prefix="ANSWER") if len(seed_calls) == 1 else suggest(suffix="!")
        return suggest(suffix="?")

    scripted_llm.set_default(reply)
    train = wanting("ANSWER", "ANSWER", "!", "!", "ANSWER", "!")
    val = wanting("Reply", "ANSWER", "!", prefix="v")
    app, store, result = two_part(scripted_llm, train, val, proposals_per_step=2, merge=True)
    run_id = result.run_id
    pool = store.pool(run_id)
    assert [m.kind for m in pool] == ["seed", "mutation", "mutation", "merge"]
    seed, a, b, merged = pool
    assert store.version_values(a.version_id) == {"prefix": "ANSWER", "suffix": "."}
    assert store.version_values(b.version_id) == {"prefix": "Reply", "suffix": "!"}
    # the merge takes each changed parameter from the candidate that changed it
    assert store.version_values(merged.version_id) == {"prefix": "ANSWER", "suffix": "!"}
    assert sorted(merged.parents) == sorted([a.version_id, b.version_id])
    (merge_candidate,) = [c for c in store.candidates(run_id) if c.id == merged.candidate_id]
    assert store.lineage(run_id)[merge_candidate.id][0] == "merge"
    assert merge_candidate.prompt == "" and merge_candidate.status == "accepted"
    assert merged.step == 3 and b.step == 2 and b.parents == [seed.version_id]
    assert len(scripted_llm.prompts()) == 1 + 2 + 1  # the merge at step 3 asked the optimizer nothing
    assert result.best.val == pytest.approx(2 / 3)
    assert [f.version_id for f in result.front] == [b.version_id, merged.version_id]  # merged dominates A
    assert store.check() == []


def test_no_merge_without_the_option(scripted_llm):
    seed_calls = []

    def reply(body):
        v = variables(body)
        if "prefix=Reply" in v and "suffix=." in v:
            seed_calls.append(1)
            return suggest(prefix="ANSWER") if len(seed_calls) == 1 else suggest(suffix="!")
        return suggest(suffix="?")

    scripted_llm.set_default(reply)
    _, store, result = two_part(
        scripted_llm, wanting("ANSWER", "ANSWER", "!", "!", "ANSWER", "!"), wanting("Reply", "ANSWER", "!", prefix="v"),
        proposals_per_step=2,
    )
    assert [m.kind for m in store.pool(result.run_id)] == ["seed", "mutation", "mutation"]
    assert len(scripted_llm.prompts()) == 1 + 2 + 2


# -- the rollout budget --------------------------------------------------------------------------


@pytest.mark.parametrize("search", ["greedy", "pareto"])
def test_max_metric_calls_is_never_exceeded(scripted_llm, search):
    scripted_llm.set_default(improve_then_worsen)
    for limit in (3, 7, 10, 13, 18, 40):
        calls = []

        def counting(example, output, calls=calls):
            calls.append(example)
            return guide(example, output)

        app = make_app("Reply {q}")
        store = Store()
        result = optimize(
            app, data(6), data(3, "v"), guide=counting, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
            batch_size=2, epochs=2, store=store, search=search, max_metric_calls=limit, progress=False,
        )
        assert len(calls) <= limit, (limit, len(calls))
        assert len(store.evaluations(result.run_id)) == len(calls)
        assert store.check() == []
        if result.status == "max_metric_calls":
            assert f"max_metric_calls={limit}" in result.message
        else:
            assert result.status == "completed" and limit == 40
    assert TrainConfig(max_metric_calls=5).max_metric_calls == 5
    with pytest.raises(ValueError, match="max_metric_calls must be a positive int"):
        TrainConfig(max_metric_calls=0)
    with pytest.raises(ValueError, match="search must be one of"):
        TrainConfig(search="beam")


def test_a_run_stopped_by_the_rollout_budget_resumes_with_a_larger_one(scripted_llm, tmp_path):
    scripted_llm.set_default(improve_then_worsen)
    path = str(tmp_path / "runs.sqlite")

    def run(**kw):
        app = make_app("Reply {q}")
        return app, optimize(
            app, data(6), data(3, "v"), guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
            batch_size=2, epochs=2, store=path, search="pareto", progress=False, **kw,
        )

    first, stopped = run(max_metric_calls=8)
    assert stopped.status == "max_metric_calls"
    second, resumed = run(max_metric_calls=100, resume=True)
    assert resumed.status == "completed" and resumed.run_id == stopped.run_id
    reference_app, reference = run()
    assert [s.status for s in resumed.history] == [s.status for s in reference.history]
    assert len(first.calls) + len(second.calls) == len(reference_app.calls)


# -- resume --------------------------------------------------------------------------------------

TRAIN, VAL = data(6), data(3, "v")
PREFIXES = ("ANSWER", "Sure", "Reply")


def reasoned(body):
    """A stand-in optimizer that acts on a need its feedback names, taking turns by the number
    of rejections it remembers (a pure function of the prompt, so a resumed run is asked
    exactly what the uninterrupted one was)."""
    content = body["messages"][-1]["content"]
    wants = re.findall(r"needs '([^']+)'", content.split("\n#Memory\n", 1)[0])
    if not wants:
        return suggest(suffix=".")
    w = wants[content.count("REJECTED") % len(wants)]
    return suggest(prefix=w) if w in PREFIXES else suggest(suffix=w)


def merging(body):
    """``reasoned``, except that the child of ANSWER/. always asks for "?" (so the merge of
    ANSWER/. and Reply/! is not found by a mutation first)."""
    v = variables(body)
    if "prefix=ANSWER" in v and "suffix=." in v:
        return suggest(suffix="?")
    return reasoned(body)


WORLDS = {
    # many pool members on different branches, rejections of every kind
    "explores": (reasoned, wanting("ANSWER", "!", "Reply", "?", "Sure", ".", "!", "ANSWER", "?", "Reply"),
                 wanting("ANSWER", "!", "Reply", "?", "Sure", ".", prefix="v"), 2),
    # two branches from the seed, then their merge
    "merges": (merging, wanting("ANSWER", "ANSWER", "!", "!", "ANSWER", "!"), wanting("Reply", "ANSWER", "!", prefix="v"), 1),
}


def pareto_run(server, store, world="explores", **kw):
    reply, train, val, epochs = WORLDS[world]
    server.set_default(reply)
    app = TwoPartApp()
    result = optimize(
        app, train, val, guide=kw.pop("guide", want_guide),
        optimizer=OptoPrime(app.parameters, llm_for(server)), epochs=epochs, batch_size=2,
        shuffle=False, max_concurrency=1, store=store, progress=False, search="pareto",
        proposals_per_step=2, merge=True, **kw,
    )
    return app, result


def summary(store, result):
    pool = [(m.version_id, m.kind, m.parents, m.on_front) for m in store.pool(result.run_id)]
    cands = [(c.step, c.k, c.values, c.status, c.score, c.reason) for c in store.candidates(result.run_id)]
    return pool, cands, [(s.status, s.reason) for s in result.history], result.best, result.final


def test_the_resume_worlds_explore_and_merge(scripted_llm):
    store = Store()
    app, result = pareto_run(scripted_llm, store)
    assert [m.kind for m in store.pool(result.run_id)].count("mutation") >= 5 and len(result.front) >= 3
    assert {"accepted", "rejected"} <= {c.status for c in store.candidates(result.run_id)}
    assert len(app.calls) == len(store.evaluations(result.run_id)) > 80
    store = Store()
    _, result = pareto_run(scripted_llm, store, "merges")
    assert [m.kind for m in store.pool(result.run_id)] == ["seed", "mutation", "mutation", "merge"]


STOPS = [("explores", n) for n in (*range(3, 95, 9), 102)] + [("merges", n) for n in range(2, 31, 4)]


@pytest.mark.parametrize(("world", "stop_at"), STOPS)
def test_resume_after_an_interruption_mid_search_evaluates_nothing_twice(scripted_llm, tmp_path, world, stop_at):
    reference_store = Store()
    before = len(scripted_llm.prompts())
    reference_app, reference = pareto_run(scripted_llm, reference_store, world)
    reference_llm = len(scripted_llm.prompts()) - before
    assert reference.status == "completed" and len(reference_app.calls) > stop_at

    path = str(tmp_path / "runs.sqlite")
    seen = []

    def interrupting(example, output):
        seen.append(example)
        if len(seen) == stop_at:
            raise KeyboardInterrupt
        return want_guide(example, output)

    before = len(scripted_llm.prompts())
    first, stopped = pareto_run(scripted_llm, path, world, guide=interrupting)
    assert stopped.status == "interrupted"
    second, resumed = pareto_run(scripted_llm, path, world, resume=True)
    assert resumed.status == "completed" and resumed.run_id == stopped.run_id
    # +1: the run whose guide was interrupted is not stored, so it runs again
    assert len(first.calls) + len(second.calls) == len(reference_app.calls) + 1
    assert len(scripted_llm.prompts()) - before == reference_llm  # no proposal asked twice
    with Store(path, readonly=True) as store:
        assert summary(store, resumed) == summary(reference_store, reference)
        assert len(store.evaluations(resumed.run_id)) == len(reference_store.evaluations(reference.run_id))
        assert store.check() == []
    assert (second.prefix.value, second.suffix.value) == (reference_app.prefix.value, reference_app.suffix.value)


@pytest.mark.parametrize("max_calls", [1, 2, 5, 9, 13])
def test_a_spent_optimizer_budget_mid_step_then_resume_ends_like_an_uninterrupted_run(scripted_llm, tmp_path, max_calls):
    reference_store = Store()
    before = len(scripted_llm.prompts())
    reference_app, reference = pareto_run(scripted_llm, reference_store)
    reference_llm = len(scripted_llm.prompts()) - before
    path = str(tmp_path / "runs.sqlite")
    first = TwoPartApp()
    _, train, val, epochs = WORLDS["explores"]

    def run(app, **kw):
        return optimize(
            app, train, val, guide=want_guide, optimizer=OptoPrime(app.parameters, llm_for(scripted_llm, **kw)),
            epochs=epochs, batch_size=2, shuffle=False, max_concurrency=1, store=path, progress=False,
            search="pareto", proposals_per_step=2, merge=True, resume=not kw,
        )

    before = len(scripted_llm.prompts())
    stopped = run(first, budget=Budget(max_calls=max_calls))
    assert stopped.status == "budget_exhausted"
    second = TwoPartApp()
    resumed = run(second)
    assert len(scripted_llm.prompts()) - before == reference_llm
    with Store(path, readonly=True) as store:
        assert summary(store, resumed) == summary(reference_store, reference)
        # nothing ran twice; beyond the uninterrupted run's, only the stopped run's final
        # evaluation of its best values so far
        evaluations = store.evaluations(resumed.run_id)
        assert len(first.calls) + len(second.calls) == len(evaluations)
        ran = {(e.version_id, e.split, e.index): e for e in evaluations}
        needed = {(e.version_id, e.split, e.index) for e in reference_store.evaluations(reference.run_id)}
        assert needed <= set(ran)
        assert all(ran[key].phase == "final" for key in set(ran) - needed)
        assert store.check() == []


def test_a_run_is_not_resumed_with_another_search(scripted_llm, tmp_path):
    path = str(tmp_path / "runs.sqlite")
    _, train, val, _ = WORLDS["explores"]
    pareto_run(scripted_llm, path, max_steps=1)
    app = TwoPartApp()
    with pytest.raises(Exception, match="search changed \\('pareto' -> 'greedy'\\)"):
        optimize(app, train, val, guide=want_guide, optimizer=OptoPrime(app.parameters, llm_for(scripted_llm)),
                 batch_size=2, shuffle=False, store=path, progress=False, resume=True)


# -- greedy is unchanged -------------------------------------------------------------------------


def test_greedy_is_the_default_and_unchanged(scripted_llm):
    outcomes = []
    for options in ({}, {"search": "greedy"}):
        scripted_llm.set_default(improve_then_worsen)
        app = make_app("Reply {q}")
        store = Store()
        result = optimize(
            app, TRAIN, VAL, guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
            epochs=2, batch_size=2, store=store, progress=False, **options,
        )
        outcomes.append(([(s.status, s.reason, s.candidate_scores) for s in result.history], len(app.calls), result.best))
        assert result.front == [] and store.pool(result.run_id) == []
    assert outcomes[0] == outcomes[1]


# -- CLI and report ------------------------------------------------------------------------------


def test_cli_search_pareto(tmp_path, scripted_llm, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_BASE_URL", scripted_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPTO_MODEL", "m")
    scripted_llm.set_default(improve_then_worsen)
    recipe = tmp_path / "toy_recipe.py"
    recipe.write_text(RECIPE)
    store = tmp_path / "runs.sqlite"
    code = cli.main([
        "optimize", str(recipe), "--store", str(store), "--search", "pareto", "--proposals-per-step", "2",
        "--merge", "--max-metric-calls", "200", "--objectives", "score,tokens", "--no-progress",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "run 1: completed" in out and "pareto front: 1 candidate(s)" in out
    with Store(store, readonly=True) as s:
        run = s.run(1)
        assert (run.config["search"], run.config["proposals_per_step"], run.config["merge"]) == ("pareto", 2, True)
        assert run.config["max_metric_calls"] == 200 and run.config["objectives"] == ["score", "tokens"]
        assert len(s.pool(1)) >= 2
    assert cli.main(["show", str(store)]) == 0 and cli.main(["show", str(store), "--step", "1"]) == 0
    assert "mutation of v1" in capsys.readouterr().out
    report = tmp_path / "report.html"
    assert cli.main(["report", str(store), "-o", str(report)]) == 0
    assert "candidate-tree" in report.read_text() and "front over score and tokens" in report.read_text()


def test_the_report_draws_the_candidate_tree_and_lists_the_front(scripted_llm):
    scripted_llm.script(suggest(prefix="A"), suggest(prefix="B"))
    _, store, result = two_part(scripted_llm, wanting("A", "A", "B", "B"), wanting("A", "B", "B", prefix="v"))
    html = render_report(store, result.run_id)
    tree = html.split('<svg xmlns="http://www.w3.org/2000/svg" id="candidate-tree"', 1)[1].split("</svg>", 1)[0]
    ElementTree.fromstring('<svg xmlns="http://www.w3.org/2000/svg"' + tree + "</svg>")  # well-formed
    seed, a, b = (m.version_id for m in store.pool(result.run_id))
    assert tree.count('class="candidate') == 3 and tree.count('class="candidate front"') == 2
    assert f'data-parent="{seed}" data-child="{a}"' in tree and f'data-parent="{a}" data-child="{b}"' in tree
    front = html.split("<table id='front'>", 1)[1].split("</table>", 1)[0]
    assert front.count("<tr>") == 3  # a header and the two front members
    assert "<code>1.000 0.000 0.000</code>" in front and "<code>0.000 1.000 1.000</code>" in front
    assert "mutation of v1" in html  # the candidates say where they came from


def test_the_store_gets_the_search_tables_when_an_older_store_is_opened(tmp_path):
    path = tmp_path / "old.sqlite"
    with Store(path) as store:
        store._conn.executescript("DROP TABLE search_pool; DROP TABLE search_lineage;")
    with Store(path, readonly=True) as old:
        assert old.pool(1) == [] and old.lineage(1) == {}
    with Store(path) as store:
        tables = {r[0] for r in store._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"search_pool", "search_lineage"} <= tables


# -- the pure functions --------------------------------------------------------------------------


def test_dominance_and_the_front():
    assert dominates([1, 1], [1, 0]) and not dominates([1, 0], [1, 0]) and not dominates([1, 0], [0, 1])
    scores = {"a": [1, 0, 0], "b": [0, 1, 1], "c": [0, 1, 0], "d": [0.5, 0.5, 0.5], "e": [0, 1, 1]}
    assert pareto_front(scores) == ["a", "b", "d", "e"]  # c is dominated by b; b and e tie
    assert leads(scores) == {"a": 1, "b": 2, "c": 1, "d": 0, "e": 2}
    with pytest.raises(ValueError, match="different lengths"):
        dominates([1], [1, 2])


def test_sampling_is_seeded_weighted_by_examples_led_and_distinct():
    scores = {"a": [1, 0, 0, 0], "b": [0, 1, 1, 1], "c": [0, 0.5, 0.5, 0.5], "d": [0.4, 0.4, 0.4, 0.4]}
    draws = [sample_parents(scores, 1, random.Random(i))[0] for i in range(2000)]
    assert set(draws) == {"a", "b"}  # c is dominated; d is on the front but leads nowhere
    assert 0.2 < draws.count("a") / len(draws) < 0.3  # a leads on 1 example of 4, b on 3
    assert sample_parents(scores, 2, random.Random(3)) == sample_parents(scores, 2, random.Random(3))
    assert sorted(sample_parents(scores, 2, random.Random(5))) == ["a", "b"]
    assert sorted(sample_parents(scores, 5, random.Random(5))) == ["a", "b"]  # distinct: at most the leaders
    with pytest.raises(ValueError, match="no candidates"):
        sample_parents({}, 1, random.Random(0))


def test_sampling_ignores_examples_every_candidate_scores_alike():
    # four examples everyone fails: "leading" there says nothing. b leads on 3 examples that
    # tell the candidates apart, c on 1: drawn 3:1 (counting the four would make it 7:5)
    scores = {"b": [0, 0, 0, 0, 1, 1, 1, 0], "c": [0, 0, 0, 0, 0, 0, 0, 1]}
    draws = [sample_parents(scores, 1, random.Random(i))[0] for i in range(2000)]
    assert 0.7 < draws.count("b") / len(draws) < 0.8
    alike = {"x": [0.0, 1.0], "y": [0.0, 1.0]}  # nothing tells them apart: both may be drawn
    assert sorted(sample_parents(alike, 2, random.Random(0))) == ["x", "y"]


def test_merge_selection():
    values = {
        0: {"p": "p0", "q": "q0", "r": "r0"},
        1: {"p": "p1", "q": "q0", "r": "r0"},  # changed p
        2: {"p": "p0", "q": "q2", "r": "r0"},  # changed q
        3: {"p": "p3", "q": "q2", "r": "r0"},  # from 2, changed p
        4: {"p": "p0", "q": "q0", "r": "r4"},  # changed r
    }
    parents = {0: [], 1: [0], 2: [0], 3: [2], 4: [0]}
    order = [0, 1, 2, 3, 4]
    assert common_ancestor(1, 3, parents, order) == 0 and common_ancestor(3, 2, parents, order) == 2
    assert merge_values(values[1], values[2], values[0]) == {"p": "p1", "q": "q2", "r": "r0"}
    assert merge_values(values[1], values[3], values[0]) is None  # both changed p
    assert merge_values(values[0], values[1], values[0]) is None  # one changed nothing
    scores = {0: [0, 0], 1: [1, 0], 2: [0, 1], 3: [0.5, 0.5], 4: [0.2, 0.2]}
    m = find_merge(order, scores, parents, values)
    assert (m.a, m.b, m.ancestor) == (1, 2, 0) and m.values == {"p": "p1", "q": "q2", "r": "r0"}
    m = find_merge(order, scores, parents, values, tried=[frozenset((1, 2))])
    assert {m.a, m.b} == {1, 4} and m.values == {"p": "p1", "q": "q0", "r": "r4"}
    # a combination that is already a candidate is not tried again
    values[5] = {"p": "p1", "q": "q2", "r": "r0"}
    parents[5] = [1]
    m = find_merge([*order, 5], {**scores, 5: [0, 0]}, parents, values)
    assert frozenset((m.a, m.b)) != frozenset((1, 2))


# -- cost as an objective ------------------------------------------------------------------------


def _terse_chain():
    """A LangChain chain whose model reports one token per word and answers tersely only when
    its system prompt asks (the lenient guide scores both answers 1.0)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from tests.test_app_usage import UsageChatModel
    from tests.test_train_frameworks import answer_for

    model = UsageChatModel(respond=lambda messages: answer_for("\n".join(str(m.content) for m in messages)))
    prompt = ChatPromptTemplate.from_messages([("system", "You are helpful."), ("human", "{question}")])
    return prompt | model | StrOutputParser()


def _lenient(example, output):
    ok = example["answer"] in str(output)
    return Feedback(score=float(ok), text="correct" if ok else f"the answer is {example['answer']!r}")


@pytest.mark.parametrize("objectives", [("score",), ("score", "tokens")])
def test_with_the_tokens_objective_a_cheaper_child_as_good_as_its_parent_joins_the_front(scripted_llm, objectives):
    from opto_adapters.train.objectives import pick, points_from_store
    from tests.test_train_frameworks import FACTS, MARK, TRAIN, VAL, optimizer_llm

    llm = optimizer_llm(scripted_llm, {"prompt.system": f"You are helpful. {MARK}"})
    store = Store()
    train = TRAIN + [{"question": f"What is the {k}?", "answer": v} for k, v in FACTS.items()]
    result = optimize(
        _terse_chain(), train, VAL, guide=_lenient, llm=llm, input_key=["question"], batch_size=2,
        shuffle=False, max_concurrency=1, progress=False, store=store, search="pareto",
        objectives=objectives, max_steps=1,
    )
    (step,) = result.history
    (candidate,) = store.candidates(result.run_id, 1)
    seed = store.run(result.run_id).baseline_version_id
    if objectives == ("score",):  # as good, so never validated: the front is the seed alone
        assert step.status == "rejected" and "not above the parent's" in candidate.reason
        assert [f.version_id for f in result.front] == [seed]
        return
    assert step.status == "accepted" and "fewer app tokens per run" in candidate.reason
    (member,) = result.front  # the seed: the same scores, more tokens, so dominated
    assert member.version_id == candidate.version_id != seed and member.mean == 1.0
    usage = store.app_usage(result.run_id, "val")
    assert member.tokens == usage[member.version_id].tokens < usage[seed].tokens
    assert pick(points_from_store(store, result.run_id), "cheapest").key == member.version_id
    assert store.run(result.run_id).config["objectives"] == ["score", "tokens"]


def test_objectives_are_checked():
    assert TrainConfig(objectives="score, tokens").objectives == ("score", "tokens")
    assert TrainConfig(objectives=["score"]).objectives == ("score",)
    for bad in (("tokens",), ("score", "latency"), (), ("score", "score"), 3):
        with pytest.raises(ValueError, match="objectives must be"):
            TrainConfig(objectives=bad)


# -- parallel proposals --------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["threads", "asyncio"])
def test_the_children_of_a_step_are_proposed_concurrently_each_from_its_own_parent(scripted_llm, executor):
    import threading
    import time

    lock, state = threading.Lock(), {"now": 0, "most": 0, "seen": []}

    def reply(body):
        prefix = variables(body).split("prefix=", 1)[1].split("\n", 1)[0].strip()
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["seen"].append(prefix)
            first_a = state["seen"].count("A") == 1 and prefix == "A"
        time.sleep(0.3)  # long enough for a sibling request to arrive meanwhile
        with lock:
            state["now"] -= 1
        if prefix == "Reply":
            return suggest(prefix="A")
        if first_a:
            return suggest(prefix="B")
        # each child asks for the other parent's prefix: new only against its own parent
        return suggest(prefix="B" if prefix == "A" else "A", suffix="?")

    scripted_llm.set_default(reply)
    train = wanting("A", "A", "B", "B", *["x"] * 4)
    val = wanting("A", "B", "B", prefix="v")
    _, store, result = two_part(
        scripted_llm, train, val, proposals_per_step=2, max_steps=3, executor=executor,
    )
    assert state["seen"][:2] == ["Reply", "A"] and sorted(state["seen"][2:]) == ["A", "B"]
    assert state["most"] == 2  # step 3's two requests were in flight together
    third = store.candidates(result.run_id, 3)
    assert sorted(tuple(sorted(c.values.items())) for c in third) == [
        (("prefix", "A"), ("suffix", "?")), (("prefix", "B"), ("suffix", "?")),
    ]
    lineage = store.lineage(result.run_id)
    assert sorted(len(lineage[c.id][1]) for c in third) == [1, 1] and lineage[third[0].id] != lineage[third[1].id]


def test_a_budget_spent_by_one_of_a_step_s_requests_keeps_the_other_s_answer(scripted_llm):
    scripted_llm.script(suggest(prefix="A"), suggest(prefix="B"), suggest(suffix="?"))
    train = wanting("A", "A", "B", "B", *["x"] * 4)
    val = wanting("A", "B", "B", prefix="v")
    app = TwoPartApp()
    store = Store()
    result = optimize(
        app, train, val, guide=want_guide, optimizer=OptoPrime(app.parameters, llm_for(scripted_llm)),
        store=store, batch_size=2, shuffle=False, max_concurrency=1, progress=False, search="pareto",
        proposals_per_step=2, budget=Budget(max_calls=3),
    )
    assert result.status == "budget_exhausted"
    third = store.candidates(result.run_id, 3)
    assert [c.values for c in third] == [{"suffix": "?"}]  # answered, stored, asked no more on resume
