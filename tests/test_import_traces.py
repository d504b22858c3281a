"""Importing runs recorded elsewhere (LangSmith runs, OpenInference OTLP and Phoenix spans),
made offline by real instrumentation, into graphs over the live app's parameters."""

from __future__ import annotations

import json

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from opto_adapters import from_traces
from opto_adapters.langchain import OptoTracer
from opto_adapters.runs.records import TraceFormatError, group_traces, read_records
from opto_adapters.traces import ImportMismatchError
from tests.import_fixtures import OpenInference, langsmith_runs, write_jsonl
from tests.langchain_fakes import RecordingChatModel

SYSTEM = "You answer questions about {topic} in one short sentence."
X1 = {"topic": "geography", "question": "Capital of France?"}
X2 = {"topic": "history", "question": "Who was Napoleon?"}


def qa_chain(responses=("Paris.",)):
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])
    return prompt | RecordingChatModel(responses=list(responses)) | StrOutputParser()


def model_calls(graph) -> int:
    return sum(1 for n in graph.nodes if getattr(n, "op", None) is not None and n.op.kind == "llm")


def same_parameters(live, imported) -> bool:
    ids = lambda g: sorted(id(p) for p in g.parameters)  # noqa: E731
    return ids(live) == ids(imported)


def test_langsmith_runs_become_graphs_over_the_live_parameters(tmp_path):
    chain = qa_chain()
    records = langsmith_runs(lambda: (chain.invoke(X1), chain.invoke(X2)))
    path = tmp_path / "runs.jsonl"
    write_jsonl(path, records)
    roots = [r["id"] for r in records if r["parent_run_id"] is None]
    llm_run = next(r["id"] for r in records if r["run_type"] == "llm" and r["trace_id"] == roots[1])
    feedback = tmp_path / "feedback.jsonl"
    write_jsonl(feedback, [{"run_id": llm_run, "key": "helpful", "score": 0, "comment": "Say why."}])

    tracer = OptoTracer(chain)
    imported = from_traces(tracer, str(path), feedback=str(feedback))
    live = tracer.run(X1).graph

    assert len(imported) == 2
    for run in imported:
        assert same_parameters(live, run.graph)
        assert model_calls(run.graph) == model_calls(live) == 1
    # the feedback on the second trace's model call is on the second run, naming the step
    assert imported[0].feedback is None
    assert imported[1].trace_id == roots[1]
    assert imported[1].feedback.score == 0 and "helpful: Say why." in imported[1].feedback.text
    assert "RecordingChatModel" in imported[1].feedback.text
    assert imported[1].graph.value_of(imported[1].graph.output) == "Paris."
    assert imported.report.parameters == ["prompt.human", "prompt.system"]
    assert ("prompt.system", "template text") in imported.report.matched


def test_a_prompt_edited_since_the_run_is_found_by_its_variables():
    chain = qa_chain()
    records = langsmith_runs(lambda: chain.invoke(X1))
    tracer = OptoTracer(chain)
    tracer.parameter("prompt.system").value = "Answer about {topic}, briefly and exactly."
    imported = from_traces(tracer, records)
    assert ("prompt.system", "template variables") in imported.report.matched
    assert same_parameters(tracer.run(X1).graph, imported[0].graph)


@pytest.mark.parametrize("shape", ["otlp", "phoenix"])
def test_openinference_spans_of_a_langchain_chain(shape, tmp_path):
    chain = qa_chain()
    with OpenInference("langchain") as oi:
        chain.invoke(X1)
    rows = list(oi.otlp_lines() if shape == "otlp" else oi.phoenix_rows())
    path = tmp_path / "spans.jsonl"
    write_jsonl(path, rows)
    root = next(s for s in oi.spans if s.parent is None)
    trace_id = f"{root.context.trace_id:032x}"
    feedback = tmp_path / "feedback.csv"
    feedback.write_text(f"trace_id,score,comment\n{trace_id},0.5,Too terse.\n")

    tracer = OptoTracer(chain)
    imported = from_traces(tracer, path, feedback=feedback)
    live = tracer.run(X1).graph
    assert len(imported) == 1 and imported[0].trace_id == trace_id
    assert same_parameters(live, imported[0].graph)
    assert model_calls(imported[0].graph) == model_calls(live) == 1
    assert imported[0].feedback.score == 0.5 and "Too terse." in imported[0].feedback.text


