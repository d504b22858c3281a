"""Tests of ``opto_adapters.llm.LLM`` against the scripted server (real HTTP, real openai client)."""

from __future__ import annotations

import json
import logging
import threading
import time

import openai
import pytest

from opto_adapters.llm import (
    LLM,
    AuthenticationError,
    Budget,
    BudgetExceeded,
    JSONResult,
    LLMError,
    LLMRequestError,
    LLMResponseError,
    Usage,
    extract_json,
)
from opto_adapters.testing import Reply, ScriptedLLMServer

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "number"}},
    "required": ["answer"],
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPTO_MODEL", "AZURE_OPENAI_API_KEY", "OPTO_JSON_MODE", "OPTO_CHECK_CONTEXT"):
        monkeypatch.delenv(name, raising=False)


def make_llm(server: ScriptedLLMServer, **kw) -> LLM:
    kw.setdefault("model", "test-model")
    kw.setdefault("api_key", "sk-test")
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff_base", 0.001)
    return LLM(base_url=server.base_url, **kw)


# --------------------------------------------------------------------------- plain text
def test_complete_sends_messages_and_returns_text(scripted_llm):
    scripted_llm.script("Paris")
    llm = make_llm(scripted_llm, temperature=0.2)
    assert llm.complete("Capital of France?", max_tokens=5) == "Paris"
    body = scripted_llm.last_request.body
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 5
    assert "response_format" not in body


def test_call_and_chat_aliases_and_per_call_temperature_override(scripted_llm):
    scripted_llm.script("a", "b")
    llm = make_llm(scripted_llm, temperature=0.2)
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "u"}]
    assert llm(messages, temperature=0.9) == "a"
    assert scripted_llm.last_request.body["temperature"] == 0.9
    assert llm.chat(messages) == "b"
    assert scripted_llm.last_request.messages == messages


def test_empty_reply_is_empty_string_for_complete(scripted_llm):
    scripted_llm.script("", None)
    llm = make_llm(scripted_llm)
    assert llm.complete("hi") == ""
    assert llm.complete("hi") == ""
    assert llm.usage.calls == 2


# --------------------------------------------------------------------------- structured output
def test_complete_json_requests_json_schema(scripted_llm):
    scripted_llm.script({"answer": "yes", "score": 0.5})
    llm = make_llm(scripted_llm)
    result = llm.complete_json("Judge it", schema={**SCHEMA, "title": "Verdict v1"})
    assert isinstance(result, JSONResult)
    assert result.data == {"answer": "yes", "score": 0.5}
    assert json.loads(result.text) == result.data
    assert result.mode == "json_schema"
    assert result.usage.calls == 1 and result.usage.total_tokens > 0
    data, text = result  # tuple-style unpacking
    assert data == result.data and text == result.text

    rf = scripted_llm.last_request.response_format
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "Verdict_v1"
    assert rf["json_schema"]["schema"]["required"] == ["answer"]
    assert llm.active_json_mode == "json_schema"


def test_complete_json_without_schema_uses_json_object_and_mentions_json(scripted_llm):
    scripted_llm.script('{"ok": true}')
    llm = make_llm(scripted_llm)
    result = llm.complete_json(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "go"}]
    )
    assert result.data == {"ok": True}
    assert result.mode == "json_object"
    req = scripted_llm.last_request
    assert req.response_format_type == "json_object"
    # the JSON instruction is appended to the existing system message, not a second one
    assert [m["role"] for m in req.messages] == ["system", "user"]
    assert req.messages[0]["content"].startswith("Be brief.")
    assert "JSON" in req.messages[0]["content"]


