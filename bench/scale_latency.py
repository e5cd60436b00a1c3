"""How long a worker scale takes on libvirt's test driver: setVcpusFlags, the metadata write, and both
through the backend (compare-and-set read, driver, metadata, re-read). Writes bench/results/scale_latency.md."""

from __future__ import annotations

import asyncio
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import libvirt

from hostctl.host.domxml import WORKERS_KEY, WORKERS_NS, workers_metadata
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.stats import percentile
from tests.support.nodes import make_node

ROUNDS = 2000
OUT = Path(__file__).parent / "results" / "scale_latency.md"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        host = LibvirtHost(f"test://{make_node(Path(tmp))}", driver_options={"emulated": {"wake_ms": 0, "park_ms": 0}})
        await host.open()
        dom = await asyncio.to_thread(host._conn.lookupByName, "snp")

        def raw() -> tuple[list[float], list[float]]:
            setv, meta = [], []
            for i in range(ROUNDS):
                t0 = time.perf_counter()
                dom.setVcpusFlags(2 + i % 3, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                t1 = time.perf_counter()
                dom.setMetadata(
                    libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                    workers_metadata(1 + i % 3, 4, "bench", time.time()),
                    WORKERS_KEY,
                    WORKERS_NS,
                    libvirt.VIR_DOMAIN_AFFECT_LIVE,
                )
                t2 = time.perf_counter()
                setv.append((t1 - t0) * 1e6)
                meta.append((t2 - t1) * 1e6)
            return setv, meta

        setv, meta = await asyncio.to_thread(raw)
        await asyncio.sleep(0.2)  # let the metadata events drain
        full = []
        current = host.cvm("snp").online_vcpus
        for _ in range(ROUNDS // 4):
            target = 2 + (current - 1) % 3
            t0 = time.perf_counter()
            await host.scale("snp", target, expect=current, who="bench")
            full.append((time.perf_counter() - t0) * 1e6)
            current = target
        await host.close()
    rows = [
        ("setVcpusFlags(AFFECT_LIVE)", setv),
        ("setMetadata (workers element)", meta),
        ("LibvirtHost.scale, end to end (emulated driver, 0 ms wake delay)", full),
    ]
    lines = [
        "# Scale cost on libvirt's test driver",
        "",
        f"libvirt {libvirt.getVersion() // 1_000_000}.{libvirt.getVersion() // 1000 % 1000}, "
        f"libvirt-python {version('libvirt-python')}, one run, {ROUNDS} rounds (end to end: {ROUNDS // 4}).",
        "`python -m bench.scale_latency` writes this file. Times in microseconds (percentiles by nearest rank).",
        "",
        "| step | p50 µs | p99 µs | max µs |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {percentile(v, 0.5):.1f} | {percentile(v, 0.99):.1f} | {max(v):.1f} |" for name, v in rows]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
