"""Every recipe: --dry-run offline, a clear stop without an endpoint, and one short epoch end
to end with both the app model and the optimizer on the scripted OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opto_adapters import cli
from opto_adapters.testing import Reply
from opto_adapters.train.store import Store

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
DATA = RECIPES / "data"

# what each dry run must show: the trainable parameters the recipe tunes
PARAMETERS = {
    "trace_python": ["parse_price_code"],
    "rag_prompt_tuning": ["response_synthesizer.text_qa_template"],
    "langchain_qa": ["prompt.system", "prompt.human"],
    "tool_agent": ["agent.system_prompt", "tool.shipping_cost", "tool.convert_currency"],
}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.py") if p.stem != "common")


def test_every_recipe_is_covered():
    assert recipe_names() == sorted(PARAMETERS)


@pytest.fixture
def endpoint(scripted_llm, monkeypatch):
    for key, value in scripted_llm.env(model="opt-model").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OPTO_APP_MODEL", "app-model")
    return scripted_llm


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_dry_run_shows_trace_and_prompt_and_calls_no_model(name, endpoint, capsys):
    code = cli.main(["optimize", str(RECIPES / f"{name}.py"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    trace, prompt = out.split("traced graph:", 1)[1].split("the optimizer prompt that would be sent:")
    for param in PARAMETERS[name]:
        assert param in trace
        assert f") {param}=" in prompt  # a #Variables line
    for section in ("#Code", "#Variables", "#Outputs", "#Feedback"):
        assert section in prompt
    assert endpoint.request_count == 0


def test_recipe_runs_as_a_script(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    script = str(RECIPES / "trace_python.py")
    dry = subprocess.run([sys.executable, script, "--dry-run"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "(code) parse_price_code=def parse_price(text):" in dry.stdout
    real = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert real.returncode == 2
    assert "OPENAI_API_KEY" in real.stderr and "OPENAI_BASE_URL" in real.stderr
    assert "Ollama" in real.stderr and "--dry-run" in real.stderr


# -- one short epoch against the scripted server ---------------------------------------------

MARK = "Reply with the bare answer ONLY."
GOOD_PARSER = '''def parse_price(text):
    """Return the price in `text` as a float (0.0 when the item is free)."""
    import re
    if "free" in text.lower():
        return 0.0
    if "each" in text:
        text = text.split("each", 1)[1]
    number = re.search(r"\\d[\\d.,]*", text).group(0)
    if "," in number and ("." not in number or number.rfind(",") > number.rfind(".")):
        number = number.replace(".", "").replace(",", ".")
    return float(number.replace(",", ""))
'''


def answers(name: str) -> dict[str, str]:
    data = json.loads((DATA / name).read_text())
    key = "task" if "task" in data["train"][0] else "question"
    return {ex[key]: ex["answer"] for split in ("train", "val") for ex in data[split]}


def optimizer_reply(values: dict) -> str:
    return json.dumps({"reasoning": "scripted", "suggestion": values})


def chat(message: dict) -> Reply:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "app-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return Reply.raw(json.dumps(body))


def text_of(body: dict) -> str:
    parts = []
    for m in body["messages"]:
        content = m.get("content") or ""
        parts.append(content if isinstance(content, str) else " ".join(c.get("text", "") for c in content))
    return "\n".join(parts)


def qa_app(table: dict[str, str]):
    """A model that answers tersely only when its prompt asks for the bare answer."""

    def reply(body: dict) -> str:
        text = text_of(body)
        question = next(q for q in table if q in text)
        if MARK in text:
            return table[question]
        return f"Good question! After thinking it through, I am fairly sure it is {table[question]}, as far as I know."

    return reply


def agent_app(body: dict) -> Reply:
    """Calls the tool the task needs; states the result only when told to."""
    messages = body["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    task = next(m["content"] for m in messages if m["role"] == "user")
    results = [m["content"] for m in messages if m["role"] == "tool"]
    calls = [c["function"]["name"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]

    def call(name: str, **args) -> Reply:
        fn = {"name": name, "arguments": json.dumps(args)}
        return chat({"role": "assistant", "content": None, "tool_calls": [{"id": f"call_{len(calls)}", "type": "function", "function": fn}]})

    if not results:
        if m := re.search(r"(\d+) kg parcel to zone (\w)", task):
            return call("shipping_cost", weight_kg=float(m.group(1)), zone=m.group(2))
        if m := re.search(r"Convert (\d+) (US dollars|euros) to", task):
            src, dst = ("USD", "EUR") if m.group(2) == "US dollars" else ("EUR", "USD")
            return call("convert_currency", amount=float(m.group(1)), from_currency=src, to_currency=dst)
        order = re.search(r"A-\d+", task).group(0)
        return call("order_status", order_id=order)
    if "in euros" in task and "convert_currency" not in calls:
        return call("convert_currency", amount=float(results[-1]), from_currency="USD", to_currency="EUR")
    if MARK in system:
        return chat({"role": "assistant", "content": f"The answer is {results[-1]}."})
    return chat({"role": "assistant", "content": "I looked it up for you."})


RAG_TEMPLATE = (
    "Context:\n{context_str}\nQuestion: {query_str}\n" + MARK + "\nAnswer: "
)
E2E = {
    "trace_python": (None, {"parse_price_code": GOOD_PARSER}),
    "rag_prompt_tuning": (qa_app(answers("northwind_qa.json")), {"response_synthesizer.text_qa_template": RAG_TEMPLATE}),
    "langchain_qa": (qa_app(answers("capitals_qa.json")), {"prompt.system": MARK}),
    "tool_agent": (agent_app, {"agent.system_prompt": f"You answer with tools. {MARK} State the figure."}),
}


@pytest.mark.parametrize("name", sorted(E2E))
def test_one_short_epoch_end_to_end(name, endpoint, tmp_path, capsys):
    app, suggestion = E2E[name]
    optimizer_prompts: list[str] = []

    def respond(body: dict):
        system = body["messages"][0].get("content") or ""
        if isinstance(system, str) and system.startswith("You improve the trainable"):
            optimizer_prompts.append(text_of(body))
            return optimizer_reply(suggestion)
        return app(body)

    endpoint.set_default(respond)
    store = tmp_path / "runs.sqlite"
    code = cli.main(["optimize", str(RECIPES / f"{name}.py"), "--epochs", "1", "--store", str(store), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert optimizer_prompts, "the optimizer was never asked"
    with Store(store, readonly=True) as db:
        run = db.latest_run()
        assert run.status == "completed", run.message
        candidates = db.candidates(run.id)
        assert any(c.status == "accepted" for c in candidates), [(c.status, c.reason, c.invalid) for c in candidates]
        best = db.version_values(run.best_version_id)
        baseline = db.version_values(run.baseline_version_id)
    for param, value in suggestion.items():
        assert best[param] == value and baseline[param] != value
    scores = dict(re.findall(r"^(baseline|best)\s+\S+\s+(\S+)$", out, flags=re.M))
    assert float(scores["best"]) > float(scores["baseline"]), out
    if app is not None:  # the app model was really called over HTTP by the framework's client
        app_requests = [r for r in endpoint.chat_requests if r.model == "app-model"]
        assert app_requests
        # issue 12: a reply limit on every app call, so a model that never stops cannot hold a run
        assert {r.body.get("max_tokens") for r in app_requests} == {512}


def test_the_app_models_limits_come_from_the_environment(endpoint, monkeypatch):
    from opto_adapters.train import RecipeError
    from opto_adapters.train.recipe import app_model, load_recipe

    monkeypatch.setenv("OPTO_APP_TIMEOUT", "7.5")
    monkeypatch.setenv("OPTO_APP_MAX_TOKENS", "33")
    cfg = app_model()
    assert (cfg.timeout, cfg.max_tokens, cfg.context_window) == (7.5, 33, 16_000)
    chain = load_recipe(RECIPES / "langchain_qa.py").build_app()
    model = chain.steps[1]
    assert model.request_timeout == 7.5 and model.max_retries == 1
    assert model.extra_body == {"max_tokens": 33}
    engine = load_recipe(RECIPES / "rag_prompt_tuning.py").build_app()
    llm = engine.target._response_synthesizer._llm  # the query engine the tracer wraps
    assert (llm.timeout, llm.max_tokens, llm.max_retries) == (7.5, 33, 1)
    monkeypatch.setenv("OPTO_APP_MAX_TOKENS", "lots")
    with pytest.raises(RecipeError, match="OPTO_APP_MAX_TOKENS='lots' must be a positive int"):
        app_model()
