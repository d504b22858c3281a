"""The overfitting guard: a candidate that pastes a training example into a prompt is refused."""

from __future__ import annotations

import json

import pytest

from opto_adapters.optimizers import OptoPrime
from opto_adapters.train import Store, optimize
from opto_adapters.train.guard import CopyGuard, copied_example
from tests.train_apps import guide, llm_for, make_app, reply, section, user_prompts

QUESTION = "Which river flows through the old town of Heidelberg before it joins the Rhine at Mannheim"
ANSWER = "The Neckar flows through Heidelberg and then joins the Rhine river at the city of Mannheim"
EXAMPLES = [
    {"input": QUESTION, "answer": ANSWER},
    {"input": "How many legs does a spider have when it is a fully grown adult animal", "answer": "eight"},
    {"input": "Name the largest planet of our solar system by mass and by its volume too", "answer": "Jupiter"},
]
CURRENT = {"prompt": "Answer the question: {q}"}


def test_a_copied_question_is_refused_naming_the_example():
    why = copied_example({"prompt": f"Answer the question: {{q}}. For example: {QUESTION}?"}, CURRENT, EXAMPLES)
    assert why is not None
    assert "train example 0" in why and "['input']" in why and "prompt" in why and "Heidelberg" in why


def test_a_copied_reference_answer_is_refused():
    why = copied_example({"prompt": f"{{q}} Hint: {ANSWER.lower()}!"}, CURRENT, EXAMPLES)
    assert why is not None and "['answer']" in why


def test_a_general_instruction_is_not_refused():
    legit = {
        "prompt": "Answer the question about geography or nature: {q}. Name the river, planet or "
        "number exactly, in one short sentence, and check the facts before you answer."
    }
    assert copied_example(legit, CURRENT, EXAMPLES) is None


def test_text_already_in_the_current_value_does_not_count():
    current = {"prompt": f"{{q}} (like: {QUESTION})"}
    assert copied_example({"prompt": f"Be brief. {{q}} (like: {QUESTION})"}, current, EXAMPLES) is None


def test_short_examples_are_not_checked():
    short = [{"input": "two plus two", "answer": "four"}]
    assert copied_example({"prompt": "{q}: two plus two is four"}, {"prompt": "{q}"}, short) is None


def test_boilerplate_shared_by_the_examples_is_not_a_copy():
    boiler = "Read the passage below carefully and answer with a single word only"
    examples = [{"input": f"{boiler}. Passage {i}: text number {i} about topic {i}."} for i in range(6)]
    assert copied_example({"prompt": f"{boiler}. {{q}}"}, {"prompt": "{q}"}, examples) is None
    whole = {"prompt": f"{{q}} {examples[3]['input']}"}  # the whole example, its own part too
    assert "train example 3" in copied_example(whole, {"prompt": "{q}"}, examples)
    long_specific = [
        {"input": f"{boiler}. Passage: the {w} migrates south every autumn across the wide sea to the warm coast"}
        for w in ("stork", "swallow", "crane", "goose", "swift", "tern")
    ]
    why = copied_example({"prompt": f"{{q}} {long_specific[2]['input']}"}, {"prompt": "{q}"}, long_specific)
    assert why is not None and "train example 2" in why


def test_the_threshold_decides_how_much_may_be_copied():
    half = " ".join(QUESTION.split()[:9])  # 9 of 17 words: 4 of its 12 word 6-grams
    values = {"prompt": f"{{q}} {half}"}
    assert CopyGuard(EXAMPLES).check(values, CURRENT) is None  # 33% < 50%
    assert CopyGuard(EXAMPLES, threshold=0.3).check(values, CURRENT) is not None


def test_non_text_values_are_checked_as_json():
    why = CopyGuard(EXAMPLES).check({"few_shot": [{"q": QUESTION, "a": "Neckar"}]}, {"few_shot": []})
    assert why is not None and "few_shot" in why


@pytest.mark.parametrize("bad", [{"n": 0}, {"threshold": 0}, {"threshold": 1.5}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        CopyGuard(EXAMPLES, **bad)


# -- the trainer ----------------------------------------------------------------------------------

COPYING = f"ANSWER {{q}}! Like: {QUESTION}"
VAL = [{"input": "v0"}, {"input": "v1"}, {"input": "v2"}]


def train(server, store, **kw):
    server.set_default(json.dumps(reply(COPYING)))
    app = make_app("Reply {q}")
    result = optimize(
        app, EXAMPLES[:2], VAL, guide=guide, optimizer=OptoPrime([app.prompt], llm_for(server)),
        epochs=2, batch_size=2, max_concurrency=1, store=store, progress=False, **kw,
    )
    return app, result


def test_a_copying_candidate_is_refused_and_costs_no_app_run(scripted_llm):
    store = Store()
    app, result = train(scripted_llm, store)
    assert len(app.calls) == 2 + 3  # the baseline only: no candidate was ever run
    assert app.prompt.value == "Reply {q}"
    assert [s.status for s in result.history] == ["rejected", "rejected"]
    assert "copies train example 0" in result.history[0].reason
    cands = store.candidates(result.run_id)
    assert [c.status for c in cands] == ["refused", "refused"]
    assert all(c.version_id is None and c.score is None for c in cands)
    memory = section(user_prompts(scripted_llm)[1], "Memory")  # the second proposal knew
    assert "REFUSED" in memory and "copies train example 0" in memory


def test_the_guard_can_be_turned_off(scripted_llm):
    app, result = train(scripted_llm, Store(), guard_copies=None)
    assert result.history[0].status == "accepted" and app.prompt.value == COPYING
    assert len(app.calls) > 5


def test_an_app_input_made_by_an_input_key_function_is_checked_too():
    examples = [{"id": 7}]  # the text the app sees is made from the example, not inside it
    why = copied_example({"prompt": f"{{q}} {QUESTION}"}, CURRENT, examples, [QUESTION])
    assert why is not None and "train example 0 (its app input)" in why
    with pytest.raises(ValueError, match="one to one"):
        CopyGuard(examples, [QUESTION, QUESTION])


def test_the_pareto_search_refuses_a_copying_child_before_any_app_run(scripted_llm):
    store = Store()
    app, result = train(scripted_llm, store, search="pareto")
    assert app.prompt.value == "Reply {q}"
    cands = store.candidates(result.run_id)
    assert cands and [c.status for c in cands] == ["refused"] * len(cands)
    assert all("copies train example 0" in c.reason and c.version_id is None for c in cands)
    baseline = store.run(result.run_id).baseline_version_id
    assert {e.version_id for e in store.evaluations(result.run_id)} == {baseline}  # no child ever ran
    memory = section(user_prompts(scripted_llm)[1], "Memory")
    assert "REFUSED" in memory
