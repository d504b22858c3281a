"""What every framework tracer shares: its parameters, a bounded record of graphs, save/load.

Framework-free; the LangChain and LlamaIndex tracers build on ``TracerBase``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .graph import Graph
from .modules import load_parameters, save_parameters
from .parameters import Parameter, parameters_by_name

__all__ = ["Pending", "TracedRun", "TracerBase", "select_parameters"]


class Pending:
    """A graph not built yet: built once, when first asked for; every later ask (the
    tracer's ``graph(id)``, a ``TracedRun``'s ``.graph``) gets the same graph. ``build``
    returns ``None`` if it could not build the graph (it logs why)."""

    __slots__ = ("_build", "_graph", "_lock")

    def __init__(self, build: Callable[[], Graph | None]) -> None:
        self._build: Callable[[], Graph | None] | None = build
        self._graph: Graph | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Graph | None:
        if self._build is not None:
            with self._lock:
                if self._build is not None:
                    self._graph = self._build()
                    self._build = None  # drops what the graph was built from
        return self._graph


class _GraphField:
    """``TracedRun.graph``: a ``Graph`` (or ``None``), or a ``Pending`` one, built when
    first read."""

    def __get__(self, obj: Any, owner: type | None = None) -> Graph | None:
        if obj is None:
            return None  # the field's default
        value = obj.__dict__.get("_graph")
        if isinstance(value, Pending):
            value = obj.__dict__["_graph"] = value()
        return value

    def __set__(self, obj: Any, value: Graph | Pending | None) -> None:
        obj.__dict__["_graph"] = value


@dataclass
class TracedRun:
    """One run of an app: what it returned (or raised) and its graph.

    When the app raised, ``output`` is ``None``, ``error`` the exception and ``graph.output``
    an ``ExceptionNode``. A tracer may hand over the graph unbuilt (a ``Pending``): it is
    built from what was recorded when the run ended the first time ``.graph`` is read, so a
    run whose graph nobody reads costs little more than recording it.
    """

    output: Any
    graph: Graph | None = _GraphField()  # type: ignore[assignment]
    error: BaseException | None = None


def select_parameters(
    parameters: Iterable[Parameter],
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[Parameter]:
    """Parameters whose names match any ``include`` pattern and no ``exclude`` pattern.

    Patterns are shell-style (``*system*``). An include pattern that matches nothing is an
    error: it is almost always a typo.
    """
    params = list(parameters)
    names = [p.name for p in params]
    if include is not None:
        include = list(include)
        for pattern in include:
            if not fnmatch.filter(names, pattern):
                raise ValueError(f"include pattern {pattern!r} matches no parameter; found: {names}")
        params = [p for p in params if any(fnmatch.fnmatchcase(p.name, pat) for pat in include)]
    if exclude is not None:
        exclude = list(exclude)
        params = [p for p in params if not any(fnmatch.fnmatchcase(p.name, pat) for pat in exclude)]
    return params


class TracerBase:
    """Parameters plus the last ``max_graphs`` graphs, by run id, thread-safe."""

    _logger_name = "opto_adapters"

    def __init__(self, parameters: Iterable[Parameter], *, max_graphs: int = 100) -> None:
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive int, got {max_graphs!r}")
        self.max_graphs = max_graphs
        self._parameters = list(parameters)
        parameters_by_name(self._parameters)  # names must be unique: they key suggestions and files
        self._graphs: OrderedDict[str, Graph | Pending] = OrderedDict()
        self._graph_lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    @property
    def parameters(self) -> list[Parameter]:
        """The trainable parameters, bound to the live objects."""
        return [p for p in self._parameters if p.trainable]

    def parameter(self, name: str) -> Parameter:
        """The parameter called ``name``."""
        for p in self._parameters:
            if p.name == name:
                return p
        raise KeyError(f"no parameter named {name!r}; the parameters are {[p.name for p in self._parameters]}")

    def add_parameter(self, parameter: Parameter) -> Parameter:
        """Add a parameter of your own (e.g. a retriever's ``k`` bound to the live object)."""
        if not isinstance(parameter, Parameter):
            raise TypeError(f"expected a Parameter, got {type(parameter).__name__}")
        parameters_by_name([*self._parameters, parameter])
        self._parameters.append(parameter)
        return parameter

    def _parameter_values(self) -> dict[int, Any]:
        """Every parameter's value now, by ``id`` (a graph built later shows its run's)."""
        values: dict[int, Any] = {}
        for p in self._parameters:
            try:
                values[id(p)] = p.peek()
            except Exception:  # a binding whose object changed shape: nothing to remember
                continue
        return values

    def _unlinked(self, span: Any, reason: str) -> None:
        """A step of a run that nothing could be linked to (``span.kind``, ``span.name``):
        say so once per tracer and step, naming it, with what to do."""
        key = (span.kind, span.name)
        with self._graph_lock:
            if key in self._warned:
                return
            self._warned.add(key)
        logging.getLogger(self._logger_name).warning(
            "opto_adapters: the %s step %r could not be linked to the steps before it (%s); "
            "it is in the graph, fed by what ran before it. If its input came from another "
            "run, trace both as one run (one chain, one query, or inside `with tracer:`)",
            span.kind,
            span.name,
            reason,
        )

    def _record(self, run_id: str, graph: Graph | Callable[[], Graph | None]) -> Graph | Pending:
        """Keep the graph of a finished run, or a function that builds it when first asked
        for (a run nobody looks at then costs little more than recording it); return what
        is kept (give it to the run's ``TracedRun``). The function returns ``None`` if it
        could not build the graph (it logs why)."""
        item = graph if isinstance(graph, (Graph, Pending)) else Pending(graph)
        with self._graph_lock:
            self._graphs[run_id] = item
            self._graphs.move_to_end(run_id)
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        return item

    def _kept(self, run_id: str) -> Graph | Pending | None:
        """The graph of ``run_id`` as kept, built or not (``None``: not kept)."""
        with self._graph_lock:
            return self._graphs.get(run_id)

    def _built(self, run_id: str) -> Graph | None:
        """The graph of ``run_id``, built now if it was not yet."""
        with self._graph_lock:
            item = self._graphs.get(run_id)
        if not isinstance(item, Pending):
            return item
        graph = item()  # built once, under the item's own lock: runs build side by side
        with self._graph_lock:
            if self._graphs.get(run_id) is item:
                if graph is None:
                    del self._graphs[run_id]
                else:
                    self._graphs[run_id] = graph
        return graph

    def _has_graph(self, run_id: str) -> bool:
        with self._graph_lock:
            return run_id in self._graphs

    @property
    def graphs(self) -> list[Graph]:
        """The most recent graphs, oldest first (at most ``max_graphs``)."""
        with self._graph_lock:
            ids = list(self._graphs)
        return [g for g in map(self._built, ids) if g is not None]

    @property
    def last_graph(self) -> Graph | None:
        """The graph of the most recently finished run, or ``None``."""
        while True:
            with self._graph_lock:
                run_id = next(reversed(self._graphs), None)
            if run_id is None:
                return None
            graph = self._built(run_id)
            if graph is not None:
                return graph

    def graph(self, run_id: Any) -> Graph:
        """The graph of the run with this id (if still kept)."""
        graph = self._built(str(run_id))
        if graph is None:
            raise KeyError(
                f"no graph for run {run_id}: it has not finished, was not traced by this tracer, "
                f"or is older than the last {self.max_graphs} (raise max_graphs)"
            )
        return graph

    def clear(self) -> None:
        """Forget the recorded graphs."""
        with self._graph_lock:
            self._graphs.clear()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the current parameter values to a JSON file."""
        return save_parameters(self._parameters, path)

    def load(self, path: str | os.PathLike[str], *, strict: bool = True) -> None:
        """Write the values of a saved file into the live objects, all or nothing."""
        load_parameters(self._parameters, path, strict=strict)
