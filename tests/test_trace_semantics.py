"""The Trace semantics a Trace program relies on (issue 15), one test per point."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import pickle

import pytest

from opto_adapters.llm import LLM
from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import (
    ExceptionNode,
    ExecutionError,
    ExternalDependencyError,
    Module,
    Parameter,
    bundle,
    model,
    node,
)


def _code(fn_name: str, body: str, signature: str = "self, x") -> str:
    return f"def {fn_name}({signature}):\n    {body}\n"


@model
class Agent:
    def __init__(self, tag):
        self.tag = tag

    @bundle(trainable=True)
    def act(self, x):
        """Act on x."""
        return x + 1


class Base(Module):
    @bundle(trainable=True)
    def step(self, x):
        """The base step."""
        return x * 2


class Child(Base):
    @bundle(trainable=True)
    def step(self, x):
        """The child's step."""
        return x * 3


def reply(suggestion):
    return json.dumps({"reasoning": "r", "suggestion": suggestion})


# 1 ------------------------------------------------------------------------------------------
def test_each_instance_has_its_own_code_parameter_and_a_step_on_one_leaves_the_other(scripted_llm):
    a, b = Agent("a"), Agent("b")
    (pa,), (pb,) = a.parameters(), b.parameters()
    assert pa is not pb and pa.name == pb.name == "act_code"
    assert a.act.parameter is pa and Agent.act.parameter is not pa and Agent.act.parameter is not pb
    out = a.act(1)
    assert out.value == 2 and out.inputs["__code"] is pa
    opt = OptoPrime([pa], LLM(base_url=scripted_llm.base_url, api_key="k", backoff_base=0.01))
    opt.backward(out, "return x + 10")
    scripted_llm.script(reply({"act_code": _code("act", "return x + 10")}))
    assert opt.step().applied
    assert a.act(1).value == 11
    assert b.act(1).value == 2  # the other agent's code is untouched
    twin = copy.deepcopy(a)
    assert twin.parameters()[0] is not pa and twin.act(1).value == 11
    pa.set(_code("act", "return x - 1"))
    assert (a.act(1).value, twin.act(1).value) == (0, 11)  # the copy has its own code


# 2 ------------------------------------------------------------------------------------------
def test_an_overridden_trainable_method_is_collected_once_as_the_subclass_s():
    child = Child()
    params = child.parameters()
    assert [p.name for p in params] == ["step_code"]
    assert "x * 3" in params[0].value
    assert child.step(2).value == 6
    assert child.named_parameters() == {"step_code": params[0]}  # unique names: save() works


# 3 ------------------------------------------------------------------------------------------
def test_deepcopy_and_pickle_of_parameters_modules_optimizers_and_computed_nodes(tmp_path):
    p = node("hello", name="greeting", trainable=True, constraint="short")
    q = copy.deepcopy(p)
    assert isinstance(q, Parameter) and q is not p and (q.name, q.value, q.constraint) == ("greeting", "hello", "short")
    q.set("bye")
    assert p.value == "hello"
    r = pickle.loads(pickle.dumps(p))
    assert (r.name, r.value, r.kind, r.trainable) == ("greeting", "hello", "text", True)
    r.set("changed")  # the lock was made anew

    agent = Agent("x")
    agent.act.parameter.set(_code("act", "return x + 5"))
    back = pickle.loads(pickle.dumps(agent))
    assert back.tag == "x" and back.act(1).value == 6
    assert back.parameters()[0] is not agent.parameters()[0]

    opt = OptoPrime(agent.parameters(), LLM(base_url="http://127.0.0.1:9/v1", api_key="k"))
    twin = copy.deepcopy(opt)
    assert twin.parameters[0] is not opt.parameters[0] and twin.parameters[0].value == opt.parameters[0].value
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.llm.base_url == opt.llm.base_url and restored.parameters[0].name == "act_code"

    assert pickle.loads(pickle.dumps(greet)) is greet  # a module-level bundle: by reference

    @bundle()
    def local(v):
        return v

    with pytest.raises(pickle.PicklingError, match="defined inside a function"):
        pickle.dumps(local)

    x = node(2, name="x", trainable=True)
    y = x * 3
    detached = copy.deepcopy(y)
    assert detached.value == 6 and detached.inputs == {} and detached.is_leaf
    assert y.inputs["x"] is x  # the original keeps its graph


_APPLIED: list = []


def refuse_twice(fn):
    """A decorator whose second application fails (like an import it makes failing)."""
    _APPLIED.append(fn)
    if len(_APPLIED) > 1:
        raise ImportError("no module named 'fancy_cache'")
    return fn


@bundle(trainable=True)
@refuse_twice
def double(x):
    """Double x."""
    return 2 * x


# 4 ------------------------------------------------------------------------------------------
def test_errors_while_defining_new_code_are_execution_errors_linked_to_the_code_parameter():
    limit = 3

    @bundle(trainable=True)
    def clip(x, n=limit):
        """Clip x at n."""
        return min(x, n)

    code = clip.parameter
    assert clip(5).value == 3
    code.set(_code("clip", "return max(x, n)", "x, n=limit"))
    with pytest.raises(ExecutionError) as info:
        clip(5)  # the default `limit` is not a module global: defining it raises NameError
    err = info.value.node
    assert isinstance(err, ExceptionNode) and isinstance(info.value.exception, NameError)
    assert err.inputs["__code"] is code
    assert info.value.node.backward("fix the NameError").parameters_reached == [code]

    assert double(2).value == 4
    double.parameter.set("@refuse_twice\n" + _code("double", "return x + x", "x"))
    with pytest.raises(ExecutionError) as info:
        double(2)
    assert isinstance(info.value.exception, ImportError)
    assert info.value.node.inputs["__code"] is double.parameter
    assert "defining the new version of double_code" in info.value.node.traceback


