"""An HTML report of one stored run: one self-contained file (inline CSS and SVG, no network).

Sections: scores (baseline, best, final), a chart of the scores per step, for a Pareto
search the candidate tree (SVG) and the front, every step with its candidates (accepted or
rejected and why, the optimizer's reasoning, a word diff of what each suggested), the accepted
versions of every parameter as diffs, the final values, token usage, and one traced run's
graph drawn with a layered layout computed here.
"""

from __future__ import annotations

import difflib
import html
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..trace.render import short_repr
from .objectives import Point, front, points_from_store
from .pareto import leads
from .store import Store, StoredCandidate, StoredPoolMember, StoredRun, StoredStep
from .trainer import TrainResult, build_result

__all__ = ["candidate_tree_svg", "front_svg", "graph_svg", "render_report", "word_diff", "write_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f8f8f8;border:1px solid #eee;padding:.6em;white-space:pre-wrap;word-break:break-word;margin:.3em 0}
del{background:#fbd0d0;text-decoration:line-through}ins{background:#c9f2c9;text-decoration:none}
.accepted{color:#17702d;font-weight:600}.rejected,.refused{color:#b42318;font-weight:600}.no_change{color:#777;font-weight:600}
.muted{color:#777}.cand{border-left:3px solid #ddd;padding-left:.8em;margin:.8em 0}
details{margin:.4em 0}summary{cursor:pointer}
"""

_SERIES_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(score: float | None) -> str:
    return "—" if score is None else f"{score:.3f}"


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)


def word_diff(old: Any, new: Any) -> str:
    """HTML of the change from ``old`` to ``new``: removed words in ``<del>``, added in ``<ins>``."""
    a = re.split(r"(\s+)", _value_text(old))
    b = re.split(r"(\s+)", _value_text(new))
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(_esc("".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{_esc(''.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{_esc(''.join(b[j1:j2]))}</ins>")
    return "".join(out)


# -- charts -----------------------------------------------------------------------------------


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    marks: dict[float, str] | None = None,
    width: int = 720,
    height: int = 260,
) -> str:
    """An inline SVG line chart; ``marks`` colours the x positions of accepted/rejected steps."""
    points = [p for _, pts in series for p in pts]
    if not points:
        return '<p class="muted">No scores to plot yet.</p>'
    left, right, top, bottom = 48, 16, 30, 34
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1 = min(0.0, min(xs)), max(1.0, max(xs))
    lo, hi = min(ys), max(ys)
    if lo >= 0 and hi <= 1:  # the usual score range: show all of it
        lo, hi = 0.0, 1.0
    elif hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    y0, y1 = lo - pad, hi + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="scores per step">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="#fff" stroke="#ccc"/>',
    ]
    for k in range(5):
        y = lo + (hi - lo) * k / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">{y:.2f}</text>'
        )
    stride = max(1, round((x1 - x0) / 10))
    x = int(x0)
    while x <= x1:
        parts.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">{x}</text>'
        )
        x += stride
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 4}" font-size="11" text-anchor="middle">step (0 = baseline)</text>'
    )
    for x, status in (marks or {}).items():
        color = {"accepted": "#17702d", "rejected": "#b42318"}.get(status, "#999")
        parts.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{height - bottom}" '
            f'stroke="{color}" stroke-opacity="0.25" stroke-dasharray="3,3"><title>step {x:g}: {_esc(status)}</title></line>'
        )
    for n, (label, pts) in enumerate(series):
        color = _SERIES_COLORS[n % len(_SERIES_COLORS)]
        if len(pts) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}">'
                f"<title>{_esc(label)}, step {x:g}: {y:.4g}</title></circle>"
            )
        lx = left + n * 240
        parts.append(
            f'<rect x="{lx}" y="10" width="12" height="4" fill="{color}"/>'
            f'<text x="{lx + 16}" y="16" font-size="11">{_esc(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# -- graphs -----------------------------------------------------------------------------------

_FILL = {"parameter": "#fff3b0", "error": "#f4b6b6", "input": "#eef3fb", "op": "#ffffff"}


def graph_svg(data: dict[str, Any], *, max_nodes: int = 150) -> str:
    """A stored graph (``graph_to_json``) as inline SVG: inputs on the left, the output on the
    right, each node in the column after its deepest input."""
    nodes = data["nodes"]
    edges = data["edges"]
    if len(nodes) > max_nodes:
        return f'<p class="muted">The graph has {len(nodes)} nodes; see the DOT text below.</p>'
    parents: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for src, _, dst in edges:
        parents[dst].append(src)
    layer = [0] * len(nodes)
    for i in range(len(nodes)):  # nodes are stored in topological order
        layer[i] = max((layer[p] + 1 for p in parents[i]), default=0)
    columns: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        columns.setdefault(layer[i], []).append(i)
    row: dict[int, float] = {}
    for col in sorted(columns):
        members = columns[col]
        if col > 0:  # order by the mean row of the inputs, to keep edges short
            members.sort(key=lambda i: sum(row[p] for p in parents[i]) / len(parents[i]))
        for r, i in enumerate(members):
            row[i] = r
    w, h, gx, gy, margin = 190, 54, 90, 22, 10
    pos = {i: (margin + layer[i] * (w + gx), margin + row[i] * (h + gy)) for i in range(len(nodes))}
    width = margin * 2 + (max(layer) + 1) * (w + gx) - gx
    bottom = margin + max(len(m) for m in columns.values()) * (h + gy) - gy
    # each edge leaves and enters at its own height, so edges into one node do not meet in
    # one point; an edge that skips columns runs in a lane of its own below the nodes
    outgoing: dict[int, list[int]] = {}
    incoming: dict[int, list[int]] = {}
    for k, (src, _, dst) in enumerate(edges):
        outgoing.setdefault(src, []).append(k)
        incoming.setdefault(dst, []).append(k)

    def port(i: int, k: int, table: dict[int, list[int]]) -> float:
        slot = table[i].index(k)
        return pos[i][1] + h * (slot + 1) / (len(table[i]) + 1)

    lanes = 0
    paths: list[str] = []
    for k, (src, arg, dst) in enumerate(edges):
        ax, ay = pos[src][0] + w, port(src, k, outgoing)
        bx, by = pos[dst][0], port(dst, k, incoming)
        if layer[dst] - layer[src] > 1:
            lanes += 1
            lane = bottom + 14 * lanes
            d = (f"M{ax},{ay:.1f} C{ax + 40},{ay:.1f} {ax + 20},{lane} {ax + 60},{lane} "
                 f"L{bx - 60},{lane} C{bx - 20},{lane} {bx - 40},{by:.1f} {bx},{by:.1f}")
        else:
            mid = (ax + bx) / 2
            d = f"M{ax},{ay:.1f} C{mid},{ay:.1f} {mid},{by:.1f} {bx},{by:.1f}"
        paths.append(
            f'<path d="{d}" fill="none" stroke="#888" marker-end="url(#arrow)"/>'
            f'<text x="{bx - 6}" y="{by - 3:.1f}" font-size="10" fill="#555" '
            f'text-anchor="end">{_esc(short_repr(arg, 14))}</text>'
        )
    height = bottom + margin + 14 * lanes
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="traced run graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#888"/></marker></defs>',
        *paths,
    ]
    output = data.get("output")
    for i, node in enumerate(nodes):
        x, y = pos[i]
        role = node.get("role", "op")
        head = node["name"] + (f" = {node['op']}()" if node.get("op") and role != "parameter" else "")
        if role == "parameter":
            head += f"  [{node.get('kind', '')}]"
        stroke = ' stroke-width="2.5"' if i == output else ""
        parts.append(
            f'<g><title>{_esc(node["name"])}: {_esc(short_repr(node.get("value"), 400))}</title>'
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="{_FILL.get(role, "#fff")}" stroke="#666"{stroke}/>'
            f'<text x="{x + 8}" y="{y + 20}" font-size="12" font-weight="600">{_esc(short_repr(head, 28))}</text>'
            f'<text x="{x + 8}" y="{y + 40}" font-size="11" fill="#444">{_esc(short_repr(node.get("value"), 30))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


# -- the report -------------------------------------------------------------------------------


def render_report(store: Store, run_id: int | None = None) -> str:
    """The HTML report of a run (the latest one by default)."""
    run = store.run(run_id)
    result = build_result(store, run.id)
    steps = store.steps(run.id)
    candidates = store.candidates(run.id)
    sections = [
        _header(run, result),
        _scores(result),
        "<h2>Scores per step</h2>" + _chart(run, result, steps),
        _pareto_section(store, run, result, candidates),
        _steps_section(store, steps, candidates),
        _versions_section(store, run),
        _final_values(result),
        _usage(result, candidates),
        _app_usage(store, run, candidates),
        _graph_section(store, run),
    ]
    title = f"opto_adapters run {run.id}" + (f" — {run.name}" if run.name else "")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>" + "\n".join(sections) + "</body></html>\n"
    )


def write_report(
    store: Store | str | os.PathLike[str], path: str | os.PathLike[str], run_id: int | None = None
) -> Path:
    """Write the HTML report of a run to ``path``; ``store`` is a ``Store`` or a store path."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory: give a file path such as {target / 'report.html'}")
    if isinstance(store, Store):
        text = render_report(store, run_id)
    else:
        with Store(store, readonly=True) as opened:
            text = render_report(opened, run_id)
    target.write_text(text, encoding="utf-8")
    return target


def _header(run: StoredRun, result: TrainResult) -> str:
    c = run.config
    rows = [
        ("status", f"{run.status}" + (f" — {run.message}" if run.message else "")),
        ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created_at))),
        ("app", c.get("app")),
        ("optimizer", f"{c.get('optimizer')} ({c.get('model') or 'model not recorded'})"),
        ("objective", c.get("objective") or "—"),
        ("data", f"{c.get('train_size')} train, {c.get('val_size')} val examples"),
        ("settings", f"epochs {c.get('epochs')}, batch size {c.get('batch_size')}, "
         f"{c.get('n_candidates')} candidate(s) per step, concurrency {c.get('max_concurrency')}"),
        ("steps", f"{len(result.history)} ({result.accepted} accepted)"),
    ]
    if c.get("acceptance") == "bootstrap" or (c.get("repeats") or 1) > 1 or c.get("tolerance"):
        rows.append((
            "acceptance",
            f"{c.get('acceptance')}, {c.get('repeats')} evaluation(s) per gate example, tolerance "
            f"{c.get('tolerance')}" + (f", {c.get('confidence'):.0%} interval" if c.get("acceptance") == "bootstrap" else ""),
        ))
    if c.get("search") == "pareto":
        rows.insert(-1, ("search", f"pareto, {c.get('proposals_per_step')} proposal(s) per step, merge "
                     f"{'on' if c.get('merge') else 'off'}, front over {' and '.join(c.get('objectives') or ['score'])}"))
    if c.get("max_metric_calls"):
        rows.insert(-1, ("rollout budget", f"max_metric_calls {c.get('max_metric_calls')}"))
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _scores(result: TrainResult) -> str:
    rows = "".join(
        f'<tr><th>{label}</th><td class="num">{_esc(s.text("train"))}</td><td class="num">{_esc(s.text("val"))}</td></tr>'
        for label, s in (("baseline", result.baseline), ("best (written back)", result.best), ("final", result.final))
    )
    return f'<h2>Scores</h2><table id="scores"><tr><th></th><th>train</th><th>val</th></tr>{rows}</table>'


