"""Turn one finished LangChain run tree into one OPTO graph.

Every leaf run (prompt, model, retriever, tool, parser, function) becomes a computed node;
containers (sequences, parallels, lambdas that call other runnables, LangGraph nodes) are
mostly transparent. Where a step's input came from is decided by the run tree where the tree
says it (``seq:step:N``: the previous step; ``map:key:K``: the parallel's input) and, inside
other containers, by data: the texts, message ids and tool-call ids of the input are matched
against what earlier steps produced (so a tool's output feeds the next model call of an agent
loop). Parameters enter as inputs: a prompt's templates (found by the id stamped in the
prompt's metadata), the tool descriptions a model was called with (from its invocation
params), an agent's system prompt (by its text in the model's messages).
"""

from __future__ import annotations

import functools
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.tracers.schemas import Run

from ..trace import ExceptionNode, Graph, Node, Op, Parameter, safe_name
from .discovery import STAMP_KEY, Discovered
from .values import atoms, message_role, message_text, readable, strong
from .writeback import schema_holder

__all__ = ["ERROR_KEY", "build_graph"]

ERROR_KEY = "__opto_adapters_error"
"""Where the tracer keeps the exception object of a failed run (``Run.extra``)."""

_STEP = re.compile(r"^seq:step:(\d+)$")
_ROLE_ARG = {"human": "human", "ai": "ai", "system": "system", "tool": "tool"}

_OPS: dict[tuple[str, str], Op] = {}
_OPS_LOCK = threading.Lock()


def op(name: str, doc: str) -> Op:
    """One shared ``Op`` per (name, doc) (bounded: names are few)."""
    key = (name, doc)
    found = _OPS.get(key)
    if found is None:
        with _OPS_LOCK:
            if len(_OPS) > 2000:
                _OPS.clear()
            found = _OPS.setdefault(key, Op(name, doc))
    return found


def _op_name(run: Run) -> str:
    name = run.name or (run.serialized or {}).get("name") or run.run_type or "step"
    return str(name).split("<", 1)[0] or "step"


def _part(text: Any, default: str) -> str:
    """A valid node name (at most 100 characters) from framework text: a run, tool or function
    name, a key. Dots become ``_``: in a name they separate parts (``input.question``)."""
    return safe_name(str(text).replace(".", "_"), default=default)


