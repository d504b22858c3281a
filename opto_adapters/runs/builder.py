"""The one builder: a span tree in, the OPTO graph of that run out.

Every step that did work (a model call, a retrieval, a tool call, a prompt, a parser, a
function) becomes a computed node; compositions are transparent unless their output is more
than their children's. Where each input of a step came from is decided, in this order, by

1. **explicit links**: a tool run is fed by the model call whose tool call it answers;
2. **exact content**: the texts, message, tool-call and document ids of the input were
   produced by an earlier step;
3. **containment**: the input contains earlier outputs (a joined or prefixed string), or is
   a piece of one (an argument a model wrote inside its reply);
4. **structure**: the previous step of a sequence, the previous sibling, or the enclosing
   span's inputs.

Parameters enter where they were used: explicitly (``Span.parameters``) or found in the text
a model received (``TextUse``). Nothing is dropped: a step whose output no later step
consumed feeds the node of the span that contains it, so every model call, retrieval and
parameter use is an ancestor of the output. The graph remembers the parameter values of its
run (``Graph.values``) and how each inferred edge was found (``Graph.links``).

Linear in the size of the run: a model call that resends a conversation is linked to the
previous call of that conversation plus its new messages, not to every message again.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..trace import ExceptionNode, Graph, Node, Op, Parameter
from ..trace.names import safe_name
from .matching import TextUse, find_use
from .spans import Span
from .usage import usage
from .values import Message, atoms, display, strong

__all__ = ["build_graph"]

logger = logging.getLogger("opto_adapters.runs")

_MIN_TEXT = 12  # shorter produced texts count inside other values only as whole words
_MIN_SHORT_TEXT = 4  # shorter ones are never looked for
_MIN_PART = 8  # shorter values are not looked for inside earlier outputs
_MAX_SCAN = 2000  # produced texts scanned per containment search (most recent first)
_MAX_PART_SCAN = 64
_MAX_HITS = 64
_RECENT_CALLS = 8  # conversations followed at once (for the resent-history shortcut)
_TRACEBACK_LINES = 12

_DOCS = {
    "prompt": "{name}: fills the prompt's templates with the variables and returns the messages for the model.",
    "llm": "Model {name}: writes the next message given the input messages or prompt (and the descriptions of the tools it may call).",
    "retriever": "Retriever {name}: returns the documents most relevant to the query.",
    "tool": "Tool '{name}': runs with the arguments the model chose and returns its result.",
    "parser": "Output parser {name}: turns the model output into the value the app uses.",
    "embedding": "Embedding model {name}: turns text into a vector.",
    "agent": "Agent {name}: calls the model, runs the tools it asks for, and repeats until it answers.",
    "query": "{name}: answers the query (retrieves context, then asks the model).",
    "synthesize": "{name}: fills the prompt with the query and the retrieved context and asks the model; returns the answer.",
    "chat": "{name}: one chat turn: answers the message using the history (and retrieved context, if any).",
    "chain": "Step '{name}' of the app (a function or runnable).",
}


def build_graph(
    root: Span,
    *,
    uses: Sequence[TextUse] = (),
    instances: set[int] | None = None,
    input_name: Callable[[str], str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    on_unlinked: Callable[[Span, str], None] | None = None,
    values: Mapping[int, Any] | None = None,
) -> Graph:
    """The OPTO graph of the run ``root`` (see the module docstring).

    ``uses``: parameters to look for in what models received; those with ``owners`` count only
    when one of their owners is in ``instances`` (the objects that ran). ``input_name`` names
    the leaf of each of the root's inputs (default: its key). ``on_unlinked(span, reason)`` is
    told about a step nothing could be linked to. ``values``: the parameter values when the
    run ended, by ``id`` (default: their values now), kept as ``Graph.values``.
    """
    return _Build(uses, instances, input_name, on_unlinked).build(root, metadata or {}, values or {})


class _Inputs(dict):
    """Argument name -> input node; a node is added once, repeated names get ``_2``..."""

    def __init__(self, links: dict[tuple[int, str], str]) -> None:
        super().__init__()
        self._ids: set[int] = set()
        self._links = links
        self._how: list[tuple[str, str]] = []
        self._next: dict[str, int] = {}

    def add(self, arg: str, node: Node | None, how: str = "") -> None:
        if node is None or id(node) in self._ids:
            return
        arg = str(arg) or "input"
        base = arg
        while arg in self:
            n = self._next.get(base, 1) + 1
            self._next[base] = n
            arg = f"{base}_{n}"
        self[arg] = node
        self._ids.add(id(node))
        if how:
            self._how.append((arg, how))

    def has(self, node: Node) -> bool:
        return id(node) in self._ids

    def seal(self, node: Node) -> None:
        """Record how the inferred edges into ``node`` were found."""
        for arg, how in self._how:
            self._links[(id(node), arg)] = how


class _Lazy(Sequence):
    """The nodes a span was given, found only if a child needs them (a span's input is often
    a whole state or history: finding where it came from costs as much as the history)."""

    def __init__(self, find: Callable[[], list[Node]]) -> None:
        self._find: Callable[[], list[Node]] | None = find
        self._nodes: list[Node] = []

    def _get(self) -> list[Node]:
        if self._find is not None:
            self._nodes, self._find = self._find(), None
        return self._nodes

    def __getitem__(self, i: Any) -> Any:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())


class _Build:
    """The state of building one graph. Not shared between threads."""

    def __init__(
        self,
        uses: Sequence[TextUse],
        instances: set[int] | None,
        input_name: Callable[[str], str] | None,
        on_unlinked: Callable[[Span, str], None] | None,
    ) -> None:
        self.uses = [u for u in uses if not u.owners or (instances and not u.owners.isdisjoint(instances))]
        self.input_name = input_name or (lambda key: key)
        self.on_unlinked = on_unlinked
        self.index: dict[Any, list[Node]] = {}  # atom -> nodes that produced it, in order
        self.plain: dict[str, set[int]] = {}  # text -> nodes that output it as a plain string
        self.texts: dict[str, Node] = {}  # produced text -> latest producer, oldest first
        self.calls: dict[str, Node] = {}  # tool-call id -> the model call that made it
        self.rank: dict[int, int] = {}
        self.hint: dict[int, str] = {}
        self.consumed: set[int] = set()
        self.produced: list[Node] = []  # step nodes, in production order
        self.memo: dict[int, tuple[Any, frozenset]] = {}
        self.links: dict[tuple[int, str], str] = {}
        self.ops: dict[tuple[str, str, str], Op] = {}
        self.params: dict[int, Parameter] = {}
        self.explicit: set[int] = set()
        self.recent: list[tuple[list[Any], Node, list[tuple[str, Parameter]]]] = []
        self.attached: set[int] = set()  # spans whose parameters are in the graph
        self.last_llm: Node | None = None
        self.outsiders: set[int] = set()  # leaves for values no step of the run produced

    # -- the run ---------------------------------------------------------------------------

    def build(self, root: Span, metadata: Mapping[str, Any], values: Mapping[int, Any]) -> Graph:
        for span in root.walk():
            for _, p in span.parameters:
                self.explicit.add(id(p))
        leaves = self.root_inputs(root)
        out = self.visit(root, leaves)
        if len(out) == 1 and not (root.error is not None and not isinstance(out[0], ExceptionNode)):
            output = out[0]
        else:
            inputs = self.new_inputs()
            for arg, n in self.named(out, root.output):
                inputs.add(arg, n)
            output = self.make(root, inputs, root.output, label=root.label or "output")
        graph = Graph(output, metadata={**metadata, "usage": usage(root)})
        graph.values = {
            pid: values[pid] if pid in values else _value_of(p) for pid, p in self.params.items()
        }
        graph.links = self.links
        return graph

    def root_inputs(self, root: Span) -> list[Node]:
        leaves = []
        for key, raw in root.inputs.items():
            leaf = Node(display(raw), name=safe_name(self.input_name(key), default="input"),
                        description="an input of the run")
            self.register(leaf, raw, "input")
            leaves.append(leaf)
        return leaves

    # -- producing and finding nodes -------------------------------------------------------

    def new_inputs(self) -> _Inputs:
        return _Inputs(self.links)

    def register(self, node: Node, raw: Any, hint: str) -> None:
        self.rank[id(node)] = len(self.rank)
        self.hint[id(node)] = hint
        found = atoms(raw, self.memo)
        for text in _plain(raw):
            self.plain.setdefault(text, set()).add(id(node))
        for a in found:
            self.index.setdefault(a, []).append(node)
            if isinstance(a, str) and len(a) >= _MIN_SHORT_TEXT:
                self.texts.pop(a, None)
                self.texts[a] = node
        for call_id in _tool_call_ids(raw):
            self.calls[call_id] = node

    def sources(self, value: Any, flow: Sequence[Node]) -> tuple[list[tuple[Node, str]], bool]:
        """The nodes ``value`` was made from, with how each was found, and whether exact
        content explains all of its text."""
        found = atoms(value, self.memo)
        if not found:
            return [], False
        in_flow: set[int] | None = None  # only needed to break a tie
        plain = _plain(value)
        per_atom = [(a, self._same_form(a, self.index.get(a), plain)) for a in found]
        votes: dict[int, int] = {}
        for _, nodes in per_atom:
            for n in nodes or ():
                votes[id(n)] = votes.get(id(n), 0) + 1
        chosen: dict[int, tuple[Node, str]] = {}
        unmatched: list[str] = []
        for a, nodes in per_atom:
            if not nodes:
                if isinstance(a, str):
                    unmatched.append(a)
                continue
            if len(nodes) == 1:
                best = nodes[-1]
            else:
                top = max(votes[id(n)] for n in nodes)
                tied = [n for n in nodes if votes[id(n)] == top]
                if len(tied) > 1:  # the step's input decides, then the latest
                    if in_flow is None:
                        in_flow = {id(n) for n in flow}
                    best = max(tied, key=lambda n: (id(n) in in_flow, self.rank[id(n)]))
                else:
                    best = tied[0]
            chosen.setdefault(id(best), (best, "content"))
        for text in unmatched:
            hits, how = self.containing(text), "containment"
            if not hits:
                part = self.part_of(text)
                hits, how = ([part] if part is not None else []), "part"
            for n in hits:
                chosen.setdefault(id(n), (n, how))
        ordered = sorted(chosen.values(), key=lambda item: self.rank[id(item[0])])
        return ordered, not unmatched and bool(strong(found) or ordered)

    def _same_form(self, atom: Any, nodes: list[Node] | None, plain: set[str]) -> list[Node] | None:
        """Of the producers of ``atom``, those that gave it in the form the consumer has it
        (a plain string, or a message's or document's text), when there are any."""
        if not nodes or len(nodes) == 1 or not isinstance(atom, str):
            return nodes
        as_plain = self.plain.get(atom, set())
        wanted = atom in plain
        same = [n for n in nodes if (id(n) in as_plain) == wanted]
        return same or nodes

    def containing(self, text: str) -> list[Node]:
        """Producers of earlier texts found inside ``text`` (not the ones inside another hit)."""
        if len(text) < _MIN_SHORT_TEXT + 1:
            return []
        hits: list[tuple[str, Node]] = []
        for scanned, (produced, node) in enumerate(reversed(self.texts.items())):
            if scanned >= _MAX_SCAN or len(hits) >= _MAX_HITS:
                break
            if len(produced) < len(text) and _inside(produced, text):
                hits.append((produced, node))
        if len(hits) > 1:
            hits.sort(key=lambda h: -len(h[0]))
            kept: list[tuple[str, Node]] = []
            for produced, node in hits:
                if not any(produced in longer for longer, _ in kept):
                    kept.append((produced, node))
            hits = kept
        nodes: dict[int, Node] = {}
        for _, node in hits:
            nodes.setdefault(id(node), node)
        return list(nodes.values())

    def part_of(self, text: str) -> Node | None:
        """The latest producer of an earlier text that ``text`` is a piece of."""
        if len(text) < _MIN_PART:
            return None
        for scanned, (produced, node) in enumerate(reversed(self.texts.items())):
            if scanned >= _MAX_PART_SCAN:
                break
            if len(produced) > len(text) and text in produced:
                return node
        return None

    def add_sources(
        self,
        inputs: _Inputs,
        arg: str,
        value: Any,
        flow: Sequence[Node],
        *,
        one_arg: bool = False,
        leaf: bool = False,
    ) -> bool:
        """Add the sources of ``value`` as inputs named ``arg``; with ``leaf``, a text no step
        produced becomes a leaf (it came from outside the run: the optimizer still sees it)."""
        found, _ = self.sources(value, flow)
        found = self.combined(arg, value, found)
        if not found and leaf and _has_text(value):
            found = [(self.outside(arg, value), "content")]
        for node, how in found:
            inputs.add(arg, node, "" if how == "content" else how)
        return bool(found)

    def combined(
        self, arg: str, value: Any, found: list[tuple[Node, str]]
    ) -> list[tuple[Node, str]]:
        """A text the app made from earlier outputs (joined, prefixed, formatted) becomes a
        node of its own, fed by them: the optimizer sees exactly what the step received."""
        parts = [(n, how) for n, how in found if how == "containment"]
        if not parts or not isinstance(value, (str, Message)):
            return found
        inputs = self.new_inputs()
        for n, how in parts:
            inputs.add(self.hint.get(id(n), "part"), n, how)
        node = Node(display(value), name=safe_name(arg, default="text"), inputs=dict(inputs), op=_COMBINE)
        inputs.seal(node)
        for n in parts:
            self.consumed.add(id(n[0]))
        self.register(node, value, "text")
        self.produced.append(node)
        return [(n, how) for n, how in found if how != "containment"] + [(node, "content")]

    def named(self, nodes: list[Node], output: Any) -> list[tuple[str, Node]]:
        """Argument names for the nodes a step's output is made of: the output's keys when
        each key came from one of them, else what each node is."""
        if len(nodes) == 1:
            return [("input", nodes[0])]
        if isinstance(output, dict) and output:
            wanted = {id(n) for n in nodes}
            pairs: list[tuple[str, Node]] = []
            for key, value in output.items():
                found = [n for n, _ in self.sources(value, nodes)[0] if id(n) in wanted]
                if len(found) != 1:
                    break
                pairs.append((str(key), found[0]))
            else:
                if {id(n) for _, n in pairs} == wanted and len(pairs) == len(wanted):
                    return pairs
        return [(self.hint.get(id(n), "input"), n) for n in nodes]

    def op(self, span: Span) -> Op:
        name = span.name or span.label or span.kind
        key = (name, span.doc, span.kind)
        found = self.ops.get(key)
        if found is None:
            doc = span.doc or _DOCS.get(span.kind, _DOCS["chain"]).format(name=name)
            found = self.ops[key] = Op(name, doc, span.kind)
        return found

    def make(self, span: Span, inputs: _Inputs, raw: Any, *, label: str | None = None) -> Node:
        """The node of ``span`` with these inputs; registers its output."""
        name = _node_name(label or span.label or span.name or span.kind)
        op = self.op(span)
        for n in inputs.values():
            self.consumed.add(id(n))
            if isinstance(n, Parameter):
                self.params[id(n)] = n
        node: Node
        if span.error is not None:
            exc = _exception(span.error)
            node = ExceptionNode(exc, name=name, inputs=dict(inputs), op=op, traceback=_traceback(exc))
            raw = str(exc)  # an agent may hand the error text on to the model
        else:
            node = Node(display(raw), name=name, inputs=dict(inputs), op=op)
        inputs.seal(node)
        self.register(node, raw, _HINTS.get(span.kind, "input") if span.error is None else "error")
        self.produced.append(node)
        return node

    def add_parameters(self, inputs: _Inputs, span: Span) -> None:
        if id(span) in self.attached:
            return
        self.attached.add(id(span))
        for arg, param in span.parameters:
            inputs.add(arg, param)

    def unlinked(self, span: Span, reason: str) -> None:
        if self.on_unlinked is not None:
            self.on_unlinked(span, reason)
        else:
            logger.debug("step %s could not be linked: %s", span.name or span.label, reason)

    # -- spans -----------------------------------------------------------------------------

    def visit(self, span: Span, flow: Sequence[Node]) -> list[Node]:
        """The nodes that stand for ``span``'s output; ``flow`` is what it was given."""
        if span.children:
            return self.container(span, flow)
        if span.passthrough and span.error is None:
            found, _ = self.sources(span.output if span.output is not None else span.inputs, flow)
            return [n for n, _ in found] or list(flow)
        return [self.leaf(span, flow)]

    def leaf(self, span: Span, flow: Sequence[Node]) -> Node:
        inputs = self.new_inputs()
        if span.kind == "prompt":  # a prompt's templates first, then what fills them
            self.add_parameters(inputs, span)
        if span.kind == "llm":  # the template it filled first, the tools offered last
            for arg, param in span.parameters:
                if not arg.startswith("tool"):
                    inputs.add(arg, param)
            self.model_inputs(span, flow, inputs)
        elif span.kind == "tool" and self.calls.get(span.links.get("tool_call_id") or "") is not None:
            keys = [k for k in span.inputs if k != "input"]
            arg = keys[0] if len(keys) == 1 else "call"
            inputs.add(arg, self.calls[span.links["tool_call_id"]], "link")
        else:
            for key, value in span.inputs.items():  # what fills a prompt is shown, found or not
                self.add_sources(inputs, key, value, flow, leaf=span.kind == "prompt")
        self.add_parameters(inputs, span)
        if all(isinstance(n, Parameter) or id(n) in self.outsiders for n in inputs.values()):
            # nothing in the run explained its inputs
            chosen_by_model = span.kind == "tool" and self.last_llm is not None
            if self.produced and not chosen_by_model and _has_text(span.inputs):
                self.unlinked(span, "none of its input was produced by an earlier step of the run")
            self.structural(span, inputs, flow)
        node = self.make(span, inputs, span.output)
        if span.kind == "llm":
            self.remember_call(span, node, inputs)
            self.last_llm = node
        return node

    def structural(self, span: Span, inputs: _Inputs, flow: Sequence[Node]) -> None:
        """Nothing explained the inputs: the step was fed what came before it."""
        default = "input"
        if span.kind == "tool" and self.last_llm is not None:
            flow, default = [self.last_llm], "call"  # a tool runs what the model asked for
        for n in flow:
            inputs.add(default if len(flow) == 1 else self.hint.get(id(n), default), n, "structure")

    def container(self, span: Span, flow: Sequence[Node]) -> list[Node]:
        start = len(self.produced)
        inputs = self.new_inputs()
        if span.keep:  # a step of its own: its inputs are what it was given, before its steps ran
            for key, value in span.inputs.items():
                self.add_sources(inputs, key, value, flow)
        own: Sequence[Node] = flow
        if span.flow != "free" or span.keep:
            own = _Lazy(lambda: self.given(span, flow))
        if span.flow == "sequence":
            current = own
            for child in span.children:
                current = self.visit(child, current)
            out = current
        elif span.flow == "parallel":
            out = []
            for child in span.children:
                for n in self.visit(child, own):
                    if all(n is not o for o in out):  # by identity: == on nodes is traced
                        out.append(n)
        else:
            previous = own
            for child in span.children:
                previous = self.visit(child, previous) or previous
            out = self.free_output(span, own, previous)
        dangling = [
            n for n in self.produced[start:]
            if id(n) not in self.consumed and not inputs.has(n) and all(n is not m for m in out)
        ]
        failed = [n for n in out if isinstance(n, ExceptionNode)]
        if span.error is not None and failed == out and len(failed) == 1 and not dangling and not span.keep:
            return failed  # the error of its one failed step
        if span.error is None and not dangling and not span.keep and out:
            return out
        for arg, n in self.named(out, span.output):
            if span.kind in ("tool", "retriever"):
                arg = "result"  # what the runnables it called returned
            elif span.kind in _NAMED_BY_STEP:
                arg = n.name  # a query engine's synthesize, an agent's last llm call
            inputs.add(arg, n)
        for n in dangling:
            inputs.add(n.name if span.kind in _NAMED_BY_STEP else self.hint.get(id(n), "step"), n, "structure")
        self.add_parameters(inputs, span)
        if not inputs:
            self.structural(span, inputs, own)
        return [self.make(span, inputs, span.output)]

    def given(self, span: Span, flow: Sequence[Node]) -> list[Node]:
        """The nodes a composition was given: the sources of its input (not leaves made for
        its steps' unexplained inputs), else what its parent gave it."""
        found = [n for n, _ in self.sources(span.inputs, flow)[0] if id(n) not in self.outsiders]
        return found or list(flow)

    def free_output(self, span: Span, own: Sequence[Node], last: Sequence[Node]) -> list[Node]:
        """What a span whose children ran as user code returned: the nodes its output came
        from when they explain all of it, else a node of its own fed by them."""
        if span.error is not None:
            return last
        found, covered = self.sources(span.output, last)
        nodes = [n for n, _ in found]
        if covered and nodes:
            return nodes
        inputs = self.new_inputs()
        for n, how in found:
            inputs.add(self.hint.get(id(n), "input") if len(found) > 1 else "input", n,
                       "" if how == "content" else how)
        if not found:
            for n in last:
                inputs.add("input" if len(last) == 1 else self.hint.get(id(n), "input"), n, "structure")
        self.add_parameters(inputs, span)
        return [self.make(span, inputs, span.output)]

    # -- model calls -----------------------------------------------------------------------

    def model_inputs(self, span: Span, flow: Sequence[Node], inputs: _Inputs) -> None:
        messages = span.inputs.get("messages")
        message_pairs: list[tuple[str, Node, str]] = []
        if isinstance(messages, list) and messages and isinstance(messages[-1], Message):
            start = 0
            previous = self.conversation(messages)
            if previous is not None:
                start, prev_node, prev_params = previous
                message_pairs.append(("history", prev_node, ""))
                for arg, p in prev_params:
                    inputs.add(arg, p)
            for m in messages[start:]:
                if not isinstance(m, Message):
                    self.add_sources(inputs, "messages", m, flow, leaf=True)
                    continue
                explained = self.text_uses(m.content, m.role, inputs)
                if explained and not m.tool_calls:
                    continue  # a parameter, filled with values whose sources are inputs now
                found, _ = self.sources(m, flow)
                found = self.combined(m.role, m, found)
                if not found and m.content.strip():
                    found = [(self.outside(m.role, m), "content")]
                if found:
                    best = max(found, key=lambda item: (item[1] == "content", self.rank[id(item[0])]))
                    message_pairs.append((m.role, best[0], best[1]))
                    for node, how in found:
                        if how != "content":
                            message_pairs.append((m.role, node, how))
            credited = {id(node) for arg, node, how in message_pairs if arg != "history"}
            if len(credited) == 1 and len(message_pairs) == len(messages) - start:
                # every message came from one step (a prompt): one edge
                message_pairs = [("messages", message_pairs[0][1], message_pairs[0][2])]
            for arg, node, how in message_pairs:
                inputs.add(arg, node, "" if how == "content" else how)
        for key, value in span.inputs.items():
            if key == "messages" and isinstance(messages, list):
                continue
            if isinstance(value, str) and self.text_uses(value, key, inputs):
                continue
            self.add_sources(inputs, key, value, flow, one_arg=True, leaf=True)

    def outside(self, arg: str, value: Any) -> Node:
        """A leaf for a value no step of the run produced (it came from outside the run)."""
        node = Node(display(value), name=safe_name(arg, default="value"))
        self.register(node, value, "input")
        self.outsiders.add(id(node))
        return node

    def text_uses(self, text: str, role: str, inputs: _Inputs) -> bool:
        """Add the parameters found in ``text`` (and the sources of what filled them);
        whether they explain all of it (a filled template, or exactly a parameter's text)."""
        if not text or not self.uses:
            return False
        explained = False
        for use in self.uses:
            if id(use.parameter) in self.explicit or inputs.has(use.parameter):
                continue
            variables = find_use(use, text)
            if variables is None:
                continue
            default = "template" if use.match == "template" and role == "prompt" else role
            inputs.add(use.arg or default, use.parameter)
            if use.match == "template":
                explained = True
            elif text.strip() == str(use.parameter.value).strip():
                explained = True
            for var, value in variables.items():
                self.add_sources(inputs, var, value, [], one_arg=True, leaf=True)
        return explained

    def conversation(self, messages: list[Any]) -> tuple[int, Node, list[tuple[str, Parameter]]] | None:
        """The latest model call whose whole input starts ``messages`` (a resent history)."""
        best = None
        for previous, node, params in reversed(self.recent):
            n = len(previous)
            if n >= len(messages) or (best is not None and n <= best[0]):
                continue  # the same input again is a retry or a fallback, not a continuation
            if messages[:n] == previous:  # (identity first, element by element, in C)
                best = (n, node, params)
        return best

    def remember_call(self, span: Span, node: Node, inputs: _Inputs) -> None:
        messages = span.inputs.get("messages")
        if span.error is not None or not isinstance(messages, list) or not messages:
            return
        params = [(arg, p) for arg, p in inputs.items() if isinstance(p, Parameter)]
        self.recent.append((messages, node, params))
        if len(self.recent) > _RECENT_CALLS:
            self.recent.pop(0)