def _chart(run: StoredRun, result: TrainResult, steps: list[StoredStep]) -> str:
    train = [(float(s.step), s.train_score) for s in steps if s.train_score is not None]
    series: list[tuple[str, list[tuple[float, float]]]] = [("train (minibatch, before the step)", train)]
    if result.baseline.train is not None:
        train.insert(0, (0.0, result.baseline.train))
    if run.config.get("val_size"):
        val = [(float(s.step), s.val_score) for s in steps if s.val_score is not None]
        if result.baseline.val is not None:
            val.insert(0, (0.0, result.baseline.val))
        series.append(("val (kept values, after the step)", val))
    marks = {float(s.step): s.status for s in steps}
    return line_chart(series, marks=marks)


def _steps_section(store: Store, steps: list[StoredStep], candidates: list[StoredCandidate]) -> str:
    if not steps:
        return "<h2>Steps</h2><p class='muted'>No optimizer step was taken.</p>"
    by_step: dict[int, list[StoredCandidate]] = {}
    for c in candidates:
        by_step.setdefault(c.step, []).append(c)
    values_of: dict[int, dict[str, Any]] = {}
    lineage = store.lineage(steps[0].run_id)
    out = ["<h2>Steps</h2><table id='steps'><tr><th>step</th><th>epoch</th><th>train</th>"
           "<th>gate before</th><th>candidates</th><th>decision</th></tr>"]
    for s in steps:
        scores = ", ".join(_fmt(c.score) + _interval(c) for c in by_step.get(s.step, []))
        out.append(
            f"<tr><td class='num'>{s.step}</td><td class='num'>{s.epoch}</td><td class='num'>{_fmt(s.train_score)}</td>"
            f"<td class='num'>{_fmt(s.gate_score)}</td><td class='num'>{scores or '—'}</td>"
            f"<td><span class='{_esc(s.status)}'>{_esc(s.status)}</span> <span class='muted'>{_esc(s.reason or '')}</span></td></tr>"
        )
    out.append("</table><h2>Candidates</h2>")
    for s in steps:
        cands = by_step.get(s.step, [])
        if not cands:
            continue
        out.append(f"<h3>Step {s.step}</h3>")
        for c in cands:
            kind, parents = lineage.get(c.id, ("", [s.version_id]))
            base = parents[0] if parents else s.version_id
            if base not in values_of:
                values_of[base] = store.version_values(base)
            before = values_of[base]
            origin = f" — {kind} of {' and '.join(f'v{p}' for p in parents)}" if kind else ""
            diffs = "".join(
                f"<p><b>{_esc(name)}</b></p><pre class='diff'>{word_diff(before.get(name, ''), value)}</pre>"
                for name, value in c.values.items()
            )
            invalid = "".join(
                f"<li>{_esc(name)}: {_esc(reason)}</li>" for name, reason in c.invalid.items()
            )
            out.append(
                f"<div class='cand'><p>candidate {c.k + 1}{_esc(origin)}: <span class='{_esc(c.status)}'>{_esc(c.status)}</span>"
                f" — score {_fmt(c.score)}{_esc(_interval(c))} — {_esc(c.reason or '')}</p>"
                + (f"<details><summary>reasoning</summary><pre>{_esc(c.reasoning)}</pre></details>" if c.reasoning else "")
                + diffs
                + (f"<p>refused suggestions:</p><ul>{invalid}</ul>" if invalid else "")
                + (f"<p class='rejected'>error: {_esc(c.error)}</p>" if c.error else "")
                + (f"<details><summary>optimizer prompt</summary><pre>{_esc(c.prompt)}</pre></details>" if c.prompt else "")
                + (f"<details><summary>raw reply</summary><pre>{_esc(c.reply)}</pre></details>" if c.reply else "")
                + "</div>"
            )
    return "".join(out)


