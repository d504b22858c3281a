"""The ``opto-adapters`` command: optimize a recipe, then inspect, export and report stored runs.

    opto-adapters optimize RECIPE.py [--dry-run] [--model M] [--epochs N] [--batch-size N] [--store PATH]
    opto-adapters runs STORE
    opto-adapters show STORE [--run ID] [--step N] [--format text|dot]
    opto-adapters export STORE -o params.json [--run ID] [--version best|final|baseline | --pick RULE]
                         [--diff out.patch] [--patch-set patches.json] [--source RECIPE.py]
    opto-adapters report STORE -o report.html [--run ID]

Exit status: 0 on success, 1 on an error (the message says what to fix), 2 on bad usage,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "run_recipe"]

NO_ENDPOINT = (
    "no model endpoint is configured. Set OPENAI_API_KEY to use OpenAI, or OPENAI_BASE_URL to "
    "use any OpenAI-compatible server (a local one works: Ollama at http://localhost:11434/v1, "
    "vLLM at http://localhost:8000/v1, llama.cpp at http://localhost:8080/v1), and OPTO_MODEL to "
    "the optimizer's model (OPTO_APP_MODEL for the app's, if it differs). To look without any "
    "model, add --dry-run."
)

DEFAULT_STORE = "opto_runs.sqlite"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opto-adapters",
        description="Trace-style prompt optimization for LangChain, LlamaIndex and Python apps.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "optimize",
        help="optimize the app of a recipe file",
        description="Optimize the app a recipe defines (see opto_adapters.train.recipe for the "
        "convention). The optimizer's LLM comes from OPTO_MODEL (or --model), OPENAI_BASE_URL "
        "and OPENAI_API_KEY.",
    )
    p.add_argument("recipe", type=Path, help="a Python file defining app/build_app, train, guide")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run the app once with the framework's fake model, print the traced graph and the "
        "exact optimizer prompt; calls no model",
    )
    p.add_argument("--model", help="the optimizer's model (default: $OPTO_MODEL)")
    p.add_argument("--epochs", type=int, help="passes over the training set (default 1)")
    p.add_argument("--batch-size", type=int, help="examples per optimizer step (default 4)")
    p.add_argument("--concurrency", type=int, help="app runs in parallel (default 4)")
    p.add_argument(
        "--executor", choices=("threads", "asyncio", "ray"),
        help="where the app runs: threads (default; its sync entry point), asyncio (its async "
        "entry points, --concurrency runs in flight on one event loop) or ray (Ray workers, each "
        "rebuilding the app from this recipe if it cannot be pickled; RAY_ADDRESS or a local cluster)",
    )
    p.add_argument("--candidates", type=int, help="candidates proposed per step (greedy search; default 1)")
    p.add_argument(
        "--search", choices=("greedy", "pareto"),
        help="greedy (default): one incumbent, kept if a candidate does not score worse on val; "
        "pareto: a pool of candidates, parents drawn from the Pareto front of per-example val scores",
    )
    p.add_argument("--proposals-per-step", type=int, help="pareto: children per step, from different parents (default 1)")
    p.add_argument("--merge", action="store_true", help="pareto: also merge candidates that changed different parameters")
    p.add_argument(
        "--objectives", metavar="LIST",
        help="pareto: what the front is kept over, 'score' (default) or 'score,tokens' (also the "
        "app's own tokens per run: a cheaper candidate as good as its parent is kept)",
    )
    p.add_argument(
        "--max-metric-calls", type=int,
        help="stop before this many app runs scored by the guide (train and val together)",
    )
    p.add_argument("--store", default=DEFAULT_STORE, help=f"SQLite file for the run (default {DEFAULT_STORE})")
    p.add_argument("--resume", action="store_true", help="continue the latest run in the store")
    p.add_argument("--name", default=None, help="a name for the run (default: the recipe's)")
    p.add_argument("--max-calls", type=int, help="stop after this many optimizer calls")
    p.add_argument("--max-tokens", type=int, help="stop after this many optimizer tokens")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds")
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--seed", type=int, help="seed of the minibatch order (default 0)")
    p.add_argument("--repeats", type=int, help="evaluations of each val example (scores averaged per example)")
    p.add_argument("--acceptance", choices=("mean", "bootstrap"), help="the acceptance rule: mean (default) or bootstrap (a paired interval must clear -tolerance)")
    p.add_argument("--tolerance", type=float, help="how much worse a candidate may score and be kept (default 0)")
    p.add_argument("--no-copy-guard", action="store_true", help="do not refuse candidates that copy a training example")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--traces", nargs="+", metavar="FILE",
        help="learn from runs recorded elsewhere (LangSmith runs JSONL, OTLP JSON, Phoenix spans) "
        "instead of running train; every candidate is validated live on the recipe's val "
        "(or its train examples when it has no val)",
    )
    p.add_argument("--feedback", nargs="+", metavar="FILE", help="feedback on the --traces runs (LangSmith feedback, annotations, a CSV/JSONL of id, score, comment)")
    p.set_defaults(handler=_optimize)

    p = sub.add_parser("runs", help="list the runs of a store", description="List the runs of a store.")
    p.add_argument("store", type=Path, help="the SQLite store")
    p.set_defaults(handler=_runs)

    p = sub.add_parser(
        "show",
        help="show a run, or one step of it",
        description="Show a run's scores and steps, or with --step one step's candidates and a "
        "traced run of its minibatch (--format dot prints only that graph in Graphviz DOT).",
    )
    p.add_argument("store", type=Path, help="the SQLite store")
    p.add_argument("--run", type=int, help="run id (default: the latest)")
    p.add_argument("--step", type=int, help="a step number (see the run's step table)")
    p.add_argument("--format", choices=("text", "dot"), default="text", help="text (default) or dot")
    p.set_defaults(handler=_show)

    p = sub.add_parser(
        "export",
        help="write a run's best values as JSON, a diff of your source and a patch set",
        description="Write parameter values in the format of opto_adapters.trace.save_parameters "
        "(load them with tracer.load(path) or module.load(path)) with -o; with --diff, a unified "
        "diff of the app's source (--source) writing each changed prompt where its original text "
        "is a string literal (the ones that are not, such as prompts built at run time, are listed "
        "with the reason); with --patch-set, every change from the baseline as JSON, for "
        "opto_adapters.apply_patch(app, path).",
    )
    p.add_argument("store", type=Path, help="the SQLite store")
    p.add_argument("-o", "--output", type=Path, help="the JSON file of values to write")
    p.add_argument("--run", type=int, help="run id (default: the latest)")
    p.add_argument(
        "--version", choices=("best", "final", "baseline"), default="best",
        help="which values: best (default, what training wrote back), final or baseline",
    )
    p.add_argument(
        "--pick", metavar="RULE",
        help="choose on score and the app's tokens among the versions scored on the whole val set "
        "(train without val): best, cheapest, or cheapest-within:D (the cheapest at most D below "
        "the best score, e.g. cheapest-within:0.01); replaces --version",
    )
    p.add_argument("--diff", type=Path, help="also write a unified diff of the app's source (git apply)")
    p.add_argument("--patch-set", type=Path, help="also write a JSON patch set (opto_adapters.apply_patch)")
    p.add_argument(
        "--source", type=Path, action="append", default=[],
        help="the recipe or a folder of the app's code to patch (repeatable; the project modules "
        "it imports are searched too)",
    )
    p.add_argument(
        "--root", type=Path,
        help="paths in the diff are relative to this folder (default: the sources' git work tree)",
    )
    p.set_defaults(handler=_export)

    p = sub.add_parser(
        "report", help="write an HTML report of a run",
        description="Write a self-contained HTML report of a run (no network needed to view it).",
    )
    p.add_argument("store", type=Path, help="the SQLite store")
    p.add_argument("-o", "--output", type=Path, required=True, help="the HTML file to write")
    p.add_argument("--run", type=int, help="run id (default: the latest)")
    p.set_defaults(handler=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose >= 2 or not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _is_user_error(exc: Exception) -> bool:
    from .llm import LLMError
    from .train.errors import TrainingError

    return isinstance(exc, (TrainingError, LLMError, ValueError, TypeError, OSError))


def _fmt(score: float | None) -> str:
    return "-" if score is None else f"{score:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- optimize ---------------------------------------------------------------------------------


def _optimize(args: argparse.Namespace) -> int:
    from .llm import LLM, Budget
    from .train import InfrastructureError, Trainer
    from .train.recipe import endpoint_configured, load_recipe

    recipe = load_recipe(args.recipe)
    if args.dry_run:
        return _dry_run(recipe)
    if not endpoint_configured():
        print(f"error: {NO_ENDPOINT}", file=sys.stderr)
        return 2
    options: dict[str, Any] = recipe.settings
    flags = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_concurrency": args.concurrency,
        "n_candidates": args.candidates,
        "time_limit": args.time_limit,
        "max_steps": args.max_steps,
        "seed": args.seed,
        "repeats": args.repeats,
        "acceptance": args.acceptance,
        "tolerance": args.tolerance,
        "search": args.search,
        "proposals_per_step": args.proposals_per_step,
        "max_metric_calls": args.max_metric_calls,
        "merge": True if args.merge else None,
        "objectives": args.objectives,
    }
    options.update({k: v for k, v in flags.items() if v is not None})
    if args.executor == "ray":  # the workers can rebuild the app from the recipe file
        from .train.ray_executor import RayExecutor

        ray_options = {k: options.pop(k) for k in ("ray_address", "ray_workers") if k in options}
        options["executor"] = RayExecutor(
            recipe=str(Path(args.recipe).resolve()), address=ray_options.get("ray_address"),
            workers=ray_options.get("ray_workers"),
        )
    elif args.executor is not None:
        options["executor"] = args.executor
    if args.no_copy_guard:
        options["guard_copies"] = None
    if args.no_progress:
        options["progress"] = False
    if args.max_calls is not None or args.max_tokens is not None:
        options["budget"] = Budget(max_calls=args.max_calls, max_tokens=args.max_tokens)
    app = recipe.build_app()
    train, val = recipe.load_train(), recipe.load_val()
    llm = LLM(model=args.model)
    parameters = recipe.parameters
    optimizer = None
    if "build_optimizer" in recipe.namespace:
        from .train.apps import as_tracer

        app = as_tracer(app, parameters=parameters)
        parameters = None
        optimizer = recipe.build_optimizer(app.parameters, llm)
    if args.feedback and not args.traces:
        print("error: --feedback goes with --traces (feedback on the imported runs)", file=sys.stderr)
        return 2
    print(f"optimizing {recipe.path} with {llm.model} at {llm.base_url}; storing in {args.store}")
    start = time.monotonic()
    common = {
        "guide": recipe.guide, "optimizer": optimizer, "llm": None if optimizer is not None else llm,
        "objective": recipe.objective, "parameters": parameters, "input_key": recipe.input_key,
        "store": str(args.store), "resume": args.resume, "run_name": args.name or recipe.name, **options,
    }
    if args.traces:
        from .train.from_traces import TraceTrainer

        trainer: Trainer = TraceTrainer(
            app, [str(t) for t in args.traces], val or train,
            feedback=[str(f) for f in args.feedback] if args.feedback else None, **common,
        )
        print(
            f"learning from {len(trainer.imported)} imported run(s) with feedback, validated live on "
            f"{len(trainer.val)} {'val' if val else 'train'} example(s)\n{trainer.import_report.summary()}"
        )
    else:
        trainer = Trainer(app, train, val, **common)
    failed: Exception | None = None
    with trainer:
        try:
            result = trainer.fit()
        except InfrastructureError as exc:  # an endpoint failed: stored as failed, resumable
            if trainer.run_id is None:
                raise
            failed, result = exc, trainer.result()
        except Exception:
            if trainer.run_id is not None:
                print(f"run {trainer.run_id} failed; what was done is stored in {args.store}", file=sys.stderr)
            raise
        errors = [c.error for c in trainer.store.candidates(result.run_id) if c.error and not c.reply]
        # where the prompts' literals are: `export --diff` patches this file without --source
        run_config = trainer.store.run(result.run_id).config
        trainer.store.update_run(result.run_id, config={**run_config, "recipe": str(Path(args.recipe).resolve())})
    print(f"run {result.run_id}: {result.status}" + (f" ({result.message})" if result.message else ""))
    print(
        _table(
            ["", "train", "val"],
            [[k, s.text("train"), s.text("val")] for k, s in (("baseline", result.baseline), ("best", result.best), ("final", result.final))],
        )
    )
    calls = result.usage.get("optimizer_calls", 0)
    answered = result.usage.get("optimizer_answered", calls)
    print(
        f"{result.steps_done} steps, {result.accepted} accepted; {calls} optimizer calls "
        f"({answered} answered, {calls - answered} failed), {result.usage.get('total_tokens', 0)} "
        f"tokens; {time.monotonic() - start:.1f} s"
    )
    resume = f"continue with: opto-adapters optimize {args.recipe} --store {args.store} --resume"
    if failed is not None:
        print(f"error: {failed}", file=sys.stderr)
        print(f"nothing that failed was scored; once the endpoint works, {resume}")
        return 1
    if calls and not answered:
        print(
            f"error: no optimizer call was answered, so nothing was learned (first error: "
            f"{errors[0] if errors else 'unknown'}); check the endpoint (OPENAI_BASE_URL, "
            "OPTO_MODEL, OPENAI_API_KEY), then start a new run",
            file=sys.stderr,
        )
        return 1
    if result.front:
        print(f"pareto front: {len(result.front)} candidate(s): " + ", ".join(
            f"v{f.version_id} ({_fmt(f.mean)}" + (f", {f.tokens:.0f} app tokens/run)" if f.tokens is not None else ")")
            for f in result.front
        ))
    if result.status in ("interrupted", "budget_exhausted", "time_limit", "max_steps", "max_metric_calls"):
        print(resume)
    print(f"report: opto-adapters report {args.store} -o report.html")
    return 130 if result.status == "interrupted" else 0


def _dry_run(recipe: Any) -> int:
    from .trace.render import short_repr
    from .train.recipe import dry_run

    shown = dry_run(recipe)
    print(f"dry run of {recipe.path}: first training example, fake model, no model called\n")
    print(f"example: {short_repr(shown.example, 200)}")
    if shown.run.error is not None:
        print(f"the app raised {type(shown.run.error).__name__}: {shown.run.error}")
    print(f"feedback: {shown.feedback}\n")
    print("traced graph:")
    print(shown.run.graph.to_text())
    print("the optimizer prompt that would be sent:")
    for message in shown.messages:
        print(f"----- {message['role']} -----")
        print(message["content"])
    return 0


def run_recipe(path: str | Path, argv: Sequence[str] | None = None) -> int:
    """``python recipe.py [--dry-run] [flags]``: the ``optimize`` command on that file."""
    args = list(sys.argv[1:] if argv is None else argv)
    return main(["optimize", str(path), *args])


# -- inspecting -------------------------------------------------------------------------------


def _open(path: Path) -> Any:
    from .train.store import Store

    return Store(path, readonly=True)


def _runs(args: argparse.Namespace) -> int:
    from .train import build_result

    with _open(args.store) as store:
        runs = store.runs()
        if not runs:
            print(f"{args.store} holds no runs")
            return 0
        rows = []
        for run in runs:
            r = build_result(store, run.id)
            rows.append([
                run.id, run.name or "-", run.status,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created_at)),
                r.steps_done, r.accepted,
                _fmt(r.baseline.val if r.baseline.val is not None else r.baseline.train),
                _fmt(r.best.val if r.best.val is not None else r.best.train),
            ])
        print(_table(["id", "name", "status", "created", "steps", "accepted", "baseline", "best"], rows))
        print("(scores: val if the run has val examples, else train)")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        run = store.run(args.run)
        if args.step is None and args.format == "text":
            _show_run(store, run)
            return 0
        steps = store.steps(run.id)
        if not steps:
            raise ValueError(f"run {run.id} has no steps yet")
        step = store.step(run.id, args.step) if args.step is not None else steps[-1]
        if step is None:
            raise ValueError(f"run {run.id} has no step {args.step}; its steps are 1 to {steps[-1].step}")
        dot, text, where = _step_graph(store, run.id, step)
        if args.format == "dot":
            if dot is None:
                raise ValueError(f"no graph is stored for step {step.step} of run {run.id}")
            print(dot, end="")
            return 0
        _show_step(store, run.id, step)
        if text is not None:
            print(f"\ntraced run ({where}):\n{text}", end="")
    return 0


def _show_run(store: Any, run: Any) -> None:
    from .train import build_result

    r = build_result(store, run.id)
    c = run.config
    print(f"run {run.id} {run.name or ''}".rstrip() + f": {run.status}" + (f" ({run.message})" if run.message else ""))
    print(f"optimizer {c.get('optimizer')} ({c.get('model')}); {c.get('train_size')} train, {c.get('val_size')} val; "
          f"epochs {c.get('epochs')}, batch size {c.get('batch_size')}")
    print()
    print(_table(["", "train", "val"], [[k, s.text("train"), s.text("val")] for k, s in (("baseline", r.baseline), ("best", r.best), ("final", r.final))]))
    print()
    if r.history:
        scored: dict[int, list[str]] = {}  # each candidate's score, with its interval if judged on one
        for cand in store.candidates(run.id):
            scored.setdefault(cand.step, []).append(_fmt(cand.score) + _interval(cand))
        print(_table(
            ["step", "epoch", "train", "gate", "candidates", "decision", "reason"],
            [[h.step, h.epoch, _fmt(h.train_score), _fmt(h.gate_score), " ".join(scored.get(h.step, [])) or "-", h.status, h.reason]
             for h in r.history],
        ))
    else:
        print("no steps yet")
    app = [
        f"{k} {_fmt_tokens(u.tokens)} tokens, {u.model_calls or 0:.2f} calls, {u.latency or 0:.3f} s"
        for k, u in r.app_usage.items() if u.recorded
    ]
    if app:
        print()
        print("app model usage per evaluation: " + "; ".join(app))
    print()
    print("best values:")
    for name, value in r.best_values.items():
        print(f"  {name} = {value!r}")


def _show_step(store: Any, run_id: int, step: Any) -> None:
    print(f"step {step.step} (epoch {step.epoch}, examples {step.indices}): {step.status}" + (f" — {step.reason}" if step.reason else ""))
    print(f"train minibatch score {_fmt(step.train_score)}, gate score before {_fmt(step.gate_score)}, val after {_fmt(step.val_score)}")
    before = store.version_values(step.version_id)
    for c in store.candidates(run_id, step.step):
        print(f"\ncandidate {c.k + 1}: {c.status} — score {_fmt(c.score)}{_interval(c)}" + (f" — {c.reason}" if c.reason else ""))
        if c.reasoning:
            print(f"  reasoning: {c.reasoning}")
        for name, value in c.values.items():
            print(f"  {name}: {before.get(name)!r}\n    -> {value!r}")
        for name, reason in c.invalid.items():
            print(f"  refused {name}: {reason}")
        if c.error:
            print(f"  error: {c.error}")
        if c.reply:
            print("  raw reply:\n" + textwrap.indent(_cut(c.reply, _REPLY_SHOWN), "    "))


_REPLY_SHOWN = 4000


def _cut(text: str, budget: int) -> str:
    if len(text) <= budget:
        return text
    return text[:budget] + f"\n… ({len(text) - budget} more characters; the store holds all of it)"


def _interval(c: Any) -> str:
    """`` [low, high]``: the interval a candidate was judged on (noise-aware acceptance)."""
    return "" if c.ci_low is None or c.ci_high is None else f" [{c.ci_low:+.3g}, {c.ci_high:+.3g}]"


def _fmt_tokens(tokens: float | None) -> str:
    return "?" if tokens is None else f"{tokens:.1f}"


def _step_graph(store: Any, run_id: int, step: Any) -> tuple[str | None, str | None, str]:
    """(DOT, text, where) of a traced run of the step's minibatch, stored or rebuilt."""
    from .train.graphs import graph_from_json

    stored = {e.index: e for e in store.evaluations(run_id, version_id=step.version_id, split="train")}
    for i in step.indices:
        e = stored.get(i)
        if e is None:
            continue
        where = f"train example {i}, score {_fmt(e.score)}"
        dot, text = store.graph_views(e.id)
        if dot is not None:
            return dot, text, where
        data = store.graph(e.id)
        if data is not None:
            graph = graph_from_json(data, {})
            return graph.to_dot(), graph.to_text(), where
    return None, None, ""


