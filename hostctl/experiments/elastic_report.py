"""The elastic-vs-fixed report: the table of every run's figures, each policy's verdict against the targets, and
the files they are saved to (markdown with the timeline plot beside it)."""

from __future__ import annotations

import math
from pathlib import Path

from hostctl.experiments.elastic_plot import timeline_svg
from hostctl.experiments.elastic_vs_fixed import FIXED, WINDOW_S, Comparison


def markdown(comparison: Comparison) -> str:
    """One table row per run: latency, SLO windows, worker-vCPU-seconds (also as a share of fixed-max's), scale
    actions, reactions to the load steps and errors."""
    service = comparison.service_ms()
    fixed_max = comparison.fixed_max
    lines = [
        "| run | p50 ms | p99 ms | 10 s windows within SLO | worker-vCPU-s | vs fixed-max | scale actions "
        "| reaction to steps (s) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for run in comparison.runs:
        share = (
            "n/a"
            if fixed_max is None or fixed_max.worker_seconds <= 0
            else f"{run.worker_seconds / fixed_max.worker_seconds:.0%}"
        )
        reactions = ", ".join("never" if s is None else f"{s:.2f}" for *_, s in run.reactions(service))
        windows = run.windows()
        lines.append(
            f"| {run.name} | {run.percentile(50):.1f} | {run.percentile(99):.1f} | "
            f"{run.within_slo:.0%} ({sum(ok for *_, ok in windows)}/{len(windows)}) | "
            f"{run.worker_seconds:.0f} | {share} | {run.actions} | {reactions} | {run.errors} |"
        )
    return "\n".join(lines)


def verdicts(comparison: Comparison) -> list[str]:
    """Each elastic run against the targets: SLO met in >= 99% of windows, <= 60% of fixed-max's
    worker-vCPU-seconds, and every reaction within 1 s."""
    fixed_max = comparison.fixed_max
    lines = []
    for run in comparison.runs:
        if run.name in FIXED:
            continue
        reactions = [s for *_, s in run.reactions(comparison.service_ms())]
        slowest = max((math.inf if s is None else s for s in reactions), default=0.0)
        checks = [f"SLO windows {run.within_slo:.0%} {'≥' if run.within_slo >= 0.99 else '<'} 99%"]
        if fixed_max is not None and fixed_max.worker_seconds > 0:
            share = run.worker_seconds / fixed_max.worker_seconds
            checks.append(f"worker-vCPU-s {share:.0%} of fixed-max {'≤' if share <= 0.6 else '>'} 60%")
        checks.append(
            f"slowest reaction {'never' if math.isinf(slowest) else f'{slowest:.2f} s'} "
            f"{'≤' if slowest <= 1 else '>'} 1 s"
        )
        met = run.within_slo >= 0.99 and slowest <= 1 and all("> 60%" not in c for c in checks)
        missed = [
            f"{start:.0f}-{start + WINDOW_S:.0f} s (p99 {p99:.0f} ms)" for start, p99, ok in run.windows() if not ok
        ]
        lines.append(
            f"{run.name}: {'meets' if met else 'misses'} the targets ({'; '.join(checks)})"
            + (f"; windows over the SLO: {', '.join(missed)}" if missed else "")
        )
    return lines


def save(comparison: Comparison, out: Path, stem: str = "elastic-vs-fixed", header: str = "") -> tuple[Path, Path]:
    """Write `stem.md` (the table) and `stem.svg` (the timeline) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    md, svg = out / f"{stem}.md", out / f"{stem}.svg"
    run = comparison.runs[0]
    steps = ", ".join(f"{rate:.0f} req/s at {start:.0f} s" for start, rate in run.trace.steps())
    text = [
        header or "# Elastic versus fixed",
        "",
        f"Target: `{comparison.target}` ({comparison.url}), boot {run.boot} / max {run.max} vCPUs, SLO p99 ≤ "
        f"{run.slo_ms:g} ms. Trace: {run.trace.seconds:.0f} s, open-loop Poisson arrivals "
        f"({' → '.join(p.name for p in run.trace.phases)}); load steps: {steps}. Service time seen "
        f"by the client at quiet load: {comparison.service_ms():.1f} ms.",
        "",
        markdown(comparison),
        "",
        *(f"- {verdict}" for verdict in verdicts(comparison)),
        "",
        *(f"- {note}" for note in comparison.notes),
        "",
        f"![timeline]({svg.name})",
        "",
    ]
    md.write_text("\n".join(text))
    svg.write_text(timeline_svg(comparison.runs))
    return md, svg
