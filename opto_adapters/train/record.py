"""The run record: open a run in the store (all of it or nothing), or pick up a stored one.

A run is opened in one transaction (its row, its examples and parameter version 0), so a run
interrupted while it starts leaves nothing behind. A run an older version left half-opened
(a row without version 0) is opened again in place when it is resumed: nothing of it was
evaluated, so nothing is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .errors import TrainingError
from .store import Store, StoredRun

__all__ = ["OpenedRun", "check_resumable", "open_run"]

logger = logging.getLogger("opto_adapters.train")

# what must not change for a run to be resumed, and how to say that it did
_FIXED = (
    ("train_fingerprint", "the train data changed"),
    ("val_fingerprint", "the val data changed"),
    ("batch_size", "batch_size changed"),
    ("seed", "seed changed"),
    ("shuffle", "shuffle changed"),
)


@dataclass(frozen=True)
class OpenedRun:
    """A run ready to train: its id and versions; ``resumed`` is the stored run picked up
    (``None`` for a new or re-opened run, which starts from its baseline)."""

    run_id: int
    baseline: int
    current: int
    best: int
    best_score: float | None
    resumed: StoredRun | None


def open_run(
    store: Store,
    config: dict[str, Any],
    examples: dict[str, list[Any]],
    values: dict[str, Any],
    *,
    resume: bool | int,
    name: str = "",
) -> OpenedRun:
    """A new run, or the stored one ``resume`` names (``True``: the latest run)."""
    previous = None
    if resume is not False:
        if resume is True:
            previous = store.latest_run()
            if previous is None:
                logger.warning("nothing to resume in %s: starting a new run", store.path)
        else:
            previous = store.run(int(resume))
    stored = {split: exs for split, exs in examples.items() if exs or split == "train"}
    if previous is not None and previous.baseline_version_id is None:
        logger.warning(
            "run %d of %s was interrupted while it started (it has no parameter version 0, so "
            "nothing of it was evaluated): opening it again with the current data and settings",
            previous.id, store.path,
        )
        run_id, v0 = store.open_run(config, stored, values, name=name or previous.name, run_id=previous.id)
        return OpenedRun(run_id, v0, v0, v0, None, None)
    if previous is None:
        run_id, v0 = store.open_run(config, stored, values, name=name)
        return OpenedRun(run_id, v0, v0, v0, None, None)
    check_resumable(previous.config, config, previous.id)
    baseline = previous.baseline_version_id
    assert baseline is not None
    current = previous.current_version_id or baseline
    best = previous.best_version_id or current
    store.update_run(previous.id, status="running", message=None, config=config)
    logger.info("resuming run %d of %s", previous.id, store.path)
    return OpenedRun(previous.id, baseline, current, best, previous.best_score, previous)


def check_resumable(stored: dict[str, Any], now: dict[str, Any], run_id: int) -> None:
    """Refuse to resume a run whose parameters, data or minibatch settings changed."""
    problems = []
    before, after = (sorted(p["name"] for p in c.get("parameters", [])) for c in (stored, now))
    if before != after:
        problems.append(f"the parameters changed ({before} -> {after})")
    for key, what in _FIXED:
        if stored.get(key) != now.get(key):
            problems.append(f"{what} ({stored.get(key)!r} -> {now.get(key)!r})")
    search = (stored.get("search", "greedy"), now.get("search", "greedy"))  # older runs: greedy
    if search[0] != search[1]:
        problems.append(f"search changed ({search[0]!r} -> {search[1]!r})")
    if problems:
        raise TrainingError(
            f"cannot resume run {run_id}: " + "; ".join(problems)
            + ". Resume with the same data and settings, or start a new run (resume=False)"
        )
