"""The elastic-vs-fixed report: per trace, each run's figures over its repeats beside the oracle and fixed-max; each
policy against the targets; the calibration; and the files they are saved to (markdown, one timeline plot per trace).

A figure over repeats is written `median (min-max)`; one repeat gives one number.

Targets, on every trace: worker-vCPU-seconds at most `COST` x the oracle's (median over the repeats); at least
`WINDOWS` of the 10 s windows within the SLO in every repeat; the slowest reaction of every repeat at most
`REACTION_S`. The best policy is the one that meets the most targets, then the cheapest against the oracle.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hostctl.experiments.elastic_oracle import Calibration
from hostctl.experiments.elastic_plot import timeline_svg
from hostctl.experiments.elastic_vs_fixed import BASELINES, WINDOW_S, Comparison, Run
from hostctl.load.trace import Trace

COST = 1.3  # most worker-vCPU-seconds, as a multiple of the oracle's
WINDOWS = 0.99  # least share of 10 s windows within the SLO, in every repeat
REACTION_S = 0.5  # slowest reaction, in every repeat


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """`median (min-max)` of `values`, or the one value; inf shows as never."""

    def show(v: float) -> str:
        return "never" if math.isinf(v) else fmt.format(v)

    if not values:
        return "n/a"
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} ({show(min(values))}-{show(max(values))})"


def markdown(comparison: Comparison) -> str:
    """One table per trace: the oracle, then every run over its repeats."""
    parts = []
    for trace in comparison.traces:
        parts += [f"### {trace.name}", "", table(comparison, trace), ""]
    return "\n".join(parts).rstrip() + "\n"


def table(comparison: Comparison, trace: Trace) -> str:
    oracle = comparison.oracle(trace)
    fixed_max = comparison.fixed_max_seconds(trace)
    lines = [
        "| run | repeats | p99 ms | 10 s windows within SLO | worker-vCPU-s | vs oracle | vs fixed-max | scale actions "
        "| slowest reaction s | errors |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        f"| oracle | - | - | - | {oracle.worker_seconds:.0f} | 1.00× | {_share(oracle.worker_seconds, fixed_max)} "
        f"| - | 0 | - |",
    ]
    for name in comparison.names:
        runs = comparison.of(trace, name)
        if not runs:
            continue
        seconds = [r.worker_seconds for r in runs]
        windows = ", ".join(f"{sum(ok for *_, ok in r.windows())}/{len(r.windows())}" for r in runs)
        lines.append(
            f"| {name} | {len(runs)} | {spread([r.percentile(99) for r in runs], '{:.1f}')} | {windows} | "
            f"{spread(seconds)} | {spread([s / oracle.worker_seconds for s in seconds], '{:.2f}×')} | "
            f"{spread([s / fixed_max for s in seconds], '{:.0%}')} | {spread([r.actions for r in runs])} | "
            f"{spread([r.slowest_reaction(oracle) for r in runs], '{:.2f}')} | {sum(r.errors for r in runs)} |"
        )
    return "\n".join(lines)


def _share(part: float, whole: float) -> str:
    return "n/a" if whole <= 0 else f"{part / whole:.0%}"


@dataclass(frozen=True)
class Verdict:
    """One policy against the targets on every trace: each target's figure and whether it is met."""

    policy: str
    checks: list[tuple[str, bool]]  # (what was found against what was wanted, met)
    cost: float  # the highest median worker-vCPU-seconds / oracle's over the traces

    @property
    def met(self) -> int:
        return sum(ok for _, ok in self.checks)

    def line(self) -> str:
        missed = len(self.checks) - self.met
        summary = "meets every target" if not missed else f"misses {missed} of {len(self.checks)} targets"
        return f"`{self.policy}` {summary}: " + "; ".join(
            f"{text} ({'met' if ok else 'missed'})" for text, ok in self.checks
        )


