"""LlamaIndex adapter on a VectorStoreIndex query engine: discovery, graph, write-back."""

from __future__ import annotations

import json

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.prompts.default_prompt_selectors import DEFAULT_TEXT_QA_PROMPT_SEL

from opto_adapters.llama_index import OptoTracer
from opto_adapters.llama_index.templates import STAMP_KEY
from opto_adapters.trace import ExceptionNode, Parameter, ValidationError, apply_updates, render

from .llama_index_fakes import RecordingLLM, WordEmbedding

QA = "response_synthesizer.text_qa_template"
DOCS = ["The sky is blue.", "Grass is green.", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(
        [Document(text=t) for t in DOCS], embed_model=WordEmbedding()
    )


@pytest.fixture
def tracers():
    made: list[OptoTracer] = []
    yield made
    for t in made:
        t.close()


def engine(index, llm, **kwargs):
    return index.as_query_engine(
        llm=llm, similarity_top_k=kwargs.pop("similarity_top_k", 1), **kwargs
    )


def by_name(graph) -> dict[str, object]:
    names = graph.names()
    return {names[id(n)]: n for n in graph.nodes}


def test_discovers_both_branches_of_selector_prompts_with_descriptions(index, tracers):
    tracer = OptoTracer(engine(index, RecordingLLM()), retriever_settings=True)
    tracers.append(tracer)
    names = [p.name for p in tracer.parameters]
    assert names[:3] == [QA, f"{QA}.chat[0]", f"{QA}.chat[1]"]
    assert "response_synthesizer.refine_template" in names
    assert "response_synthesizer.chat_content_qa_template" in names  # the jinja variant
    qa = tracer.parameter(QA)
    assert qa.kind == "prompt" and qa.variables == {"context_str", "query_str"}
    assert "answer the question" in qa.description and "not a chat model" in qa.description
    assert "chat model" in tracer.parameter(f"{QA}.chat[0]").description
    assert tracer.parameter(f"{QA}.chat[0]").value.startswith("You are an expert Q&A system")
    top_k = tracer.parameter("retriever.similarity_top_k")
    assert (top_k.kind, top_k.value, top_k.bounds) == ("number", 1, (1, 100))


def test_retriever_settings_are_opt_in_and_checked(index, tracers):
    tracer = OptoTracer(engine(index, RecordingLLM()))
    tracers.append(tracer)
    assert not any(p.kind == "number" for p in tracer.parameters)
    with pytest.raises(ValueError, match="similarity_topk"):
        OptoTracer(engine(index, RecordingLLM()), retriever_settings=["similarity_topk"])


def test_discovery_never_edits_the_shared_default_template(index, tracers):
    before = DEFAULT_TEXT_QA_PROMPT_SEL.default_template.template
    llm = RecordingLLM()
    qe, other = engine(index, llm), engine(index, llm)
    tracer = OptoTracer(qe)
    tracers.append(tracer)
    apply_updates({tracer.parameter(QA): before.replace("Answer: ", "Short answer: ")})
    assert STAMP_KEY not in DEFAULT_TEXT_QA_PROMPT_SEL.default_template.metadata
    assert DEFAULT_TEXT_QA_PROMPT_SEL.default_template.template == before
    other.query("What color is the sky?")
    assert llm.prompts[-1].endswith("Answer: ") and "Short answer" not in llm.prompts[-1]


def test_attaching_does_not_change_what_the_llm_receives(index, tracers):
    llm = RecordingLLM()
    qe = engine(index, llm)
    qe.query("What color is the sky?")
    tracers.append(OptoTracer(qe))
    qe.query("What color is the sky?")
    assert llm.prompts[0] == llm.prompts[1]


def test_graph_of_a_query(index, tracers):
    llm = RecordingLLM(reply="Blue.")
    tracer = OptoTracer(engine(index, llm), retriever_settings=True)
    tracers.append(tracer)
    run = tracer.run("What color is the sky?")
    graph = run.graph
    assert run.error is None and str(run.output) == "Blue."
    assert graph is tracer.last_graph is tracer.graph(graph.metadata["run_id"])
    assert set(graph.edges()) == {
        ("query", "query", "retrieve"),
        ("retriever.similarity_top_k", "similarity_top_k", "retrieve"),
        (QA, "template", "llm"),
        ("retrieve", "context_str", "llm"),  # the one retrieved text is the context
        ("query", "query_str", "llm"),
        ("query", "query", "synthesize"),
        ("retrieve", "nodes", "synthesize"),
        ("llm", "llm", "synthesize"),
        ("query", "query", "response"),
        ("synthesize", "synthesize", "response"),
    }
    nodes = by_name(graph)
    assert graph.output is nodes["response"] and graph.output.value == "Blue."
    assert nodes["response"].op.name == "RetrieverQueryEngine.query"
    assert nodes["retrieve"].op.name == "VectorIndexRetriever.retrieve"
    assert nodes["llm"].op.name == "RecordingLLM.predict"
    [hit] = nodes["retrieve"].value
    assert hit["text"] == "The sky is blue." and 0 < hit["score"] <= 1
    assert nodes["query"].value == "What color is the sky?"
    assert [p.name for p in graph.parameters] == ["retriever.similarity_top_k", QA]


def test_feedback_reaches_the_prompt_and_the_next_query_uses_the_new_text(index, tracers):
    llm = RecordingLLM(reply="It is blue, as the context says.")
    tracer = OptoTracer(engine(index, llm))
    tracers.append(tracer)
    graph = tracer.run("What color is the sky?").graph
    qa = tracer.parameter(QA)
    qa.zero_feedback()
    graph.output.backward("Answer with one word.")
    [sub] = qa.feedback
    names = {sub.names()[id(n)] for n in sub.nodes}
    assert {"llm", "synthesize", "response", QA, "retrieve", "query"} <= names
    assert str(sub.feedback) == "Answer with one word."

    new = (
        "Context:\n{context_str}\nAnswer the question with ONE word.\nQuestion: {query_str}\nWord: "
    )
    previous = apply_updates({qa: new})
    assert previous[qa].startswith("Context information is below.")
    run = tracer.run("What color is the sky?")
    assert llm.prompts[-1] == (
        "Context:\nThe sky is blue.\nAnswer the question with ONE word.\nQuestion: What color is the sky?\nWord: "
    )
    assert qa.value == new
    assert qa in run.graph.parameters  # the new template is still recognised in the next graph


def test_a_chat_model_uses_the_chat_branch_and_its_messages_can_be_rewritten(index, tracers):
    llm = RecordingLLM(reply="Blue.", chat_model=True)
    tracer = OptoTracer(engine(index, llm))
    tracers.append(tracer)
    graph = tracer.run("What color is the sky?").graph
    assert {(a, b) for a, b, c in graph.edges() if c == "llm"} >= {
        (f"{QA}.chat[0]", "system"),
        (f"{QA}.chat[1]", "user"),
    }
    assert QA not in [p.name for p in graph.parameters]  # the completion branch was not used
    apply_updates({tracer.parameter(f"{QA}.chat[0]"): "You answer in exactly one word."})
    tracer.run("What color is the sky?")
    assert llm.messages[-1][0] == ("system", "You answer in exactly one word.")


def test_similarity_top_k_write_back_changes_retrieval(index, tracers):
    tracer = OptoTracer(engine(index, RecordingLLM()), retriever_settings=True)
    tracers.append(tracer)
    apply_updates({tracer.parameter("retriever.similarity_top_k"): "3"})  # text is coerced
    graph = tracer.run("What color is the sky?").graph
    assert len(by_name(graph)["retrieve"].value) == 3
    with pytest.raises(ValidationError, match="below the minimum"):
        apply_updates({tracer.parameter("retriever.similarity_top_k"): 0})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Answer {query_str} briefly.", "drops the variable(s) {context_str}"),
        ("{context_str}\n{query_str}\nTone: {tone}", "unknown variable(s) {tone}"),
        ("{context_str} {query_str", "drops the variable(s) {query_str}"),
    ],
)
def test_a_bad_template_is_rejected_and_the_engine_keeps_the_old_one(index, tracers, text, reason):
    llm = RecordingLLM()
    tracer = OptoTracer(engine(index, llm))
    tracers.append(tracer)
    qa = tracer.parameter(QA)
    old = qa.value
    with pytest.raises(ValidationError) as info:
        apply_updates({qa: text})
    assert reason in info.value.errors[QA]
    assert qa.value == old
    tracer.run("What color is the sky?")
    assert llm.prompts[-1].startswith("Context information is below.")


