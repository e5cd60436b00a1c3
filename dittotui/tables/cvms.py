"""The CVMs table: one row per CVM of every host, as raw per-column values (cheap to build and compare every tick).

Only a value that changed is rendered (see `dittotui.tables.live`), so a fleet of thousands of CVMs costs a tuple per
row per tick, not a styled cell.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence, Set

from dittotui.tables import cells
from dittotui.tables.filter import matches
from dittotui.tables.live import Column, LiveTable, Row, shared
from hostctl.client.link import HostLink, LinkState
from hostctl.wire.model import CVM
from hostctl.wire.security import SecurityType, decode_policy


class CVMTable(LiveTable):
    """Mark, CVM, host, workers, CPU, elastic policy, security, state, boot vCPUs, last decision, launch policy;
    rows from `cvm_rows`."""

    COLUMNS = (
        Column("mark", " ", 1, cells.mark),
        Column("cvm", "CVM", 14, cells.name),
        Column("host", "Host", 10, cells.host_name),
        Column("workers", "Workers", 13, cells.workers),
        Column("cpu", "CPU%on", 6, cells.number),  # of the online vCPUs
        Column("elastic", "Elastic", 15, cells.elastic),
        Column("security", "Security", 8, cells.security),
        Column("state", "State", 7, cells.run_state),
        Column("boot", "Boot", 4, cells.plain),
        Column("decision", "Last decision", 36, cells.decision),
        Column("policy", "Launch policy", 20, cells.plain),
    )


class RowCache:
    """One host's CVM rows as last built, each with the record it was built from and whether it was marked.

    Kept as dicts whose values are replaced, not as a tuple per row: a fleet rebuilds thousands of rows a second,
    and each new container is one more object for the garbage collector's next pass to walk.
    """

    __slots__ = ("marked", "records", "rows", "stale")

    def __init__(self) -> None:
        self.records: dict[str, CVM] = {}  # key -> the record its row was built from
        self.rows: dict[str, Row] = {}  # key -> the row last built (its values' tuples are reused when unchanged)
        self.marked: set[str] = set()  # keys whose rows were built marked
        self.stale = False  # whether the rows were built with their host's data stale

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.records.pop(key, None)
            self.rows.pop(key, None)
            self.marked.discard(key)


def cvm_rows(
    link: HostLink,
    *,
    filter_text: str = "",
    marks: Set[str] = frozenset(),
    cache: RowCache | None = None,
    only: Sequence[CVM] | None = None,
) -> dict[str, Row]:
    """One host's CVMs that match `filter_text`, keyed `host/cvm`: one value per column of `CVMTable`; with `only`,
    of those CVMs alone.

    With a `cache`, a CVM whose record is the same object as last time (a link replaces only the records an update
    carries) keeps its row: an update that changes a tenth of a host's CVMs builds a tenth of its rows.
    """
    rows: dict[str, Row] = {}
    if link.snapshot is None:
        return rows
    stale = link.state is not LinkState.FRESH
    if cache is not None and cache.stale != stale:
        cache.records.clear()  # every row shows the new staleness
        cache.stale = stale
    cvms = link.snapshot.cvms if only is None else only
    host_name = link.name
    for cvm in cvms:
        key = f"{host_name}/{cvm.name}"
        if filter_text and not matches(filter_text, host_name, cvm.name, cvm.security.value, cvm.state.value):
            continue
        marked = key in marks
        if cache is not None and cache.records.get(key) is cvm and (key in cache.marked) == marked:
            rows[key] = cache.rows[key]
            continue
        e = cvm.elastic
        before = cache.rows.get(key) if cache is not None else None
        if before is not None and before[1][1] is stale:  # the same name and staleness: the same tuples
            name, host = before[1], before[2]
        else:
            name, host = (cvm.name, stale), (host_name, stale)
        workers = shared((cvm.workers_active, cvm.workers_max, count_hint(cvm.vcpus_error)))
        security = cvm.security.value  # (its text: an enum member is an object the collector tracks)
        elastic = decision = None
        if e is not None:
            elastic, decision = shared((e.policy, e.enabled, e.alert)), shared((e.decision, e.reason, e.alert))
        row: Row = (
            marked,  # mark
            name,  # cvm: (name, its host's data stale)
            host,  # host: (name, stale)
            workers,  # workers: (active, max, why the count is unknown)
            cvm.cpu_percent,  # cpu
            elastic,  # elastic: (policy, on, alert)
            security,  # security
            cvm.state.value,  # state
            cvm.boot_vcpus,  # boot
            decision,  # decision: (label, reason, alert)
            policy_text(security, cvm.policy),  # policy
        )
        if cache is not None:
            cache.records[key] = cvm
            cache.rows[key] = row
            if marked:
                cache.marked.add(key)
            else:
                cache.marked.discard(key)
        rows[key] = row
    if only is None and cache is not None and len(cache.rows) > len(cvms):  # CVMs gone: their rows go too
        cache.forget(cache.rows.keys() - {f"{host_name}/{c.name}" for c in cvms})
    return rows


def count_hint(error: str) -> str:
    """A few words for why a count is unknown (the detail screen has it all)."""
    if not error:
        return ""
    if error.startswith("guest agent"):
        return "no agent"
    return error if len(error) <= 9 else error[:8] + "…"


@functools.lru_cache(maxsize=1024)
def policy_text(security: str, policy: int) -> str:
    """The launch policy's named flags, without the always-set reserved bit (`security`: a `SecurityType`'s value,
    whose hash, unlike the member's, costs no Python call)."""
    return ",".join(f for f in decode_policy(SecurityType(security), policy) if f != "reserved-1") or "-"
