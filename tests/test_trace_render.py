"""Rendering a problem instance, and looking at a trace (DOT, text tree)."""

import re

import pytest

from opto_adapters.trace import ExecutionError, Graph, bundle, node, render


@bundle()
def fill(template, question):
    """Fill the question into the template."""
    return template.format(question=question)


@bundle()
def model_call(prompt):
    """Ask the model."""
    return f"answer to <{prompt}>"


@bundle()
def retrieve(query):
    """Look up documents."""
    return "doc " * 5000


class Opaque:
    pass


def qa(system, question):
    return model_call(fill(system, question))


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^#(\w+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))


def test_problem_instance_has_every_section_with_readable_names():
    system = node(
        "Answer briefly: {question}",
        name="system_prompt",
        trainable=True,
        kind="prompt",
        description="The instructions sent before each question.",
        constraint="Stay under 200 characters.",
    )
    out = qa(system, node("What is 2+2?", name="question"))
    out.backward("The answer must be a number.")
    problem = render(system.feedback, [system], instruction="Make answers numeric.")
    text = str(problem)
    s = sections(text)
    assert list(s) == [
        "Instruction", "Code", "Documentation", "Variables", "Constraints",
        "Inputs", "Others", "Outputs", "Feedback",
    ]
    assert s["Instruction"] == "Make answers numeric."
    assert s["Code"].splitlines() == [
        "fill = fill(template=system_prompt, question=question)",
        "model_call = model_call(prompt=fill)",
    ]
    assert "[fill] Fill the question into the template." in s["Documentation"]
    assert "# system_prompt: The instructions sent before each question." in s["Variables"]
    assert "(prompt) system_prompt=Answer briefly: {question}" in s["Variables"]
    assert "Stay under 200 characters." in s["Constraints"]
    assert "{question}" in s["Constraints"]  # the kept-variables rule is spelled out
    assert s["Inputs"] == "(str) question=What is 2+2?"
    assert s["Others"] == "(str) fill=Answer briefly: What is 2+2?"
    assert s["Outputs"] == "(str) model_call=answer to <Answer briefly: What is 2+2?>"
    assert s["Feedback"] == "The answer must be a number."
    assert "str0" not in text
    assert problem.parameters == {"system_prompt": system}


def test_long_values_are_cut_with_a_marker_and_variables_are_not():
    long_prompt = "x" * 3000 + " {question}"
    system = node(long_prompt, name="system", trainable=True, kind="prompt")
    docs = retrieve("q")
    out = model_call(fill(system, docs))
    out.backward("fb")
    text = str(render(system.feedback, value_budget=100))
    assert long_prompt in text  # the variable being optimized is shown whole
    assert "...[cut: 19900 of 20000 characters not shown]" in text
    assert "doc " * 5000 not in text


def test_object_reprs_never_show_memory_addresses():
    p = node("p", name="p", trainable=True)

    @bundle()
    def wrap(x, obj):
        return [x, obj]

    out = wrap(p, Opaque())
    out.backward("fb")
    text = str(render(p.feedback))
    assert "0x" not in text
    assert "<Opaque object>" in text


def test_minibatch_shares_code_and_lists_per_run_values():
    system = node("Say: {question}", name="system", trainable=True, kind="prompt")
    for q, fb in [("one", "bad 1"), ("two", "bad 2"), ("three", "bad 3")]:
        qa(system, node(q, name="question")).backward(fb)
    problem = render(system.feedback)
    s = sections(str(problem))
    assert problem.runs == 3
    assert s["Code"].count("fill = fill(") == 1  # one shared #Code, not three copies
    assert "[run 1]\n(str) question=one" in s["Inputs"]
    assert "[run 3]\n(str) question=three" in s["Inputs"]
    assert "[run 2] bad 2" in s["Feedback"]
    assert s["Variables"].count("system=") == 1


def test_minibatch_with_different_structure_groups_the_code():
    system = node("Say: {question}", name="system", trainable=True, kind="prompt")
    qa(system, "a").backward("fb a")
    fill(system, "b").backward("fb b")
    qa(system, "c").backward("fb c")
    s = sections(str(render(system.feedback)))
    assert "# runs 1, 3\n" in s["Code"] and "# run 2\n" in s["Code"]


def test_shared_non_optimized_inputs_are_listed_once():
    system = node("S {question}", name="system", trainable=True, kind="prompt")
    other = node("O", name="other_param", trainable=True)

    @bundle()
    def both(a, b, q):
        return a + b + q

    for q in ["x", "y"]:
        both(system, other, q).backward("fb")
    s = sections(str(render(system.propagated(), [system])))
    assert "[all runs]\n(text) other_param=O" in s["Inputs"]
    assert "other_param=" not in s["Variables"]


