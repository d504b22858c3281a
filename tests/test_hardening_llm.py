"""Issue 11, the LLM client's part: ``close()`` leaves the caller's own client alone, and
``import opto_adapters.optimizers`` does not import ``openai`` until a client is made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from opto_adapters.llm import LLM, LLMError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPTO_MODEL", "AZURE_OPENAI_API_KEY", "OPTO_JSON_MODE", "OPTO_CHECK_CONTEXT"):
        monkeypatch.delenv(name, raising=False)


def callers_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=5)


def ask(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content


# --------------------------------------------------------------------------- item 6: close
def test_closing_an_llm_leaves_the_callers_client_open(scripted_llm):
    scripted_llm.script("from the llm", "from the caller")
    client = callers_client(scripted_llm)
    llm = LLM("m", client=client)
    assert llm.complete("q") == "from the llm"
    llm.close()
    assert not client.is_closed()
    assert ask(client) == "from the caller"  # the caller's client still sends requests
    with pytest.raises(LLMError, match="was closed"):
        llm.complete("q")  # the LLM itself refuses, as before
    assert scripted_llm.request_count == 2


def test_the_with_form_leaves_the_callers_client_open(scripted_llm):
    scripted_llm.script("inside", "after")
    client = callers_client(scripted_llm)
    with LLM("m", client=client) as llm:
        assert llm.complete("q") == "inside"
    assert not client.is_closed()
    assert ask(client) == "after"


def test_closing_an_llm_closes_the_client_it_created(scripted_llm):
    scripted_llm.script("once")
    with LLM("m", base_url=scripted_llm.base_url, api_key="k") as llm:
        assert llm.complete("q") == "once"
        own = llm._client
    assert own.is_closed()


def test_closing_twice_is_harmless_and_still_spares_the_callers_client(scripted_llm):
    scripted_llm.script("after")
    client = callers_client(scripted_llm)
    llm = LLM("m", client=client)
    llm.close()
    llm.close()
    assert ask(client) == "after"


# --------------------------------------------------------------------------- lazy openai
def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    return set(done.stdout.split())


def test_importing_the_optimizers_does_not_import_openai():
    modules = imported_after("import opto_adapters.optimizers, opto_adapters.llm")
    assert "opto_adapters.optimizers.optoprime" in modules
    assert "openai" not in modules


def test_creating_a_client_imports_openai():
    modules = imported_after(
        "from opto_adapters.llm import LLM\nLLM('m', base_url='http://127.0.0.1:9/v1')"
    )
    assert "openai" in modules


# --------------------------------------------------------------------------- shared rules
def test_llama_index_tools_and_texts_follow_the_shared_rules():
    """LlamaIndex discovery refuses and explains exactly as ``opto_adapters.rules`` does (the
    LangChain adapter uses the same rules), so the two adapters tell the optimizer the same."""
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool

    from opto_adapters import rules
    from opto_adapters.llama_index import discover

    from .llama_index_fakes import ScriptedToolLLM

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    long = "Adds two integers. " * 70
    tools = [
        FunctionTool.from_defaults(add, name="add", description="Add two numbers."),
        FunctionTool.from_defaults(add, name="plus", description=long),
    ]
    agent = FunctionAgent(tools=tools, llm=ScriptedToolLLM(["ok"]), system_prompt="Be brief.")
    found = {p.name: p for p in discover(agent).parameters}
    for name, original in (("tool.add", "Add two numbers."), ("tool.plus", long)):
        param = found[name]
        assert param.constraint == rules.tool_description_constraint(original)
        for suggestion in ("", "x" * 1025, long + "x", 7, "Adds a and b."):
            assert param.validator(suggestion) == rules.tool_description_problem(
                suggestion, original
            )
    system = found["agent.system_prompt"]
    for suggestion in ("  ", "Be terse."):
        assert system.validator(suggestion) == rules.text_problem(suggestion, "Be brief.")


def test_an_overlong_tool_description_is_told_it_may_only_shrink():
    long = "y" * 1500
    assert rules_problem("y" * 1501, long).endswith("it may only get shorter")
    assert "may only" not in rules_problem("x" * 1025, "short")


def rules_problem(suggestion, original):
    from opto_adapters import rules

    return rules.tool_description_problem(suggestion, original)
