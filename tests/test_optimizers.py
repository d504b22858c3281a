"""OptoPrime and OPRO through the real openai client and the scripted HTTP server."""

import json

import pytest

from opto_adapters.llm import LLM, AuthenticationError, Budget, BudgetExceeded
from opto_adapters.optimizers import OPRO, OptoPrime
from opto_adapters.testing import Reply
from opto_adapters.trace import ExecutionError, Feedback, bundle, node


@bundle()
def fill(template, question):
    """Fill the question into the template."""
    return template.format(question=question)


@bundle()
def answer(prompt, max_words):
    """A stand-in model: echoes the prompt, cut to max_words words."""
    return " ".join(prompt.split()[: int(max_words)])


def make_program():
    template = node(
        "Question: {question}",
        name="qa_template",
        trainable=True,
        kind="prompt",
        description="The prompt the model answers.",
    )
    max_words = node(3, name="max_words", trainable=True, bounds=(1, 50))
    tags = node(["a"], name="tags", trainable=True, kind="json")

    def run(q):
        return answer(fill(template, q), max_words)

    return template, max_words, tags, run


def llm_for(server, **kw):
    return LLM(base_url=server.base_url, api_key="test-key", model="opt-model", backoff_base=0.01, **kw)


def reply(suggestion, reasoning="because"):
    return json.dumps({"reasoning": reasoning, "suggestion": suggestion})


def test_full_loop_changes_the_parameter_and_the_next_forward_uses_it(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template, max_words], llm_for(scripted_llm))
    out = run("What is 2+2?")
    assert out.value == "Question: What is"
    opt.zero_feedback()
    opt.backward(out, "The answer is cut off; it must contain the whole question.")
    scripted_llm.script(reply({"qa_template": "Q: {question} A:", "max_words": 10}))
    record = opt.step()
    assert record.applied == {
        "qa_template": ("Question: {question}", "Q: {question} A:"),
        "max_words": (3, 10),
    }
    assert template.value == "Q: {question} A:" and max_words.value == 10
    assert run("What is 2+2?").value == "Q: What is 2+2? A:"
    # what the endpoint received
    (prompt,) = scripted_llm.prompts()
    assert "The answer is cut off; it must contain the whole question." in prompt
    assert "(prompt) qa_template=Question: {question}" in prompt
    assert "# qa_template: The prompt the model answers." in prompt
    assert "fill = fill(template=qa_template, question=question)" in prompt
    assert "answer = answer(prompt=fill, max_words=max_words)" in prompt
    assert "#Variables" in prompt and "#Feedback" in prompt
    request = scripted_llm.last_request
    assert request.model == "opt-model"
    assert request.response_format_type == "json_schema"
    assert record.proposal.raw.startswith("{") and record.proposal.messages[0]["role"] == "system"
    assert opt.records == [record]


def test_memory_shows_earlier_feedback(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template, max_words], llm_for(scripted_llm), memory_size=3)
    scripted_llm.script(reply({"max_words": 5}), reply({"max_words": 6}))
    opt.backward(run("first question here"), "FIRST-FEEDBACK: too short")
    opt.step()
    opt.zero_feedback()
    opt.backward(run("second question here"), "SECOND-FEEDBACK: still short")
    opt.step()
    first, second = scripted_llm.prompts()
    assert "\n#Memory\n" not in first
    memory = second.split("\n#Memory\n", 1)[1]
    assert "FIRST-FEEDBACK" in memory and "max_words=3" in memory
    assert "SECOND-FEEDBACK" not in memory


def test_minibatch_prompt_shares_code(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template], llm_for(scripted_llm))
    for q in ["one", "two", "three"]:
        opt.backward(run(q), Feedback(score=0.0, text=f"bad {q}"))
    scripted_llm.script(reply({}))
    opt.step()
    (prompt,) = scripted_llm.prompts()
    assert prompt.count("fill = fill(") == 1
    assert "[run 3] score: 0\nbad three" in prompt


@pytest.mark.parametrize(
    ("script", "error_part"),
    [
        (["this is not json at all"], "no usable JSON"),
        (["```json\n" + reply({"qa_template": "Fenced {question}"}) + "\n```"], None),
        ([""], "no usable JSON"),
        ([Reply.error(500), reply({"qa_template": "After 500 {question}"})], None),
        ([Reply.delay(1.0, then=reply({})), reply({"qa_template": "After timeout {question}"})], None),
    ],
    ids=["not-json", "markdown-fence", "empty", "500-then-ok", "timeout-then-ok"],
)
def test_bad_replies_never_half_apply(scripted_llm, script, error_part):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template, max_words], llm_for(scripted_llm, timeout=0.3))
    opt.backward(run("q"), "fb")
    scripted_llm.script(*script)
    record = opt.step()
    if error_part:
        assert error_part in record.error
        assert not record.changed and template.value == "Question: {question}"
    else:
        assert record.error is None
        assert template.value.endswith("{question}") and template.value != "Question: {question}"


