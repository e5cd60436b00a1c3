"""The security-overhead figures, hand-written SVG: median latency per security type as bars with 95 % interval
whiskers (one panel per percentile and connection count, one group per script), and, for a connections sweep,
latency against offered concurrency (one panel per percentile and script, one line per security type)."""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

from hostctl.experiments.bootstrap import Interval
from hostctl.experiments.overhead_runs import LABEL, ORDER, PERCENTILES
from hostctl.experiments.overhead_stats import Analysis
from hostctl.wire.security import SecurityType

COLOUR = {
    SecurityType.NONE: "#7f7f7f",
    SecurityType.SEV: "#1f77b4",
    SecurityType.SEV_ES: "#ff7f0e",
    SecurityType.SEV_SNP: "#d62728",
}
LEFT, TOP, PANEL_H, ROW_GAP, COL_GAP = 64, 106, 180, 62, 40
BAR, GROUP_GAP = 26, 22
WHISKERS = "whiskers: 95% bootstrap interval over rounds"


def bars_svg(analysis: Analysis, title: str) -> str:
    """Bars of median latency with interval whiskers; above each, its increase over plain ("n.d.": its interval
    includes 0, not distinguishable)."""
    scripts = list(dict.fromkeys(b.script for b in analysis.blocks))
    counts = sorted({b.connections for b in analysis.blocks})
    types = _types(analysis)
    group_w = len(types) * BAR + GROUP_GAP
    panel_w = max(280, len(scripts) * group_w + GROUP_GAP)
    width = LEFT + len(counts) * (panel_w + COL_GAP) + 20
    height = TOP + len(PERCENTILES) * (PANEL_H + ROW_GAP)
    svg = _Svg(
        width,
        height,
        title,
        types,
        f"{WHISKERS} of the median; above a bar: its increase over plain; "
        "n.d.: the increase's interval includes 0 (not distinguishable)",
    )
    for row, q in enumerate(PERCENTILES):
        for col, connections in enumerate(counts):
            blocks = {b.script: b for b in analysis.blocks if b.connections == connections}
            x0, y0 = LEFT + col * (panel_w + COL_GAP), TOP + row * (PANEL_H + ROW_GAP)
            peak = max((i.high for b in blocks.values() for ln in b.lines if (i := ln.latency[q])), default=1.0)
            y = svg.panel(
                x0, y0, panel_w, f"p{q} (ms), {connections} connection{'s' * (connections != 1)}", span=(0, peak)
            )
            for g, script in enumerate(scripts):
                gx = x0 + GROUP_GAP + g * group_w
                svg.text(gx + len(types) * BAR / 2, y0 + PANEL_H + 16, script, anchor="middle")
                for line in blocks[script].lines if script in blocks else []:
                    interval = line.latency[q]
                    if interval is None:
                        continue
                    bx = gx + types.index(line.choice.security) * BAR
                    top = y(interval.estimate)
                    svg.add(
                        f'<rect x="{bx + 2:.1f}" y="{top:.1f}" width="{BAR - 4}" height="{y(0) - top:.1f}" '
                        f'fill="{COLOUR[line.choice.security]}"/>'
                    )
                    svg.whisker(bx + BAR / 2, y(interval.low), y(interval.high))
                    if line.choice.security is not SecurityType.NONE:
                        svg.text(bx + BAR / 2, y(interval.high) - 5, _short(line.increase[q]), anchor="middle", size=9)
    return svg.end()