def test_fallback_json_schema_to_json_object_to_text_and_mode_is_remembered():
    with ScriptedLLMServer(
        ['{"answer": "one"}', 'sure: {"answer": "two"}'],
        supports_json_schema=False,
        supports_json_object=False,
    ) as server:
        llm = make_llm(server)
        first = llm.complete_json("q1", schema=SCHEMA)
        assert first.data == {"answer": "one"}
        assert first.mode == "text"
        assert [r.response_format_type for r in server.requests] == [
            "json_schema",
            "json_object",
            None,
        ]
        assert [r.status for r in server.requests] == [400, 400, 200]
        # in plain-text mode the prompt shows an example of the reply, never the schema text
        assert 'Like this: {"answer": "...", "score": 0}' in server.prompts()[-1]
        assert "Schema" not in server.prompts()[-1] and '"required"' not in server.prompts()[-1]
        assert llm.unsupported_modes == {"json_schema", "json_object"}

        second = llm.complete_json("q2", schema=SCHEMA)
        assert second.data == {"answer": "two"}
        assert server.request_count == 4  # no repeated failing attempts
        assert server.last_request.response_format_type is None
        assert llm.usage.calls == 2
        assert llm.usage.requests == 4


def test_fallback_stops_at_json_object_when_supported_even_with_422():
    with ScriptedLLMServer(
        ['{"answer": "a"}', '{"answer": "b"}'], supports_json_schema=False, unsupported_status=422
    ) as server:
        llm = make_llm(server)
        assert llm.complete_json("q", schema=SCHEMA).mode == "json_object"
        assert llm.complete_json("q", schema=SCHEMA).data == {"answer": "b"}
        assert [r.response_format_type for r in server.requests] == [
            "json_schema",
            "json_object",
            "json_object",
        ]
        assert llm.active_json_mode == "json_object"


def test_unrelated_400_is_not_treated_as_format_rejection(scripted_llm):
    scripted_llm.script(Reply.error(400, "This model's maximum context length is 8192 tokens."))
    llm = make_llm(scripted_llm)
    with pytest.raises(LLMRequestError) as err:
        llm.complete_json("q", schema=SCHEMA)
    assert err.value.status_code == 400
    assert "maximum context length" in str(err.value)
    assert scripted_llm.request_count == 1
    assert llm.unsupported_modes == frozenset()


def test_json_in_markdown_fence_with_chatter_and_trailing_comma(scripted_llm):
    reply = 'Here is the result:\n```json\n{"answer": "fenced", "tags": ["a", "b",],}\n```\nHope it helps!'
    scripted_llm.script(reply)
    result = make_llm(scripted_llm).complete_json("q", schema=SCHEMA)
    assert result.data == {"answer": "fenced", "tags": ["a", "b"]}
    assert result.text == reply


def test_non_json_reply_raises_response_error_with_raw_text(scripted_llm):
    scripted_llm.script("I'm sorry, I cannot answer in JSON.")
    llm = make_llm(scripted_llm)
    with pytest.raises(LLMResponseError) as err:
        llm.complete_json("q", schema=SCHEMA)
    assert isinstance(err.value, LLMError)
    assert err.value.raw_text == "I'm sorry, I cannot answer in JSON."
    assert err.value.mode == "json_schema"
    assert "cannot answer" in str(err.value)
    assert llm.usage.calls == 1  # the call itself succeeded and is accounted


def test_empty_reply_raises_response_error(scripted_llm):
    scripted_llm.script("")
    with pytest.raises(LLMResponseError) as err:
        make_llm(scripted_llm).complete_json("q")
    assert "empty" in str(err.value)
    assert err.value.raw_text == ""


def test_truncated_json_reports_finish_reason(scripted_llm):
    scripted_llm.script(Reply.text('{"answer": "cut of', finish_reason="length"))
    with pytest.raises(LLMResponseError) as err:
        make_llm(scripted_llm).complete_json("q", schema=SCHEMA)
    assert err.value.finish_reason == "length"
    assert "max_tokens" in str(err.value)


