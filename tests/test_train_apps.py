"""Which tracer an app gets, and how a plain Python app is traced."""

import sys
import types

import pytest

from opto_adapters.trace import ExceptionNode, Module, bundle, node
from opto_adapters.train import AppError, PythonApp, as_tracer


class FakeTracer:
    def __init__(self, target):
        self.target = target
        self.parameters = []

    def run(self, input):
        raise NotImplementedError


@pytest.fixture
def fake_adapters(monkeypatch):
    """Stand-ins for opto_adapters.langchain / .llama_index (written in other branches)."""
    for name in ("opto_adapters.langchain", "opto_adapters.llama_index"):
        module = types.ModuleType(name)
        module.OptoTracer = type("OptoTracer", (FakeTracer,), {"framework": name})
        monkeypatch.setitem(sys.modules, name, module)


@bundle()
def shout(template, text):
    """Fill and upper-case."""
    return template.format(text=text).upper()


@bundle()
def fail(text):
    """Always fails."""
    raise KeyError(text)


def test_a_langchain_runnable_gets_the_langchain_tracer(fake_adapters):
    from langchain_core.runnables import RunnableLambda

    chain = RunnableLambda(lambda x: x)
    tracer = as_tracer(chain)
    assert tracer.framework == "opto_adapters.langchain" and tracer.target is chain


def test_a_llama_index_object_gets_the_llama_index_tracer(fake_adapters):
    engine_cls = type("QueryEngine", (), {"__module__": "llama_index.core.query_engine.fake", "__call__": lambda s, q: q})
    engine = engine_cls()
    tracer = as_tracer(engine)
    assert tracer.framework == "opto_adapters.llama_index" and tracer.target is engine


def test_a_missing_adapter_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "opto_adapters.llama_index", None)  # import fails
    engine = type("Agent", (), {"__module__": "llama_index.core.agent"})()
    with pytest.raises(AppError, match="the LlamaIndex adapter opto_adapters.llama_index could not be imported"):
        as_tracer(engine)


def test_tracers_are_used_as_is_and_plain_callables_are_wrapped():
    prompt = node("say {text}", name="prompt", trainable=True, kind="prompt")
    tracer = PythonApp(lambda t: shout(prompt, t), [prompt])
    assert as_tracer(tracer) is tracer
    with pytest.raises(TypeError, match="parameters= is for plain Python apps"):
        as_tracer(tracer, parameters=[prompt])

    class Shouter(Module):
        def __init__(self):
            self.prompt = node("say {text}", name="prompt", trainable=True, kind="prompt")

        def __call__(self, text):
            return shout(self.prompt, text)

    module = Shouter()
    wrapped = as_tracer(module)
    assert isinstance(wrapped, PythonApp) and wrapped.parameters == [module.prompt]
    run = wrapped.run("hi")
    assert run.output == "SAY HI" and run.error is None and run.graph.parameters == [module.prompt]
    with pytest.raises(TypeError, match="cannot train int"):
        as_tracer(42)


def test_a_python_app_never_raises_the_apps_exception():
    prompt = node("x", name="prompt", trainable=True)
    app = PythonApp(lambda t: fail(prompt), [prompt])
    run = app.run("boom")
    assert run.output is None and isinstance(run.error, KeyError)
    assert isinstance(run.graph.output, ExceptionNode) and run.graph.parameters == [prompt]

    def untraced(text):
        raise RuntimeError("outside any bundle")

    run = PythonApp(untraced, [prompt]).run("x")
    assert isinstance(run.error, RuntimeError) and run.graph.output.name == "app_error"
    assert "outside any bundle" in run.graph.output.error_text()
    assert app.last_graph is not None  # recorded like any tracer's runs


async def test_arun_runs_in_a_thread():
    prompt = node("say {text}", name="prompt", trainable=True, kind="prompt")
    run = await PythonApp(lambda t: shout(prompt, t), [prompt]).arun("async")
    assert run.output == "SAY ASYNC"