def sweep_svg(analysis: Analysis, title: str) -> str:
    """Per script, median latency against connections per security type (log scales), then the increase over
    plain against connections at p50 and p99; every point with its interval's whisker."""
    scripts = list(dict.fromkeys(b.script for b in analysis.blocks))
    counts = sorted({b.connections for b in analysis.blocks})
    types = _types(analysis)
    rows: list[tuple[str, int]] = [*(("latency", q) for q in PERCENTILES), ("increase", 50), ("increase", 99)]
    panel_w = 300
    width = LEFT + len(scripts) * (panel_w + COL_GAP) + 20
    height = TOP + len(rows) * (PANEL_H + ROW_GAP)
    svg = _Svg(
        width, height, title, types, f"{WHISKERS} of the median latency; or of the paired increase; x: wrk connections"
    )
    octaves = math.log2(counts[-1]) - math.log2(counts[0]) or 1.0
    for row, (kind, q) in enumerate(rows):
        for col, script in enumerate(scripts):
            blocks = [b for b in analysis.blocks if b.script == script]
            x0, y0 = LEFT + col * (panel_w + COL_GAP), TOP + row * (PANEL_H + ROW_GAP)
            series = {
                security: [
                    (b.connections, i)
                    for b in blocks
                    for line in b.lines
                    if line.choice.security is security
                    and (i := (line.latency if kind == "latency" else line.increase)[q]) is not None
                ]
                for security in types
            }
            found = [i for points in series.values() for _, i in points]
            if kind == "latency":
                floor = min((i.low for i in found if i.low > 0), default=1.0)
                peak = max((i.high for i in found), default=10.0)
                y = svg.panel(x0, y0, panel_w, f"p{q} (ms, log scale), {script}", span=(floor, peak), log=True)
            else:
                low = min([0.0, *(i.low for i in found)])
                high = max([0.0, *(i.high for i in found)])
                y = svg.panel(x0, y0, panel_w, f"p{q} increase over plain (%), {script}", span=(low, high))
                svg.add(f'<line x1="{x0}" x2="{x0 + panel_w}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#888"/>')

            def x(connections: int, x0: float = x0) -> float:
                return x0 + 20 + (panel_w - 40) * (math.log2(connections) - math.log2(counts[0])) / octaves

            for connections in counts:
                svg.text(x(connections), y0 + PANEL_H + 16, str(connections), anchor="middle")
            for t, (security, points) in enumerate(series.items()):
                shift = 4 * (t - (len(types) - 1) / 2)  # keeps the whiskers of one count apart
                colour = COLOUR[security]
                path = " ".join(f"{x(c) + shift:.1f},{y(i.estimate):.1f}" for c, i in points)
                svg.add(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
                for c, i in points:
                    svg.whisker(x(c) + shift, y(i.low), y(i.high), colour=colour)
                    svg.add(f'<circle cx="{x(c) + shift:.1f}" cy="{y(i.estimate):.1f}" r="2.6" fill="{colour}"/>')
    return svg.end()


class _Svg:
    """An SVG document under construction: a title, a legend of the security types, panels with a y axis."""

    def __init__(self, width: float, height: float, title: str, types: list[SecurityType], caption: str) -> None:
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'font-family="sans-serif" font-size="11">',
            f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
        ]
        self.text(LEFT, 20, title, size=13, weight="bold")
        for i, part in enumerate(caption.split("; ")):
            self.text(LEFT, 36 + 13 * i, part, size=10, colour="#555")
        for i, security in enumerate(types):
            lx = LEFT + 90 * i
            self.add(f'<rect x="{lx}" y="62" width="12" height="12" fill="{COLOUR[security]}"/>')
            self.text(lx + 17, 72, LABEL[security])

    def add(self, part: str) -> None:
        self.parts.append(part)

    def text(
        self,
        x: float,
        y: float,
        what: str,
        *,
        anchor: str = "start",
        size: int = 11,
        weight: str = "normal",
        colour: str = "#222",
    ) -> None:
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" font-weight="{weight}" '
            f'fill="{colour}">{escape(what)}</text>'
        )

    def panel(
        self, x0: float, y0: float, width: float, title: str, *, span: tuple[float, float], log: bool = False
    ) -> Callable[[float], float]:
        """Draw a panel's frame, title and y ticks for values from `low` to `high` (with some room above; on a log
        scale, from the decade below `low` to the one above `high`); its value-to-y function."""
        low, high = span
        if log:
            bottom, top = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(max(high, low * 10)))
            decades = range(round(math.log10(bottom)), round(math.log10(top)) + 1)
            marks = [m * 10.0**e for e in decades for m in (1, 2, 5) if bottom <= m * 10.0**e <= top]
        else:
            room = (high - low) * 0.2 or 1.0
            bottom, top = (low - room if low < 0 else low), high + room
            marks = ticks(bottom, top)

        def scale(v: float) -> float:
            return math.log10(v) if log else v

        def y(value: float) -> float:
            value = min(max(value, bottom), top)
            return y0 + PANEL_H - PANEL_H * (scale(value) - scale(bottom)) / (scale(top) - scale(bottom))

        self.text(x0, y0 - 8, title, weight="bold")
        self.add(f'<rect x="{x0}" y="{y0}" width="{width}" height="{PANEL_H}" fill="none" stroke="#ccc"/>')
        for tick in marks:
            self.add(
                f'<line x1="{x0}" x2="{x0 + width}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>'
                f'<text x="{x0 - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
            )
        return y

    def whisker(self, x: float, low: float, high: float, colour: str = "#222") -> None:
        self.add(
            f'<path d="M{x - 4:.1f},{low:.1f}H{x + 4:.1f}M{x:.1f},{low:.1f}V{high:.1f}M{x - 4:.1f},{high:.1f}'
            f'H{x + 4:.1f}" stroke="{colour}" stroke-width="1.2" fill="none"/>'
        )

    def end(self) -> str:
        return "\n".join([*self.parts, "</svg>"]) + "\n"


def ticks(low: float, high: float) -> list[float]:
    """Round tick values from `low` to `high`: multiples of 1, 2 or 5 times a power of ten, at most six."""
    step = 10 ** math.floor(math.log10((high - low) / 5))
    for mult in (1, 2, 5, 10):
        if (high - low) / (step * mult) <= 5:
            step *= mult
            break
    return [i * step for i in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]


def _types(analysis: Analysis) -> list[SecurityType]:
    present = {line.choice.security for b in analysis.blocks for line in b.lines}
    return [s for s in ORDER if s in present]


def _short(increase: Interval | None) -> str:
    if increase is None:
        return "?"
    return "n.d." if increase.includes(0) else f"{increase.estimate:+.0f}%"