def test_pydantic_model_as_schema(scripted_llm):
    import pydantic

    class Verdict(pydantic.BaseModel):
        answer: str

    scripted_llm.script({"answer": "ok"})
    result = make_llm(scripted_llm).complete_json("q", schema=Verdict)
    assert result.data == {"answer": "ok"}
    rf = scripted_llm.last_request.response_format
    assert rf["json_schema"]["name"] == "Verdict"
    assert rf["json_schema"]["schema"]["properties"]["answer"]["type"] == "string"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('  \n{"a": {"b": [1, 2]}}\n', {"a": {"b": [1, 2]}}),
        ('Sure! {"a": "has } brace and \\" quote"} -- done', {"a": 'has } brace and " quote'}),
        ('<think>maybe {"draft": 1}</think>\n{"final": 2}', {"final": 2}),
        ('```\n{"a": 1,\n}\n```', {"a": 1}),
        ('[1, 2] then {"x": null}', {"x": None}),
        ('{not json} but later {"ok": 1}', {"ok": 1}),
    ],
)
def test_extract_json_lenient(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "no braces here", "[1, 2, 3]", '{"unterminated": '])
def test_extract_json_failures_carry_raw_text(text):
    with pytest.raises(LLMResponseError) as err:
        extract_json(text)
    assert err.value.raw_text == text


@pytest.mark.parametrize(
    "text",
    [
        '{"reasoning": "r", "suggestion": {"a": {"b": 1}, "c": "cut',  # outer object never closed
        'Sure: {"suggestion": {"a": 1}, "more": [',
        '{"reasoning": "see ```json\n{\"a\": 1}\n``` above", "sugg',  # a fence inside the cut object
    ],
)
def test_extract_json_of_a_cut_reply_takes_no_nested_object(text):
    assert isinstance(extract_json(text), dict)  # leniently, something nested would be found
    with pytest.raises(LLMResponseError):
        extract_json(text, nested=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1, "b": [1, 2,],} and then more tex', {"a": 1, "b": [1, 2]}),
        ('```json\n{"a": {"b": 2}}\n```\nThat is it, and I will now expl', {"a": {"b": 2}}),
        ('<think>hmm {"x": 0}</think> {"a": 3} trailing {', {"a": 3}),
    ],
)
def test_extract_json_of_a_cut_reply_takes_a_complete_top_level_object(text, expected):
    assert extract_json(text, nested=False) == expected


# --------------------------------------------------------------------------- retries
def test_http_500_then_success_is_retried_and_counted(scripted_llm):
    scripted_llm.script(Reply.error(500), "recovered")
    llm = make_llm(scripted_llm)
    assert llm.complete("q") == "recovered"
    assert scripted_llm.request_count == 2
    usage = llm.usage
    assert (usage.calls, usage.requests, usage.retries) == (1, 2, 1)


def test_429_then_success_honours_retry_after(scripted_llm):
    scripted_llm.script(Reply.error(429, retry_after=0.2), "ok")
    llm = make_llm(scripted_llm)
    start = time.monotonic()
    assert llm.complete("q") == "ok"
    assert time.monotonic() - start >= 0.2
    assert llm.usage.retries == 1
    assert scripted_llm.request_count == 2


def test_timeout_then_success_on_retry(scripted_llm):
    scripted_llm.script(Reply.delay(1.0, then="too late"), "in time")
    llm = make_llm(scripted_llm, timeout=0.3)
    start = time.monotonic()
    assert llm.complete("q") == "in time"
    assert time.monotonic() - start < 0.95
    assert llm.usage.retries == 1
    assert scripted_llm.request_count == 2


def test_retries_exhausted_raises_request_error(scripted_llm, caplog):
    scripted_llm.script(Reply.error(503), Reply.error(502), Reply.error(500), "never")
    llm = make_llm(scripted_llm, max_retries=2)
    with caplog.at_level(logging.WARNING, logger="opto_adapters.llm"):
        with pytest.raises(LLMRequestError) as err:
            llm.complete("q")
    assert err.value.attempts == 3
    assert err.value.status_code == 500
    assert "3 attempt" in str(err.value)
    assert scripted_llm.request_count == 3
    assert scripted_llm.pending == 1
    assert llm.usage.calls == 0 and llm.usage.retries == 2
    retry_logs = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.getMessage().split("retry ")[1][:3] for r in retry_logs] == ["1/2", "2/2"]


