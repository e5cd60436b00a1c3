"""The services table: one row per service of every CVM, with its probed latency and its last wrk run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dittotui.tables import cells
from dittotui.tables.filter import matches
from dittotui.tables.live import Column, LiveTable, Row
from hostctl.client.link import HostLink
from hostctl.load.wrk import WrkResult


class ServicesTable(LiveTable):
    """Service, CVM, probed p50 and p99, p99 trend, req/s, errors, SLO, last wrk p99, host; rows from
    `service_rows`."""

    COLUMNS = (
        Column("service", "Service", 13, cells.plain),
        Column("cvm", "CVM", 14, cells.plain),
        Column("p50", "p50", 5, cells.number),
        Column("p99", "p99", 6, cells.p99),
        Column("trend", "p99 trend", 10, cells.sparkline),
        Column("rps", "req/s", 5, cells.number),
        Column("errors", "Err", 3, cells.errors),
        Column("slo", "SLO", 3, cells.slo),
        Column("wrk", "wrk p99", 7, cells.wrk_p99),
        Column("host", "Host", 10, cells.plain),
    )


NOT_PROBED: Row = (None, (None, False), (), None, None, None)  # p50 .. slo of a service with no probe in the window


def service_rows(
    link: HostLink,
    results: Mapping[str, WrkResult],
    trends: Mapping[str, Sequence[float]],
    *,
    slo_ms: float,
    filter_text: str = "",
) -> dict[str, Row]:
    """One host's services that match `filter_text`, keyed `host/cvm/service`: one value per column of
    `ServicesTable`, with each service's last wrk result from `results` and its recent p99s from `trends`."""
    rows: dict[str, Row] = {}
    if link.snapshot is None:
        return rows
    for s in link.snapshot.services:
        key = f"{link.name}/{s.cvm}/{s.name}"
        if filter_text and not matches(filter_text, link.name, s.cvm, s.name):
            continue
        live = s.latency.get("10s")
        probed = NOT_PROBED
        if live is not None and live.count:
            breach = live.p99 > slo_ms
            trend = tuple(list(trends.get(key, ()))[-10:])
            probed = (
                live.p50,  # p50
                (live.p99, breach),  # p99
                (trend, slo_ms),  # trend
                live.rps,  # rps
                live.errors,  # errors
                breach,  # slo
            )
        r = results.get(key)
        rows[key] = (
            s.name,  # service
            s.cvm,  # cvm
            *probed,  # p50 .. slo
            (r.p(99), r.errors) if r is not None else None,  # wrk
            link.name,  # host
        )
    return rows
