"""The store of optimization runs: SQLite, one file (or ``:memory:``), one versioned schema.

What is kept, per run: its configuration, the examples, every parameter version, every step
(minibatch, scores, decision), every candidate (suggested values, reasoning, the optimizer's
prompt and reply, tokens, accepted or rejected and why), every evaluation (example, output,
error, score, feedback text) with its OPTO graph (zlib-compressed JSON of nodes and edges;
DOT and text views for one sampled run per phase).

Schema (version 3)::

    meta(key PRIMARY KEY, value)                     -- schema_version, created_by
    runs(id, name, status, message, config JSON, created_at, updated_at,
         baseline_version_id, current_version_id, best_version_id, best_score)
    examples(run_id, split, idx, example JSON)       -- PRIMARY KEY (run_id, split, idx)
    versions(id, run_id, hash, parent_id, step, values_json, created_at)
                                                     -- UNIQUE (run_id, hash)
    steps(run_id, step, epoch, batch, indices JSON, version_id, status, train_score,
          gate_score, val_score, accepted_candidate_id, result_version_id, reason,
          started_at, finished_at)                   -- PRIMARY KEY (run_id, step)
    candidates(id, run_id, step, k, values_json, invalid_json, reasoning, prompt, reply,
               error, prompt_tokens, completion_tokens, version_id, score, status, reason,
               created_at, ci_low, ci_high)          -- UNIQUE (run_id, step, k)
    evaluations(id, run_id, version_id, split, idx, repeat, phase, step, output, error, score,
                feedback, duration, prompt_tokens, completion_tokens, model_calls,
                model_latency, created_at, attempts)  -- UNIQUE (run_id, version_id, split, idx, repeat)
    graphs(evaluation_id PRIMARY KEY, data BLOB, dot, text)
    optimizer_memory(run_id PRIMARY KEY, step, entries JSON)
    search_pool(run_id, version_id, candidate_id, step, kind, parents JSON, on_front,
                created_at)                          -- PRIMARY KEY (run_id, version_id)
    search_lineage(candidate_id PRIMARY KEY, run_id, kind, parents JSON)

The Pareto search (``search="pareto"``) keeps its pool in ``search_pool`` (every candidate
accepted into it: the seed, mutations and merges, with the parent version ids and whether it
is on the front now) and the parents of every candidate it proposed in ``search_lineage``;
the score matrix is the pool's ``evaluations`` on the validation split. The last three tables
were added to schema version 1 without a new version (old readers ignore them): a store made
before gets them when it is opened for writing, and reads as having none when opened read-only.

What is written is bounded and always encodable: free text (outputs, errors, feedback, the
optimizer's prompt, reply and reasoning, reasons, messages) and the node values of stored graphs
are cut to ``value_budget`` characters with an explicit ``...[cut: ...]`` marker (parameter
versions are state and are kept whole), and a lone surrogate (``"\\udcff"``, which UTF-8 cannot
hold) is stored as the visible escape ``\\udcff`` in every text column and JSON document, so
reading it back gives text that can be shown.

A store is safe to share between threads (one connection behind a lock; WAL journal for
files, so ``opto-adapters runs`` can read while a run writes). A file that is not a store,
is corrupt, or has a newer schema is refused with a clear error and never modified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..trace.render import cut
from .data import to_json
from .errors import StoreError
from .graphs import bound_graph_json

__all__ = [
    "DEFAULT_VALUE_BUDGET",
    "AppUsage",
    "SCHEMA_VERSION",
    "Store",
    "StoredCandidate",
    "StoredEvaluation",
    "StoredPoolMember",
    "StoredRun",
    "StoredStep",
    "StoredVersion",
]

logger = logging.getLogger("opto_adapters.train")

SCHEMA_VERSION = 3  # 2: evaluations keyed by repeat too; 3: their attempts (an older opto_adapters must not write to it)
MEMORY = ":memory:"
DEFAULT_VALUE_BUDGET = 20_000
"""Characters kept of one stored text or graph node value (the optimizer prompt shows 1,000)."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _join_pair(match: re.Match[str]) -> str:
    high, low = (ord(c) for c in match.group())
    return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))


def encodable(text: str, *, escape: str = "\\") -> str:
    """``text`` with every lone surrogate written as the visible escape ``\\udcff`` (UTF-8
    cannot hold a lone surrogate; SQLite would raise ``UnicodeEncodeError``). A high and a low
    surrogate in a row become the character they encode. ``escape`` is the backslash as it must
    appear in the result (doubled inside a JSON document, so that it loads as the escape)."""
    if _SURROGATE.search(text) is None:
        return text
    text = _PAIR.sub(_join_pair, text)
    return _SURROGATE.sub(lambda m: f"{escape}u{ord(m.group()):04x}", text)


def _json_text(text: str) -> str:
    """A JSON document (``ensure_ascii=False``) made encodable: surrogates can only stand
    inside its strings, where the doubled backslash loads back as the visible escape."""
    return encodable(text, escape="\\\\")

_MEMORY_TABLE = """
CREATE TABLE IF NOT EXISTS optimizer_memory (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    step INTEGER NOT NULL,
    entries TEXT NOT NULL
);
"""

_POOL_TABLE = """
CREATE TABLE IF NOT EXISTS search_pool (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    version_id INTEGER NOT NULL REFERENCES versions(id),
    candidate_id INTEGER,
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    parents TEXT NOT NULL DEFAULT '[]',
    on_front INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, version_id)
);
"""

_LINEAGE_TABLE = """
CREATE TABLE IF NOT EXISTS search_lineage (
    candidate_id INTEGER PRIMARY KEY REFERENCES candidates(id),
    run_id INTEGER NOT NULL REFERENCES runs(id),
    kind TEXT NOT NULL,
    parents TEXT NOT NULL DEFAULT '[]'
);
"""

# tables added to schema version 1 after it shipped, created when a store is opened for writing
_ADDED_TABLES = (("optimizer_memory", _MEMORY_TABLE), ("search_pool", _POOL_TABLE), ("search_lineage", _LINEAGE_TABLE))

