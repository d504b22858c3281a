"""Backward: feedback reaches exactly the parameters on a path, with exactly their subgraph."""

import gc
import threading
import weakref

import pytest

from opto_adapters.trace import (
    ExceptionNode,
    ExecutionError,
    Feedback,
    Graph,
    Node,
    Parameter,
    backward,
    bundle,
    node,
    zero_feedback,
)


@bundle()
def concat(a, b):
    """Join two texts with a space."""
    return f"{a} {b}"


@bundle()
def shout(text):
    """Upper-case a text."""
    return text.upper()


def names(nodes):
    return {n.name for n in nodes}


def build():
    """a -> concat(a, x) -> shout -> concat(., b) = out; c feeds only a side branch."""
    a = node("hello", name="a", trainable=True)
    b = node("world", name="b", trainable=True)
    c = node("unused", name="c", trainable=True)
    x = node("there", name="x")
    first = concat(a, x)
    loud = shout(first)
    out = concat(loud, b)
    side = shout(c)  # never reaches out
    return a, b, c, x, first, loud, out, side


def test_feedback_reaches_exactly_the_parameters_on_a_path():
    a, b, c, x, first, loud, out, side = build()
    sub = out.backward("too loud")
    assert [p.name for p in sub.parameters_reached] == ["a", "b"]
    assert len(a.feedback) == 1 and len(b.feedback) == 1
    assert c.feedback == []
    assert side.value == "UNUSED"  # the side branch ran, and still got nothing


def test_each_parameter_gets_its_minimal_subgraph():
    a, b, c, x, first, loud, out, side = build()
    out.backward("too loud")
    (sub_a,) = a.feedback
    # a's paths: a -> first -> loud -> out; plus the direct inputs x (of first) and b (of out)
    assert {id(n) for n in sub_a.nodes} == {id(n) for n in (a, x, first, loud, out, b)}
    assert sub_a.on_path == {id(a), id(first), id(loud), id(out)}
    assert sub_a.parameters_reached == [a]
    # b's path is b -> out only; loud is a direct input, first/a/x are not in it
    (sub_b,) = b.feedback
    assert {id(n) for n in sub_b.nodes} == {id(n) for n in (loud, b, out)}
    assert sub_b.on_path == {id(b), id(out)}
    assert str(sub_a.feedback) == "too loud" and sub_a.output is out


def test_nodes_are_in_topological_order_and_direct_inputs_are_not_expanded():
    a, b, c, x, first, loud, out, side = build()
    sub = out.backward("fb")
    order = {id(n): i for i, n in enumerate(sub.nodes)}
    for n in sub.nodes:
        if id(n) in sub.on_path:
            for p in n.inputs.values():
                assert order[id(p)] < order[id(n)]
    # in b's subgraph, loud is shown as an input: its own inputs are not edges of that subgraph
    edges = b.feedback[0].edges()
    assert ("shout", "a", "concat") in edges
    assert all(dst != "shout" for _, _, dst in edges)


def test_two_outputs_accumulate_until_zero_feedback():
    a = node("hi", name="a", trainable=True)
    out1 = shout(a)
    out2 = concat(a, "you")
    out1.backward("first")
    out2.backward(Feedback(score=0.5, text="second"))
    assert [str(s.feedback) for s in a.feedback] == ["first", "score: 0.5\nsecond"]
    assert a.feedback[0].output is out1 and a.feedback[1].output is out2
    zero_feedback([a])
    assert a.feedback == []


def test_frozen_parameter_is_not_trained():
    a = node("hi", name="a", trainable=True)
    a.trainable = False
    sub = shout(a).backward("x")
    assert sub.parameters_reached == [] and a.feedback == []


def test_exception_inside_bundle_becomes_the_output_with_traceback():
    a = node("12x", name="a", trainable=True)

    @bundle()
    def parse_int(text):
        """Parse an integer."""
        return int(text)

    with pytest.raises(ExecutionError) as info:
        parse_int(a)
    err = info.value.node
    assert isinstance(err, ExceptionNode)
    assert isinstance(info.value.exception, ValueError)
    assert "invalid literal for int()" in err.error_text()
    assert "return int(text)" in err.traceback  # the line inside the user's function
    assert err.inputs == {"text": a}
    sub = err.backward("the text must contain digits only")
    assert sub.parameters_reached == [a]
    assert a.feedback[0].output is err


def test_catch_exceptions_false_raises_the_original():
    @bundle(catch_exceptions=False)
    def boom(x):
        raise KeyError(x)

    with pytest.raises(KeyError):
        boom(1)


def test_graph_lives_as_long_as_its_output():
    a = node("hi", name="a", trainable=True)
    out = concat(shout(a), "x")
    middle = weakref.ref(out.inputs["a"])
    del out
    gc.collect()
    assert middle() is None  # no registry keeps the run alive


def test_graphs_from_eight_threads_do_not_mix():
    prompt = node("Q:", name="prompt", trainable=True)
    results: dict[int, Node] = {}
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        out = None
        for step in range(50):
            out = concat(prompt if out is None else out, f"t{i}s{step}")
        results[i] = out

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, out in results.items():
        g = Graph(out)
        inputs = [n.value for n in g.nodes if n.is_leaf and not isinstance(n, Parameter)]
        assert inputs == [f"t{i}s{s}" for s in range(50)]
        assert len(g.nodes) == 101  # prompt + 50 inputs + 50 ops
        out.backward(f"run {i}")
    assert sorted(str(s.feedback) for s in prompt.feedback) == sorted(f"run {i}" for i in range(8))


def test_backward_rejects_non_nodes_and_bad_feedback():
    a = node("hi", name="a", trainable=True)
    out = shout(a)
    with pytest.raises(TypeError, match="backward needs the output Node.*got str"):
        backward("HI", "fb")
    with pytest.raises(TypeError, match="feedback must be a str, a number or Feedback.*dict"):
        out.backward({"score": 1})
    with pytest.raises(TypeError, match="got NoneType"):
        out.backward(None)
    assert a.feedback == []  # nothing recorded by the failed calls
    assert a.value == "hi"


def test_backward_through_a_graph_object_keeps_metadata():
    a = node("hi", name="a", trainable=True)
    g = Graph(shout(a), metadata={"run_id": "r1"})
    sub = g.backward(0.25)
    assert sub.feedback == Feedback(score=0.25)
    assert a.feedback[0].metadata == {"run_id": "r1"}


def test_parameter_reaching_output_twice_is_recorded_once():
    a = node("x", name="a", trainable=True)
    out = concat(a, shout(a))
    out.backward("fb")
    assert len(a.feedback) == 1
    assert Parameter is type(a)
