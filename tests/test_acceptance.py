"""Noise-aware acceptance: the paired bootstrap, its settings, and the trainer using it."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

from opto_adapters.optimizers import OptoPrime
from opto_adapters.train import Store, TrainConfig, optimize
from opto_adapters.train.acceptance import accept, paired_bootstrap
from tests.train_apps import MARKERS, data, guide, llm_for, make_app, reply

# -- the bootstrap ------------------------------------------------------------------------------


def test_identical_scores_give_a_zero_width_interval_and_are_accepted():
    d = accept([0.5, 1.0, 0.0], [0.5, 1.0, 0.0], seed=1)
    assert (d.interval.low, d.interval.high, d.interval.mean_diff) == (0.0, 0.0, 0.0)
    assert d.accepted and "lower bound" in d.reason


def test_a_clearly_better_child_has_a_positive_lower_bound():
    child = [0.9, 0.8, 1.0, 0.7, 0.9, 0.8]
    incumbent = [0.1, 0.2, 0.0, 0.3, 0.1, 0.2]
    iv = paired_bootstrap(child, incumbent, seed=3)
    assert 0 < iv.low <= iv.mean_diff <= iv.high and iv.mean_diff == pytest.approx(0.7)


def test_pairing_removes_the_examples_difficulty():
    """Each example's difficulty differs a lot, the child is +0.1 on every one: paired, the
    interval is tight and positive (unpaired it would straddle 0)."""
    incumbent = [0.0, 0.3, 0.6, 0.85]
    child = [x + 0.1 for x in incumbent]
    iv = paired_bootstrap(child, incumbent, seed=0)
    assert iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)


def test_repeats_spread_widens_the_interval_even_on_one_example():
    """One example, its repeats disagree: the noise is in the interval (a plain paired
    bootstrap over one example would give zero width and accept any lucky draw)."""
    lucky = paired_bootstrap([[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]], seed=5)
    assert lucky.mean_diff == pytest.approx(1 / 3) and lucky.low < 0 < lucky.high
    assert not accept([[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]], seed=5).accepted


def test_same_seed_same_interval_other_seed_other_draws():
    rng = random.Random(7)
    child = [[rng.random() for _ in range(3)] for _ in range(10)]
    inc = [[rng.random() for _ in range(3)] for _ in range(10)]
    assert paired_bootstrap(child, inc, seed=11) == paired_bootstrap(child, inc, seed=11)
    assert paired_bootstrap(child, inc, seed=11) != paired_bootstrap(child, inc, seed=12)


def test_tolerance_lets_a_slightly_worse_child_pass():
    child, inc = [0.45, 0.5, 0.55], [0.5, 0.5, 0.5]
    assert not accept([0.4, 0.5, 0.5], inc, seed=0).accepted
    assert accept(child, inc, tolerance=0.1, seed=0).accepted


def test_a_higher_confidence_gives_a_wider_interval():
    rng = random.Random(2)
    child = [rng.random() for _ in range(30)]
    inc = [rng.random() for _ in range(30)]
    narrow = paired_bootstrap(child, inc, confidence=0.5, seed=1)
    wide = paired_bootstrap(child, inc, confidence=0.99, seed=1)
    assert wide.low < narrow.low and wide.high > narrow.high


def test_a_no_better_candidate_rarely_passes_and_a_better_one_often_does():
    """Simulated gate sets of 10 examples x 3 repeats (each example its own difficulty, noise sd
    0.2): the interval holds near its one-sided 2.5% level, where the mean rule passes half."""
    rng = random.Random(0)

    def gate(shift):
        base = [rng.random() for _ in range(10)]
        return ([[b + shift + rng.gauss(0, 0.2) for _ in range(3)] for b in base],
                [[b + rng.gauss(0, 0.2) for _ in range(3)] for b in base])

    def rate(shift, rule):
        hits = 0
        for _ in range(200):
            c, i = gate(shift)
            if rule == "mean":
                hits += sum(map(sum, c)) >= sum(map(sum, i))
            else:
                hits += accept(c, i, seed=rng.randrange(1 << 30), resamples=500).accepted
        return hits / 200

    assert rate(0.0, "bootstrap") <= 0.07 and rate(0.0, "mean") >= 0.35
    assert rate(0.2, "bootstrap") >= 0.8


@pytest.mark.parametrize(
    ("child", "incumbent", "kw", "message"),
    [
        ([1.0], [1.0, 0.0], {}, "same examples"),
        ([], [], {}, "empty"),
        ([[]], [[1.0]], {}, "no score"),
        ([float("nan")], [1.0], {}, "finite"),
        ([1.0], [1.0], {"confidence": 1.0}, "confidence"),
        ([1.0], [1.0], {"resamples": 0}, "resamples"),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong(child, incumbent, kw, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(child, incumbent, **kw)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"repeats": 0}, "repeats must be a positive int"),
        ({"acceptance": "median"}, "acceptance must be one of"),
        ({"tolerance": -0.1}, "tolerance must be a finite number >= 0"),
        ({"confidence": 95}, "confidence must be a number between 0 and 1"),
        ({"guard_copies": 2.0}, "guard_copies must be True"),
    ],
)
def test_settings_are_validated(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_the_rule_in_force():
    assert TrainConfig().acceptance_rule == "mean"
    assert TrainConfig(repeats=3).acceptance_rule == "mean"  # repeats alone average; the interval is asked for
    assert TrainConfig(acceptance="bootstrap").acceptance_rule == "bootstrap"
    assert TrainConfig(repeats=3, acceptance="mean").acceptance_rule == "mean"


# -- the trainer ----------------------------------------------------------------------------------


def noisy_guide(seed: int):
    """Half the score is the output's quality (its markers), half seeded noise."""
    rng = random.Random(seed)

    def score(example, output):
        quality = sum(m in output for m in MARKERS) / len(MARKERS)
        return 0.5 * quality + 0.5 * rng.random()

    return score


