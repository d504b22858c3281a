"""Issue 12, the LLM side: each server family's OpenAI-compatible endpoint, imitated with its
exact answers by the scripted server (``family=``), gets the structured-output mode it accepts
with the fewest requests; a prompt over the context is a ``ContextOverflow`` (never retried,
saying what to change); a reply cut at ``max_tokens`` is flagged and never mined; no request
or retry runs past a deadline."""

from __future__ import annotations

import json
import logging
import time

import pytest

from opto_adapters import trace
from opto_adapters.llm import (
    LLM,
    ContextOverflow,
    DeadlineExceeded,
    LLMRequestError,
    LLMResponseError,
)
from opto_adapters.optimizers import OPRO, OptoPrime
from opto_adapters.optimizers.llm_optimizer import PLACEHOLDER_TEXT, REPLY_SCHEMA
from opto_adapters.testing import Reply, ScriptedLLMServer

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "number"}},
    "required": ["answer"],
}
ANSWER = '{"answer": "ok", "score": 1}'


@trace.bundle()
def echo(value):
    """Return the value."""
    return value


@trace.bundle()
def join(a, b):
    """Join two values as text."""
    return f"{a}{b}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPTO_MODEL", "AZURE_OPENAI_API_KEY", "OPTO_JSON_MODE", "OPTO_CHECK_CONTEXT"):
        monkeypatch.delenv(name, raising=False)


def make_llm(server: ScriptedLLMServer, **kw) -> LLM:
    kw.setdefault("model", "scripted-model")
    kw.setdefault("api_key", "sk-test")
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff_base", 0.001)
    return LLM(base_url=server.base_url, **kw)


def formats_sent(server: ScriptedLLMServer) -> list[tuple[str | None, int | None]]:
    return [(r.response_format_type, r.status) for r in server.chat_requests]


# --------------------------------------------------------------------------- modes per family
@pytest.mark.parametrize("family", ["openai", "vllm", "llama.cpp"])
def test_families_that_take_json_schema_get_it_in_one_request_per_call(family):
    with ScriptedLLMServer([ANSWER, ANSWER], family=family) as server:
        llm = make_llm(server)
        assert llm.complete_json("q", SCHEMA).mode == "json_schema"
        assert llm.complete_json("q", SCHEMA).data == {"answer": "ok", "score": 1}
        assert formats_sent(server) == [("json_schema", 200), ("json_schema", 200)]
        assert llm.usage.requests == 2
        sent = server.chat_requests[0]
        assert sent.response_format["json_schema"]["schema"] == SCHEMA
        assert "JSON" not in sent.prompt  # the schema is enforced: no instruction added
        assert llm.active_json_mode == "json_schema"
        assert llm.server_family == (None if family == "openai" else family)  # (a local "openai")


def test_llama_cpp_python_refuses_json_schema_with_500_and_gets_its_grammar_mode_next():
    with ScriptedLLMServer([ANSWER, ANSWER, ANSWER], family="llama-cpp-python") as server:
        llm = make_llm(server)
        first = llm.complete_json("q", SCHEMA)
        assert first.mode == "llama.cpp" and first.data["answer"] == "ok"
        assert formats_sent(server) == [("json_schema", 500), ("json_object", 200)]  # not retried
        refusal = server.chat_requests[0].response
        assert "Input should be 'text' or 'json_object'" in refusal
        assert json.loads(refusal)["error"]["type"] == "internal_server_error"
        assert server.chat_requests[1].response_format == {"type": "json_object", "schema": SCHEMA}
        assert llm.server_family == "llama-cpp-python"
        assert llm.unsupported_modes == {"json_schema"}
        llm.complete_json("q2", SCHEMA)
        llm.complete_json("q3", SCHEMA)
        assert llm.usage.requests == 4  # 2 for the first call, then 1 per call
        assert [r.response_format_type for r in server.chat_requests[2:]] == ["json_object"] * 2
        assert all(r.response_format.get("schema") == SCHEMA for r in server.chat_requests[1:])


def test_an_older_llama_server_refusing_json_schema_also_gets_the_grammar_mode():
    with ScriptedLLMServer([ANSWER], family="llama.cpp", supports_json_schema=False) as server:
        llm = make_llm(server)
        assert llm.complete_json("q", SCHEMA).mode == "llama.cpp"
        assert formats_sent(server) == [("json_schema", 500), ("json_object", 200)]
        body = json.loads(server.chat_requests[0].response)
        assert body["error"]["type"] == "server_error" and body["error"]["code"] == 500
        assert llm.server_family == "llama.cpp"


