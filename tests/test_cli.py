"""The opto-adapters command: optimize a recipe against the scripted server, then inspect it."""

import json
import textwrap

import pytest

from opto_adapters import cli
from opto_adapters.testing import Reply
from opto_adapters.trace import load_parameters, node
from opto_adapters.train import RecipeError, Store
from opto_adapters.train.recipe import load_recipe
from tests.train_apps import improve_then_worsen

RECIPE = '''
from opto_adapters import Feedback, bundle, node

prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt", description="The reply template.")


@bundle()
def respond(template, q):
    """Fill the question into the template."""
    return template.format(q=q)


def build_app():
    return lambda q: respond(prompt, q["text"])


def train():
    return [{"text": f"q{i}"} for i in range(4)]


val = [{"text": "v0"}, {"text": "v1"}]
OBJECTIVE = "Replies start with ANSWER and end with an exclamation mark."
SETTINGS = {"batch_size": 2, "max_concurrency": 2}


def guide(example, output):
    score = ("ANSWER" in output) / 2 + ("!" in output) / 2
    return Feedback(score=score, text="needs ANSWER and !")
'''


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "toy_recipe.py"
    path.write_text(RECIPE)
    return path


@pytest.fixture
def stored(recipe, scripted_llm, tmp_path, monkeypatch, capsys):
    """A store holding one optimize run of the recipe (2 steps, both accepted)."""
    monkeypatch.setenv("OPENAI_BASE_URL", scripted_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPTO_MODEL", "env-model")
    scripted_llm.set_default(improve_then_worsen)
    store = tmp_path / "runs.sqlite"
    code = cli.main(["optimize", str(recipe), "--store", str(store), "--model", "flag-model", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    return store, out


def test_optimize_a_recipe(stored, scripted_llm):
    store, out = stored
    assert "optimizing" in out and "flag-model" in out
    assert "run 1: completed" in out
    assert "best      1.000  1.000" in out and "baseline  0.000  0.000" in out
    assert "2 steps, 2 accepted; 2 optimizer calls (2 answered, 0 failed)" in out
    first = scripted_llm.chat_requests[0]
    assert first.model == "flag-model"
    assert "Replies start with ANSWER and end with an exclamation mark." in first.prompt  # OBJECTIVE


def test_runs_and_show(stored, capsys):
    store, _ = stored
    assert cli.main(["runs", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "name", "status", "created", "steps", "accepted", "baseline", "best"]
    assert lines[2].split()[:3] == ["1", "toy_recipe", "completed"] and lines[2].split()[-2:] == ["0.000", "1.000"]

    assert cli.main(["show", str(store)]) == 0
    out = capsys.readouterr().out
    assert "run 1 toy_recipe: completed" in out
    assert "prompt = 'ANSWER {q}!'" in out
    assert out.count("accepted  validation score") == 2

    assert cli.main(["show", str(store), "--step", "2"]) == 0
    out = capsys.readouterr().out
    assert "step 2 (epoch 0, examples" in out and "candidate 1: accepted" in out
    assert "'ANSWER {q}'\n    -> 'ANSWER {q}!'" in out
    assert "respond = respond(...) -> ANSWER q" in out  # a traced run of the minibatch

    assert cli.main(["show", str(store), "--step", "1", "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph opto {") and '-> n2 [label="template"]' in dot

    assert cli.main(["show", str(store), "--step", "9"]) == 1
    assert "run 1 has no step 9; its steps are 1 to 2" in capsys.readouterr().err


def test_export_and_report(stored, tmp_path, capsys):
    store, _ = stored
    params = tmp_path / "params.json"
    assert cli.main(["export", str(store), "-o", str(params)]) == 0
    assert "wrote 1 best parameter value(s) of run 1" in capsys.readouterr().out
    prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt")
    load_parameters([prompt], params)
    assert prompt.value == "ANSWER {q}!"
    assert cli.main(["export", str(store), "-o", str(params), "--version", "baseline"]) == 0
    assert json.loads(params.read_text())["parameters"]["prompt"] == {"kind": "prompt", "value": "Reply {q}"}

    report = tmp_path / "report.html"
    assert cli.main(["report", str(store), "-o", str(report)]) == 0
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<ins>{q}!</ins>" in html


@pytest.mark.parametrize("command", [[], ["optimize"], ["runs"], ["show"], ["export"], ["report"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: opto-adapters")


def test_bad_input_exits_1_with_the_reason(tmp_path, capsys):
    assert cli.main(["runs", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert cli.main(["runs", str(tmp_path / "nope.sqlite")]) == 1
    assert "no store at" in capsys.readouterr().err
    not_a_store = tmp_path / "notes.sqlite"
    not_a_store.write_text("hello" * 100)
    assert cli.main(["show", str(not_a_store)]) == 1
    assert "is not an opto_adapters store or is corrupt" in capsys.readouterr().err
    assert not_a_store.read_text() == "hello" * 100

    incomplete = tmp_path / "incomplete.py"
    incomplete.write_text("val = []\n")
    assert cli.main(["optimize", str(incomplete), "--store", str(tmp_path / "s.sqlite")]) == 1
    err = capsys.readouterr().err
    assert "lacks `app` or `build_app()`, `train`, `guide`" in err
    assert not (tmp_path / "s.sqlite").exists()


def test_recipe_loader_checks_the_convention(tmp_path):
    def write(text):
        path = tmp_path / "r.py"
        path.write_text(textwrap.dedent(text))
        return path

    with pytest.raises(RecipeError, match="lacks `guide`"):
        load_recipe(write("app = print\ntrain = [1]\n"))
    with pytest.raises(RecipeError, match=r"`guide` must take two arguments"):
        load_recipe(write("app = print\ntrain = [1]\ndef guide(output): return 1\n"))
    with pytest.raises(RecipeError, match=r"`SETTINGS` has unknown option\(s\) \['epoch'\]"):
        load_recipe(write("app = print\ntrain = [1]\nguide = lambda e, o: 1\nSETTINGS = {'epoch': 3}\n"))
    with pytest.raises(RecipeError, match="raised ZeroDivisionError while loading"):
        load_recipe(write("x = 1 / 0\n"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.py")
    recipe = load_recipe(write("def build_app():\n    raise RuntimeError('no key')\ntrain = lambda: [1, 2]\nguide = lambda e, o: 1\n"))
    assert recipe.load_train() == [1, 2] and recipe.load_val() is None and recipe.objective is None
    with pytest.raises(RecipeError, match=r"build_app\(\) raised RuntimeError: no key"):
        recipe.build_app()


def test_optimize_exits_1_when_no_optimizer_call_was_answered(recipe, scripted_llm, tmp_path, monkeypatch, capsys):
    """Issue 12: an optimizer that never answered is a failure, not a completed run."""
    monkeypatch.setenv("OPENAI_BASE_URL", scripted_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPTO_MODEL", "m")
    scripted_llm.set_default(Reply.error(503, "overloaded"))
    code = cli.main(["optimize", str(recipe), "--store", str(tmp_path / "s.sqlite"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    # the first unanswered call stops the run: nothing of the step is kept, resumable
    assert "run 1: failed" in captured.out and "optimizer calls (0 answered, 1 failed)" in captured.out
    assert "gave no answer" in captured.err and "HTTP 503" in captured.err and scripted_llm.base_url in captured.err
    assert "--resume" in captured.out
    store = Store(str(tmp_path / "s.sqlite"))
    assert [s.status for s in store.steps(1)] == ["failed"]
    assert [c.status for c in store.candidates(1)] == ["failed"]
    store.close()
    # the endpoint is back: --resume asks again for exactly the failed step, then goes on
    scripted_llm.set_default(improve_then_worsen)
    code = cli.main(["optimize", str(recipe), "--store", str(tmp_path / "s.sqlite"), "--no-progress", "--resume"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "run 1: completed" in captured.out
    assert "3 optimizer calls (2 answered, 1 failed)" in captured.out
    store = Store(str(tmp_path / "s.sqlite"))
    assert [s.status for s in store.steps(1)] != [] and all(s.status in ("accepted", "rejected", "no_change") for s in store.steps(1))
    assert [(c.step, c.k, c.status) for c in store.candidates(1)][0] == (1, 0, "failed")
    assert len(store.candidates(1)) == 3
    store.close()
