"""Examples and feedback: how an example becomes the app's input, and a guide's reply a score.

The input convention (``input_key``):

* ``None`` (default): ``example["input"]`` when the example is a mapping with an ``"input"``
  field, else the whole example;
* a field name (``"question"``): that field of each example;
* a list of field names (``["question", "context"]``): a dict with those fields;
* a callable: ``input_key(example)``.

The app is called with that one value (``chain.invoke(value)``, ``fn(value)``).

The guide protocol: ``guide(example, output)`` returns a number (the score, higher is better),
a ``bool`` (1 or 0), or ``Feedback(score=..., text=...)``. The trainer compares candidates by
score, so a text without a score, or ``None``, is an error. When the app raised, ``output``
is the exception: a guide may score it (``isinstance(output, BaseException)``); if it raises
or returns ``None`` there, the run gets ``error_score`` and the error text as feedback.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..llm import BudgetExceeded
from ..trace import Feedback
from ..trace.render import short_repr, value_text
from .errors import DatasetError, GuideError

__all__ = [
    "InputKey",
    "app_inputs",
    "call_guide",
    "coerce_feedback",
    "error_feedback",
    "examples_list",
    "fingerprint",
    "input_getter",
    "to_json",
]

InputKey = str | Sequence[str] | Callable[[Any], Any] | None
Guide = Callable[[Any, Any], Any]


def to_json(value: Any) -> str:
    """JSON text of ``value``; what JSON cannot hold is shown as its readable text."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=value_text)


def fingerprint(examples: Sequence[Any]) -> str:
    """A short hash of a dataset, to tell on resume whether it changed."""
    digest = hashlib.sha256()
    for example in examples:
        # "surrogatepass": an example holding a lone surrogate (text decoded with
        # errors="surrogateescape") is hashed, not refused
        digest.update(to_json(example).encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def examples_list(examples: Any, split: str, *, required: bool) -> list[Any]:
    """``examples`` as a non-empty list, or a ``DatasetError`` naming the split."""
    if examples is None:
        if required:
            raise DatasetError(f"{split} is None: pass a list of examples")
        return []
    if isinstance(examples, (str, bytes, Mapping)) or not hasattr(examples, "__iter__"):
        raise DatasetError(
            f"{split} must be a list of examples, got {type(examples).__name__}: "
            f"{short_repr(examples, 80)}; load the file first (e.g. a list of dicts)"
        )
    items = list(examples)
    if not items:
        hint = "pass val=None to gate on the training minibatch" if split == "val" else (
            "give at least one example"
        )
        raise DatasetError(f"{split} is empty: {hint}")
    return items


def input_getter(input_key: InputKey) -> Callable[[Any], Any]:
    """The function from an example to the app's input (see the module docstring)."""
    if input_key is None:
        return lambda ex: ex["input"] if isinstance(ex, Mapping) and "input" in ex else ex
    if callable(input_key):
        return input_key
    if isinstance(input_key, str):
        return lambda ex: _field(ex, input_key)
    if isinstance(input_key, Sequence) and all(isinstance(k, str) for k in input_key):
        keys = list(input_key)
        return lambda ex: {k: _field(ex, k) for k in keys}
    raise TypeError(
        f"input_key must be a field name, a list of field names, a callable or None, got "
        f"{type(input_key).__name__}: {input_key!r:.80}"
    )


class _MissingField(Exception):
    def __init__(self, key: str, example: Any) -> None:
        self.key = key
        self.example = example


def _field(example: Any, key: str) -> Any:
    if not isinstance(example, Mapping) or key not in example:
        raise _MissingField(key, example)
    return example[key]


def app_inputs(examples: Sequence[Any], split: str, input_key: InputKey) -> list[Any]:
    """The app input of every example, checked before anything runs."""
    get = input_getter(input_key)
    inputs = []
    for i, example in enumerate(examples):
        try:
            inputs.append(get(example))
        except _MissingField as exc:
            fields = (
                f"its fields are {sorted(map(str, example))}"
                if isinstance(example, Mapping)
                else f"it is a {type(example).__name__}, not a mapping"
            )
            raise DatasetError(
                f"{split} example {i} has no field {exc.key!r} ({fields}): fix the data or set "
                "input_key= to the field (or a function) that gives the app's input"
            ) from None
        except Exception as exc:
            raise DatasetError(
                f"input_key raised {type(exc).__name__}: {exc} on {split} example {i}: "
                f"{short_repr(example, 120)}"
            ) from exc
    return inputs


def error_feedback(error: BaseException, score: float) -> Feedback:
    """The feedback on a run whose app raised, when the guide does not give one."""
    return Feedback(score=score, text=f"The app raised {type(error).__name__}: {error}")


def coerce_feedback(
    raw: Any, *, split: str, index: int, example: Any, output: Any
) -> Feedback:
    """A guide's reply as scored ``Feedback``, or a ``GuideError`` saying what was wrong."""
    where = f"{split} example {index}: {short_repr(example, 120)}"
    if raw is None:
        raise GuideError(
            f"the guide returned None for {where}; return a score (a number), a bool or "
            "Feedback(score=..., text=...)"
        )
    if isinstance(raw, bool):
        return Feedback(score=float(raw))
    if isinstance(raw, str):
        raise GuideError(
            f"the guide returned a text without a score for {where} ({short_repr(raw, 80)!r}); "
            "the trainer compares candidates by score: return Feedback(score=..., text=...)"
        )
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise GuideError(f"the guide returned the score {raw} for {where}; scores must be finite numbers")
        return Feedback(score=float(raw))
    if isinstance(raw, Feedback):
        if raw.score is None:
            raise GuideError(
                f"the guide returned Feedback without a score for {where} "
                f"({short_repr(raw.text, 80)!r}); add score=... so candidates can be compared"
            )
        return raw  # Feedback itself refuses a non-finite score
    raise GuideError(
        f"the guide returned a {type(raw).__name__} for {where} ({short_repr(raw, 80)}); return "
        "a number, a bool or Feedback(score=..., text=...)"
    )


def call_guide(
    guide: Guide,
    example: Any,
    output: Any,
    error: BaseException | None,
    *,
    split: str,
    index: int,
    error_score: float,
) -> Feedback:
    """Run the guide on one result; see the module docstring for app errors."""
    seen = error if error is not None else output
    try:
        raw = guide(example, seen)
    except BudgetExceeded:
        raise  # the guide's own LLM ran out: the trainer stops cleanly
    except Exception as exc:
        if error is not None:
            return error_feedback(error, error_score)
        raise GuideError(
            f"the guide raised {type(exc).__name__}: {exc} on {split} example {index}: "
            f"{short_repr(example, 120)} (app output: {short_repr(output, 80)})"
        ) from exc
    if error is not None and raw is None:
        return error_feedback(error, error_score)
    return coerce_feedback(raw, split=split, index=index, example=example, output=seen)
