"""Search benchmark, simulated: every engine on the same rollout budgets, with GEPA's engine.

Run: python benchmarks/bench_search.py [--quick] [--seeds N] [--budgets 100,200,400,800]
     [--only pareto,gepa] [--write]   (8-15 minutes on 2 busy cores, --quick: seconds)

The world (benchmarks/search_world.py) is an app with two trainable prompts whose score on
each example depends on which instructions each prompt holds, with the noise of a sampled
model; its best attainable score is known exactly. Every engine gets the same seeded
stand-in for the optimizer's LLM, the same data and the same budget of metric calls (app
runs scored by the guide, training and validation together): today's greedy search, the
Pareto search (with and without merge, with and without noise-aware repeats), an OPRO-style
graph-free proposer, and the `gepa` package's own engine (its adapter protocol: our evaluate
and reflective dataset, the stand-in as its custom proposer). What an engine returns is
scored on held-out test examples by its exact expected score (no rollouts spent there).

Printed: the mean final test score with a 95% interval over seeds per engine and budget, the
paired difference to GEPA's engine, and the rollouts each engine needed (in its largest
budget run) until the candidate it would return scored 90% of the attainable score (and half
way to it). Engines that the installed trainer cannot run are listed as "not available in
this build" (the options are read from ``TrainConfig``'s fields).

The budget: ``max_metric_calls`` when the trainer has it; the guide also counts its calls and
refuses the one past the budget (``BudgetExceeded``: the trainer stops cleanly and returns the
best values it validated), so a trainer without the option stops there too, and one that
overshoots it is reported. GEPA's engine gets the budget as its ``max_metric_calls`` and an
adapter that refuses an evaluation that would pass it.

What each engine tells the stand-in is its own protocol's: our trainer gives the feedback of
the runs whose trace reached each prompt and remembers rejected candidates (``remember``);
GEPA gives the reflective dataset of the components it picks (one at a time, round robin, by
default; "all components" is shown too) and no memory; OPRO-style gives values and scores only.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from search_world import (  # noqa: E402
    SEED_PROMPTS,
    OproStandIn,
    StandIn,
    StandInOptimizer,
    World,
    instructions_in,
)

from opto_adapters.llm import BudgetExceeded  # noqa: E402
from opto_adapters.train import TrainConfig, optimize  # noqa: E402

BUDGETS = (100, 200, 400, 800)
SEEDS = 60  # at 20 the 95% intervals (about ±0.03) could not tell the searches apart at 100 calls
REPEATS = 2  # evaluations of each validation example with noise-aware acceptance
BATCH = 3  # minibatch size, the same for every engine (GEPA's default)
TARGET = 0.9  # "reach 90% of the attainable score"
NOT_AVAILABLE = "not available in this build"


# -- what the installed trainer supports -----------------------------------------------------


def trainer_supports() -> dict[str, bool]:
    """Which options of the issue-13 API the installed ``TrainConfig`` has."""
    names = TrainConfig.names()
    pareto = False
    if "search" in names:
        try:
            TrainConfig(search="pareto")
            pareto = True
        except (TypeError, ValueError):
            pareto = False
    return {
        "search": "search" in names,
        "pareto": pareto,
        "merge": "merge" in names,
        "repeats": "repeats" in names,
        "max_metric_calls": "max_metric_calls" in names,
    }


def gepa_version() -> str | None:
    try:
        from importlib import metadata

        import gepa  # noqa: F401

        return metadata.version("gepa")
    except Exception:
        return None


# -- the engines -----------------------------------------------------------------------------


class Refused(Exception):
    """An evaluation the budget did not allow."""


@dataclass
class Outcome:
    values: dict[str, str]
    rollouts: int
    refused: bool = False  # the engine tried to spend past the budget (and was stopped)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Engine:
    name: str
    run: Callable[[World, int, int], Outcome] | None  # (world, seed, budget) -> outcome
    missing: str = ""  # why it cannot run here


def counted_guide(world: World, budget: int) -> tuple[Callable[[Any, Any], Any], dict[str, int]]:
    """The world's guide, refusing the call past ``budget`` (it raises ``BudgetExceeded``, so
    the trainer stops cleanly and keeps the best values it validated)."""
    state = {"used": 0, "refused": 0}

    def guide(example: Any, output: Any) -> Any:
        if state["used"] >= budget:
            state["refused"] += 1
            raise BudgetExceeded(
                f"the benchmark's budget of {budget} metric calls is spent",
                calls_used=state["used"], tokens_used=0, max_calls=budget, max_tokens=None,
            )
        state["used"] += 1
        return world.guide(example, output)

    return guide, state


def ours(search: str | None, *, merge: bool = False, repeats: int = 1, opro: bool = False, **extra: Any):
    supports = trainer_supports()

    def run(world: World, seed: int, budget: int) -> Outcome:
        app, params = world.make_app()
        stand_in = StandIn(seed)
        optimizer = OproStandIn(params, stand_in) if opro else StandInOptimizer(params, stand_in)
        guide, used = counted_guide(world, budget)
        options: dict[str, Any] = {}
        if search is not None and supports["search"]:
            options["search"] = search
        if merge:
            options["merge"] = True
        if repeats > 1:
            options["repeats"] = repeats
        if supports["max_metric_calls"]:
            options["max_metric_calls"] = budget
        options.update(extra)
        result = optimize(
            app, world.dataset("train"), world.dataset("val"), guide=guide, optimizer=optimizer,
            parameters=params, seed=seed, batch_size=BATCH, epochs=10_000, max_steps=budget, progress=False,
            max_concurrency=1, **options,
        )
        notes = [] if result.status in ("completed", "budget_exhausted", "max_metric_calls") else [result.status]
        values = {**SEED_PROMPTS, **result.best_values}
        return Outcome(values, used["used"], bool(used["refused"]) and supports["max_metric_calls"], notes)

    return run


def needs(*options: str) -> str:
    supports = trainer_supports()
    missing = [o for o in options if not supports[o]]
    return f"{NOT_AVAILABLE} (the trainer has no {', '.join(missing)})" if missing else ""


class _Silent:
    def log(self, message: str) -> None:
        pass


class WorldAdapter:
    """The world behind GEPA's adapter protocol (``evaluate``, ``make_reflective_dataset``);
    a call that would spend past the budget raises ``Refused``."""

    propose_new_texts = None  # GEPA asks for it: None means "use custom_candidate_proposer"

    def __init__(self, world: World, budget: int) -> None:
        self.world, self.budget = world, budget
        self.used = 0
        self.refused = False

    def evaluate(self, batch: list[dict[str, Any]], candidate: dict[str, str], capture_traces: bool = False):
        from gepa.core.adapter import EvaluationBatch

        if self.used + len(batch) > self.budget:
            self.refused = True
            raise Refused(f"{len(batch)} more metric calls would pass the budget of {self.budget}")
        self.used += len(batch)
        outputs, scores, traces = [], [], []
        for example in batch:
            out = self.world.run(example["id"], candidate["plan"], candidate["answer"])
            fb = self.world.feedback(out)
            self.world.record(out, example["split"], float(fb.score))
            outputs.append(str(out))
            scores.append(float(fb.score))
            traces.append({
                "question": example["input"],
                "plan_followed": sorted(instructions_in(candidate["plan"])),
                "answer": str(out),
                "feedback": fb.text,
            })
        return EvaluationBatch(outputs=outputs, scores=scores, trajectories=traces if capture_traces else None)

    def make_reflective_dataset(self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]):
        records = [
            {
                "Inputs": {"question": t["question"]},
                "Generated Outputs": {"draft": ", ".join(t["plan_followed"]), "answer": t["answer"]},
                "Feedback": t["feedback"],
            }
            for t in eval_batch.trajectories or []
        ]
        return {c: records for c in components_to_update}


def gepa_engine(*, merge: bool, module_selector: str = "round_robin"):
    def run(world: World, seed: int, budget: int) -> Outcome:
        import gepa

        adapter = WorldAdapter(world, budget)
        stand_in = StandIn(seed)
        errors: list[BaseException] = []

        class Errors:
            def on_error(self, event: Any) -> None:
                if not isinstance(event["exception"], Refused):
                    errors.append(event["exception"])

        result = gepa.optimize(
            seed_candidate=dict(SEED_PROMPTS), trainset=world.dataset("train"),
            valset=world.dataset("val"), adapter=adapter,
            custom_candidate_proposer=stand_in.gepa_proposer, reflection_minibatch_size=BATCH,
            module_selector=module_selector, use_merge=merge, seed=seed, logger=_Silent(),
            stop_callbacks=[lambda state: adapter.used >= budget or adapter.refused],
            raise_on_exception=False, callbacks=[Errors()], display_progress_bar=False,
        )
        if errors:
            raise RuntimeError(f"GEPA's engine failed: {errors[0]!r}") from errors[0]
        if stand_in.calls == 0 and adapter.used > len(world.splits["val"]) + 2 * BATCH:
            raise RuntimeError("GEPA's engine never called the stand-in proposer: check the adapter")
        return Outcome(dict(result.best_candidate), adapter.used)  # type: ignore[arg-type]

    return run


def engines() -> list[Engine]:
    have_gepa = gepa_version() is not None
    no_gepa = f"{NOT_AVAILABLE} (pip install gepa; the bench extra of pyproject.toml)"
    table = [
        Engine("greedy (today's search)", ours("greedy")),
        Engine("greedy + repeats", ours("greedy", repeats=REPEATS), needs("repeats")),
        Engine("pareto", ours("pareto"), needs("pareto")),
        Engine("pareto + merge", ours("pareto", merge=True), needs("pareto", "merge")),
        Engine("pareto + repeats", ours("pareto", repeats=REPEATS), needs("pareto", "repeats")),
        Engine("pareto + merge + repeats", ours("pareto", merge=True, repeats=REPEATS),
               needs("pareto", "merge", "repeats")),
        Engine("greedy + repeats + bootstrap", ours("greedy", repeats=REPEATS, acceptance="bootstrap"), needs("repeats")),
        Engine("pareto + repeats + bootstrap", ours("pareto", repeats=REPEATS, acceptance="bootstrap"),
               needs("pareto", "repeats")),
        Engine("OPRO-style, graph-free (greedy)", ours("greedy", opro=True)),
        Engine("gepa (round-robin component)", gepa_engine(merge=False), "" if have_gepa else no_gepa),
        Engine("gepa + merge", gepa_engine(merge=True), "" if have_gepa else no_gepa),
        Engine("gepa, all components", gepa_engine(merge=False, module_selector="all"),
               "" if have_gepa else no_gepa),
    ]
    return [e if not e.missing else Engine(e.name, None, e.missing) for e in table]


# -- statistics ------------------------------------------------------------------------------


def t_quantile(df: int, p: float = 0.975) -> float:
    """Student's t quantile (Cornish-Fisher expansion; within 0.01 for df >= 3)."""
    z = statistics.NormalDist().inv_cdf(p)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(xs: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% interval."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def rollouts_to_target(world: World, target: float) -> int | None:
    """The first rollout after which the candidate the engine would return (the fully validated
    one with the best mean validation score so far) scores ``target`` on test, if ever."""
    n_val = len(world.splits["val"])
    seen: dict[Any, dict[int, list[float]]] = {}
    true: dict[Any, float] = {}
    for t, prompts, split, example_id, score in world.log:
        if split != "val":
            continue
        seen.setdefault(prompts, {}).setdefault(example_id, []).append(score)
        if len(seen[prompts]) < n_val:
            continue
        top = max(
            (k for k, per in seen.items() if len(per) == n_val),
            key=lambda k: statistics.fmean(statistics.fmean(v) for v in seen[k].values()),
        )
        if top not in true:
            true[top] = statistics.fmean(world.probability(e, *top) for e in world.splits["test"])
        if true[top] >= target:
            return t
    return None


# -- the run ---------------------------------------------------------------------------------


def measure(seeds: int, budgets: tuple[int, ...], only: tuple[str, ...] = ()) -> dict[str, Any]:
    rows: dict[str, dict[int, list[float]]] = {}
    spent: dict[str, dict[int, list[int]]] = {}
    reach: dict[str, list[tuple[int | None, int | None]]] = {}
    over: dict[str, int] = {}
    notes: dict[str, str] = {}
    seconds: dict[str, float] = {}
    oracle, baseline = [], []
    for s in range(seeds):
        w = World(s)
        oracle.append(w.oracle()[0])
        baseline.append(w.expected_score(SEED_PROMPTS))
    for engine in engines():
        if only and not any(word in engine.name for word in only):
            notes[engine.name] = "not run (--only)"
            continue
        if engine.run is None:
            notes[engine.name] = engine.missing
            continue
        rows[engine.name], spent[engine.name], reach[engine.name] = {}, {}, []
        over[engine.name] = 0
        started = time.monotonic()
        for budget in budgets:
            scores, used = [], []
            for s in range(seeds):
                world = World(s)
                out = engine.run(world, s, budget)
                scores.append(world.expected_score(out.values))
                used.append(out.rollouts)
                over[engine.name] += out.refused
                if budget == max(budgets):
                    halfway = baseline[s] + 0.5 * (oracle[s] - baseline[s])
                    reach[engine.name].append(
                        (rollouts_to_target(world, TARGET * oracle[s]), rollouts_to_target(world, halfway))
                    )
            rows[engine.name][budget] = scores
            spent[engine.name][budget] = used
        seconds[engine.name] = time.monotonic() - started
    return {"rows": rows, "spent": spent, "reach": reach, "over": over, "notes": notes,
            "oracle": oracle, "baseline": baseline, "seconds": seconds}


def fmt(m: float, h: float) -> str:
    return f"{m:.3f} ± {h:.3f}"


def report(data: dict[str, Any], seeds: int, budgets: tuple[int, ...], seconds: float) -> str:
    rows, spent, reach = data["rows"], data["spent"], data["reach"]
    o, b = interval(data["oracle"]), interval(data["baseline"])
    supports = trainer_supports()
    lines = [
        "## Search engines on a simulated world with known truth (benchmarks/search_world.py)",
        "",
        f"{seeds} seeds; per seed 30 train, 20 validation and 120 test examples of six kinds, two "
        "trainable prompts, twelve instructions (each helps some kinds and hurts others, and "
        "only in its own prompt), a right answer drawn with its true probability (noise); the "
        "same seeded stand-in proposer for every engine (minibatches of 3). The score is the "
        "exact expected test score of the values the engine returns.",
        "",
        f"Seed prompts score {fmt(*b)}; the best attainable (oracle) {fmt(*o)}; target for "
        f"'rollouts to 90%': {TARGET:.0%} of the oracle, per seed.  ",
        "Trainer options present in this build: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in supports.items())
        + (f"; gepa {gepa_version()}" if gepa_version() else "; gepa not installed")
        + f"; {seconds:.0f} s.",
        "",
        "Mean final test score, 95% interval over seeds, by budget of metric calls:",
        "",
        "| engine | " + " | ".join(f"{x} calls" for x in budgets) + " | rollouts used (largest) | seconds (all runs) |",
        "|---|" + "---:|" * len(budgets) + "---:|---:|",
    ]
    for name in [e.name for e in engines()]:
        if name in data["notes"]:
            lines.append(f"| {name} | " + " | ".join(data["notes"][name] if i == 0 else "" for i in range(len(budgets))) + " | | |")
            continue
        cells = [fmt(*interval(rows[name][x])) for x in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.fmean(spent[name][max(budgets)]):.0f} | "
                     f"{data['seconds'][name]:.1f} |")
    gepa_name = "gepa (round-robin component)"
    if gepa_name in rows:
        lines += [
            "",
            f"Paired difference to {gepa_name} (same seeds), mean and 95% interval:",
            "",
            "| engine | " + " | ".join(f"{x} calls" for x in budgets) + " |",
            "|---|" + "---:|" * len(budgets),
        ]
        for name in rows:
            if name == gepa_name:
                continue
            cells = [
                fmt(*interval([a - g for a, g in zip(rows[name][x], rows[gepa_name][x], strict=True)]))
                for x in budgets
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    top = max(budgets)
    lines += [
        "",
        f"Rollouts until the candidate the engine would return (the validated one with the best "
        f"mean validation score so far) scored {TARGET:.0%} of the attainable score, and half way "
        f"from the seed prompts' score to it, in the {top}-call run; median over seeds, a seed "
        "that never got there counted as more than the budget:",
        "",
        f"| engine | {TARGET:.0%} of attainable: seeds | median rollouts | half way: seeds | median rollouts |",
        "|---|---:|---:|---:|---:|",
    ]

    def median_text(values: list[int | None]) -> str:
        med = statistics.median(sorted(v if v is not None else math.inf for v in values))
        return f"> {top}" if med == math.inf else f"{med:.0f}"

    for name, pairs in reach.items():
        target, half = [p[0] for p in pairs], [p[1] for p in pairs]
        lines.append(
            f"| {name} | {sum(v is not None for v in target)} / {len(pairs)} | {median_text(target)} | "
            f"{sum(v is not None for v in half)} / {len(pairs)} | {median_text(half)} |"
        )
    refused = {n: k for n, k in data["over"].items() if k}
    if refused:
        lines += ["", "Runs that tried to spend past max_metric_calls (stopped by the benchmark): "
                  + ", ".join(f"{n} {k}" for n, k in refused.items())]
    return "\n".join(lines) + "\n"


def write_section(text: str, seconds: float) -> Path:
    """Put the output into RESULTS.md as run_all does: a section of its own, replaced if there."""
    target = HERE / "RESULTS.md"
    old = target.read_text(encoding="utf-8") if target.exists() else "# Benchmark results\n"
    section = f"## bench_search ({seconds:.0f} s)\n\n```\n{text.rstrip()}\n```\n"
    start = old.find("\n## bench_search (")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        end = old.find("\n## ", start + 1)
        new = old[: start + 1] + section + (old[end:] if end > 0 else "")
    target.write_text(new, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, budgets 100 and 200: a smoke run")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--budgets", default=None, help="comma-separated metric-call budgets")
    parser.add_argument("--write", action="store_true", help="also write the section into benchmarks/RESULTS.md")
    parser.add_argument("--only", default="", help="comma-separated words: run only the engines whose name has one")
    args = parser.parse_args(argv)
    seeds = args.seeds or (3 if args.quick else SEEDS)
    budgets = tuple(int(x) for x in args.budgets.split(",")) if args.budgets else ((100, 200) if args.quick else BUDGETS)
    start = time.monotonic()
    # every run ends at its budget: the trainer's "training stopped" warning is expected here
    log = logging.getLogger("opto_adapters.train")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        data = measure(seeds, budgets, tuple(w for w in args.only.split(",") if w))
    finally:
        log.setLevel(level)
    seconds = time.monotonic() - start
    text = report(data, seeds, budgets, seconds)
    print(text)
    if args.write:
        print(f"wrote {write_section(text, seconds)}")


if __name__ == "__main__":
    main()
