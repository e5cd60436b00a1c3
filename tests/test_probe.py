"""Latency probes: exact windows, and open-loop probing of real services with known delays."""

from __future__ import annotations

import asyncio

import pytest

from hostctl.agent.probes import Prober, ProbeSample, Window
from hostctl.demo.services import CVMService, Endpoint
from hostctl.wire.model import Service


def test_window_summarises_only_its_last_seconds() -> None:
    window = Window(10.0)
    for i in range(100):
        window.add(ProbeSample(at=100.0 + i * 0.1, ms=float(i + 1), ok=i % 10 != 9))
    window.add(ProbeSample(at=50.0, ms=999.0, ok=True))  # old, out of the window: pruned on read
    stats = window.stats(now=110.0)
    assert stats.count == 100 and stats.errors == 10 and stats.rps == 10.0
    assert stats.p50 == 49.0 and stats.p99 == 99.0 and stats.max == 99.0  # nearest rank: the 45th of 90
    assert window.stats(now=200.0).count == 0 and window.stats(now=200.0).p99 == 0.0


async def start(service_ms: float, slots: int) -> CVMService:
    service = CVMService(
        "probe-me",
        overhead=1.0,
        slots=slots,
        jitter=0.0,
        endpoints=[Endpoint("home-timeline", "/read", service_ms, 1.0)],
    )
    await service.start()
    return service


async def test_probes_measure_a_known_delay() -> None:
    service = await start(service_ms=20.0, slots=4)
    target = Service("home-timeline", "probe-me", service.urls()["home-timeline"])
    prober = Prober(lambda: [target], rate=10.0)
    prober.start()
    await asyncio.sleep(1.6)
    await prober.stop()
    await service.stop()
    stats = prober.latency(target)["10s"]
    assert 12 <= stats.count <= 18 and stats.errors == 0
    assert 19.0 <= stats.p50 <= 40.0 and stats.p50 <= stats.p99
    assert set(prober.latency(target)) == {"10s", "60s"}


async def test_open_loop_probes_expose_a_slow_service() -> None:
    """One slot, 150 ms per request, probed 10x a second: queueing shows instead of being hidden."""
    service = await start(service_ms=150.0, slots=1)
    target = Service("home-timeline", "probe-me", service.urls()["home-timeline"])
    prober = Prober(lambda: [target], rate=10.0, max_in_flight=4, timeout=5.0)
    prober.start()
    await asyncio.sleep(2.0)
    await prober.stop()
    await service.stop()
    stats = prober.latency(target)["10s"]
    assert stats.count >= 14  # the schedule held: ~10/s whatever the service did (minus the last in flight)
    assert stats.errors > 0  # arrivals beyond the in-flight bound count as failures
    assert stats.p99 > 300.0  # waits for the single slot, well above the 150 ms service time


@pytest.mark.parametrize("rate", [0.0])
async def test_rate_zero_probes_nothing(rate: float) -> None:
    prober = Prober(lambda: [Service("s", "c", "http://127.0.0.1:9/")], rate=rate)
    prober.start()
    await asyncio.sleep(0.1)
    await prober.stop()
    assert prober.windows == {}
