"""LlamaIndex graphs are built when first read: a run nobody looks at is never translated,
and a graph built late shows the run as it was (prompt values, links, the app's objects)."""

from __future__ import annotations

import json

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import PromptTemplate

from opto_adapters import optimize
from opto_adapters.llama_index import OptoTracer
from opto_adapters.llama_index import tracer as tracer_module
from opto_adapters.llm import LLM
from opto_adapters.trace import Graph, Parameter, TracerBase

from .llama_index_fakes import RecordingLLM, WordEmbedding

QA = "response_synthesizer.text_qa_template"
DOCS = ["The sky is blue.", "Grass is green.", "Paris is in France."]
NEW_QA = "Context:\n{context_str}\nAnswer in one word: {query_str}\n"


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


@pytest.fixture
def translations(monkeypatch) -> list[str]:
    """The root span id of every run the tracers translate (the first step of a build)."""
    done: list[str] = []
    translate = tracer_module.translate

    def counted(run, *args, **kwargs):
        done.append(run.root.id)
        return translate(run, *args, **kwargs)

    monkeypatch.setattr(tracer_module, "translate", counted)
    return done


def make(index, tracers, **kwargs) -> OptoTracer:
    tracer = OptoTracer(index.as_query_engine(llm=RecordingLLM(), similarity_top_k=1), **kwargs)
    tracers.append(tracer)
    return tracer


def llm_input(graph: Graph) -> str:
    """The template text the run's LLM call was given, as the graph shows it."""
    [call] = [n for n in graph.nodes if n.op is not None and n.op.kind == "llm"]
    [template] = [p for arg, p in call.inputs.items() if arg == "template"]
    return graph.value_of(template)


def test_a_run_whose_graph_is_never_read_is_never_translated(index, tracers, translations):
    tracer = make(index, tracers)
    for q in ("What color is the sky?", "What color is grass?", "Where is Paris?"):
        tracer.target.query(q)
    runs = [tracer.run("What color is the sky?") for _ in range(2)]
    assert translations == []  # five runs recorded, none translated
    graph = tracer.last_graph
    assert graph is not None and len(translations) == 1
    assert tracer.last_graph is graph and runs[-1].graph is graph  # built once, shared
    assert len(translations) == 1
    assert len(tracer.graphs) == 5 and len(translations) == 5
    assert [r.graph for r in runs] == tracer.graphs[-2:] and len(translations) == 5


def test_a_traced_runs_graph_is_built_on_first_read_and_kept_by_both(index, tracers, translations):
    tracer = make(index, tracers)
    run = tracer.run("What color is the sky?")
    assert translations == []
    graph = run.graph
    assert isinstance(graph, Graph) and translations == [graph.metadata["run_id"]]
    assert run.graph is graph and tracer.graph(graph.metadata["run_id"]) is graph
    assert len(translations) == 1


def test_a_traced_run_keeps_its_graph_after_the_tracer_let_it_go(index, tracers):
    tracer = make(index, tracers, max_graphs=1)
    first = tracer.run("What color is the sky?")
    second = tracer.run("Where is Paris?")
    assert len(tracer.graphs) == 1 and tracer.last_graph is second.graph
    graph = first.graph  # the tracer no longer keeps it: built from the run's own record
    assert graph is not None and graph is not second.graph
    inputs = {n.name: n.value for n in graph.nodes if not n.inputs}
    assert inputs["query"] == "What color is the sky?"


@pytest.mark.parametrize("how", ["parameter", "update_prompts"])
def test_a_graph_read_after_the_prompt_changed_shows_the_text_the_run_used(index, tracers, how):
    tracer = make(index, tracers)
    qa = tracer.parameter(QA)
    old = qa.value
    run = tracer.run("What color is the sky?")
    if how == "parameter":  # as an optimizer step writes it
        qa.value = NEW_QA
    else:  # the app's own code, around the tracer
        key = "response_synthesizer:text_qa_template"
        selector = tracer.target.get_prompts()[key]  # a copy
        selector.default_template = PromptTemplate(NEW_QA)
        tracer.target.update_prompts({key: selector})
    assert qa.value == NEW_QA
    assert NEW_QA not in old and llm_input(run.graph) == old  # built now, with the run's text
    later = tracer.run("What color is the sky?")
    assert "Answer in one word" in tracer.target._response_synthesizer._llm.prompts[-1]
    if how == "parameter":  # the next run used the new text, and its graph says so
        assert llm_input(later.graph) == NEW_QA
    assert llm_input(run.graph) == old  # and the first graph still shows the old one


def test_a_parameter_linked_after_a_run_is_not_in_that_runs_graph(index, tracers):
    tracer = make(index, tracers)
    before = tracer.run("What color is the sky?")
    k = tracer.add_parameter(Parameter(name="my.k", kind="number", value=1), used_by=tracer.target.retriever)
    after = tracer.run("What color is the sky?")
    assert k not in before.graph.parameters  # the links of the run's time
    assert k in after.graph.parameters