def test_unknown_wrong_type_and_constraint_breaking_suggestions_are_rejected(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template, max_words, tags], llm_for(scripted_llm))
    opt.backward(run("q"), "fb")
    opt.backward(fill(template, tags), "fb")  # so tags is reached too
    scripted_llm.script(
        reply(
            {
                "no_such_var": "x",
                "qa_template": "Dropped the variable",
                "max_words": 500,
                "tags": '["b", "c"]',
            }
        )
    )
    record = opt.step()
    assert "no variable named 'no_such_var'" in record.rejected["no_such_var"]
    assert "drops the variable(s) {question}" in record.rejected["qa_template"]
    assert "above the maximum 50" in record.rejected["max_words"]
    assert record.applied == {"tags": (["a"], ["b", "c"])}
    assert template.value == "Question: {question}" and max_words.value == 3


def test_terminate_changes_nothing(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template], llm_for(scripted_llm))
    opt.backward(run("q"), "fine")
    scripted_llm.script("TERMINATE")
    record = opt.step()
    assert record.proposal.terminated and record.error is None and not record.changed


def test_authentication_failure_raises_with_the_fix(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template], llm_for(scripted_llm))
    opt.backward(run("q"), "fb")
    scripted_llm.script(Reply.error(401, "Incorrect API key"))
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        opt.step()
    assert template.value == "Question: {question}"


def test_budget_running_out_mid_step_stops_cleanly(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template], llm_for(scripted_llm, budget=Budget(max_calls=1)))
    opt.backward(run("q"), "fb")
    scripted_llm.script(reply({"qa_template": "One {question}"}), reply({"qa_template": "Two {question}"}))
    opt.step()
    assert template.value == "One {question}"
    with pytest.raises(BudgetExceeded):
        opt.step()
    assert template.value == "One {question}"
    assert len(scripted_llm.prompts()) == 1


def test_propose_changes_nothing_and_apply_writes(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template, max_words], llm_for(scripted_llm))
    opt.backward(run("q"), "fb")
    scripted_llm.script(reply({"max_words": "7"}, reasoning="longer"))
    proposal = opt.propose()
    assert proposal.values == {"max_words": 7} and proposal.reasoning == "longer"
    assert max_words.value == 3
    record = opt.apply(proposal)
    assert max_words.value == 7 and record.applied == {"max_words": (3, 7)}


def test_step_without_feedback_says_what_to_do(scripted_llm):
    template, *_ = make_program()
    opt = OptoPrime([template], llm_for(scripted_llm))
    with pytest.raises(RuntimeError, match="call optimizer.backward"):
        opt.step()
    assert scripted_llm.prompts() == []


def test_optimizer_arguments_are_checked():
    with pytest.raises(ValueError, match="got no parameters"):
        OptoPrime([], llm=None)
    with pytest.raises(TypeError, match="take Parameter objects, got str"):
        OptoPrime(["qa_template"], llm=None)


def test_exception_output_feedback_reaches_the_optimizer(scripted_llm):
    code_like = node("12x", name="number_text", trainable=True)

    @bundle()
    def to_int(text):
        return int(text)

    opt = OptoPrime([code_like], llm_for(scripted_llm))
    with pytest.raises(ExecutionError) as info:
        to_int(code_like)
    opt.backward(info.value.node, "it must parse as an integer")
    scripted_llm.script(reply({"number_text": "12"}))
    opt.step()
    assert to_int(code_like).value == 12
    assert "ValueError: invalid literal" in scripted_llm.prompts()[0]


