"""Noise-aware acceptance and the copy guard: calibration and cost (prints numbers; not a test).

    python benchmarks/bench_acceptance.py [--trials 400] [--rounds 5]

Calibration: simulated gate sets (each example its own difficulty, Gaussian evaluation noise,
scores clipped to [0, 1]); how often a candidate is accepted when it is no better (the false
acceptance rate; the interval is 95%, so about 2.5% is expected one-sided) and when it is
+0.1 better (the power), by the mean rule (today's) and by the bootstrap rule.

Cost: the bootstrap's time per candidate for gate sets of n examples x r repeats, beside the
mean rule's time on the same scores (the baseline, same run); the copy guard's index and check
times. Min and median over rounds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opto_adapters.train.acceptance import accept  # noqa: E402
from opto_adapters.train.guard import CopyGuard  # noqa: E402


def gate(rng: random.Random, n: int, r: int, shift: float, noise: float) -> tuple[list[list[float]], list[list[float]]]:
    base = [rng.random() for _ in range(n)]
    clip = lambda x: min(1.0, max(0.0, x))  # noqa: E731
    child = [[clip(b + shift + rng.gauss(0, noise)) for _ in range(r)] for b in base]
    incumbent = [[clip(b + rng.gauss(0, noise)) for _ in range(r)] for b in base]
    return child, incumbent


def mean_rule(child: list[list[float]], incumbent: list[list[float]]) -> bool:
    c = statistics.fmean(x for reps in child for x in reps)
    i = statistics.fmean(x for reps in incumbent for x in reps)
    return c >= i - 1e-9


def calibration(trials: int) -> None:
    print(f"acceptance rates over {trials} simulated candidates (noise sd 0.2):")
    print("| n examples | repeats | rule | accepted, no better | accepted, +0.1 better |")
    print("|---:|---:|---|---:|---:|")
    rng = random.Random(0)
    for n, r in ((3, 1), (3, 5), (10, 1), (10, 3), (30, 3)):
        for rule in ("mean", "bootstrap"):
            rates = []
            for shift in (0.0, 0.1):
                hits = 0
                for _ in range(trials):
                    c, i = gate(rng, n, r, shift, 0.2)
                    ok = mean_rule(c, i) if rule == "mean" else accept(c, i, seed=rng.randrange(1 << 30), resamples=1000).accepted
                    hits += ok
                rates.append(hits / trials)
            print(f"| {n} | {r} | {rule} | {rates[0]:.1%} | {rates[1]:.1%} |")


def timed(fn, rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def cost(rounds: int) -> None:
    rng = random.Random(1)
    print(f"\nbootstrap cost per candidate (2,000 resamples), min / median of {rounds}:")
    print("| n x r | mean rule ms | bootstrap ms | x mean rule |")
    print("|---|---:|---:|---:|")
    for n, r in ((20, 1), (100, 1), (100, 3), (300, 5)):
        c, i = gate(rng, n, r, 0.0, 0.2)
        base = timed(lambda c=c, i=i: mean_rule(c, i), rounds)
        boot = timed(lambda c=c, i=i: accept(c, i, seed=1), rounds)
        print(f"| {n} x {r} | {base[0] * 1e3:.3f} / {base[1] * 1e3:.3f} | {boot[0] * 1e3:.1f} / {boot[1] * 1e3:.1f} "
              f"| {boot[0] / base[0]:.0f} |")
    vocab = [f"w{k}" for k in range(5000)]
    examples = [
        {"input": " ".join(rng.choices(vocab, k=100)), "answer": " ".join(rng.choices(vocab, k=30))}
        for _ in range(1000)
    ]
    build = timed(lambda: CopyGuard(examples), rounds)
    guard = CopyGuard(examples)
    prompt = {"prompt": " ".join(rng.choices(vocab, k=400))}
    check = timed(lambda: guard.check(prompt, {"prompt": "x"}), rounds)
    print(f"\ncopy guard: index 1,000 examples of 130 words {build[0]:.3f} / {build[1]:.3f} s (once per run); "
          f"check a 400-word prompt {check[0] * 1e3:.2f} / {check[1] * 1e3:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    calibration(args.trials)
    cost(args.rounds)


if __name__ == "__main__":
    main()
