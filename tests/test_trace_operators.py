"""Operators and Python protocols on nodes, the traced primitives, call_llm, apply_op,
Node.info and bundle(traceable_code=True) (issue 15, features)."""

from __future__ import annotations

import math

import pytest

from opto_adapters import trace
from opto_adapters.llm import LLM
from opto_adapters.testing import Reply
from opto_adapters.trace import (
    ExecutionError,
    Graph,
    Node,
    apply_op,
    bundle,
    node,
    operators,
    render,
)


def op_of(n: Node) -> str:
    assert isinstance(n, Node) and n.op is not None, f"{n!r} is not a traced operation"
    return n.op.name


def test_arithmetic_and_bitwise_operators_are_traced_with_both_operands_as_inputs():
    x = node(7, name="x", trainable=True)
    y = node(2, name="y")
    cases = {
        "add": (x + y, 9), "subtract": (x - y, 5), "multiply": (x * y, 14),
        "divide": (x / y, 3.5), "floor_divide": (x // y, 3), "mod": (x % y, 1),
        "power": (x**y, 49), "node_divmod": (divmod(x, y), (3, 1)), "lshift": (x << y, 28),
        "rshift": (x >> y, 1), "and_": (x & y, 2), "or_": (x | y, 7), "xor": (x ^ y, 5),
    }
    for op, (out, want) in cases.items():
        assert op_of(out) == op and out.value == want, op
        assert out.inputs["x"] is x and out.inputs["y"] is y, op
    reflected = 10 - x  # a plain value on the left is recorded as an input too
    assert op_of(reflected) == "subtract" and reflected.value == 3 and reflected.inputs["y"] is x
    assert reflected.inputs["x"].value == 10 and reflected.inputs["x"].is_leaf
    assert (3 * x).value == 21 and (2**y).value == 4 and (1 + x).inputs["y"] is x
    for out, op, want in [(-x, "neg", -7), (+x, "pos", 7), (abs(-x), "abs", 7), (~y, "invert", -3)]:
        assert op_of(out) == op and out.value == want
    f = node(2.6, name="f")
    assert [op_of(v) for v in (round(f), math.floor(f), math.ceil(f), math.trunc(f))] == [
        "round", "floor", "ceil", "trunc"
    ]
    assert (round(f).value, math.floor(f).value, math.ceil(f).value) == (3, 2, 3)
    # every operation is in the graph, and feedback reaches the parameter through it
    out = (x + y) * (x - 1)
    assert [n.op.name for n in Graph(out).nodes if n.op] == ["add", "subtract", "multiply"]
    assert out.backward("bigger").parameters_reached == [x]


def test_comparisons_and_equality_return_nodes_whose_truth_is_the_value_s():
    a = node(3, name="a", trainable=True)
    for out, op, want in [
        (a < 5, "lt", True), (a <= 2, "le", False), (a > 1, "gt", True), (a >= 4, "ge", False),
        (a == 3, "eq", True), (a != 3, "neq", False), (a.eq(4), "eq", False), (a.neq(4), "neq", True),
    ]:
        assert op_of(out) == op and out.value is want
        assert bool(out) is want  # `if a == 3:` follows the value, as in Trace
    assert (a == 3).backward("").parameters_reached == [a]
    assert not node(0) and not node("") and node([0]) and bool(node("x"))
    # identity hashing: nodes stay usable as dict keys and set members
    b = node(3, name="b")
    assert len({a, b}) == 2 and {a: 1, b: 2}[b] == 2
    assert hash(a) == object.__hash__(a)


def test_indexing_iteration_unpacking_len_and_in():
    pair = node((10, "ten"), name="pair")
    n, word = pair  # unpacking: one getitem per item
    assert (n.value, word.value) == (10, "ten") and op_of(n) == "getitem"
    assert n.inputs["x"] is pair and n.inputs["index"].value == 0
    items = node([1, 2, 3], name="items")
    assert [v.value for v in items] == [1, 2, 3]
    assert items[1:].value == [2, 3] and op_of(items[-1]) == "getitem"
    assert len(items) == 3 and op_of(items.len()) == "len_" and items.len().value == 3
    assert 2 in items and 5 not in items and node(2) in items
    assert op_of(operators.in_(2, items)) == "in_" and operators.not_in(5, items).value
    assert sorted(v.value for v in node({3, 1})) == [1, 3]
    with pytest.raises(TypeError, match="holds a value of type int, which cannot be iterated"):
        iter(node(5, name="five"))


def test_dict_nodes_keys_values_items_and_iteration():
    d = node({"a": 1, "b": 2}, name="d")
    assert op_of(d.keys()) == "keys" and d.keys().value == ["a", "b"]
    assert op_of(d.values()) == "values" and d.values().value == [1, 2]
    pairs = d.items()
    assert [(k.value, v.value) for k, v in pairs] == [("a", 1), ("b", 2)]
    k, v = pairs[1]
    assert v.inputs["x"] is d and v.inputs["index"] is k  # the value is looked up by the key node
    assert [key.value for key in d] == ["a", "b"]
    assert d["b"].value == 2
    with pytest.raises(ExecutionError) as info:
        d["zzz"]
    assert isinstance(info.value.exception, KeyError) and info.value.node.inputs["x"] is d


def test_string_methods_attribute_access_and_method_calls():
    s = node(" Hello {name} ", name="s", trainable=True)
    checks = [
        (s.strip(), "strip", "Hello {name}"), (s.lower(), "lower", " hello {name} "),
        (s.upper(), "upper", " HELLO {NAME} "), (s.title(), "title", " Hello {Name} "),
        (s.swapcase(), "swapcase", " hELLO {NAME} "), (s.format(name="Ann"), "format", " Hello Ann "),
        (s.strip().split(), "split", ["Hello", "{name}"]), (s.replace("Hello", "Bye"), "replace", " Bye {name} "),
        (node("-", name="sep").join(["a", "b"]), "join", "a-b"), (node("ab").capitalize(), "capitalize", "Ab"),
    ]
    for out, op, want in checks:
        assert op_of(out) == op and out.value == want, op
    assert s.format(name=node("Bo", name="who")).inputs["name"].name == "who"
    with pytest.raises(AttributeError, match="has no method 'upper'"):
        node(3, name="three").upper()

    class Point:
        def __init__(self, x):
            self.x = x

        def shifted(self, by):
            return self.x + by

    p = node(Point(4), name="p")
    assert op_of(p.getattr("x")) == "node_getattr" and p.getattr("x").value == 4
    moved = p.call("shifted", node(3, name="by"))
    assert op_of(moved) == "call_method" and moved.value == 7 and moved.inputs["obj"] is p
    assert op_of(operators.call(node(len, name="fn"), [1, 2])) == "call"
    assert operators.cond(node(True), "yes", "no").value == "yes"
    assert op_of(s.clone()) == "clone" and s.clone().value == s.value


def test_call_llm_asks_our_llm_client_and_is_traced(scripted_llm):
    llm = LLM(base_url=scripted_llm.base_url, api_key="k", model="m", backoff_base=0.01)
    system = node("You are terse.", name="system_prompt", trainable=True)
    scripted_llm.script("Paris")
    answer = operators.call_llm(system, "Capital of France?", llm=llm, temperature=0)
    assert answer.value == "Paris" and op_of(answer) == "call_llm"
    assert answer.inputs["system_prompt"] is system
    request = scripted_llm.last_request
    assert request.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert answer.backward("answer in a sentence").parameters_reached == [system]
    # the default client comes from the environment, as Trace's LLM() does
    scripted_llm.script("Rome")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in scripted_llm.env(model="m").items():
            mp.setenv(k, v)
        assert operators.call_llm("sys", "Capital of Italy?").value == "Rome"
    scripted_llm.script(Reply.error(400))
    with pytest.raises(ExecutionError) as info:
        operators.call_llm(system, "again", llm=llm)
    assert info.value.node.inputs["system_prompt"] is system


def test_apply_op_broadcasts_over_lists_tuples_and_dicts_of_nodes():
    w = node(10, name="w", trainable=True)
    xs = [node(1), node(2)]
    out = apply_op(operators.add, [None, None], xs, w)
    assert [n.value for n in out] == [11, 12] and all(n.inputs["y"] is w for n in out)
    t = apply_op(operators.multiply, (0, 0), (node(2), node(3)), w)
    assert isinstance(t, tuple) and [n.value for n in t] == [20, 30]
    d = apply_op(operators.subtract, {"a": 0, "b": 0}, {"a": node(5), "b": node(7)}, w)
    assert {k: n.value for k, n in d.items()} == {"a": -5, "b": -3}
    assert apply_op(operators.add, None, w, w).value == 20  # no container: a plain call
    with pytest.raises(ValueError, match="has 2 items but an argument has 3"):
        apply_op(operators.add, [0, 0], [1, 2, 3], w)


def test_node_info_says_where_a_node_comes_from():
    x = node(1, name="x")

    @bundle()
    def inc(v):
        """Add one."""
        return v + 1

    out = inc(x)
    info = out.info
    assert info["op"] == "inc" and info["doc"] == "Add one." and info["inputs"] == {"v": x}
    assert info["file"].endswith("test_trace_operators.py") and info["line"] > 0
    assert info["external_dependencies"] == [] and out.data == 2
    assert node(3).info["op"] is None


def test_traceable_code_keeps_the_inner_graph_expanded_for_the_optimizer():
    w = node(2.0, name="w", trainable=True)
    b = node(0.5, name="b", trainable=True)

    @bundle(traceable_code=True)
    def predict(x):
        """A linear model."""
        return x * w + b

    out = predict(3.0)
    assert out.value == 6.5 and out.info["expanded"].op.name == "add"
    sub = out.backward("predict 10")
    assert {p.name for p in sub.parameters_reached} == {"w", "b"}
    problem = render([sub])
    assert problem.code.splitlines() == [
        "multiply = multiply(x=x, y=w)",
        "add = add(x=multiply, y=b)",
        "predict = predict(x=x, __expanded=add)",
    ]


def test_trace_s_own_names_port(tmp_path):
    @bundle("[pick] Select x if condition is true, else y.")
    def choose(condition, x, y):
        return x if condition else y

    out = choose(node(True), node("a"), "b")
    assert op_of(out) == "pick" and out.op.doc == "Select x if condition is true, else y."
    assert out.value == "a" and out._inputs is out.inputs and out._data == "a"

    x, y = node(1, name="x"), node(2, name="y")
    with trace.stop_tracing():
        z = x + y
    assert z.value == 3 and z.inputs == {}  # not recorded
    assert (x + y).inputs["x"] is x  # recorded again after the block

    double = node(lambda v: 2 * v, name="double")
    assert op_of(double(node(4))) == "call" and double(4).value == 8
    with pytest.raises(TypeError, match="holds a value of type int, which cannot be called"):
        x(1)

    p = node("v1", name="p", trainable=True, kind="prompt")
    p._data = "v2"
    assert p.value == "v2"
    with pytest.raises(trace.ValidationError):
        p._data = 3  # written like any value: validated

    k1, k2 = node(1, trainable=True), node("key", trainable=True)
    seq = trace.Seq([0, k1, trace.Seq(3, node(4), 5)])
    assert seq.parameters() == [k1] and seq[2][0] == 3
    assert trace.Map({k2: 1, "b": trace.Seq(k1)}).parameters() == [k2, k1]
    assert trace.contain([x, y], y) and not trace.contain([x], node(1))  # by identity
    assert node(1) in [x]  # `in` compares values, as Trace's ==
    assert trace.to_data({"a": [x, (y,)], "b": 3}) == {"a": [1, (2,)], "b": 3}
    assert trace.nodes.MessageNode is Node and trace.parameters.ParameterNode is trace.Parameter
    assert trace.TraceMissingInputsError is trace.ExternalDependencyError
    assert operators.list_extend([1], node([2, 3])).value == [1, 2, 3]
    assert operators.set_add({1}, 2).value == {1, 2} and operators.list_sort([3, 1]).value == [1, 3]

    @bundle(trainable=True)
    def shout(text):
        """Shout."""
        return text.upper()

    class Doubler(trace.Module):  # a Trace module: calling it calls forward
        def __init__(self):
            self.k = node(2, name="k", trainable=True)

        def forward(self, v):
            return v * self.k

    doubler = Doubler()
    assert doubler(node(5)).value == 10 and doubler.parameters_dict() == {"k": doubler.k}
    with pytest.raises(NotImplementedError, match="has no forward"):
        trace.Module()(1)

    assert shout.info["source"].startswith("def shout(text):") and shout.info["line_number"] > 0
    path = shout.save(tmp_path / "shout.json")
    original = shout.parameter.value
    shout.parameter.set(original.replace("upper", "lower"))
    shout.load(path)
    assert shout.parameter.value == original