def test_insufficient_quota_429_is_not_retried(scripted_llm):
    scripted_llm.script(Reply.error(429, "You exceeded your quota", code="insufficient_quota"), "x")
    with pytest.raises(LLMRequestError) as err:
        make_llm(scripted_llm).complete("q")
    assert "quota" in str(err.value)
    assert scripted_llm.request_count == 1


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_raises_clear_error_without_retry(scripted_llm, status):
    scripted_llm.script(Reply.error(status), "unused")
    llm = make_llm(scripted_llm, max_retries=3)
    with pytest.raises(AuthenticationError) as err:
        llm.complete("q")
    message = str(err.value)
    assert "OPENAI_API_KEY" in message
    assert "OPENAI_BASE_URL" in message and "OPTO_MODEL" in message
    assert scripted_llm.base_url in message
    assert isinstance(err.value, LLMError)
    assert scripted_llm.request_count == 1


def test_404_is_not_retried_and_names_the_model(scripted_llm):
    scripted_llm.script(Reply.error(404, "model 'nope' not found"), "unused")
    with pytest.raises(LLMRequestError) as err:
        make_llm(scripted_llm, model="nope").complete("q")
    assert err.value.status_code == 404
    assert "'nope'" in str(err.value) and "OPTO_MODEL" in str(err.value)
    assert scripted_llm.request_count == 1


def test_connection_refused_is_retried_then_reported():
    server = ScriptedLLMServer().start()
    base_url = server.base_url
    server.close()
    llm = LLM("m", base_url=base_url, api_key="k", max_retries=1, backoff_base=0.001, timeout=1)
    with pytest.raises(LLMRequestError) as err:
        llm.complete("q")
    assert err.value.attempts == 2
    assert "connection error" in str(err.value)


# --------------------------------------------------------------------------- budget & usage
def test_budget_max_calls(scripted_llm):
    scripted_llm.set_default("ok")
    budget = Budget(max_calls=2)
    llm = make_llm(scripted_llm, budget=budget)
    assert llm.complete("1") == "ok"
    assert llm.complete("2") == "ok"
    with pytest.raises(BudgetExceeded) as err:
        llm.complete("3")
    assert "2 calls used" in str(err.value) and "max_calls=2" in str(err.value)
    assert "Budget(max_calls=" in str(err.value)
    assert isinstance(err.value, LLMError)
    assert (err.value.calls_used, err.value.max_calls) == (2, 2)
    assert scripted_llm.request_count == 2
    assert budget.exhausted and budget.remaining_calls == 0


def test_budget_max_tokens_overshoot_completes_then_next_raises(scripted_llm):
    scripted_llm.set_default(Reply.text("x", prompt_tokens=60, completion_tokens=50))
    budget = Budget(max_tokens=100)
    llm = make_llm(scripted_llm, budget=budget)
    assert llm.complete("first") == "x"  # 110 tokens: crosses the limit but completes
    assert budget.tokens_used == 110
    with pytest.raises(BudgetExceeded) as err:
        llm.complete("second")
    assert "110 tokens used of max_tokens=100" in str(err.value)
    assert scripted_llm.request_count == 1


def test_zero_call_budget_sends_nothing(scripted_llm):
    llm = make_llm(scripted_llm, budget=Budget(max_calls=0))
    with pytest.raises(BudgetExceeded):
        llm.complete("q")
    with pytest.raises(BudgetExceeded):
        llm.complete_json("q", schema=SCHEMA)
    assert scripted_llm.request_count == 0