def test_opro_prompt_has_history_and_no_graph(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OPRO([template, max_words], llm_for(scripted_llm), objective="Longer answers.")
    opt.backward(run("what is it"), Feedback(score=0.2, text="short"))
    scripted_llm.script(reply({"max_words": 8}), reply({}))
    opt.step()
    opt.zero_feedback()
    opt.backward(run("what is it"), Feedback(score=0.9, text="good"))
    opt.step()
    first, second = scripted_llm.prompts()
    for prompt in (first, second):
        assert "#Code" not in prompt and "fill(" not in prompt and "what is it" not in prompt
    assert "Longer answers." in second
    history = second.split("#History", 1)[1]
    assert history.index("score: 0.2") < history.index("score: 0.9")  # best last
    assert "max_words=3" in history and "max_words=8" in history


def test_value_of_the_wrong_type_is_rejected_with_the_expected_type(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template, max_words], llm_for(scripted_llm))
    opt.backward(run("q"), "fb")
    scripted_llm.script(reply({"qa_template": 42, "max_words": "many"}))
    record = opt.step()
    assert "expected text (str), got int" in record.rejected["qa_template"]
    assert "expected a number, got the text 'many'" in record.rejected["max_words"]
    assert not record.changed and (template.value, max_words.value) == ("Question: {question}", 3)


def test_memory_keeps_one_entry_for_several_candidates_of_a_step(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OptoPrime([template, max_words], llm_for(scripted_llm), memory_size=5)
    opt.backward(run("q"), "fb")
    scripted_llm.script(reply({"max_words": 4}), reply({"max_words": 5}))
    opt.propose()
    opt.propose()
    assert len(opt.memory) == 1
    assert opt.llm_if_created is not None
    assert OptoPrime([template], llm=None).llm_if_created is None


def test_opro_history_is_bounded_by_memory_size(scripted_llm):
    template, max_words, tags, run = make_program()
    opt = OPRO([max_words], llm_for(scripted_llm), memory_size=2)
    scripted_llm.set_default(reply({}))
    for i in range(5):
        opt.zero_feedback()
        opt.backward(run("q"), Feedback(score=float(i)))
        opt.step()
    assert len(opt.history) == 2
    last = scripted_llm.prompts()[-1].split("#History", 1)[1]
    assert last.count("[score:") == 3  # two remembered steps and the current values


@pytest.mark.parametrize("optimizer_class", [OptoPrime, OPRO])
def test_replies_are_limited_to_a_size_that_fits_the_values(scripted_llm, optimizer_class):
    """Issue 12: a weak model that never stops must not fill the endpoint's context."""
    template, max_words, tags, run = make_program()
    params = [template, max_words]
    scripted_llm.script(*(reply({"max_words": n}) for n in (4, 5, 6)))
    expected = 1024 + sum(len(str(p.value)) for p in params) // 3

    for given, sent in (("auto", expected), (300, 300), (None, None)):
        opt = optimizer_class(params, llm_for(scripted_llm), max_tokens=given)
        opt.zero_feedback()
        opt.backward(run("What is 2+2?"), "Use fewer words.")
        opt.step()
        assert scripted_llm.last_request.body.get("max_tokens") == sent, given
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        optimizer_class(params, llm_for(scripted_llm), max_tokens=0)


def test_step_validates_values_a_proposal_did_not_get_from_check():
    """step writes the values ``check`` typed without a second validation, and validates any
    other: here an optimizer that fills ``values`` itself, and one that changes a checked
    value afterwards."""
    from opto_adapters.optimizers import Optimizer, Proposal

    class Direct(Optimizer):
        def __init__(self, parameters, values, replace=None):
            super().__init__(parameters)
            self.values, self.replace = values, replace

        def _propose(self):
            proposal = Proposal()
            if self.replace is None:
                proposal.values.update(self.values)  # never checked
            else:
                self.check(self.values, proposal)
                proposal.values.update(self.replace)  # checked, then replaced
            return proposal

    for values, replace in (({"max_words": 999, "qa_template": "Q2: {question}"}, None),
                            ({"max_words": 7, "qa_template": "Q2: {question}"}, {"max_words": 999})):
        template, max_words, tags, run = make_program()
        out = run("What is 2+2?")
        opt = Direct([template, max_words], values, replace)
        opt.backward(out, "too short")
        record = opt.step()
        assert "max_words" in record.rejected and "50" in record.rejected["max_words"]
        assert max_words.value == 3 and template.value == "Question: {question}"  # all or none
        assert not record.applied


def test_step_writes_checked_values_in_their_type(scripted_llm):
    template, max_words, tags, run = make_program()
    out = run("What is 2+2?")
    opt = OptoPrime([template, max_words], llm_for(scripted_llm))
    opt.backward(out, "too short")
    scripted_llm.script(reply({"max_words": "12"}))  # a number sent as text
    record = opt.step()
    assert record.applied == {"max_words": (3, 12)} and max_words.value == 12
    assert isinstance(max_words.value, int)
