"""The OPTO core: nodes, tracing (``node``, ``bundle``, ``model``), backward and rendering.

Pure Python; imports no framework.
"""

from .bundle import Bundle, ExecutionError, bundle
from .graph import Graph, Subgraph, backward, display_names, topological_order, zero_feedback
from .modules import Module, load_parameters, model, parameter_values, save_parameters
from .nodes import (
    KINDS,
    Binding,
    ExceptionNode,
    Feedback,
    Node,
    Op,
    Parameter,
    ValidationError,
    apply_updates,
    node,
    safe_name,
    template_fields,
    template_variables,
)
from .render import ProblemInstance, format_value, render
from .tracer import TracedRun, TracerBase, select_parameters

__all__ = [
    "KINDS",
    "Binding",
    "Bundle",
    "ExceptionNode",
    "ExecutionError",
    "Feedback",
    "Graph",
    "Module",
    "Node",
    "Op",
    "Parameter",
    "ProblemInstance",
    "Subgraph",
    "TracedRun",
    "TracerBase",
    "ValidationError",
    "apply_updates",
    "backward",
    "bundle",
    "display_names",
    "format_value",
    "load_parameters",
    "model",
    "node",
    "parameter_values",
    "render",
    "safe_name",
    "save_parameters",
    "select_parameters",
    "template_fields",
    "template_variables",
    "topological_order",
    "zero_feedback",
]
