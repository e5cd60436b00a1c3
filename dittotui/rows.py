"""Table rows from the fleet's links, as raw per-column values: cheap to build and compare every tick.

Only a value that changed is rendered (see `dittotui.tables`), so a fleet of thousands of CVMs costs a tuple per
row per tick, not a styled cell.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from hostctl.client.link import HostLink, LinkState
from hostctl.load.wrk import WrkResult
from hostctl.wire.model import DomainState
from hostctl.wire.security import SecurityType, decode_policy

Row = tuple[Any, ...]


def host_row(link: HostLink) -> Row:
    """host, (state, whole seconds of data age), CPU %, memory GiB, SNP, (vCPUs used, CPUs, error)."""
    age = None if link.age is None or link.state is LinkState.FRESH else int(link.age)
    state = (link.state.value, age)
    snap = link.snapshot
    if snap is None:
        return (link.name, state, None, None, None, (None, None, link.error))
    h = snap.host
    used = sum(c.online_vcpus for c in snap.cvms if c.state is DomainState.RUNNING)
    return (link.name, state, h.cpu_percent, h.memory_mib // 1024, h.sev_snp, (used, h.cpus, link.error))


@functools.lru_cache(maxsize=1024)
def policy_text(security: SecurityType, policy: int) -> str:
    """The policy's named flags, without the always-set reserved bit."""
    return ",".join(f for f in decode_policy(security, policy) if f != "reserved-1") or "-"


def matches(text: str, *fields: str) -> bool:
    """Case-insensitive substring filter over a row's fields (every word must match)."""
    haystack = " ".join(fields).lower()
    return all(word in haystack for word in text.lower().split())


def cvm_rows(link: HostLink, *, filter_text: str = "", marks: set[str] = frozenset()) -> dict[str, Row]:
    """One host's CVMs: mark, (CVM, stale), (host, stale), (active, max workers), CPU %, (elastic policy, on, alert),
    security, state, boot, (last decision, reason, alert), launch policy flags."""
    rows: dict[str, Row] = {}
    if link.snapshot is None:
        return rows
    stale = link.state is not LinkState.FRESH
    for cvm in link.snapshot.cvms:
        key = f"{link.name}/{cvm.name}"
        if filter_text and not matches(filter_text, link.name, cvm.name, cvm.security.value, cvm.state.value):
            continue
        e = cvm.elastic
        rows[key] = (
            key in marks,
            (cvm.name, stale),
            (link.name, stale),
            (cvm.workers_active, cvm.workers_max),
            cvm.cpu_percent,
            None if e is None else (e.policy, e.enabled, e.alert),
            cvm.security.value,
            cvm.state.value,
            cvm.boot_vcpus,
            None if e is None else (e.decision, e.reason, e.alert),
            policy_text(cvm.security, cvm.policy),
        )
    return rows


def service_rows(
    link: HostLink,
    results: dict[str, WrkResult],
    history: dict[str, Sequence[float]],
    *,
    slo_ms: float,
    filter_text: str = "",
) -> dict[str, Row]:
    """One host's services: service, CVM, probed p50, (p99, breach), p99 trend, req/s, errors, breach,
    last wrk (p99, errors), host."""
    rows: dict[str, Row] = {}
    if link.snapshot is None:
        return rows
    for s in link.snapshot.services:
        key = f"{link.name}/{s.cvm}/{s.name}"
        if filter_text and not matches(filter_text, link.name, s.cvm, s.name):
            continue
        live = s.latency.get("10s")
        probed: Row = (None, (None, False), (), None, None, None)
        if live is not None and live.count:
            breach = live.p99 > slo_ms
            trend = tuple(list(history.get(key, ()))[-10:])
            probed = (live.p50, (live.p99, breach), (trend, slo_ms), live.rps, live.errors, breach)
        r = results.get(key)
        rows[key] = (s.name, s.cvm, *probed, (r.p(99), r.errors) if r is not None else None, link.name)
    return rows
