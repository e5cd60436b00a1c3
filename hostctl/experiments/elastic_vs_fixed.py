"""Elastic versus fixed: replay load traces against one CVM's service with fixed sizes and each elastic policy
of its agent, repeated, and compare latency, SLO windows, worker-vCPU-seconds (against the oracle of a calibration
and against fixed-max), scale actions and reaction.

Shared by `bench/policies.py` (demo site) and `hostctl --site FILE experiment elastic-vs-fixed` (any site); the
calibration and oracle are `elastic_calibration` and `elastic_oracle`, the report `elastic_report`, its plot
`elastic_plot`.

Definitions:
- p50/p99 (nearest rank, `hostctl.stats`) are over every replayed request; a failed request counts with the time
  it took (at least the timeout).
- A 10 s window (by send time) is within the SLO when its p99 is at most the SLO and none of its requests failed.
- Worker-vCPU-seconds integrate the active workers (online vCPUs beyond the boot set) over the run, from the
  agent's audit log of scale events; boot vCPUs are the same in every run and left out. A run's events are those
  after the scale that set its start count, on the agent's own clock (the console's may be far off), fetched a
  bounded page at a time. Fixed-max's are (max - boot) x the trace's length.
- Reaction: at each rise of the oracle's need (`Oracle.rises`), the time from the moment the trace's rate first
  needs it (within that second: the load arrives) until the online vCPUs reach it; "never" when they do not before
  the need falls below it again.
- `oracle-replay` sizes the CVM by the oracle itself: the experiment scales it to the oracle's need at the start of
  each second whose need changes (with the driver's own delay to wake or park), with no policy on. It shows what the
  oracle's sizing gives on this machine: a window it misses, no policy at its cost could keep.
- The runs go round-robin: repeat 1 of every trace and run, then repeat 2, and so on; repeat k replays the same
  trace with the arrival times of seed k.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hostctl.client.link import Fleet, HostLink
from hostctl.client.ref import CVMRef
from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.experiments.elastic_calibration import MIN_REQUESTS, RATES, WHY, Progress, calibrate, running
from hostctl.experiments.elastic_oracle import Calibration, Oracle
from hostctl.load.trace import Request, Trace, replay
from hostctl.stats import percentile
from hostctl.wire.model import DomainState, Event

FIXED = ("fixed-min", "fixed-max")
REPLAYED = "oracle-replay"  # the oracle's sizing, applied by the experiment second by second
BASELINES = (*FIXED, REPLAYED)  # runs that are not the agent's policies
AUDIT_PAGE = 1000  # audit entries per request
AUDIT_MOST = 20_000  # audit entries one run may fetch: a policy that scales more often than this is broken
WINDOW_S = 10.0


@dataclass
class Run:
    """One replay of a trace under one way of sizing the CVM."""

    name: str
    trace: Trace
    boot: int
    max: int
    slo_ms: float
    requests: list[Request]
    online: list[tuple[float, int]]  # (seconds into the trace, online vCPUs), a step function
    actions: int
    repeat: int = 1

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

    def reactions(self, oracle: Oracle) -> list[tuple[float, int, float | None]]:
        """(second, vCPUs needed, seconds until online or None: never) at each rise of the oracle's need."""
        out: list[tuple[float, int, float | None]] = []
        for start, until, need in oracle.rises():
            if self.online_at(start) >= need:
                out.append((start, need, 0.0))
                continue
            reached = next((at for at, n in self.online if start < at < until and n >= need), None)
            out.append((start, need, None if reached is None else reached - start))
        return out

    def slowest_reaction(self, oracle: Oracle) -> float:
        """The longest reaction in seconds (inf when one never came; 0 without rises)."""
        return max((math.inf if s is None else s for *_, s in self.reactions(oracle)), default=0.0)


@dataclass
class Comparison:
    """All runs of one experiment, the calibration they are judged by, and where they ran."""

    target: str
    url: str
    calibration: Calibration
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def traces(self) -> list[Trace]:
        """Every trace replayed, in order of first use."""
        return list({run.trace.name: run.trace for run in self.runs}.values())

    @property
    def names(self) -> list[str]:
        """Every run's name, in order of first use."""
        return list(dict.fromkeys(run.name for run in self.runs))

    def of(self, trace: Trace, name: str) -> list[Run]:
        """The repeats of run `name` over `trace`."""
        return [r for r in self.runs if r.trace.name == trace.name and r.name == name]

    def oracle(self, trace: Trace) -> Oracle:
        return Oracle(trace, self.calibration)

    def fixed_max_seconds(self, trace: Trace) -> float:
        """Fixed-max's worker-vCPU-seconds over `trace`: every worker, all the time."""
        return (self.calibration.max - self.calibration.boot) * trace.seconds


