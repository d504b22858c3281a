"""Import time of each package, in fresh subprocesses (ours next to trace-opt's).

Run: python benchmarks/bench_import.py
Each figure is what ``python -X importtime -c "import X"`` reports for the statement: the
cumulative microseconds of the top-level entries it caused (X and its parent packages), so
interpreter start-up is not counted. REPEAT subprocesses per module, the two libraries'
modules interleaved and the order flipped each repetition; min and median. Then the largest
imports inside ``opto_adapters.optimizers``. trace-opt's ``opto.optimizers`` imports
``litellm`` and ``black``; when those are not installed it is timed with the same empty
stand-ins the other benchmarks use (so its real import is slower than shown).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
REPEAT = 5
PAIRS = [
    ("opto_adapters", None),  # the package an app imports; trace-opt's `opto` is empty
    ("opto_adapters.trace", "opto.trace"),
    ("opto_adapters.optimizers", "opto.optimizers"),
]
STAND_INS = [name for name in ("litellm", "black") if importlib.util.find_spec(name) is None]
LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def importtime(module: str) -> list[tuple[int, int, str]]:
    """(depth, cumulative us, name) for every import the statement ``import module`` made."""
    prelude = "import sys, types; "
    if module == "opto.optimizers":
        for name in STAND_INS:
            prelude += f"sys.modules[{name!r}] = types.ModuleType({name!r}); "
        if "black" in STAND_INS:
            prelude += "sys.modules['black'].format_str = sys.modules['black'].FileMode = None; "
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    # the prelude's own imports are done before the mark; only what follows is counted
    code = f"{prelude}sys.stderr.write('MARK\\n'); import {module}"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=str(ROOT),
    )
    if done.returncode != 0:
        raise RuntimeError(f"import {module} failed:\n{done.stderr[-2000:]}")
    entries = []
    after_mark = False
    for line in done.stderr.splitlines():
        if line == "MARK":
            after_mark = True
            continue
        match = LINE.match(line)
        if after_mark and match:
            depth = (len(match.group(3)) - 1) // 2
            entries.append((depth, int(match.group(2)), match.group(4)))
    return entries


def total_us(module: str) -> int:
    return sum(cumulative for depth, cumulative, _ in importtime(module) if depth == 0)


def main() -> None:
    peer_on = peer.available()
    print("## Import time (python -X importtime, fresh subprocess each)\n")
    if not peer_on:
        print(peer.missing_note() + "\n")
    print(f"{REPEAT} subprocesses per module, interleaved, order flipped each repetition\n")
    print(
        "| import | opto_adapters min ms | median ms | trace-opt module | trace-opt min ms | median ms | trace-opt / ours (min) |"
    )
    print("|---|---:|---:|---|---:|---:|---:|")
    for mine, theirs in PAIRS:
        sides = {mine: lambda m=mine: total_us(m) / 1e3}
        if peer_on and theirs:
            sides[theirs] = lambda m=theirs: total_us(m) / 1e3
        times = peer.alternate(sides, REPEAT)
        o_lo, o_med = peer.stats(times[mine])
        cells = [f"{o_lo:.1f}", f"{o_med:.1f}"]
        if theirs is None:
            cells += ["(no counterpart)", "", "", ""]
        elif peer_on:
            t_lo, t_med = peer.stats(times[theirs])
            label = theirs + (" (litellm, black stand-ins)" if theirs == "opto.optimizers" else "")
            cells += [label, f"{t_lo:.1f}", f"{t_med:.1f}", peer.ratio(t_lo, o_lo)]
        else:
            cells += [theirs, "n/a", "", ""]
        print(f"| import {mine} | " + " | ".join(cells) + " |")

    entries = importtime("opto_adapters.optimizers")
    total = sum(c for d, c, _ in entries if d == 0)
    print(
        f"\nlargest imports under `import opto_adapters.optimizers` (one run, total {total / 1e3:.1f} ms):"
    )
    top = sorted((e for e in entries if e[0] == 1 or (e[0] == 0)), key=lambda e: -e[1])[:6]
    for depth, cumulative, name in top:
        print(f"  {'  ' * depth}{name:<40} {cumulative / 1e3:8.1f} ms")
    openai = sum(c for d, c, n in entries if n == "openai")
    if openai:
        print(f"  of which `openai` (all places it is first imported): {openai / 1e3:.1f} ms")
    else:
        print("  `openai` is not imported by it")


if __name__ == "__main__":
    main()