def test_budget_shared_between_instances_and_failures_not_charged(scripted_llm):
    scripted_llm.script(Reply.error(401), "a", "b")
    budget = Budget(max_calls=2)
    first, second = make_llm(scripted_llm, budget=budget), make_llm(scripted_llm, budget=budget)
    with pytest.raises(AuthenticationError):
        first.complete("q")
    assert budget.calls_used == 0
    assert first.complete("q") == "a"
    assert second.complete("q") == "b"
    with pytest.raises(BudgetExceeded):
        second.complete("q")
    assert budget.calls_used == 2


def test_budget_rejects_negative_limits():
    with pytest.raises(ValueError):
        Budget(max_calls=-1)


def test_usage_matches_server_usage_blocks(scripted_llm):
    scripted_llm.script("short", "a considerably longer reply " * 5, {"answer": "json"})
    llm = make_llm(scripted_llm)
    llm.complete("hello")
    llm.complete([{"role": "system", "content": "s" * 99}, {"role": "user", "content": "u"}])
    llm.complete_json("q", schema=SCHEMA)
    sent = [r.response["usage"] for r in scripted_llm.requests]
    usage = llm.usage
    assert usage.calls == 3
    assert usage.prompt_tokens == sum(u["prompt_tokens"] for u in sent)
    assert usage.completion_tokens == sum(u["completion_tokens"] for u in sent)
    assert usage.total_tokens == sum(u["total_tokens"] for u in sent)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    llm.reset_usage()
    assert llm.usage == Usage()


def test_usage_estimated_when_server_omits_it(scripted_llm):
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "12345678"},
                "finish_reason": "stop",
            }
        ],
    }
    scripted_llm.script(Reply.raw(json.dumps(body)))
    llm = make_llm(scripted_llm)
    assert llm.complete("abcdefghijkl") == "12345678"
    assert (llm.usage.prompt_tokens, llm.usage.completion_tokens) == (3, 2)


# --------------------------------------------------------------------------- configuration
def test_environment_configuration(scripted_llm, monkeypatch):
    for key, value in scripted_llm.env(model="env-model", api_key="sk-from-env").items():
        monkeypatch.setenv(key, value)
    scripted_llm.script("from env")
    llm = LLM()
    assert llm.model == "env-model"
    assert llm.complete("q") == "from env"
    req = scripted_llm.last_request
    assert req.model == "env-model"
    assert req.headers["authorization"] == "Bearer sk-from-env"
    assert llm.base_url.rstrip("/") == scripted_llm.base_url


def test_default_model_and_placeholder_key_for_local_server(scripted_llm):
    scripted_llm.script("ok")
    llm = LLM(base_url=scripted_llm.base_url)  # no key anywhere: local server is fine
    assert llm.model == "gpt-4o-mini"
    assert llm.complete("q") == "ok"
    assert scripted_llm.last_request.headers["authorization"].startswith("Bearer ")
    assert scripted_llm.last_request.model == "gpt-4o-mini"


def test_missing_key_for_remote_endpoint_is_a_clear_error():
    with pytest.raises(AuthenticationError) as err:
        LLM(base_url="https://api.example.com/v1")
    assert "OPENAI_API_KEY" in str(err.value)
    assert "https://api.example.com/v1" in str(err.value)


def test_existing_client_has_its_retries_disabled(scripted_llm):
    scripted_llm.script(Reply.error(500), "unused")
    client = openai.OpenAI(base_url=scripted_llm.base_url, api_key="k", max_retries=5)
    llm = LLM("m", client=client, max_retries=0)
    with pytest.raises(LLMRequestError):
        llm.complete("q")
    assert scripted_llm.request_count == 1


def test_azure_endpoint_routes_to_deployment(scripted_llm):
    scripted_llm.script("from azure")
    llm = LLM(
        "my-deployment",
        azure_endpoint=scripted_llm.url,
        api_key="azure-key",
        api_version="2024-10-21",
        timeout=2,
    )
    assert llm.complete("q") == "from azure"
    req = scripted_llm.last_request
    assert req.path == "/openai/deployments/my-deployment/chat/completions"
    assert req.query["api-version"] == ["2024-10-21"]
    assert req.headers["api-key"] == "azure-key"


