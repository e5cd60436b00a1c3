"""Calibrate one CVM for the elastic-vs-fixed oracle: real open-loop HTTP load at steady rates against the CVM held
at fixed vCPU counts, through its host's agent (policy off), measuring p50/p99, errors and the requests in flight
the agent reads.

The grid is walked, not filled: the rates in ascending order, each starting at the fewest vCPUs the rate before
needed (more load never needs fewer) and adding one until a cell is within the SLO or max is reached. A cell over
the SLO is measured once more before a vCPU is added (a stall of a shared machine is not the CVM's capacity); both
are kept, and the count is within the SLO at that rate when either is. A rate that max vCPUs cannot serve within
the SLO ends the walk: every higher rate needs more than there is. That measures about 2 x (rates + max) cells
at most instead of rates x max.

A cell lasts `cell_s` seconds, or as long as it takes to send `min_requests` at its rate: a p99 over 150 requests
(5 s at 30 req/s) is their second slowest, set by whichever one stall of a shared machine fell in the cell. Over
1,000 it is the tenth slowest. The low rates then take longest: about 3 minutes for the shipped grid.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from hostctl.client.link import HostLink
from hostctl.errors import HostctlError
from hostctl.experiments.elastic_oracle import Calibration, Cell
from hostctl.load.trace import Phase, Trace, replay
from hostctl.stats import percentile
from hostctl.wire.model import CVM, DomainState

WHY = "experiment elastic-vs-fixed"
# req/s: the traces' range and below it, every 30 up to 180 (where one and two vCPUs run out of room), then every 60
RATES = (30.0, 60.0, 90.0, 120.0, 150.0, 180.0, 240.0, 300.0, 360.0, 420.0, 480.0)
MIN_REQUESTS = 1_000  # a cell sends at least this many requests: its p99 is then its tenth slowest
READ_AFTER_S = 1.0  # the agent's readings of a cell's first second may still cover the settle before it

Progress = Callable[[str], Awaitable[None]]


def running(link: HostLink, name: str) -> CVM:
    """The CVM `name` of `link`'s host; HostctlError when it is unknown or not running."""
    cvm = link.cvm(name)
    if cvm is None:
        raise HostctlError(f"{link.name}: no CVM {name!r}")
    if cvm.state is not DomainState.RUNNING:
        raise HostctlError(f"{link.name}/{name}: it is {cvm.state.value}, not running")
    return cvm


async def calibrate(
    link: HostLink,
    cvm: str,
    url: str,
    *,
    slo_ms: float,
    rates: Sequence[float] = RATES,
    cell_s: float = 5.0,
    min_requests: int = MIN_REQUESTS,
    settle_s: float = 1.0,
    progress: Progress | None = None,
) -> Calibration:
    """Walk the grid of `rates` x vCPU counts on `cvm` (its policy switched off) and return every cell measured."""
    first = running(link, cvm)
    if await link.policies():
        await link.set_policy(cvm, enabled=False)
    cells: list[Cell] = []
    vcpus = first.boot_vcpus
    for i, rps in enumerate(sorted(set(rates)), start=1):
        seconds = max(cell_s, min_requests / rps)
        while True:
            if progress is not None:
                await progress(f"calibration: {rps:g} req/s at {vcpus} vCPUs (rate {i}/{len(set(rates))})")
            for _ in range(2):  # a cell over the SLO is measured once more: the machine's noise is not the CVM's
                cell = await _cell(link, cvm, url, rps, vcpus, cell_s=seconds, settle_s=settle_s, seed=len(cells) + 1)
                cells.append(cell)
                if cell.within(slo_ms):
                    break
            if cell.within(slo_ms) or vcpus >= first.max_vcpus:
                break
            vcpus += 1
        if not cells[-1].within(slo_ms):
            break
    await link.scale(cvm, first.boot_vcpus, expect=None, why=f"{WHY}: calibration done")
    return Calibration(f"{link.name}/{cvm}", first.boot_vcpus, first.max_vcpus, slo_ms, cells)


async def _cell(
    link: HostLink, cvm: str, url: str, rps: float, vcpus: int, *, cell_s: float, settle_s: float, seed: int
) -> Cell:
    """`rps` for `cell_s` seconds against `vcpus` online vCPUs, after `settle_s` for the previous cell's queue."""
    await link.scale(cvm, vcpus, expect=None, why=f"{WHY}: calibration")
    await asyncio.sleep(settle_s)
    readings: list[float] = []
    load = asyncio.create_task(replay(Trace((Phase("steady", cell_s, rps),), "steady"), url, seed=seed))
    start, seen = time.monotonic(), link.cvm(cvm)
    while not load.done():
        await asyncio.wait({load}, timeout=0.1)
        now = link.cvm(cvm)
        if now is not seen and now is not None:  # a new record: the agent sampled again
            seen = now
            if now.concurrency is not None and time.monotonic() - start >= READ_AFTER_S:
                readings.append(now.concurrency)
    requests = load.result()
    ms = [r.ms for r in requests]
    return Cell(
        rps,
        vcpus,
        cell_s,
        len(requests),
        sum(not r.ok for r in requests),
        percentile(ms, 0.5) if ms else 0.0,
        percentile(ms, 0.99) if ms else 0.0,
        round(sum(readings) / len(readings), 3) if readings else None,
    )