def one_step(server, proposal: str, seed: int, store=None, **kw):
    server.set_default(json.dumps(reply(proposal)))
    app = make_app("Reply {q}")
    result = optimize(
        app, data(2), data(3, "v"), guide=kw.pop("guide", None) or noisy_guide(seed),
        optimizer=OptoPrime([app.prompt], llm_for(server)), epochs=1, batch_size=2,
        max_concurrency=1, store=store, progress=False, seed=seed, **kw,
    )
    return app, result


def test_a_lucky_candidate_is_rejected_with_repeats_and_accepted_without(scripted_llm):
    """"Reply {q}." is no better than "Reply {q}": only the noise can make it look better."""
    seeds = range(12)
    without = [one_step(scripted_llm, "Reply {q}.", s)[1].history[0].status for s in seeds]
    with_repeats = [one_step(scripted_llm, "Reply {q}.", s, repeats=5, acceptance="bootstrap")[1].history[0].status for s in seeds]
    assert without.count("accepted") >= 4  # about half of them look better by luck
    assert with_repeats.count("accepted") <= 1  # about 1 in 40 at 95% (one-sided)
    assert with_repeats.count("accepted") < without.count("accepted")


def test_a_really_better_candidate_is_still_accepted_with_repeats(scripted_llm):
    for seed in range(6):
        app, result = one_step(scripted_llm, "ANSWER {q}", seed, repeats=5, acceptance="bootstrap")
        assert result.history[0].status == "accepted", result.history[0].reason
        assert app.prompt.value == "ANSWER {q}"


def test_the_interval_is_stored_and_in_the_reason(scripted_llm):
    store = Store()
    _, result = one_step(scripted_llm, "ANSWER {q}", 0, store=store, repeats=4, acceptance="bootstrap")
    (cand,) = store.candidates(result.run_id)
    assert cand.ci_low is not None and cand.ci_high is not None and 0 < cand.ci_low <= cand.ci_high
    assert "95% CI" in cand.reason and f"{cand.ci_low:+.4g}" in cand.reason
    assert "95% CI" in result.history[0].reason


def test_repeats_are_distinct_rows_on_the_gate_set_only(scripted_llm):
    store = Store()
    _, result = one_step(scripted_llm, "ANSWER {q}", 0, store=store, repeats=3)
    val = store.evaluations(result.run_id, split="val")
    per_version: dict[tuple[int, int], list[int]] = {}
    for e in val:
        per_version.setdefault((e.version_id, e.index), []).append(e.repeat)
    assert len(per_version) == 6  # two versions x three val examples
    assert all(sorted(reps) == [0, 1, 2] for reps in per_version.values())
    assert all(e.repeat == 0 for e in store.evaluations(result.run_id, split="train"))
    # the noise really differs between repeats (they are runs, not copies)
    assert len({e.score for e in val}) == len(val)


def test_bootstrap_with_one_repeat_turns_the_interval_on(scripted_llm):
    store = Store()
    _, result = one_step(scripted_llm, "ANSWER {q}", 0, store=store, acceptance="bootstrap", guide=guide)
    (cand,) = store.candidates(result.run_id)
    assert cand.ci_low == cand.ci_high == pytest.approx(0.5)  # every example +0.5, no noise
    assert all(e.repeat == 0 for e in store.evaluations(result.run_id))


