"""One emulated demo host: its CVMs in libvirt's test driver, their services on loopback, and traffic."""

from __future__ import annotations

import random
from pathlib import Path

from hostctl.demo.config import DemoConfig, HostSpec
from hostctl.demo.nodexml import node_xml
from hostctl.demo.services import CVMService
from hostctl.demo.traffic import BackgroundTraffic
from hostctl.host.libvirt_host import Demand, LibvirtHost
from hostctl.wire.model import HostSEV, Service


def emulated_sev(spec: HostSpec) -> HostSEV:
    """The demo host's SEV facts, marked emulated: no kernel or firmware stands behind them."""
    return HostSEV(
        sev_enabled=True,
        sev_es_enabled=True,
        sev_snp_enabled=spec.sev_snp,
        dev_sev=True,
        max_guests=spec.sev_slots,
        max_es_guests=spec.es_slots,
        smt=True,
        emulated=True,
        why={"firmware": "emulated host: no SEV firmware to ask"},
    )


class DemoHost:
    """Runs one demo host. Each active vCPU of a CVM is one serving slot of its HTTP service."""

    def __init__(self, config: DemoConfig, spec: HostSpec, runtime: Path, *, traffic: bool = True) -> None:
        self.config = config
        self.spec = spec
        self.node_file = runtime / f"{spec.name}.xml"
        self.backend = LibvirtHost(
            f"test://{self.node_file}",
            name=spec.name,
            driver_options={"emulated": {"wake_ms": config.driver.wake_ms, "park_ms": config.driver.park_ms}},
            capabilities={"sev": True, "sev_es": spec.es_slots > 0, "sev_snp": spec.sev_snp and spec.es_slots > 0},
            sev_facts=emulated_sev(spec),
            cpu_source=self._cpu_percent,
            demand_source=self._demand,
        )
        seed = random.Random(spec.name)
        self.services = {
            cvm.name: CVMService(
                cvm.name,
                overhead=config.overhead.of(cvm.security),
                slots=cvm.online_vcpus or cvm.boot_vcpus,
                endpoints=config.endpoints,
                jitter=config.jitter,
                rng=random.Random(seed.random()),
            )
            for cvm in spec.cvms
        }
        self._traffic_on = traffic
        self._traffic: list[BackgroundTraffic] = []

    async def start(self) -> None:
        """Write the node XML, open libvirt, start the services and the traffic."""
        self.node_file.parent.mkdir(parents=True, exist_ok=True)
        self.node_file.write_text(node_xml(self.spec))
        await self.backend.open()
        self.backend.on_change(self._follow_vcpus)
        for service in self.services.values():
            await service.start()
        if self._traffic_on and self.config.traffic.peak_rps > 0:
            for i, service in enumerate(self.services.values()):
                urls = service.urls()
                targets = [(urls[e.name], e.weight) for e in self.config.endpoints]
                traffic = BackgroundTraffic(
                    targets,
                    base_rps=self.config.traffic.base_rps,
                    peak_rps=self.config.traffic.peak_rps,
                    day_seconds=self.config.traffic.day_seconds,
                    phase=i / max(1, len(self.services)) / 3,
                )
                await traffic.start()
                self._traffic.append(traffic)

    async def stop(self) -> None:
        for traffic in self._traffic:
            await traffic.stop()
        for service in self.services.values():
            await service.stop()
        await self.backend.close()

    def service_list(self) -> list[Service]:
        """Every endpoint of every CVM, as the host model's services."""
        return [
            Service(name=endpoint, cvm=cvm, url=url)
            for cvm, service in self.services.items()
            for endpoint, url in service.urls().items()
        ]

    def _follow_vcpus(self, name: str) -> None:
        service = self.services.get(name)
        cvm = self.backend.get(name)
        online = None if cvm is None else cvm.online_vcpus
        if service is not None and online is not None and service.slots.capacity != online:
            service.set_slots(online)

    def _cpu_percent(self, name: str) -> float:
        service = self.services.get(name)
        return service.cpu_percent() if service is not None else 0.0

    def _demand(self, name: str) -> Demand | None:
        service = self.services.get(name)
        return Demand(*service.demand()) if service is not None else None