def test_an_older_vllm_refusing_json_schema_gets_json_object_not_the_llama_cpp_mode():
    with ScriptedLLMServer([ANSWER, ANSWER], family="vllm", supports_json_schema=False) as server:
        llm = make_llm(server)
        result = llm.complete_json("q", SCHEMA)
        assert result.mode == "json_object"
        assert formats_sent(server) == [("json_schema", 400), ("json_object", 200)]
        body = json.loads(server.chat_requests[0].response)
        assert body["object"] == "error" and body["type"] == "BadRequestError"
        assert server.chat_requests[1].response_format == {"type": "json_object"}
        assert 'Like this: {"answer": "...", "score": 0}' in server.chat_requests[1].prompt
        assert llm.server_family == "vllm"
        llm.complete_json("q", SCHEMA)
        assert llm.usage.requests == 3


def test_ollama_is_recognised_from_its_reply_and_asked_its_way_from_then_on():
    with ScriptedLLMServer([ANSWER, ANSWER], family="ollama") as server:
        llm = make_llm(server)
        assert llm.complete_json("q", SCHEMA).mode == "json_schema"
        assert llm.server_family == "ollama"  # system_fingerprint fp_ollama
        second = llm.complete_json("q", SCHEMA)
        assert second.mode == "ollama"
        assert llm.usage.requests == 2  # no request spent on finding it
        rf = server.chat_requests[1].response_format
        assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == SCHEMA
        assert "strict" not in rf["json_schema"]  # (Ollama reads the schema only)
        assert "single JSON object" in server.chat_requests[1].prompt  # old builds ignore the schema


def test_an_ollama_before_structured_outputs_answers_anyway_and_the_instruction_carries_it():
    with ScriptedLLMServer(['{"answer": "plain"}'], family="ollama", supports_json_schema=False) as server:
        llm = make_llm(server, json_mode="ollama")
        result = llm.complete_json("q", SCHEMA)
        assert result.data == {"answer": "plain"} and result.mode == "ollama"
        assert formats_sent(server) == [("json_schema", 200)]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("json_schema", {"type": "json_schema"}),
        ("llama.cpp", {"type": "json_object", "schema": SCHEMA}),
        ("json_object", {"type": "json_object"}),
        ("text", None),
    ],
)
def test_an_explicit_json_mode_is_sent_as_chosen(mode, expected):
    with ScriptedLLMServer([ANSWER]) as server:
        llm = make_llm(server, json_mode=mode)
        assert llm.json_mode == mode
        assert llm.complete_json("q", SCHEMA).mode == mode
        sent = server.chat_requests[0].response_format
        if expected is None:
            assert sent is None
        else:
            assert {k: sent[k] for k in expected} == expected


def test_an_explicit_mode_the_endpoint_refuses_fails_at_once_and_names_the_choices():
    with ScriptedLLMServer([ANSWER], family="llama-cpp-python") as server:
        llm = make_llm(server, json_mode="json_schema")
        with pytest.raises(LLMRequestError) as err:
            llm.complete_json("q", SCHEMA)
        assert server.request_count == 1  # not retried, no other mode tried
        assert "json_mode='json_schema' was refused" in str(err.value)
        assert "json_mode='auto'" in str(err.value) and "'llama.cpp'" in str(err.value)
        assert server.pending == 1


