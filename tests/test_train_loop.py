"""The training loop: gating on validation, reverting, memory of rejections, candidates,
exceptions as feedback, concurrency, evaluation reuse, budgets and limits."""

import json
import subprocess
import sys
import time

from opto_adapters.llm import Budget
from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import Feedback
from opto_adapters.train import Store, Trainer, optimize
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


def opt(app, server, **kw):
    return OptoPrime([app.prompt], llm_for(server), **kw)


def test_an_improving_candidate_is_kept_and_written_back(scripted_llm):
    app = make_app("Reply {q}")
    scripted_llm.script(reply("ANSWER {q}"), reply("ANSWER {q}!"))
    result = optimize(
        app, data(4), data(3, "v"), guide=guide, optimizer=opt(app, scripted_llm),
        batch_size=2, progress=False,
    )
    assert result.status == "completed"
    assert [s.status for s in result.history] == ["accepted", "accepted"]
    assert [s.candidate_scores for s in result.history] == [[0.5], [1.0]]
    assert result.baseline.val == 0.0 and result.baseline.train == 0.0
    assert result.best.val == 1.0 and result.best.train == 1.0
    assert result.best_values == {"prompt": "ANSWER {q}!"}
    assert app.prompt.value == "ANSWER {q}!"
    assert app("x").value == "ANSWER x!"  # the live app uses the written-back value
    first = scripted_llm.prompts()[0]
    assert "(prompt) prompt=Reply {q}" in first
    assert "missing ANSWER, !" in first


def test_a_worse_candidate_is_rejected_reverted_and_shown_to_the_optimizer(scripted_llm):
    app = make_app("ANSWER {q}")
    scripted_llm.script(reply("Reply {q}", "drop the marker"), reply("ANSWER {q}!"))
    store = Store()
    result = optimize(
        app, data(4), data(3, "v"), guide=guide, optimizer=opt(app, scripted_llm),
        batch_size=2, store=store, progress=False,
    )
    assert [s.status for s in result.history] == ["rejected", "accepted"]
    rejected = store.candidates(result.run_id, 1)[0]
    assert rejected.status == "rejected" and rejected.values == {"prompt": "Reply {q}"}
    assert "0 is worse than the current values' 0.5" in rejected.reason
    # the rejected version was scored on val, then the current values came back
    assert store.mean_score(result.run_id, rejected.version_id, "val") == (0.0, 3)
    second = user_prompts(scripted_llm)[1]
    assert "prompt=ANSWER {q}" in section(second, "Variables")  # step 2 ran with the reverted value
    memory = section(second, "Memory")
    assert "prompt=Reply {q}" in memory and "REJECTED" in memory
    assert "val example 0 (score 0.5 -> 0: missing ANSWER, !)" in memory
    assert app.prompt.value == "ANSWER {q}!"


def test_without_val_the_minibatch_is_the_gate(scripted_llm):
    app = make_app("ANSWER {q}")
    scripted_llm.script(reply("Reply {q}"), reply("ANSWER {q}!"))
    result = optimize(app, data(4), guide=guide, optimizer=opt(app, scripted_llm), batch_size=2, progress=False)
    assert [s.status for s in result.history] == ["rejected", "accepted"]
    assert all(s.gate_score == s.train_score for s in result.history)
    assert result.history[0].candidate_scores == [0.0]
    assert result.best.val is None and result.best.train == 1.0 and result.baseline.train == 0.5


def test_several_candidates_keep_the_best(scripted_llm):
    app = make_app("Reply {q}")
    scripted_llm.script(reply("Reply {q}?"), reply("ANSWER {q}!"), reply("ANSWER {q}"))
    store = Store()
    result = optimize(
        app, data(2), data(2, "v"), guide=guide, optimizer=opt(app, scripted_llm),
        batch_size=2, n_candidates=3, store=store, progress=False,
    )
    # the three requests are sent at once: which candidate got which reply is the server's order
    cands = {c.values["prompt"]: c for c in store.candidates(result.run_id, 1)}
    assert {v: (c.score, c.status) for v, c in cands.items()} == {
        "Reply {q}?": (0.0, "rejected"), "ANSWER {q}!": (1.0, "accepted"), "ANSWER {q}": (0.5, "rejected"),
    }
    assert "below the accepted candidate's 1" in cands["ANSWER {q}"].reason
    assert len(scripted_llm.prompts()) == 3
    assert app.prompt.value == "ANSWER {q}!"


