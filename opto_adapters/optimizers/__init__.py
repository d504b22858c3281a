"""Optimizers: the ``Optimizer`` contract, ``OptoPrime`` (trace + feedback) and ``OPRO``
(values + scores only, the graph-free baseline)."""

from .base import Optimizer, PendingProposal, Proposal, StepRecord
from .llm_optimizer import LLMOptimizer, MemoryEntry
from .opro import OPRO
from .optoprime import OptoPrime

__all__ = ["LLMOptimizer", "MemoryEntry", "OPRO", "Optimizer", "OptoPrime", "PendingProposal", "Proposal", "StepRecord"]
