"""The SQLite store: schema and version, refusing what is not a store, threads, graphs."""

import sqlite3
import threading

import pytest

from opto_adapters.trace import ExceptionNode, ExecutionError, Graph, bundle, node
from opto_adapters.train import Store, StoreError
from opto_adapters.train.graphs import graph_from_json, graph_to_json
from opto_adapters.train.store import SCHEMA_VERSION


def test_schema_is_created_versioned_and_reopened(tmp_path):
    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        run = store.create_run({"epochs": 2}, name="first")
        v = store.version(run, {"prompt": "A {q}"})
        assert store.version(run, {"prompt": "A {q}"}) == v  # same values, same version
        assert store.version(run, {"prompt": "B {q}"}) != v
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "runs", "examples", "versions", "steps", "candidates", "evaluations", "graphs"} <= tables
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    with Store(path, readonly=True) as store:
        (stored,) = store.runs()
        assert (stored.name, stored.status, stored.config) == ("first", "running", {"epochs": 2})
        assert [v.values for v in store.versions(stored.id)] == [{"prompt": "A {q}"}, {"prompt": "B {q}"}]
        with pytest.raises(StoreError, match="opened read-only"):
            store.create_run({})


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "runs.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, written by a newer opto_adapters.*upgrade"):
        Store(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database at all" * 100, "is not an opto_adapters store or is corrupt"),
        (b"SQLite format 3\x00" + b"\xff" * 4000, "is not an opto_adapters store or is corrupt"),
    ],
    ids=["text", "corrupt-header"],
)
def test_a_file_that_is_not_a_store_is_refused_and_left_untouched(tmp_path, content, message):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=message):
        Store(path)
    assert path.read_bytes() == content


def test_another_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"not an opto_adapters store \(its tables are \['users'\]\)"):
        Store(path)


def test_bad_paths(tmp_path):
    with pytest.raises(StoreError, match="is a directory: give a file path such as"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="no store at"):
        Store(tmp_path / "missing.sqlite", readonly=True)
    assert not (tmp_path / "missing.sqlite").exists()
    with pytest.raises(StoreError, match="the directory .* does not exist"):
        Store(tmp_path / "no" / "such" / "dir.sqlite")


def test_concurrent_writers_lose_nothing(tmp_path):
    with Store(tmp_path / "runs.sqlite") as store:
        run = store.create_run({})
        version = store.version(run, {"p": "x"})
        errors = []

        def write(worker):
            try:
                for i in range(50):
                    store.add_evaluation(
                        run, version, "train", worker * 100 + i, phase="baseline", score=i / 50,
                        feedback=f"w{worker}", graph={"format": 1, "nodes": [], "edges": [], "output": 0},
                    )
            except Exception as exc:  # pragma: no cover - the assertion below reports it
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        evaluations = store.evaluations(run)
        assert len(evaluations) == 800 and len({e.index for e in evaluations}) == 800
        assert store.mean_score(run, version, "train") == (pytest.approx(0.49), 800)


def test_an_evaluation_is_replaced_not_duplicated():
    store = Store()
    run = store.create_run({})
    v = store.version(run, {"p": 1})
    first = store.add_evaluation(run, v, "val", 0, phase="val", score=0.0, graph={"format": 1, "nodes": [], "edges": [], "output": 0})
    second = store.add_evaluation(run, v, "val", 0, phase="val", score=1.0)
    assert first == second
    (e,) = store.evaluations(run)
    assert e.score == 1.0 and store.graph(e.id) is None


@bundle()
def fill(template, q):
    """Fill the template."""
    return template.format(q=q)


@bundle()
def parse(text):
    """Parse a number."""
    return int(text)


def test_graphs_round_trip_and_feedback_reaches_the_live_parameter():
    prompt = node("n={q}", name="prompt", trainable=True, kind="prompt")
    with pytest.raises(ExecutionError) as info:
        parse(fill(prompt, object()))
    data = graph_to_json(Graph(info.value.node))
    names = [n["name"] for n in data["nodes"]]
    assert names == ["prompt", "q", "fill", "parse_error"]
    assert data["edges"] == [[0, "template", 2], [1, "q", 2], [2, "text", 3]]
    assert data["nodes"][1]["value"] == "<object object>" and data["nodes"][1]["value_type"] == "object"
    assert data["nodes"][3]["role"] == "error" and data["nodes"][3]["error_type"] == "ValueError"

    live = node("n={q}", name="prompt", trainable=True, kind="prompt")
    graph = graph_from_json(data, {"prompt": live})
    assert isinstance(graph.output, ExceptionNode)
    assert type(graph.output.exception).__name__ == "ValueError"
    assert graph.to_text() == Graph(info.value.node).to_text()
    sub = graph.backward("must be a number")
    assert sub.parameters_reached == [live] and len(live.feedback) == 1
    # without the live parameter, a read-only copy is shown (never trained)
    shown = graph_from_json(data, {})
    assert shown.nodes[0].trainable is False and shown.nodes[0].kind == "prompt"
