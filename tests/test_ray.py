"""Rollouts on a real local Ray cluster (2 CPUs on 127.0.0.1, started once per session): the
same stored run as threads, apps that cannot be pickled, and a worker killed mid-run whose
examples run again elsewhere, counted once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import apply_updates
from opto_adapters.train import AppError, Store, optimize
from opto_adapters.train.ray_executor import RayExecutor

from .ray_apps import MARK, PROMPT, build_chain, guide, python_app
from .test_executors import stored_outcome
from .test_train_frameworks import TRAIN, VAL, optimizer_llm
from .train_apps import data, llm_for, make_app, reply
from .train_apps import guide as marker_guide

ray = pytest.importorskip("ray")

ROOT = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local cluster of 2 CPUs; its workers import this checkout (and these tests)."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
        _node_ip_address="127.0.0.1", runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


def inputs(n, prefix="q", die=None, at=None):
    return [{"input": {"q": f"{prefix}{i}", **({"die": die} if i == at else {})}} for i in range(n)]


def test_ray_stores_the_same_langchain_run_as_threads(ray_cluster, scripted_llm):
    outcomes = []
    for executor in ("threads", RayExecutor(app_factory=build_chain)):
        chain = build_chain()
        scripted_llm.clear()
        llm = optimizer_llm(scripted_llm, {"prompt.system": f"You are helpful. {MARK}"})
        store = Store()
        result = optimize(chain, TRAIN * 3, VAL, guide=guide, llm=llm, input_key=["question"],
                          batch_size=2, epochs=2, progress=False, store=store, executor=executor)
        assert result.status == "completed"
        outcomes.append((stored_outcome(store, result.run_id), [s.status for s in result.history]))
        if not isinstance(executor, str):
            assert store.run(result.run_id).config["executor"] == "ray"
            # the driver ran nothing: its model saw no call, the workers' copies did them all
            assert chain.steps[1].calls == []
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0][0]["prompt.system"] == f"You are helpful. {MARK}"


def test_ray_runs_a_python_app_shipped_by_reference(ray_cluster, scripted_llm):
    outcomes = []
    for executor in ("threads", "ray"):
        apply_updates({PROMPT: "Reply {q}"})
        scripted_llm.clear()
        scripted_llm.script(json.dumps(reply("ANSWER {q}")), json.dumps(reply("ANSWER {q}!")))
        store = Store()
        result = optimize(python_app, inputs(4), inputs(3, "v"), guide=marker_guide, store=store,
                          optimizer=OptoPrime([PROMPT], llm_for(scripted_llm)), batch_size=2,
                          progress=False, executor=executor, max_concurrency=4)
        assert result.status == "completed"
        outcomes.append(stored_outcome(store, result.run_id))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == {"prompt": "ANSWER {q}!"}
    assert PROMPT.value == "ANSWER {q}!"  # the best values are written back on the driver


def test_an_app_that_cannot_be_pickled_is_refused_with_what_to_do(ray_cluster, scripted_llm):
    app = make_app()  # holds a threading.Lock
    with pytest.raises(AppError, match="app_factory"):
        optimize(app, data(2), guide=marker_guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
                 progress=False, executor="ray")


def test_a_killed_worker_s_examples_run_again_and_count_once(ray_cluster, scripted_llm, tmp_path):
    apply_updates({PROMPT: "Reply {q}"})
    die = str(tmp_path / "died")
    scripted_llm.set_default(json.dumps(reply("ANSWER {q}!")))
    store = Store()
    result = optimize(python_app, inputs(6, die=die, at=3), inputs(2, "v"), guide=marker_guide,
                      store=store, optimizer=OptoPrime([PROMPT], llm_for(scripted_llm)), batch_size=3,
                      progress=False, executor="ray", max_concurrency=4)
    assert os.path.exists(die)  # a worker did die, running train example 3
    assert result.status == "completed" and result.best.val == 1.0
    rows = store.evaluations(result.run_id)
    keys = [(e.version_id, e.split, e.index, e.repeat) for e in rows]
    assert len(keys) == len(set(keys))  # nothing counted twice
    baseline = store.run(result.run_id).baseline_version_id
    done = {(e.split, e.index) for e in rows if e.version_id == baseline}
    assert done == {("train", i) for i in range(6)} | {("val", i) for i in range(2)}  # nothing lost
    (killed,) = [e for e in rows if e.version_id == baseline and (e.split, e.index) == ("train", 3)]
    assert killed.attempts == 2 and killed.score == 0.0
    assert all(e.attempts in (1, 2) for e in rows)


LOCKED_RECIPE = '''
import threading

from opto_adapters import Feedback, bundle, node

prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt", description="The reply template.")


@bundle()
def respond(template, q):
    """Fill the question into the template."""
    return template.format(q=q)


class App:
    """Holds a lock, so it cannot be pickled: Ray workers rebuild it from this file."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, q):
        with self.lock:
            return respond(prompt, q["text"])


def build_app():
    return App()


train = [{"text": f"q{i}"} for i in range(4)]
val = [{"text": "v0"}, {"text": "v1"}]
SETTINGS = {"batch_size": 2, "max_concurrency": 2}


def guide(example, output):
    score = ("ANSWER" in output) / 2 + ("!" in output) / 2
    return Feedback(score=score, text="needs ANSWER and !")
'''


def test_the_cli_runs_a_recipe_on_ray_workers_that_rebuild_its_app(ray_cluster, scripted_llm, tmp_path, monkeypatch, capsys):
    from opto_adapters import cli

    from .train_apps import improve_then_worsen

    recipe = tmp_path / "locked_recipe.py"
    recipe.write_text(LOCKED_RECIPE)
    monkeypatch.setenv("OPENAI_BASE_URL", scripted_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPTO_MODEL", "m")
    scripted_llm.set_default(improve_then_worsen)
    store = tmp_path / "runs.sqlite"
    code = cli.main(["optimize", str(recipe), "--store", str(store), "--no-progress", "--executor", "ray"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "run 1: completed" in out and "best      1.000  1.000" in out
    with Store(str(store)) as s:
        assert s.run(1).config["executor"] == "ray"


def test_ctrl_c_with_ray_stores_an_interrupted_run_that_resumes(ray_cluster, scripted_llm, tmp_path):
    from .test_executors import interrupted_then_resumed

    apply_updates({PROMPT: "Reply {q}"})

    def app(q):  # the shipped app: ray_apps' python_app, on plain inputs
        return python_app({"q": q})

    before, after = interrupted_then_resumed(app, PROMPT, scripted_llm, str(tmp_path / "r.sqlite"), "ray")
    assert len(before) >= 5 and set(before) <= set(after)
    assert len(after) == len(set(after))
