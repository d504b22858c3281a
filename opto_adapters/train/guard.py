"""The overfitting guard: refuse a candidate that copies a training example into a prompt.

An optimizer that sees the minibatch can "learn" by pasting an example's question or its
reference answer into a prompt: the training score rises, nothing generalizes. The guard
measures it by word n-grams: a candidate copies an example's text when at least
``threshold`` of that text's n-grams (``n`` words, lower-cased) appear in the candidate's
values and were not already in the current values. So that a legitimate prompt is not refused:
texts shorter than ``min_words`` words are not checked (a short answer, a label, a number),
n-grams the current values already hold do not count, and n-grams shared by many examples
(their common boilerplate, e.g. a fixed instruction in every input) are not example-specific
and are left out. The check runs before a candidate is evaluated: a refused one costs no app run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_N", "DEFAULT_THRESHOLD", "CopyGuard", "copied_example", "text_pieces"]

DEFAULT_N = 6
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_WORDS = 12
_COMMON = 0.2  # an n-gram in more than this share of the examples (and in 2+) is boilerplate
_WORD = re.compile(r"\w+")
_MAX_DEPTH = 6


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def text_pieces(value: Any, where: str = "", depth: int = 0) -> Iterator[tuple[str, str]]:
    """(where, text) of every string inside ``value`` (dict values, list items), ``where``
    naming it (``input``, ``['answer']``...)."""
    if isinstance(value, str):
        yield where, value
    elif depth >= _MAX_DEPTH:
        return
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from text_pieces(v, f"{where}[{k!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from text_pieces(v, f"{where}[{i}]", depth + 1)


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


@dataclass(frozen=True)
class _Piece:
    example: int
    where: str
    text: str
    grams: frozenset[tuple[str, ...]]


class CopyGuard:
    """Training examples indexed by their word n-grams (once); ``check`` a candidate's values.

    ``examples``: the training examples (any JSON-like value: its strings are the texts checked);
    ``inputs``: what the app is given for each (when an ``input_key`` function makes it, it may
    not be inside the example). ``threshold``: the share of one text's n-grams a candidate may
    newly contain (in (0, 1])."""

    def __init__(
        self,
        examples: Iterable[Any],
        inputs: Iterable[Any] | None = None,
        *,
        n: int = DEFAULT_N,
        threshold: float = DEFAULT_THRESHOLD,
        min_words: int = DEFAULT_MIN_WORDS,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int (words per n-gram), got {n!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must be a share in (0, 1], got {threshold!r}")
        self.n, self.threshold, self.min_words = n, float(threshold), max(min_words, n)
        found: list[tuple[int, str, str, set[tuple[str, ...]]]] = []
        examples = list(examples)
        given = list(inputs) if inputs is not None else [None] * len(examples)
        if len(given) != len(examples):
            raise ValueError(f"inputs must match the examples one to one: {len(given)} inputs, {len(examples)} examples")
        for i, (example, app_input) in enumerate(zip(examples, given, strict=True)):
            seen: set[str] = set()
            pieces = list(text_pieces(example))
            if app_input is not None:
                pieces.extend((f"{where} (its app input)", text) for where, text in text_pieces(app_input))
            for where, text in pieces:
                words = _words(text)
                if len(words) < self.min_words or text in seen:
                    continue
                seen.add(text)
                found.append((i, where, text, _ngrams(words, n)))
        n_examples = len({f[0] for f in found})
        frequency: dict[tuple[str, ...], set[int]] = {}
        for i, _, _, grams in found:
            for g in grams:
                frequency.setdefault(g, set()).add(i)
        common = {g for g, ex in frequency.items() if len(ex) >= 2 and len(ex) > _COMMON * n_examples}
        self._pieces: list[_Piece] = []
        self._index: dict[tuple[str, ...], list[int]] = {}
        for i, where, text, grams in found:
            specific = frozenset(grams - common)
            if not specific:
                continue
            self._pieces.append(_Piece(i, where, text, specific))
            for g in specific:
                self._index.setdefault(g, []).append(len(self._pieces) - 1)

    def check(self, values: Mapping[str, Any], current_values: Mapping[str, Any]) -> str | None:
        """Why ``values`` copy a training example (a sentence), or ``None``."""
        if not self._pieces:
            return None
        old: set[tuple[str, ...]] = set()
        for value in current_values.values():
            old |= _ngrams(_words(_value_text(value)), self.n)
        worst: tuple[float, int, str] | None = None
        for name, value in values.items():
            new = _ngrams(_words(_value_text(value)), self.n) - old
            hits: dict[int, int] = {}
            for g in new:
                for p in self._index.get(g, ()):
                    hits[p] = hits.get(p, 0) + 1
            for p, count in hits.items():
                share = count / len(self._pieces[p].grams)
                if share >= self.threshold and (worst is None or share > worst[0]):
                    worst = (share, p, name)
        if worst is None:
            return None
        share, p, name = worst
        piece = self._pieces[p]
        excerpt = piece.text if len(piece.text) <= 80 else piece.text[:77] + "..."
        return (
            f"refused unevaluated: {name} copies train example {piece.example}{piece.where} "
            f"({share:.0%} of its word {self.n}-grams: {excerpt!r}); a prompt must "
            "generalize, not hold a training example (turn this off with guard_copies=None)"
        )


def copied_example(
    values: Mapping[str, Any],
    current_values: Mapping[str, Any],
    examples: Iterable[Any],
    inputs: Iterable[Any] | None = None,
    *,
    n: int = DEFAULT_N,
    threshold: float = DEFAULT_THRESHOLD,
    min_words: int = DEFAULT_MIN_WORDS,
) -> str | None:
    """Why ``values`` copy one of ``examples`` (see ``CopyGuard``), or ``None``. Checking many
    candidates against the same examples: build one ``CopyGuard`` instead."""
    guard = CopyGuard(examples, inputs, n=n, threshold=threshold, min_words=min_words)
    return guard.check(values, current_values)