def test_literal_braces_follow_llama_index_formatting(index, tracers):
    llm = RecordingLLM()
    tracer = OptoTracer(engine(index, llm))
    tracers.append(tracer)
    text = 'Context: {context_str}\nReply as JSON like {"answer": "..."} to: {query_str}'
    apply_updates({tracer.parameter(QA): text})  # LlamaIndex leaves non-variable braces alone
    tracer.run("What color is the sky?")
    assert (
        llm.prompts[-1]
        == 'Context: The sky is blue.\nReply as JSON like {"answer": "..."} to: What color is the sky?'
    )


def test_an_empty_system_message_is_rejected(index, tracers):
    tracer = OptoTracer(engine(index, RecordingLLM()))
    tracers.append(tracer)
    with pytest.raises(ValidationError, match="empty"):
        apply_updates({tracer.parameter(f"{QA}.chat[0]"): "   "})


def test_apply_updates_is_all_or_nothing_across_branches(index, tracers):
    llm = RecordingLLM()
    tracer = OptoTracer(engine(index, llm))
    tracers.append(tracer)
    qa, chat_user = tracer.parameter(QA), tracer.parameter(f"{QA}.chat[1]")
    old = (qa.value, chat_user.value)
    with pytest.raises(ValidationError):
        apply_updates({qa: "Q: {query_str} C: {context_str}", chat_user: "no variables"})
    assert (qa.value, chat_user.value) == old
    apply_updates(
        {qa: "Q: {query_str} C: {context_str}", chat_user: "C: {context_str} Q: {query_str}"}
    )
    assert (qa.value, chat_user.value) == (
        "Q: {query_str} C: {context_str}",
        "C: {context_str} Q: {query_str}",
    )


