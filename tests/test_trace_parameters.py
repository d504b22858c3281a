"""Parameters: typing by kind, validation, bindings, atomic updates, modules, save/load."""

import json

import pytest

from opto_adapters.trace import (
    Binding,
    ExecutionError,
    Module,
    Node,
    Parameter,
    ValidationError,
    apply_updates,
    bundle,
    load_parameters,
    model,
    node,
    save_parameters,
)


def test_values_are_typed_by_kind():
    n = Parameter(3, name="k", kind="number")
    n.set("5")
    assert n.value == 5 and isinstance(n.value, int)
    with pytest.raises(ValidationError, match="whole number"):
        n.set("5.5")
    f = Parameter(0.5, name="temperature", kind="number", bounds=(0, 1))
    f.set("0.25")
    assert f.value == 0.25
    with pytest.raises(ValidationError, match="above the maximum 1"):
        f.set(3)
    flag = Parameter(True, name="flag", kind="json")
    flag.set("false")
    assert flag.value is False
    items = Parameter(["a"], name="items", kind="json")
    items.set('["b", "c"]')
    assert items.value == ["b", "c"]
    with pytest.raises(ValidationError, match="expected a JSON array, got a JSON object"):
        items.set('{"b": 1}')
    assert items.value == ["b", "c"]


def test_text_kinds_refuse_non_text():
    p = Parameter("hi", name="greeting")
    with pytest.raises(ValidationError, match=r"greeting: expected text \(str\), got int"):
        p.set(123)
    assert p.value == "hi"


def test_prompt_keeps_its_variables():
    p = Parameter("Answer {question} using {context}", name="qa", kind="prompt")
    assert p.variables == {"question", "context"}
    with pytest.raises(ValidationError, match=r"drops the variable\(s\) \{context\}"):
        p.set("Answer {question}")
    with pytest.raises(ValidationError, match=r"introduces unknown variable\(s\) \{tone\}"):
        p.set("Answer {question} using {context} in a {tone} tone")
    with pytest.raises(ValidationError, match="malformed template"):
        p.set("Answer {question using {context}")
    p.set("Use {context}. Question: {question}. Literal {{braces}} are fine.")
    assert p.value.startswith("Use {context}")


def test_custom_validator_reason_is_reported():
    p = Parameter("short", name="tagline", validator=lambda v: "too long" if len(v) > 10 else None)
    with pytest.raises(ValidationError) as info:
        p.set("far too long a tagline")
    assert info.value.errors == {"tagline": "too long"}
    assert p.value == "short"


def test_invalid_initial_value_is_refused():
    with pytest.raises(ValidationError, match="initial value is invalid"):
        Parameter("x = (", name="code", kind="code")
    with pytest.raises(ValueError, match="unknown parameter kind 'prose'"):
        Parameter("x", name="p", kind="prose")


def test_node_rejects_invalid_names():
    with pytest.raises(ValueError, match=r"invalid node name 'system prompt'.*no spaces"):
        node("x", name="system prompt")
    with pytest.raises(ValueError, match="invalid node name ''"):
        node("x", name="", trainable=True)
    with pytest.raises(ValueError, match="invalid node name 3"):
        Node("x", name=3)


def test_bindings_read_and_write_the_live_object():
    live = {"text": "old"}
    p = Parameter(
        name="live_text",
        binding=Binding(get=lambda: live["text"], set=lambda v: live.__setitem__("text", v)),
    )
    assert p.value == "old"
    live["text"] = "changed elsewhere"
    assert p.value == "changed elsewhere"
    p.value = "new"
    assert live["text"] == "new"


