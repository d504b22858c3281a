"""Training: the ``optimize`` loop with validation gating, the SQLite store, reports, recipes.

>>> from opto_adapters import optimize
>>> result = optimize(app, train, val=val, guide=guide, epochs=3, store="runs.sqlite")
>>> result = await optimize_async(app, train, val=val, guide=guide, executor="asyncio")
"""

from ..trace import Feedback
from .apps import AppTracer, PythonApp, as_tracer
from .config import TrainConfig
from .errors import (
    AppError,
    DatasetError,
    GuideError,
    InfrastructureError,
    RecipeError,
    StoreError,
    TrainingError,
)
from .result import FrontCandidate, Scores, StepSummary, TrainResult, build_result
from .store import Store
from .trainer import Trainer, optimize, optimize_async

__all__ = [
    "AppError",
    "AppTracer",
    "DatasetError",
    "Feedback",
    "FrontCandidate",
    "GuideError",
    "InfrastructureError",
    "PythonApp",
    "RecipeError",
    "Scores",
    "StepSummary",
    "Store",
    "StoreError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "as_tracer",
    "build_result",
    "optimize",
    "optimize_async",
]