def test_openinference_spans_of_a_llama_index_query_engine(tmp_path):
    from llama_index.core import Document, VectorStoreIndex

    from opto_adapters.llama_index import OptoTracer as LlamaTracer
    from tests.llama_index_fakes import RecordingLLM, WordEmbedding

    docs = ["The sky is blue.", "Grass is green.", "Paris is the capital of France."]
    index = VectorStoreIndex.from_documents([Document(text=t) for t in docs], embed_model=WordEmbedding())
    engine = index.as_query_engine(llm=RecordingLLM(), similarity_top_k=2)
    with OpenInference("llama_index") as oi:
        engine.query("What is the capital of France?")
    llm_span = next(s for s in oi.spans if s.name.endswith(".complete"))
    annotations = [{"span_id": f"{llm_span.context.span_id:016x}", "name": "correctness",
                    "result": {"score": 0, "explanation": "Cite the context."}}]
    tracer = LlamaTracer(engine)
    try:
        imported = from_traces(tracer, list(oi.otlp_lines()), feedback=annotations)
        live = tracer.run("What is the capital of France?").graph
    finally:
        tracer.close()
    assert same_parameters(live, imported[0].graph)
    assert [p.name for p in imported[0].graph.parameters] == ["response_synthesizer.text_qa_template"]
    assert model_calls(imported[0].graph) == model_calls(live) == 1
    assert "correctness: Cite the context." in imported[0].feedback.text


def test_optoprime_step_from_imported_runs_changes_the_live_prompt(scripted_llm):
    from opto_adapters.llm import LLM
    from opto_adapters.optimizers import OptoPrime

    chain = qa_chain(["Paris."])
    records = langsmith_runs(lambda: chain.invoke(X1))
    root = next(r["id"] for r in records if r["parent_run_id"] is None)
    tracer = OptoTracer(chain)
    imported = from_traces(tracer, records, feedback=[{"run_id": root, "key": "user", "score": 0,
                                                      "comment": "Give the reason too."}])
    new = "You answer questions about {topic}; give the answer and one reason."
    reply = {"reasoning": "The user wants a reason.", "suggestion": {"prompt.system": new}}
    server = scripted_llm.script(reply)
    opt = OptoPrime(imported.parameters, LLM(base_url=server.base_url, api_key="t", model="m"))
    opt.zero_feedback()
    for run in imported.with_feedback:
        opt.backward(run, run.feedback)
    record = opt.step()
    prompt = server.prompts()[-1]
    assert "Give the reason too." in prompt and "Capital of France?" in prompt
    assert list(record.applied) == ["prompt.system"]
    chain.invoke(X2)
    model = chain.steps[1]
    assert model.calls[-1].system == "You answer questions about history; give the answer and one reason."


# -- bad input ---------------------------------------------------------------------------------


def test_a_truncated_file_names_the_line(tmp_path):
    chain = qa_chain()
    records = langsmith_runs(lambda: chain.invoke(X1))
    text = "".join(json.dumps(r) + "\n" for r in records)
    path = tmp_path / "cut.jsonl"
    path.write_text(text[: len(text) - 40])
    with pytest.raises(TraceFormatError, match=rf"line {len(records)}: .*cut short"):
        from_traces(OptoTracer(chain), path)
    listed = tmp_path / "cut.json"
    listed.write_text(json.dumps(records)[:-30])
    with pytest.raises(TraceFormatError, match="cut short"):
        from_traces(OptoTracer(chain), listed)


def test_a_json_list_is_read_like_json_lines(tmp_path):
    chain = qa_chain()
    records = langsmith_runs(lambda: (chain.invoke(X1), chain.invoke(X2)))
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(records, indent=2))
    assert [r["id"] for _, r in read_records(path)] == [r["id"] for r in records]
    assert len(from_traces(OptoTracer(chain), path)) == 2


def test_an_unknown_format_is_a_clear_error(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"event": "click", "user": 3}])
    with pytest.raises(TraceFormatError, match=r"no format .*'event'.*LangSmith.*OTLP.*Phoenix"):
        from_traces(OptoTracer(qa_chain()), path)


def test_spans_of_another_app_match_nothing_and_nothing_is_written():
    other = ChatPromptTemplate.from_messages([("system", "You translate English to {language}, word for word."),
                                               ("human", "Translate: {text}")])
    other_chain = other | RecordingChatModel(responses=["Bonjour"]) | StrOutputParser()
    records = langsmith_runs(lambda: other_chain.invoke({"language": "French", "text": "Hello"}))
    chain = qa_chain()
    tracer = OptoTracer(chain)
    before = {p.name: p.value for p in tracer.parameters}
    with pytest.raises(ImportMismatchError, match=r"none of the app's parameters \(prompt.system, prompt.human\)"
                       r"[\s\S]*'You translate English to \{language\}"):
        from_traces(tracer, records)
    assert {p.name: p.value for p in tracer.parameters} == before