def test_apply_updates_is_all_or_nothing_on_validation():
    a = Parameter("a0", name="a")
    b = Parameter(1, name="b", kind="number")
    c = Parameter("c0 {x}", name="c", kind="prompt")
    with pytest.raises(ValidationError) as info:
        apply_updates({a: "a1", b: "not a number", c: "c1"})
    assert set(info.value.errors) == {"b", "c"}
    assert "drops the variable" in info.value.errors["c"]
    assert (a.value, b.value, c.value) == ("a0", 1, "c0 {x}")
    previous = apply_updates({a: "a1", b: "2", c: "c1 {x}"})
    assert (a.value, b.value, c.value) == ("a1", 2, "c1 {x}")
    assert previous == {a: "a0", b: 1, c: "c0 {x}"}


def test_apply_updates_rolls_back_when_a_binding_fails():
    store = {"x": "x0"}
    x = Parameter(name="x", binding=Binding(lambda: store["x"], lambda v: store.__setitem__("x", v)))

    def broken_set(value):
        raise RuntimeError("live object is gone")

    y = Parameter(name="y", binding=Binding(lambda: "y0", broken_set))
    with pytest.raises(RuntimeError, match="live object is gone"):
        apply_updates({x: "x1", y: "y1"})
    assert store["x"] == "x0"


def test_bundle_rejects_non_callables():
    with pytest.raises(TypeError, match="bundle\\(\\) expects a function to trace, got int: 3"):
        bundle(3)
    with pytest.raises(TypeError, match="got str"):
        bundle()("not a function")


def test_bundle_records_named_inputs_and_documentation():
    @bundle(description="Fill a template.")
    def fill(template, *values, sep=" "):
        return template.format(sep.join(values))

    t = node("Hi {}", name="greeting", trainable=True)
    out = fill(t, "Ann", node("Bo", name="friend"), sep="&")
    assert out.value == "Hi Ann&Bo"
    assert list(out.inputs) == ["template", "values[0]", "values[1]", "sep"]
    assert out.inputs["template"] is t and out.inputs["values[1]"].name == "friend"
    assert out.op.name == "fill" and out.op.doc == "Fill a template."


# a trainable bundle needs its source in a file: defined at module level
@bundle(trainable=True)
def double(x):
    """Double a number."""
    return x + x


def test_trainable_bundle_code_can_be_replaced_and_runs_next_call():
    code = double.parameter
    assert code.kind == "code" and code.name == "double_code"
    assert "return x + x" in code.value and not code.value.startswith("@")
    out = double(3)
    assert out.value == 6 and out.inputs["__code"] is code
    original = code.value
    try:
        code.set("def double(x):\n    return x * 3\n")
        assert double(3).value == 9
        with pytest.raises(ValidationError, match="must define a top-level function named 'double'"):
            code.set("def triple(x):\n    return x * 3\n")
        with pytest.raises(ValidationError, match="does not compile"):
            code.set("def double(x):\n    return x *\n")
        assert double(3).value == 9  # the rejected versions never ran
        code.set("def double(x):\n    return missing_name + x\n")
        with pytest.raises(ExecutionError) as info:
            double(1)
        assert "return missing_name + x" in info.value.node.traceback
        sub = info.value.node.backward("NameError: fix the code")
        assert sub.parameters_reached == [code]
    finally:
        code.set(original)
        code.zero_feedback()


@model
class Greeter:
    def __init__(self):
        self.greeting = node("Hello", name="greeting", trainable=True)
        self.helpers = [Punctuation()]
        self.plain = node("not trained", name="plain")

    @bundle(trainable=True, allow_external_dependencies=True)  # reads self.greeting
    def greet(self, who):
        """Greet someone."""
        return f"{self.greeting.value} {who}"

    def __call__(self, who):
        return self.helpers[0].punctuate(self.greet(who))


class Punctuation(Module):
    def __init__(self):
        self.mark = node("!", name="mark", trainable=True)

    def punctuate(self, text):
        return _add_mark(text, self.mark)


@bundle()
def _add_mark(text, mark):
    return text + mark


