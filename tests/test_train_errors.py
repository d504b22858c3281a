"""Bad input: a clear error that names the problem, and stored work is kept."""

import pytest

from opto_adapters.llm import Budget
from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import Feedback, node
from opto_adapters.train import (
    AppError,
    DatasetError,
    GuideError,
    InfrastructureError,
    PythonApp,
    Store,
    StoreError,
    Trainer,
    TrainingError,
    optimize,
)
from opto_adapters.train.data import app_inputs
from tests.train_apps import data, guide, llm_for, make_app, reply


def trainer_for(app, server, train, val=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("max_concurrency", 1)
    return Trainer(app, train, val, guide=kw.pop("guide", guide), optimizer=OptoPrime([app.prompt], llm_for(server)), **kw)


@pytest.mark.parametrize(
    ("train", "val", "message"),
    [
        ([], None, "train is empty: give at least one example"),
        (data(2), [], "val is empty: pass val=None to gate on the training minibatch"),
        ("train.jsonl", None, "train must be a list of examples, got str"),
        ({"input": "q"}, None, "train must be a list of examples, got dict"),
    ],
)
def test_empty_or_malformed_datasets_are_refused(scripted_llm, train, val, message):
    app = make_app()
    with pytest.raises(DatasetError, match=message):
        trainer_for(app, scripted_llm, train, val)
    assert app.calls == []


def test_an_example_missing_the_input_field_is_named_before_anything_runs(scripted_llm):
    app = make_app()
    train = [{"question": "a"}, {"question": "b"}, {"prompt": "c"}]
    with pytest.raises(DatasetError) as info:
        trainer_for(app, scripted_llm, train, input_key="question")
    assert "train example 2 has no field 'question' (its fields are ['prompt'])" in str(info.value)
    assert "input_key=" in str(info.value)
    with pytest.raises(DatasetError, match="val example 0 has no field 'question'"):
        trainer_for(app, scripted_llm, train[:2], ["just text"], input_key="question")
    assert app.calls == []


def test_the_input_convention():
    examples = [{"input": "a", "gold": 1}, {"q": "b", "c": "x"}, "plain"]
    assert app_inputs(examples, "train", None) == ["a", {"q": "b", "c": "x"}, "plain"]
    assert app_inputs(examples[1:2], "train", "q") == ["b"]
    assert app_inputs(examples[1:2], "train", ["q", "c"]) == [{"q": "b", "c": "x"}]
    assert app_inputs(examples, "train", lambda ex: str(ex)[:3]) == ["{'i", "{'q", "pla"]
    with pytest.raises(DatasetError, match=r"input_key raised KeyError: 'nope' on train example 0"):
        app_inputs(examples, "train", lambda ex: ex["nope"])
    with pytest.raises(TypeError, match="input_key must be a field name"):
        app_inputs(examples, "train", 3)


@pytest.mark.parametrize(
    ("bad_guide", "error", "message"),
    [
        (lambda ex, out: None, GuideError, "the guide returned None for train example 2"),
        (lambda ex, out: "looks fine", GuideError, "returned a text without a score for train example 2"),
        (lambda ex, out: Feedback(text="meh"), GuideError, "returned Feedback without a score for train example 2"),
        (lambda ex, out: float("nan"), GuideError, "the score nan for train example 2"),
        (lambda ex, out: [1], GuideError, "the guide returned a list for train example 2"),
        (lambda ex, out: {}["score"], GuideError, "the guide raised KeyError: 'score' on train example 2"),
    ],
    ids=["none", "text", "feedback-text", "nan", "list", "raises"],
)
def test_a_bad_guide_reply_names_the_example_and_keeps_what_was_stored(scripted_llm, bad_guide, error, message):
    def flaky_guide(example, output):
        return bad_guide(example, output) if example["input"] == "q2" else guide(example, output)

    app = make_app()
    store = Store()
    trainer = trainer_for(app, scripted_llm, data(4), guide=flaky_guide, store=store)
    with pytest.raises(error, match=message) as info:
        trainer.fit()
    assert '{"input": "q2"}' in str(info.value)
    run = store.run(trainer.run_id)
    assert run.status == "failed" and message.split(" for ")[0].split(" on ")[0] in run.message
    assert sorted(e.index for e in store.evaluations(run.id)) == [0, 1]  # stored before the failure


def test_the_guide_exception_is_chained(scripted_llm):
    def broken(example, output):
        raise RuntimeError("judge is down")

    with pytest.raises(GuideError) as info:
        trainer_for(make_app(), scripted_llm, data(2), guide=broken).fit()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_an_app_that_raises_on_every_example(scripted_llm):
    app = make_app(fail_on=frozenset({"q0", "q1", "q2"}))
    store = Store()
    trainer = trainer_for(app, scripted_llm, data(3), store=store)
    with pytest.raises(AppError) as info:
        trainer.fit()
    assert "the app raised on all 3 train examples (train example 0: ValueError: cannot answer q0)" in str(info.value)
    assert "tolerate_app_errors=True" in str(info.value)
    assert [e.error for e in store.evaluations(trainer.run_id)] == ["ValueError: cannot answer q0", "ValueError: cannot answer q1", "ValueError: cannot answer q2"]
    assert store.run(trainer.run_id).status == "failed"
    assert scripted_llm.prompts() == []
    # ...unless the optimizer is meant to repair it
    scripted_llm.script(reply("ANSWER {q}!"))
    app = make_app(fail_on=frozenset({"q0", "q1"}))
    result = trainer_for(app, scripted_llm, data(2), tolerate_app_errors=True, batch_size=2).fit()
    assert result.baseline.train == 0.0 and len(result.history) == 1


def test_a_budget_of_zero_is_refused_before_any_work(scripted_llm):
    app = make_app()
    for budget in (Budget(max_calls=0), Budget(max_tokens=0)):
        with pytest.raises(ValueError, match="the budget allows no optimizer call"):
            trainer_for(app, scripted_llm, data(2), budget=budget)
    with pytest.raises(ValueError, match="time_limit must be a positive number"):
        trainer_for(app, scripted_llm, data(2), time_limit=0)
    for option in ("epochs", "batch_size", "max_concurrency", "n_candidates", "max_steps"):
        with pytest.raises(ValueError, match=f"{option} must be a positive int, got 0"):
            trainer_for(app, scripted_llm, data(2), **{option: 0})
    assert app.calls == [] and scripted_llm.prompts() == []


def test_a_store_path_that_is_a_directory(scripted_llm, tmp_path):
    with pytest.raises(StoreError, match=f"the store path {tmp_path} is a directory: give a file path"):
        trainer_for(make_app(), scripted_llm, data(2), store=str(tmp_path))


def test_apps_without_parameters_or_with_foreign_ones(scripted_llm):
    def untraced(q):
        return f"answer {q}"

    with pytest.raises(AppError, match="has no trainable parameters"):
        Trainer(untraced, data(2), guide=guide, llm=llm_for(scripted_llm), progress=False).fit()
    own = make_app()
    tracer = PythonApp(own, [own.prompt])
    other = node("ANSWER {q}", name="prompt", trainable=True, kind="prompt")
    with pytest.raises(AppError, match="same names are not enough"):
        Trainer(tracer, data(2), guide=guide, optimizer=OptoPrime([other], llm_for(scripted_llm))).fit()
    with pytest.raises(TypeError, match="guide must be a function"):
        optimize(own, data(2), guide="exact match", optimizer=OptoPrime([own.prompt], llm_for(scripted_llm)))


def test_untraced_output_gives_a_clear_error_at_the_first_step(scripted_llm):
    app = make_app()

    def untraced(q):
        return app(q).value  # a plain str: feedback cannot reach the prompt

    store = Store()
    trainer = Trainer(untraced, data(2), guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)), store=store, progress=False)
    with pytest.raises(AppError, match="reached none of the parameters"):
        trainer.fit()
    assert len(store.evaluations(trainer.run_id)) == 2 and scripted_llm.prompts() == []