def test_feedback_for_unknown_runs_is_reported(caplog):
    chain = qa_chain()
    records = langsmith_runs(lambda: chain.invoke(X1))
    fb = [{"run_id": "00000000-0000-0000-0000-000000000001", "key": "x", "score": 1}]
    imported = from_traces(OptoTracer(chain), records, feedback=fb)
    assert imported[0].feedback is None
    assert [r.target for r in imported.report.unknown_feedback] == ["00000000000000000000000000000001"]
    assert "name no imported run" in caplog.text and "1 feedback record(s) name no imported run" in imported.report.summary()


# -- streaming ---------------------------------------------------------------------------------


def test_traces_are_given_while_the_file_is_still_being_read():
    read = []

    def items():
        for t in range(50):
            for k in range(3):
                read.append((t, k))
                yield {"trace": t, "root": k == 0}

    stream = group_traces(items(), trace_of=lambda r: r["trace"], is_root=lambda r: r["root"], window=5)
    first = next(stream)
    assert first[0] == 0 and len(first[1]) == 3 and first[2]
    assert len(read) < 12  # not the whole input: a trace is given a window after its last run
    rest = list(stream)
    assert [t for t, _, _ in rest] == list(range(1, 50)) and all(len(g) == 3 for _, g, _ in rest)


def test_interleaved_traces_within_the_window_stay_whole():
    order = [(0, True), (1, True), (0, False), (1, False), (0, False)]
    got = list(group_traces([{"t": t, "r": r} for t, r in order], trace_of=lambda x: x["t"],
                            is_root=lambda x: x["r"], window=2))
    assert sorted((t, len(g)) for t, g, _ in got) == [(0, 3), (1, 2)]


# -- our own store ------------------------------------------------------------------------------


def stored_qa_run(tmp_path, scripted_llm):
    """A store holding one optimize run of the QA chain (the optimizer on the scripted server)."""
    from opto_adapters import Feedback, optimize
    from opto_adapters.llm import LLM

    chain = qa_chain(["Paris, I think.", "Paris."] * 20)
    scripted_llm.set_default(json.dumps({"reasoning": "shorter", "suggestion": {
        "prompt.system": "You answer questions about {topic} with the bare answer."}}))
    llm = LLM(base_url=scripted_llm.base_url, api_key="k", model="opt", backoff_base=0.01)

    def guide(example, output):
        ok = output.strip() == "Paris."
        return Feedback(score=float(ok), text="correct" if ok else "answer with the city alone")

    store = tmp_path / "runs.sqlite"
    train = [X1, {**X1, "question": "Capital of France, again?"}]
    optimize(chain, train, [X2], guide=guide, llm=llm, epochs=1, batch_size=2, store=str(store), progress=False)
    return store


def test_stored_runs_become_graphs_over_the_live_parameters(tmp_path, scripted_llm):
    from opto_adapters.train.store import Store

    store = stored_qa_run(tmp_path, scripted_llm)
    with Store(store, readonly=True) as db:
        evaluations = [e for e in db.evaluations(db.latest_run().id) if db.graph(e.id) is not None]
    assert len(evaluations) >= 3
    chain = qa_chain()  # a fresh app: the same program, run again
    tracer = OptoTracer(chain)
    imported = from_traces(tracer, store)
    live = tracer.run(X1).graph
    assert len(imported) == len(evaluations) == imported.report.traces
    for run, e in zip(imported, evaluations, strict=True):
        assert same_parameters(live, run.graph)
        assert model_calls(run.graph) == model_calls(live) == 1
        assert (run.feedback.score, run.feedback.text) == (e.score, e.feedback)
        assert run.trace_id == f"store:1:{e.split}:{e.index}:v{e.version_id}"
    assert ("prompt.system", "name") in imported.report.matched
    # the graph shows the value each run used, not the live one
    used = {run.graph.value_of(tracer.parameter("prompt.system")) for run in imported}
    assert used == {SYSTEM, "You answer questions about {topic} with the bare answer."}
    assert len(from_traces(tracer, f"store:{store}#1")) == len(evaluations)
    with pytest.raises(Exception, match="has no run 7; its runs are \\[1\\]"):
        from_traces(tracer, f"store:{store}#7")


