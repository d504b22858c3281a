"""The run model: spans recorded by any framework, and the one builder of OPTO graphs.

Adapters translate LangChain callbacks or LlamaIndex instrumentation events into ``Span``
trees; ``build_graph`` turns a tree into the graph the optimizer reads. Spans are plain data
(``Span.to_data`` / ``Span.from_data``), so runs recorded elsewhere can be imported.
"""

from .builder import build_graph
from .matching import TextUse, find_use, literal_pieces, match_template
from .spans import FLOWS, KINDS, Span, tree
from .values import Document, Message, ToolCall, atoms, display

__all__ = [
    "FLOWS",
    "KINDS",
    "Document",
    "Message",
    "Span",
    "TextUse",
    "ToolCall",
    "atoms",
    "build_graph",
    "display",
    "find_use",
    "literal_pieces",
    "match_template",
    "tree",
]