def test_resuming_with_other_data_is_refused(scripted_llm, tmp_path):
    path = str(tmp_path / "runs.sqlite")
    app = make_app()
    scripted_llm.set_default(reply("ANSWER {q}!"))
    trainer_for(app, scripted_llm, data(2), store=path, batch_size=2).fit()
    with pytest.raises(TrainingError, match=r"cannot resume run 1: the train data changed .*; batch_size changed \(2 -> 1\)"):
        trainer_for(app, scripted_llm, data(3), store=path, batch_size=1, resume=True).fit()
    with pytest.raises(StoreError, match="has no run 7; its runs are \\[1\\]"):
        trainer_for(app, scripted_llm, data(2), store=path, resume=7).fit()


def test_an_app_that_cannot_reach_its_model_is_told_so(scripted_llm):
    """Every app call fails to connect: the advice names the endpoint, not input_key."""
    app = make_app()

    def unreachable(template, q):
        raise ConnectionError("Connection error.")

    app.respond = unreachable
    with pytest.raises(InfrastructureError) as info:
        trainer_for(app, scripted_llm, data(2), infra_retries=0).fit()
    text = str(info.value)
    assert "could not be reached" in text and "OPENAI_BASE_URL" in text and "resume=True" in text
    assert "input_key" not in text
    assert scripted_llm.prompts() == []
