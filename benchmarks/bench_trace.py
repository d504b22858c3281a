"""Core benchmark: tracing overhead per call, backward and render time per node.

Run: python benchmarks/bench_trace.py
Prints a markdown table. Reference (trace-opt 0.1.3.8 on this kind of machine): about 47 us
per traced call, backward 41 ms at N=1,000 and 524 ms at N=4,000 (quadratic), 7 s to render
a fan-in of 1,000.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from opto_adapters.trace import backward, bundle, node, render, zero_feedback


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    """Best wall time of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def plain_add(a, b):
    return a + b


traced_add = bundle()(plain_add)


def call_overhead(calls: int = 100_000) -> tuple[float, float]:
    """(plain us/call, traced us/call) for a two-argument function on node inputs."""
    x = node(1, name="x", trainable=True)
    y = node(2, name="y")

    def plain() -> None:
        for _ in range(calls):
            plain_add(1, 2)

    def traced() -> None:
        for _ in range(calls):
            traced_add(x, y)

    return best_of(plain) / calls * 1e6, best_of(traced) / calls * 1e6


def chain(n: int):
    p = node(0, name="p", trainable=True)
    out = p
    for _ in range(n):
        out = traced_add(out, 1)
    return p, out


def fan_in(n: int):
    params = [node(i, name=f"p{i}", trainable=True) for i in range(n)]

    @bundle()
    def total(*values):
        """Sum the values."""
        return sum(values)

    return params, total(*[traced_add(p, 1) for p in params])


def backward_and_render(params, out) -> tuple[float, float]:
    params = params if isinstance(params, list) else [params]

    def bw() -> None:
        zero_feedback(params)
        backward(out, "make it bigger")

    t_backward = best_of(bw)
    t_render = best_of(lambda: str(render(params[0].propagated(), params)), repeat=3)
    zero_feedback(params)
    return t_backward, t_render


def main() -> None:
    sys.setrecursionlimit(10_000)  # not needed by the core; guards the benchmark's own code
    plain_us, traced_us = call_overhead()
    print("## opto_adapters.trace core\n")
    print(f"traced call: {traced_us:.2f} us (plain call {plain_us:.3f} us, "
          f"overhead {traced_us - plain_us:.2f} us; trace-opt reference ~47 us)\n")
    print("| graph | N | nodes | backward ms | backward us/node | render ms | render us/node |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape, n in [("chain", 100), ("chain", 1_000), ("chain", 4_000), ("chain", 10_000),
                     ("fan-in", 100), ("fan-in", 1_000), ("fan-in", 10_000)]:
        params, out = chain(n) if shape == "chain" else fan_in(n)
        nodes = 2 * n + 1 if shape == "chain" else 2 * n + n + 1
        tb, tr = backward_and_render(params, out)
        print(f"| {shape} | {n:,} | {nodes:,} | {tb * 1e3:.2f} | {tb / nodes * 1e6:.2f} "
              f"| {tr * 1e3:.1f} | {tr / nodes * 1e6:.2f} |")


if __name__ == "__main__":
    main()
