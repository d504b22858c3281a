"""OPTO graphs as JSON (nodes and edges) and back, so stored runs can be shown and reused.

``graph_to_json`` keeps every node's readable name, operation, value and role; values that
JSON cannot hold are kept as their readable text. ``graph_from_json`` rebuilds a graph whose
parameter nodes are the live ``Parameter`` objects of the same name, so feedback on a stored
run reaches them as if the run had just happened (used when a run is resumed).

``bound_graph_json`` cuts node values (and tracebacks, descriptions) to a character budget with
the optimizer prompt's explicit marker, so a stored graph stays small whatever the app returned;
a cut entry records its full length (``"cut"``), and a cut parameter value the hash of the
whole value, so a rebuilt graph still uses the live parameter's whole value when it is the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..trace import ExceptionNode, Graph, Node, Op, Parameter
from ..trace.render import cut, value_text

__all__ = ["FORMAT_VERSION", "StoredError", "bound_graph_json", "graph_from_json", "graph_to_json"]

FORMAT_VERSION = 1
_PLAIN = (str, int, float, bool, type(None))
_CUT_TEXT = ("traceback", "description", "doc", "constraint")  # texts cut beside the value


class StoredError(Exception):
    """An exception read back from the store (its class is named after the original)."""


def _json_value(value: Any) -> tuple[Any, bool]:
    """(value, is_text): the value if JSON holds it, else its readable text."""
    if isinstance(value, _PLAIN):
        return value, False
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return value_text(value), True
    return value, False


def _value_hash(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=value_text)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _bound_entry(entry: Mapping[str, Any], budget: int) -> dict[str, Any] | None:
    """A copy of a node entry cut to ``budget``, or ``None`` when nothing needs cutting."""
    changed: dict[str, Any] = {}
    value = entry.get("value")
    if not isinstance(value, (int, float, bool, type(None))):
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > budget:
            changed["value"] = cut(text, budget)
            changed["cut"] = len(text)
            if not isinstance(value, str):
                changed["value_type"] = entry.get("value_type", type(value).__name__)
            if entry.get("role") == "parameter":
                changed["value_hash"] = _value_hash(value)
    for key in _CUT_TEXT:
        text = entry.get(key)
        if isinstance(text, str) and len(text) > budget:
            changed[key] = cut(text, budget)
    return {**entry, **changed} if changed else None


def bound_graph_json(data: Mapping[str, Any], budget: int | None) -> Mapping[str, Any]:
    """``data`` (from ``graph_to_json``) with node values longer than ``budget`` characters
    cut with a marker (JSON values as their JSON text); ``data`` itself is left unchanged.
    ``None`` keeps everything."""
    if budget is None:
        return data
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        return data
    bounded, changed = [], False
    for entry in nodes:
        new = _bound_entry(entry, budget) if isinstance(entry, Mapping) else None
        changed = changed or new is not None
        bounded.append(entry if new is None else new)
    return {**data, "nodes": bounded} if changed else data


def graph_to_json(graph: Graph, *, value_budget: int | None = None) -> dict[str, Any]:
    """``{"nodes": [...], "edges": [[src, arg, dst], ...], "output": i}`` for ``graph``;
    with ``value_budget``, node values are cut to it (see ``bound_graph_json``)."""
    nodes = graph.nodes
    names = graph.names()
    index = {id(n): i for i, n in enumerate(nodes)}
    out_nodes = []
    for n in nodes:
        entry: dict[str, Any] = {"name": names[id(n)]}
        if isinstance(n, Parameter):
            entry.update(role="parameter", kind=n.kind, trainable=n.trainable)
            if n.constraint:
                entry["constraint"] = n.constraint
        elif isinstance(n, ExceptionNode):
            entry.update(
                role="error",
                error_type=type(n.exception).__name__,
                traceback=n.traceback,
            )
        else:
            entry["role"] = "input" if n.op is None else "op"
        if n.op is not None:
            entry["op"] = n.op.name
            if n.op.doc:
                entry["doc"] = n.op.doc
            if n.op.kind:
                entry["op_kind"] = n.op.kind
        if n.description:
            entry["description"] = n.description
        if isinstance(n, ExceptionNode):
            entry["value"] = str(n.exception)
        else:
            raw = graph.value_of(n)  # a parameter: the value this run used
            value, is_text = _json_value(raw)
            entry["value"] = value
            if is_text:
                entry["value_type"] = type(raw).__name__
        out_nodes.append(entry)
    edges = [
        [index[id(p)], arg, index[id(n)]] for n in nodes for arg, p in n.inputs.items()
    ]
    data: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "nodes": out_nodes,
        "edges": edges,
        "output": index[id(graph.output)],
    }
    links = [
        [index[node_id], arg, how]
        for (node_id, arg), how in graph.links.items()
        if node_id in index
    ]
    if links:
        data["links"] = links  # how inferred edges were found
    return dict(bound_graph_json(data, value_budget))


def _frozen_parameter(entry: Mapping[str, Any]) -> Parameter | None:
    """A read-only stand-in for a stored parameter that is not live (shown, never trained)."""
    try:
        return Parameter(
            entry.get("value"),
            name=entry["name"],
            kind=entry.get("kind", "text"),
            description=entry.get("description", ""),
            constraint=entry.get("constraint", ""),
            trainable=False,
        )
    except (ValueError, TypeError):
        return None


def graph_from_json(data: Mapping[str, Any], parameters: Mapping[str, Parameter]) -> Graph:
    """Rebuild a stored graph; parameter nodes named like ``parameters`` become those objects,
    other parameters read-only copies (``trainable=False``)."""
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"unknown stored graph format {data.get('format')!r}")
    inputs: dict[int, dict[str, int]] = {}
    for src, arg, dst in data["edges"]:
        inputs.setdefault(dst, {})[arg] = src
    ops: dict[tuple[str, str, str], Op] = {}
    built: list[Node] = []
    used: dict[int, Any] = {}
    for i, entry in enumerate(data["nodes"]):
        name = entry["name"]
        parents = {arg: built[src] for arg, src in inputs.get(i, {}).items()}
        op = None
        if "op" in entry:
            key = (entry["op"], entry.get("doc", ""), entry.get("op_kind", ""))
            op = ops.setdefault(key, Op(*key))
        role = entry["role"]
        if role == "parameter" and name in parameters:
            live = parameters[name]
            built.append(live)
            if "cut" in entry and entry.get("value_hash") == _value_hash(live.value):
                used[id(live)] = live.value  # the run used the live value, whole
            else:
                used[id(live)] = entry.get("value")
        elif role == "parameter" and (frozen := _frozen_parameter(entry)) is not None:
            built.append(frozen)
        elif role == "error":
            exc_type = entry.get("error_type", "Exception")
            cls = type(exc_type, (StoredError,), {}) if exc_type.isidentifier() else StoredError
            built.append(
                ExceptionNode(
                    cls(entry.get("value", "")),
                    name=name,
                    inputs=parents,
                    op=op,
                    traceback=entry.get("traceback", ""),
                    description=entry.get("description", ""),
                )
            )
        else:
            built.append(
                Node(
                    entry.get("value"),
                    name=name,
                    inputs=parents,
                    op=op,
                    description=entry.get("description", ""),
                )
            )
    graph = Graph(built[data["output"]], metadata={"restored": True})
    graph.values = used
    graph.links = {
        (id(built[i]), str(arg)): str(how)
        for i, arg, how in data.get("links") or ()
        if isinstance(i, int) and 0 <= i < len(built)
    }
    return graph