# --------------------------------------------------------------------------- concurrency
def _double(body):
    n = int(body["messages"][-1]["content"].split("=")[1])
    return {"n": n, "double": 2 * n}


def test_concurrent_calls_share_one_instance():
    with ScriptedLLMServer(_double) as server:
        llm = make_llm(server)
        results: dict[int, dict] = {}
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for k in range(3):
                    value = n * 10 + k
                    results[value] = llm.complete_json(f"n={value}").data
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert errors == []
        assert results == {v: {"n": v, "double": 2 * v} for v in results}
        assert len(results) == 24
        sent = [r.response["usage"] for r in server.requests]
        usage = llm.usage
        assert usage.calls == 24 == len(sent)
        assert usage.prompt_tokens == sum(u["prompt_tokens"] for u in sent)
        assert usage.completion_tokens == sum(u["completion_tokens"] for u in sent)


def test_concurrent_calls_respect_max_calls_exactly():
    def slow(body):
        return Reply.delay(0.05, then="ok")

    with ScriptedLLMServer(slow) as server:
        llm = make_llm(server, budget=Budget(max_calls=5))
        outcomes: list[str] = []
        lock = threading.Lock()

        def work() -> None:
            try:
                result = llm.complete("q")
            except BudgetExceeded:
                result = "budget"
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert sorted(outcomes) == ["budget"] * 3 + ["ok"] * 5
        assert server.request_count == 5
        assert llm.usage.calls == 5


def test_close_releases_the_connections(scripted_llm):
    scripted_llm.script("hello", "again")
    with LLM(base_url=scripted_llm.base_url, api_key="k", model="m") as llm:
        assert llm.complete("hi") == "hello"
    with pytest.raises(LLMError, match="was closed; create a new LLM"):
        llm.complete("hi")
    assert scripted_llm.request_count == 1


def test_a_format_refusal_answered_with_http_500_falls_back_at_once():
    """llama.cpp's server answers response_format json_schema with HTTP 500 ("Input should be
    'text' or 'json_object'"): an answer about the format, never retried as a server fault."""

    def respond(body):
        if (body.get("response_format") or {}).get("type") == "json_schema":
            return Reply.error(500, "1 validation error: response_format.type: Input should be 'text' or 'json_object'")
        return '{"answer": "ok"}'

    with ScriptedLLMServer(respond) as server:
        llm = make_llm(server)
        result = llm.complete_json("q", schema=SCHEMA)
        assert result.data == {"answer": "ok"} and result.mode == "llama.cpp"
        assert [(r.response_format_type, r.status) for r in server.requests] == [
            ("json_schema", 500),  # once: not retried
            ("json_object", 200),  # with the schema: llama.cpp makes it a grammar
        ]
        assert server.requests[1].response_format == {"type": "json_object", "schema": SCHEMA}
        assert llm.unsupported_modes == {"json_schema"}
        llm.complete_json("q2", schema=SCHEMA)
        assert server.request_count == 3  # remembered for this endpoint


def test_a_server_fault_on_a_structured_request_is_still_retried():
    with ScriptedLLMServer([Reply.error(500, "upstream crashed"), '{"answer": "ok"}']) as server:
        llm = make_llm(server)
        assert llm.complete_json("q", schema=SCHEMA).mode == "json_schema"
        assert [r.status for r in server.requests] == [500, 200]


def test_extract_json_takes_a_whole_object_reply_as_it_is():
    """A reply that is one JSON object is parsed as it stands: think tags and fences inside
    its strings are content, not wrapping to strip."""
    text = '{"reasoning": "<think>a</think> then ```x```", "suggestion": {"p": "{q}"}}'
    assert extract_json(text) == json.loads(text)
    assert extract_json("  \n" + text + "\n") == json.loads(text)
    # a reply that only looks like one object falls through to the lenient parser
    assert extract_json('{"a": 1,}') == {"a": 1}
    assert extract_json('{"a": 1} and {"b": 2}') == {"a": 1}
