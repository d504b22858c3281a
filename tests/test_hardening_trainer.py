"""Issue 11, the trainer's part: a run opens all at once or not at all (and a half-opened one
is repaired on resume); no app run sees its parameters change when training stops; an
optimizer built over another tracer of the same live objects is adopted; ``Trainer(...)``
does no work until it is used, and its settings are one ``TrainConfig``."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from llama_index.core import Document, VectorStoreIndex

from opto_adapters.langchain import OptoTracer as LangChainTracer
from opto_adapters.llama_index import OptoTracer as LlamaIndexTracer
from opto_adapters.llm import BudgetExceeded
from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import Feedback, bundle, node
from opto_adapters.train import AppError, GuideError, Store, TrainConfig, Trainer, optimize

from .langchain_fakes import RecordingChatModel
from .llama_index_fakes import RecordingLLM, WordEmbedding
from .train_apps import data, guide, improve_then_worsen, llm_for, make_app, reply

TRAIN, VAL = data(6), data(3, "v")


def train(app, server, store, **kw):
    return optimize(
        app, TRAIN, VAL, guide=guide, optimizer=OptoPrime([app.prompt], llm_for(server)),
        epochs=2, batch_size=2, max_concurrency=1, store=store, progress=False, **kw,
    )


def reference(server):
    app = make_app("Reply {q}")
    server.set_default(improve_then_worsen)
    result = train(app, server, Store())
    return app.prompt.value, result


# -- item 4: a run opens in one transaction ---------------------------------------------------


class _InterruptingConnection:
    """The store's connection, with Ctrl-C arriving when parameter version 0 is written
    (after the run row and its examples)."""

    def __init__(self, conn):
        self.conn = conn

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def __enter__(self):
        return self.conn.__enter__()

    def __exit__(self, *exc):
        return self.conn.__exit__(*exc)

    def execute(self, sql, *args):
        if sql.lstrip().upper().startswith("INSERT") and "INTO versions" in sql:
            raise KeyboardInterrupt
        return self.conn.execute(sql, *args)


def test_ctrl_c_while_a_run_opens_leaves_nothing_and_resume_starts_it_cleanly(scripted_llm, caplog):
    best_value, full = reference(scripted_llm)
    store = Store()
    real = store._conn
    store._conn = _InterruptingConnection(real)
    first = make_app("Reply {q}")
    with pytest.raises(KeyboardInterrupt):
        train(first, scripted_llm, store)
    store._conn = real
    assert store.runs() == []  # not a run row without its version 0
    assert real.execute("SELECT COUNT(*) FROM examples").fetchone()[0] == 0
    assert first.calls == []

    second = make_app("Reply {q}")
    with caplog.at_level(logging.WARNING, logger="opto_adapters.train"):
        resumed = train(second, scripted_llm, store, resume=True)
    assert "nothing to resume" in caplog.text
    assert resumed.status == "completed" and second.prompt.value == best_value == "ANSWER {q}!"
    assert (resumed.baseline, resumed.best, resumed.final) == (full.baseline, full.best, full.final)


def test_resume_repairs_a_run_an_older_version_left_half_opened(scripted_llm, tmp_path, caplog):
    path = str(tmp_path / "runs.sqlite")
    scripted_llm.set_default(improve_then_worsen)
    full = train(make_app("Reply {q}"), scripted_llm, path)
    with Store(path) as store:  # what an interrupted start used to leave: a row, some examples
        run_id = store.create_run(store.run(full.run_id).config, name="old")
        store.add_examples(run_id, "train", TRAIN[:2])
    app = make_app("Reply {q}")
    with caplog.at_level(logging.WARNING, logger="opto_adapters.train"):
        resumed = train(app, scripted_llm, path, resume=True)
    assert f"run {run_id} of {path} was interrupted while it started" in caplog.text
    assert resumed.run_id == run_id and resumed.status == "completed"
    assert app.prompt.value == "ANSWER {q}!"
    assert (resumed.baseline, resumed.best, resumed.final) == (full.baseline, full.best, full.final)
    with Store(path, readonly=True) as store:
        assert [r.id for r in store.runs()] == [full.run_id, run_id]
        assert store.examples(run_id, "train") == TRAIN and store.examples(run_id, "val") == VAL


# -- item 5: runs in flight finish before values are restored ---------------------------------


class SlowApp:
    """Reads its prompt when a run starts and when it ends; the first val example of a
    candidate (the prompt holds ``ANSWER``) returns first and triggers ``stop``."""

    def __init__(self, stop, *, fast_delay=0.0, slow_delay=0.3):
        self.prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt")
        self.stop, self.fast_delay, self.slow_delay = stop, fast_delay, slow_delay
        self.seen: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        app = self

        @bundle()
        def respond(template, q):
            """Fill the question into the template."""
            return template.format(q=q)

        def run(q):
            before = app.prompt.value
            candidate = "ANSWER" in before and q.startswith("v")
            if candidate:
                time.sleep(app.fast_delay if q == "v0" else app.slow_delay)
                if q == "v0" and app.stop == "budget":
                    raise BudgetExceeded("the app's budget is spent", calls_used=1, tokens_used=0, max_calls=1, max_tokens=None)
            out = respond(app.prompt, q)
            with app.lock:
                app.seen.append((q, before, app.prompt.value))
            return out

        self.run = run

    def guide(self, example, output):
        if isinstance(output, str) and "ANSWER" in output and example["input"] == "v0":
            if self.stop == "failure":
                raise RuntimeError("the guide broke")
            if self.stop == "interrupt":
                raise KeyboardInterrupt
        return guide(example, output)


@pytest.mark.parametrize("stop", ["failure", "budget", "time_limit", "interrupt"])
def test_no_run_sees_its_prompt_change_when_training_stops(scripted_llm, stop):
    scripted_llm.set_default(json.dumps(reply("ANSWER {q}")))
    app = SlowApp(stop, fast_delay=0.8 if stop == "time_limit" else 0.05, slow_delay=1.1 if stop == "time_limit" else 0.3)
    kw = {"time_limit": 0.7} if stop == "time_limit" else {}
    trainer = Trainer(
        app.run, data(2), data(4, "v"), guide=app.guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
        batch_size=2, max_concurrency=4, progress=False, **kw,
    )
    if stop == "failure":
        with pytest.raises(GuideError, match="the guide broke"):
            trainer.fit()
        status = trainer.store.run(trainer.run_id).status
    else:
        status = trainer.fit().status
    assert status == {"failure": "failed", "budget": "budget_exhausted", "time_limit": "time_limit", "interrupt": "interrupted"}[stop]
    candidate_runs = [s for s in app.seen if "ANSWER" in s[1]]
    assert len(candidate_runs) >= 3  # the slow candidate runs ran, and ended...
    changed = [s for s in app.seen if s[1] != s[2]]
    assert changed == []  # ...with the prompt they started with
    assert app.prompt.value == "Reply {q}"  # and then the best values were put back


# -- item 8: an optimizer over another tracer of the same live objects ------------------------

MARK = "Reply with the bare answer ONLY."
FACTS = {"capital of France": "Paris", "capital of Italy": "Rome", "capital of Spain": "Madrid", "capital of Peru": "Lima"}
QA_TRAIN = [{"question": f"What is the {k}?", "answer": v} for k, v in list(FACTS.items())[:2]]
QA_VAL = [{"question": f"What is the {k}?", "answer": v} for k, v in list(FACTS.items())[2:]]
QA = "response_synthesizer.text_qa_template"


def answer_for(text: str) -> str:
    asked = max(FACTS, key=text.rfind)
    return FACTS[asked] if MARK in text else f"Well, I believe that the answer is {FACTS[asked]}."


def qa_guide(example, output):
    text = str(output)
    if text.strip() == example["answer"]:
        return Feedback(score=1.0, text="correct")
    return Feedback(score=0.5 if example["answer"] in text else 0.0, text=f"answer with just {example['answer']!r}")


def optimizer_llm(server, suggestion):
    server.set_default(json.dumps({"reasoning": "terse answers score higher", "suggestion": suggestion}))
    return llm_for(server)


def make_chain():
    model = RecordingChatModel(respond=lambda messages: answer_for("\n".join(str(m.content) for m in messages)))
    prompt = ChatPromptTemplate.from_messages([("system", "You are helpful."), ("human", "{question}")])
    return prompt, prompt | model | StrOutputParser()


def make_engine():
    index = VectorStoreIndex.from_documents(
        [Document(text=f"The {k} is {v}.") for k, v in FACTS.items()], embed_model=WordEmbedding()
    )
    return index.as_query_engine(llm=RecordingLLM(reply=answer_for), similarity_top_k=1)


def test_an_optimizer_over_another_tracer_of_the_same_langchain_chain_is_adopted(scripted_llm):
    prompt, chain = make_chain()
    optimizer = OptoPrime(LangChainTracer(chain).parameters, optimizer_llm(scripted_llm, {"prompt.system": f"You are helpful. {MARK}"}))
    trainer = Trainer(chain, QA_TRAIN, QA_VAL, guide=qa_guide, optimizer=optimizer, input_key=["question"], batch_size=2, progress=False)
    result = trainer.fit()
    assert (result.baseline.val, result.best.val) == (0.5, 1.0)
    assert prompt.messages[0].prompt.template == f"You are helpful. {MARK}"
    assert {id(p) for p in optimizer.parameters} <= {id(p) for p in trainer.tracer.parameters}

    _, other_chain = make_chain()  # the same shape, other live objects: really another app's
    foreign = OptoPrime(LangChainTracer(other_chain).parameters, llm_for(scripted_llm))
    with pytest.raises(AppError, match="same names are not enough"):
        optimize(chain, QA_TRAIN, guide=qa_guide, optimizer=foreign, input_key=["question"], progress=False)


def test_an_optimizer_over_another_tracer_of_the_same_llama_index_engine_is_adopted(scripted_llm):
    engine = make_engine()
    template = "Context: {context_str}\nQuestion: {query_str}\n" + MARK + "\nAnswer: "
    optimizer = OptoPrime(LlamaIndexTracer(engine).parameters, optimizer_llm(scripted_llm, {QA: template}))
    result = optimize(engine, QA_TRAIN, QA_VAL, guide=qa_guide, optimizer=optimizer, input_key="question", batch_size=2, progress=False)
    assert (result.baseline.val, result.best.val) == (0.5, 1.0)
    assert MARK in engine.get_prompts()["response_synthesizer:text_qa_template"].get_template()
    assert str(engine.query("What is the capital of Peru?")) == "Lima"

    foreign = OptoPrime(LlamaIndexTracer(make_engine()).parameters, llm_for(scripted_llm))
    with pytest.raises(AppError, match="same names are not enough"):
        optimize(engine, QA_TRAIN, guide=qa_guide, optimizer=foreign, input_key="question", progress=False)


# -- item 10: no work in the constructor; settings in one object ------------------------------


def test_the_constructor_neither_runs_nor_walks_the_app(scripted_llm):
    app = make_app("Reply {q}")

    def plain(q):  # its parameters are found by running it once: not before first use
        return app(q)

    trainer = Trainer(plain, data(2), guide=guide, llm=llm_for(scripted_llm), progress=False)
    assert app.calls == []
    assert [p.name for p in trainer.parameters] == ["prompt"] and app.calls == ["q0"]

    prompt, chain = make_chain()
    trainer = Trainer(chain, QA_TRAIN, guide=qa_guide, llm=llm_for(scripted_llm), input_key=["question"], progress=False)
    assert prompt.metadata is None  # discovery (which stamps the prompt) has not run
    assert "prompt.system" in [p.name for p in trainer.parameters] and prompt.metadata


def test_settings_are_one_config_and_keywords_override_it(scripted_llm):
    app = make_app("Reply {q}")
    config = TrainConfig(epochs=2, batch_size=3, seed=7)
    trainer = Trainer(app, data(4), guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)), config=config, batch_size=2)
    assert (trainer.config.epochs, trainer.config.batch_size, trainer.config.seed) == (2, 2, 7)
    assert config.batch_size == 3  # the caller's config is not changed
    with pytest.raises(TypeError, match=r"unknown training option\(s\) \['epoch'\]; the options are \[.*'epochs'"):
        Trainer(app, data(4), guide=guide, epoch=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        TrainConfig(batch_size=0)
    scripted_llm.set_default(improve_then_worsen)
    result = optimize(app, data(4), guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
                      config=TrainConfig(batch_size=2, max_steps=1, progress=False))
    assert result.status == "max_steps" and len(result.history) == 1


def test_tools_and_agents_seen_by_two_tracers_bind_the_same_slots():
    from langchain.agents import create_agent
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool

    from opto_adapters.train.apps import adopt_parameters

    from .langchain_fakes import RecordingChatModel as ChatModel
    from .llama_index_fakes import ScriptedToolLLM
    from .test_langchain_writeback import make_tool

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    lc_agent = create_agent(ChatModel(responses=["x"]), [make_tool()], system_prompt="You are a weather bot.")
    li_agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=ScriptedToolLLM(["ok"]), system_prompt="Add.")
    for first, second in (
        (LangChainTracer(lc_agent), LangChainTracer(lc_agent)),
        (LlamaIndexTracer(li_agent), LlamaIndexTracer(li_agent)),
    ):
        adopted, n = adopt_parameters(first.parameters, second.parameters)
        assert n == len(first.parameters) >= 2
        assert [id(p) for p in adopted] == [id(second.parameter(p.name)) for p in first.parameters]
    other = create_agent(ChatModel(responses=["x"]), [make_tool()], system_prompt="You are a weather bot.")
    assert adopt_parameters(LangChainTracer(other).parameters, LangChainTracer(lc_agent).parameters)[1] == 0