def _export(args: argparse.Namespace) -> int:
    from .trace import Parameter, save_parameters

    if args.output is None and args.diff is None and args.patch_set is None:
        raise ValueError("nothing to write: give -o params.json, --diff FILE.patch and/or --patch-set FILE.json")
    with _open(args.store) as store:
        run = store.run(args.run)
        what = args.version
        if args.pick is not None:
            from .train.objectives import parse_rule, pick, points_from_store

            parse_rule(args.pick)  # a bad rule is told before anything is read
            chosen = pick(points_from_store(store, run.id), args.pick)
            version: int | None = chosen.key
            tokens = "tokens not reported" if chosen.tokens is None else f"{chosen.tokens:.1f} app tokens per evaluation"
            what = f"picked ({args.pick}: version {version}, score {chosen.score:.4g}, {tokens})"
        else:
            version = {
                "best": run.best_version_id or run.current_version_id,
                "final": run.current_version_id,
                "baseline": run.baseline_version_id,
            }[args.version]
        if version is None:
            raise ValueError(f"run {run.id} has no {args.version} values yet")
        values = store.version_values(version)
        baseline = store.version_values(run.baseline_version_id) if run.baseline_version_id is not None else {}
    if args.output is not None:
        kinds = {p["name"]: p.get("kind", "text") for p in run.config.get("parameters", [])}
        params = [Parameter(value, name=name, kind=kinds.get(name, "text")) for name, value in values.items()]
        save_parameters(params, args.output)
        print(f"wrote {len(params)} {what} parameter value(s) of run {run.id} to {args.output}")
    if args.diff is not None or args.patch_set is not None:
        _export_patches(args, run, baseline, values, args.version if args.pick is None else f"picked ({args.pick})")
    return 0


