"""Shared pytest fixtures, and the graph invariant checked on every run of the suite."""

from __future__ import annotations

import pytest

from opto_adapters import runs
from opto_adapters.testing import scripted_llm  # noqa: F401  (registers the fixture)
from opto_adapters.trace import Parameter


def graph_problems(root: runs.Span, graph) -> list[str]:
    """What a graph lost of its run: model calls the framework recorded that are not nodes
    (ancestors of the output), parameters a step used explicitly that are not in it."""
    problems = []
    calls = sum(1 for span in root.walk() if span.kind == "llm")
    nodes = sum(1 for n in graph.nodes if n.op is not None and n.op.kind == "llm")
    if nodes != calls:
        problems.append(f"{calls} model call(s) recorded, {nodes} in the graph")
    in_graph = {id(p) for p in graph.parameters}
    for span in root.walk():
        for _, p in span.parameters:
            if isinstance(p, Parameter) and id(p) not in in_graph:
                problems.append(f"parameter {p.name!r} used by {span.kind} {span.name!r} is not in the graph")
    return problems


@pytest.fixture(autouse=True)
def every_graph_keeps_every_model_call(monkeypatch):
    """Every graph any tracer builds in any test: no model call or parameter use dropped."""
    build = runs.build_graph
    found: list[str] = []

    def checked(root, **kwargs):
        graph = build(root, **kwargs)
        found.extend(f"run {graph.metadata.get('run_id')}: {p}" for p in graph_problems(root, graph))
        return graph

    monkeypatch.setattr(runs, "build_graph", checked)
    yield
    assert not found, "graphs lost steps of their runs:\n" + "\n".join(found)