@functools.lru_cache(maxsize=1024)
def _snake(name: str) -> str:
    """A run's name as a node name: ``StrOutputParser`` -> ``str_output_parser``."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.split("<", 1)[0])
    return _part(text.lower(), "step")


def _doc(run: Run, name: str) -> str:
    kind = run.run_type
    if kind == "prompt":
        return f"{name}: fills the prompt's templates with the variables and returns the messages for the model."
    if kind == "chat_model":
        return f"Chat model {name}: writes the next message given the input messages and the descriptions of the tools it may call."
    if kind == "llm":
        return f"Language model {name}: completes the prompt text."
    if kind == "retriever":
        return f"Retriever {name}: returns the documents most relevant to the query."
    if kind == "tool":
        return f"Tool '{name}': runs with the arguments the model chose and returns its result."
    if kind == "parser":
        return f"Output parser {name}: turns the model output into the value the app uses."
    return f"Step '{name}' of the app (a function or runnable)."


def _unwrap(data: Any, key: str) -> Any:
    """Chain runs wrap non-dict values as ``{"input": x}`` / ``{"output": x}``."""
    if isinstance(data, dict) and len(data) == 1 and key in data:
        return data[key]
    return data


def _error_of(run: Run) -> BaseException:
    exc = (run.extra or {}).get(ERROR_KEY)
    if isinstance(exc, BaseException):
        return exc
    lines = [line for line in str(run.error or "error").strip().splitlines() if line.strip()]
    return RuntimeError(lines[0] if lines else "error")


def _traceback_tail(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return ""
    return "".join(traceback.format_tb(tb, limit=-2)).rstrip()


class _Inputs(dict):
    """Argument name -> input node; a repeated name gets ``_2``, ``_3``..."""

    def __init__(self) -> None:
        super().__init__()
        self._next: dict[str, int] = {}
        self._ids: set[int] = set()

    def add(self, name: str, node: Node) -> None:
        if name in self:
            i = self._next.get(name, 2)
            while f"{name}_{i}" in self:
                i += 1
            self._next[name] = i + 1
            name = f"{name}_{i}"
        self[name] = node
        self._ids.add(id(node))

    def add_new(self, name: str, node: Node) -> None:
        """Add ``node`` unless it is an input already."""
        if id(node) not in self._ids:
            self.add(name, node)


class _Builder:
    """Builds the graph of one root run. Not shared between threads."""

    def __init__(
        self, found: Discovered, by_run_name: Mapping[str, list[tuple[str, Parameter]]]
    ) -> None:
        self.found = found
        self.by_run_name = by_run_name
        self.index: dict[Any, list[Node]] = {}  # atom -> nodes that produced it, in order
        self.node_atoms: dict[int, set] = {}
        self.rank: dict[int, int] = {}  # production order
        self.hint: dict[int, str] = {}  # what a node is, for argument names
        self.content: dict[str, Parameter] = {}
        self.memo: dict[int, tuple[Any, frozenset]] = {}  # message atoms, by object
        for param in found.by_content:
            text = param.value
            if isinstance(text, str) and text.strip():
                self.content[text.strip()] = param
                self._register(param, {text.strip()}, "system")

    # -- producing and finding nodes --------------------------------------------------------

    def atoms(self, value: Any) -> set:
        return atoms(value, self.memo)

    def _register(self, node: Node, found: set, hint: str) -> None:
        self.rank[id(node)] = len(self.rank)
        self.node_atoms[id(node)] = found
        self.hint[id(node)] = hint
        for a in found:
            self.index.setdefault(a, []).append(node)

    def produce(self, node: Node, raw: Any, hint: str) -> Node:
        self._register(node, self.atoms(raw), hint)
        return node

    def _candidates(self, atom: Any, in_flow: set[int] | None) -> list[Node]:
        """Nodes that produced ``atom``: only those in the flow when ``in_flow`` is given."""
        param = self.content.get(atom) if isinstance(atom, str) else None
        if param is not None:
            return [param]
        nodes = self.index.get(atom, [])
        if in_flow is None:
            return nodes
        return [n for n in nodes if id(n) in in_flow]

    def sources(self, value: Any, flow: list[Node], restricted: bool) -> tuple[list[Node], bool]:
        """The nodes ``value`` was made from (production order) and whether they explain all
        of its text. An atom several nodes produced goes to the one that produced most of
        ``value``, then to one in ``flow``, then to the earliest (where a text originated)."""
        found = self.atoms(value)
        in_flow = {id(n) for n in flow}
        per_atom = {a: self._candidates(a, in_flow if restricted else None) for a in found}
        votes: dict[int, int] | None = None
        chosen: dict[int, Node] = {}
        covered = True
        for a, nodes in per_atom.items():
            if not nodes:
                covered = covered and not isinstance(a, str)
                continue
            if len(nodes) == 1:
                best = nodes[0]
            else:
                if votes is None:
                    votes = _votes(per_atom)
                best = max(
                    nodes,
                    key=lambda n: (votes.get(id(n), 0), id(n) in in_flow, -self.rank.get(id(n), 0)),
                )
            chosen[id(best)] = best
        ordered = sorted(chosen.values(), key=lambda n: self.rank.get(id(n), 0))
        return ordered, covered and bool(strong(found) or ordered)

    def keyed_sources(
        self, values: Mapping[str, Any], flow: list[Node], restricted: bool
    ) -> list[tuple[str, Node]]:
        """``(key, source)`` for the items of a dict input (a prompt's variables, tool args)."""
        pairs: list[tuple[str, Node]] = []
        for key, value in values.items():
            nodes, _ = self.sources(value, flow, restricted)
            pairs.extend((str(key), n) for n in nodes)
        return pairs

    def message_sources(
        self, messages: list, flow: list[Node], restricted: bool
    ) -> list[tuple[str, Node]]:
        """``(role, source)`` per input message, each message credited to one source: the one
        that produced most of that message, then the one that produced most of all messages."""
        per_message = [self.atoms(m) for m in messages]
        in_flow = {id(n) for n in flow}
        scope = in_flow if restricted else None
        candidates = {a: self._candidates(a, scope) for found in per_message for a in found}
        votes = _votes(candidates)
        pairs: list[tuple[str, Node]] = []
        seen: set[int] = set()
        for message, found in zip(messages, per_message, strict=True):
            counts: dict[int, int] = {}
            nodes: dict[int, Node] = {}
            for a in found:
                for n in candidates[a]:
                    counts[id(n)] = counts.get(id(n), 0) + 1
                    nodes[id(n)] = n
            if not nodes:
                continue
            best = max(
                nodes.values(),
                key=lambda n: (
                    counts[id(n)],
                    votes.get(id(n), 0),
                    id(n) in in_flow,
                    -self.rank.get(id(n), 0),
                ),
            )
            if id(best) not in seen:
                seen.add(id(best))
                pairs.append((_ROLE_ARG.get(message_role(message) or "", "messages"), best))
        return pairs

    # -- runs -------------------------------------------------------------------------------

    def visit(self, run: Run, flow: list[Node], restricted: bool) -> list[Node]:
        if run.child_runs:
            return self.container(run, flow, restricted)
        if run.run_type == "chain" and _op_name(run) == "RunnablePassthrough" and not run.error:
            nodes, _ = self.sources(_unwrap(run.inputs, "input"), flow, restricted)
            return nodes or flow
        return [self.leaf(run, flow, restricted)]

    def container(
        self,
        run: Run,
        flow: list[Node],
        restricted: bool,
        children: list[Run] | None = None,
        generic: bool = False,
    ) -> list[Node]:
        own, _ = self.sources(_unwrap(run.inputs, "input"), flow, restricted)
        own = own or flow
        children = run.child_runs if children is None else children
        steps = [_step_number(c) for c in children]
        keys = [_map_key(c) for c in children]
        if not generic and children and all(s is not None for s in steps):
            current = own
            for group in _groups(children, steps):
                current = self._step(group, current)
            out = current
        elif not generic and children and all(k is not None for k in keys):
            out = []
            for group in _groups(children, keys):
                out.extend(n for n in self._step(group, own) if n not in out)
        else:
            last: list[Node] = own
            for child in sorted(children, key=_start):
                last = self.visit(child, own, False)
            out = self._generic_output(run, own, last)
        if run.error:
            failed = [n for n in out if isinstance(n, ExceptionNode)]
            if failed:
                return [failed[-1]]
            return [self._error_node(run, self._inputs_from(out, run))]
        if run.run_type in ("tool", "retriever"):
            # a tool or retriever that calls other runnables stays a step of its own: its
            # arguments, plus what its inner runs returned
            inputs = _Inputs()
            for key, n in self._input_pairs(run, flow, restricted):
                inputs.add(key, n)
            for n in out:
                inputs.add_new("result", n)
            self._add_params(inputs, run)
            node = Node(
                _value(self._output(run)),
                name=self._node_name(run),
                inputs=inputs,
                op=op(_op_name(run), _doc(run, _op_name(run))),
            )
            return [self.produce(node, self._output(run), run.run_type)]
        return out

    def _step(self, group: list[Run], flow: list[Node]) -> list[Node]:
        """One step of a sequence or parallel. Several runs with the step's tag: the first is
        the step, the others ran inside it but were reported beside it (langchain-core 1.8
        ``RunnableWithFallbacks`` passes its own config on, langchain-ai/langchain#36072)."""
        head, inner = group[0], group[1:]
        if not inner:
            return self.visit(head, flow, True)
        return self.container(head, flow, True, children=[*head.child_runs, *inner], generic=True)

    def _generic_output(self, run: Run, own: list[Node], last: list[Node]) -> list[Node]:
        if run.error:
            return last
        output = self._output(run)
        nodes, covered = self.sources(output, own, False)
        if covered and nodes:
            return nodes
        node = Node(
            _value(output),
            name=_snake(_op_name(run)),
            inputs=self._inputs_from(nodes or last, run, output),
            op=op(_op_name(run), _doc(run, _op_name(run))),
        )
        return [self.produce(node, output, "output")]

    def _inputs_from(self, nodes: Iterable[Node], run: Run, output: Any = None) -> _Inputs:
        """Inputs of a node that stands for a whole step: by output key when the output is a
        dict whose keys each came from one node, else ``input`` or what each node is."""
        nodes = list(nodes)
        inputs = _Inputs()
        pairs: list[tuple[str, Node]] = []
        if isinstance(output, dict) and output:
            pairs = self.keyed_sources(output, nodes, True)
            one_each = len({k for k, _ in pairs}) == len(pairs) == len({id(n) for _, n in pairs})
            if not one_each or {id(n) for _, n in pairs} != {id(n) for n in nodes}:
                pairs = []
        if not pairs:
            pairs = [
                ("input" if len(nodes) == 1 else self.hint.get(id(n), "input"), n) for n in nodes
            ]
        for key, n in pairs:
            inputs.add(key, n)
        self._add_params(inputs, run)
        return inputs

    @staticmethod
    def _output(run: Run) -> Any:
        outputs = run.outputs or {}
        if run.run_type == "retriever" and "documents" in outputs:
            return outputs["documents"]
        return _unwrap(outputs, "output")

    def _add_params(self, inputs: _Inputs, run: Run) -> None:
        metadata = (run.extra or {}).get("metadata") or {}
        stamp = metadata.get(STAMP_KEY)
        for arg, param in self.found.by_stamp.get(stamp, ()) if stamp else ():
            inputs.add_new(arg, param)
        for arg, param in self.by_run_name.get(run.name or "", ()):
            inputs.add_new(arg, param)

    def leaf(self, run: Run, flow: list[Node], restricted: bool) -> Node:
        kind = run.run_type
        inputs = _Inputs()
        if kind == "prompt":
            self._add_params(inputs, run)
            pairs = self.keyed_sources(run.inputs or {}, flow, restricted)
            for key, node in pairs or [("input", n) for n in flow]:
                # no variable matched (e.g. numbers only): the prompt still used its input
                inputs.add(key, node)
            raw, hint = _unwrap(run.outputs or {}, "output"), "messages"
        elif kind in ("chat_model", "llm"):
            raw, hint = self._model_inputs(run, flow, restricted, inputs), "ai"
        else:
            for key, node in self._input_pairs(run, flow, restricted):
                inputs.add(key, node)
            self._add_params(inputs, run)
            raw = self._output(run)
            hint = {"retriever": "documents", "tool": "tool"}.get(kind, "input")
        name = _op_name(run)
        node_op = op(name, _doc(run, name))
        node_name = self._node_name(run)
        if run.error:
            exc = _error_of(run)
            node: Node = ExceptionNode(
                exc, name=node_name, inputs=inputs, op=node_op, traceback=_traceback_tail(exc)
            )
            return self.produce(node, None, "error")
        node = Node(_value(raw), name=node_name, inputs=inputs, op=node_op)
        return self.produce(node, raw, hint)

    def _input_pairs(self, run: Run, flow: list[Node], restricted: bool) -> list[tuple[str, Node]]:
        """``(argument, source)`` for a step's input: by key for a dict (tool arguments,
        function inputs), else ``input`` (``query`` for a retriever); ``flow`` if none."""
        data = _unwrap(run.inputs or {}, "input")
        if run.run_type == "retriever":
            data = (run.inputs or {}).get("query", data)
        if isinstance(data, dict) and data and not _is_message_like(data):
            pairs = self.keyed_sources(data, flow, restricted)
        else:
            nodes, _ = self.sources(data, flow, restricted)
            default = "query" if run.run_type == "retriever" else "input"
            pairs = [
                (default if len(nodes) == 1 else self.hint.get(id(n), default), n) for n in nodes
            ]
        return pairs or [("input", n) for n in flow]

    def _stamp(self, run: Run) -> str | None:
        return ((run.extra or {}).get("metadata") or {}).get(STAMP_KEY)

    def _node_name(self, run: Run) -> str:
        if run.run_type in ("chat_model", "llm"):
            return "model"
        if run.run_type == "prompt":
            label = self.found.labels.get(self._stamp(run) or "")
            return label or "prompt"
        if run.run_type == "retriever":
            return "retriever"
        return _snake(_op_name(run))

    def _model_inputs(self, run: Run, flow: list[Node], restricted: bool, inputs: _Inputs) -> Any:
        data = run.inputs or {}
        if run.run_type == "chat_model":
            batches = data.get("messages") or [[]]
            messages = list(batches[0]) if batches else []
            pairs = self.message_sources(messages, flow, restricted)
            if len(pairs) == 1:
                pairs = [("messages", pairs[0][1])]
            if not pairs:
                pairs = [("messages", n) for n in flow]
        else:
            prompts = data.get("prompts") or []
            nodes, _ = self.sources(prompts[:1], flow, restricted)
            pairs = [("prompt", n) for n in nodes or flow]
        for key, node in pairs:
            inputs.add(key, node)
        params = (run.extra or {}).get("invocation_params") or {}
        for schema in params.get("tools") or ():
            held = schema_holder(schema)
            name = held[0] if held else getattr(schema, "name", None)
            param = self.found.tools.get(name) if isinstance(name, str) else None
            if param is not None:
                inputs.add_new(f"tool:{name}", param)
        self._add_params(inputs, run)
        return run.outputs

    def _error_node(self, run: Run, inputs: _Inputs) -> ExceptionNode:
        exc = _error_of(run)
        node = ExceptionNode(
            exc,
            name=_snake(_op_name(run)),
            inputs=inputs,
            op=op(_op_name(run), _doc(run, _op_name(run))),
            traceback=_traceback_tail(exc),
        )
        self.produce(node, None, "error")
        return node

    # -- the root ---------------------------------------------------------------------------

    def root_inputs(self, run: Run) -> list[Node]:
        data = run.inputs or {}
        if run.run_type == "chat_model":
            batches = data.get("messages") or [[]]
            items = {"input": list(batches[0]) if batches else []}
        elif run.run_type == "llm":
            items = {"input": (data.get("prompts") or [""])[0]}
        elif run.run_type == "retriever":
            items = {"input": data.get("query")}
        elif isinstance(data, dict) and set(data) == {"input"}:
            items = {"input": data["input"]}
        elif isinstance(data, dict) and data:
            items = {f"input.{_part(k, 'value')}": v for k, v in data.items()}
        else:
            items = {"input": data}
        leaves = []
        for name, raw in items.items():
            leaf = Node(readable(raw), name=safe_name(name), description="an input of the run")
            leaves.append(self.produce(leaf, raw, "input"))
        return leaves

    def build(self, root: Run) -> Graph:
        leaves = self.root_inputs(root)
        out = self.visit(root, leaves, True)
        if root.error:
            failed = [n for n in out if isinstance(n, ExceptionNode)]
            output = failed[-1] if failed else self._error_node(root, self._inputs_from(out, root))
        elif len(out) == 1:
            output = out[0]
        else:
            name = _op_name(root)
            label = "agent" if name == "LangGraph" else _snake(name)
            output = Node(
                readable(self._output(root)),
                name=label,
                inputs=self._inputs_from(out, root, self._output(root)),
                op=op(name, f"{name}: its output is made of the outputs of its steps."),
            )
        metadata = (root.extra or {}).get("metadata") or {}
        return Graph(
            output,
            metadata={
                "run_id": str(root.id),
                "name": root.name,
                "run_type": root.run_type,
                "tags": list(root.tags or ()),
                # what the app passed in its config (e.g. an example id), not LangChain's own
                "metadata": {
                    k: v
                    for k, v in metadata.items()
                    if k != STAMP_KEY
                    and not k.startswith(("ls_", "lc_", "langgraph_", "checkpoint_"))
                },
            },
        )


def _value(raw: Any) -> Any:
    """A step's output as the optimizer reads it (one message: just its text)."""
    text = message_text(raw, role=False)
    return text if text is not None else readable(raw)


def _votes(candidates: Mapping[Any, list[Node]]) -> dict[int, int]:
    """How many of the atoms each candidate node produced."""
    votes: dict[int, int] = {}
    for nodes in candidates.values():
        for n in nodes:
            votes[id(n)] = votes.get(id(n), 0) + 1
    return votes


def _step_number(run: Run) -> int | None:
    """N of the ``seq:step:N`` tag: the run's position in its sequence."""
    for tag in run.tags or ():
        match = _STEP.match(tag)
        if match:
            return int(match.group(1))
    return None


def _map_key(run: Run) -> str | None:
    """K of the ``map:key:K`` tag: the run's branch of its parallel."""
    for tag in run.tags or ():
        if tag.startswith("map:key:"):
            return tag[8:]
    return None


def _start(run: Run) -> str:
    return run.dotted_order or ""


def _groups(children: list[Run], keys: list[Any]) -> list[list[Run]]:
    """Children grouped by key (step number or branch), groups and members by start."""
    by_key: dict[Any, list[Run]] = {}
    for child, key in sorted(zip(children, keys, strict=True), key=lambda x: _start(x[0])):
        by_key.setdefault(key, []).append(child)
    groups = list(by_key.values())
    if all(isinstance(k, int) for k in by_key):
        groups = [by_key[k] for k in sorted(by_key)]
    return groups


def _is_message_like(data: dict) -> bool:
    return "content" in data and ("role" in data or "type" in data or "lc" in data)


def build_graph(
    root: Run,
    found: Discovered,
    by_run_name: Mapping[str, list[tuple[str, Parameter]]] | None = None,
) -> Graph:
    """The OPTO graph of a finished root run (see the module docstring)."""
    return _Builder(found, by_run_name or {}).build(root)