def test_stored_runs_match_renamed_parameters_by_value_and_variables(tmp_path, scripted_llm):
    from langchain_core.prompts import PromptTemplate

    store = stored_qa_run(tmp_path, scripted_llm)
    # the same prompts, written as two PromptTemplates: other names, one text edited since
    system = PromptTemplate.from_template(SYSTEM)
    human = PromptTemplate.from_template("Question: {question}")
    other = {"system": system, "human": human} | RunnableLambda(lambda d: d["system"].text + d["human"].text)
    tracer = OptoTracer(other)
    names = sorted(p.name for p in tracer.parameters)
    imported = from_traces(tracer, store)
    how = {(name, way) for (name, way) in imported.report.matched}
    assert any(way == "value" for _, way in how) and any(way == "template variables" for _, way in how)
    assert sorted({p.name for run in imported for p in run.graph.parameters if p.trainable}) == names


def test_stored_runs_of_another_app_match_nothing(tmp_path, scripted_llm):
    store = stored_qa_run(tmp_path, scripted_llm)
    other = ChatPromptTemplate.from_messages([("system", "You translate English to {language}, word for word."),
                                               ("human", "Translate: {text}")])
    tracer = OptoTracer(other | RecordingChatModel(responses=["x"]) | StrOutputParser())
    before = {p.name: p.value for p in tracer.parameters}
    with pytest.raises(ImportMismatchError, match=r"stored parameter 'prompt.system' \('You answer questions"):
        from_traces(tracer, store)
    assert {p.name: p.value for p in tracer.parameters} == before


def test_optoprime_step_from_stored_runs_changes_the_live_prompt(tmp_path, scripted_llm):
    from opto_adapters.llm import LLM
    from opto_adapters.optimizers import OptoPrime

    store = stored_qa_run(tmp_path, scripted_llm)
    chain = qa_chain(["Paris."])
    tracer = OptoTracer(chain)
    imported = from_traces(tracer, store)
    failed = [r for r in imported if r.feedback.score == 0]
    assert failed
    new = "You answer questions about {topic}: the city, nothing else."
    server = scripted_llm.script({"reasoning": "bare answers", "suggestion": {"prompt.system": new}})
    opt = OptoPrime(imported.parameters, LLM(base_url=server.base_url, api_key="t", model="m"))
    opt.zero_feedback()
    for run in failed:
        opt.backward(run, run.feedback)
    record = opt.step()
    assert "answer with the city alone" in server.prompts()[-1]
    assert list(record.applied) == ["prompt.system"]
    chain.invoke(X2)
    assert chain.steps[1].calls[-1].system == "You answer questions about history: the city, nothing else."


# -- agents ---------------------------------------------------------------------------------------

AGENT_SYSTEM = "You answer shipping questions with the tools; costs are in US dollars."


def shipping_agent():
    """``create_agent`` with two tools; the model calls ``shipping_cost`` once, then answers."""
    from langchain.agents import create_agent
    from langchain_core.messages import SystemMessage
    from langchain_core.tools import tool

    from tests.langchain_fakes import tool_call

    @tool
    def shipping_cost(weight_kg: float, zone: str) -> float:
        """Shipping cost in USD of a parcel of weight_kg to zone A, B or C."""
        return {"A": 5.0, "B": 8.0, "C": 10.0}[zone] + 2.5 * weight_kg

    @tool
    def order_status(order_id: str) -> str:
        """The delivery status of an order."""
        return "shipped"

    model = RecordingChatModel(responses=[tool_call("shipping_cost", weight_kg=3, zone="B"), "It costs 15.5 USD."])
    return create_agent(model, tools=[shipping_cost, order_status], system_prompt=SystemMessage(AGENT_SYSTEM))


AGENT_INPUT = {"messages": [{"role": "user", "content": "What does 3 kg to zone B cost?"}]}


def test_langsmith_export_of_a_create_agent_run(tmp_path):
    from tests.import_fixtures import langsmith_export

    agent = shipping_agent()
    records = langsmith_export(lambda callbacks: agent.invoke(AGENT_INPUT, config={"callbacks": callbacks}))
    assert {r["run_type"] for r in records} == {"chain", "llm", "tool"}
    assert sum(r["parent_run_id"] is None for r in records) == 1  # one tree: no parent lost
    llm_runs = [r for r in records if r["run_type"] == "llm"]
    path = tmp_path / "agent.jsonl"
    write_jsonl(path, records)
    feedback = [{"run_id": llm_runs[-1]["id"], "key": "correct", "score": 0, "comment": "The cost is 15.5 USD; say so."}]

    live_agent = shipping_agent()
    tracer = OptoTracer(live_agent)
    imported = from_traces(tracer, path, feedback=feedback)
    live = tracer.run(AGENT_INPUT)
    assert live.error is None
    [run] = imported
    assert same_parameters(live.graph, run.graph)
    assert sorted(p.name for p in run.graph.parameters) == ["agent.system_prompt", "tool.order_status", "tool.shipping_cost"]
    assert model_calls(run.graph) == model_calls(live.graph) == len(llm_runs) == 2
    tools = [n for n in run.graph.nodes if n.op is not None and n.op.kind == "tool"]
    assert [n.op.name for n in tools] == [n.op.name for n in live.graph.nodes if n.op is not None and n.op.kind == "tool"]
    assert "The cost is 15.5 USD" in run.feedback.text and run.feedback.score == 0
    assert ("tool.shipping_cost", "tool name") in imported.report.matched


