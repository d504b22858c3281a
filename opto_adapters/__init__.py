"""opto_adapters: Trace-style generative optimization for LangChain and LlamaIndex apps.

``import opto_adapters`` loads only the framework-free core; the LangChain and LlamaIndex
adapters live in ``opto_adapters.langchain`` and ``opto_adapters.llama_index``.
"""

from .trace import (
    ExceptionNode,
    ExecutionError,
    Feedback,
    Graph,
    Module,
    Node,
    Parameter,
    ValidationError,
    backward,
    bundle,
    model,
    node,
)

__version__ = "0.1.0"

__all__ = [
    "ExceptionNode",
    "ExecutionError",
    "Feedback",
    "Graph",
    "Module",
    "Node",
    "Parameter",
    "ValidationError",
    "backward",
    "bundle",
    "model",
    "node",
]