def test_app_exceptions_become_feedback_on_the_exception_node(scripted_llm):
    app = make_app("ANSWER {q}", fail_on=frozenset({"q1"}))
    scripted_llm.script(reply("ANSWER {q}!"))
    store = Store()
    result = optimize(app, data(2), guide=guide, optimizer=opt(app, scripted_llm), batch_size=2, store=store, progress=False)
    failed = [e for e in store.evaluations(result.run_id) if e.error]
    assert {(e.index, e.score, e.error) for e in failed} == {(1, 0.0, "ValueError: cannot answer q1")}
    prompt = scripted_llm.prompts()[0]
    assert "ValueError: cannot answer q1" in prompt  # the traced ExceptionNode output
    assert "The app raised ValueError: cannot answer q1" in prompt  # the default feedback


def test_the_guide_may_score_app_errors_and_a_crashing_guide_falls_back(scripted_llm):
    def scoring_guide(example, output):
        if isinstance(output, BaseException):
            return Feedback(score=0.25, text=f"crashed: {output}")
        return guide(example, output)

    def fragile_guide(example, output):
        return float("ANSWER" in output.upper())  # AttributeError on an exception

    for g, score, text in ((scoring_guide, 0.25, "crashed: cannot answer q1"), (fragile_guide, -1.0, "The app raised ValueError")):
        app = make_app("ANSWER {q}", fail_on=frozenset({"q1"}))
        store = Store()
        scripted_llm.script(reply("ANSWER {q}!"))
        result = optimize(
            app, data(2), guide=g, optimizer=opt(app, scripted_llm), batch_size=2,
            store=store, error_score=-1.0, progress=False,
        )
        (e,) = [e for e in store.evaluations(result.run_id, version_id=store.run(result.run_id).baseline_version_id) if e.error]
        assert e.score == score and e.feedback.startswith(text)


def test_each_evaluation_runs_once(scripted_llm):
    app = make_app("ANSWER {q}")
    scripted_llm.script(reply("Reply {q}"), reply("ANSWER {q}!"))
    store = Store()
    result = optimize(
        app, data(4), data(3, "v"), guide=guide, optimizer=opt(app, scripted_llm),
        batch_size=2, store=store, progress=False,
    )
    # baseline: 4 train + 3 val; the minibatches reuse the baseline runs; each candidate: 3 val;
    # the final (= best) values: 4 train (val is known)
    assert len(app.calls) == 4 + 3 + 3 + 3 + 4
    assert len(store.evaluations(result.run_id)) == len(app.calls)


def test_runs_are_concurrent_and_score_like_sequential_runs(scripted_llm):
    scores = []
    for concurrency in (1, 8):
        app = make_app("ANSWER {q}")
        slow = app.respond.fn

        def sleepy(template, q, _slow=slow):
            time.sleep(0.005)
            return _slow(template, q)

        app.respond.fn = sleepy
        scripted_llm.clear()
        scripted_llm.script(reply("ANSWER {q}!"))
        result = optimize(
            app, data(16), data(8, "v"), guide=guide, optimizer=opt(app, scripted_llm),
            batch_size=16, max_concurrency=concurrency, progress=False,
        )
        scores.append((result.baseline, result.best, [s.status for s in result.history]))
        if concurrency > 1:
            assert len(app.threads) > 1
    assert scores[0] == scores[1]


