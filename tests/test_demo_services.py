"""The demo's emulated microservices: slot physics, real HTTP, real wrk load, background traffic."""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostctl.demo.services import DEFAULT_ENDPOINTS, CVMService, Slots
from hostctl.demo.traffic import BackgroundTraffic, rate_at
from hostctl.load import wrk

StartService = Callable[..., Awaitable[CVMService]]


@pytest.fixture
async def start_service() -> AsyncIterator[StartService]:
    """Start real CVMServices on loopback; all are stopped at teardown."""
    started: list[CVMService] = []

    async def start(cvm: str = "cvm-test", *, overhead: float = 1.0, slots: int = 1) -> CVMService:
        service = CVMService(cvm, overhead=overhead, slots=slots, rng=random.Random(7))
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()


# --- Slots -------------------------------------------------------------------------------------


async def _hold(slots: Slots, entered: asyncio.Event, leave: asyncio.Event) -> None:
    async with slots:
        entered.set()
        await leave.wait()


async def test_raising_capacity_wakes_waiters() -> None:
    slots = Slots(0)
    entered, leave = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_hold(slots, entered, leave))
    await asyncio.sleep(0.02)
    assert not entered.is_set()
    assert slots.waiting == 1 and slots.in_flight == 0

    slots.capacity = 1
    await asyncio.wait_for(entered.wait(), 1.0)
    assert slots.waiting == 0 and slots.in_flight == 1
    leave.set()
    await task
    assert slots.in_flight == 0


async def test_lowering_capacity_blocks_new_entrants_while_in_flight_finish() -> None:
    slots = Slots(2)
    holders = [(asyncio.Event(), asyncio.Event()) for _ in range(2)]
    tasks = [asyncio.create_task(_hold(slots, entered, leave)) for entered, leave in holders]
    await asyncio.wait_for(asyncio.gather(*(entered.wait() for entered, _ in holders)), 1.0)

    slots.capacity = 1
    assert slots.in_flight == 2  # nobody is evicted
    newcomer_in, newcomer_leave = asyncio.Event(), asyncio.Event()
    newcomer = asyncio.create_task(_hold(slots, newcomer_in, newcomer_leave))
    await asyncio.sleep(0.02)
    assert not newcomer_in.is_set() and slots.waiting == 1

    holders[0][1].set()
    await tasks[0]
    await asyncio.sleep(0.02)
    assert not newcomer_in.is_set(), "still at capacity 1 with one holder in flight"

    holders[1][1].set()
    await tasks[1]
    await asyncio.wait_for(newcomer_in.wait(), 1.0)
    assert slots.in_flight == 1
    newcomer_leave.set()
    await newcomer


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    slots = Slots(0)
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.capacity = 1
    await asyncio.wait_for(slots.acquire(), 1.0)
    assert slots.in_flight == 1 and slots.waiting == 0
    slots.release()


async def test_cancellation_racing_a_wake_up_keeps_the_count_right() -> None:
    slots = Slots(0)
    cancelled_waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.01)
    cancelled_waiting.cancel()
    slots.capacity = 1  # the cancelled waiter is discarded before its task resumes
    with pytest.raises(asyncio.CancelledError):
        await cancelled_waiting
    assert slots.in_flight == 0 and slots.waiting == 0

    slots.capacity = 0
    granted = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.01)
    slots.capacity = 1  # the slot is handed over...
    granted.cancel()  # ...and cancelled before the task runs: it must give the slot back
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert slots.in_flight == 0 and slots.waiting == 0


async def test_busy_seconds_accounting() -> None:
    slots = Slots(2)
    slots.take_busy_seconds()

    async def work(seconds: float) -> None:
        async with slots:
            await asyncio.sleep(seconds)

    await asyncio.gather(work(0.2), work(0.2))
    busy = slots.take_busy_seconds()
    assert 0.35 <= busy < 1.0  # two slots busy for ~0.2 s each
    assert slots.take_busy_seconds() < 0.05  # the counter was reset

    entered, leave = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_hold(slots, entered, leave))
    await entered.wait()
    await asyncio.sleep(0.1)
    assert 0.08 <= slots.take_busy_seconds() < 0.5  # in-flight time counts before release
    leave.set()
    await task


def test_slots_reject_negative_capacity() -> None:
    with pytest.raises(ValueError):
        Slots(-1)
    with pytest.raises(ValueError):
        Slots(1).capacity = -1


# --- rate_at -----------------------------------------------------------------------------------

rates = st.floats(min_value=0, max_value=1e4, allow_nan=False)


@given(
    t=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    a=rates,
    b=rates,
    day=st.floats(min_value=1, max_value=1e5, allow_nan=False),
    phase=st.floats(min_value=-1, max_value=1, allow_nan=False),
)
def test_rate_at_bounded_and_periodic(t: float, a: float, b: float, day: float, phase: float) -> None:
    base, peak = min(a, b), max(a, b)
    kwargs = {"base_rps": base, "peak_rps": peak, "day_seconds": day, "phase": phase}
    rate = rate_at(t, **kwargs)
    tol = 1e-6 * (1 + peak)
    assert base - tol <= rate <= peak + tol
    assert math.isclose(rate, rate_at(t + day, **kwargs), abs_tol=tol)