def test_save_and_load_round_trip_into_the_live_engine(index, tracers, tmp_path):
    llm = RecordingLLM()
    tracer = OptoTracer(engine(index, llm), retriever_settings=True)
    tracers.append(tracer)
    qa = tracer.parameter(QA)
    tuned = "Facts: {context_str}\nQ: {query_str}\nA: "
    apply_updates({qa: tuned, tracer.parameter("retriever.similarity_top_k"): 2})
    path = tracer.save(tmp_path / "params.json")
    saved = json.loads(path.read_text())["parameters"]
    assert saved[QA] == {"kind": "prompt", "value": tuned}

    fresh_llm = RecordingLLM()
    fresh = OptoTracer(engine(index, fresh_llm), retriever_settings=True)
    tracers.append(fresh)
    fresh.load(path)
    assert fresh.parameter(QA).value == tuned
    fresh.run("What color is the sky?")
    assert fresh_llm.prompts[-1].startswith("Facts: ") and fresh_llm.prompts[-1].endswith("A: ")

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                **json.loads(path.read_text()),
                "parameters": {QA: {"kind": "prompt", "value": "no vars"}},
            }
        )
    )
    with pytest.raises(ValidationError):
        fresh.load(bad, strict=False)
    assert fresh.parameter(QA).value == tuned


def test_an_llm_error_becomes_an_exception_node_that_feedback_can_use(index, tracers):
    llm = RecordingLLM(fail_on="sky")
    tracer = OptoTracer(engine(index, llm))
    tracers.append(tracer)
    run = tracer.run("What color is the sky?")
    assert isinstance(run.error, RuntimeError) and run.output is None
    graph = run.graph
    assert graph.failed and isinstance(graph.output, ExceptionNode)
    nodes = by_name(graph)
    assert isinstance(nodes["llm"], ExceptionNode) and isinstance(
        nodes["synthesize"], ExceptionNode
    )
    assert not isinstance(nodes["retrieve"], ExceptionNode)
    assert "the model refused" in graph.output.error_text()
    qa = tracer.parameter(QA)
    qa.zero_feedback()
    graph.output.backward("The model refuses prompts that mention the sky; rephrase.")
    assert len(qa.feedback) == 1
    # a normal call on the same engine raises as before: the tracer never swallows app errors
    with pytest.raises(RuntimeError, match="refused"):
        tracer.target.query("What color is the sky?")


