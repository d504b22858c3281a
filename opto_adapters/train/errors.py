"""Errors of the training loop; each message names the bad value and the fix."""

from __future__ import annotations

__all__ = [
    "AppError",
    "DatasetError",
    "GuideError",
    "InfrastructureError",
    "RecipeError",
    "StoreError",
    "TrainingError",
]


class TrainingError(Exception):
    """Base class of the errors raised by ``opto_adapters.train``."""


class DatasetError(TrainingError, ValueError):
    """A dataset is empty, not a list, or an example lacks what the app needs."""


class GuideError(TrainingError):
    """The guide raised, or returned something that is not usable feedback."""


class AppError(TrainingError):
    """The app cannot be trained as given (it raised on every example, has no parameters...)."""


class StoreError(TrainingError):
    """The store cannot be opened or does not hold what was asked for."""


class RecipeError(TrainingError):
    """A recipe file cannot be loaded or lacks the names of the convention."""


class InfrastructureError(TrainingError):
    """An endpoint could not be reached or did not answer, after retries; the run stopped as
    ``failed`` and resumes where it stopped (``resume=True``). ``kind`` and ``url`` say what
    failed where."""

    def __init__(self, message: str, *, kind: str, url: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url