_NAMED_BY_STEP = frozenset({"query", "synthesize", "chat", "agent"})
_COMBINE = Op(
    "combine",
    "Text the app's own code made from the outputs of earlier steps (joined, prefixed or "
    "formatted); its inputs are the outputs it contains.",
    "chain",
)

_HINTS = {
    "llm": "ai",
    "prompt": "messages",
    "retriever": "documents",
    "tool": "tool",
    "parser": "parsed",
    "embedding": "embedding",
}


@functools.lru_cache(maxsize=4096)
def _node_name(label: str) -> str:
    return safe_name(label, default="step")


def _value_of(param: Parameter) -> Any:
    try:
        return param.value
    except Exception:  # a binding whose object changed shape: nothing to remember
        return None


def _tool_call_ids(raw: Any) -> list[str]:
    if isinstance(raw, Message):
        return [c.id for c in raw.tool_calls if c.id]
    if isinstance(raw, (list, tuple)) and raw and isinstance(raw[-1], Message):
        return [c.id for m in raw if isinstance(m, Message) for c in m.tool_calls if c.id]
    if isinstance(raw, dict):
        found: list[str] = []
        for v in raw.values():
            if isinstance(v, (Message, list, tuple)):
                found.extend(_tool_call_ids(v))
        return found
    return []


