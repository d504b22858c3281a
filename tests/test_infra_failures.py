"""Issue 12: an endpoint that fails is never a result. Unreachable, timed-out, 5xx and
context-overflow failures are retried, then stop the run as failed (resumable); nothing of
them is stored as a score or a finished step, and a resume re-runs exactly what failed."""

import threading

import httpx
import openai
import pytest

from opto_adapters import cli
from opto_adapters.llm import LLMRequestError
from opto_adapters.optimizers import OptoPrime
from opto_adapters.testing import Reply
from opto_adapters.train import InfrastructureError, Store, Trainer, build_result
from opto_adapters.train.infra import failure
from tests.train_apps import data, guide, improve_then_worsen, llm_for, make_app

URL = "http://127.0.0.1:9/v1/chat/completions"


def _request() -> httpx.Request:
    return httpx.Request("POST", URL)


def _status_error(cls, status: int, message: str):
    response = httpx.Response(status, request=_request(), json={"error": {"message": message}})
    return cls(message, response=response, body=None)


def test_failures_are_told_from_app_bugs():
    connection = openai.APIConnectionError(request=_request())
    assert failure(connection).kind == "connection" and failure(connection).url == URL
    assert failure(openai.APITimeoutError(request=_request())).kind == "timeout"
    assert failure(_status_error(openai.InternalServerError, 500, "boom")).kind == "server"
    assert failure(_status_error(openai.RateLimitError, 429, "slow down")).kind == "server"
    overflow = _status_error(
        openai.BadRequestError, 400,
        "the request exceeds the available context size, try increasing it",
    )
    assert failure(overflow).kind == "context"
    assert "--ctx-size" in failure(overflow).advice() and URL in failure(overflow).advice()
    assert failure(httpx.ConnectError("refused", request=_request())).kind == "connection"
    assert failure(LLMRequestError("maximum context length is 2048 tokens", status_code=400)).kind == "context"
    # wrapped by the app (the cause is followed) and plain Python errors
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise RuntimeError("chain step failed") from exc
    except RuntimeError as wrapped:
        assert failure(wrapped).kind == "connection"
    for bug in (ValueError("context size must be positive"), KeyError("q"), ZeroDivisionError("x")):
        assert failure(bug) is None
    assert failure(_status_error(openai.BadRequestError, 400, "unknown field 'x'")) is None
    assert failure(None) is None


class FlakyEndpoint:
    """Stands for the app's model server: down for the examples in ``down`` while ``broken``."""

    def __init__(self, down: set[str], times: int | None = None) -> None:
        self.down, self.times, self.broken = down, times, True
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def wrap(self, app) -> None:
        original = app.respond
        endpoint = self

        def call(template, q):
            with endpoint.lock:
                fail = endpoint.broken and q in endpoint.down and (endpoint.times is None or endpoint.times > 0)
                if fail:
                    endpoint.failures.append(q)
                    if endpoint.times is not None:
                        endpoint.times -= 1
            if fail:
                raise openai.APIConnectionError(request=_request())
            return original(template, q)

        app.respond = call


