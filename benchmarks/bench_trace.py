"""Core benchmark, side by side with trace-opt in one process: a traced call, backward on a
chain and on a fan-in of N operations, and the OptoPrime prompt rendered for those graphs.

Run: python benchmarks/bench_trace.py
Both libraries run the same program (same function names, docstrings and values); each
repetition runs both, in the order flipped every repetition; tables give min and median.
Without trace-opt only our side runs (install: see benchmarks/peer.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer  # noqa: E402

from opto_adapters import trace as ours  # noqa: E402
from opto_adapters.optimizers import OptoPrime  # noqa: E402

CALLS = 20_000
SHAPES = [
    ("chain", 1_000),
    ("chain", 4_000),
    ("chain", 10_000),
    ("fan-in", 1_000),
    ("fan-in", 4_000),
    ("fan-in", 10_000),
]
# trace-opt's backward grows quadratically and its prompt for a fan-in faster still: the
# shapes it is not run on (each would take minutes per repetition on a 2-core machine).
PEER_BACKWARD_SKIP = {("fan-in", 10_000)}
PEER_PROMPT_SKIP = {("fan-in", 4_000), ("fan-in", 10_000)}


def repeats(n: int) -> int:
    return 5 if n <= 1_000 else 3


# ----------------------------------------------------------------------------- programs
def add(a, b):
    """Add a and b."""
    return a + b


def total(*values):
    """Sum the values."""
    return sum(values)


class Side:
    """One library's way to build, backward and render the same programs."""

    name = ""

    def __init__(self) -> None:
        self.add = self.bundle(add)
        self.total = self.bundle(total)

    def bundle(self, fn: Callable[..., Any]) -> Any:
        raise NotImplementedError

    def node(self, value: Any, name: str, trainable: bool = False) -> Any:
        raise NotImplementedError

    def chain(self, n: int) -> tuple[list[Any], Any]:
        p = self.node(0, "p", trainable=True)
        out = p
        for _ in range(n):
            out = self.add(out, 1)
        return [p], out

    def fan_in(self, n: int) -> tuple[list[Any], Any]:
        params = [self.node(i, f"p{i}", trainable=True) for i in range(n)]
        return params, self.total(*[self.add(p, 1) for p in params])

    def backward(self, params: list[Any], out: Any) -> None:
        raise NotImplementedError

    def prompt(self, params: list[Any]) -> str:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class Ours(Side):
    name = "opto_adapters"

    def bundle(self, fn):
        return ours.bundle()(fn)

    def node(self, value, name, trainable=False):
        return ours.node(value, name=name, trainable=trainable)

    def backward(self, params, out):
        ours.zero_feedback(params)
        ours.backward(out, "make it bigger")

    def prompt(self, params):
        messages = OptoPrime(params, llm=None).messages()
        return "\n".join(m["content"] for m in messages)


class Theirs(Side):
    name = "trace-opt"

    def __init__(self) -> None:
        import opto.trace

        self.trace = opto.trace
        self.optimizers = peer.load_optimizers()
        super().__init__()

    def bundle(self, fn):
        return self.trace.bundle()(fn)

    def node(self, value, name, trainable=False):
        return self.trace.node(value, name=name, trainable=trainable)

    def backward(self, params, out):
        for p in params:
            p.zero_feedback()
        out.backward("make it bigger", retain_graph=True)  # repeatable on the same graph

    def prompt(self, params):
        optimizer = self.optimizers.OptoPrime(params, llm=peer.StubPeerLLM(lambda m: "{}"))
        system, user = optimizer.construct_prompt(optimizer.summarize())
        return system + "\n" + user

    def reset(self):
        peer.clear_graph()


# ----------------------------------------------------------------------------- measures
def call_cost(side: Side) -> float:
    """Seconds per traced call of a two-argument function on node inputs."""
    x = side.node(1, "x", trainable=True)
    y = side.node(2, "y")
    traced = side.add

    def run() -> None:
        for _ in range(CALLS):
            traced(x, y)

    seconds = peer.timed(run) / CALLS
    side.reset()
    return seconds


def plain_call() -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        add(1, 2)
    return (time.perf_counter() - start) / CALLS