def _inside(part: str, text: str) -> bool:
    """Whether ``part`` occurs in ``text``; a short ``part`` only where it stands apart (not
    inside a longer word: "Yes." in "Response: Yes.", not "no" in "know")."""
    if len(part) >= _MIN_TEXT:
        return part in text
    start = text.find(part)
    while start >= 0:
        end = start + len(part)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        start = text.find(part, start + 1)
    return False


def _plain(value: Any, depth: int = 0) -> set[str]:
    """The texts that ``value`` holds as plain strings (not inside a message or document)."""
    if isinstance(value, str):
        text = value.strip()
        return {text} if text else set()
    if depth > 6 or not isinstance(value, (dict, list, tuple)):
        return set()
    out: set[str] = set()
    for v in value.values() if isinstance(value, dict) else value:
        if isinstance(v, str):
            text = v.strip()
            if text:
                out.add(text)
        elif isinstance(v, (dict, list, tuple)):
            out |= _plain(v, depth + 1)
    return out


def _has_text(values: Any) -> bool:
    return bool(strong(atoms(values)))


def _exception(error: BaseException | str) -> BaseException:
    if isinstance(error, BaseException):
        return error
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return RuntimeError(lines[-1] if lines else "error")


def _traceback(error: BaseException) -> str:
    if error.__traceback__ is None:
        return ""
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    text = "".join(lines).rstrip().splitlines()
    if len(text) > _TRACEBACK_LINES:
        text = ["..."] + text[-_TRACEBACK_LINES:]
    return "\n".join(text)