def test_without_val_the_minibatch_gate_is_repeated(scripted_llm):
    scripted_llm.set_default(json.dumps(reply("Reply {q}.")))
    app = make_app("Reply {q}")
    store = Store()
    result = optimize(
        app, data(4), guide=noisy_guide(1), optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
        epochs=1, batch_size=4, max_concurrency=1, store=store, progress=False, repeats=3, acceptance="bootstrap", max_steps=1,
    )
    step = result.history[0]
    assert "CI" in step.reason
    gate = [e for e in store.evaluations(result.run_id, split="train") if e.phase in ("step", "candidate")]
    assert sorted({e.repeat for e in gate}) == [0, 1, 2]


def test_resume_with_repeats_evaluates_nothing_twice(scripted_llm, tmp_path):
    def run(store, guide_fn, **kw):
        app = make_app("Reply {q}")
        scripted_llm.set_default(json.dumps(reply("ANSWER {q}")))
        result = optimize(
            app, data(2), data(3, "v"), guide=guide_fn,
            optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)), epochs=2, batch_size=2,
            max_concurrency=1, store=store, progress=False, repeats=3, **kw,
        )
        return app, result

    full_app, full = run(Store(), guide)
    path = str(tmp_path / "runs.sqlite")
    seen = []

    def interrupting(example, output):
        seen.append(example)
        if len(seen) == 2 + 9 + 5:  # baseline train 2 + val 3x3, then mid-candidate
            raise KeyboardInterrupt
        return guide(example, output)

    first, stopped = run(path, interrupting)
    assert stopped.status == "interrupted"
    second, resumed = run(path, guide, resume=True)
    assert resumed.status == "completed"
    assert len(first.calls) + len(second.calls) == len(full_app.calls) + 1  # +1: the interrupted run
    assert [s.status for s in resumed.history] == [s.status for s in full.history]
    with Store(path, readonly=True) as store:
        keys = [(e.version_id, e.split, e.index, e.repeat) for e in store.evaluations(resumed.run_id)]
        assert len(keys) == len(set(keys)) == len(first.calls) + len(second.calls) - 1
        assert store.check() == []


def test_an_older_store_is_migrated_and_keeps_its_evaluations(tmp_path):
    path = tmp_path / "old.sqlite"
    store = Store(str(path))
    run_id = store.create_run({})
    v = store.version(run_id, {"p": "x"})
    eid = store.add_evaluation(run_id, v, "val", 0, phase="val", score=0.5, graph={"nodes": [], "edges": []})
    store.close()
    conn = sqlite3.connect(path)  # back to the first layout of schema version 1
    conn.executescript(
        "BEGIN; CREATE TABLE ev1 (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, version_id INTEGER NOT NULL, "
        "split TEXT NOT NULL, idx INTEGER NOT NULL, phase TEXT NOT NULL, step INTEGER, output TEXT, error TEXT, "
        "score REAL, feedback TEXT NOT NULL DEFAULT '', duration REAL, created_at REAL NOT NULL, "
        "UNIQUE (run_id, version_id, split, idx)); "
        "INSERT INTO ev1 SELECT id, run_id, version_id, split, idx, phase, step, output, error, score, feedback, "
        "duration, created_at FROM evaluations; DROP TABLE evaluations; ALTER TABLE ev1 RENAME TO evaluations; "
        "ALTER TABLE candidates DROP COLUMN ci_low; ALTER TABLE candidates DROP COLUMN ci_high; "
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'; COMMIT;"
    )
    conn.close()
    with Store(str(path), readonly=True) as old:  # read-only: read as it is, never changed
        (e,) = old.evaluations(run_id)
        assert (e.id, e.repeat, e.score, e.prompt_tokens) == (eid, 0, 0.5, None)
    with Store(str(path)) as migrated:
        (e,) = migrated.evaluations(run_id)
        assert (e.id, e.repeat, e.score) == (eid, 0, 0.5) and migrated.graph(eid) is not None
        migrated.add_evaluation(run_id, v, "val", 0, phase="val", score=1.0, repeat=1)
        assert [x.repeat for x in migrated.evaluations(run_id)] == [0, 1]
        assert migrated.check() == []
    conn = sqlite3.connect(path)  # marked the current version: an older opto_adapters refuses to write to it
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
    conn.close()