def measure_shape(sides: list[Side], shape: str, n: int) -> tuple:
    """Backward and prompt times (and prompt characters) for one graph shape on every side."""
    peer_on = len(sides) == 2
    reps = repeats(n)
    graphs: dict[str, tuple[list[Any], Any]] = {}
    for s in sides:
        if not (s.name == "trace-opt" and (shape, n) in PEER_BACKWARD_SKIP):
            graphs[s.name] = s.chain(n) if shape == "chain" else s.fan_in(n)
    live = [s for s in sides if s.name in graphs]

    def backward_fn(side: Side) -> Callable[[], float]:
        return lambda: peer.timed(lambda: side.backward(*graphs[side.name]))

    tb = peer.alternate({s.name: backward_fn(s) for s in live}, reps)
    texts: dict[str, str] = {}

    def prompt_fn(side: Side) -> Callable[[], float]:
        def run() -> float:  # the feedback of the last backward above is still there
            start = time.perf_counter()
            texts[side.name] = side.prompt(graphs[side.name][0])
            return time.perf_counter() - start

        return run

    prompt_sides = [
        s for s in live if not (s.name == "trace-opt" and (shape, n) in PEER_PROMPT_SKIP)
    ]
    tp = peer.alternate(
        {s.name: prompt_fn(s) for s in prompt_sides}, 3 if peer_on and shape == "fan-in" else reps
    )
    for s in sides:
        s.reset()
    return shape, n, reps, tb, tp, {k: len(v) for k, v in texts.items()}


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def main() -> None:
    sys.setrecursionlimit(100_000)  # trace-opt's bundle and our benchmark code recurse
    sides: list[Side] = [Ours()]
    if peer.available():
        sides.append(Theirs())
        print(f"## opto_adapters.trace core vs trace-opt {peer.version()} (same process)\n")
    else:
        print("## opto_adapters.trace core\n")
        print(peer.missing_note() + "\n")
    peer_on = len(sides) == 2

    # traced call ------------------------------------------------------------------------
    calls = peer.alternate({s.name: (lambda s=s: call_cost(s)) for s in sides}, 5)
    plain = min(plain_call() for _ in range(5))
    print(
        f"traced call: a bundle'd two-argument function called on two nodes, {CALLS:,} calls "
        f"per repetition, 5 repetitions; plain call {plain * 1e6:.3f} us\n"
    )
    print("| traced call | min us | median us |")
    print("|---|---:|---:|")
    for s in sides:
        lo, med = peer.stats(calls[s.name])
        print(f"| {s.name} | {lo * 1e6:.2f} | {med * 1e6:.2f} |")
    if peer_on:
        ratio = min(calls["trace-opt"]) / min(calls["opto_adapters"])
        print(f"| trace-opt / opto_adapters (min) | {ratio:.0f}x | |")

    # backward and prompt ----------------------------------------------------------------
    rows = [measure_shape(sides, shape, n) for shape, n in SHAPES]

    ops = "operations"
    print(
        f"\nbackward: feedback given to the output of a chain of N `add` {ops} (p -> add -> "
        f"add ...) or a fan-in (N parameters, each through `add`, into one `total(*values)`); "
        f"min / median of 5 repetitions for N <= 1,000, 3 above\n"
    )
    print(
        "| backward | N | opto_adapters min | median | us/op | trace-opt min | median | trace-opt / ours (min) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape, n, _reps, tb, _tp, _chars in rows:
        o_lo, o_med = peer.stats(tb["opto_adapters"])
        cells = [f"{o_lo * 1e3:.2f} ms", f"{o_med * 1e3:.2f} ms", f"{o_lo / n * 1e6:.2f}"]
        if "trace-opt" in tb:
            t_lo, t_med = peer.stats(tb["trace-opt"])
            cells += [fmt_time(t_lo), fmt_time(t_med), peer.ratio(t_lo, o_lo)]
        else:
            cells += ["not run" if peer_on else "n/a", "", ""]
        print(f"| {shape} | {n:,} | " + " | ".join(cells) + " |")

    print(
        "\nOptoPrime prompt for the same graphs after one backward: system + user message "
        "(ours: `OptoPrime(params).messages()`; trace-opt: `construct_prompt(summarize())`), "
        "characters and time to build it; repetitions as above (3 for fan-ins)\n"
    )
    print(
        "| prompt | N | opto_adapters chars | trace-opt chars | ours / trace-opt chars | opto_adapters min | median | trace-opt min | median | trace-opt / ours (min) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, n, _reps, _tb, tp, chars in rows:
        o_lo, o_med = peer.stats(tp["opto_adapters"])
        ours_chars = chars["opto_adapters"]
        if "trace-opt" in tp:
            t_lo, t_med = peer.stats(tp["trace-opt"])
            theirs_chars = chars["trace-opt"]
            cells = [
                f"{ours_chars:,}",
                f"{theirs_chars:,}",
                f"{ours_chars / theirs_chars:.2f}",
                fmt_time(o_lo),
                fmt_time(o_med),
                fmt_time(t_lo),
                fmt_time(t_med),
                peer.ratio(t_lo, o_lo),
            ]
        else:
            skipped = "not run" if peer_on else "n/a"
            cells = [
                f"{ours_chars:,}",
                skipped,
                "",
                fmt_time(o_lo),
                fmt_time(o_med),
                skipped,
                "",
                "",
            ]
        print(f"| {shape} | {n:,} | " + " | ".join(cells) + " |")
    if peer_on:
        print(
            "\nnot run on trace-opt: backward on the fan-in of 10,000 and the prompt for fan-ins "
            "above 1,000 (its fan-in of 1,000 prompt alone takes seconds; it grows faster than "
            "quadratically)."
        )


if __name__ == "__main__":
    main()