def _export_patches(
    args: argparse.Namespace, run: Any, baseline: dict[str, Any], values: dict[str, Any], what: str
) -> None:
    """The diff and patch set from the run's baseline to the chosen values."""
    from .patches import changes_between, export_patches

    changes = changes_between(baseline, values, run.config.get("parameters", []))
    sources = list(args.source) or ([Path(run.config["recipe"])] if run.config.get("recipe") else [])
    if args.diff is not None and not sources:
        raise ValueError(
            "--diff needs the app's source: add --source RECIPE.py (or the folder of the app's code)"
        )
    origin = {"store": str(args.store), "run": run.id, "from": "baseline", "to": what}
    result = export_patches(
        changes, sources=sources, root=args.root, diff=args.diff, patch_set=args.patch_set, origin=origin
    )
    if not changes:
        print(f"no parameter of run {run.id} differs between baseline and {what}: the patches are empty")
    for c in result.patched:
        print(f"patched {c.parameter} at {c.site}")
    for c in result.unpatchable:
        print(f"not patched in source: {c.parameter}: {c.unpatchable}")
    if args.diff is not None:
        print(
            f"wrote the source diff ({len(result.patched)} of {len(changes)} change(s)) to {args.diff}; "
            f"its paths are relative to {result.root}: apply it there with git apply"
        )
    if args.patch_set is not None:
        print(f"wrote the patch set ({len(changes)} change(s)) to {args.patch_set}")


def _report(args: argparse.Namespace) -> int:
    from .train.report import write_report

    with _open(args.store) as store:
        run = store.run(args.run)
        path = write_report(store, args.output, run.id)
    print(f"wrote the report of run {run.id} to {path}")
    return 0


def run() -> None:
    """The ``opto-adapters`` console script: ``main``, then exit. App runs still waiting on
    their model endpoint (after Ctrl-C or a time limit) do not hold the process: everything
    is stored by then, so it exits without joining their threads."""
    code = main()
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck:
        print(
            f"exiting without waiting for {len(stuck)} app run(s) still waiting on their model endpoint",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
