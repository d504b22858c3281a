"""``AsyncLLM`` and ``Optimizer.apropose/astep`` through the real ``openai.AsyncOpenAI`` client
against the scripted server (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import time

import openai
import pytest

from opto_adapters import AsyncLLM as TopLevelAsyncLLM
from opto_adapters.llm import (
    LLM,
    AsyncLLM,
    Budget,
    BudgetExceeded,
    DeadlineExceeded,
    LLMError,
    LLMRequestError,
    LLMResponseError,
)
from opto_adapters.optimizers import OPRO, OptoPrime
from opto_adapters.testing import Reply, ScriptedLLMServer
from opto_adapters.trace import bundle, node

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPTO_MODEL", "OPTO_JSON_MODE", "OPTO_CHECK_CONTEXT"):
        monkeypatch.delenv(name, raising=False)


def make_async(server: ScriptedLLMServer, **kw) -> AsyncLLM:
    kw.setdefault("model", "test-model")
    kw.setdefault("api_key", "sk-test")
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff_base", 0.001)
    return AsyncLLM(base_url=server.base_url, **kw)


def make_sync(server: ScriptedLLMServer, **kw) -> LLM:
    kw.setdefault("model", "test-model")
    kw.setdefault("api_key", "sk-test")
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff_base", 0.001)
    return LLM(base_url=server.base_url, **kw)


# --------------------------------------------------------------------------- the client
def test_exported_from_the_package_and_built_on_the_async_openai_client(scripted_llm):
    assert TopLevelAsyncLLM is AsyncLLM
    llm = make_async(scripted_llm)
    assert isinstance(llm._client, openai.AsyncOpenAI)
    assert repr(llm).startswith("AsyncLLM(model='test-model'")


async def test_complete_sends_the_request_and_counts_the_servers_tokens(scripted_llm):
    scripted_llm.script(Reply.text("Paris", prompt_tokens=11, completion_tokens=2))
    llm = make_async(scripted_llm, temperature=0.3)
    assert await llm.complete("Capital of France?", max_tokens=5) == "Paris"
    body = scripted_llm.last_request.body
    assert body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert body["model"] == "test-model" and body["temperature"] == 0.3 and body["max_tokens"] == 5
    usage = llm.usage
    assert (usage.calls, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1, 11, 2, 13)
    assert (usage.requests, usage.retries) == (1, 0)


async def test_sync_and_async_clients_send_the_same_requests(scripted_llm):
    """One request logic: the same calls give byte-for-byte the same request bodies."""
    calls = [
        ("complete", ("hi",), {"max_tokens": 7, "seed": 3}),
        ("complete_json", ("give json", SCHEMA), {"schema_name": "answer", "strict": True}),
        ("complete_json", ([{"role": "system", "content": "sys"}, {"role": "user", "content": "u"}],), {}),
    ]
    replies = ["plain", '{"answer": "a"}', '{"x": 1}']
    scripted_llm.script(*replies)
    sync = make_sync(scripted_llm, temperature=0.1)
    sync_out = [getattr(sync, name)(*args, **kw) for name, args, kw in calls]
    sync_bodies = [r.body for r in scripted_llm.chat_requests]
    scripted_llm.clear()
    scripted_llm.script(*replies)
    allm = make_async(scripted_llm, temperature=0.1)
    async_out = [await getattr(allm, name)(*args, **kw) for name, args, kw in calls]
    assert [r.body for r in scripted_llm.chat_requests] == sync_bodies
    assert async_out[0] == sync_out[0] == "plain"
    assert async_out[1].data == sync_out[1].data == {"answer": "a"}
    assert async_out[2].mode == sync_out[2].mode == "json_object"  # no schema: json_object
    assert allm.usage == sync.usage


# --------------------------------------------------------------------------- retries
async def test_retries_500_and_429_then_succeeds(scripted_llm):
    scripted_llm.script(Reply.error(500), Reply.error(429, retry_after=0), "finally")
    llm = make_async(scripted_llm, max_retries=3)
    assert await llm.complete("x") == "finally"
    assert len(scripted_llm.chat_requests) == 3
    usage = llm.usage
    assert (usage.calls, usage.requests, usage.retries) == (1, 3, 2)


async def test_retries_exhausted_raise_with_the_attempts(scripted_llm):
    scripted_llm.script(Reply.error(503), Reply.error(503), Reply.error(503))
    llm = make_async(scripted_llm, max_retries=2)
    with pytest.raises(LLMRequestError, match="after 3 attempt") as info:
        await llm.complete("x")
    assert info.value.attempts == 3 and info.value.status_code == 503
    assert len(scripted_llm.chat_requests) == 3 and llm.usage.calls == 0


async def test_a_client_error_is_not_retried(scripted_llm):
    scripted_llm.script(Reply.error(400, "bad thing"), "never sent")
    llm = make_async(scripted_llm, max_retries=3)
    with pytest.raises(LLMRequestError, match="bad thing") as info:
        await llm.complete("x")
    assert info.value.status_code == 400 and info.value.attempts == 1
    assert scripted_llm.pending == 1


async def test_a_timeout_is_retried(scripted_llm):
    scripted_llm.script(Reply.delay(2.0, "too late"), "in time")
    llm = make_async(scripted_llm, timeout=0.3, max_retries=1)
    assert await llm.complete("x") == "in time"
    assert llm.usage.retries == 1


# --------------------------------------------------------------------------- budget
async def test_budget_refuses_the_call_after_the_last_one_without_sending(scripted_llm):
    scripted_llm.script("one", "two")
    budget = Budget(max_calls=1)
    llm = make_async(scripted_llm, budget=budget)
    assert await llm.complete("a") == "one"
    with pytest.raises(BudgetExceeded, match="max_calls=1"):
        await llm.complete("b")
    assert len(scripted_llm.chat_requests) == 1 and scripted_llm.pending == 1


async def test_token_budget_is_shared_with_a_sync_client(scripted_llm):
    scripted_llm.script(Reply.text("a", prompt_tokens=60, completion_tokens=10), "never")
    budget = Budget(max_tokens=50)
    sync, allm = make_sync(scripted_llm, budget=budget), make_async(scripted_llm, budget=budget)
    assert sync.complete("first") == "a"  # the call that crosses max_tokens completes
    assert budget.tokens_used == 70
    with pytest.raises(BudgetExceeded, match="token budget"):
        await allm.complete("second")
    assert len(scripted_llm.chat_requests) == 1


async def test_budget_under_200_concurrent_calls_never_sends_more_than_max_calls(scripted_llm):
    """A call counts against ``max_calls`` from the moment it is sent (in flight), so 200
    calls at once on a budget of 50 send exactly 50 and refuse 150."""
    scripted_llm.set_default(Reply.delay(0.05, "ok"))
    budget = Budget(max_calls=50)
    llm = make_async(scripted_llm, budget=budget)
    results = await asyncio.gather(*(llm.complete(f"q{i}") for i in range(200)), return_exceptions=True)
    answered = [r for r in results if r == "ok"]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(answered), len(refused)) == (50, 150)
    assert len(scripted_llm.chat_requests) == 50
    assert budget.calls_used == 50 and budget.remaining_calls == 0 and llm.usage.calls == 50


async def test_failed_and_cancelled_calls_give_their_reservation_back(scripted_llm):
    budget = Budget(max_calls=1)
    llm = make_async(scripted_llm, budget=budget, max_retries=0)
    scripted_llm.script(Reply.error(400))
    with pytest.raises(LLMRequestError):
        await llm.complete("fails")
    assert budget.remaining_calls == 1
    scripted_llm.script(Reply.delay(3.0, "slow"))
    task = asyncio.create_task(llm.complete("cancelled"))
    while not scripted_llm.chat_requests[1:]:  # wait until the request is on the wire
        await asyncio.sleep(0.01)
    assert budget.remaining_calls == 0  # in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.remaining_calls == 1 and budget.calls_used == 0


# --------------------------------------------------------------------------- JSON fallbacks
async def test_json_falls_back_from_a_refused_json_schema_and_remembers():
    with ScriptedLLMServer(['{"answer": "a"}', '{"answer": "b"}'], family="llama-cpp-python") as server:
        llm = make_async(server)
        first = await llm.complete_json("q", SCHEMA)
        assert first.data == {"answer": "a"} and first.mode == "llama.cpp"
        kinds = [r.response_format for r in server.chat_requests]
        assert kinds[0]["type"] == "json_schema"  # refused with HTTP 500, not retried
        assert kinds[1] == {"type": "json_object", "schema": SCHEMA}
        assert "json_schema" in llm.unsupported_modes and llm.active_json_mode == "llama.cpp"
        second = await llm.complete_json("q", SCHEMA)
        assert second.data == {"answer": "b"}
        assert len(server.chat_requests) == 3  # straight to the mode that worked
        assert llm.usage.calls == 2


async def test_json_falls_back_to_text_with_an_instruction_when_no_format_is_accepted():
    with ScriptedLLMServer(
        ['Sure! ```json\n{"answer": "c",}\n```'], supports_json_schema=False, supports_json_object=False
    ) as server:
        llm = make_async(server)
        result = await llm.complete_json("q", SCHEMA)
        assert result.data == {"answer": "c"} and result.mode == "text"
        formats = [r.response_format_type for r in server.chat_requests]
        assert formats == ["json_schema", "json_object", None]
        assert "Respond with a single JSON object" in server.chat_requests[-1].prompt


async def test_an_explicit_mode_that_is_refused_is_an_error():
    with ScriptedLLMServer(supports_json_schema=False) as server:
        llm = make_async(server, json_mode="json_schema")
        with pytest.raises(LLMRequestError, match="json_mode='json_schema' was refused"):
            await llm.complete_json("q", SCHEMA)
        assert len(server.chat_requests) == 1


async def test_a_reply_without_json_raises_with_the_raw_text(scripted_llm):
    scripted_llm.script("no json here")
    llm = make_async(scripted_llm)
    with pytest.raises(LLMResponseError) as info:
        await llm.complete_json("q", SCHEMA)
    assert info.value.raw_text == "no json here"


# --------------------------------------------------------------------------- deadline
async def test_deadline_stops_a_slow_request(scripted_llm):
    scripted_llm.script(Reply.delay(3.0, "late"), "never")
    llm = make_async(scripted_llm, timeout=10.0, max_retries=3)
    with pytest.raises(DeadlineExceeded) as info:
        await llm.complete("x", deadline=time.monotonic() + 0.3)
    assert info.value.attempts == 1 and scripted_llm.pending == 1


async def test_a_passed_deadline_sends_nothing(scripted_llm):
    scripted_llm.script("never")
    llm = make_async(scripted_llm, deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded, match="before any request was sent") as info:
        await llm.complete("x")
    assert info.value.attempts == 0 and scripted_llm.chat_requests == []


# --------------------------------------------------------------------------- concurrency
async def test_200_concurrent_requests_are_all_answered_and_counted_exactly(scripted_llm):
    def echo(body):
        prompt = body["messages"][-1]["content"]
        n = int(prompt[1:])
        return Reply.text(f"answer {n}", prompt_tokens=n + 1, completion_tokens=2)

    scripted_llm.set_default(echo)
    llm = make_async(scripted_llm, timeout=30.0)
    results = await asyncio.gather(*(llm.complete(f"q{i}") for i in range(200)))
    assert results == [f"answer {i}" for i in range(200)]
    usage = llm.usage
    assert usage.calls == 200 and usage.requests == 200 and usage.retries == 0
    assert usage.prompt_tokens == sum(i + 1 for i in range(200)) and usage.completion_tokens == 400
    assert len(scripted_llm.chat_requests) == 200


# --------------------------------------------------------------------------- lifecycle and copies
async def test_async_with_closes_and_the_client_refuses_afterwards(scripted_llm):
    scripted_llm.script("hello")
    async with make_async(scripted_llm) as llm:
        assert await llm.complete("hi") == "hello"
    assert llm._client.is_closed()
    with pytest.raises(LLMError, match="was closed; create a new AsyncLLM"):
        await llm.complete("again")


async def test_deepcopy_shares_the_client_and_pickle_rebuilds_an_async_one(scripted_llm):
    scripted_llm.script("a", "b")
    llm = make_async(scripted_llm)
    twin = copy.deepcopy(llm)
    assert twin._client is llm._client and await twin.complete("x") == "a"
    back = pickle.loads(pickle.dumps(llm))
    assert isinstance(back._client, openai.AsyncOpenAI) and back.base_url == llm.base_url
    assert await back.complete("y") == "b"


# --------------------------------------------------------------------------- optimizers
@bundle()
def fill(template, question):
    """Fill the question into the template."""
    return template.format(question=question)


@bundle()
def cut_words(prompt, max_words):
    """A stand-in model: the prompt cut to max_words words."""
    return " ".join(prompt.split()[: int(max_words)])


def toy_program():
    template = node("Question: {question}", name="qa_template", trainable=True, kind="prompt")
    max_words = node(3, name="max_words", trainable=True, bounds=(1, 50))
    out = cut_words(fill(template, "What is 2+2?"), max_words)
    return [template, max_words], out


REPLY = json.dumps(
    {"reasoning": "cut off", "suggestion": {"qa_template": "Q: {question} A:", "max_words": 10}}
)


async def test_astep_writes_the_same_values_as_step_for_the_same_reply(scripted_llm):
    scripted_llm.script(REPLY, REPLY)
    results = []
    for mode in ("sync", "async"):
        params, out = toy_program()
        if mode == "sync":
            opt = OptoPrime(params, make_sync(scripted_llm))
            opt.backward(out, "The answer is cut off.")
            record = opt.step()
        else:
            opt = OptoPrime(params, make_async(scripted_llm))
            opt.backward(out, "The answer is cut off.")
            record = await opt.astep()
        results.append((record.applied, [p.value for p in params], record.proposal.messages, opt.memory))
    (sync_applied, sync_values, sync_messages, sync_memory), (a_applied, a_values, a_messages, a_memory) = results
    assert sync_applied == a_applied == {
        "qa_template": ("Question: {question}", "Q: {question} A:"),
        "max_words": (3, 10),
    }
    assert sync_values == a_values == ["Q: {question} A:", 10]
    assert sync_messages == a_messages  # the same prompt, built once for both paths
    first, second = scripted_llm.chat_requests
    assert first.body == second.body
    assert list(sync_memory) == list(a_memory) and len(a_memory) == 1


async def test_astep_with_a_sync_llm_runs_its_call_in_a_thread(scripted_llm):
    scripted_llm.script(Reply.delay(0.3, REPLY))
    params, out = toy_program()
    opt = OptoPrime(params, make_sync(scripted_llm))
    opt.backward(out, "The answer is cut off.")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(ticker())
    record = await opt.astep()
    beat.cancel()
    assert record.applied["max_words"] == (3, 10)
    assert ticks > 3  # the loop kept running while the blocking call waited in its thread


async def test_step_with_an_async_llm_says_to_await(scripted_llm):
    params, out = toy_program()
    opt = OptoPrime(params, make_async(scripted_llm))
    opt.backward(out, "The answer is cut off.")
    with pytest.raises(TypeError, match="await optimizer.astep"):
        opt.step()
    assert scripted_llm.chat_requests == [] and params[1].value == 3


async def test_astep_records_a_failed_request_and_raises_a_spent_budget(scripted_llm):
    params, out = toy_program()
    scripted_llm.script(Reply.error(400, "nope"))
    opt = OptoPrime(params, make_async(scripted_llm, budget=Budget(max_calls=1)))
    opt.backward(out, "The answer is cut off.")
    record = await opt.astep()
    assert record.proposal.unanswered and "nope" in record.error and not record.applied
    assert opt.records == [record]
    scripted_llm.script(REPLY)
    record = await opt.astep()  # the failed call was not charged: this one is sent
    assert record.applied["max_words"] == (3, 10)
    with pytest.raises(BudgetExceeded):
        await opt.astep()


async def test_opro_astep_matches_step(scripted_llm):
    suggestion = json.dumps({"reasoning": "r", "suggestion": {"max_words": 7}})
    scripted_llm.script(suggestion, suggestion)
    values, prompts = [], []
    for use_async in (False, True):
        params, out = toy_program()
        llm = make_async(scripted_llm) if use_async else make_sync(scripted_llm)
        opt = OPRO(params, llm)
        opt.backward(out, 0.25)
        record = await opt.astep() if use_async else opt.step()
        values.append([p.value for p in params])
        prompts.append(record.proposal.messages)
        assert len(opt.history) == 1
    assert values[0] == values[1] == ["Question: {question}", 7]
    assert prompts[0] == prompts[1]


async def test_the_context_check_probes_once_and_refuses_without_sending():
    from opto_adapters.llm import ContextOverflow

    with ScriptedLLMServer(["short answer"], family="llama.cpp", context_size=100) as server:
        llm = make_async(server, check_context=True)
        assert await llm.complete("a short prompt") == "short answer"
        with pytest.raises(ContextOverflow, match="not sent") as info:
            await llm.complete("x" * 2000)
        assert info.value.context_size == 100 and info.value.estimated
        assert [r.path for r in server.requests] == ["/props", "/v1/chat/completions"]
        assert llm.context_size == 100 and llm.server_family == "llama.cpp"
