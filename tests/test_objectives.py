"""Score and tokens as two objectives: the front, the pick rules, and export --pick."""

from __future__ import annotations

import json

import pytest

from opto_adapters import cli
from opto_adapters.train import Store
from opto_adapters.train.objectives import Point, front, parse_rule, pick, points_from_store

A = Point("a", 0.90, 900)  # the best score, expensive
B = Point("b", 0.895, 300)  # within 1 point of the best, three times cheaper
C = Point("c", 0.70, 100)  # the cheapest
D = Point("d", 0.60, 500)  # dominated by B and C
E = Point("e", 0.85, None)  # no tokens reported: the most expensive, dominated by A


def test_the_front_keeps_every_trade_off_and_drops_the_dominated():
    assert [p.key for p in front([D, C, A, E, B])] == ["a", "b", "c"]


def test_equal_points_are_both_kept_and_one_better_on_one_objective_wins():
    twin = Point("a2", 0.90, 900)
    assert [p.key for p in front([A, twin])] == ["a", "a2"]
    assert [p.key for p in front([A, Point("a3", 0.90, 899)])] == ["a3"]


def test_without_reported_tokens_only_the_score_decides():
    pts = [Point(1, 0.5), Point(2, 0.7), Point(3, 0.7)]
    assert [p.key for p in front(pts)] == [2, 3]


@pytest.mark.parametrize(
    ("rule", "key"),
    [("best", "a"), ("cheapest", "c"), ("cheapest-within:0.01", "b"), ("cheapest-within:0.3", "c"),
     ("cheapest-within:0", "a")],
)
def test_pick_rules(rule, key):
    assert pick([A, B, C, D, E], rule).key == key


@pytest.mark.parametrize("rule", ["fastest", "cheapest-within", "cheapest-within:-1", "best:2", "cheapest-within:x"])
def test_bad_rules_say_which_rules_exist(rule):
    with pytest.raises(ValueError, match="cheapest-within"):
        parse_rule(rule)


def test_pick_from_nothing_is_an_error():
    with pytest.raises(ValueError, match="no points"):
        pick([], "best")


def make_store(path) -> tuple[int, dict[str, int]]:
    """A run with val of 2 examples: the baseline, an expensive better version, a cheap one
    within 1 point of it, and one scored on part of val only (not comparable)."""
    store = Store(str(path))
    run_id, base = store.open_run(
        {"val_size": 2, "train_size": 1, "parameters": [{"name": "p", "kind": "prompt"}]},
        {"train": [{"input": "t"}], "val": [{"input": "a"}, {"input": "b"}]}, {"p": "v0"},
    )
    versions = {"baseline": base}
    for name, scores, tokens in (
        ("baseline", (0.5, 0.5), 50), ("rich", (1.0, 0.9), 400), ("lean", (1.0, 0.89), 120), ("partial", (1.0,), 10),
    ):
        v = versions.get(name) or store.version(run_id, {"p": name}, parent_id=base)
        versions[name] = v
        for i, score in enumerate(scores):
            store.add_evaluation(run_id, v, "val", i, phase="candidate", score=score,
                                 usage={"model_calls": 1, "prompt_tokens": tokens - 10, "completion_tokens": 10, "latency": 0.1})
    store.update_run(run_id, best_version_id=versions["rich"], current_version_id=versions["rich"])
    store.close()
    return run_id, versions


def test_points_from_a_store_are_the_versions_scored_on_all_of_val(tmp_path):
    run_id, v = make_store(tmp_path / "runs.sqlite")
    with Store(str(tmp_path / "runs.sqlite"), readonly=True) as store:
        points = {p.key: p for p in points_from_store(store, run_id)}
    assert set(points) == {v["baseline"], v["rich"], v["lean"]}  # "partial" saw one example of two
    assert points[v["rich"]].score == pytest.approx(0.95) and points[v["rich"]].tokens == 400
    assert [p.key for p in front(points.values())] == [v["rich"], v["lean"], v["baseline"]]


def test_export_pick_writes_the_chosen_values(tmp_path, capsys):
    path = tmp_path / "runs.sqlite"
    make_store(path)
    out = tmp_path / "params.json"
    assert cli.main(["export", str(path), "-o", str(out), "--pick", "cheapest-within:0.01"]) == 0
    assert json.loads(out.read_text())["parameters"]["p"]["value"] == "lean"
    assert "120.0 app tokens per evaluation" in capsys.readouterr().out
    assert cli.main(["export", str(path), "-o", str(out), "--pick", "best"]) == 0
    assert json.loads(out.read_text())["parameters"]["p"]["value"] == "rich"
    assert cli.main(["export", str(path), "-o", str(out), "--pick", "cheapest"]) == 0
    assert json.loads(out.read_text())["parameters"]["p"]["value"] == "v0"
    assert cli.main(["export", str(path), "-o", str(out), "--pick", "fastest"]) == 1
    assert "unknown pick rule" in capsys.readouterr().err


def test_the_report_draws_the_front(tmp_path):
    from opto_adapters.train.report import render_report

    path = tmp_path / "runs.sqlite"
    run_id, v = make_store(path)
    with Store(str(path)) as store:
        bloat = store.version(run_id, {"p": "bloat"}, parent_id=v["baseline"])
        for i in range(2):  # worse than "rich" and dearer: dominated
            store.add_evaluation(run_id, bloat, "val", i, phase="candidate", score=0.6,
                                 usage={"model_calls": 1, "prompt_tokens": 490, "completion_tokens": 10})
        html = render_report(store, run_id)
    assert "Score and cost" in html and "id='app-usage'" in html
    assert html.count('<circle class="front"') == 3 and html.count('<circle class="dominated"') == 1
    assert "score 0.600, 500.0 tokens" in html


def test_a_report_without_app_usage_has_no_usage_section():
    from opto_adapters.train.report import front_svg, render_report

    store = Store()
    run_id, _ = store.open_run({"val_size": 0, "train_size": 1}, {"train": [{"input": "t"}]}, {"p": "v"})
    assert "App model usage" not in render_report(store, run_id)
    assert "reported no tokens" in front_svg([Point(1, 0.5)])