def test_json_mode_is_validated_with_the_choices():
    with pytest.raises(ValueError, match="json_mode must be one of 'auto', 'json_schema', 'llama.cpp', 'ollama', 'json_object', 'text'"):
        LLM("m", base_url="http://127.0.0.1:9/v1", api_key="k", json_mode="grammar")
    llm = LLM("m", base_url="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(ValueError, match="got 'JSON'"):
        llm.json_mode = "JSON"
    assert llm.json_mode == "auto"


def test_optoprime_on_llama_cpp_python_spends_two_requests_once_then_one_per_step():
    reply = json.dumps({"reasoning": "shorter", "suggestion": {"greeting": "Hi"}})
    with ScriptedLLMServer([reply, reply], family="llama-cpp-python") as server:
        greeting = trace.node("Hello there", name="greeting", trainable=True)
        opt = OptoPrime([greeting], llm=make_llm(server))
        changed = []
        for _ in range(2):
            opt.zero_feedback()
            opt.backward(echo(greeting), "too long")
            changed.append(opt.step().applied)
        assert changed == [{"greeting": ("Hello there", "Hi")}, {}]
        assert formats_sent(server) == [("json_schema", 500), ("json_object", 200), ("json_object", 200)]
        assert server.chat_requests[2].response_format["schema"] == REPLY_SCHEMA


# --------------------------------------------------------------------------- context overflow
def long_prompt(tokens: int) -> str:
    return "word " * (tokens * 4 // 5)  # the scripted server counts ~4 characters a token


@pytest.mark.parametrize(
    ("family", "flag", "status_type"),
    [
        ("llama.cpp", "--ctx-size", "exceed_context_size_error"),
        ("llama-cpp-python", "--n_ctx", "invalid_request_error"),
        ("vllm", "--max-model-len", "BadRequestError"),
        ("openai", "--max-model-len", "invalid_request_error"),  # (local: every flag named)
    ],
)
def test_a_prompt_over_the_context_is_a_context_overflow_never_retried(family, flag, status_type):
    with ScriptedLLMServer([ANSWER], family=family, context_size=1000) as server:
        llm = make_llm(server)
        with pytest.raises(ContextOverflow) as err:
            llm.complete_json(long_prompt(1500), SCHEMA, max_tokens=256)
        spent = [r.status for r in server.chat_requests]
        # never retried (llama-cpp-python first refuses json_schema, then the prompt)
        assert spent == ([500, 400] if family == "llama-cpp-python" else [400])
        assert server.pending == 1
        exc = err.value
        assert isinstance(exc, LLMRequestError) and exc.status_code == 400
        assert exc.context_size == 1000 and llm.context_size == 1000
        assert exc.prompt_tokens is not None and exc.prompt_tokens > 1000
        assert json.loads(server.chat_requests[-1].response)["error"]["type"] == status_type
        text = str(exc)
        assert f"{exc.prompt_tokens} prompt tokens" in text and "context of 1000 tokens" in text
        assert "max_tokens=256" in text
        assert flag in text and "batch_size" in text and "Not retried" in text


def test_vllm_refuses_a_prompt_that_fits_when_max_tokens_does_not_and_says_so():
    with ScriptedLLMServer([ANSWER], family="vllm", context_size=1000) as server:
        llm = make_llm(server)
        with pytest.raises(ContextOverflow) as err:
            llm.complete_json(long_prompt(800), SCHEMA, max_tokens=512)
        assert "'max_tokens' or 'max_completion_tokens' is too large: 512" in str(err.value)
        assert "a smaller max_tokens" in str(err.value)
        assert err.value.context_size == 1000 and server.request_count == 1


def test_a_prompt_within_the_context_goes_through():
    with ScriptedLLMServer([ANSWER], family="llama.cpp", context_size=1000) as server:
        assert make_llm(server).complete_json(long_prompt(600), SCHEMA).mode == "json_schema"


def test_an_unknown_family_overflow_names_every_servers_flag():
    with ScriptedLLMServer(
        [Reply.error(400, "This model's maximum context length is 2048 tokens. However, your messages resulted in 3000 tokens.")]
    ) as server:
        with pytest.raises(ContextOverflow) as err:
            make_llm(server).complete("q")
        text = str(err.value)
        assert all(f in text for f in ("--ctx-size", "--n_ctx", "--max-model-len", "OLLAMA_CONTEXT_LENGTH"))
        assert err.value.prompt_tokens == 3000 and err.value.context_size == 2048


def test_ollama_cutting_a_prompt_silently_is_logged_with_the_setting_to_raise(caplog):
    with ScriptedLLMServer([ANSWER, ANSWER, ANSWER], family="ollama", context_size=2048) as server:
        llm = make_llm(server)
        with caplog.at_level(logging.WARNING, logger="opto_adapters.llm"):
            llm.complete("hello")  # recognised as Ollama
            llm.complete(long_prompt(2000))  # fits: nothing said
            assert not caplog.records
            llm.complete(long_prompt(4000))
        assert server.chat_requests[2].response["usage"]["prompt_tokens"] == 2048
        (warning,) = caplog.records
        assert "OLLAMA_CONTEXT_LENGTH" in warning.getMessage() and "num_ctx" in warning.getMessage()


def test_the_optimizer_records_an_overflow_as_a_failed_request_with_the_advice():
    with ScriptedLLMServer([], family="llama.cpp", context_size=300) as server:
        value = trace.node("x" * 3000, name="doc", trainable=True)
        opt = OptoPrime([value], llm=make_llm(server))
        opt.backward(echo(value), "shorter")
        record = opt.step()
        assert record.proposal.unanswered and isinstance(record.proposal.cause, ContextOverflow)
        assert "--ctx-size" in record.error and not record.changed
        assert server.request_count == 1


# --------------------------------------------------------------------------- context pre-check
def test_the_pre_check_reads_llama_server_props_and_refuses_before_sending():
    with ScriptedLLMServer([ANSWER, ANSWER], family="llama.cpp", context_size=1000) as server:
        llm = make_llm(server, check_context=True)
        with pytest.raises(ContextOverflow) as err:
            llm.complete(long_prompt(1200))
        assert [r.path for r in server.requests] == ["/props"]  # no chat request sent
        assert err.value.estimated and err.value.context_size == 1000 and err.value.attempts == 0
        assert "not sent" in str(err.value) and "--ctx-size" in str(err.value)
        assert llm.complete("short") == ANSWER
        assert [r.path for r in server.requests] == ["/props", "/v1/chat/completions"]  # asked once
        assert llm.context_size == 1000 and llm.server_family == "llama.cpp"


def test_the_pre_check_reads_vllm_max_model_len_and_counts_the_reply():
    with ScriptedLLMServer([ANSWER], family="vllm", context_size=1000) as server:
        llm = make_llm(server, check_context=True)
        with pytest.raises(ContextOverflow, match="max_tokens=600"):
            llm.complete(long_prompt(600), max_tokens=600)
        assert not server.chat_requests
        assert llm.complete(long_prompt(600), max_tokens=100) == ANSWER


def test_the_pre_check_sends_as_usual_where_no_context_is_published():
    with ScriptedLLMServer([ANSWER], family="ollama") as server:
        llm = make_llm(server, check_context=True)
        assert llm.complete(long_prompt(20_000)) == ANSWER
        assert [r.path for r in server.requests] == ["/props", "/v1/models", "/v1/chat/completions"]
        assert llm.context_size is None


# --------------------------------------------------------------------------- truncated replies
CUT = '{"reasoning": "make it shorter", "suggestion": {"greeting": {"text": "Hi"}, "other": "unfinish'


def test_a_cut_reply_is_never_mined_for_a_nested_object():
    with ScriptedLLMServer([Reply.text(CUT, finish_reason="length")]) as server:
        with pytest.raises(LLMResponseError) as err:
            make_llm(server).complete_json("q", SCHEMA, max_tokens=40)
        assert err.value.finish_reason == "length"
        assert "cut at max_tokens=40" in str(err.value) and "raise max_tokens" in str(err.value)


def test_a_cut_reply_whose_top_level_object_closed_is_used_and_flagged():
    text = 'Sure: {"answer": "done", "score": 2} and then I went on to expl'
    with ScriptedLLMServer([Reply.text(text, finish_reason="length")]) as server:
        result = make_llm(server).complete_json("q", SCHEMA, max_tokens=40)
        assert result.data == {"answer": "done", "score": 2}
        assert result.truncated and result.finish_reason == "length"


def test_a_complete_reply_is_still_mined_leniently():
    text = 'Thoughts {"note": "aside"'  # an unclosed object, then the real one
    with ScriptedLLMServer([text + ' and {"answer": "inner"}']) as server:
        result = make_llm(server).complete_json("q", SCHEMA)
        assert result.data == {"answer": "inner"} and not result.truncated


@pytest.mark.parametrize("optimizer_class", [OptoPrime, OPRO])
def test_the_optimizer_flags_a_cut_reply_and_changes_nothing(optimizer_class):
    with ScriptedLLMServer([Reply.text(CUT, finish_reason="length")]) as server:
        greeting = trace.node("Hello there", name="greeting", trainable=True)
        other = trace.node("x", name="other", trainable=True)
        opt = optimizer_class([greeting, other], llm=make_llm(server), max_tokens=64)
        opt.backward(join(greeting, other), Feedback_or_text())
        record = opt.step()
        proposal = record.proposal
        assert proposal.truncated and not proposal.values and not proposal.rejected
        assert "cut at max_tokens=64" in proposal.error and "OptoPrime(max_tokens=128)" in proposal.error
        assert proposal.raw == CUT
        assert greeting.value == "Hello there" and other.value == "x"
        assert server.chat_requests[0].body["max_tokens"] == 64


def Feedback_or_text():  # noqa: N802 - reads as the argument it is
    return trace.Feedback(score=0.2, text="too long")


# --------------------------------------------------------------------------- reply by example
def test_the_prompts_show_an_example_reply_with_the_real_names_not_the_schema():
    template = trace.node("Answer: {question}", name="qa_template", trainable=True)
    temperature = trace.node(0.7, name="temperature", trainable=True)
    out = join(template, temperature)
    for optimizer_class in (OptoPrime, OPRO):
        opt = optimizer_class([template, temperature], llm=None)
        opt.backward(out, trace.Feedback(score=0.5, text="vague"))
        user = opt.messages()[-1]["content"]
        example = json.loads(user.split("like this example: ", 1)[1].split("\n", 1)[0])
        assert example["suggestion"] == {"qa_template": PLACEHOLDER_TEXT, "temperature": 0.7}
        assert set(example) == {"reasoning", "suggestion"}
        assert "Schema" not in user and '"properties"' not in user and '"required"' not in user
        opt.zero_feedback()


def test_a_reply_that_copies_the_example_placeholder_is_refused_and_the_rest_kept():
    reply = json.dumps({"reasoning": "r", "suggestion": {"qa_template": PLACEHOLDER_TEXT, "temperature": 0.2}})
    with ScriptedLLMServer([reply]) as server:
        template = trace.node("Answer: {question}", name="qa_template", trainable=True)
        temperature = trace.node(0.7, name="temperature", trainable=True)
        opt = OptoPrime([template, temperature], llm=make_llm(server))
        opt.backward(join(template, temperature), "vague")
        record = opt.step()
        assert record.applied == {"temperature": (0.7, 0.2)}
        assert "placeholder" in record.rejected["qa_template"]
        assert template.value == "Answer: {question}"
        assert "JSON" in server.chat_requests[0].prompt  # the instruction is the prompt's own


# --------------------------------------------------------------------------- deadline
def test_a_deadline_already_passed_sends_nothing(scripted_llm):
    llm = make_llm(scripted_llm, deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded) as err:
        llm.complete("q")
    assert isinstance(err.value, LLMRequestError)
    assert err.value.attempts == 0 and "before any request was sent" in str(err.value)
    assert scripted_llm.request_count == 0


def test_a_slow_request_stops_at_the_deadline_not_at_the_timeout(scripted_llm):
    scripted_llm.script(Reply.delay(3.0, "late"))
    llm = make_llm(scripted_llm, timeout=30.0, max_retries=3)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded) as err:
        llm.complete("q", deadline=start + 0.5)
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 2.5
    assert err.value.attempts == 1 and scripted_llm.request_count == 1  # no retry past it
    assert "--time-limit" in str(err.value)


def test_retries_never_wait_past_the_deadline(scripted_llm):
    scripted_llm.script(Reply.error(503), Reply.error(503), "late")
    llm = make_llm(scripted_llm, backoff_base=5.0, max_backoff=5.0)
    llm.deadline = time.monotonic() + 1.0
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="after 1 attempt"):
        llm.complete("q")
    assert time.monotonic() - start < 1.0  # the 2.5-5 s backoff would end past it: stop now
    assert scripted_llm.request_count == 1


