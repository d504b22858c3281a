"""Operators on nodes, side by side with trace-opt in one process: the per-call cost of a
traced ``x + y`` on two nodes, and backward on a chain of N operators (``out = out + 1``,
alternating with ``out = out * 1``) up to 10,000 nodes.

Run: python benchmarks/bench_trace_ops.py
Both libraries run the same program; each repetition runs both, in the order flipped every
repetition; tables give min and median. Without trace-opt only our side runs (install: see
benchmarks/peer.py). Aims: our traced operator >= 10x cheaper than trace-opt's; our backward
per operation flat in N (linear).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer  # noqa: E402

from opto_adapters import trace as ours  # noqa: E402

CALLS = 20_000
PEER_CALLS = 2_000  # trace-opt's operator is ~100x slower; fewer calls keep the run short
CHAINS = [1_000, 4_000, 10_000]
PEER_CHAIN_SKIP = {10_000}  # its backward grows quadratically: minutes per repetition


def repeats(n: int) -> int:
    return 5 if n <= 1_000 else 3


class Ours:
    name = "opto_adapters"

    def node(self, value: Any, name: str, trainable: bool = False) -> Any:
        return ours.node(value, name=name, trainable=trainable)

    def backward(self, params: list[Any], out: Any) -> None:
        ours.zero_feedback(params)
        out.backward("make it bigger")

    def reset(self) -> None:
        pass


class Theirs:
    name = "trace-opt"

    def __init__(self) -> None:
        import opto.trace

        self.trace = opto.trace

    def node(self, value: Any, name: str, trainable: bool = False) -> Any:
        return self.trace.node(value, name=name, trainable=trainable)

    def backward(self, params: list[Any], out: Any) -> None:
        for p in params:
            p.zero_feedback()
        out.backward("make it bigger", retain_graph=True)

    def reset(self) -> None:
        peer.clear_graph()


def operator_cost(side: Any) -> float:
    """Seconds per traced ``x + y`` on two nodes (x trainable)."""
    x = side.node(1, "x", trainable=True)
    y = side.node(2, "y")
    calls = CALLS if side.name == "opto_adapters" else PEER_CALLS

    def run() -> None:
        for _ in range(calls):
            x + y  # noqa: B018 - the traced operation is the point

    seconds = peer.timed(run) / calls
    side.reset()
    return seconds


def plain_add() -> float:
    a, b = 1, 2
    start = time.perf_counter()
    for _ in range(CALLS):
        a + b  # noqa: B018
    return (time.perf_counter() - start) / CALLS


def chain(side: Any, n: int) -> tuple[list[Any], Any]:
    p = side.node(0, "p", trainable=True)
    out = p
    for i in range(n):
        out = out + 1 if i % 2 == 0 else out * 1
    return [p], out


def backward_time(side: Any, graph: tuple[list[Any], Any], cpu: list[float]) -> Any:
    """A measurement: wall seconds for one backward of ``side`` on ``graph`` (the process
    CPU seconds of the same call go to ``cpu``: on a loaded machine they show the shape)."""

    def run() -> float:
        gc.collect()  # as peer.timed: collected before, not during
        gc.disable()
        try:
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            side.backward(*graph)
            wall = time.perf_counter() - wall_start
            cpu.append(time.process_time() - cpu_start)
        finally:
            gc.enable()
        return wall

    return run


def main() -> None:
    sys.setrecursionlimit(100_000)  # trace-opt's bundle recurses
    sides: list[Any] = [Ours()]
    if peer.available():
        sides.append(Theirs())
        print(f"## operators on nodes: opto_adapters.trace vs trace-opt {peer.version()} (same process)\n")
    else:
        print("## operators on nodes: opto_adapters.trace\n")
        print(peer.missing_note() + "\n")

    costs = peer.alternate({s.name: (lambda s=s: operator_cost(s)) for s in sides}, 5)
    plain = min(plain_add() for _ in range(5))
    print(
        f"traced operator: `x + y` on two nodes, {CALLS:,} calls per repetition "
        f"({PEER_CALLS:,} for trace-opt), 5 repetitions; plain int addition {plain * 1e9:.0f} ns\n"
    )
    print("| traced operator | min us | median us |")
    print("|---|---:|---:|")
    for s in sides:
        lo, med = peer.stats(costs[s.name])
        print(f"| {s.name} | {lo * 1e6:.2f} | {med * 1e6:.2f} |")
    if len(sides) == 2:
        ratio = min(costs["trace-opt"]) / min(costs["opto_adapters"])
        print(f"| trace-opt / opto_adapters (min) | {ratio:.0f}x | |")

    print(
        "\nbackward through operators: feedback on the end of a chain of N operators "
        "(`out = out + 1` and `out = out * 1` alternating, from one parameter); min / median "
        "of 5 repetitions for N <= 1,000, 3 above; us/op from the min wall time and from the "
        "min process CPU time of the same calls\n"
    )
    print(
        "| operator chain | N | opto_adapters min | median | us/op | us/op (CPU time) | "
        "trace-opt min | median | trace-opt / ours (min) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in CHAINS:
        graphs = {
            s.name: chain(s, n)
            for s in sides
            if not (s.name == "trace-opt" and n in PEER_CHAIN_SKIP)
        }
        live = [s for s in sides if s.name in graphs]
        cpu: dict[str, list[float]] = {}
        times = peer.alternate(
            {s.name: backward_time(s, graphs[s.name], cpu.setdefault(s.name, [])) for s in live},
            repeats(n),
        )
        o_lo, o_med = peer.stats(times["opto_adapters"])
        cells = [
            f"{o_lo * 1e3:.2f} ms",
            f"{o_med * 1e3:.2f} ms",
            f"{o_lo / n * 1e6:.2f}",
            f"{min(cpu['opto_adapters']) / n * 1e6:.2f}",
        ]
        if "trace-opt" in times:
            t_lo, t_med = peer.stats(times["trace-opt"])
            cells += [f"{t_lo * 1e3:.1f} ms", f"{t_med * 1e3:.1f} ms", peer.ratio(t_lo, o_lo)]
        else:
            cells += ["not run" if len(sides) == 2 else "n/a", "", ""]
        print(f"| chain | {n:,} | " + " | ".join(cells) + " |")
        for s in sides:
            s.reset()
    if len(sides) == 2:
        print(
            "\nnot run on trace-opt: the chain of 10,000 (its backward is quadratic in the chain "
            "length: minutes per repetition)."
        )


if __name__ == "__main__":
    main()