def test_rate_at_night_and_midday() -> None:
    assert rate_at(0, base_rps=5, peak_rps=50, day_seconds=60) == pytest.approx(5)
    assert rate_at(30, base_rps=5, peak_rps=50, day_seconds=60) == pytest.approx(50)
    assert rate_at(0, base_rps=5, peak_rps=50, day_seconds=60, phase=0.5) == pytest.approx(50)


# --- real HTTP ---------------------------------------------------------------------------------


async def test_every_endpoint_answers_over_http(start_service: StartService) -> None:
    service = await start_service("cvm-http", slots=2)
    urls = service.urls()
    assert set(urls) == {e.name for e in DEFAULT_ENDPOINTS}
    async with aiohttp.ClientSession() as session:
        for name, url in urls.items():
            for method in ("GET", "POST"):
                async with session.request(method, url) as response:
                    assert response.status == 200
                    body = await response.json()
                    assert body["endpoint"] == name and body["cvm"] == "cvm-http"
                    assert body["ms"] > 0
        async with session.get(service.base_url + "/no/such/path") as response:
            assert response.status == 404
    stats = service.stats()
    assert all(s == {"requests": 2, "errors": 0} for s in stats.values())


async def test_cpu_percent_tracks_load(start_service: StartService) -> None:
    service = await start_service("cvm-cpu", slots=1)
    service.cpu_percent()
    await asyncio.sleep(0.05)
    assert service.cpu_percent() < 10  # idle
    url = service.urls()["home-timeline"]
    async with aiohttp.ClientSession() as session:

        async def hit() -> None:
            async with session.get(url) as response:
                assert response.status == 200

        await asyncio.gather(*(hit() for _ in range(30)))
    assert service.cpu_percent() > 50  # one slot, kept busy by a queue of 30
    service.set_slots(0)
    assert service.cpu_percent() == 0.0


async def test_the_demand_counts_requests_received_and_in_flight(start_service: StartService) -> None:
    service = await start_service("cvm-demand", slots=1)
    service.demand()
    started = time.monotonic()
    url = service.urls()["home-timeline"]
    async with aiohttp.ClientSession() as session:

        async def hit() -> None:
            async with session.get(url) as response:
                assert response.status == 200

        await asyncio.gather(*(hit() for _ in range(40)))
    concurrency, rps = service.demand()
    elapsed = time.monotonic() - started
    assert rps == pytest.approx(40 / elapsed, rel=0.05)  # every request received, over the time since the last call
    assert concurrency > 1  # 40 at once through one slot: most of them queued
    assert service.demand()[1] == 0.0  # nothing received since


# --- the physics, measured by real wrk ---------------------------------------------------------

requires_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


async def run_wrk(url: str) -> tuple[float, float]:
    """(p50 ms, req/s) of a short closed-loop wrk run; the run must be error free."""
    result = await wrk.run(url, threads=1, connections=8, duration_s=2)
    assert result.errors == 0, result
    return result.p(50), result.rps


@requires_wrk
async def test_more_slots_lower_latency_under_wrk(start_service: StartService) -> None:
    service = await start_service("cvm-plain", overhead=1.0, slots=1)
    url = service.urls()["home-timeline"]
    p50_one, rps_one = await run_wrk(url)
    assert service.cpu_percent() > 50  # the single slot was kept busy
    service.set_slots(4)
    p50_four, rps_four = await run_wrk(url)
    assert p50_four < p50_one
    assert rps_four > rps_one


@requires_wrk
async def test_snp_overhead_raises_latency_under_wrk(start_service: StartService) -> None:
    plain = await start_service("cvm-plain", overhead=1.0, slots=1)
    snp = await start_service("cvm-snp", overhead=1.45, slots=1)
    p50_plain, _ = await run_wrk(plain.urls()["home-timeline"])
    p50_snp, _ = await run_wrk(snp.urls()["home-timeline"])
    assert p50_snp > p50_plain


# --- background traffic ------------------------------------------------------------------------


async def test_background_traffic_against_real_service(start_service: StartService) -> None:
    before = asyncio.all_tasks()
    service = await start_service("cvm-bg", slots=4)
    targets = [(service.base_url + e.path, e.weight) for e in DEFAULT_ENDPOINTS]
    traffic = BackgroundTraffic(targets, base_rps=50, peak_rps=50, day_seconds=60, rng=random.Random(3))
    await traffic.start()
    await asyncio.sleep(1.5)
    await traffic.stop()

    assert traffic.sent > 0 and traffic.ok > 0
    assert traffic.errors == 0 and traffic.dropped == 0
    assert traffic.in_flight == 0
    await service.stop()
    assert asyncio.all_tasks() - before == set()  # nothing of this test's is left running
    assert sum(s["requests"] for s in service.stats().values()) >= traffic.ok


async def test_failing_target_counts_errors_without_crashing() -> None:
    traffic = BackgroundTraffic(
        [("http://127.0.0.1:9/nothing-listens-here", 1.0)],
        base_rps=100,
        peak_rps=100,
        day_seconds=60,
        rng=random.Random(5),
    )
    await traffic.start()
    deadline = time.monotonic() + 2.0
    while traffic.errors < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await traffic.stop()
    assert traffic.errors >= 5 and traffic.ok == 0
