"""Issue 16: ``optimize(app, traces=..., feedback=..., val=...)`` proposes from runs recorded
elsewhere and validates every candidate live before anything is written back."""

from __future__ import annotations

import json

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from opto_adapters import Feedback, cli, optimize
from opto_adapters.langchain import OptoTracer
from opto_adapters.optimizers import OptoPrime
from opto_adapters.traces import ImportMismatchError
from opto_adapters.train import DatasetError, Store
from tests.import_fixtures import langsmith_runs, write_jsonl
from tests.langchain_fakes import RecordingChatModel
from tests.train_apps import llm_for

SYSTEM = "You answer questions about {topic} in one short sentence."
BETTER = "You answer questions about {topic}: give the answer, then one reason."
WORSE = "You answer questions about {topic}. Never answer."
ANSWERS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Peru": "Lima"}


def answer(messages) -> str:
    system, question = str(messages[0].content), str(messages[-1].content)
    if "Never answer" in system:
        return "I cannot say."
    capital = next(v for k, v in ANSWERS.items() if k in question)
    return f"{capital}, because it is the seat of government." if "reason" in system else f"{capital}."


def qa_chain():
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])
    return prompt | RecordingChatModel(respond=answer) | StrOutputParser()


def guide(example, output):
    text = str(output)
    right = example["answer"] in text
    reason = "because" in text
    return Feedback(score=right / 2 + (right and reason) / 2, text="correct" if right and reason else "give the answer and a reason")


VAL = [{"topic": "geography", "question": f"Capital of {c}?", "answer": ANSWERS[c]} for c in ("Spain", "Peru")]


def recorded(chain, countries=("France", "Italy")):
    """Production runs of ``chain`` as LangSmith exports them, and users' thumbs-down on them."""
    records = langsmith_runs(lambda: [chain.invoke({"topic": "geography", "question": f"Capital of {c}?"}) for c in countries])
    roots = [r["id"] for r in records if r["parent_run_id"] is None]
    feedback = [{"run_id": root, "key": "user", "score": 0, "comment": "Say why, not just the city."} for root in roots]
    return records, feedback


def optimizer_reply(value):
    return json.dumps({"reasoning": "users want a reason", "suggestion": {"prompt.system": value}})


def test_imported_runs_propose_and_the_candidate_is_validated_live(scripted_llm, tmp_path):
    chain = qa_chain()
    records, feedback = recorded(chain)
    model = chain.steps[1]
    model.calls.clear()
    scripted_llm.set_default(optimizer_reply(BETTER))
    tracer = OptoTracer(chain)
    store = str(tmp_path / "runs.sqlite")
    result = optimize(
        tracer, traces=records, feedback=feedback, val=VAL, guide=guide,
        optimizer=OptoPrime(tracer.parameters, llm_for(scripted_llm)), store=store, progress=False,
        batch_size=2,
    )
    assert result.status == "completed" and result.accepted == 1
    # the optimizer saw the imported runs: their inputs and the users' comments
    prompt = scripted_llm.prompts()[0]
    assert "Capital of France?" in prompt and "Capital of Italy?" in prompt and "Say why, not just the city." in prompt
    # the app never ran on the imported inputs, only on val (baseline, candidate)
    asked = [c.messages[-1].content for c in model.calls]
    assert not any("France" in q or "Italy" in q for q in asked)
    assert sorted(asked) == sorted([v["question"] for v in VAL] * 2)
    assert result.baseline.val == 0.5 and result.best.val == 1.0
    assert result.best_values["prompt.system"] == BETTER
    assert chain.invoke({"topic": "geography", "question": "Capital of Italy?"}) == "Rome, because it is the seat of government."
    with Store(store, readonly=True) as db:
        run = db.latest_run()
        assert run.config["source"] == "traces"
        assert [e["trace_id"] for e in db.examples(run.id, "train")] == [r["id"] for r in records if r["parent_run_id"] is None]


def test_a_worse_candidate_is_never_written_back(scripted_llm):
    chain = qa_chain()
    records, feedback = recorded(chain)
    scripted_llm.set_default(optimizer_reply(WORSE))
    tracer = OptoTracer(chain)
    result = optimize(
        tracer, traces=records, feedback=feedback, val=VAL, guide=guide,
        optimizer=OptoPrime(tracer.parameters, llm_for(scripted_llm)), progress=False,
    )
    assert result.accepted == 0 and result.history[0].status == "rejected"
    assert tracer.parameters[0].value == SYSTEM or all(p.value != WORSE for p in tracer.parameters)
    assert chain.invoke({"topic": "geography", "question": "Capital of Peru?"}) == "Lima."


def test_bad_calls_are_refused_with_what_to_do(scripted_llm):
    chain = qa_chain()
    records, feedback = recorded(chain)
    with pytest.raises(DatasetError, match="validates every candidate live: pass val="):
        optimize(chain, traces=records, feedback=feedback, guide=guide)
    with pytest.raises(DatasetError, match="has feedback"):
        optimize(chain, traces=records, val=VAL, guide=guide)
    with pytest.raises(TypeError, match="not both"):
        optimize(chain, VAL, VAL, traces=records, guide=guide)
    with pytest.raises(TypeError, match="needs train="):
        optimize(chain, guide=guide)
    with pytest.raises(TypeError, match="search='pareto' runs the app on training minibatches"):
        optimize(chain, traces=records, feedback=feedback, val=VAL, guide=guide, search="pareto", progress=False)
    other = ChatPromptTemplate.from_messages([("system", "Translate to French."), ("human", "{text}")])
    with pytest.raises(ImportMismatchError, match="are these runs of this app"):
        optimize(other | RecordingChatModel() | StrOutputParser(), traces=records, feedback=feedback, val=VAL, guide=guide)
    assert scripted_llm.prompts() == []


RECIPE = '''
from tests.test_optimize_traces import SYSTEM, VAL, guide, qa_chain

def build_app():
    return qa_chain()

train = [{"topic": "geography", "question": "Capital of Spain?", "answer": "Madrid"}]
val = VAL
SETTINGS = {"batch_size": 2}
'''


def test_the_cli_optimizes_a_recipe_from_trace_files(scripted_llm, tmp_path, monkeypatch, capsys):
    records, feedback = recorded(qa_chain())
    traces, fb = tmp_path / "runs.jsonl", tmp_path / "feedback.jsonl"
    write_jsonl(traces, records)
    write_jsonl(fb, feedback)
    recipe = tmp_path / "qa_recipe.py"
    recipe.write_text(RECIPE)
    for key, value in scripted_llm.env(model="m").items():
        monkeypatch.setenv(key, value)
    scripted_llm.set_default(optimizer_reply(BETTER))
    store = tmp_path / "s.sqlite"
    code = cli.main([
        "optimize", str(recipe), "--traces", str(traces), "--feedback", str(fb), "--store", str(store), "--no-progress",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 imported run(s) with feedback" in out
    assert "1 accepted" in out
    with Store(str(store), readonly=True) as db:
        assert db.version_values(db.latest_run().best_version_id)["prompt.system"] == BETTER
