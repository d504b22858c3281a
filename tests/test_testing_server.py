"""Tests of the scripted OpenAI-compatible server, driven by the real ``openai`` client."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from opto_adapters.testing import RecordedRequest, Reply, ScriptedLLMServer

USER = [{"role": "user", "content": "hello there"}]


def client_for(server: ScriptedLLMServer, timeout: float = 2.0, **kw) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key="sk-test", timeout=timeout, max_retries=0, **kw
    )


def ask(client: openai.OpenAI, messages=USER, **kw):
    return client.chat.completions.create(model="m-1", messages=messages, **kw)


def test_replies_are_served_in_order_with_usage_and_recorded():
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "x" * 40},
    ]
    with ScriptedLLMServer(["first answer", {"answer": 42}]) as server:
        client = client_for(server)
        r1 = ask(client, messages)
        r2 = ask(client, USER)

        assert r1.choices[0].message.content == "first answer"
        assert r1.choices[0].finish_reason == "stop"
        assert r1.model == "m-1"
        # usage estimate ~ chars/4: prompt "You are terse.\n" + 40 x's = 55 chars -> 14 tokens
        assert r1.usage.prompt_tokens == 14
        assert r1.usage.completion_tokens == 3  # "first answer" = 12 chars
        assert r1.usage.total_tokens == 17
        assert r2.choices[0].message.content == '{"answer": 42}'

        reqs = server.requests
        assert [r.path for r in reqs] == ["/v1/chat/completions"] * 2
        assert all(isinstance(r, RecordedRequest) for r in reqs)
        assert reqs[0].model == "m-1"
        assert reqs[0].messages == messages
        assert reqs[0].headers["authorization"] == "Bearer sk-test"
        assert reqs[0].status == 200
        assert reqs[0].reply_text == "first answer"
        assert server.last_request is reqs[1]
        assert server.prompts() == ["You are terse.\n" + "x" * 40, "hello there"]
        assert server.pending == 0


def test_response_format_is_recorded_for_each_kind():
    schema_rf = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    with ScriptedLLMServer(["{}", "{}", "plain"]) as server:
        client = client_for(server)
        ask(client, response_format=schema_rf)
        ask(client, response_format={"type": "json_object"})
        ask(client)
        types = [r.response_format_type for r in server.chat_requests]
        assert types == ["json_schema", "json_object", None]
        assert server.chat_requests[0].response_format == schema_rf


def test_json_schema_rejection_does_not_consume_a_reply():
    with ScriptedLLMServer(["kept"], supports_json_schema=False) as server:
        client = client_for(server)
        with pytest.raises(openai.BadRequestError) as err:
            ask(
                client,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                },
            )
        assert "response_format" in str(err.value)
        assert server.pending == 1
        assert ask(client, response_format={"type": "json_object"}).choices[0].message.content == (
            "kept"
        )
        assert [r.status for r in server.requests] == [400, 200]


def test_json_object_rejection_with_422():
    with ScriptedLLMServer(["ok"], supports_json_object=False, unsupported_status=422) as server:
        client = client_for(server)
        with pytest.raises(openai.UnprocessableEntityError):
            ask(client, response_format={"type": "json_object"})
        assert ask(client).choices[0].message.content == "ok"


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (500, openai.InternalServerError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (429, openai.RateLimitError),
        (404, openai.NotFoundError),
    ],
)
def test_error_replies_map_to_openai_exceptions(status, exc_type):
    with ScriptedLLMServer([Reply.error(status), "after"]) as server:
        client = client_for(server)
        with pytest.raises(exc_type) as err:
            ask(client)
        assert err.value.status_code == status
        assert isinstance(err.value.body, dict) and err.value.body.get("message")
        assert ask(client).choices[0].message.content == "after"


def test_error_reply_custom_fields_and_retry_after_header():
    with ScriptedLLMServer(
        [Reply.error(429, "slow down", code="rate_limit", retry_after=0.25)]
    ) as server:
        with pytest.raises(openai.RateLimitError) as err:
            ask(client_for(server))
        assert err.value.body["message"] == "slow down"
        assert err.value.body["code"] == "rate_limit"
        assert err.value.response.headers["retry-after"] == "0.25"


def test_delay_longer_than_client_timeout_times_out_then_next_reply_is_served():
    with ScriptedLLMServer([Reply.delay(1.0, then="too late"), "on time"]) as server:
        client = client_for(server, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            ask(client)
        assert time.monotonic() - start < 0.9
        assert ask(client).choices[0].message.content == "on time"
        assert server.request_count == 2


def test_delay_shorter_than_timeout_returns_delayed_reply():
    with ScriptedLLMServer([Reply.delay(0.1, then={"k": "v"})]) as server:
        start = time.monotonic()
        r = ask(client_for(server))
        assert time.monotonic() - start >= 0.1
        assert r.choices[0].message.content == '{"k": "v"}'


def test_callback_mode_sees_request_body():
    seen = []

    def reply(body):
        seen.append(body)
        text = body["messages"][-1]["content"]
        return {"echo": text.upper(), "model": body["model"]}

    with ScriptedLLMServer(reply) as server:
        client = client_for(server)
        assert ask(client, [{"role": "user", "content": "abc"}]).choices[0].message.content == (
            '{"echo": "ABC", "model": "m-1"}'
        )
        assert ask(client, [{"role": "user", "content": "xyz"}]).choices[0].message.content == (
            '{"echo": "XYZ", "model": "m-1"}'
        )
        assert [b["messages"][-1]["content"] for b in seen] == ["abc", "xyz"]


def test_callback_can_return_fault_and_callback_errors_become_500():
    calls = iter([Reply.error(503), "fine"])

    with ScriptedLLMServer(lambda body: next(calls)) as server:
        client = client_for(server)
        with pytest.raises(openai.InternalServerError) as err:
            ask(client)
        assert err.value.status_code == 503
        assert ask(client).choices[0].message.content == "fine"
        with pytest.raises(openai.InternalServerError) as err:
            ask(client)  # iterator exhausted -> StopIteration inside the callback
        assert "callback raised" in str(err.value)


def test_script_exhausted_answers_500_and_records_it():
    with ScriptedLLMServer(["only one"]) as server:
        client = client_for(server)
        assert ask(client).choices[0].message.content == "only one"
        with pytest.raises(openai.InternalServerError) as err:
            ask(client)
        assert "script exhausted" in str(err.value)
        last = server.last_request
        assert last.status == 500
        assert "script exhausted" in last.error


def test_default_reply_used_after_script():
    with ScriptedLLMServer(["scripted"], default="fallback") as server:
        client = client_for(server)
        contents = [ask(client).choices[0].message.content for _ in range(3)]
        assert contents == ["scripted", "fallback", "fallback"]
        server.set_default(None)
        with pytest.raises(openai.InternalServerError):
            ask(client)


def test_reply_token_overrides_and_null_content():
    with ScriptedLLMServer(
        [Reply.text("hi", prompt_tokens=100, completion_tokens=7, finish_reason="length"), None]
    ) as server:
        client = client_for(server)
        r = ask(client)
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
            100,
            7,
            107,
        )
        assert r.choices[0].finish_reason == "length"
        assert ask(client).choices[0].message.content is None


def test_models_endpoint_lists_model_ids():
    with ScriptedLLMServer(model_ids=["a", "b"]) as server:
        ids = [m.id for m in client_for(server).models.list()]
        assert ids == ["a", "b"]
        assert server.last_request.method == "GET"
        assert server.last_request.path == "/v1/models"


def test_unknown_endpoint_is_404():
    with ScriptedLLMServer() as server:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "/v1/nope", timeout=2)
        assert err.value.code == 404


def test_required_api_key_rejects_wrong_key_without_consuming():
    with ScriptedLLMServer(["secret reply"], api_key="right") as server:
        bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0, timeout=2)
        with pytest.raises(openai.AuthenticationError):
            ask(bad)
        good = openai.OpenAI(base_url=server.base_url, api_key="right", max_retries=0, timeout=2)
        assert ask(good).choices[0].message.content == "secret reply"


def test_streaming_response():
    with ScriptedLLMServer(["a streamed reply that spans several chunks"]) as server:
        stream = ask(client_for(server), stream=True, stream_options={"include_usage": True})
        pieces, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        assert "".join(pieces) == "a streamed reply that spans several chunks"
        assert len(pieces) > 1
        assert usage is not None and usage.completion_tokens == 11


def test_script_helpers_and_env(scripted_llm):
    assert scripted_llm.script("one", {"two": 2}) is scripted_llm
    scripted_llm.add_replies(["three"])
    assert scripted_llm.pending == 3
    env = scripted_llm.env(model="my-model")
    assert env["OPENAI_BASE_URL"] == scripted_llm.base_url
    assert env["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
    assert env["OPENAI_BASE_URL"].endswith("/v1")
    assert env["OPENAI_API_KEY"]
    assert env["OPTO_MODEL"] == "my-model"
    assert "OPTO_MODEL" not in scripted_llm.env()
    client = openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"])
    assert ask(client).choices[0].message.content == "one"
    scripted_llm.clear()
    assert scripted_llm.pending == 0 and scripted_llm.requests == []


def test_invalid_replies_are_rejected_early():
    with pytest.raises(ValueError):
        Reply.error(200)
    with pytest.raises(ValueError):
        Reply.delay(-1)
    with pytest.raises(TypeError):
        ScriptedLLMServer().script(object())


def test_concurrent_requests_are_all_recorded():
    with ScriptedLLMServer(default=lambda body: body["messages"][0]["content"] + "!") as server:
        client = client_for(server)
        results: dict[int, str] = {}

        def work(i: int) -> None:
            results[i] = (
                ask(client, [{"role": "user", "content": f"q{i}"}]).choices[0].message.content
            )

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert results == {i: f"q{i}!" for i in range(8)}
        assert sorted(server.prompts()) == sorted(f"q{i}" for i in range(8))
        assert sorted(r.index for r in server.requests) == list(range(8))


def test_close_is_prompt_even_with_a_pending_delay_and_stops_serving():
    server = ScriptedLLMServer([Reply.delay(10, then="never")]).start()
    base_url = server.base_url
    errors: list[Exception] = []

    def slow_call() -> None:
        try:
            ask(openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=5))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
            errors.append(exc)

    t = threading.Thread(target=slow_call)
    t.start()
    deadline = time.monotonic() + 2
    while server.request_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 1.5
    t.join(3)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)
    with pytest.raises(OSError):
        urllib.request.urlopen(base_url + "/models", timeout=1)
    server.close()  # idempotent
    with pytest.raises(RuntimeError):
        server.start()
