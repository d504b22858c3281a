"""The OPTO core: nodes, tracing (``node``, ``bundle``, ``model``, operators on nodes),
backward and rendering. A Trace program runs on it with its import changed
(``from opto_adapters import trace``; see docs/trace-api.md).

Pure Python; imports no framework. This namespace holds what users call; helpers used by
the adapters live in their modules (``names``, ``templates``, ``coercion``, ``graph``,
``render``, ``tracer``, ``code``).
"""

from . import operators
from .bundle import (
    ExecutionError,
    ExternalDependencyError,
    TraceMissingInputsError,
    bundle,
    stop_tracing,
)
from .containers import Map, NodeContainer, Seq, apply_op, contain, to_data
from .graph import Graph, Subgraph, backward, zero_feedback
from .modules import Module, load_parameters, model, parameter_values, save_parameters
from .nodes import ExceptionNode, Feedback, Node, Op
from .parameters import Binding, Parameter, RestoreError, ValidationError, apply_updates, node
from .render import ProblemInstance, render
from .tracer import TracedRun, TracerBase

__all__ = [
    "Binding",
    "ExceptionNode",
    "ExecutionError",
    "ExternalDependencyError",
    "Feedback",
    "Graph",
    "Map",
    "Module",
    "NodeContainer",
    "Node",
    "Op",
    "Parameter",
    "ProblemInstance",
    "RestoreError",
    "Seq",
    "Subgraph",
    "TraceMissingInputsError",
    "TracedRun",
    "TracerBase",
    "ValidationError",
    "apply_op",
    "apply_updates",
    "backward",
    "bundle",
    "contain",
    "load_parameters",
    "model",
    "node",
    "operators",
    "parameter_values",
    "render",
    "save_parameters",
    "stop_tracing",
    "to_data",
    "zero_feedback",
]
