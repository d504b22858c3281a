"""Issue 11, core side: untrusted code and text, deep values, half-written parameters, and
the public namespace of ``opto_adapters.trace``."""

from __future__ import annotations

import ast
import functools
import json
import time
import tracemalloc
from pathlib import Path

import pytest

import opto_adapters.trace as trace
from opto_adapters.llm import LLM
from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import (
    Binding,
    Graph,
    Parameter,
    RestoreError,
    ValidationError,
    apply_updates,
    bundle,
    load_parameters,
    node,
    save_parameters,
)
from opto_adapters.trace.graph import MAX_DRAWN_DEPTH
from opto_adapters.trace.render import MAX_NESTING, format_value, short_repr, value_text

ROOT = Path(__file__).resolve().parent.parent
MARKER = ROOT / "tests" / ".hardening_marker"  # what injected code would create
CALLS: list[str] = []  # what injected code would change


@bundle(trainable=True)
def add_tax(price, rate=0.2):
    """Price with tax."""
    return round(price * (1 + rate), 2)


@bundle(trainable=True)
@functools.lru_cache(maxsize=8)
def square(x):
    return x * x


@bundle()
def fill(style, q):
    return style.format(q=q)


@bundle()
def count(tags):
    return len(tags)


@bundle()
def same(value):
    return value


def llm_for(server):
    return LLM(base_url=server.base_url, api_key="test-key", model="opt-model", backoff_base=0.01)


def reply(suggestion):
    return json.dumps({"reasoning": "because", "suggestion": suggestion})


@pytest.fixture
def code():
    """The code parameter of ``add_tax``, put back as it was after the test."""
    param = add_tax.parameter
    original = param.value
    MARKER.unlink(missing_ok=True)
    yield param
    param._value = original
    param.zero_feedback()
    MARKER.unlink(missing_ok=True)
    CALLS.clear()


GOOD = "def add_tax(price, rate=0.2):\n    # a comment is fine\n    return round(price * (1 + rate) + 1, 2)\n"
WRITE = f"open({str(MARKER)!r}, 'w').write('pwned')"

