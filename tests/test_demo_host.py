"""A demo host end to end: scaling in libvirt changes what real wrk measures on the real service."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
import pytest

from hostctl.demo import config
from hostctl.demo.host import DemoHost
from hostctl.load import wrk


@pytest.fixture
async def demo_host(tmp_path: Path):
    site = config.load()
    host = DemoHost(site, site.host("mec-1"), tmp_path, traffic=False)
    await host.start()
    yield host
    await host.stop()


async def wait_for_slots(host: DemoHost, cvm: str, slots: int) -> None:
    for _ in range(200):
        if host.services[cvm].slots.capacity == slots:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{cvm} has {host.services[cvm].slots.capacity} slots, wanted {slots}")


async def test_services_are_listed_per_cvm_and_endpoint(demo_host: DemoHost) -> None:
    services = demo_host.service_list()
    assert {(s.cvm, s.name) for s in services} >= {("social-snp", "home-timeline"), ("social-plain", "compose-post")}
    snapshot = demo_host.backend.snapshot(services)
    assert snapshot.host.sev_snp is True and len(snapshot.cvms) == 4


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
async def test_more_workers_lower_latency_under_the_same_wrk_load(demo_host: DemoHost) -> None:
    url = demo_host.services["social-snp"].urls()["home-timeline"]
    results = {}
    expect = demo_host.backend.cvm("social-snp").online_vcpus
    for workers in (1, 4):
        target = demo_host.backend.cvm("social-snp").boot_vcpus + workers
        await demo_host.backend.scale("social-snp", target, expect=expect, who="test")
        expect = target
        await wait_for_slots(demo_host, "social-snp", target)
        results[workers] = await wrk.run(url, threads=1, connections=12, duration_s=2)
        assert results[workers].errors == 0
    assert results[4].p(50) < results[1].p(50)  # medians and throughput: robust to a noisy machine's tails
    assert results[4].rps > results[1].rps


async def test_cpu_use_is_the_busy_share(demo_host: DemoHost) -> None:
    await demo_host.backend.sample()
    service = demo_host.services["social-plain"]
    async with aiohttp.ClientSession() as session:

        async def hit() -> None:
            async with session.get(service.urls()["compose-post"]) as response:
                assert response.status == 200

        await asyncio.gather(*(hit() for _ in range(60)))
    await demo_host.backend.sample()
    busy = demo_host.backend.cvm("social-plain").cpu_percent
    assert 10 < busy <= 100
    assert demo_host.backend.host.cpu_percent > 0