def trainer(app, server, train, val=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("max_concurrency", 2)
    return Trainer(app, train, val, guide=guide, optimizer=OptoPrime([app.prompt], llm_for(server)), **kw)


def test_a_transient_outage_is_retried_and_scored_once(scripted_llm, tmp_path):
    scripted_llm.set_default(improve_then_worsen)
    path = str(tmp_path / "runs.sqlite")
    app = make_app("ANSWER {q}")
    endpoint = FlakyEndpoint({"q1"}, times=1)
    endpoint.wrap(app)
    result = trainer(app, scripted_llm, data(3), batch_size=3, store=path, infra_retries=1).fit()
    assert result.status == "completed"
    assert endpoint.failures == ["q1"]
    assert result.baseline.train == 0.5  # the retried run was scored, not the failure
    store = Store(path)
    baseline = [e for e in store.evaluations(1, split="train") if e.version_id == store.run(1).baseline_version_id]
    assert sorted(e.index for e in baseline) == [0, 1, 2] and all(e.error is None for e in baseline)
    store.close()


def test_an_outage_during_the_baseline_is_not_stored_and_resume_fills_it(scripted_llm, tmp_path, capsys):
    """Server down for some val examples during the baseline: the run fails (no score 0 is
    stored for them) and a resume once it is back gives the uninterrupted run's baseline."""
    scripted_llm.set_default(improve_then_worsen)
    path = str(tmp_path / "runs.sqlite")
    val = data(4, "v")
    app = make_app("ANSWER {q}")
    endpoint = FlakyEndpoint({"v1", "v3"})
    endpoint.wrap(app)
    with pytest.raises(InfrastructureError) as info:
        trainer(app, scripted_llm, data(2), val, store=path, infra_retries=1, max_concurrency=1).fit()
    assert "could not be reached" in str(info.value) and URL in str(info.value)
    assert endpoint.failures.count("v1") == 2  # tried, then once more
    store = Store(path)
    run = store.run(1)
    assert run.status == "failed" and "resume=True" in run.message
    stored = {e.index: e.score for e in store.evaluations(1, split="val")}
    assert 1 not in stored and 3 not in stored  # no failure became a score
    assert all(score == 0.5 for score in stored.values())
    assert scripted_llm.prompts() == []  # no step was taken on a partial baseline
    baseline = build_result(store, 1).baseline
    assert baseline.partial("val") and not baseline.partial("train")
    assert baseline.text("val") == "0.500 (partial: 1 of 4)"
    store.close()
    assert cli.main(["show", path]) == 0
    shown = capsys.readouterr().out
    assert "run 1: failed" in shown and "0.500 (partial: 1 of 4)" in shown

    endpoint.broken = False
    calls_before = len(app.calls)
    result = trainer(app, scripted_llm, data(2), val, store=path, resume=True).fit()
    assert result.status == "completed"
    # the baseline picks up exactly where it stopped: v0 (stored) is not run again
    assert app.calls[calls_before : calls_before + 3] == ["v1", "v2", "v3"]
    # the uninterrupted run of the same data and replies
    fresh = make_app("ANSWER {q}")
    expected = trainer(fresh, scripted_llm, data(2), val).fit()
    assert result.baseline == expected.baseline and result.baseline.val == 0.5
    assert result.best_values == expected.best_values


def test_the_optimizer_failing_stops_the_step_unfinished(scripted_llm, tmp_path):
    """An optimizer call answered 500 (after the client's retries) or a context overflow
    (never retried) is not a finished step; a resume asks again."""
    path = str(tmp_path / "runs.sqlite")
    scripted_llm.set_default(Reply.error(400, "the request exceeds the available context size, try increasing it"))
    app = make_app("Reply {q}")
    with pytest.raises(InfrastructureError) as info:
        trainer(app, scripted_llm, data(2), store=path, batch_size=2).fit()
    assert "gave no answer" in str(info.value) and scripted_llm.base_url in str(info.value)
    assert len(scripted_llm.chat_requests) == 1  # a 400 is not retried
    assert app.prompt.value == "Reply {q}"
    store = Store(path)
    assert [s.status for s in store.steps(1)] == ["failed"]
    assert store.run(1).status == "failed"
    store.close()

    scripted_llm.set_default(improve_then_worsen)
    result = trainer(app, scripted_llm, data(2), store=path, batch_size=2, resume=True).fit()
    assert result.status == "completed" and result.steps_done == 1 and result.accepted == 1
    assert app.prompt.value == "ANSWER {q}"


def test_the_raw_reply_is_shown_where_a_step_is_looked_at(scripted_llm, tmp_path, capsys):
    """A reply with no usable suggestion can be diagnosed from `show --step` and the report."""
    path = str(tmp_path / "runs.sqlite")
    scripted_llm.set_default('{"reasoning": "thinking", "answer": "ANSWER {q}"}')
    app = make_app("Reply {q}")
    result = trainer(app, scripted_llm, data(2), store=path, batch_size=2).fit()
    assert result.status == "completed" and result.history[0].status == "no_change"
    assert cli.main(["show", path, "--step", "1"]) == 0
    shown = capsys.readouterr().out
    assert "error: the optimizer's reply has no 'suggestion' object" in shown
    assert 'raw reply:\n    {"reasoning": "thinking", "answer": "ANSWER {q}"}' in shown
    assert cli.main(["report", path, "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert "raw reply" in html and "&quot;answer&quot;: &quot;ANSWER {q}&quot;" in html


HANGING_RECIPE = '''
import pathlib, time
from opto_adapters import Feedback, bundle, node

prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt")
MARK = pathlib.Path(__file__).with_suffix(".hanging")


@bundle()
def respond(template, q):
    """Fill the question into the template (the validation runs hang like a stuck server)."""
    if q.startswith("v"):
        MARK.write_text(q)
        time.sleep(3600)
    return template.format(q=q)


def build_app():
    return lambda q: respond(prompt, q["text"])


train = [{"text": "q0"}, {"text": "q1"}]
val = [{"text": "v0"}, {"text": "v1"}]
SETTINGS = {"batch_size": 2, "max_concurrency": 2}


def guide(example, output):
    return Feedback(score=0.5, text="needs ANSWER")
'''


def test_ctrl_c_exits_promptly_while_app_runs_hang(scripted_llm, tmp_path):
    """Issue 12: one Ctrl-C while app calls hang on their server ends the command within
    seconds (status interrupted, resumable), instead of waiting for the server."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = tmp_path / "hanging.py"
    recipe.write_text(HANGING_RECIPE)
    env = {**os.environ, **scripted_llm.env(model="m"), "PYTHONPATH": os.getcwd()}
    store = tmp_path / "s.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "opto_adapters.cli", "optimize", str(recipe), "--store", str(store), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        mark = recipe.with_suffix(".hanging")
        deadline = time.monotonic() + 60
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the app never started its validation runs"
            time.sleep(0.05)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, (out, err)
    assert took < 10, took
    assert "run 1: interrupted" in out and "--resume" in out
    assert "exiting without waiting for 2 app run(s)" in err
    with Store(str(store), readonly=True) as db:
        assert db.run(1).status == "interrupted"


def test_the_time_limit_holds_inside_an_optimizer_request(scripted_llm):
    """A reply slower than the time limit is cut at the limit: the run ends as time_limit
    (not failed, not after the reply), with the step unfinished."""
    import json
    import time

    from tests.train_apps import reply

    scripted_llm.set_default(Reply.delay(20, json.dumps(reply("ANSWER {q}!"))))
    app = make_app("Reply {q}")
    start = time.monotonic()
    result = trainer(app, scripted_llm, data(2), batch_size=2, time_limit=1.5, max_concurrency=1).fit()
    took = time.monotonic() - start
    assert result.status == "time_limit" and "during an optimizer request" in result.message
    assert took < 15, took  # far below the reply's 20 s
    assert result.steps_done == 0 and app.prompt.value == "Reply {q}"