REFUSED = {
    "import": (f"import os\n{WRITE}\n{GOOD}", "line 1 is an import"),
    "expression": (f"{WRITE}\n{GOOD}", "line 1 is an expression"),
    "assignment": (f"add_tax_calls = {WRITE}\n{GOOD}", "line 1 is an assignment"),
    "class": (f"class Evil:\n    x = {WRITE}\n{GOOD}", "a class definition (Evil)"),
    "second def": (f"{GOOD}def add_tax(price, rate=0.2):\n    return 0\n", "another function definition (add_tax)"),
    "module docstring": (f'"""doc"""\n{GOOD}', "line 1 is an expression"),
    "if block": (f"if True:\n    {WRITE}\n{GOOD}", "line 1 is an if statement"),
    "decorator": (f"@print\n{GOOD}", "decorators of add_tax() must stay"),
    "default": (GOOD.replace("rate=0.2", f"rate=({WRITE}, 0.2)[1]"), "the signature must stay `def add_tax(price, rate=0.2):`"),
    "annotation": (GOOD.replace("price,", "price: int,"), "the signature must stay"),
    "async": ("async " + GOOD, "must stay def"),
    "other name": (GOOD.replace("def add_tax", "def add_vat"), "must define a top-level function named 'add_tax'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_trainable_code_other_than_one_definition_is_refused_and_never_runs(code, case):
    source, reason = REFUSED[case]
    before = code.value
    with pytest.raises(ValidationError) as info:
        code.set(source)
    assert reason in info.value.errors["add_tax_code"]
    assert code.value == before and add_tax(10).value == 12.0
    assert not MARKER.exists()


def test_a_changed_body_with_comments_and_nested_helpers_is_accepted(code):
    code.set(GOOD)
    assert add_tax(10).value == 13.0
    code.set("def add_tax(price, rate=0.2):\n    import math\n    def f(v):\n        return math.floor(v)\n    return f(price)\n")
    assert add_tax(10.7).value == 10


def test_the_optimizer_records_the_refusal_of_injected_code(scripted_llm, code):
    opt = OptoPrime([code], llm_for(scripted_llm))
    opt.backward(add_tax(10), "the tax is wrong")
    scripted_llm.script(reply({"add_tax_code": f"import os\n{WRITE}\n{GOOD}"}))
    record = opt.step()
    assert not record.changed and "line 1 is an import" in record.rejected["add_tax_code"]
    assert "nothing else at the top level" in scripted_llm.prompts()[0]  # the model is told
    assert not MARKER.exists() and add_tax(10).value == 12.0


def test_loading_a_parameter_file_with_injected_code_writes_and_runs_nothing(code, tmp_path):
    path = save_parameters([code], tmp_path / "params.json")
    doc = json.loads(path.read_text())
    doc["parameters"]["add_tax_code"]["value"] = f"{WRITE}\n{GOOD}"
    path.write_text(json.dumps(doc))
    before = code.value
    with pytest.raises(ValidationError, match="line 1 is an expression"):
        load_parameters([code], path)
    assert code.value == before and add_tax(10).value == 12.0 and not MARKER.exists()


def test_resume_path_refuses_injected_code(code):
    # the trainer restores stored versions (resume, revert, best) through apply_updates
    with pytest.raises(ValidationError, match="exactly one definition"):
        apply_updates({code: f"{GOOD}{WRITE}\n"})
    assert not MARKER.exists() and add_tax(10).value == 12.0


def test_code_that_bypassed_validation_is_refused_when_it_would_run(code):
    code._value = f"{WRITE}\n{GOOD}"  # e.g. written past the parameter's validator
    with pytest.raises(ValidationError, match="refused to run"):
        add_tax(10)
    assert not MARKER.exists()


def test_decorators_stay_as_the_original_had_them():
    param = square.parameter
    original = param.value
    assert original.startswith("@functools.lru_cache(maxsize=8)\ndef square(x):")
    try:
        with pytest.raises(ValidationError, match="decorators of square"):
            param.set("def square(x):\n    return x ** 2\n")
        param.set("@functools.lru_cache(maxsize=8)\ndef square(x):\n    return x ** 2 + 1\n")
        assert square(3).value == 10
        assert square._function().cache_info().hits == 0  # still an lru_cache
    finally:
        param.set(original)


# -- text that cannot be encoded ----------------------------------------------------------


@pytest.mark.parametrize(
    "kind, value, bad",
    [("text", "ok", "bad \udcff text"), ("prompt", "Q: {q}", "Q: {q} \ud800"), ("json", {"tags": ["a"]}, {"tags": ["\udcff"]})],
)
def test_a_lone_surrogate_is_refused_with_the_reason(kind, value, bad):
    p = node(value, name="p", trainable=True, kind=kind)
    with pytest.raises(ValidationError) as info:
        p.set(bad)
    assert "lone surrogate" in info.value.errors["p"] and "U+D" in info.value.errors["p"]
    assert p.value == value
    str(info.value).encode("utf-8")  # the reason itself can be stored


def test_a_reply_with_a_lone_surrogate_is_refused_by_the_optimizer(scripted_llm):
    p = node("Answer: {q}", name="style", trainable=True, kind="prompt")
    out = fill(p, "x")
    opt = OptoPrime([p], llm_for(scripted_llm))
    opt.backward(out, "shorter")
    scripted_llm.script('{"reasoning": "r", "suggestion": {"style": "A \\udcff {q}"}}')
    record = opt.step()
    assert not record.changed and "lone surrogate" in record.rejected["style"]
    assert p.value == "Answer: {q}"


# -- deep values ---------------------------------------------------------------------------


def nested_list(depth):
    value = [1]
    for _ in range(depth - 1):
        value = [value, "x"]
    return value


def nested_dict(depth):
    value = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize("make", [nested_list, nested_dict])
@pytest.mark.parametrize("depth", [5_000, 50_000])
def test_deep_values_render_cut_with_a_marker(make, depth):
    value = make(depth)
    text = value_text(value)
    assert f"[cut: nested deeper than {MAX_NESTING} levels]" in text
    assert len(text) < 20 * MAX_NESTING
    assert format_value(value, 100).endswith("characters not shown]")
    assert len(short_repr(value, 60)) <= 60
    assert repr(node(value, name="deep")).startswith("Node(name='deep', leaf, value=")


def test_values_up_to_the_nesting_limit_render_exactly_as_json():
    for value in (nested_list(MAX_NESTING), nested_dict(MAX_NESTING), [[1, 2], (3, {"a": None})]):
        assert value_text(value) == json.dumps(value, ensure_ascii=False)
    shared = [1]
    assert value_text([shared, shared]) == "[[1], [1]]"
    cyclic = [1]
    cyclic.append(cyclic)
    assert value_text(cyclic) == "[1, [...]]"


@bundle()
def echo(question):
    """Reply with a deep structure."""
    return nested_list(50_000)


def test_optoprime_step_renders_a_deep_output(scripted_llm):
    style = node(3, name="depth_hint", trainable=True)
    out = echo(style)
    opt = OptoPrime([style], llm_for(scripted_llm))
    opt.backward(out, "too deep")
    scripted_llm.script(reply({"depth_hint": 2}))
    record = opt.step()
    assert record.applied == {"depth_hint": (3, 2)}
    assert f"nested deeper than {MAX_NESTING} levels" in scripted_llm.prompts()[0]


def test_a_deep_reply_or_a_failure_while_proposing_becomes_a_step_record(scripted_llm):
    tags = node(["a"], name="tags", trainable=True, kind="json")
    out = count(tags)
    opt = OptoPrime([tags], llm_for(scripted_llm))
    opt.backward(out, "more tags")
    deep = "[" * 50_000 + "]" * 50_000
    scripted_llm.script('{"reasoning": "r", "suggestion": {"tags": ' + deep + "}}")
    record = opt.step()  # must not raise RecursionError
    assert not record.changed and (record.error or record.rejected)
    assert tags.value == ["a"] and opt.records == [record]

    broken = Parameter(name="broken", binding=Binding(get=lambda: "x", set=lambda v: None))
    out = same(broken)
    opt = OptoPrime([broken], llm_for(scripted_llm))
    opt.backward(out, "fb")
    broken.binding = Binding(get=_raise_recursion, set=lambda v: None)
    record = opt.step()
    assert "could not make a proposal: RecursionError" in record.error and not record.changed


def _raise_recursion():
    raise RecursionError("maximum recursion depth exceeded")


def _inc(x):
    return x + 1


def chain(depth):
    step = bundle(name="inc")(_inc)
    out = node(0, name="x0")
    for _ in range(depth - 1):
        out = step(out)
    return Graph(out)


def test_to_text_is_linear_in_depth_and_marks_lines_past_the_drawn_depth():
    g = chain(8_000)
    assert len(g.nodes) == 8_000
    tracemalloc.start()
    start = time.perf_counter()
    text = g.to_text()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    lines = text.splitlines()
    assert len(lines) == 8_000
    assert len(text) < 8_000 * (4 * MAX_DRAWN_DEPTH + 80)  # was 122 MB of indentation
    assert peak < 40 * 2**20 and seconds < 10  # was 736 MB
    deepest = lines[-1]
    assert deepest.startswith(" " * (4 * (MAX_DRAWN_DEPTH - 1)) + "└── [depth 7999] x: x0")
    drawn, past = lines[MAX_DRAWN_DEPTH], lines[MAX_DRAWN_DEPTH + 1]
    assert drawn.index("└── ") == past.index("└── ") == 4 * (MAX_DRAWN_DEPTH - 1)
    assert "[depth" not in drawn and past.split("└── ")[1].startswith(f"[depth {MAX_DRAWN_DEPTH + 1}] x: inc")


def test_to_text_of_a_graph_within_the_drawn_depth_is_unchanged():
    text = chain(4).to_text()
    assert text == (
        "inc2 = inc(...) -> 3\n"
        "└── x: inc1 = inc(...) -> 2\n"
        "    └── x: inc = inc(...) -> 1\n"
        "        └── x: x0 -> 0\n"
    )


# -- a write that fails part way -----------------------------------------------------------


class Live:
    """A live object whose setter changes part of it, then may fail."""

    def __init__(self, text):
        self.head, self.tail = text.split(" ", 1)
        self.fail_writes = 0

    def get(self):
        return f"{self.head} {self.tail}"

    def set(self, value):
        self.head, tail = value.split(" ", 1)
        if self.fail_writes:
            self.fail_writes -= 1
            raise OSError("disk full")
        self.tail = tail


def bound(name, live):
    return Parameter(name=name, binding=Binding(get=live.get, set=live.set))


def test_a_failing_write_restores_the_failing_parameter_too():
    first, second = Live("hello world"), Live("good day")
    a, b = bound("a", first), bound("b", second)
    second.fail_writes = 1
    with pytest.raises(OSError, match="disk full"):
        apply_updates({a: "bye world", b: "bad night"})
    assert a.value == "hello world" and b.value == "good day"


def test_a_failing_restore_is_reported_with_the_parameter_name():
    live = Live("hello world")
    p = bound("greeting", live)
    live.fail_writes = 2  # the write and its restore both fail after changing the head
    with pytest.raises(RestoreError) as info:
        apply_updates({p: "bye moon"})
    assert "'greeting' failed (OSError: disk full)" in str(info.value)
    assert info.value.unrestored == {"greeting": "OSError: disk full"}
    assert isinstance(info.value.__cause__, OSError)


def test_a_failing_write_in_a_step_becomes_the_record_error(scripted_llm):
    live = Live("hello world")
    p = bound("greeting", live)
    out = same(p)
    opt = OptoPrime([p], llm_for(scripted_llm))
    opt.backward(out, "warmer")
    live.fail_writes = 1
    scripted_llm.script(reply({"greeting": "hi there"}))
    record = opt.step()
    assert not record.changed and "could not be written: OSError: disk full" in record.error
    assert p.value == "hello world"


# -- structure -----------------------------------------------------------------------------


def test_the_trace_namespace_holds_what_users_call():
    internals = {"safe_name", "template_fields", "template_variables", "format_value",
                 "display_names", "topological_order", "select_parameters", "KINDS", "Bundle"}
    assert not internals & set(trace.__all__)
    assert {"node", "bundle", "model", "Parameter", "Graph", "apply_updates", "render"} <= set(trace.__all__)
    assert all(hasattr(trace, name) for name in trace.__all__)
    from opto_adapters.trace.names import check_name, safe_name
    from opto_adapters.trace.templates import template_variables

    assert safe_name("1 a") == "_1_a" and check_name("ok") == "ok"
    assert template_variables("{a} {{b}}") == {"a"}


def test_no_module_imports_a_private_name_from_another():
    found = []
    for path in sorted((ROOT / "opto_adapters").rglob("*.py")):
        for stmt in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(stmt, ast.ImportFrom) and (stmt.level or (stmt.module or "").startswith("opto_adapters")):
                found += [f"{path.relative_to(ROOT)}:{stmt.lineno} {a.name}" for a in stmt.names if a.name.startswith("_")]
    assert found == []
