"""Fault injection over 50 seeds (issue 11, item 7): faults injected by kind and how many were
survived, as markdown tables. A seed survives when no live parameter ever held an invalid value,
the store passes PRAGMA integrity_check and Store.check(), and the run killed with SIGKILL and
resumed in a fresh process ends with the best values of an uninterrupted run of the same seed.

Run: PYTHONPATH=. python benchmarks/bench_faults.py [--seeds 50]     (about 40 s on 2 cores)
The harness is tests/faults.py; tests/test_faults.py runs 8 of these seeds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults import KINDS, SeedOutcome, run_seed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once (each in its own processes)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        outcomes: list[SeedOutcome] = list(pool.map(lambda s: run_seed(s, Path(tmp) / f"seed{s}"), range(args.seeds)))
    took = time.monotonic() - start
    injected: Counter[str] = Counter()
    survived: Counter[str] = Counter()
    for o in outcomes:
        injected.update(o.faults)
        if o.survived:
            survived.update(o.faults)
    print(f"# Fault injection: {args.seeds} seeds, {took:.0f} s\n")
    print("| fault | injected | survived |")
    print("|---|---:|---:|")
    for kind in ("ok", *KINDS):
        print(f"| {kind} | {injected[kind]} | {survived[kind]} |")
    killed = [o for o in outcomes if o.killed]
    print(f"| SIGKILL + resume | {len(killed)} | {sum(o.survived for o in killed)} |")
    faults = sum(injected[k] for k in KINDS) + len(killed)
    kept = sum(survived[k] for k in KINDS) + sum(o.survived for o in killed)
    print(f"| all faults | {faults} | {kept} |")
    print()
    by_point = Counter(o.kill[0] for o in killed)
    print(f"kills by point: {dict(sorted(by_point.items()))} (not reached: {len(outcomes) - len(killed)})")
    print(f"seeds survived: {sum(o.survived for o in outcomes)} of {len(outcomes)}")
    for o in outcomes:
        if o.problems:
            print(f"- seed {o.seed} (kill at {o.kill}): " + "; ".join(o.problems)[:600])


if __name__ == "__main__":
    main()