def test_retries_within_the_deadline_still_happen(scripted_llm):
    scripted_llm.script(Reply.error(503), "fine")
    llm = make_llm(scripted_llm, deadline=time.monotonic() + 30)
    assert llm.complete("q") == "fine" and llm.usage.retries == 1


def test_the_optimizer_passes_its_deadline_and_records_the_failure(scripted_llm):
    greeting = trace.node("Hello", name="greeting", trainable=True)
    opt = OptoPrime([greeting], llm=make_llm(scripted_llm))
    opt.deadline = time.monotonic() - 0.1
    opt.backward(echo(greeting), "shorter")
    record = opt.step()
    assert isinstance(record.proposal.cause, DeadlineExceeded) and record.proposal.unanswered
    assert "deadline" in record.error and scripted_llm.request_count == 0


def test_json_mode_and_the_context_check_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPTO_JSON_MODE", "llama.cpp")
    monkeypatch.setenv("OPTO_CHECK_CONTEXT", "1")
    with ScriptedLLMServer([ANSWER], family="llama.cpp", context_size=4096) as server:
        llm = make_llm(server)
        assert llm.json_mode == "llama.cpp" and llm.check_context
        assert llm.complete_json("q", SCHEMA).mode == "llama.cpp"
        assert [r.path for r in server.requests] == ["/props", "/v1/chat/completions"]
        assert make_llm(server, json_mode="text", check_context=False).json_mode == "text"
    monkeypatch.setenv("OPTO_JSON_MODE", "schema")
    with pytest.raises(ValueError, match=r"\$OPTO_JSON_MODE: json_mode must be one of"):
        LLM("m", base_url="http://127.0.0.1:9/v1", api_key="k")