def test_lists_the_app_changes_after_the_run_do_not_reach_its_graph(index, tracers):
    llm = RecordingLLM(chat_model=True, reply="Blue.")
    tracer = make(index, tracers)
    history = [ChatMessage(role="user", content="What color is the sky?")]
    with tracer:  # a direct LLM call is traced inside the with block
        llm.chat(history)
    history.append(ChatMessage(role="user", content="And the grass?"))
    history[0].content = "edited"
    [call] = [n for n in tracer.last_graph.nodes if n.op is not None and n.op.kind == "llm"]
    texts = json.dumps([n.value for n in call.inputs.values()], default=str)
    assert "What color is the sky?" in texts
    assert "And the grass?" not in texts


# -- the trainer ----------------------------------------------------------------------------

FACTS = {"capital of France": "Paris", "capital of Italy": "Rome", "capital of Spain": "Madrid", "capital of Peru": "Lima"}
TRAIN = [{"question": f"What is the {k}?", "answer": v} for k, v in list(FACTS.items())[:2]]
VAL = [{"question": f"What is the {k}?", "answer": v} for k, v in list(FACTS.items())[2:]]
MARK = "Reply with the bare answer ONLY."


def answer_for(text: str) -> str:
    answer = FACTS[max(FACTS, key=text.rfind)]
    return answer if MARK in text else f"I believe it is {answer}."


def guide(example, output):
    return 1.0 if str(output).strip() == example["answer"] else 0.0


def train_once(server, index) -> tuple[object, list[str], str]:
    engine = index.as_query_engine(llm=RecordingLLM(reply=answer_for), similarity_top_k=1)
    template = "Context: {context_str}\nQuestion: {query_str}\n" + MARK + "\nAnswer: "
    server.set_default(json.dumps({"reasoning": "terse", "suggestion": {QA: template}}))
    llm = LLM(base_url=server.base_url, api_key="k", model="opt", backoff_base=0.01)
    start = len(server.prompts())
    result = optimize(engine, TRAIN, VAL, guide=guide, llm=llm, input_key="question",
                      epochs=2, batch_size=2, progress=False)
    live = engine.get_prompts()["response_synthesizer:text_qa_template"].get_template()
    return result, server.prompts()[start:], live


def test_the_trainer_gets_the_same_results_with_graphs_built_when_read(scripted_llm, monkeypatch):
    # one index for both (the fake embedding ties some scores; ties go by node id)
    index = VectorStoreIndex.from_documents(
        [Document(text=f"The {k} is {v}.") for k, v in FACTS.items()], embed_model=WordEmbedding()
    )
    lazy, lazy_prompts, lazy_live = train_once(scripted_llm, index)
    record = TracerBase._record

    def eager(self, run_id, graph):  # the old way: every graph built when its run ends
        if not isinstance(graph, Graph):
            graph = graph()
            if graph is None:
                return None
        return record(self, run_id, graph)

    monkeypatch.setattr(TracerBase, "_record", eager)
    built, built_prompts, built_live = train_once(scripted_llm, index)
    assert (lazy.baseline.val, lazy.best.val) == (built.baseline.val, built.best.val) == (0.0, 1.0)
    steps = [[(s.status, s.train_score, s.gate_score) for s in r.history] for r in (lazy, built)]
    assert steps[0] == steps[1] and lazy.best_values == built.best_values
    assert lazy_prompts == built_prompts and len(lazy_prompts) >= 1  # the optimizer saw the same
    assert lazy_live == built_live and MARK in lazy_live


def test_the_run_end_snapshot_leaves_what_other_handlers_see_as_it_was(index, tracers):
    """The dispatcher hands every span handler the same ``bound_args``: the snapshot copies."""
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.schema import NodeWithScore

    seen: dict[str, object] = {}

    class Keep:
        def span_enter(self, id_, bound_args, **kwargs):
            if id_.startswith("CompactAndRefine.synthesize-"):
                seen["args"] = bound_args.arguments

        def span_exit(self, *args, **kwargs):
            pass

        def span_drop(self, *args, **kwargs):
            pass

    dispatcher, keep = get_dispatcher(), Keep()
    dispatcher.span_handlers.append(keep)
    try:
        tracer = make(index, tracers)
        tracer.target.query("What color is the sky?")
    finally:
        dispatcher.span_handlers.remove(keep)
    nodes = seen["args"]["nodes"]
    assert nodes and all(isinstance(n, NodeWithScore) for n in nodes)
    assert tracer.last_graph is not None
    assert all(isinstance(n, NodeWithScore) for n in seen["args"]["nodes"])