def test_openinference_spans_of_a_llama_index_function_agent():
    import asyncio

    from llama_index.core.agent.workflow import FunctionAgent

    from opto_adapters.llama_index import OptoTracer as LlamaTracer
    from tests.llama_index_fakes import ScriptedToolLLM

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    def mul(a: int, b: int) -> int:
        """Multiply two numbers."""
        return a * b

    script = [[("add", {"a": 1, "b": 2})], [("mul", {"a": 3, "b": 4})], "The answer is 12."]

    def agent():
        return FunctionAgent(tools=[add, mul], llm=ScriptedToolLLM(script), system_prompt="You are a calculator.")

    async def ask(a):
        return await a.run(user_msg="what is (1+2)*4?")

    with OpenInference("llama_index") as oi:
        assert str(asyncio.run(ask(agent()))) == "The answer is 12."
    llm_spans = [s for s in oi.spans if s.attributes.get("openinference.span.kind") == "LLM"]
    assert llm_spans
    with LlamaTracer(agent()) as tracer:
        imported = from_traces(tracer, list(oi.otlp_lines()))
        live = asyncio.run(tracer.arun("what is (1+2)*4?"))
    assert live.error is None
    [run] = imported
    assert same_parameters(live.graph, run.graph)
    assert sorted(p.name for p in run.graph.parameters) == ["agent.system_prompt", "tool.add", "tool.mul"]
    assert model_calls(run.graph) == model_calls(live.graph) == 3


@pytest.mark.parametrize("chunk", [5, 64, 1 << 16])
@pytest.mark.parametrize("shape", ["lines", "list", "indented list"])
def test_records_are_read_whole_across_read_boundaries(shape, chunk, monkeypatch):
    import io

    from opto_adapters.runs import records as records_module

    monkeypatch.setattr(records_module, "_CHUNK", chunk)
    items = [{"i": i, "text": "é\n" * (i * 7919 % 300), "nested": {"a": [1, {"b": "]"}]}} for i in range(40)]
    text = {
        "lines": "\n".join(json.dumps(r, ensure_ascii=False) for r in items) + "\n",
        "list": json.dumps(items, ensure_ascii=False),
        "indented list": json.dumps(items, indent=2),
    }[shape]
    got = list(read_records(io.StringIO(text)))
    assert [r for _, r in got] == items
    if shape == "lines":
        assert [line for line, _ in got] == list(range(1, 41))


def test_the_first_record_is_given_before_the_file_is_read():
    import io

    class Counting(io.StringIO):
        read_chars = 0

        def read(self, n=-1):
            out = super().read(n)
            Counting.read_chars += len(out)
            return out

    line = json.dumps({"id": "x", "run_type": "chain", "pad": "p" * 500}) + "\n"
    for text in (line * 2000, "[" + ",".join([line.strip()] * 2000) + "]"):
        Counting.read_chars = 0
        stream = read_records(Counting(text))
        next(stream)
        assert Counting.read_chars <= 2 * (1 << 16) < len(text)


def test_given_traces_are_remembered_for_a_bounded_stretch(caplog):
    def items():
        yield {"trace": 0, "root": True}
        for t in range(1, 100):
            yield {"trace": t, "root": True}
        yield {"trace": 95, "root": False}  # late, but within 10 windows: left out, with a warning
        yield {"trace": 0, "root": False}  # far too late: remembered no longer, a trace of its own

    got = list(group_traces(items(), trace_of=lambda r: r["trace"], is_root=lambda r: r["root"], window=2))
    assert "a run of trace 95 came after the trace was complete" in caplog.text
    assert [(t, len(g), complete) for t, g, complete in got][-1] == (0, 1, False)
    assert sum(1 for t, _, _ in got if t == 95) == 1