def test_the_report_and_show_give_the_interval(scripted_llm, tmp_path, capsys):
    from opto_adapters import cli
    from opto_adapters.train.report import render_report

    path = str(tmp_path / "runs.sqlite")
    _, result = one_step(scripted_llm, "Reply {q}.", 0, store=path, repeats=5, acceptance="bootstrap")
    with Store(path, readonly=True) as store:
        (cand,) = store.candidates(result.run_id)
        html = render_report(store, result.run_id)
    interval = f"CI [{cand.ci_low:+.3f}, {cand.ci_high:+.3f}]"
    assert cand.status == "rejected" and html.count(interval) == 2  # steps table, candidate
    assert "bootstrap, 5 evaluation(s) per gate example" in html
    assert cli.main(["show", path]) == 0
    assert f"[{cand.ci_low:+.3g}, {cand.ci_high:+.3g}]" in capsys.readouterr().out
    assert cli.main(["show", path, "--step", "1"]) == 0
    out = capsys.readouterr().out
    assert f"[{cand.ci_low:+.3g}, {cand.ci_high:+.3g}]" in out and "may be luck" in out


def test_the_command_line_sets_repeats_and_the_rule(scripted_llm, tmp_path, monkeypatch, capsys):
    from opto_adapters import cli
    from tests.test_cli import RECIPE
    from tests.train_apps import improve_then_worsen

    recipe = tmp_path / "toy_recipe.py"
    recipe.write_text(RECIPE)
    monkeypatch.setenv("OPENAI_BASE_URL", scripted_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    scripted_llm.set_default(improve_then_worsen)
    path = tmp_path / "runs.sqlite"
    argv = ["optimize", str(recipe), "--store", str(path), "--model", "m", "--no-progress",
            "--repeats", "2", "--acceptance", "bootstrap", "--tolerance", "0.05", "--no-copy-guard", "--max-steps", "1"]
    assert cli.main(argv) == 0, capsys.readouterr()
    with Store(str(path), readonly=True) as store:
        run = store.run()
        assert (run.config["repeats"], run.config["acceptance"], run.config["tolerance"]) == (2, "bootstrap", 0.05)
        assert run.config["guard_copies"] is None
        assert {e.repeat for e in store.evaluations(run.id, split="val")} == {0, 1}
        (cand,) = store.candidates(run.id)
        assert cand.ci_low is not None


def test_a_versions_mean_counts_each_example_once_whatever_its_repeats():
    store = Store()
    run_id = store.create_run({})
    v = store.version(run_id, {"p": "x"})
    for rep, score in enumerate((1.0, 1.0, 1.0)):  # example 0, three repeats
        store.add_evaluation(run_id, v, "val", 0, phase="val", score=score, repeat=rep)
    store.add_evaluation(run_id, v, "val", 1, phase="val", score=0.0)  # example 1, once
    assert store.mean_score(run_id, v, "val") == (0.5, 2)  # not 0.75 over 4 rows


def test_the_pareto_search_repeats_val_and_keeps_per_example_means(scripted_llm):
    from tests.test_search_pareto import suggest, two_part, wanting

    calls = {}

    def counted(example, output):  # every second evaluation of an example is 0.5 lower
        calls[example["input"], output] = calls.get((example["input"], output), 0) + 1
        ok = example["want"] in output
        return float(ok) - (0.5 if ok and calls[example["input"], output] % 2 == 0 else 0.0)

    scripted_llm.script(suggest(prefix="A"), suggest(prefix="B"))
    app, store, result = two_part(
        scripted_llm, wanting("A", "A", "B", "B"), wanting("A", "B", "B", prefix="v"), guide=counted, repeats=2,
        acceptance="mean",  # the per-example means are under test here, not the interval
    )
    by_values = {f.values["prefix"]: f for f in result.front}
    assert by_values["B"].scores == [0.0, 0.75, 0.75]  # the mean of its two repeats per example
    val = store.evaluations(result.run_id, split="val")
    assert sorted({e.repeat for e in val}) == [0, 1] and len(val) == 3 * 2 * 3  # 3 versions
    assert store.check() == []


def test_the_pareto_search_rejects_a_lucky_child_with_repeats(scripted_llm):
    """Pareto with repeats: a child that passed its minibatch by luck must still beat its
    parent on validation by the interval, or it does not join the pool."""

    def joined(seed, **kw):
        _, result = one_step(scripted_llm, "Reply {q}.", seed, store=Store(), search="pareto", **kw)
        return any(h.status == "accepted" for h in result.history)

    seeds = range(12)
    without = [joined(s) for s in seeds]
    with_repeats = [joined(s, repeats=5, acceptance="bootstrap") for s in seeds]
    assert sum(without) >= 3
    assert sum(with_repeats) <= 1 and sum(with_repeats) < sum(without)
    _, better = one_step(scripted_llm, "ANSWER {q}", 0, store=Store(), search="pareto", repeats=5, acceptance="bootstrap")
    assert any(h.status == "accepted" for h in better.history), [h.reason for h in better.history]
    assert "vs parent" in next(h.reason for h in better.history if h.status == "accepted")
