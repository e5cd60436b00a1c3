"""The console fleet benchmark on two checkouts, interleaved: is this tree slower than a baseline?

    python -m bench.compare_console --baseline DIR [--rounds 3] [--window 30] [--presses 10] [--out FILE.md]

DIR is another checkout of this repository (for example `git worktree add DIR COMMIT`). Each round runs
`bench/console_fleet.py` once on the baseline and once on this tree, in alternating order, so both see the same
machine at nearly the same moment; the table gives each measure's median over the rounds and the ratio this/baseline.
Each checkout runs with its own code first on the import path.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import ROOT

OUT = ROOT / "bench" / "results" / "console_fleet_ab.md"
TIMEOUT = 900.0  # one console_fleet run, setup included

#: What to read from a console_fleet report: label -> pattern whose one group is the figure.
DIRTY = r"\| `tick\(\)` that did work \(dirty\) \| \d+ \| "
SCREEN = r"\| screen update[^|]*\| \d+ \| "
MEASURES = {
    "dirty tick p50 (ms)": DIRTY + r"([\d.]+) ms",
    "dirty tick p99 (ms)": DIRTY + r"[\d.]+ ms \| \*\*([\d.]+) ms",
    "screen update p50 (ms)": SCREEN + r"([\d.]+) ms",
    "screen update p99 (ms)": SCREEN + r"[\d.]+ ms \| ([\d.]+) ms",
    "applying one host's update p50 (ms)": r"\| applying one host's update[^|]*\| \d+ \| ([\d.]+) ms",
    "key → cell p50 (ms)": r"\| key → workers cell updated \| ([\d.]+) ms",
    "key → cell p99 (ms)": r"\| key → workers cell updated \| [\d.]+ ms \| ([\d.]+) ms",
    "console CPU (% of a core)": r"CPU \*\*([\d.]+)%\*\* of one core",
    "console RSS (MiB)": r"RSS \*\*([\d.]+) MiB\*\*",
}


def run(tree: Path, out: Path, window: int, presses: int) -> dict[str, float]:
    """One console_fleet run in `tree`; its figures."""
    module = (tree / "bench" / "__init__.py").exists()
    bench = ["-m", "bench.console_fleet"] if module else [str(tree / "bench" / "console_fleet.py")]
    argv = [sys.executable, *bench, "--window", str(window), "--profile", "0", "--presses", str(presses)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [*argv, "--out", str(out)], cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"console_fleet in {tree} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    text = out.read_text()
    figures = {}
    for label, pattern in MEASURES.items():
        match = re.search(pattern, text)
        if match is not None:
            figures[label] = float(match.group(1))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=30, help="seconds measured per run")
    parser.add_argument("--presses", type=int, default=10, help="key presses on the demo site per run")
    parser.add_argument("--label", default="", help="what the baseline is (e.g. its commit), for the report")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not (args.baseline / "bench" / "console_fleet.py").is_file():
        raise SystemExit(f"{args.baseline}: no bench/console_fleet.py (is it a checkout of this repository?)")
    trees = {"baseline": args.baseline.resolve(), "this tree": ROOT}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    order: list[str] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            names = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in names:
                out = Path(scratch) / f"{name.replace(' ', '-')}-{round_}.md"
                results[name].append(run(trees[name], out, args.window, args.presses))
                order.append(name)
    args.out.write_text(report(results, order, args, started))
    print(args.out)
    return 0


def report(results: dict[str, list[dict[str, float]]], order: list[str], args: argparse.Namespace, started: str) -> str:
    lines = [
        "# Console fleet: this tree against a baseline",
        "",
        f"`python -m bench.compare_console --baseline DIR --rounds {args.rounds} --window {args.window} "
        f"--presses {args.presses}`, started {started}; baseline: {args.label or 'another checkout'}. "
        f"Each round runs `bench/console_fleet.py` (100 hosts × 100 CVMs, `--window {args.window}`, "
        f"`--presses {args.presses}`, no profile) on both checkouts, alternating which goes first "
        f"(order: {', '.join(order)}); 2 cores shared with whatever else ran. Medians over the rounds.",
        "",
        "| measure | baseline | this tree | this / baseline | rounds (baseline; this tree) |",
        "|---|---:|---:|---:|---|",
    ]
    for label in MEASURES:
        base = [r[label] for r in results["baseline"] if label in r]
        this = [r[label] for r in results["this tree"] if label in r]
        if not base or not this:
            continue
        b, t = statistics.median(base), statistics.median(this)
        ratio = f"{t / b:.2f}" if b else "-"
        each = f"{', '.join(f'{v:g}' for v in base)}; {', '.join(f'{v:g}' for v in this)}"
        lines.append(f"| {label} | {b:g} | {t:g} | {ratio} | {each} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