# 5 ------------------------------------------------------------------------------------------
def test_an_async_bundle_returns_an_awaitable_of_the_node_and_errors_become_execution_errors():
    @bundle()
    async def fetch(key, table):
        """Look key up."""
        await asyncio.sleep(0)
        return table[key]

    table = node({"a": 1}, name="table")
    pending = fetch("a", table)
    assert asyncio.iscoroutine(pending)
    out = asyncio.run(pending)
    assert out.value == 1 and out.inputs["table"] is table and out.op.name == "fetch"

    async def both():
        return await asyncio.gather(fetch("a", table), fetch("b", table), return_exceptions=True)

    ok, failed = asyncio.run(both())
    assert ok.value == 1
    assert isinstance(failed, ExecutionError) and isinstance(failed.exception, KeyError)
    assert failed.node.inputs["table"] is table


def _shout(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return str(fn(*args, **kwargs)).upper()

    return wrapper


@bundle(trainable=True)
@_shout
def greet(name):
    """Greet name."""
    return "hello " + name


# 6 ------------------------------------------------------------------------------------------
def test_decorators_below_bundle_survive_a_code_update():
    assert greet("ann").value == "HELLO ANN"
    source = greet.parameter.value
    assert source.startswith("@_shout\n")
    greet.parameter.set(source.replace('"hello " + name', '"good day " + name'))
    try:
        assert greet("ann").value == "GOOD DAY ANN"  # still shouted: the decorator was kept
    finally:
        greet.parameter.set(source)


# 7 ------------------------------------------------------------------------------------------
def test_node_of_an_existing_node_with_trainable_true_is_a_trainable_parameter():
    plain = node("draft", name="draft", description="a draft")
    p = node(plain, trainable=True)
    assert isinstance(p, Parameter) and p.trainable and p is not plain
    assert (p.name, p.value, p.description) == ("draft", "draft", "a draft")
    assert node(p, trainable=True) is p  # already trainable: the same parameter
    assert node(plain) is plain
    frozen = Parameter(3, name="k", kind="number", trainable=False)
    thawed = node(frozen, trainable=True)
    assert thawed.trainable and thawed.kind == "number" and not frozen.trainable


# 8 ------------------------------------------------------------------------------------------
def test_a_parameter_read_inside_a_bundle_without_being_passed_is_detected():
    secret = node("abc", name="secret", trainable=True)

    @bundle()
    def leak(x):
        """Use the secret."""
        return x + secret.value

    with pytest.raises(ExternalDependencyError, match=r"leak\(\) read the parameter\(s\) 'secret'"):
        leak("x")

    @bundle(allow_external_dependencies=True)
    def use(x):
        """Use the secret, knowingly."""
        return x + secret.value

    out = use("x")
    assert out.value == "xabc"
    assert out.info["external_dependencies"] == [secret]
    assert out.backward("longer").parameters_reached == [secret]  # feedback reaches it
    secret.zero_feedback()

    @bundle()
    def inner(a, b):
        """Join."""
        return a + b

    @bundle()
    def outer(x):
        """Calls another bundle with the secret."""
        return inner(x, secret)

    with pytest.raises(ExternalDependencyError, match="'secret'"):
        outer("y")

    @bundle()
    def wraps_leak(x):
        """Calls leak()."""
        return leak(x)

    with pytest.raises(ExternalDependencyError, match=r"leak\(\)"):  # not an ExecutionError
        wraps_leak("w")

    @bundle(allow_external_dependencies=True)
    def fails(x):
        """Reads the secret, then raises."""
        raise ValueError(secret.value)

    @bundle()
    def tolerant(x):
        """Calls fails() and carries on."""
        try:
            fails(x)
        except ExecutionError:
            pass
        return x

    assert tolerant("z").value == "z"  # what the failed inner call read is not the caller's


# 9 ------------------------------------------------------------------------------------------
def test_unnamed_trainable_nodes_get_unique_names_so_an_optimizer_takes_them():
    a = node(1.0, trainable=True)
    b = node("text", trainable=True)
    assert a.name != b.name and a.name.startswith("param") and b.name.startswith("param")
    opt = OptoPrime([a, b], llm=None)
    assert [p.name for p in opt.parameters] == [a.name, b.name]

    class Team(Module):  # two agents of one class: their code parameters are told apart
        def __init__(self):
            self.lead = Agent("lead")
            self.helpers = [Agent("h")]

    team = Team()
    names = [p.name for p in team.parameters()]
    assert names == ["act_code", "helpers[0].act_code"]
    assert [p.name for p in Team().parameters()] == names  # the same in every run
    assert OptoPrime(team.parameters(), llm=None).parameters[1] is team.helpers[0].act.parameter


# 10 -----------------------------------------------------------------------------------------
def test_empty_feedback_self_as_input_and_the_exception_node_value():
    x = node("hi", name="x", trainable=True)
    out = x.upper()
    sub = out.backward()  # Trace's default feedback is ""
    assert sub.parameters_reached == [x] and str(sub.feedback) == ""

    agent = Agent("me")
    run = agent.act(1)
    assert list(run.inputs) == ["self", "x", "__code"]
    assert run.inputs["self"].value is agent
    assert agent.act(2).inputs["self"] is run.inputs["self"]  # one node per instance

    zero = node(0, name="zero")
    with pytest.raises(ExecutionError) as info:
        node(1) / zero
    err = info.value.node
    assert err.value == "(ZeroDivisionError) division by zero"
    assert isinstance(err.exception, ZeroDivisionError)
    assert err.inputs["y"] is zero