def test_refine_calls_are_chained_through_the_existing_answer(index, tracers):
    llm = RecordingLLM(reply=lambda prompt: "draft" if "existing answer" not in prompt else "final")
    qe = index.as_query_engine(llm=llm, similarity_top_k=2, response_mode="refine")
    tracer = OptoTracer(qe)
    tracers.append(tracer)
    graph = tracer.run("What color is the sky?").graph
    edges = set(graph.edges())
    assert ("llm", "existing_answer", "llm1") in edges
    assert ("response_synthesizer.refine_template", "template", "llm1") in edges
    assert (QA, "template", "llm") in edges
    assert graph.output.value == "final"


def test_include_and_exclude_select_parameters(index, tracers):
    tracer = OptoTracer(
        engine(index, RecordingLLM()), include=["*text_qa_template*"], exclude=["*chat*"]
    )
    tracers.append(tracer)
    assert [p.name for p in tracer.parameters] == [QA]
    tracer2 = OptoTracer(engine(index, RecordingLLM()), exclude=[QA])
    tracers.append(tracer2)
    graph = tracer2.run("What color is the sky?").graph
    fixed = [p for p in graph.parameters if p.name == QA]
    assert fixed and not fixed[0].trainable  # shown in the graph as a fixed input
    fixed[0].zero_feedback()
    graph.output.backward("shorter")
    assert fixed[0].feedback == []
    assert all(isinstance(p, Parameter) for p in tracer2.parameters)


def test_the_rendered_problem_names_the_prompt_and_shows_the_run(index, tracers):
    tracer = OptoTracer(engine(index, RecordingLLM(reply="Blue.")))
    tracers.append(tracer)
    graph = tracer.run("What color is the sky?").graph
    qa = tracer.parameter(QA)
    qa.zero_feedback()
    graph.output.backward("Too short: add a reason.")
    problem = render(qa.propagated(), [qa])
    text = str(problem)
    assert (
        f"llm = RecordingLLM.predict(template={QA}, context_str=retrieve, query_str=query)"
        in problem.code
    )
    assert (
        problem.code.splitlines()[-1]
        == "response = RetrieverQueryEngine.query(query=query, synthesize=synthesize)"
    )
    assert f"# {QA}: Prompt text_qa_template of the CompactAndRefine" in problem.variables
    assert "{context_str}, {query_str}" in problem.constraints
    assert "(str) query=What color is the sky?" in problem.inputs
    assert '(list) retrieve=[{"text": "The sky is blue."' in problem.inputs
    assert "(str) llm=Blue." in problem.others
    assert "Too short: add a reason." in text and problem.parameters == {QA: qa}


def test_a_graph_built_later_shows_the_run_as_it_was(index, tracers):
    """Graphs are built when first asked for: the app's later changes to the response, its
    list of source nodes and the (shared) nodes themselves must not reach the graph."""
    tracer = OptoTracer(engine(index, RecordingLLM()))
    tracers.append(tracer)
    response = tracer.target.query("What color is the sky?")
    assert response.response == "ok"
    response.response = "changed"  # the app goes on with the objects of the run
    node = response.source_nodes[0].node  # the index's own node
    node.set_content("rewritten")
    response.source_nodes.clear()
    try:
        nodes = by_name(tracer.last_graph)
        assert nodes["response"].value == "ok" and nodes["synthesize"].value == "ok"
        assert nodes["retrieve"].value == [{"text": "The sky is blue.", "score": 0.6708}]
    finally:
        node.set_content("The sky is blue.")  # the index is shared by the module's tests
