"""The HTML report: scores, diffs of prompts, decisions, a chart and a graph, all inline."""

from html.parser import HTMLParser

import pytest

from opto_adapters.optimizers import OptoPrime
from opto_adapters.train import Store, optimize
from opto_adapters.train.report import graph_svg, render_report, word_diff, write_report
from tests.train_apps import data, guide, llm_for, make_app, reply


class Page(HTMLParser):
    """Text per tag, table cells (by table id), and every external reference."""

    def __init__(self, text):
        super().__init__()
        self.stack, self.text, self.tags, self.refs, self.tables = [], {}, [], [], {}
        self._table = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.stack.append(tag)
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith("#"):
                self.refs.append(attrs[key])
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tr":
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass
        if tag in ("td", "th"):
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        for tag in set(self.stack):
            self.text.setdefault(tag, []).append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def trained(scripted_llm):
    app = make_app("Reply {q}")
    scripted_llm.script(
        reply("ANSWER {q}", "add the marker"),
        reply("Nope {q}", "try another word"),
        reply("ANSWER {q}!", "add the exclamation mark"),
    )
    store = Store()
    result = optimize(
        app, data(6), data(3, "v"), guide=guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
        batch_size=2, store=store, progress=False, run_name="toy",
    )
    assert [s.status for s in result.history] == ["accepted", "rejected", "accepted"]
    return store, result


def test_report_has_scores_decisions_and_prompt_diffs(trained):
    store, result = trained
    page = Page(render_report(store, result.run_id))
    assert page.tables["scores"] == [
        ["", "train", "val"],
        ["baseline", "0.000", "0.000"],
        ["best (written back)", "1.000", "1.000"],
        ["final", "1.000", "1.000"],
    ]
    steps = page.tables["steps"][1:]
    assert [row[-1].split()[0] for row in steps] == ["accepted", "rejected", "accepted"]
    assert steps[1][-1] == "rejected validation score 0 < current 0.5; reverted"
    assert [row[4] for row in steps] == ["0.500", "0.000", "1.000"]  # candidate scores
    # word diffs: the versions and every candidate
    assert page.text["del"].count("Reply") >= 1 and "ANSWER" in page.text["ins"]
    assert "Nope" in page.text["ins"]  # the rejected candidate's suggestion
    assert "{q}!" in "".join(page.text["ins"])  # version 2 adds the exclamation mark
    body = "".join(page.text["body"])
    assert "try another word" in body  # the optimizer's reasoning
    assert "3 optimizer calls" in body
    assert "ANSWER {q}!" in "".join(page.text["pre"])  # the final values


def test_report_is_self_contained_with_a_chart_and_a_graph(trained, tmp_path):
    store, result = trained
    path = write_report(store, tmp_path / "report.html", result.run_id)
    html = path.read_text()
    page = Page(html)
    assert page.refs == []  # no stylesheet, script or image fetched from anywhere
    assert "script" not in page.tags and "style" in page.tags
    assert page.tags.count("svg") == 2  # the score chart and the traced run
    assert page.tags.count("polyline") == 2  # train and val lines
    titles = "".join(page.text["title"])
    assert "val (kept values, after the step), step 3: 1" in titles
    assert "prompt: " in titles and "digraph opto" in "".join(page.text["pre"])
    with pytest.raises(IsADirectoryError, match="is a directory"):
        write_report(store, tmp_path, result.run_id)


def test_word_diff_marks_removed_and_added_words():
    html = word_diff("Answer the question {q} briefly.", "Answer the question {q} in one word.")
    assert html == "Answer the question {q} <del>briefly.</del><ins>in one word.</ins>"
    assert word_diff("<b>", "<i>") == "<del>&lt;b&gt;</del><ins>&lt;i&gt;</ins>"
    assert word_diff({"k": 1}, {"k": 2}).count("<ins>") == 1


def test_graph_svg_puts_each_node_after_its_inputs():
    data = {
        "format": 1,
        "nodes": [
            {"name": "prompt", "role": "parameter", "kind": "prompt", "value": "A {q}"},
            {"name": "q", "role": "input", "value": "x"},
            {"name": "fill_out", "role": "op", "op": "fill", "value": "A x"},
            {"name": "model_out", "role": "op", "op": "model", "value": "a"},
        ],
        "edges": [[0, "template", 2], [1, "q", 2], [2, "prompt", 3], [1, "question", 3]],
        "output": 3,
    }
    svg = graph_svg(data)
    page = Page(svg)
    assert page.tags.count("rect") == 4 and page.tags.count("path") == 5  # 4 edges + arrow head
    xs = [float(part.split('"')[1]) for part in svg.split("<rect x=")[1:]]
    assert xs[0] == xs[1] < xs[2] < xs[3]
    assert 'stroke-width="2.5"' in svg.split("<rect")[-1]  # the output is marked
