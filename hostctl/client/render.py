"""Human-readable lines and tables for hosts, scale results, audit events and doctor reports."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from hostctl.wire.doctor import Report, Status
from hostctl.wire.model import CVM, Event, Snapshot


def format_snapshot(snapshot: Snapshot, *, services: bool = False) -> str:
    """The human-readable status table."""
    h = snapshot.host
    caps = " ".join(f"{label} {_yes(v)}" for label, v in (("SEV", h.sev), ("SEV-ES", h.sev_es), ("SNP", h.sev_snp)))
    lines = [
        f"{h.name}  {h.cpus} CPUs  {h.memory_mib / 1024:.1f} GiB  CPU {h.cpu_percent:.1f}%  {caps}  "
        f"libvirt {h.libvirt_version}"
    ]
    rows = [("CVM", "SECURITY", "STATE", "BOOT", "WORKERS", "CPU%", "DRIVER", "POLICY")]
    for c in snapshot.cvms:
        rows.append(
            (
                c.name,
                c.security.value,
                c.state.value,
                str(c.boot_vcpus),
                f"{'?' if c.workers_active is None else c.workers_active}/{c.workers_max}",
                "-" if c.cpu_percent is None else f"{c.cpu_percent:.1f}",
                c.driver,
                f"{c.policy:#x} {','.join(c.policy_flags)}" if c.security.confidential else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    lines += [f"  {c.name}: online vCPUs {online_text(c)}" for c in snapshot.cvms if c.online_vcpus is None]
    if services:
        lines += [f"  {s.cvm}/{s.name}: {s.url}" for s in snapshot.services]
    return "\n".join(lines)


def online_text(cvm: CVM, now: float | None = None) -> str:
    """The online vCPU count, or `unknown (why; last known 2, 34 s ago)`."""
    if cvm.online_vcpus is not None:
        return str(cvm.online_vcpus)
    last = ""
    if cvm.last_online is not None:
        age = "" if cvm.last_online_at is None else f", {(now or time.time()) - cvm.last_online_at:.0f} s ago"
        last = f"; last known {cvm.last_online}{age}"
    return f"unknown ({cvm.vcpus_error or 'not counted'}{last})"


def _yes(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"


def format_scale(event: Event) -> str:
    """One line for a scale result."""
    if event.before == event.after:
        return f"{event.host}/{event.cvm}: already at {event.after} vCPUs; nothing changed"
    return f"{event.host}/{event.cvm}: {event.before} -> {event.after} vCPUs"


def format_event(event: Event, *, as_json: bool = False) -> str:
    """One audit line: when, where, what, who, why."""
    if as_json:
        return event.to_json()
    when = datetime.fromtimestamp(event.ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    outcome = "ok" if event.ok else "ALERT" if event.action == "alert" else "REFUSED"
    if (event.before, event.after) == (None, None):
        change = ""
    elif not event.ok and event.before == event.after:  # refused: the count it stayed at
        change = f" at {_count(event.after)}"
    else:
        change = f" {_count(event.before)}->{_count(event.after)}"
    return f"{when} {event.host}/{event.cvm} {event.action}{change} {outcome} by {event.who}" + (
        f": {event.why}" if event.why else ""
    )


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def format_doctor(report: Report) -> str:
    """The checklist: one line per check (ok, warn, FAIL, emulated, n/a), the advice under each one not ok, and a
    summary."""
    lines = [f"{report.host}: doctor" + (f" (emulated: {report.emulated})" if report.emulated else "")]
    width = max((len(c.name) for c in report.checks), default=0)
    for check in report.checks:
        status = "FAIL" if check.status is Status.FAIL else check.status.value
        lines.append(f"  {status:<8}  {check.name:<{width}}  {check.detail}")
        if check.advice and check.status in (Status.FAIL, Status.WARN):
            lines.append(f"  {'':<8}  {'':<{width}}  -> {check.advice}")
    counts = ", ".join(
        f"{report.count(s)} {'FAIL' if s is Status.FAIL else s.value}"
        for s in Status
        if report.count(s) or s is Status.FAIL
    )
    lines.append(f"  {'passed' if report.passed else 'FAILED'}: {counts}")
    return "\n".join(lines)
