"""Elastic versus fixed: replay one bursty trace against one CVM's service with fixed-min, fixed-max and each
elastic policy of its agent, and compare latency, SLO windows, worker-vCPU-seconds, scale actions and reaction.

Shared by `bench/policies.py` (demo site) and `hostctl --site FILE experiment elastic-vs-fixed` (any site).

Definitions:
- p50/p99 (nearest rank, `hostctl.stats`) are over every replayed request; a failed request counts with the time
  it took (at least the timeout).
- A 10 s window (by send time) is within the SLO when its p99 is at most the SLO and none of its requests failed.
- Worker-vCPU-seconds integrate the active workers (online vCPUs beyond the boot set) over the run, from the
  agent's audit log of scale events; boot vCPUs are the same in every run and left out.
- Reaction to a load step is the time from the step until the online vCPUs reach "enough" for the new rate:
  ceil(rate x service time / 0.8), capped at max, with the service time the p50 of fixed-max's first quiet phase
  (or, without a fixed-max run, the run's own). "never" when the count is not reached before the phase ends.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from hostctl.client.link import Fleet, HostLink
from hostctl.client.ref import CVMRef
from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.load.trace import Request, Trace, replay
from hostctl.stats import percentile
from hostctl.wire.model import CVM, DomainState

FIXED = ("fixed-min", "fixed-max")
WINDOW_S = 10.0
UTILISATION = 0.8
WHY = "experiment elastic-vs-fixed"

Progress = Callable[[str], Awaitable[None]]


@dataclass
class Run:
    """One replay of the trace under one way of sizing the CVM."""

    name: str
    trace: Trace
    boot: int
    max: int
    slo_ms: float
    requests: list[Request]
    online: list[tuple[float, int]]  # (seconds into the trace, online vCPUs), a step function
    actions: int

    def percentile(self, q: float) -> float:
        """The `q`-th percentile (e.g. 99) of every request's latency; nan without requests."""
        return percentile((r.ms for r in self.requests), q / 100) if self.requests else math.nan

    @property
    def errors(self) -> int:
        return sum(not r.ok for r in self.requests)

    def windows(self, seconds: float = WINDOW_S) -> list[tuple[float, float, bool]]:
        """(start, p99, within the SLO) per whole window of the trace."""
        out = []
        for i in range(int(self.trace.seconds // seconds)):
            start = i * seconds
            inside = [r for r in self.requests if start <= r.at < start + seconds]
            p99 = percentile((r.ms for r in inside), 0.99) if inside else 0.0
            out.append((start, p99, p99 <= self.slo_ms and all(r.ok for r in inside)))
        return out

    @property
    def within_slo(self) -> float:
        windows = self.windows()
        return sum(ok for *_, ok in windows) / len(windows) if windows else math.nan

    def online_at(self, t: float) -> int:
        count = self.online[0][1]
        for at, n in self.online:
            if at > t:
                break
            count = n
        return count

    @property
    def worker_seconds(self) -> float:
        total, end = 0.0, self.trace.seconds
        for (at, n), (until, _) in zip(self.online, [*self.online[1:], (end, 0)]):
            total += max(0.0, min(until, end) - max(at, 0.0)) * (n - self.boot)
        return total

    def reactions(self, service_ms: float) -> list[tuple[float, float, float | None]]:
        """(step time, new rate, seconds until enough vCPUs or None) per load step of the trace."""
        out = []
        ends = [start for start, _ in self.trace.steps()][1:] + [self.trace.seconds]
        for (start, rate), end in zip(self.trace.steps(), ends):
            enough = min(self.max, math.ceil(rate * service_ms / 1000 / UTILISATION))
            if self.online_at(start) >= enough:
                out.append((start, rate, 0.0))
                continue
            reached = next((at for at, n in self.online if start < at < end and n >= enough), None)
            out.append((start, rate, None if reached is None else reached - start))
        return out

    def service_ms(self) -> float:
        """The p50 latency of the first phase (quiet load): the service time as the client sees it."""
        first = self.trace.phases[0].seconds
        ms = [r.ms for r in self.requests if r.at < first and r.ok]
        return percentile(ms, 0.5) if ms else math.nan


@dataclass
class Comparison:
    """All runs of one experiment and where they ran."""

    target: str
    url: str
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def service_ms(self) -> float:
        fixed_max = next((r for r in self.runs if r.name == "fixed-max"), None)
        return (fixed_max or self.runs[0]).service_ms()

    def markdown(self) -> str:
        service = self.service_ms()
        fixed_max = next((r for r in self.runs if r.name == "fixed-max"), None)
        lines = [
            "| run | p50 ms | p99 ms | 10 s windows within SLO | worker-vCPU-s | vs fixed-max | scale actions "
            "| reaction to steps (s) | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for run in self.runs:
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

    def verdicts(self) -> list[str]:
        """Each elastic run against the targets: SLO met in >= 99% of windows, <= 60% of fixed-max's
        worker-vCPU-seconds, and every reaction within 1 s."""
        fixed_max = next((r for r in self.runs if r.name == "fixed-max"), None)
        lines = []
        for run in self.runs:
            if run.name in FIXED:
                continue
            reactions = [s for *_, s in run.reactions(self.service_ms())]
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

    def save(self, out: Path, stem: str = "elastic-vs-fixed", header: str = "") -> tuple[Path, Path]:
        """Write `stem.md` (the table) and `stem.svg` (the timeline) into `out`."""
        out.mkdir(parents=True, exist_ok=True)
        md, svg = out / f"{stem}.md", out / f"{stem}.svg"
        run = self.runs[0]
        steps = ", ".join(f"{rate:.0f} req/s at {start:.0f} s" for start, rate in run.trace.steps())
        text = [
            header or "# Elastic versus fixed",
            "",
            f"Target: `{self.target}` ({self.url}), boot {run.boot} / max {run.max} vCPUs, SLO p99 ≤ "
            f"{run.slo_ms:g} ms. Trace: {run.trace.seconds:.0f} s, open-loop Poisson arrivals "
            f"({' → '.join(p.name for p in run.trace.phases)}); load steps: {steps}. Service time seen "
            f"by the client at quiet load: {self.service_ms():.1f} ms.",
            "",
            self.markdown(),
            "",
            *(f"- {verdict}" for verdict in self.verdicts()),
            "",
            *(f"- {note}" for note in self.notes),
            "",
            f"![timeline]({svg.name})",
            "",
        ]
        md.write_text("\n".join(text))
        svg.write_text(timeline_svg(self.runs))
        return md, svg


async def on_site(
    site: Site,
    trace: Trace,
    *,
    cvm: str | None = None,
    runs: list[str] | None = None,
    settle_s: float = 8.0,
    progress: Progress | None = None,
) -> Comparison:
    """Run the comparison on a site: `cvm` as HOST/CVM (default: the first running CVM with a service and worker
    vCPUs), `runs` by name (default: fixed-min, fixed-max and every policy of its agent)."""
    fleet = Fleet(site, who="experiment")
    fleet.start()
    try:
        await fleet.ready()
        link, name, urls = _target(site, fleet, cvm)
        known = await _runs(link)
        for run in runs or []:
            if run not in known:
                raise HostctlError(f"{link.name}: unknown run {run!r} (choose from {', '.join(known)})")
        if not urls:
            raise HostctlError(f"{link.name}/{name}: no service to send load to (list it in the site file)")
        return await compare(
            link,
            name,
            urls[0],
            trace,
            runs or known,
            slo_ms=site.defaults.slo_p99_ms,
            settle_s=settle_s,
            progress=progress,
        )
    finally:
        await fleet.stop()


async def _runs(link: HostLink) -> list[str]:
    """The runs this host's agent can do: the fixed sizes and its policies."""
    return [*FIXED, *await link.policies()]


def _target(site: Site, fleet: Fleet, wanted: str | None) -> tuple[HostLink, str, list[str]]:
    """The link, CVM name and service URLs to measure (with `wanted`, possibly none)."""
    if wanted is not None:
        ref = CVMRef.parse(wanted)
        candidates = [(fleet.link(ref.host), ref.cvm)]
    else:
        candidates = [
            (link, c.name)
            for link in fleet.links.values()
            if link.snapshot is not None
            for c in link.snapshot.cvms
            if c.state is DomainState.RUNNING and c.max_vcpus > c.boot_vcpus
        ]
    for link, name in candidates:
        if link.snapshot is None:
            raise HostctlError(f"{link.name}: not reachable ({link.error or link.state.value})")
        urls = [s.url for s in link.snapshot.services if s.cvm == name]
        urls += [s.url for s in site.services_of(link.name, name)]
        if urls or wanted is not None:
            return link, name, urls
    raise HostctlError("no running CVM with worker vCPUs and a service on this site")


async def compare(
    link: HostLink,
    cvm: str,
    url: str,
    trace: Trace,
    runs: list[str],
    *,
    slo_ms: float,
    settle_s: float = 8.0,
    progress: Progress | None = None,
) -> Comparison:
    """Replay `trace` once per run name: `fixed-min`, `fixed-max` or one of the agent's policies."""
    first = _cvm(link, cvm)
    if first.max_vcpus <= first.boot_vcpus:
        raise HostctlError(
            f"{link.name}/{cvm}: no worker vCPUs to scale (boot {first.boot_vcpus}, max {first.max_vcpus})"
        )
    described = await link.policies()
    known = [*FIXED, *described]
    for name in runs:
        if name not in known:
            raise HostctlError(f"{link.name}: unknown run {name!r} (choose from {', '.join(known)})")
    result = Comparison(f"{link.name}/{cvm}", url)
    result.notes += [f"`{name}`: {described[name]}" for name in runs if name in described]
    for i, name in enumerate(runs, start=1):
        if progress is not None:
            await progress(f"run {i}/{len(runs)}: {name} ({trace.seconds:.0f} s)")
        result.runs.append(
            await _run(link, cvm, url, trace, name, slo_ms=slo_ms, settle_s=settle_s, has_policies=bool(described))
        )
    return result


async def _run(
    link: HostLink, cvm: str, url: str, trace: Trace, name: str, *, slo_ms: float, settle_s: float, has_policies: bool
) -> Run:
    if has_policies:
        await link.set_policy(cvm, enabled=False)
    current = _cvm(link, cvm)
    start_count = current.max_vcpus if name == "fixed-max" else current.boot_vcpus
    await link.scale(cvm, start_count, expect=None, why=WHY)
    await asyncio.sleep(settle_s)  # let the previous run's queue drain and the policies' windows forget it
    if name not in FIXED:
        await link.set_policy(cvm, name=name, enabled=True)
    began = time.time()
    try:
        requests = await replay(trace, url)
    finally:
        if name not in FIXED:
            await link.set_policy(cvm, enabled=False)
    ended = time.time()
    events = [
        e
        for e in await link.audit(100_000)
        if e.cvm == cvm and e.action == "scale" and e.ok and began <= e.ts <= ended and e.before != e.after
    ]
    online = [(0.0, start_count)] + [(e.ts - began, e.after) for e in sorted(events, key=lambda e: e.ts)]
    return Run(name, trace, current.boot_vcpus, current.max_vcpus, slo_ms, requests, online, len(events))


def _cvm(link: HostLink, name: str) -> CVM:
    cvm = link.cvm(name)
    if cvm is None:
        raise HostctlError(f"{link.name}: no CVM {name!r}")
    if cvm.state is not DomainState.RUNNING:
        raise HostctlError(f"{link.name}/{name}: it is {cvm.state.value}, not running")
    return cvm


# -- the timeline plot ---------------------------------------------------------------------------------

COLOURS = ("#888888", "#222222", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e")
WIDTH, PANEL, LEFT, RIGHT, GAP = 900, 170, 70, 150, 40


def timeline_svg(runs: list[Run], bin_s: float = 2.0) -> str:
    """Three panels over the trace's time: offered load, online vCPUs per run, p99 per `bin_s` per run."""
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
        for t in range(0, int(span) + 1, 30):
            parts.append(f'<text x="{x(t):.1f}" y="{top + PANEL + 14}" text-anchor="middle">{t} s</text>')
        return y

    peak = max(trace.rate(t / 10) for t in range(int(span * 10)))
    y = panel(0, "offered load (req/s)", peak * 1.1, _ticks(peak * 1.1), lambda v: v, lambda v: f"{v:g}")
    points = " ".join(f"{x(t / 4):.1f},{y(trace.rate(t / 4)):.1f}" for t in range(int(span * 4)))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#444" stroke-width="1.5"/>')

    top_vcpus = max(r.max for r in runs)
    y = panel(
        1,
        "online vCPUs",
        top_vcpus + 0.5,
        list(range(0, top_vcpus + 1, max(1, top_vcpus // 4))),
        lambda v: v,
        lambda v: f"{v:g}",
    )
    for i, run in enumerate(runs):
        steps = [*run.online, (span, run.online[-1][1])]
        path = " ".join(
            f"{x(min(at, span)):.1f},{y(n + 0.06 * (i - len(runs) / 2)):.1f} "
            f"{x(min(nxt, span)):.1f},{y(n + 0.06 * (i - len(runs) / 2)):.1f}"
            for (at, n), (nxt, _) in zip(steps, steps[1:])
        )
        parts.append(f'<polyline points="{path}" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="1.5"/>')

    slo = runs[0].slo_ms
    y = panel(
        2,
        f"p99 per {bin_s:g} s (ms, log scale; dashed: SLO {slo:g} ms)",
        5000,
        [1, 10, 100, 1000],
        lambda v: math.log10(max(v, 1.0)),
        lambda v: f"{v:g}",
    )
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(slo):.1f}" y2="{y(slo):.1f}" stroke="#d62728" '
        f'stroke-dasharray="4 3"/>'
    )
    for i, run in enumerate(runs):
        points = []
        for b in range(int(span // bin_s)):
            ms = [r.ms for r in run.requests if b * bin_s <= r.at < (b + 1) * bin_s]
            if ms:
                p99 = percentile(ms, 0.99)
                points.append(f"{x((b + 0.5) * bin_s):.1f},{y(min(p99, 5000)):.1f}")
        parts.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="{COLOURS[i % len(COLOURS)]}" '
            f'stroke-width="1.5"/>'
        )

    for i, run in enumerate(runs):
        ly = GAP + PANEL + GAP + 14 + 18 * i
        colour = COLOURS[i % len(COLOURS)]
        parts.append(
            f'<line x1="{WIDTH - RIGHT + 12}" x2="{WIDTH - RIGHT + 32}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"/><text x="{WIDTH - RIGHT + 38}" y="{ly}">{run.name}</text>'
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
