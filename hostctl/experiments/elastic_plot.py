"""The elastic-vs-fixed timeline, hand-written SVG: offered load, each run's online vCPUs (and the oracle's need)
and each run's p99 over the trace's time, one panel each."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from hostctl.experiments.elastic_oracle import Oracle
from hostctl.experiments.elastic_vs_fixed import Run
from hostctl.stats import percentile

COLOURS = ("#888888", "#222222", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e")
ORACLE = "#e377c2"
WIDTH, PANEL, LEFT, RIGHT, GAP = 900, 170, 70, 150, 40


def timeline_svg(runs: list[Run], oracle: Oracle | None = None, bin_s: float = 2.0) -> str:
    """Three panels over the trace's time: offered load, online vCPUs per run (the oracle's need dashed), p99 per
    `bin_s` per run."""
    trace = runs[0].trace
    span = trace.seconds
    plot_w = WIDTH - LEFT - RIGHT
    height = 3 * PANEL + 4 * GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
    ]

    def x(t: float) -> float:
        return LEFT + plot_w * t / span

    def panel(
        index: int,
        title: str,
        top_value: float,
        ticks: list[float],
        *,
        scale: Callable[[float], float],
        label: Callable[[float], str],
    ) -> Callable[[float], float]:
        top = GAP + index * (PANEL + GAP)

        def y(v: float) -> float:
            return top + PANEL - PANEL * scale(v) / scale(top_value)

        parts.append(f'<text x="{LEFT}" y="{top - 8}" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#ccc"/>')
        for tick in ticks:
            parts.append(
                f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                f'stroke="#eee"/><text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                f"{label(tick)}</text>"
            )
        for t in range(0, int(span) + 1, 30 if span > 90 else 10):
            parts.append(f'<text x="{x(t):.1f}" y="{top + PANEL + 14}" text-anchor="middle">{t} s</text>')
        return y

    peak = max(trace.rate(t / 10) for t in range(int(span * 10)))
    y = panel(0, "offered load (req/s)", peak * 1.1, _ticks(peak * 1.1), scale=lambda v: v, label=lambda v: f"{v:g}")
    points = " ".join(f"{x(t / 4):.1f},{y(trace.rate(t / 4)):.1f}" for t in range(int(span * 4)))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#444" stroke-width="1.5"/>')

    top_vcpus = max(r.max for r in runs)
    y = panel(
        1,
        "online vCPUs",
        top_vcpus + 0.5,
        [float(n) for n in range(0, top_vcpus + 1, max(1, top_vcpus // 4))],
        scale=lambda v: v,
        label=lambda v: f"{v:g}",
    )
    for i, run in enumerate(runs):
        steps = [*run.online, (span, run.online[-1][1])]
        path = " ".join(
            f"{x(min(at, span)):.1f},{y(n + 0.06 * (i - len(runs) / 2)):.1f} "
            f"{x(min(nxt, span)):.1f},{y(n + 0.06 * (i - len(runs) / 2)):.1f}"
            for (at, n), (nxt, _) in itertools.pairwise(steps)
        )
        parts.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="1.5"/>')
    if oracle is not None:
        path = " ".join(
            f"{x(t):.1f},{y(n):.1f} {x(min(t + 1.0, span)):.1f},{y(n):.1f}" for t, n in enumerate(oracle.need)
        )
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{ORACLE}" stroke-width="2" stroke-dasharray="5 3"/>'
        )

    slo = runs[0].slo_ms
    y = panel(
        2,
        f"p99 per {bin_s:g} s (ms, log scale; dashed: SLO {slo:g} ms)",
        5000,
        [1, 10, 100, 1000],
        scale=lambda v: math.log10(max(v, 1.0)),
        label=lambda v: f"{v:g}",
    )
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(slo):.1f}" y2="{y(slo):.1f}" stroke="#d62728" '
        f'stroke-dasharray="4 3"/>'
    )
    for i, run in enumerate(runs):
        p99s = []
        for b in range(int(span // bin_s)):
            ms = [r.ms for r in run.requests if b * bin_s <= r.at < (b + 1) * bin_s]
            if ms:
                p99 = percentile(ms, 0.99)
                p99s.append(f"{x((b + 0.5) * bin_s):.1f},{y(min(p99, 5000)):.1f}")
        parts.append(
            f'<polyline points="{" ".join(p99s)}" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="1.5"/>'
        )

    legend = [(run.name, COLOURS[i % len(COLOURS)]) for i, run in enumerate(runs)]
    for i, (name, colour) in enumerate([*legend, *([("oracle", ORACLE)] if oracle is not None else [])]):
        ly = GAP + PANEL + GAP + 14 + 18 * i
        parts.append(
            f'<line x1="{WIDTH - RIGHT + 12}" x2="{WIDTH - RIGHT + 32}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"/><text x="{WIDTH - RIGHT + 38}" y="{ly}">{name}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _ticks(top: float) -> list[float]:
    step = 10 ** math.floor(math.log10(top / 2)) if top > 2 else 1
    for mult in (1, 2, 5):
        if top / (step * mult) <= 5:
            step *= mult
            break
    return [i * step for i in range(int(top / step) + 1)]
