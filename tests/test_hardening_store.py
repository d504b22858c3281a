"""The store under hostile text and sizes: lone surrogates are stored as a visible escape (never
a UnicodeEncodeError), long texts and graph node values are cut to a budget with a marker, and
rows are read by column name (a column order change shifts nothing)."""

from __future__ import annotations

import json
import sqlite3
import zlib

import pytest

from opto_adapters.optimizers import OptoPrime
from opto_adapters.trace import Feedback, Graph, bundle, node
from opto_adapters.train import Store, optimize
from opto_adapters.train.graphs import bound_graph_json, graph_from_json, graph_to_json
from opto_adapters.train.store import DEFAULT_VALUE_BUDGET, encodable
from tests.train_apps import data, guide, llm_for, make_app, reply

BAD = "bad\udcffbyte"  # a lone surrogate: UTF-8 cannot hold it
SHOWN = "bad\\udcffbyte"  # how it is stored and read back: a visible escape


def strings(value):
    """Every string inside a JSON-like value (keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)


def all_text(store: Store, run_id: int) -> list[str]:
    """Every text the store gives back about a run (dataclass fields, examples, graphs)."""
    found: list[str] = []
    objects = [store.run(run_id), *store.versions(run_id), *store.steps(run_id), *store.candidates(run_id)]
    evaluations = store.evaluations(run_id)
    for obj in [*objects, *evaluations]:
        found.extend(strings(list(vars(obj).values())))
    for split in ("train", "val"):
        found.extend(strings(store.examples(run_id, split)))
    for e in evaluations:
        found.extend(strings(store.graph(e.id)))
        found.extend(s for s in store.graph_views(e.id) if s is not None)
    return found


def test_encodable_escapes_lone_surrogates_and_joins_pairs():
    assert encodable("plain é ✓") == "plain é ✓"
    assert encodable(BAD) == SHOWN
    assert encodable("\ud83d\ude00 ok") == "\U0001f600 ok"  # a pair is the character it encodes
    assert encodable("\ude00\ud83d") == "\\ude00\\ud83d"  # wrong order: two lone ones


def test_every_text_column_and_json_document_takes_a_lone_surrogate(tmp_path):
    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        run = store.create_run({"objective": BAD, BAD: 1}, name=BAD)
        store.add_examples(run, "train", [{"input": BAD}])
        v = store.version(run, {"prompt": BAD})
        assert store.version(run, {"prompt": BAD}) == v  # the same version, found again
        store.start_step(run, 1, epoch=0, batch=0, indices=[0], version_id=v)
        store.update_step(run, 1, reason=BAD)
        cid = store.add_candidate(
            run, 1, 0, values={"prompt": BAD}, invalid={"other": BAD}, reasoning=BAD,
            prompt=BAD, reply=BAD, error=BAD, reason=BAD,
        )
        store.update_candidate(cid, reason=BAD)
        prompt = node(BAD, name="prompt", trainable=True, kind="prompt")
        out = append_bad(prompt)
        graph = graph_to_json(Graph(out))
        store.add_evaluation(
            run, v, "train", 0, phase="step", score=0.5, feedback=BAD, output=BAD, error=BAD,
            graph=graph, dot=f'digraph {{ "{BAD}" }}', text=BAD,
        )
        store.update_run(run, message=BAD, status="failed")
    with Store(path, readonly=True) as store:
        texts = all_text(store, run)
        for text in texts:
            text.encode("utf-8")  # every text read back can be shown
        assert sum(SHOWN in t for t in texts) >= 20
        (e,) = store.evaluations(run)
        assert (e.output, e.feedback, e.error) == (SHOWN, SHOWN, SHOWN)
        assert store.run(run).config == {"objective": SHOWN, SHOWN: 1}
        assert store.examples(run, "train") == [{"input": SHOWN}]
        (c,) = store.candidates(run)
        assert (c.values, c.invalid, c.reply, c.reason) == ({"prompt": SHOWN}, {"other": SHOWN}, SHOWN, SHOWN)
        assert [n["value"] for n in store.graph(e.id)["nodes"]] == [SHOWN, SHOWN + SHOWN]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


@bundle()
def append_bad(template):
    """Append an undecodable byte."""
    return template + BAD


@bundle()
def fill(template, q):
    """Fill the question into the template."""
    return template.format(q=q)


@bundle()
def count(docs):
    """Count the documents."""
    return len(docs)


@bundle()
def shout_on_val(template, q):
    """Fill the question into the template; on val questions the 'model' adds an undecodable
    byte (val outputs are stored but not shown to the optimizer)."""
    return template.format(q=q) + ("\udcff" if q.startswith("v") else "")


@bundle()
def shout(template, q):
    """Fill the question into the template; the 'model' adds an undecodable byte."""
    return template.format(q=q) + "\udcff"


def hostile_guide(example, output):
    fb = guide(example, output)
    return Feedback(score=fb.score, text=fb.text + (" \udcff" if example["input"].startswith("v") else ""))


def surrogate_run(scripted_llm, respond, feedback):
    app = make_app("Reply {q}")
    app.respond = respond
    scripted_llm.script(json.dumps({"reasoning": "add the marker \udcff", "suggestion": {"prompt": "ANSWER {q}!"}}))
    store = Store()
    result = optimize(
        app, data(2), data(2, "v"), guide=feedback, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
        batch_size=2, max_steps=1, store=store, progress=False,
    )
    return store, result


def test_a_run_whose_outputs_feedback_and_optimizer_reply_hold_surrogates_completes(scripted_llm):
    store, result = surrogate_run(scripted_llm, shout_on_val, hostile_guide)
    assert result.status == "completed" and result.best_values == {"prompt": "ANSWER {q}!"}
    for text in all_text(store, result.run_id):
        text.encode("utf-8")
    val = store.evaluations(result.run_id, split="val")
    assert len(val) == 4  # baseline and candidate, 2 examples each
    assert all(e.output.endswith("\\udcff") and e.feedback.endswith(" \\udcff") for e in val)
    (cand,) = store.candidates(result.run_id)
    assert cand.reasoning == "add the marker \\udcff" and "\\udcff" in cand.reply


def test_a_surrogate_in_a_train_output_shown_to_the_optimizer_does_not_end_the_run(scripted_llm):
    store, result = surrogate_run(scripted_llm, shout, guide)
    assert result.status == "completed"


def big_app_run(scripted_llm, store, n=8):
    """A run whose app returns 1 MB per example: baseline on 8 train + 8 val = 16 evaluations."""
    app = make_app("Reply {q}")
    filler = "x" * 1_000_000

    @bundle()
    def long_answer(template, q):
        """Answer with a very long text."""
        return template.format(q=q) + filler

    app.respond = long_answer
    scripted_llm.set_default(json.dumps(reply("Reply {q}")))  # suggests no change
    return optimize(
        app, data(n), data(n, "v"), guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
        batch_size=n, max_steps=1, store=store, progress=False,
    )


def test_sixteen_one_megabyte_outputs_make_a_small_store(scripted_llm, tmp_path):
    path = tmp_path / "runs.sqlite"
    result = big_app_run(scripted_llm, str(path))
    assert result.status == "completed"
    with Store(path, readonly=True) as store:
        evaluations = store.evaluations(result.run_id)
        assert len(evaluations) == 16
        marker = f"...[cut: {1_000_008 - DEFAULT_VALUE_BUDGET} of 1000008 characters not shown]"
        assert all(len(e.output) < DEFAULT_VALUE_BUDGET + 100 for e in evaluations)
        assert evaluations[0].output == "Reply q0" + "x" * (DEFAULT_VALUE_BUDGET - 8) + marker
        graph = store.graph(evaluations[0].id)
        (out,) = [n for n in graph["nodes"] if n["name"].startswith("long_answer")]
        assert out["value"].endswith(marker) and out["cut"] == 1_000_008
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert path.stat().st_size < 2_000_000  # was 39 MB with every value kept whole


def test_the_budget_is_configurable(scripted_llm):
    whole = Store(value_budget=None)
    result = big_app_run(scripted_llm, whole, n=1)
    (e, _) = whole.evaluations(result.run_id)
    assert len(e.output) == 1_000_008
    small = Store(value_budget=50)
    small.create_run({})
    eid = small.add_evaluation(1, 1, "train", 0, phase="baseline", score=1.0, output="y" * 80, feedback="z" * 51)
    (e,) = small.evaluations(1)
    assert e.output == "y" * 50 + "...[cut: 30 of 80 characters not shown]"
    assert e.feedback == "z" * 50 + "...[cut: 1 of 51 characters not shown]"
    assert small.graph(eid) is None
    with pytest.raises(ValueError, match="value_budget must be a positive number"):
        Store(value_budget=0)


def test_a_cut_parameter_value_is_the_live_value_when_the_graph_is_rebuilt():
    long = "Answer {q} " + "carefully " * 50
    prompt = node(long, name="prompt", trainable=True, kind="prompt")
    out = fill(prompt, "2+2")
    data_ = bound_graph_json(graph_to_json(Graph(out)), 100)
    entry = data_["nodes"][0]
    assert entry["value"].endswith(f"...[cut: {len(long) - 100} of {len(long)} characters not shown]")
    same = node(long, name="prompt", trainable=True, kind="prompt")
    assert graph_from_json(data_, {"prompt": same}).value_of(same) == long  # whole, not the cut text
    other = node("Other {q}", name="prompt", trainable=True, kind="prompt")
    assert graph_from_json(data_, {"prompt": other}).value_of(other) == entry["value"]  # an earlier value, cut
    assert graph_to_json(Graph(out))["nodes"][0]["value"] == long  # without a budget, whole


def test_json_node_values_are_cut_as_their_json_text():
    docs = [{"text": "d" * 300} for _ in range(5)]
    out = count(node(docs, name="docs"))
    data_ = graph_to_json(Graph(out), value_budget=200)
    entry = data_["nodes"][0]
    assert entry["value_type"] == "list" and entry["cut"] == len(json.dumps(docs))
    assert entry["value"].startswith('[{"text": "ddd') and "characters not shown]" in entry["value"]
    assert data_["nodes"][1]["value"] == 5


def _reverse_columns(path, table):
    """Rebuild ``table`` with its columns in reverse order (what a schema change could do)."""
    conn = sqlite3.connect(path)
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    rev = ", ".join(reversed(cols))
    conn.executescript(
        f"CREATE TABLE t_rev AS SELECT {rev} FROM {table}; DROP TABLE {table}; "
        f"ALTER TABLE t_rev RENAME TO {table};"
    )
    conn.commit()
    conn.close()


def test_rows_are_read_by_column_name(tmp_path):
    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        run = store.create_run({"epochs": 1}, name="named")
        store.add_examples(run, "train", [{"input": "q0"}])
        v = store.version(run, {"prompt": "A {q}"})
        store.update_run(run, baseline_version_id=v, best_score=0.5)
        store.start_step(run, 1, epoch=0, batch=0, indices=[0], version_id=v)
        store.update_step(run, 1, status="accepted", train_score=0.25, reason="why")
        store.add_candidate(run, 1, 0, values={"prompt": "B {q}"}, reasoning="r", reply="{}", prompt_tokens=7)
        eid = store.add_evaluation(run, v, "train", 0, phase="step", step=1, score=0.75, output="o",
                                   feedback="f", graph={"format": 1, "nodes": [], "edges": [], "output": 0})
        before = (store.run(run), store.versions(run), store.steps(run), store.candidates(run),
                  store.evaluations(run), store.sampled_evaluations(run), store.graph(eid))
    for table in ("runs", "versions", "steps", "candidates", "evaluations", "graphs", "examples"):
        _reverse_columns(path, table)
    with Store(path, readonly=True) as store:
        after = (store.run(run), store.versions(run), store.steps(run), store.candidates(run),
                 store.evaluations(run), store.sampled_evaluations(run), store.graph(eid))
        assert after == before
        assert store.examples(run, "train") == [{"input": "q0"}]
        assert store.evaluations(run, indices=range(1000))[0].index == 0  # the big-set filter
        assert store.usage(run)["prompt_tokens"] == 7


def test_graph_blob_is_valid_utf8_json():
    store = Store()
    run = store.create_run({})
    v = store.version(run, {"p": 1})
    graph = {"format": 1, "nodes": [{"name": BAD, "role": "input", "value": BAD}], "edges": [], "output": 0}
    eid = store.add_evaluation(run, v, "train", 0, phase="baseline", score=1.0, graph=graph)
    (blob,) = store._conn.execute("SELECT data FROM graphs WHERE evaluation_id = ?", (eid,)).fetchone()
    assert json.loads(zlib.decompress(blob).decode("utf-8"))["nodes"][0] == {"name": SHOWN, "role": "input", "value": SHOWN}


def test_check_finds_what_breaks_the_store_invariants(scripted_llm, tmp_path):
    path = tmp_path / "runs.sqlite"
    scripted_llm.script(json.dumps(reply("ANSWER {q}!")))
    app = make_app("Reply {q}")
    result = optimize(app, data(2), data(2, "v"), guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
                      batch_size=2, max_steps=1, store=str(path), progress=False)
    assert result.history[0].status == "accepted"
    with Store(path) as store:
        assert store.check() == []
        other = store.create_run({})
        foreign = store.version(other, {"prompt": "x"})
        store.update_run(result.run_id, best_version_id=foreign)
        store.update_candidate(store.candidates(result.run_id)[0].id, status="rejected")
        store._write("UPDATE versions SET values_json = ? WHERE id = 1", ('{"prompt": "changed"}',))
        assert store.check() == [
            "version 1: its values do not match its hash",
            f"run {result.run_id}: best_version_id is version {foreign}, not one of the run's",
            f"step 1 of run {result.run_id} is accepted but names no accepted candidate of it",
        ]


def test_the_schema_is_created_in_one_transaction(tmp_path, monkeypatch):
    """A process killed while it creates the store must not leave half a schema behind (it
    would be refused forever as 'not an opto_adapters store')."""
    import opto_adapters.train.store as store_module

    path = tmp_path / "runs.sqlite"
    broken = store_module._SCHEMA.replace("CREATE TABLE graphs", "CREATE TABLE graphs (oops")
    monkeypatch.setattr(store_module, "_SCHEMA", broken)
    with pytest.raises(sqlite3.OperationalError):
        Store(path)
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []  # nothing was kept
    conn.close()
    with Store(path) as store:  # and the file is usable
        assert store.create_run({}) == 1


def test_examples_holding_a_lone_surrogate_are_trained_on_and_stored(scripted_llm):
    """Text decoded with errors="surrogateescape" (a file with a stray byte) in the data."""
    from opto_adapters.train.data import fingerprint

    train = [{"input": "caf\udce9"}, {"input": "tea"}]
    assert fingerprint(train) != fingerprint([{"input": "cafe"}, {"input": "tea"}])
    app = make_app("Reply {q}")
    scripted_llm.script(json.dumps({"reasoning": "shorter", "suggestion": {"prompt": "Say {q}"}}))
    store = Store()
    result = optimize(
        app, train, guide=lambda ex, out: 0.5, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
        batch_size=2, max_steps=1, store=store, progress=False,
    )
    assert result.status == "completed"
    stored = store.examples(result.run_id, "train")
    assert stored[0] == {"input": "caf\\udce9"}  # kept, with the surrogate escaped