_EVALUATIONS_TABLE = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    version_id INTEGER NOT NULL,
    split TEXT NOT NULL,
    idx INTEGER NOT NULL,
    repeat INTEGER NOT NULL DEFAULT 0,
    phase TEXT NOT NULL,
    step INTEGER,
    output TEXT,
    error TEXT,
    score REAL,
    feedback TEXT NOT NULL DEFAULT '',
    duration REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    model_calls INTEGER,
    model_latency REAL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    UNIQUE (run_id, version_id, split, idx, repeat)
);
"""
_EVALUATIONS_INDEX = "CREATE INDEX evaluations_by_step ON evaluations (run_id, step);\n"
_EVALUATION_COLUMNS_V1 = (
    "id, run_id, version_id, split, idx, phase, step, output, error, score, feedback, duration, created_at"
)
_CANDIDATE_COLUMNS_ADDED = (("ci_low", "REAL"), ("ci_high", "REAL"))

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    message TEXT,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    baseline_version_id INTEGER,
    current_version_id INTEGER,
    best_version_id INTEGER,
    best_score REAL
);
CREATE TABLE examples (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    split TEXT NOT NULL,
    idx INTEGER NOT NULL,
    example TEXT NOT NULL,
    PRIMARY KEY (run_id, split, idx)
);
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    hash TEXT NOT NULL,
    parent_id INTEGER,
    step INTEGER,
    values_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (run_id, hash)
);
CREATE TABLE steps (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    indices TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    train_score REAL,
    gate_score REAL,
    val_score REAL,
    accepted_candidate_id INTEGER,
    result_version_id INTEGER,
    reason TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE candidates (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    k INTEGER NOT NULL,
    values_json TEXT NOT NULL,
    invalid_json TEXT NOT NULL DEFAULT '{}',
    reasoning TEXT NOT NULL DEFAULT '',
    prompt TEXT NOT NULL DEFAULT '',
    reply TEXT NOT NULL DEFAULT '',
    error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    version_id INTEGER,
    score REAL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    ci_low REAL,
    ci_high REAL,
    UNIQUE (run_id, step, k)
);
""" + _EVALUATIONS_TABLE.format(name="evaluations") + _EVALUATIONS_INDEX + """CREATE TABLE graphs (
    evaluation_id INTEGER PRIMARY KEY REFERENCES evaluations(id),
    data BLOB NOT NULL,
    dot TEXT,
    text TEXT
);
""" + _MEMORY_TABLE + _POOL_TABLE + _LINEAGE_TABLE

# The optimizer's memory after the last finished step, so a resumed run asks exactly what the
# uninterrupted one would. Added to schema version 1 without a new version: a store made before
# gets the table when opened for writing; one without it resumes as before (replaying rejections).
# Likewise added later: the evaluations' ``repeat`` (a gate example evaluated several times,
# one row per repeat, 0 for the first) and the app's own model usage per evaluation
# (``prompt_tokens``, ``completion_tokens``, ``model_calls``, ``model_latency``; NULL where the
# app's model reported nothing), and the candidates' acceptance interval (``ci_low``,
# ``ci_high``). A store made before is migrated when opened for writing (the evaluations table
# is rebuilt in one transaction, ids kept); read-only, it reads as repeat 0 without usage.
# Schema version 3 adds the evaluations' ``attempts``: how many times the evaluation was sent
# to a worker (more than 1 when a Ray worker was lost and it ran again elsewhere); a store made
# before gets the column (1 for every evaluation) when opened for writing.

_RUN_FIELDS = frozenset(
    {
        "name",
        "status",
        "message",
        "config",
        "baseline_version_id",
        "current_version_id",
        "best_version_id",
        "best_score",
        "updated_at",
    }
)
_STEP_FIELDS = frozenset(
    {
        "status",
        "train_score",
        "gate_score",
        "val_score",
        "accepted_candidate_id",
        "result_version_id",
        "reason",
        "finished_at",
    }
)
_CANDIDATE_FIELDS = frozenset({"version_id", "score", "status", "reason", "ci_low", "ci_high"})
_FREE_TEXT = frozenset({"message", "reason"})  # settable columns that are cut to the budget


@dataclass(frozen=True)
class StoredRun:
    """One optimization run: its configuration, status and the versions that matter."""

    id: int
    name: str
    status: str
    message: str | None
    config: dict[str, Any]
    created_at: float
    updated_at: float
    baseline_version_id: int | None
    current_version_id: int | None
    best_version_id: int | None
    best_score: float | None


@dataclass(frozen=True)
class StoredVersion:
    """A set of parameter values (all of them, by name)."""

    id: int
    run_id: int
    hash: str
    parent_id: int | None
    step: int | None
    values: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class StoredStep:
    """One optimizer step: the minibatch, the scores and what was decided."""

    run_id: int
    step: int
    epoch: int
    batch: int
    indices: list[int]
    version_id: int
    status: str
    train_score: float | None
    gate_score: float | None
    val_score: float | None
    accepted_candidate_id: int | None
    result_version_id: int | None
    reason: str | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class StoredCandidate:
    """A proposal of the optimizer and how it fared."""

    id: int
    run_id: int
    step: int
    k: int
    values: dict[str, Any]
    invalid: dict[str, str]
    reasoning: str
    prompt: str
    reply: str
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    version_id: int | None
    score: float | None
    status: str
    reason: str | None
    created_at: float
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class StoredEvaluation:
    """One run of the app on one example under one parameter version, and its feedback."""

    id: int
    run_id: int
    version_id: int
    split: str
    index: int
    phase: str
    step: int | None
    output: str | None
    error: str | None
    score: float | None
    feedback: str
    duration: float | None
    created_at: float
    repeat: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model_calls: int | None = None
    model_latency: float | None = None
    attempts: int = 1