def _interval(c: StoredCandidate) -> str:
    """`` CI [low, high]`` of a candidate judged on an interval, else nothing."""
    if c.ci_low is None or c.ci_high is None:
        return ""
    return f" (CI [{c.ci_low:+.3f}, {c.ci_high:+.3f}])"


def front_svg(points: Sequence[Point], *, labels: dict[Any, str] | None = None, width: int = 720, height: int = 300) -> str:
    """An inline SVG of points over (app tokens per evaluation, score): the front over
    (score, -tokens) in green, joined as a staircase, the dominated points grey."""
    known = [p for p in points if p.tokens is not None]
    if not known:
        return '<p class="muted">The app\'s model reported no tokens: no score and cost front to draw.</p>'
    on = {id(p) for p in front(known)}
    left, right, top, bottom = 48, 16, 16, 40
    xs, ys = [float(p.tokens) for p in known], [p.score for p in known]  # type: ignore[arg-type]
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 1, x1 + 1
    lo, hi = (0.0, 1.0) if min(ys) >= 0 and max(ys) <= 1 else (min(ys) - 0.5, max(ys) + 0.5)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (1 - (y - lo) / (hi - lo)) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="score and cost front">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="#fff" stroke="#ccc"/>',
    ]
    for k in range(5):
        y = lo + (hi - lo) * k / 4
        x = x0 + (x1 - x0) * k / 4
        parts.append(
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">{y:.2f}</text>'
            f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">{x:.0f}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" font-size="11" text-anchor="middle">'
        "app tokens per evaluation (fewer is better)</text>"
    )
    stairs = sorted((p for p in known if id(p) in on), key=lambda p: p.cost)
    if len(stairs) > 1:
        path = [f"{sx(float(stairs[0].cost)):.1f},{sy(stairs[0].score):.1f}"]
        for a, b in zip(stairs, stairs[1:], strict=False):
            path.append(f"{sx(float(b.cost)):.1f},{sy(a.score):.1f}")
            path.append(f"{sx(float(b.cost)):.1f},{sy(b.score):.1f}")
        parts.append(f'<polyline points="{" ".join(path)}" fill="none" stroke="#17702d" stroke-opacity="0.5"/>')
    for p in known:
        color = "#17702d" if id(p) in on else "#aaa"
        name = (labels or {}).get(p.key, str(p.key))
        parts.append(
            f'<circle class="{"front" if id(p) in on else "dominated"}" cx="{sx(float(p.cost)):.1f}" cy="{sy(p.score):.1f}" '
            f'r="5" fill="{color}"><title>{_esc(name)}: score {p.score:.3f}, {p.tokens:.1f} tokens</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


def candidate_tree_svg(
    members: Sequence[StoredPoolMember],
    means: dict[int, float | None],
    *,
    front: set[int] | None = None,
    best: int | None = None,
    rejected: dict[int, int] | None = None,
    width: int = 720,
) -> str:
    """An inline SVG of the Pareto pool as a tree: one row per generation, an edge from each
    parent (dashed for a merge), the front drawn thick and green, the best one starred, and
    under each member how many of its children were rejected."""
    if not members:
        return '<p class="muted">The pool is empty.</p>'
    front, rejected = front or set(), rejected or {}
    depth: dict[int, int] = {}
    for m in members:  # members come in the order they joined: parents first
        depth[m.version_id] = 1 + max((depth.get(p, 0) for p in m.parents), default=-1)
    rows: dict[int, list[int]] = {}
    for m in members:
        rows.setdefault(depth[m.version_id], []).append(m.version_id)
    row_h, r = 78, 20
    height = 30 + row_h * len(rows)
    widest = max(len(v) for v in rows.values())
    width = max(width, 70 * widest + 40)
    pos: dict[int, tuple[float, float]] = {}
    parents_of = {m.version_id: m.parents for m in members}
    for d in sorted(rows):
        ids = rows[d]
        if d:  # under their parents, so that edges cross less

            def under(v: int) -> float:
                xs = [pos[p][0] for p in parents_of[v] if p in pos]
                return sum(xs) / len(xs) if xs else 0.0

            ids.sort(key=under)
        for i, v in enumerate(ids):
            pos[v] = ((i + 1) * width / (len(ids) + 1), 30 + d * row_h)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="candidate-tree" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="candidate tree">'
    ]
    for m in members:
        x, y = pos[m.version_id]
        for p in m.parents:
            if p in pos:
                px, py = pos[p]
                dash = ' stroke-dasharray="5,3"' if m.kind == "merge" else ""
                parts.append(
                    f'<line class="edge" data-parent="{p}" data-child="{m.version_id}" x1="{px:.1f}" '
                    f'y1="{py + r:.1f}" x2="{x:.1f}" y2="{y - r:.1f}" stroke="#999"{dash}/>'
                )
    for m in members:
        v = m.version_id
        x, y = pos[v]
        on = v in front
        mean = means.get(v)
        label = f"v{v}" + (" ★" if v == best else "")
        title = f"version {v} ({m.kind}, step {m.step})" + (f", mean {mean:.3f}" if mean is not None else "") + (", on the front" if on else "")
        parts.append(
            f'<g class="candidate{" front" if on else ""}" data-version="{v}"><title>{_esc(title)}</title>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{"#e6f4ea" if on else "#f4f4f4"}" '
            f'stroke="{"#17702d" if on else "#999"}" stroke-width="{3 if on else 1}"/>'
            f'<text x="{x:.1f}" y="{y - 2:.1f}" font-size="11" text-anchor="middle">{_esc(label)}</text>'
            f'<text x="{x:.1f}" y="{y + 11:.1f}" font-size="10" text-anchor="middle">{_esc(_fmt(mean))}</text>'
            + (f'<text x="{x:.1f}" y="{y + r + 12:.1f}" font-size="9" fill="#b42318" text-anchor="middle">'
               f"{rejected[v]} rejected</text>" if rejected.get(v) else "")
            + "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _app_usage(store: Store, run: StoredRun, candidates: list[StoredCandidate]) -> str:
    """The app's own model usage per evaluation of each version scored on the selection split."""
    split = "val" if run.config.get("val_size") else "train"
    usage = store.app_usage(run.id, split)
    if not any(u.recorded for u in usage.values()):
        return ""
    label = {run.baseline_version_id: "baseline"}
    for c in candidates:
        if c.version_id is not None:
            label.setdefault(c.version_id, f"step {c.step} candidate {c.k + 1} ({c.status})")
    if run.best_version_id is not None:
        label[run.best_version_id] = label.get(run.best_version_id, "") + " — best"

    def num(x: float | None, f: str) -> str:
        return "—" if x is None else format(x, f)

    rows = "".join(
        f"<tr><td>{_esc(label.get(v, f'version {v}'))}</td><td class='num'>{u.evaluations}</td>"
        f"<td class='num'>{num(u.prompt_tokens, '.1f')}</td><td class='num'>{num(u.completion_tokens, '.1f')}</td>"
        f"<td class='num'>{num(u.model_calls, '.2f')}</td><td class='num'>{num(u.latency, '.3f')}</td></tr>"
        for v, u in sorted(usage.items())
    )
    return (
        f"<h2>App model usage</h2><p>Per evaluation on {split}, means over the evaluations whose "
        "model reported it.</p><table id='app-usage'><tr><th>version</th><th>evaluations</th>"
        "<th>prompt tokens</th><th>completion tokens</th><th>model calls</th><th>latency (s)</th></tr>"
        f"{rows}</table><h3>Score and cost</h3><p>Each version scored on all of {split}; green: the "
        "front (no other version scores higher for fewer tokens).</p>"
        + front_svg(points_from_store(store, run.id), labels=label)
    )


def _pareto_section(store: Store, run: StoredRun, result: TrainResult, candidates: list[StoredCandidate]) -> str:
    members = store.pool(run.id)
    if not members:
        return ""
    split = "val" if run.config.get("val_size") else "train"
    size = int(run.config.get(f"{split}_size") or 0)
    matrix = store.score_matrix(run.id, [m.version_id for m in members], split, size)
    means = {v: (sum(x for x in row if x is not None) / len(row) if row and None not in row else None) for v, row in matrix.items()}
    complete = {v: [float(x) for x in row] for v, row in matrix.items() if None not in row}
    led = leads(complete)
    rejected: dict[int, int] = {}
    lineage = store.lineage(run.id)
    for c in candidates:
        if c.status == "rejected" and c.id in lineage and lineage[c.id][1]:
            parent = lineage[c.id][1][0]
            rejected[parent] = rejected.get(parent, 0) + 1
    front = {f.version_id for f in result.front}
    best = run.best_version_id
    tree = candidate_tree_svg(members, means, front=front, best=best, rejected=rejected)
    rows = "".join(
        f"<tr><td>v{f.version_id}{' ★' if f.version_id == best else ''}</td><td>{_esc(f.kind)}</td>"
        f"<td>{_esc(', '.join(f'v{p}' for p in f.parents) or '—')}</td><td class='num'>{f.step}</td>"
        f"<td class='num'>{_fmt(f.mean)}</td><td class='num'>{led.get(f.version_id, 0)}</td>"
        f"<td><code>{_esc(' '.join(_fmt(x) for x in f.scores))}</code></td></tr>"
        for f in result.front
    )
    where = "validation" if split == "val" else "training (the run had no val)"
    return (
        f"<h2>Candidate tree</h2><p>{len(members)} candidates in the pool; an edge from each parent "
        "(dashed: a merge); the front is green, ★ the best (written back).</p>" + tree
        + f"<h2>Pareto front</h2><p>Scores on each {where} example; a candidate is on the front when "
        "no other is at least as good on every example and better on one.</p>"
        "<table id='front'><tr><th>candidate</th><th>kind</th><th>parents</th><th>step</th><th>mean</th>"
        f"<th>examples led</th><th>per-example scores</th></tr>{rows}</table>"
    )


def _versions_section(store: Store, run: StoredRun) -> str:
    """Diffs between the successive kept versions (the baseline, then each accepted step)."""
    chain = [run.baseline_version_id] + [
        s.result_version_id for s in store.steps(run.id) if s.status == "accepted"
    ]
    chain = [v for v in dict.fromkeys(chain) if v is not None]
    if len(chain) < 2:
        return "<h2>Prompt versions</h2><p class='muted'>No accepted change: the values are the baseline's.</p>"
    out = ["<h2>Prompt versions</h2>"]
    values = [store.version_values(v) for v in chain]
    for n in range(1, len(values)):
        old, new = values[n - 1], values[n]
        changed = [name for name in new if new[name] != old.get(name)]
        out.append(f"<h3>version {n} (from version {n - 1})</h3>")
        for name in changed:
            out.append(f"<p><b>{_esc(name)}</b></p><pre class='diff'>{word_diff(old.get(name, ''), new[name])}</pre>")
    return "".join(out)


def _final_values(result: TrainResult) -> str:
    rows = "".join(
        f"<p><b>{_esc(name)}</b></p><pre>{_esc(_value_text(value))}</pre>"
        for name, value in result.best_values.items()
    )
    return f"<h2>Final parameter values</h2>{rows}"


def _usage(result: TrainResult, candidates: list[StoredCandidate]) -> str:
    u = result.usage
    per_step: dict[int, list[int]] = {}
    for c in candidates:
        entry = per_step.setdefault(c.step, [0, 0])
        entry[0] += c.prompt_tokens
        entry[1] += c.completion_tokens
    rows = "".join(
        f"<tr><td class='num'>{step}</td><td class='num'>{p}</td><td class='num'>{q}</td></tr>"
        for step, (p, q) in sorted(per_step.items())
    )
    return (
        f"<h2>Token usage</h2><p id='usage'>{u.get('optimizer_calls', 0)} optimizer calls, "
        f"{u.get('prompt_tokens', 0)} prompt + {u.get('completion_tokens', 0)} completion = "
        f"{u.get('total_tokens', 0)} tokens.</p>"
        + (f"<table><tr><th>step</th><th>prompt tokens</th><th>completion tokens</th></tr>{rows}</table>" if rows else "")
    )


def _graph_section(store: Store, run: StoredRun) -> str:
    sampled = store.sampled_evaluations(run.id)
    if not sampled:
        return "<h2>A traced run</h2><p class='muted'>No graph was stored for this run.</p>"
    preference = {"step": 0, "baseline": 1}  # what the optimizer saw, newest first
    e = min(sampled, key=lambda ev: preference.get(ev.phase, 2))
    data = store.graph(e.id)
    dot, text = store.graph_views(e.id)
    where = f"{e.split} example {e.index}, phase {e.phase}" + (f", step {e.step}" if e.step else "")
    return (
        f"<h2>A traced run</h2><p>{_esc(where)}: score {_fmt(e.score)}. Parameters are yellow, "
        "errors red, the output has a thick border.</p>"
        + (graph_svg(data) if data else "")
        + (f"<details><summary>text</summary><pre>{_esc(text)}</pre></details>" if text else "")
        + (f"<details><summary>Graphviz DOT</summary><pre>{_esc(dot)}</pre></details>" if dot else "")
    )
