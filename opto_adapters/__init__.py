"""opto_adapters: Trace-style generative optimization for LangChain and LlamaIndex apps.

``import opto_adapters`` loads only the framework-free core; the LangChain and LlamaIndex
adapters live in ``opto_adapters.langchain`` and ``opto_adapters.llama_index``, and the
training loop (``optimize``, ``Trainer``, ``TrainResult``) is loaded from
``opto_adapters.train`` on first use, like the LLM clients (``LLM``, ``AsyncLLM``).
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .llm import LLM, AsyncLLM
    from .patches import apply_patch
    from .traces import from_traces
    from .train import Trainer, TrainResult, optimize, optimize_async

__version__ = "0.1.0"

_LAZY = {
    "LLM": "opto_adapters.llm",
    "AsyncLLM": "opto_adapters.llm",
    "optimize": "opto_adapters.train",
    "optimize_async": "opto_adapters.train",
    "Trainer": "opto_adapters.train",
    "TrainResult": "opto_adapters.train",
    "from_traces": "opto_adapters.traces",
    "apply_patch": "opto_adapters.patches",
}


def __getattr__(name: str) -> Any:
    """Load the training and import APIs on first use, so ``import opto_adapters`` stays light."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'opto_adapters' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "LLM",
    "AsyncLLM",
    "ExceptionNode",
    "ExecutionError",
    "Feedback",
    "Graph",
    "Module",
    "Node",
    "Parameter",
    "TrainResult",
    "Trainer",
    "ValidationError",
    "apply_patch",
    "backward",
    "bundle",
    "from_traces",
    "model",
    "node",
    "optimize",
    "optimize_async",
]
