"""Elastic versus fixed: replay one bursty trace against one CVM's service with fixed-min, fixed-max and each
elastic policy of its agent, and compare latency, SLO windows, worker-vCPU-seconds, scale actions and reaction.

Shared by `bench/policies.py` (demo site) and `hostctl --site FILE experiment elastic-vs-fixed` (any site); the
report is `hostctl.experiments.elastic_report`, its plot `hostctl.experiments.elastic_plot`.

Definitions:
- p50/p99 (nearest rank, `hostctl.stats`) are over every replayed request; a failed request counts with the time
  it took (at least the timeout).
- A 10 s window (by send time) is within the SLO when its p99 is at most the SLO and none of its requests failed.
- Worker-vCPU-seconds integrate the active workers (online vCPUs beyond the boot set) over the run, from the
  agent's audit log of scale events; boot vCPUs are the same in every run and left out. A run's events are those
  after the scale that set its start count, on the agent's own clock (the console's may be far off), fetched a
  bounded page at a time.
- Reaction to a load step is the time from the step until the online vCPUs reach "enough" for the new rate:
  ceil(rate x service time / 0.8), capped at max, with the service time the p50 of fixed-max's first quiet phase
  (or, without a fixed-max run, the run's own). "never" when the count is not reached before the phase ends.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hostctl.client.link import Fleet, HostLink
from hostctl.client.ref import CVMRef
from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.load.trace import Request, Trace, replay
from hostctl.stats import percentile
from hostctl.wire.model import CVM, DomainState, Event

FIXED = ("fixed-min", "fixed-max")
AUDIT_PAGE = 1000  # audit entries per request
AUDIT_MOST = 20_000  # audit entries one run may fetch: a policy that scales more often than this is broken
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
        out: list[tuple[float, float, bool]] = []
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
        for (at, n), (until, _) in itertools.pairwise([*self.online, (end, 0)]):
            total += max(0.0, min(until, end) - max(at, 0.0)) * (n - self.boot)
        return total

    def reactions(self, service_ms: float) -> list[tuple[float, float, float | None]]:
        """(step time, new rate, seconds until enough vCPUs or None) per load step of the trace."""
        out: list[tuple[float, float, float | None]] = []
        steps = self.trace.steps()
        ends = [*(start for start, _ in steps[1:]), self.trace.seconds]
        for (start, rate), end in zip(steps, ends, strict=True):
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

    @property
    def fixed_max(self) -> Run | None:
        """The fixed-max run, the baseline of the worker-vCPU-seconds and of the service time; None without one."""
        return next((r for r in self.runs if r.name == "fixed-max"), None)

    def service_ms(self) -> float:
        """The service time the reactions are judged by: fixed-max's (else the first run's) quiet p50."""
        return (self.fixed_max or self.runs[0]).service_ms()


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
    start = await link.scale(cvm, start_count, expect=None, why=WHY)  # stamped by the agent's clock
    skew = start.ts - time.time()  # the agent's clock less ours, within a round trip
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
    began, ended = began + skew, ended + skew  # on the agent's clock, which stamps the audit log
    events = [
        e
        for e in await audit_since(link, start.ts)
        if e.cvm == cvm and e.action == "scale" and e.ok and began <= e.ts <= ended and e.before != e.after
    ]
    steps = [(e.ts - began, e.after) for e in sorted(events, key=lambda e: e.ts) if e.after is not None]
    online = [(0.0, start_count), *steps]
    return Run(name, trace, current.boot_vcpus, current.max_vcpus, slo_ms, requests, online, len(events))


async def audit_since(link: HostLink, since: float) -> list[Event]:
    """The agent's audit entries after `since` (its own clock), a page at a time; HostctlError past `AUDIT_MOST`."""
    events: list[Event] = []
    while True:
        page = await link.audit(AUDIT_PAGE, since=since)
        events += page
        if len(page) < AUDIT_PAGE:
            return events
        if len(events) >= AUDIT_MOST:
            raise HostctlError(f"{link.name}: more than {AUDIT_MOST} audit entries in one run; not read further")
        since = page[-1].ts


def _cvm(link: HostLink, name: str) -> CVM:
    cvm = link.cvm(name)
    if cvm is None:
        raise HostctlError(f"{link.name}: no CVM {name!r}")
    if cvm.state is not DomainState.RUNNING:
        raise HostctlError(f"{link.name}/{name}: it is {cvm.state.value}, not running")
    return cvm