def verdicts(comparison: Comparison) -> list[Verdict]:
    """Every policy run on every trace against the targets, the best first."""
    out = []
    for name in comparison.names:
        if name in BASELINES:
            continue
        checks: list[tuple[str, bool]] = []
        costs = []
        for trace in comparison.traces:
            runs = comparison.of(trace, name)
            if not runs:
                continue
            oracle = comparison.oracle(trace)
            cost = statistics.median(r.worker_seconds / oracle.worker_seconds for r in runs)
            costs.append(cost)
            checks.append((f"{trace.name}: worker-vCPU-s {cost:.2f}× the oracle's (≤ {COST:g}×)", cost <= COST))
            worst = min(r.within_slo for r in runs)
            checks.append(
                (
                    f"{trace.name}: windows within the SLO ≥ {worst:.0%} in every repeat (≥ {WINDOWS:.0%})",
                    worst >= WINDOWS,
                )
            )
            slowest = max(r.slowest_reaction(oracle) for r in runs)
            shown = "never" if math.isinf(slowest) else f"{slowest:.2f} s"
            checks.append((f"{trace.name}: slowest reaction {shown} (≤ {REACTION_S:g} s)", slowest <= REACTION_S))
        out.append(Verdict(name, checks, max(costs, default=math.inf)))
    return sorted(out, key=lambda v: (-v.met, v.cost))


def missed_windows(run: Run) -> str:
    """The windows of `run` over the SLO, with their p99."""
    return ", ".join(
        f"{start:.0f}-{start + WINDOW_S:.0f} s (p99 {p99:.0f} ms)" for start, p99, ok in run.windows() if not ok
    )


def calibration_table(calibration: Calibration) -> str:
    """Per measured rate: the fewest vCPUs within the SLO and the cells measured (vCPUs: p99)."""
    lines = ["| req/s | fewest vCPUs within SLO | cells measured (vCPUs: p99 ms) |", "|---:|---:|---|"]
    for rate in calibration.rates:
        cells = sorted((c for c in calibration.cells if c.rps == rate), key=lambda c: c.vcpus)
        fewest = calibration.fewest(rate)
        shown = ", ".join(f"{c.vcpus}: {c.p99_ms:.0f}{'' if c.errors == 0 else f' ({c.errors} errors)'}" for c in cells)
        lines.append(f"| {rate:g} | {'none' if fewest is None else fewest} | {shown} |")
    return "\n".join(lines)


def save(comparison: Comparison, out: Path, stem: str = "elastic-vs-fixed", header: str = "") -> Path:
    """Write `stem.md` (tables, verdicts, calibration) and `stem-TRACE.svg` (repeat 1's timeline per trace)."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    calibration = comparison.calibration
    repeats = max((r.repeat for r in comparison.runs), default=0)
    text = [
        header or "# Elastic versus fixed",
        "",
        f"Target: `{comparison.target}` ({comparison.url}), boot {calibration.boot} / max {calibration.max} vCPUs, "
        f"SLO p99 ≤ {calibration.slo_ms:g} ms; {repeats} repeat(s) of every run, round-robin, open-loop Poisson "
        "arrivals (repeat k with seed k). Figures over repeats: median (min-max); windows: each repeat's.",
        "",
    ]
    for trace in comparison.traces:
        oracle = comparison.oracle(trace)
        steps = ", ".join(f"{rate:.0f} req/s at {start:.1f} s" for start, rate in trace.steps()) or "none"
        beyond = (
            f" It needs more than the calibration measured for {oracle.seconds_beyond} s (max vCPUs taken)."
            if oracle.seconds_beyond
            else ""
        )
        svg = out / f"{stem}-{trace.name}.svg"
        text += [
            f"## {trace.name}",
            "",
            f"{trace.seconds:.0f} s ({' → '.join(p.name for p in trace.phases)}), load steps: {steps}. The oracle "
            f"wakes {oracle.worker_seconds:.0f} worker-vCPU-s, "
            f"{_share(oracle.worker_seconds, comparison.fixed_max_seconds(trace))} of fixed-max's.{beyond}",
            "",
            table(comparison, trace),
            "",
            *(
                f"- {run.name}, repeat {run.repeat}: windows over the SLO: {missed_windows(run)}"
                for run in comparison.runs
                if run.trace.name == trace.name and missed_windows(run)
            ),
            "",
            f"![{trace.name}: repeat 1]({svg.name})",
            "",
        ]
        svg.write_text(
            timeline_svg([r for r in comparison.runs if r.trace.name == trace.name and r.repeat == 1], oracle)
        )
    text += ["## Targets", ""]
    text += [f"- {verdict.line()}" for verdict in verdicts(comparison)]
    text += ["", "## Calibration", "", calibration_table(calibration), ""]
    text += [f"- {note}" for note in comparison.notes]
    md.write_text("\n".join(text) + "\n")
    return md