@dataclass(frozen=True)
class AppUsage:
    """The app's own model usage of one version, as means per evaluation: ``prompt_tokens``,
    ``completion_tokens`` (over the ``reported`` evaluations whose model reported tokens;
    ``None`` if none did), ``model_calls`` and ``latency`` (seconds in model calls) over the
    ``recorded`` ones (a plain Python app records none), of ``evaluations`` in all."""

    evaluations: int
    recorded: int
    reported: int
    prompt_tokens: float | None
    completion_tokens: float | None
    model_calls: float | None
    latency: float | None

    @property
    def tokens(self) -> float | None:
        """Prompt plus completion tokens per evaluation (``None``: none reported)."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0.0) + (self.completion_tokens or 0.0)


@dataclass(frozen=True)
class StoredPoolMember:
    """A candidate of the Pareto search's pool: its version, where it came from, and whether
    it is on the front (``kind``: ``seed``, ``mutation`` or ``merge``)."""

    run_id: int
    version_id: int
    candidate_id: int | None
    step: int
    kind: str
    parents: list[int]
    on_front: bool
    created_at: float


def values_hash(values: Mapping[str, Any]) -> str:
    """A stable hash of parameter values (the identity of a version)."""
    return hashlib.sha256(_values_json(values).encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _values_json(values: Mapping[str, Any]) -> str:
    try:
        return _json_text(json.dumps(dict(values), ensure_ascii=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"parameter values must be JSON to be stored ({exc}); the values are "
            f"{ {k: type(v).__name__ for k, v in values.items()} }"
        ) from None


class Store:
    """An SQLite store of optimization runs (see the module docstring for the schema).

    ``path`` is a file (created if missing) or ``":memory:"``; ``readonly=True`` opens an
    existing store without ever writing to it (what the CLI's inspecting commands do).
    ``value_budget`` is how many characters of one stored text or graph node value are kept
    (``None``: everything; pass ``store=Store(path, value_budget=...)`` to the trainer).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = MEMORY,
        *,
        readonly: bool = False,
        value_budget: int | None = DEFAULT_VALUE_BUDGET,
    ) -> None:
        if value_budget is not None and (isinstance(value_budget, bool) or not isinstance(value_budget, int) or value_budget < 1):
            raise ValueError(
                f"value_budget must be a positive number of characters or None (keep everything), got {value_budget!r}"
            )
        self.path = str(path)
        self.readonly = readonly
        self.value_budget = value_budget
        self._lock = threading.RLock()
        self._conn = self._connect()
        self._conn.row_factory = sqlite3.Row  # rows are read by column name, never by position
        try:
            self._check_or_create()
            self._repeats = "repeat" in self._columns("evaluations")  # False: old, read-only
        except BaseException:
            self._conn.close()
            raise

    # -- opening -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path == MEMORY:
            if self.readonly:
                raise StoreError("a ':memory:' store cannot be opened read-only: it would be empty")
            return sqlite3.connect(MEMORY, check_same_thread=False)
        target = Path(self.path)
        if target.is_dir():
            raise StoreError(
                f"the store path {target} is a directory: give a file path such as "
                f"{target / 'runs.sqlite'}"
            )
        if self.readonly:
            if not target.exists():
                raise StoreError(f"no store at {target}: check the path (runs are stored by 'opto-adapters optimize --store PATH')")
            uri = f"file:{quote(str(target.resolve()))}?mode=ro"
            return sqlite3.connect(uri, uri=True, check_same_thread=False)
        if not target.parent.exists():
            raise StoreError(f"cannot create the store {target}: the directory {target.parent} does not exist")
        return sqlite3.connect(target, check_same_thread=False, timeout=30)

    def _check_or_create(self) -> None:
        where = "the in-memory store" if self.path == MEMORY else self.path
        try:
            tables = {
                row["name"]
                for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{where} is not an opto_adapters store or is corrupt ({exc}); it was left "
                "untouched: give another path, or restore the file from a backup"
            ) from None
        if "meta" not in tables:
            if tables:
                raise StoreError(
                    f"{where} is an SQLite database but not an opto_adapters store (its tables "
                    f"are {sorted(tables)}); it was left untouched: give another path"
                )
            if self.readonly:
                raise StoreError(f"{where} is empty: it holds no runs")
            # one transaction (executescript alone commits table by table): a process killed
            # while it creates the store leaves an empty file, never half a schema
            self._conn.executescript(
                f"BEGIN; {_SCHEMA} INSERT INTO meta(key, value) VALUES "
                f"('schema_version', '{SCHEMA_VERSION}'), ('created_by', 'opto_adapters'); COMMIT;"
            )
        else:
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            try:
                version = int(row["value"]) if row else None
            except ValueError:
                version = None
            if version is None:
                raise StoreError(f"{where} has no valid schema version: it is not an opto_adapters store")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{where} has schema version {version}, written by a newer opto_adapters; "
                    f"this one reads up to version {SCHEMA_VERSION}: upgrade opto_adapters"
                )
        missing = [sql for name, sql in _ADDED_TABLES if name not in tables]
        if not self.readonly and missing and "meta" in tables:
            with self._conn:  # the migration of a store made before these tables
                for sql in missing:
                    self._conn.execute(sql)
        if not self.readonly:
            self._migrate()
        if self.path != MEMORY and not self.readonly:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")

    def _columns(self, table: str) -> set[str]:
        return {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}

    def _migrate(self) -> None:
        """Add what schema version 1 gained later (see the comment above ``_RUN_FIELDS``), in
        one transaction: a process killed meanwhile leaves the store as it was."""
        candidate_columns = self._columns("candidates")
        missing = [(c, t) for c, t in _CANDIDATE_COLUMNS_ADDED if c not in candidate_columns]
        evaluation_columns = self._columns("evaluations")
        rebuild = "repeat" not in evaluation_columns
        attempts = not rebuild and "attempts" not in evaluation_columns  # a rebuild has it
        if not missing and not rebuild and not attempts:
            return
        script = f"BEGIN; UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version';"
        script += "".join(f" ALTER TABLE candidates ADD COLUMN {c} {t};" for c, t in missing)
        if attempts:
            script += " ALTER TABLE evaluations ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;"
        if rebuild:
            script += (
                _EVALUATIONS_TABLE.format(name="evaluations_new") + ";"
                f" INSERT INTO evaluations_new ({_EVALUATION_COLUMNS_V1}) SELECT {_EVALUATION_COLUMNS_V1} FROM evaluations;"
                " DROP TABLE evaluations; ALTER TABLE evaluations_new RENAME TO evaluations; "
                + _EVALUATIONS_INDEX
            )
        self._conn.executescript(script + " COMMIT;")
        logger.info("%s: added the columns of repeated evaluations, app usage, attempts and acceptance intervals", self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # -- helpers -----------------------------------------------------------------------------

    def _cut(self, text: str | None) -> str | None:
        """Free text as stored: cut to the budget (with a marker); ``None`` stays ``None``."""
        return None if text is None else cut(str(text), self.value_budget)

    def _json(self, value: Any) -> str:
        """A JSON document as stored (encodable; see ``encodable``)."""
        return _json_text(to_json(value))

    def _check_writable(self) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only")

    def _write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        self._check_writable()
        with self._lock, self._conn:
            return self._conn.execute(sql, _params(params))

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _update(self, table: str, allowed: frozenset[str], where: str, key: tuple[Any, ...], fields: Mapping[str, Any]) -> None:
        unknown = set(fields) - allowed
        if unknown:
            raise TypeError(f"cannot set {sorted(unknown)} on {table}; settable: {sorted(allowed)}")
        if not fields:
            return
        values = [self._cut(v) if name in _FREE_TEXT else v for name, v in fields.items()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._write(f"UPDATE {table} SET {assignments} WHERE {where}", (*values, *key))

    # -- runs --------------------------------------------------------------------------------

    def create_run(self, config: Mapping[str, Any], *, name: str = "") -> int:
        """A new run in status ``running``; returns its id."""
        now = time.time()
        cursor = self._write(
            "INSERT INTO runs(name, status, config, created_at, updated_at) VALUES (?, 'running', ?, ?, ?)",
            (name, self._json(dict(config)), now, now),
        )
        return int(cursor.lastrowid)

    def open_run(
        self,
        config: Mapping[str, Any],
        examples: Mapping[str, Iterable[Any]],
        values: Mapping[str, Any],
        *,
        name: str = "",
        run_id: int | None = None,
    ) -> tuple[int, int]:
        """Open a run in one transaction: its row, its examples per split and its parameter
        version 0 (the baseline and current version), or nothing if any part fails or is
        interrupted. ``run_id`` re-opens a run that never got its version 0 (its examples are
        replaced). Returns (run id, version id)."""
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only")
        config_text = self._json(dict(config))
        rows = [(split, i, self._json(ex)) for split, exs in examples.items() for i, ex in enumerate(exs)]
        text, digest = _values_json(values), values_hash(values)
        now = time.time()
        with self._lock, self._conn:
            conn = self._conn
            if run_id is None:
                cursor = conn.execute(
                    "INSERT INTO runs(name, status, config, created_at, updated_at) VALUES (?, 'running', ?, ?, ?)",
                    _params((name, config_text, now, now)),
                )
                run_id = int(cursor.lastrowid)
            else:
                conn.execute("DELETE FROM examples WHERE run_id = ?", (run_id,))
                conn.execute(
                    "UPDATE runs SET status = 'running', message = NULL, config = ?, updated_at = ? WHERE id = ?",
                    (config_text, now, run_id),
                )
            conn.executemany(
                "INSERT INTO examples(run_id, split, idx, example) VALUES (?, ?, ?, ?)",
                [(run_id, *row) for row in rows],
            )
            conn.execute(
                "INSERT OR IGNORE INTO versions(run_id, hash, parent_id, step, values_json, created_at) "
                "VALUES (?, ?, NULL, NULL, ?, ?)",
                (run_id, digest, text, now),
            )
            version_id = int(
                conn.execute("SELECT id FROM versions WHERE run_id = ? AND hash = ?", (run_id, digest)).fetchone()[0]
            )
            conn.execute(
                "UPDATE runs SET baseline_version_id = ?, current_version_id = ? WHERE id = ?",
                (version_id, version_id, run_id),
            )
        return run_id, version_id

    def update_run(self, run_id: int, **fields: Any) -> None:
        """Set run columns (``status``, ``message``, ``best_score``, the version ids...)."""
        if "config" in fields:
            fields["config"] = self._json(fields["config"])
        self._update("runs", _RUN_FIELDS, "id = ?", (run_id,), {**fields, "updated_at": time.time()})

    def run(self, run_id: int | None = None) -> StoredRun:
        """The run with this id (the latest one if ``None``)."""
        if run_id is None:
            latest = self.latest_run()
            if latest is None:
                raise StoreError(f"{self.path} holds no runs yet")
            return latest
        rows = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            ids = [r.id for r in self.runs()]
            raise StoreError(f"{self.path} has no run {run_id}; its runs are {ids or 'none'}")
        return _run(rows[0])

    def runs(self) -> list[StoredRun]:
        """All runs, oldest first."""
        return [_run(r) for r in self._rows("SELECT * FROM runs ORDER BY id")]

    def latest_run(self) -> StoredRun | None:
        rows = self._rows("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        return _run(rows[0]) if rows else None

    # -- examples ----------------------------------------------------------------------------

    def add_examples(self, run_id: int, split: str, examples: Iterable[Any]) -> None:
        rows = [(run_id, split, i, self._json(ex)) for i, ex in enumerate(examples)]
        self._check_writable()
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO examples(run_id, split, idx, example) VALUES (?, ?, ?, ?)",
                rows,
            )

    def examples(self, run_id: int, split: str) -> list[Any]:
        """The stored examples of a split (as JSON values), in order."""
        rows = self._rows(
            "SELECT example FROM examples WHERE run_id = ? AND split = ? ORDER BY idx", (run_id, split)
        )
        return [json.loads(r["example"]) for r in rows]

    # -- versions ----------------------------------------------------------------------------

    def version(
        self,
        run_id: int,
        values: Mapping[str, Any],
        *,
        parent_id: int | None = None,
        step: int | None = None,
    ) -> int:
        """The id of the version holding exactly ``values`` (created on first sight)."""
        text = _values_json(values)
        digest = values_hash(values)
        with self._lock:
            rows = self._rows("SELECT id FROM versions WHERE run_id = ? AND hash = ?", (run_id, digest))
            if rows:
                return int(rows[0]["id"])
            cursor = self._write(
                "INSERT INTO versions(run_id, hash, parent_id, step, values_json, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, digest, parent_id, step, text, time.time()),
            )
            return int(cursor.lastrowid)

    def versions(self, run_id: int) -> list[StoredVersion]:
        """Every version of a run, in the order they were first seen."""
        return [_version(r) for r in self._rows("SELECT * FROM versions WHERE run_id = ? ORDER BY id", (run_id,))]

    def version_values(self, version_id: int) -> dict[str, Any]:
        rows = self._rows("SELECT values_json FROM versions WHERE id = ?", (version_id,))
        if not rows:
            raise StoreError(f"{self.path} has no parameter version {version_id}")
        return json.loads(rows[0]["values_json"])

    # -- steps -------------------------------------------------------------------------------

    def start_step(
        self, run_id: int, step: int, *, epoch: int, batch: int, indices: list[int], version_id: int
    ) -> None:
        """Record that a step began (again, on resume: its scores and decision are reset)."""
        self._write(
            "INSERT OR REPLACE INTO steps(run_id, step, epoch, batch, indices, version_id, status, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'started', ?)",
            (run_id, step, epoch, batch, json.dumps(indices), version_id, time.time()),
        )

    def update_step(self, run_id: int, step: int, **fields: Any) -> None:
        self._update("steps", _STEP_FIELDS, "run_id = ? AND step = ?", (run_id, step), fields)

    def finish_step(self, run_id: int, step: int, *, memory: list[Any] | None = None, **fields: Any) -> None:
        """Record a step's decision and, in the same transaction, the optimizer's memory
        after it (``memory``: JSON-able entries), so a resume never sees one without the other."""
        self._check_writable()
        unknown = set(fields) - _STEP_FIELDS
        if unknown:
            raise TypeError(f"cannot set {sorted(unknown)} on steps; settable: {sorted(_STEP_FIELDS)}")
        values = [self._cut(v) if name in _FREE_TEXT else v for name, v in fields.items()]
        sets = ", ".join(f"{name} = ?" for name in fields)
        with self._lock, self._conn:
            if fields:
                self._conn.execute(
                    f"UPDATE steps SET {sets} WHERE run_id = ? AND step = ?",
                    _params([*values, run_id, step]),
                )
            if memory is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO optimizer_memory(run_id, step, entries) VALUES (?, ?, ?)",
                    _params([run_id, step, self._json(memory)]),
                )

    def optimizer_memory(self, run_id: int) -> list[Any] | None:
        """The optimizer's memory after the run's last finished step, if it was stored."""
        try:
            rows = self._rows("SELECT entries FROM optimizer_memory WHERE run_id = ?", (run_id,))
        except sqlite3.OperationalError:  # an older store opened read-only: no such table
            return None
        return json.loads(rows[0]["entries"]) if rows else None

    def steps(self, run_id: int) -> list[StoredStep]:
        return [_step(r) for r in self._rows("SELECT * FROM steps WHERE run_id = ? ORDER BY step", (run_id,))]

    def step(self, run_id: int, step: int) -> StoredStep | None:
        rows = self._rows("SELECT * FROM steps WHERE run_id = ? AND step = ?", (run_id, step))
        return _step(rows[0]) if rows else None

    # -- candidates --------------------------------------------------------------------------

    def add_candidate(
        self,
        run_id: int,
        step: int,
        k: int,
        *,
        values: Mapping[str, Any],
        invalid: Mapping[str, str] | None = None,
        reasoning: str = "",
        prompt: str = "",
        reply: str = "",
        error: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        status: str = "pending",
        reason: str | None = None,
        memory: list[Any] | None = None,
        lineage: tuple[str, list[int]] | None = None,
    ) -> int:
        """Record a proposal; returns the candidate id. ``memory``: the optimizer's memory
        after it, kept in the same transaction (a resumed step that reuses this proposal
        starts from the memory the proposal left). ``lineage``: (kind, parent version ids)
        of a Pareto search's candidate, kept in the same transaction."""
        self._check_writable()
        with self._lock, self._conn:
            cursor = self._add_candidate(
                run_id, step, k, values, invalid, reasoning, prompt, reply, error,
                prompt_tokens, completion_tokens, status, reason,
            )
            if lineage is not None:
                kind, parents = lineage
                self._conn.execute(
                    "INSERT OR REPLACE INTO search_lineage(candidate_id, run_id, kind, parents) VALUES (?, ?, ?, ?)",
                    (int(cursor.lastrowid), run_id, kind, json.dumps([int(p) for p in parents])),
                )
            if memory is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO optimizer_memory(run_id, step, entries) VALUES (?, ?, ?)",
                    _params([run_id, step, self._json(memory)]),
                )
        return int(cursor.lastrowid)

    def _add_candidate(
        self, run_id: int, step: int, k: int, values: Mapping[str, Any],
        invalid: Mapping[str, str] | None, reasoning: str, prompt: str, reply: str,
        error: str | None, prompt_tokens: int, completion_tokens: int, status: str,
        reason: str | None,
    ) -> sqlite3.Cursor:
        return self._conn.execute(
            "INSERT OR REPLACE INTO candidates(run_id, step, k, values_json, invalid_json, reasoning, prompt, "
            "reply, error, prompt_tokens, completion_tokens, status, reason, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _params((
                run_id,
                step,
                k,
                _values_json(values),
                _json_text(json.dumps({str(k): self._cut(v) for k, v in (invalid or {}).items()}, ensure_ascii=False)),
                self._cut(reasoning),
                self._cut(prompt),
                self._cut(reply),
                self._cut(error),
                prompt_tokens,
                completion_tokens,
                status,
                self._cut(reason),
                time.time(),
            )),
        )

    def update_candidate(self, candidate_id: int, **fields: Any) -> None:
        self._update("candidates", _CANDIDATE_FIELDS, "id = ?", (candidate_id,), fields)

    def candidates(self, run_id: int, step: int | None = None) -> list[StoredCandidate]:
        if step is None:
            rows = self._rows("SELECT * FROM candidates WHERE run_id = ? ORDER BY step, k", (run_id,))
        else:
            rows = self._rows(
                "SELECT * FROM candidates WHERE run_id = ? AND step = ? ORDER BY k", (run_id, step)
            )
        return [_candidate(r) for r in rows]

    def usage(self, run_id: int) -> dict[str, int]:
        """Optimizer calls (and how many got a reply) and tokens of a run, over its candidates."""
        (calls, answered, prompt, completion), = self._rows(
            "SELECT COUNT(*), COALESCE(SUM(reply != ''), 0), COALESCE(SUM(prompt_tokens), 0), "
            "COALESCE(SUM(completion_tokens), 0) "
            "FROM candidates WHERE run_id = ? AND (prompt != '' OR reply != '')",
            (run_id,),
        )
        return {
            "optimizer_calls": int(calls),
            "optimizer_answered": int(answered),
            "prompt_tokens": int(prompt),
            "completion_tokens": int(completion),
            "total_tokens": int(prompt) + int(completion),
        }

    # -- the Pareto search's pool -------------------------------------------------------------

    def lineage(self, run_id: int) -> dict[int, tuple[str, list[int]]]:
        """(kind, parent version ids) of each Pareto-search candidate of a run, by candidate id."""
        try:
            rows = self._rows("SELECT * FROM search_lineage WHERE run_id = ?", (run_id,))
        except sqlite3.OperationalError:  # an older store opened read-only: no such table
            return {}
        return {r["candidate_id"]: (r["kind"], json.loads(r["parents"])) for r in rows}

    def add_pool_member(
        self,
        run_id: int,
        version_id: int,
        *,
        step: int,
        kind: str,
        parents: Iterable[int] = (),
        candidate_id: int | None = None,
    ) -> None:
        """Put a version into the run's pool (again: nothing changes)."""
        self._write(
            "INSERT OR IGNORE INTO search_pool(run_id, version_id, candidate_id, step, kind, parents, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, version_id, candidate_id, step, kind, json.dumps([int(p) for p in parents]), time.time()),
        )

    def pool(self, run_id: int) -> list[StoredPoolMember]:
        """The run's pool, in the order its members joined."""
        try:
            rows = self._rows("SELECT * FROM search_pool WHERE run_id = ? ORDER BY step, rowid", (run_id,))
        except sqlite3.OperationalError:  # an older store opened read-only: no such table
            return []
        return [_pool_member(r) for r in rows]

    def set_front(self, run_id: int, version_ids: Iterable[int]) -> None:
        """Mark exactly these pool members as the front."""
        ids = sorted({int(v) for v in version_ids})
        self._check_writable()
        with self._lock, self._conn:
            self._conn.execute("UPDATE search_pool SET on_front = 0 WHERE run_id = ?", (run_id,))
            self._conn.executemany(
                "UPDATE search_pool SET on_front = 1 WHERE run_id = ? AND version_id = ?",
                [(run_id, v) for v in ids],
            )

    def score_matrix(
        self, run_id: int, version_ids: Iterable[int], split: str, size: int
    ) -> dict[int, list[float | None]]:
        """Per version, its stored score on each of the ``size`` examples of ``split``
        (``None`` where it was not evaluated; the mean of its repeats where it was repeated)."""
        out: dict[int, list[float | None]] = {}
        for v in version_ids:
            seen: list[list[float]] = [[] for _ in range(size)]
            for e in self.evaluations(run_id, version_id=v, split=split):
                if 0 <= e.index < size and e.score is not None:
                    seen[e.index].append(e.score)
            out[v] = [sum(x) / len(x) if x else None for x in seen]
        return out

    def evaluation_count(self, run_id: int) -> int:
        """How many evaluations (app runs scored by the guide) a run has stored."""
        ((n,),) = self._rows("SELECT COUNT(*) FROM evaluations WHERE run_id = ?", (run_id,))
        return int(n)

    # -- evaluations and graphs --------------------------------------------------------------

    def add_evaluation(
        self,
        run_id: int,
        version_id: int,
        split: str,
        index: int,
        *,
        phase: str,
        score: float | None,
        feedback: str = "",
        output: str | None = None,
        error: str | None = None,
        step: int | None = None,
        duration: float | None = None,
        graph: Mapping[str, Any] | None = None,
        dot: str | None = None,
        text: str | None = None,
        repeat: int = 0,
        usage: Mapping[str, Any] | None = None,
        attempts: int = 1,
    ) -> int:
        """Record (or replace) the evaluation of one example under one version (texts and graph
        node values cut to the store's ``value_budget``). ``repeat`` numbers the evaluations of
        the same example and version (0 first); ``usage`` is the app's own model usage
        (``prompt_tokens``, ``completion_tokens``, ``model_calls``, ``latency``); ``attempts``
        how many times it was sent to a worker (more than 1: a lost worker's example ran again)."""
        u = usage or {}
        blob = None
        if graph:
            bounded = bound_graph_json(graph, self.value_budget)
            blob = zlib.compress(_json_text(json.dumps(bounded, ensure_ascii=False)).encode(), 6)
        output, error, feedback, text = (self._cut(t) for t in (output, error, feedback, text))
        self._check_writable()
        with self._lock, self._conn:
            (eid,) = self._conn.execute(
                "INSERT INTO evaluations(run_id, version_id, split, idx, repeat, phase, step, output, error, score, "
                "feedback, duration, prompt_tokens, completion_tokens, model_calls, model_latency, created_at, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_id, version_id, split, idx, repeat) DO UPDATE SET phase=excluded.phase, "
                "step=excluded.step, output=excluded.output, error=excluded.error, score=excluded.score, "
                "feedback=excluded.feedback, duration=excluded.duration, prompt_tokens=excluded.prompt_tokens, "
                "completion_tokens=excluded.completion_tokens, model_calls=excluded.model_calls, "
                "model_latency=excluded.model_latency, created_at=excluded.created_at, attempts=excluded.attempts "
                "RETURNING id",
                _params((
                    run_id, version_id, split, index, repeat, phase, step, output, error, score,
                    feedback or "", duration, u.get("prompt_tokens"), u.get("completion_tokens"),
                    u.get("model_calls"), u.get("latency"), time.time(), attempts,
                )),
            ).fetchone()
            if blob is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO graphs(evaluation_id, data, dot, text) VALUES (?, ?, ?, ?)",
                    _params((eid, blob, dot, text)),
                )
            else:
                self._conn.execute("DELETE FROM graphs WHERE evaluation_id = ?", (eid,))
        return int(eid)

    def evaluations(
        self,
        run_id: int,
        *,
        version_id: int | None = None,
        split: str | None = None,
        step: int | None = None,
        indices: Iterable[int] | None = None,
    ) -> list[StoredEvaluation]:
        """Evaluations of a run, filtered, ordered by split and example index."""
        sql = "SELECT * FROM evaluations WHERE run_id = ?"
        params: list[Any] = [run_id]
        for column, value in (("version_id", version_id), ("split", split), ("step", step)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        wanted = None if indices is None else set(indices)
        if wanted is not None and len(wanted) <= 500:  # small sets (a minibatch): ask for them
            sql += f" AND idx IN ({', '.join('?' * len(wanted))})"
            params.extend(sorted(wanted))
            wanted = None
        rows = self._rows(sql + (" ORDER BY split, idx, repeat" if self._repeats else " ORDER BY split, idx"), params)
        return [_evaluation(r) for r in rows if wanted is None or r["idx"] in wanted]

    def mean_score(self, run_id: int, version_id: int, split: str) -> tuple[float | None, int]:
        """(mean score, number of examples scored) of a version on a split; an example evaluated
        several times (``repeat``) counts once, with the mean of its repeats."""
        (mean, count), = self._rows(
            "SELECT AVG(m), COUNT(m) FROM (SELECT AVG(score) AS m FROM evaluations "
            "WHERE run_id = ? AND version_id = ? AND split = ? AND score IS NOT NULL GROUP BY idx)",
            (run_id, version_id, split),
        )
        return (None if mean is None else float(mean)), int(count)

    def app_usage(
        self, run_id: int, split: str | None = None, *, indices: Iterable[int] | None = None
    ) -> dict[int, AppUsage]:
        """The app's own model usage per evaluation, by version (of one split, or all; of
        some examples of it, or all)."""
        if not self._repeats:  # an older store, read-only: it recorded no usage
            return {}
        sql = (
            "SELECT version_id, COUNT(*) AS n, COUNT(model_calls) AS recorded, COUNT(prompt_tokens) AS reported, "
            "AVG(prompt_tokens) AS prompt, AVG(completion_tokens) AS completion, AVG(model_calls) AS calls, "
            "AVG(model_latency) AS latency FROM evaluations WHERE run_id = ?"
        )
        params: list[Any] = [run_id]
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        if indices is not None:
            wanted = sorted({int(i) for i in indices})
            sql += f" AND idx IN ({', '.join('?' * len(wanted))})"
            params.extend(wanted)
        return {
            r["version_id"]: AppUsage(
                evaluations=r["n"], recorded=r["recorded"], reported=r["reported"],
                prompt_tokens=r["prompt"], completion_tokens=r["completion"],
                model_calls=r["calls"], latency=r["latency"],
            )
            for r in self._rows(sql + " GROUP BY version_id", params)
        }

    def graph(self, evaluation_id: int) -> dict[str, Any] | None:
        """The stored graph (nodes and edges) of an evaluation, or ``None``."""
        rows = self._rows("SELECT data FROM graphs WHERE evaluation_id = ?", (evaluation_id,))
        return json.loads(zlib.decompress(rows[0]["data"])) if rows else None

    def graph_views(self, evaluation_id: int) -> tuple[str | None, str | None]:
        """(DOT, text) stored for a sampled evaluation (``None`` when not sampled)."""
        rows = self._rows("SELECT dot, text FROM graphs WHERE evaluation_id = ?", (evaluation_id,))
        return (rows[0]["dot"], rows[0]["text"]) if rows else (None, None)

    def sampled_evaluations(self, run_id: int, step: int | None = None) -> list[StoredEvaluation]:
        """Evaluations whose DOT and text views were stored, newest first."""
        sql = (
            "SELECT e.* FROM evaluations e JOIN graphs g ON g.evaluation_id = e.id "
            "WHERE e.run_id = ? AND g.dot IS NOT NULL"
        )
        params: list[Any] = [run_id]
        if step is not None:
            sql += " AND e.step = ?"
            params.append(step)
        return [_evaluation(r) for r in self._rows(sql + " ORDER BY e.id DESC", params)]

    # -- checking ----------------------------------------------------------------------------

    def check(self) -> list[str]:
        """What is wrong with the store, or ``[]``: SQLite's integrity check, then the store's own
        invariants (every id points into the same run, versions match their hash, graphs load,
        an accepted step names its accepted candidate, a finished run has no unfinished step)."""
        problems = [
            f"integrity: {r[0]}" for r in self._rows("PRAGMA integrity_check") if r[0] != "ok"
        ]
        if problems:
            return problems
        versions = {r["id"]: r for r in self._rows("SELECT * FROM versions")}
        for v in versions.values():
            try:
                values = json.loads(v["values_json"])
            except ValueError:
                problems.append(f"version {v['id']}: its values are not JSON")
                continue
            if values_hash(values) != v["hash"]:
                problems.append(f"version {v['id']}: its values do not match its hash")
            if v["parent_id"] is not None and v["parent_id"] not in versions:
                problems.append(f"version {v['id']}: parent {v['parent_id']} does not exist")

        def own(run_id: int, version_id: int | None, what: str) -> None:
            if version_id is not None and (version_id not in versions or versions[version_id]["run_id"] != run_id):
                problems.append(f"run {run_id}: {what} is version {version_id}, not one of the run's")

        for run in self._rows("SELECT * FROM runs"):
            for column in ("baseline_version_id", "current_version_id", "best_version_id"):
                own(run["id"], run[column], column)
        unfinished_ok = {"running", "interrupted", "failed", "time_limit", "budget_exhausted", "max_metric_calls"}
        for step in self._rows("SELECT s.*, r.status AS run_status FROM steps s JOIN runs r ON r.id = s.run_id"):
            where = f"step {step['step']} of run {step['run_id']}"
            own(step["run_id"], step["version_id"], f"{where}'s version")
            own(step["run_id"], step["result_version_id"], f"{where}'s result")
            if step["status"] == "started" and step["run_status"] not in unfinished_ok:
                problems.append(f"{where} never finished, yet the run is {step['run_status']}")
            if step["status"] == "accepted":
                accepted = self._rows(
                    "SELECT status, version_id FROM candidates WHERE id = ? AND run_id = ? AND step = ?",
                    (step["accepted_candidate_id"], step["run_id"], step["step"]),
                )
                if not accepted or accepted[0]["status"] != "accepted":
                    problems.append(f"{where} is accepted but names no accepted candidate of it")
                elif accepted[0]["version_id"] != step["result_version_id"]:
                    problems.append(f"{where}: its result is not the accepted candidate's version")
        for c in self._rows("SELECT id, run_id, version_id, values_json, invalid_json FROM candidates"):
            own(c["run_id"], c["version_id"], f"candidate {c['id']}'s version")
            for column in ("values_json", "invalid_json"):
                try:
                    json.loads(c[column])
                except ValueError:
                    problems.append(f"candidate {c['id']}: {column} is not JSON")
        for e in self._rows("SELECT id, run_id, version_id FROM evaluations"):
            own(e["run_id"], e["version_id"], f"evaluation {e['id']}'s version")
        tables = {r["name"] for r in self._rows("SELECT name FROM sqlite_master WHERE type='table'")}
        if "search_pool" in tables:
            for m in self._rows("SELECT * FROM search_pool"):
                own(m["run_id"], m["version_id"], "a pool member")
                for p in json.loads(m["parents"]):
                    own(m["run_id"], p, f"pool member {m['version_id']}'s parent")
        if "search_lineage" in tables:
            candidates = {r["id"]: r["run_id"] for r in self._rows("SELECT id, run_id FROM candidates")}
            for r in self._rows("SELECT candidate_id, run_id FROM search_lineage"):
                if candidates.get(r["candidate_id"]) != r["run_id"]:
                    problems.append(f"lineage of candidate {r['candidate_id']}: no such candidate of run {r['run_id']}")
        orphans = self._rows("SELECT evaluation_id FROM graphs WHERE evaluation_id NOT IN (SELECT id FROM evaluations)")
        problems.extend(f"graph of evaluation {r['evaluation_id']}: no such evaluation" for r in orphans)
        for g in self._rows("SELECT evaluation_id, data FROM graphs"):
            try:
                json.loads(zlib.decompress(g["data"]))
            except (zlib.error, ValueError):
                problems.append(f"graph of evaluation {g['evaluation_id']} does not load")
        return problems


def _params(params: Iterable[Any]) -> tuple[Any, ...]:
    """SQL parameters with every text made encodable (the last guard: JSON columns are made
    encodable before, with the escape JSON needs)."""
    return tuple(encodable(p) if isinstance(p, str) else p for p in params)


def _run(r: sqlite3.Row) -> StoredRun:
    return StoredRun(
        id=r["id"], name=r["name"], status=r["status"], message=r["message"],
        config=json.loads(r["config"]), created_at=r["created_at"], updated_at=r["updated_at"],
        baseline_version_id=r["baseline_version_id"], current_version_id=r["current_version_id"],
        best_version_id=r["best_version_id"], best_score=r["best_score"],
    )


def _version(r: sqlite3.Row) -> StoredVersion:
    return StoredVersion(
        id=r["id"], run_id=r["run_id"], hash=r["hash"], parent_id=r["parent_id"], step=r["step"],
        values=json.loads(r["values_json"]), created_at=r["created_at"],
    )


def _step(r: sqlite3.Row) -> StoredStep:
    return StoredStep(
        run_id=r["run_id"], step=r["step"], epoch=r["epoch"], batch=r["batch"],
        indices=json.loads(r["indices"]), version_id=r["version_id"], status=r["status"],
        train_score=r["train_score"], gate_score=r["gate_score"], val_score=r["val_score"],
        accepted_candidate_id=r["accepted_candidate_id"], result_version_id=r["result_version_id"],
        reason=r["reason"], started_at=r["started_at"], finished_at=r["finished_at"],
    )


def _candidate(r: sqlite3.Row) -> StoredCandidate:
    return StoredCandidate(
        id=r["id"], run_id=r["run_id"], step=r["step"], k=r["k"],
        values=json.loads(r["values_json"]), invalid=json.loads(r["invalid_json"]),
        reasoning=r["reasoning"], prompt=r["prompt"], reply=r["reply"], error=r["error"],
        prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
        version_id=r["version_id"], score=r["score"], status=r["status"], reason=r["reason"],
        created_at=r["created_at"], ci_low=_get(r, "ci_low"), ci_high=_get(r, "ci_high"),
    )


def _get(r: sqlite3.Row, column: str, default: Any = None) -> Any:
    """A column a store made before it was added lacks (read-only, not migrated)."""
    return r[column] if column in r.keys() else default


def _pool_member(r: sqlite3.Row) -> StoredPoolMember:
    return StoredPoolMember(
        run_id=r["run_id"], version_id=r["version_id"], candidate_id=r["candidate_id"],
        step=r["step"], kind=r["kind"], parents=json.loads(r["parents"]),
        on_front=bool(r["on_front"]), created_at=r["created_at"],
    )


def _evaluation(r: sqlite3.Row) -> StoredEvaluation:
    return StoredEvaluation(
        id=r["id"], run_id=r["run_id"], version_id=r["version_id"], split=r["split"],
        index=r["idx"], phase=r["phase"], step=r["step"], output=r["output"], error=r["error"],
        score=r["score"], feedback=r["feedback"], duration=r["duration"], created_at=r["created_at"],
        repeat=_get(r, "repeat", 0), prompt_tokens=_get(r, "prompt_tokens"),
        completion_tokens=_get(r, "completion_tokens"), model_calls=_get(r, "model_calls"),
        model_latency=_get(r, "model_latency"), attempts=_get(r, "attempts", 1),
    )