async def on_site(
    site: Site,
    traces: list[Trace],
    *,
    cvm: str | None = None,
    runs: list[str] | None = None,
    repeats: int = 1,
    calibration: Calibration | None = None,
    rates: Sequence[float] = RATES,
    cell_s: float = 5.0,
    min_requests: int = MIN_REQUESTS,
    settle_s: float = 8.0,
    progress: Progress | None = None,
) -> Comparison:
    """Run the comparison on a site: `cvm` as HOST/CVM (default: the first running CVM with a service and worker
    vCPUs), `runs` by name (default: fixed-max, oracle-replay and every policy of its agent; fixed-min on request),
    judged by `calibration` (default: calibrate the CVM first at `rates`, each cell `cell_s` seconds or as long as
    `min_requests` take)."""
    fleet = Fleet(site, who="experiment")
    fleet.start()
    try:
        await fleet.ready()
        link, name, urls = _target(site, fleet, cvm)
        known = [*BASELINES, *await link.policies()]
        for run in runs or []:
            if run not in known:
                raise HostctlError(f"{link.name}: unknown run {run!r} (choose from {', '.join(known)})")
        if not urls:
            raise HostctlError(f"{link.name}/{name}: no service to send load to (list it in the site file)")
        slo_ms = site.defaults.slo_p99_ms
        if calibration is None:
            calibration = await calibrate(  # a cell's queue drains within a second
                link,
                name,
                urls[0],
                slo_ms=slo_ms,
                rates=rates,
                cell_s=cell_s,
                min_requests=min_requests,
                settle_s=min(settle_s, 1.0),
                progress=progress,
            )
        return await compare(
            link,
            name,
            urls[0],
            traces,
            runs or known[1:],
            calibration=calibration,
            repeats=repeats,
            settle_s=settle_s,
            progress=progress,
        )
    finally:
        await fleet.stop()


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
    traces: list[Trace],
    runs: list[str],
    *,
    calibration: Calibration,
    repeats: int = 1,
    settle_s: float = 8.0,
    progress: Progress | None = None,
) -> Comparison:
    """Replay each trace `repeats` times per run name (`fixed-min`, `fixed-max`, `oracle-replay` or one of the
    agent's policies), judged by `calibration`, which must be of this CVM and the site's SLO."""
    first = running(link, cvm)
    if first.max_vcpus <= first.boot_vcpus:
        raise HostctlError(
            f"{link.name}/{cvm}: no worker vCPUs to scale (boot {first.boot_vcpus}, max {first.max_vcpus})"
        )
    target = f"{link.name}/{cvm}"
    mine = (target, first.boot_vcpus, first.max_vcpus)
    if (calibration.target, calibration.boot, calibration.max) != mine:
        raise HostctlError(
            f"calibration of {calibration.target} (boot {calibration.boot}, max {calibration.max}), not of "
            f"{target} (boot {first.boot_vcpus}, max {first.max_vcpus}): calibrate this CVM"
        )
    described = await link.policies()
    known = [*BASELINES, *described]
    for name in runs:
        if name not in known:
            raise HostctlError(f"{link.name}: unknown run {name!r} (choose from {', '.join(known)})")
    result = Comparison(target, url, calibration)
    result.notes += [f"`{name}`: {described[name]}" for name in runs if name in described]
    plan = [(repeat, trace, name) for repeat in range(1, repeats + 1) for trace in traces for name in runs]
    for i, (repeat, trace, name) in enumerate(plan, start=1):
        if progress is not None:
            await progress(f"run {i}/{len(plan)}: {name} on {trace.name}, repeat {repeat} ({trace.seconds:.0f} s)")
        result.runs.append(
            await _run(
                link,
                cvm,
                url,
                trace,
                name,
                slo_ms=calibration.slo_ms,
                settle_s=settle_s,
                has_policies=bool(described),
                repeat=repeat,
                oracle=Oracle(trace, calibration),
            )
        )
    return result


async def _run(
    link: HostLink,
    cvm: str,
    url: str,
    trace: Trace,
    name: str,
    *,
    slo_ms: float,
    settle_s: float,
    has_policies: bool,
    repeat: int,
    oracle: Oracle,
) -> Run:
    if has_policies:
        await link.set_policy(cvm, enabled=False)
    current = running(link, cvm)
    start_count = {"fixed-max": current.max_vcpus, REPLAYED: oracle.need[0]}.get(name, current.boot_vcpus)
    start = await link.scale(cvm, start_count, expect=None, why=WHY)  # stamped by the agent's clock
    skew = start.ts - time.time()  # the agent's clock less ours, within a round trip
    await asyncio.sleep(settle_s)  # let the previous run's queue drain and the policies' windows forget it
    if name not in BASELINES:
        await link.set_policy(cvm, name=name, enabled=True)
    began = time.time()
    following = asyncio.create_task(_follow(link, cvm, oracle, began)) if name == REPLAYED else None
    try:
        requests = await replay(trace, url, seed=repeat)
    finally:
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        if name not in BASELINES:
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
    return Run(name, trace, current.boot_vcpus, current.max_vcpus, slo_ms, requests, online, len(events), repeat)


async def _follow(link: HostLink, cvm: str, oracle: Oracle, began: float) -> None:
    """Scale `cvm` to the oracle's need at the start of each second whose need changes (`began`: the trace's start,
    on this machine's clock)."""
    for t, need in enumerate(oracle.need):
        if t > 0 and need != oracle.need[t - 1]:
            await asyncio.sleep(max(0.0, began + t - time.time()))
            await link.scale(cvm, need, expect=None, why=f"{WHY}: the oracle's need")


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
