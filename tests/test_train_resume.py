"""Stopping (Ctrl-C, a spent budget) keeps everything; resuming re-evaluates nothing stored."""

import sys

import pytest

from opto_adapters.llm import Budget
from opto_adapters.optimizers import OptoPrime
from opto_adapters.train import Store, optimize
from tests.train_apps import (
    data,
    guide,
    improve_then_worsen,
    llm_for,
    make_app,
    reply,
    section,
    user_prompts,
)

TRAIN, VAL = data(6), data(3, "v")


def train(app, server, store, **kw):
    kw.setdefault("budget", None)
    return optimize(
        app, TRAIN, VAL, guide=kw.pop("guide", guide),
        optimizer=OptoPrime([app.prompt], llm_for(server, budget=kw.pop("budget"))),
        epochs=2, batch_size=2, max_concurrency=1, store=store, progress=False, **kw,
    )


def reference(server):
    """An uninterrupted run: (app calls, optimizer calls, history, final value)."""
    app = make_app("Reply {q}")
    server.set_default(improve_then_worsen)
    before = len(server.prompts())
    result = train(app, server, Store())
    calls = len(server.prompts()) - before
    return len(app.calls), calls, [s.status for s in result.history], app.prompt.value, result


def test_ctrl_c_mid_step_then_resume_evaluates_only_what_was_not_stored(scripted_llm, tmp_path):
    full_calls, full_llm, full_history, full_value, full = reference(scripted_llm)
    path = str(tmp_path / "runs.sqlite")
    seen = []

    def interrupting_guide(example, output):
        seen.append(example)
        if len(seen) == 12:  # baseline 6 + 3, then the first candidate's third val example
            raise KeyboardInterrupt
        return guide(example, output)

    first = make_app("Reply {q}")
    llm_before = len(scripted_llm.prompts())
    stopped = train(first, scripted_llm, path, guide=interrupting_guide)
    assert stopped.status == "interrupted" and "resume=True" in stopped.message
    assert first.prompt.value == "Reply {q}"  # the candidate being scored was reverted
    with Store(path, readonly=True) as store:
        assert len(store.evaluations(stopped.run_id)) == 11
        (pending,) = store.candidates(stopped.run_id, 1)
        assert pending.values == {"prompt": "ANSWER {q}"}

    second = make_app("Reply {q}")  # a new process: the app starts from its own defaults
    resumed = train(second, scripted_llm, path, resume=True)
    llm_calls = len(scripted_llm.prompts()) - llm_before
    assert resumed.run_id == stopped.run_id and resumed.status == "completed"
    assert len(first.calls) + len(second.calls) == full_calls + 1  # +1: the interrupted one
    assert llm_calls == full_llm  # the stored proposal was reused, not asked again
    assert [s.status for s in resumed.history] == full_history
    assert second.prompt.value == full_value == "ANSWER {q}!"
    assert (resumed.baseline, resumed.best, resumed.final) == (full.baseline, full.best, full.final)


def test_a_spent_budget_then_resume_with_a_new_one(scripted_llm, tmp_path):
    full_calls, full_llm, full_history, full_value, _ = reference(scripted_llm)
    path = str(tmp_path / "runs.sqlite")
    first = make_app("Reply {q}")
    stopped = train(first, scripted_llm, path, budget=Budget(max_calls=2))
    assert stopped.status == "budget_exhausted" and [s.status for s in stopped.history][:2] == ["accepted", "accepted"]
    assert first.prompt.value == "ANSWER {q}!"  # the best so far is written back
    second = make_app("Reply {q}")
    resumed = train(second, scripted_llm, path, resume=True, budget=Budget(max_calls=10))
    assert [s.status for s in resumed.history] == full_history
    assert len(first.calls) + len(second.calls) == full_calls
    assert resumed.usage["optimizer_calls"] == full_llm


def test_resuming_a_finished_run_runs_nothing_and_restores_the_best_values(scripted_llm, tmp_path):
    path = str(tmp_path / "runs.sqlite")
    scripted_llm.set_default(improve_then_worsen)
    done = train(make_app("Reply {q}"), scripted_llm, path)
    requests = len(scripted_llm.prompts())
    fresh = make_app("Reply {q}")
    again = train(fresh, scripted_llm, path, resume=True)
    assert fresh.calls == [] and len(scripted_llm.prompts()) == requests
    assert fresh.prompt.value == "ANSWER {q}!"
    assert (again.run_id, again.best, again.history) == (done.run_id, done.best, done.history)


def test_rejections_of_the_stopped_run_are_in_the_resumed_optimizer_memory(scripted_llm, tmp_path):
    path = str(tmp_path / "runs.sqlite")
    scripted_llm.script(reply("Reply {q}?"), reply("ANSWER {q}!"))
    stopped = train(make_app("ANSWER {q}"), scripted_llm, path, budget=Budget(max_calls=1))
    assert [s.status for s in stopped.history] == ["rejected", "started"]
    train(make_app("ANSWER {q}"), scripted_llm, path, resume=True, max_steps=2)
    memory = section(user_prompts(scripted_llm)[1], "Memory")
    assert "prompt=Reply {q}?" in memory and "REJECTED: validation score 0 is worse" in memory


def test_resume_on_an_empty_store_starts_a_new_run(scripted_llm, tmp_path, caplog):
    scripted_llm.set_default(improve_then_worsen)
    result = train(make_app("Reply {q}"), scripted_llm, str(tmp_path / "new.sqlite"), resume=True, max_steps=1)
    assert result.run_id == 1 and "nothing to resume" in caplog.text


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to oneself is POSIX")
def test_a_ctrl_c_signal_while_workers_run(scripted_llm, tmp_path):
    """Like a real Ctrl-C: KeyboardInterrupt lands in the main thread while it waits on workers."""
    import os
    import signal

    path = str(tmp_path / "runs.sqlite")
    scripted_llm.set_default(improve_then_worsen)
    app = make_app("Reply {q}")
    respond = app.respond.fn

    def interrupting(template, q):
        if len(app.calls) == 12:  # scoring the first candidate, after the baseline's 6 + 3
            os.kill(os.getpid(), signal.SIGINT)
        return respond(template, q)

    app.respond.fn = interrupting
    stopped = optimize(
        app, TRAIN, VAL, guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
        batch_size=2, max_concurrency=4, store=path, progress=False,
    )
    assert stopped.status == "interrupted"
    with Store(path, readonly=True) as store:
        kept = len(store.evaluations(stopped.run_id))
    assert 9 <= kept <= 12  # the baseline is stored; what was in flight may be dropped
    again = make_app("Reply {q}")
    resumed = optimize(
        again, TRAIN, VAL, guide=guide, optimizer=OptoPrime([again.prompt], llm_for(scripted_llm)),
        batch_size=2, max_concurrency=4, store=path, progress=False, resume=True,
    )
    assert resumed.status == "completed" and again.prompt.value == "ANSWER {q}!"
    with Store(path, readonly=True) as store:
        assert len(store.evaluations(resumed.run_id)) == kept + len(again.calls)