def test_a_spent_budget_stops_cleanly_and_keeps_the_best(scripted_llm):
    app = make_app("Reply {q}")
    scripted_llm.script(reply("ANSWER {q}"), reply("ANSWER {q}!"))
    store = Store()
    result = optimize(
        app, data(4), data(2, "v"), guide=guide, optimizer=opt(app, scripted_llm), batch_size=2,
        store=store, budget=Budget(max_calls=1), progress=False,
    )
    assert result.status == "budget_exhausted" and "max_calls=1" in result.message
    assert len(scripted_llm.prompts()) == 1
    assert [s.status for s in result.history] == ["accepted", "started"]
    assert app.prompt.value == "ANSWER {q}" and result.best.val == 0.5
    assert store.run(result.run_id).status == "budget_exhausted"


def test_time_limit_and_max_steps_stop_cleanly(scripted_llm):
    app = make_app("ANSWER {q}")
    slow = app.respond.fn

    def sleepy(template, q):
        time.sleep(0.02)
        return slow(template, q)

    app.respond.fn = sleepy
    result = optimize(
        app, data(40), guide=guide, optimizer=opt(app, scripted_llm), time_limit=0.1,
        max_concurrency=1, progress=False,
    )
    assert result.status == "time_limit" and "time limit of 0.1 s" in result.message
    assert 1 <= len(app.calls) < 40 and result.history == []

    app = make_app("Reply {q}")
    scripted_llm.set_default(json.dumps(reply("ANSWER {q}")))
    result = optimize(app, data(6), guide=guide, optimizer=opt(app, scripted_llm), batch_size=2, max_steps=1, progress=False)
    assert result.status == "max_steps" and len(result.history) == 1
    assert result.best.train == 0.5  # the last values were still scored on the full train set


def test_the_default_optimizer_finds_the_parameters_of_a_plain_function(scripted_llm):
    app = make_app("Reply {q}")
    scripted_llm.set_default(improve_then_worsen)

    def plain(q):  # not a Module, no parameters= : found in the trace of a first run
        return app(q)

    trainer = Trainer(plain, data(4), data(2, "v"), guide=guide, llm=llm_for(scripted_llm), batch_size=2, progress=False)
    assert [p.name for p in trainer.parameters] == ["prompt"]
    result = trainer.fit()
    assert app.prompt.value == "ANSWER {q}!" and result.best.val == 1.0
    # the discovery run was reused as the first baseline evaluation
    assert app.calls.count("q0") == 1 + 1  # baseline, then the final values


def test_import_opto_adapters_stays_light():
    code = (
        "import sys, opto_adapters\n"
        "heavy = [m for m in ('opto_adapters.train', 'sqlite3', 'tqdm', 'openai', 'langchain_core', 'llama_index') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from opto_adapters import optimize, Trainer, TrainResult, Feedback\n"
        "import opto_adapters.train as t\n"
        "assert optimize is t.optimize and Trainer is t.Trainer and Feedback is opto_adapters.trace.Feedback\n"
        "assert 'optimize' in dir(opto_adapters)\n"
        "try:\n    opto_adapters.nope\nexcept AttributeError as e:\n    assert 'nope' in str(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=".")
    assert done.returncode == 0, done.stderr


def test_a_perfect_minibatch_with_no_feedback_text_costs_no_optimizer_call(scripted_llm):
    """Issue 13, item 4: nothing to learn, nothing spent (and the step says why)."""
    app = make_app("ANSWER {q}!")

    def perfect_except_q3(example, output):
        # q0..q1 are perfect with nothing to say; the minibatch with q2, q3 has feedback
        if example["input"] in ("q0", "q1"):
            return 1.0
        return Feedback(score=0.5, text="add a marker")

    scripted_llm.script(reply("ANSWER {q}!!"))
    store = Store()
    result = optimize(
        app, data(4), guide=perfect_except_q3, optimizer=opt(app, scripted_llm),
        batch_size=2, shuffle=False, store=store, progress=False,
    )
    steps = store.steps(result.run_id)
    assert [s.status for s in steps][0] == "no_change"
    assert "nothing to learn" in steps[0].reason and "no optimizer call" in steps[0].reason
    assert len(scripted_llm.requests) == 1  # only the second minibatch asked the optimizer
    assert steps[1].status in ("accepted", "rejected")
