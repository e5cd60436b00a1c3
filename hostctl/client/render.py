"""Human-readable lines and tables for hosts, scale results, audit events and doctor reports."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from hostctl.wire.doctor import Report, Status
from hostctl.wire.model import CVM, Event, Host, Snapshot
from hostctl.wire.security import SecurityType


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
    lines += [f"  {line}" for line in sev_lines(h)]
    smt = None if h.confidential is None else h.confidential.smt
    for c in snapshot.cvms:
        lines += [f"  {c.name}: {label} {value}" for label, value, _ in launch_facts(c, smt)]
    if services:
        lines += [f"  {s.cvm}/{s.name}: {s.url}" for s in snapshot.services]
    return "\n".join(lines)


def sev_lines(host: Host) -> list[str]:
    """The host's SEV facts: supported and enabled per type, ASID slots used of max, firmware, SMT; then what is
    unknown and why."""
    f = host.confidential
    if f is None:
        return ["SEV facts: unknown (the agent predates them)"]
    kinds = (
        ("SEV", host.sev, f.sev_enabled),
        ("SEV-ES", host.sev_es, f.sev_es_enabled),
        ("SNP", host.sev_snp, f.sev_snp_enabled),
    )
    lines = [
        ("emulated (demo): " if f.emulated else "")
        + "  ".join(f"{label} supported {_yes(s)} enabled {_yes(e)}" for label, s, e in kinds)
        + f"  /dev/sev {_yes(f.dev_sev)}",
        f"slots: SEV {slots_text(f.sev_guests, f.max_guests)}  ES/SNP {slots_text(f.es_guests, f.max_es_guests)}  "
        f"firmware {f.firmware or '?'}{f' (from {f.firmware_from})' if f.firmware_from else ''}  "
        f"SMT {'?' if f.smt is None else 'on' if f.smt else 'off'}",
    ]
    if f.es_free == 0 and f.max_es_guests:
        lines.append(f"ES/SNP slots full: no other SEV-ES or SNP CVM can launch on {host.name}")
    lines += [f"unknown {', '.join(names)}: {why}" for why, names in _by_reason(f.why).items()]
    return lines


def _by_reason(why: dict[str, str]) -> dict[str, list[str]]:
    """Fields grouped by why they are unknown (one line per reason)."""
    grouped: dict[str, list[str]] = {}
    for name, reason in why.items():
        grouped.setdefault(reason, []).append(name)
    return grouped


def slots_text(used: int, maximum: int | None) -> str:
    """`2/15` slots used of the most the firmware allows, `2/?` when the maximum is unknown."""
    return f"{used}/{'?' if maximum is None else maximum}"


def launch_facts(cvm: CVM, host_smt: bool | None) -> list[tuple[str, str, bool]]:
    """A confidential CVM's launch facts as (label, value, risky): risky policy bits, SMT allowed against the host's
    SMT, and while it runs its measurement, API version, SNP host data, kernel hashes, ID block and author key."""
    if not cvm.security.confidential:
        return []
    facts = [(f"risky {flag}:", why, True) for flag, why in cvm.risky.items()]
    allowed = cvm.smt_allowed
    if allowed is False and host_smt is not False:
        host = "unknown" if host_smt is None else "on"
        facts.append(("SMT allowed:", f"no, host SMT {host}: the firmware refuses to launch it with SMT on", True))
    elif allowed is not None:
        facts.append(("SMT allowed:", f"{_yes(allowed)}, host SMT {_on(host_smt)}", False))
    launch = cvm.launch
    if launch is None:
        return facts
    build = "" if launch.build_id is None else f" build {launch.build_id}"
    values = {
        "measurement": launch.measurement,
        "api_version": None if launch.api_version is None else launch.api_version + build,
        "kernel_hashes": None if launch.kernel_hashes is None else _yes(launch.kernel_hashes),
    }
    if cvm.security is SecurityType.SEV_SNP:
        values |= {
            "host_data": launch.host_data,
            "id_block": None if launch.id_block is None else _yes(launch.id_block),
            "author_key": None if launch.author_key is None else _yes(launch.author_key),
        }
    facts += [(f"{name.replace('_', ' ')}:", value, False) for name, value in values.items() if value is not None]
    unknown = {n: launch.why.get(n) or launch.why.get("launch", "not given") for n, v in values.items() if v is None}
    facts += [(f"unknown {', '.join(names)}:", why, False) for why, names in _by_reason(unknown).items()]
    return facts


def _on(value: bool | None) -> str:
    return "?" if value is None else "on" if value else "off"


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