def test_runs_that_do_not_reach_the_parameters_are_left():
    a = node("a", name="a", trainable=True)
    b = node("b", name="b", trainable=True)
    model_call(a).backward("about a")
    model_call(b).backward("about b")
    problem = render(a.feedback + b.feedback, [a])
    assert problem.runs == 1 and "about b" not in str(problem)


def test_exception_output_is_rendered_with_its_traceback():
    code = node("12x", name="number_text", trainable=True)

    @bundle()
    def to_int(text):
        return int(text)

    with pytest.raises(ExecutionError) as info:
        to_int(code)
    info.value.node.backward("must parse")
    s = sections(str(render(code.feedback)))
    assert s["Outputs"].startswith("(ValueError) to_int_error=ValueError: invalid literal")
    assert "Traceback" in s["Outputs"]


def test_to_dot_and_to_text_show_the_trace():
    system = node("Say: {question}", name="system", trainable=True, kind="prompt")
    g = Graph(qa(system, node("hi", name="question")))
    dot = g.to_dot()
    assert dot.startswith("digraph opto {")
    assert dot.count("->") == 3
    assert 'label="template"' in dot and "#fff3b0" in dot  # parameter highlighted
    text = g.to_text()
    assert text.splitlines()[0].startswith("model_call = model_call(...) -> answer to <Say: hi>")
    assert "template: system [prompt parameter] -> Say: {question}" in text
    assert "question: question -> hi" in text


def test_text_tree_shows_shared_nodes_once():
    a = node("a", name="a", trainable=True)

    @bundle()
    def pair(x, y):
        return x + y

    shared = model_call(a)
    g = Graph(pair(shared, shared))
    text = g.to_text()
    assert text.count("model_call = model_call") == 1
    assert "(shown above)" in text


def test_render_rejects_things_that_are_not_subgraphs():
    with pytest.raises(TypeError, match="render expects Subgraph objects"):
        render(["not a subgraph"])


def test_repeated_operations_are_named_after_the_op_with_a_short_counter():
    @bundle()
    def add(a, b):
        """Add a and b."""
        return a + b

    p = node(0, name="p", trainable=True)
    taken = node(0, name="add2", trainable=True)  # a parameter keeps its name; repeats skip it
    p1 = node(5, name="p1")
    out = add(add(add(add(p, 1), taken), p1), add(p, 4))
    out.backward("bigger")
    s = sections(str(render(p.feedback)))
    assert s["Code"].splitlines() == [
        "add = add(a=p, b=b)",
        "add1 = add(a=add, b=add2)",
        "add3 = add(a=add1, b=p1)",
        "add4 = add(a=p, b=b1)",
        "add5 = add(a=add3, b=add4)",
    ]
    # restricted to p, the other parameter is an input, still under its own name
    assert s["Inputs"].splitlines() == ["(int) b=1", "(number) add2=0", "(int) p1=5", "(int) b1=4"]
    assert s["Outputs"] == "(int) add5=10"


def test_a_name_ending_in_a_digit_repeats_with_an_underscore():
    p = node("x", name="p", trainable=True)

    @bundle()
    def join(a, b, c):
        return a + b + c

    join(p, node("y", name="v1"), node("z", name="v1")).backward("fb")
    s = sections(str(render(p.feedback)))
    assert s["Code"] == "join = join(a=p, b=v1, c=v1_1)"
    assert s["Inputs"].splitlines() == ["(str) v1=y", "(str) v1_1=z"]


def test_star_args_are_shown_positionally_and_a_list_argument_keeps_its_keyword():
    a = node(1, name="a", trainable=True)
    b = node(2, name="b", trainable=True)

    @bundle()
    def total(*values):
        """Sum the values."""
        return sum(values)

    @bundle()
    def pick(items, scale=1):
        return items[0] * scale

    out = total(a, b, pick([a, b], scale=3))
    out.backward("smaller")
    s = sections(str(render(a.feedback)))
    assert s["Code"].splitlines() == [
        "pick = pick(items[0]=a, items[1]=b, scale=scale)",
        "total = total(a, b, pick)",
    ]
    assert "values[" not in s["Code"]
    assert list(out.inputs) == ["values[0]", "values[1]", "values[2]"]  # the graph keeps the keys


def test_feedback_shared_by_every_run_is_shown_once_and_equal_texts_are_grouped():
    system = node("Say: {question}", name="system", trainable=True, kind="prompt")
    for q in ["one", "two", "three"]:
        qa(system, node(q, name="question")).backward("too long")
    s = sections(str(render(system.feedback)))
    assert s["Feedback"] == "[all runs] too long"
    assert "[run 2]\n(str) question=two" in s["Inputs"]  # what differs stays per run

    system.zero_feedback()
    for q, fb in [("one", "too long"), ("two", "wrong"), ("three", "too long")]:
        qa(system, node(q, name="question")).backward(fb)
    s = sections(str(render(system.feedback)))
    assert s["Feedback"].splitlines() == ["[runs 1, 3] too long", "[run 2] wrong"]
