"""What serving Prometheus metrics costs an agent with 100 CVMs (test driver, 3 services each, every policy loaded).

(a) Event-loop time per scrape: `hostctl.agent.metrics.read`, the only part of a scrape that runs on the loop.
(b) Scrape wall time over HTTP (the exposition is built on prometheus-client's thread) and the body's size.
(c) The loop's lag (a 10 ms sleep's overshoot) with no scrapes, a scrape every second, and scrapes back to back,
    interleaved round by round. Every service's histogram holds probes (filled before), as on a probed fleet.
Writes bench/results/metrics_scrape.md with medians and p99s of one run."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from hostctl.agent import metrics
from hostctl.agent.audit import AuditLog
from hostctl.agent.probes import ProbeSample
from hostctl.agent.server import Agent
from hostctl.demo.config import CVMSpec, HostSpec
from hostctl.demo.nodexml import node_xml
from hostctl.elastic.runner import DEFAULT_POLICIES, load_policies
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.stats import percentile
from hostctl.wire.model import Service
from hostctl.wire.security import SecurityType

CVMS, SERVICES = 100, ("home-timeline", "user-timeline", "compose-post")
READS, SCRAPES, ROUNDS, ROUND_S = 500, 200, 5, 3.0
OUT = Path(__file__).parent / "results" / "metrics_scrape.md"


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{percentile(ordered, 0.5) * 1000:.2f} / {percentile(ordered, 0.99) * 1000:.2f}"


def scrape(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        size = len(response.read())
    return time.perf_counter() - start, size


async def lag(seconds: float) -> list[float]:
    """Overshoots of a 10 ms sleep over `seconds`."""
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        out.append(time.perf_counter() - start - 0.01)
    return out


async def scrape_for(url: str, seconds: float, every: float) -> int:
    """Scrape every `every` seconds (0: back to back) for `seconds`; the number of scrapes."""
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        start = time.monotonic()
        await asyncio.to_thread(scrape, url)
        n += 1
        await asyncio.sleep(max(0.0, every - (time.monotonic() - start)))
    return n


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    kinds = list(SecurityType)
    spec = HostSpec(
        name="bench",
        cvms=[
            CVMSpec(name=f"cvm-{i:03}", security=kinds[i % len(kinds)], boot_vcpus=1, max_vcpus=5, online_vcpus=2)
            for i in range(CVMS)
        ],
    )
    node = tmp / "node.xml"
    node.write_text(node_xml(spec))
    services = [Service(s, f"cvm-{i:03}", f"http://127.0.0.1:9/{s}") for i in range(CVMS) for s in SERVICES]
    host = LibvirtHost(f"test://{node}", name="bench", driver_options={"emulated": {"wake_ms": 0, "park_ms": 0}})
    await host.open()
    agent = Agent(
        host,
        audit=AuditLog(tmp / "audit.jsonl"),
        services=lambda: services,
        probe_rate=0,
        policies=load_policies(DEFAULT_POLICIES),
    )
    agent.start()
    for i, service in enumerate(services):  # as if probed: every histogram has samples in several buckets
        for ms_taken in (2.0, 4.0, 8.0, 15.0, 30.0 + i % 40):
            agent.tallies.probed(service.cvm, service.name, ProbeSample(0.0, ms_taken, ok=True))
    url = agent.serve_metrics(("127.0.0.1", 0)).url
    try:
        reads = []
        for _ in range(READS):
            start = time.perf_counter()
            metrics.read(agent)
            reads.append(time.perf_counter() - start)
            await asyncio.sleep(0)
        walls, sizes = [], []
        for _ in range(SCRAPES):
            wall, size = await asyncio.to_thread(scrape, url)
            walls.append(wall)
            sizes.append(size)
        lags: dict[float | None, list[float]] = {None: [], 1.0: [], 0.0: []}
        scrapes: dict[float | None, int] = dict.fromkeys(lags, 0)
        for _ in range(ROUNDS):  # interleaved: no scrapes, one a second, back to back
            for every in lags:
                task = None
                if every is not None:
                    task = asyncio.get_running_loop().create_task(scrape_for(url, ROUND_S, every))
                lags[every] += await lag(ROUND_S)
                if task is not None:
                    scrapes[every] += await task
    finally:
        await agent.stop()
        await host.close()
    lines = [
        "# Metrics scrape cost",
        "",
        f"`python -m bench.metrics_scrape`: one agent, {CVMS} CVMs in libvirt's test driver, {len(services)} services "
        f"(each histogram holding probes), {len(agent.elastic.policies)} policies loaded. One run, rounds of "
        f"{ROUND_S:g} s interleaved; p50 / p99. The machine has 2 cores, shared: lags are noisy.",
        "",
        "| measure | p50 / p99 |",
        "|---|---:|",
        f"| event-loop time per scrape (`metrics.read`, {READS} reads), ms | {ms(reads)} |",
        f"| scrape over HTTP, wall ({SCRAPES} scrapes, {statistics.median(sizes) / 1024:.0f} KiB each), ms | "
        f"{ms(walls)} |",
        f"| loop lag, no scrapes ({ROUNDS} x {ROUND_S:g} s), ms | {ms(lags[None])} |",
        f"| loop lag, a scrape every second ({scrapes[1.0]} scrapes), ms | {ms(lags[1.0])} |",
        f"| loop lag, scrapes back to back ({scrapes[0.0]} scrapes), ms | {ms(lags[0.0])} |",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
