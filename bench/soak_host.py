"""The process a soak measures: one demo host agent exactly as `hostctl demo serve-host` runs it (no console), whose
host keeps changing: CVMs are defined and started in the libvirt test driver the agent uses, their services come
and go, and CVMs are destroyed and undefined again, on a seeded schedule.

Run as a script with the hostctl to measure first on PYTHONPATH (this tree's or another checkout's), so it uses
only what both have: `launcher.serve_host`, `DemoHost` and the demo's node XML. It writes one JSON object per line
on stdout: `{"added": CVM}` when a CVM is up (the soak then switches a policy on for it), `{"removed": CVM}`, and
every `--report` seconds `{"objects": {...}}`, the number of live objects of the agent's per-sample types.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import libvirt

from hostctl.demo import launcher, nodexml
from hostctl.demo.config import CVMSpec
from hostctl.demo.host import DemoHost
from hostctl.demo.services import CVMService
from hostctl.elastic.runner import load_policies
from hostctl.wire.security import SecurityType

COUNTED = ("ProbeSample", "Window", "CVMSample", "_Track", "Task", "Event")
MAX_TRANSIENT = 3


def emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class ChurningHost(DemoHost):
    """A demo host whose CVMs and services appear and vanish every `period` seconds (seeded)."""

    period = 2.0
    seed = 0

    async def start(self) -> None:
        await super().start()
        self._rng = random.Random(self.seed)
        self._serial = 0
        self._transient: list[str] = []
        self._churn = asyncio.get_running_loop().create_task(self._churn_forever())

    async def stop(self) -> None:
        self._churn.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._churn
        for name in list(self._transient):
            await self._remove(name)
        await super().stop()

    async def _churn_forever(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            roll = self._rng.random()
            served = [name for name in self._transient if name in self.services]
            if not self._transient or (roll < 0.45 and len(self._transient) < MAX_TRANSIENT):
                await self._add()
            elif roll < 0.7 and served:
                await self.services.pop(self._rng.choice(served)).stop()  # the service goes, its CVM stays
            else:
                await self._remove(self._rng.choice(self._transient))

    async def _add(self) -> None:
        self._serial += 1
        security = self._rng.choice([SecurityType.SEV_SNP, SecurityType.SEV, SecurityType.NONE])
        spec = CVMSpec(name=f"churn-{self._serial}", security=security, boot_vcpus=1, max_vcpus=4, online_vcpus=2)
        xml = ET.tostring(nodexml._domain(self.spec, spec, "emulated"), encoding="unicode")
        await asyncio.to_thread(self._define_and_start, xml)
        service = CVMService(
            spec.name,
            overhead=self.config.overhead.of(security),
            slots=2,
            endpoints=self.config.endpoints,
            jitter=self.config.jitter,
            rng=random.Random(self._rng.random()),
        )
        await service.start()
        self.services[spec.name] = service
        self._transient.append(spec.name)
        emit({"added": spec.name})

    async def _remove(self, name: str) -> None:
        self._transient.remove(name)
        service = self.services.pop(name, None)
        if service is not None:
            await service.stop()
        await asyncio.to_thread(self._destroy_and_undefine, name)
        emit({"removed": name})

    def _define_and_start(self, xml: str) -> None:
        self.backend._conn.defineXML(xml).create()

    def _destroy_and_undefine(self, name: str) -> None:
        dom = self.backend._conn.lookupByName(name)
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        dom.undefine()


async def report_objects(every: float) -> None:
    while True:
        await asyncio.sleep(every)
        counts = Counter(type(o).__name__ for o in gc.get_objects())
        emit({"objects": {name: counts.get(name, 0) for name in COUNTED}, "gc": sum(counts.values())})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--runtime", type=Path, required=True)
    parser.add_argument("--policies", type=Path, required=True)
    parser.add_argument("--name", default="soak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--period", type=float, default=2.0, help="seconds between two changes of the host")
    parser.add_argument("--report", type=float, default=10.0, help="seconds between two object counts")
    args = parser.parse_args()
    ChurningHost.period, ChurningHost.seed = args.period, args.seed
    launcher.DemoHost = ChurningHost  # type: ignore[misc]  # serve_host builds its host through this name
    libvirt.registerErrorHandler(lambda *_: None, None)
    emit({"hostctl": str(Path(launcher.__file__).parents[2])})
    reporting = asyncio.get_running_loop().create_task(report_objects(args.report))
    try:
        await launcher.serve_host(args.config, args.name, args.runtime, policies=load_policies(args.policies))
    finally:
        reporting.cancel()


if __name__ == "__main__":
    asyncio.run(main())
