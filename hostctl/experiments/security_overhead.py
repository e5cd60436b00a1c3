"""The security-overhead experiment: rounds of interleaved wrk runs against comparable CVMs of each security
type. In every round each type runs once per script and connection count, in a shuffled order, so a change of
background load over time falls on every type alike instead of on whichever ran last; the report gives medians
over rounds with bootstrap intervals (`overhead_stats`).

Comparable means running, serving the script's service, with the same number of online vCPUs: the count shared by
the most security types is used, and a type with no CVM of that count is left out and said so. A CVM found with
another count is not run that time, and a run during which its count changed is left out of the statistics: both
are said in the report's notes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.experiments.overhead_report import Report
from hostctl.experiments.overhead_runs import LABEL, ORDER, Choice, Measurement, Plan
from hostctl.load import wrk
from hostctl.load.generators import LoadHost, LocalLoadHost, Target, Targets, run_load
from hostctl.load.runs import RunLog
from hostctl.wire.model import DomainState, Snapshot
from hostctl.wire.security import SecurityType

WHY = "experiment security-overhead"
SETTLE_S = 1.0  # pause between runs, so one run's queued requests drain before the next starts

Progress = Callable[[str, float], Awaitable[None]]
"""An async callback given (what runs now, fraction of the whole experiment done 0..1)."""


@dataclass(frozen=True)
class Step:
    """One run of the schedule."""

    round: int
    script: str
    connections: int
    choice: Choice


def service_for(script: str | None) -> str:
    """The service an experiment with `script` targets: the script's own endpoint, or home-timeline."""
    return script if script in wrk.SCRIPTS and script != "mixed" else "home-timeline"


def choose(snapshots: Mapping[str, Snapshot], targets: Targets, service: str) -> tuple[list[Choice], list[str]]:
    """One comparable running CVM per security type serving `service`, and notes on the types left out."""
    by_cvm = {(t.host, t.cvm): t for t in targets if t.service == service}
    found: dict[SecurityType, list[Choice]] = {}
    for host, snapshot in sorted(snapshots.items()):
        for cvm in snapshot.cvms:
            target = by_cvm.get((host, cvm.name))
            if cvm.state is DomainState.RUNNING and cvm.online_vcpus is not None and target is not None:
                found.setdefault(cvm.security, []).append(Choice(cvm.security, cvm.online_vcpus, target))
    if not found:
        raise HostctlError(f"no running CVM serves {service!r} in the site inventory; nothing ran")
    counts = {c.vcpus for choices in found.values() for c in choices}

    def coverage(vcpus: int) -> tuple[int, bool, int]:
        types = {s for s, choices in found.items() if any(c.vcpus == vcpus for c in choices)}
        return len(types), SecurityType.NONE in types, -vcpus

    vcpus = max(counts, key=coverage)
    chosen, notes = [], []
    for security in ORDER:
        same = [c for c in found.get(security, []) if c.vcpus == vcpus]
        if same:
            chosen.append(same[0])
        elif security in found:
            others = ", ".join(f"{c.target.host}/{c.target.cvm} has {c.vcpus}" for c in found[security])
            notes.append(f"{LABEL[security]} left out: no running CVM with {vcpus} online vCPUs ({others})")
        else:
            notes.append(f"{LABEL[security]} left out: no running CVM of this type serves {service!r}")
    return chosen, notes


def choose_all(
    snapshots: Mapping[str, Snapshot], targets: Targets, scripts: tuple[str, ...]
) -> tuple[dict[str, list[Choice]], list[str]]:
    """The comparable CVMs per script, and notes on what was left out; HostctlError when no script has any."""
    chosen: dict[str, list[Choice]] = {}
    notes: list[str] = []
    failures: list[HostctlError] = []
    for script in scripts:
        try:
            chosen[script], left_out = choose(snapshots, targets, service_for(script))
        except HostctlError as e:
            failures.append(e)
            notes.append(f"script {script} left out: no running CVM serves {service_for(script)!r}")
            continue
        notes += left_out
    if not chosen:
        raise failures[0]
    return chosen, list(dict.fromkeys(notes))


def schedule(plan: Plan, chosen: Mapping[str, list[Choice]]) -> list[Step]:
    """Every round runs each (script, connections) block once and, within it, each chosen type once; blocks and
    types in an order shuffled anew each round by the plan's seeded generator."""
    rng = random.Random(plan.seed)
    blocks = [(s, c) for s, c in plan.blocks() if s in chosen]
    steps = []
    for r in range(1, plan.rounds + 1):
        for script, connections in rng.sample(blocks, len(blocks)):
            steps += [Step(r, script, connections, c) for c in rng.sample(chosen[script], len(chosen[script]))]
    return steps


def estimate_s(plan: Plan, types: int = len(ORDER)) -> float:
    """About how long the plan runs with `types` security types."""
    return plan.rounds * len(plan.blocks()) * types * (plan.duration_s + SETTLE_S)


async def security_overhead(
    site: Site,
    snapshots: Callable[[], Mapping[str, Snapshot]],
    plan: Plan,
    *,
    host: LoadHost | None = None,
    progress: Progress | None = None,
    history: RunLog | None = None,
    settle_s: float = SETTLE_S,
) -> Report:
    """Run the experiment: `snapshots()` gives each host's current snapshot (read before and after each run)."""
    current = snapshots()
    targets = Targets(site, {name: s.services for name, s in current.items()})
    chosen, notes = choose_all(current, targets, plan.scripts)
    host = host or LocalLoadHost()
    missing = [f"host {h.name} not reached; its CVMs were not considered" for h in site.hosts if h.name not in current]
    report = Report(plan, host.name, time.time(), notes=missing + notes)
    steps = schedule(plan, chosen)
    for i, step in enumerate(steps):
        choice = step.choice
        where = f"{step.script} at {step.connections} connection{'s' * (step.connections != 1)}"
        label = (
            f"round {step.round}/{plan.rounds}, {where}: {LABEL[choice.security]} on {choice.cvm} "
            f"(run {i + 1}/{len(steps)})"
        )

        async def tick(elapsed: float, total: float, i: int = i, label: str = label) -> None:
            if progress is not None:
                await progress(label, (i + elapsed / total) / len(steps))

        if i:
            await asyncio.sleep(settle_s)
        if (before := _online(snapshots(), choice.target)) != choice.vcpus:
            report.notes.append(
                f"round {step.round}, {where}, {choice.cvm}: not run, {before} online vCPUs instead of {choice.vcpus}"
            )
            continue
        started = time.time()
        record = await run_load(
            site,
            targets,
            choice.target.url,
            plan.params(step.script, step.connections),
            host=host,
            progress=tick,
            history=history,
            why=WHY,
            labels={"security": choice.security.value, "round": str(step.round)},
        )
        excluded = ""
        if (after := _online(snapshots(), choice.target)) != choice.vcpus:
            excluded = f"online vCPUs changed from {choice.vcpus} to {after} during the run"
            report.notes.append(f"round {step.round}, {where}, {choice.cvm}: left out of the statistics: {excluded}")
        report.measurements.append(
            Measurement(step.round, i + 1, step.script, step.connections, choice, started, record.result, excluded)
        )
    if progress is not None:
        await progress("done", 1.0)
    return report


def _online(snapshots: Mapping[str, Snapshot], target: Target) -> int | None:
    snapshot = snapshots.get(target.host)
    cvm = next((c for c in snapshot.cvms if c.name == target.cvm), None) if snapshot else None
    return cvm.online_vcpus if cvm else None
