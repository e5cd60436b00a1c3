"""Demo-site physics under one wrk command: p50/p99 with 1, 2 and 4 active workers per security type.
Writes bench/results/demo_latency.md."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hostctl.demo import config
from hostctl.demo.host import DemoHost
from hostctl.load import wrk

WORKERS = (1, 2, 4)
CVMS = ("social-plain", "social-sev", "social-snp")
ENDPOINT = "home-timeline"
WRK = {"threads": 2, "connections": 16, "duration_s": 5.0}
OUT = Path(__file__).parent / "results" / "demo_latency.md"


async def main() -> None:
    site = config.load()
    results: dict[tuple[str, int], wrk.WrkResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        host = DemoHost(site, site.host("mec-1"), Path(tmp), traffic=False)
        await host.start()
        try:
            for name in CVMS:
                for workers in WORKERS:
                    cvm = host.backend.cvm(name)
                    await host.backend.scale(name, cvm.boot_vcpus + workers, expect=cvm.online_vcpus, who="bench")
                    await asyncio.sleep(0.1)
                    url = host.services[name].urls()[ENDPOINT]
                    results[name, workers] = await wrk.run(url, **WRK)
                    print(name, workers, results[name, workers].percentiles, results[name, workers].rps)
        finally:
            await host.stop()
    cmd = f"wrk -t{WRK['threads']} -c{WRK['connections']} -d{WRK['duration_s']:g}s --latency URL"
    lines = [
        "# Demo site: latency against active workers",
        "",
        f"One run of `python -m bench.demo_latency`: `{cmd}` against `{ENDPOINT}` "
        f"({site.endpoints[0].service_ms:g} ms base service time, jitter ±{site.jitter:.0%}) on host mec-1, "
        "background traffic off. Each active worker adds one serving slot (the boot vCPU serves too).",
        "",
        "| CVM | security | overhead | workers | p50 ms | p99 ms | req/s | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CVMS:
        security = next(c.security for c in site.host("mec-1").cvms if c.name == name)
        for workers in WORKERS:
            r = results[name, workers]
            lines.append(
                f"| {name} | {security.value} | {site.overhead.of(security):.2f}× | {workers} | "
                f"{r.p(50):.2f} | {r.p(99):.2f} | {r.rps:.0f} | {r.errors} |"
            )
    lines += ["", "p50 ratio to plain at the same workers:", ""]
    for workers in WORKERS:
        base = results["social-plain", workers].p(50)
        ratios = ", ".join(f"{n}: {results[n, workers].p(50) / base:.2f}×" for n in CVMS[1:])
        lines.append(f"- {workers} worker(s): {ratios}")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