def test_module_collects_attributes_nested_modules_and_trainable_bundles():
    g = Greeter()
    assert isinstance(g, Module)
    assert [p.name for p in g.parameters()] == ["greet_code", "greeting", "mark"]
    out = g("Ann")
    assert out.value == "Hello Ann!"
    reached = out.backward("use a comma").parameters_reached
    assert {p.name for p in reached} == {"greet_code", "greeting", "mark"}
    for p in g.parameters():
        p.zero_feedback()


def test_save_and_load_round_trip(tmp_path):
    g = Greeter()
    path = g.save(tmp_path / "params.json")
    doc = json.loads(path.read_text())
    assert doc["parameters"]["greeting"] == {"kind": "text", "value": "Hello"}
    g.greeting.set("Hi")
    g.helpers[0].mark.set("?")
    g.load(path)
    assert (g.greeting.value, g.helpers[0].mark.value) == ("Hello", "!")


def test_load_rejects_unknown_or_missing_names_and_changes_nothing(tmp_path):
    a = Parameter("a0", name="a")
    b = Parameter("b0", name="b")
    save_parameters([a, b], tmp_path / "ab.json")
    save_parameters([Parameter("z", name="z"), Parameter("a9", name="a")], tmp_path / "az.json")
    save_parameters([Parameter("a1", name="a")], tmp_path / "a.json")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['z'\].*parameters are \['a', 'b'\]"):
        load_parameters([a, b], tmp_path / "az.json")
    with pytest.raises(ValueError, match=r"no value for parameter\(s\) \['b'\].*strict=False"):
        load_parameters([a, b], tmp_path / "a.json")
    assert (a.value, b.value) == ("a0", "b0")
    load_parameters([a, b], tmp_path / "a.json", strict=False)
    assert (a.value, b.value) == ("a1", "b0")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a parameter file"):
        load_parameters([a], bad)
    with pytest.raises(FileNotFoundError, match="no parameter file at"):
        load_parameters([a], tmp_path / "missing.json")
    numbers = Parameter(1, name="a", kind="number")
    with pytest.raises(ValidationError, match="expected a number"):
        load_parameters([numbers], tmp_path / "a.json")
    assert numbers.value == 1


def test_save_refuses_duplicate_names_and_directories(tmp_path):
    with pytest.raises(ValueError, match="two parameters are named 'a'"):
        save_parameters([Parameter("1", name="a"), Parameter("2", name="a")], tmp_path / "x.json")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_parameters([Parameter("1", name="a")], tmp_path)


def test_saved_file_is_readable_like_any_other(tmp_path):
    path = save_parameters([Parameter("1", name="a")], tmp_path / "p.json")
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    save_parameters([Parameter("2", name="a")], path)
    assert path.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode


def test_safe_name_makes_any_text_a_valid_name():
    from opto_adapters.trace.names import safe_name

    assert safe_name("My Tool (v2)!") == "My_Tool_v2"
    assert safe_name("2nd step") == "_2nd_step"
    assert safe_name("") == "value" and safe_name("???", default="step") == "step"
    long = safe_name("n" * 300)
    assert len(long) == 100
    for text in ["n" * 300, "é ü", "<lambda>", "a.b:c/d[0]"]:
        node("x", name=safe_name(text))  # always accepted


def test_feedback_scores_must_be_finite():
    from opto_adapters.trace import Feedback

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            Feedback(score=bad)
        with pytest.raises(ValueError, match="finite"):
            Feedback.of(bad)


def test_parameter_file_errors_name_the_file_and_the_fix(tmp_path):
    a = Parameter("a0", name="a")
    with pytest.raises(FileNotFoundError, match="folder .*nodir does not exist; create it first"):
        save_parameters([a], tmp_path / "nodir" / "p.json")
    bad = tmp_path / "v.json"
    bad.write_text(json.dumps({"format": "opto_adapters.parameters", "version": "1", "parameters": {}}))
    with pytest.raises(ValueError, match="invalid format version '1'"):
        load_parameters([a], bad)
