"""The peer library, trace-opt, for side-by-side benchmarks (benchmark-only; never a test need).

Install (once, no other dependencies needed):

    pip install --no-deps "trace-opt==0.1.3.8" graphviz

``opto.trace`` needs nothing else. ``opto.optimizers`` imports ``litellm`` and ``black`` at
module level; the benchmarks never reach either (their OptoPrime gets a stub LLM object, and
``black`` only reformats suggested code), so when they are not installed this module puts
empty stand-ins in ``sys.modules`` before importing it. Also shared here: the timing helpers
every side-by-side benchmark uses (min and median over repetitions, order flipped each one).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import statistics
import sys
import time
import types
from collections.abc import Callable
from importlib import metadata
from typing import Any

INSTALL = 'pip install --no-deps "trace-opt==0.1.3.8" graphviz'
PEER = "trace-opt"


def version() -> str | None:
    """trace-opt's installed version, or None when it is not installed."""
    try:
        return metadata.version("trace-opt")
    except metadata.PackageNotFoundError:
        return None


def available() -> bool:
    return version() is not None and importlib.util.find_spec("opto") is not None


def missing_note() -> str:
    return (
        f"trace-opt is not installed: only our side runs. For the side-by-side figures: {INSTALL}"
    )


def _stand_in(name: str, **attrs: Any) -> None:
    if name not in sys.modules and importlib.util.find_spec(name) is None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        module.__doc__ = "stand-in put by benchmarks/peer.py (the package is not installed)"
        sys.modules[name] = module


class _FileMode:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def load_optimizers() -> Any:
    """``opto.optimizers`` with stand-ins for ``litellm`` and ``black`` if those are absent."""
    _stand_in("litellm")
    _stand_in("black", format_str=lambda text, mode=None: text, FileMode=_FileMode)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints which LLM backend it chose
        import opto.optimizers

    return opto.optimizers


def clear_graph() -> None:
    """Empty trace-opt's global node registry (it keeps every node ever made otherwise)."""
    from opto.trace import GRAPH

    GRAPH.clear()


class StubCompletion:
    """The shape trace-opt's OptoPrime reads from its ``llm(...)``: ``.choices[0].message.content``."""

    def __init__(self, text: str) -> None:
        message = types.SimpleNamespace(content=text, role="assistant")
        choice = types.SimpleNamespace(message=message, finish_reason="stop", index=0)
        usage = types.SimpleNamespace(prompt_tokens=100, completion_tokens=20, total_tokens=120)
        self.choices = [choice]
        self.usage = usage


class StubPeerLLM:
    """A stand-in for trace-opt's LLM object: called with ``messages=...``, returns ``reply``."""

    def __init__(self, reply: Callable[[list[dict[str, Any]]], str]) -> None:
        self.reply = reply
        self.calls = 0

    def __call__(self, messages: list[dict[str, Any]], **kwargs: Any) -> StubCompletion:
        self.calls += 1
        return StubCompletion(self.reply(messages))


# ----------------------------------------------------------------------------- timing
def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call, in seconds (garbage collected before, not during)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()


def alternate(sides: dict[str, Callable[[], float]], repeat: int) -> dict[str, list[float]]:
    """Run each side's measurement ``repeat`` times, flipping the order every repetition.

    Each callable returns one measurement (seconds, or any figure); returns the lists.
    """
    names = list(sides)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(sides[name]())
    return results


def stats(values: list[float]) -> tuple[float, float]:
    """(min, median)."""
    return min(values), statistics.median(values)


def ratio(theirs: float | None, ours: float) -> str:
    if theirs is None or ours <= 0:
        return "n/a"
    return f"{theirs / ours:,.0f}x" if theirs / ours >= 10 else f"{theirs / ours:.2f}x"
