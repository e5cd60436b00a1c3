"""The demo site's settings (`hostctl/data/demo.toml`): emulated hosts, their CVMs and the service physics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hostctl import config, data
from hostctl.config import check, non_negative, positive
from hostctl.demo.services import Endpoint
from hostctl.wire.security import SNP_DEFAULT_POLICY, SecurityType

DEFAULT_CONFIG = data.DEMO_CONFIG

# Launch policy used when a CVM names none: SEV no-debug + no-key-sharing, ES adds es-required.
DEFAULT_POLICY = {
    SecurityType.NONE: 0,
    SecurityType.SEV: 0x03,
    SecurityType.SEV_ES: 0x07,
    SecurityType.SEV_SNP: SNP_DEFAULT_POLICY,
}


def _name(value: str) -> str | None:
    ok = value and all(c.isalnum() or c in "-_." for c in value)
    return None if ok else "must be letters, digits, '-', '_' or '.'"


@dataclass
class CVMSpec:
    """One emulated CVM: its security type, boot vCPUs and worker vCPUs."""

    name: str = check(_name)
    security: SecurityType = SecurityType.SEV_SNP
    policy: int | None = check(non_negative, default=None)
    boot_vcpus: int = check(positive, default=1)
    max_vcpus: int = check(positive, default=8)
    online_vcpus: int | None = None
    memory_mib: int = check(positive, default=2048)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = DEFAULT_POLICY[self.security]
        if self.online_vcpus is None:
            self.online_vcpus = self.boot_vcpus
        if not self.boot_vcpus <= self.max_vcpus:
            raise ValueError(f"cvm {self.name!r}: boot_vcpus {self.boot_vcpus} > max_vcpus {self.max_vcpus}")
        if not self.boot_vcpus <= self.online_vcpus <= self.max_vcpus:
            raise ValueError(
                f"cvm {self.name!r}: online_vcpus {self.online_vcpus} is outside boot..max "
                f"({self.boot_vcpus}..{self.max_vcpus})"
            )


@dataclass
class HostSpec:
    """One emulated host (a MEC host or a regional one)."""

    name: str = check(_name)
    role: str = check(lambda v: None if v in ("mec", "regional") else "is not one of mec, regional", default="mec")
    cpus: int = check(positive, default=16)
    memory_gib: int = check(positive, default=64)
    sev_snp: bool = True
    sev_slots: int = check(non_negative, default=494)  # emulated SEV ASIDs
    es_slots: int = check(non_negative, default=15)  # emulated SEV-ES/SNP ASIDs
    cvms: list[CVMSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [c.name for c in self.cvms]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"host {self.name!r}: cvm name {dupes[0]!r} appears twice")


@dataclass
class Overhead:
    """Latency multiplier per security type (SEV-SNP: +30-60% over plain, as published)."""

    none: float = check(positive, default=1.0)
    sev: float = check(positive, default=1.2)
    sev_es: float = check(positive, default=1.3)
    sev_snp: float = check(positive, default=1.45)

    def of(self, security: SecurityType) -> float:
        multiplier: float = getattr(self, security.value.replace("-", "_"))
        return multiplier


@dataclass
class Traffic:
    """Background traffic per CVM with a daily rhythm compressed into `day_seconds`."""

    base_rps: float = check(non_negative, default=5.0)
    peak_rps: float = check(non_negative, default=40.0)
    day_seconds: float = check(positive, default=300.0)


@dataclass
class Driver:
    """The emulated worker driver's wake and park delays."""

    wake_ms: float = check(non_negative, default=40.0)
    park_ms: float = check(non_negative, default=15.0)


@dataclass
class DemoConfig:
    """The whole demo site."""

    sample_interval: float = check(positive, default=1.0)
    probe_rate: float = check(non_negative, default=2.0)
    jitter: float = check(lambda v: None if 0 <= v < 1 else "must be in [0, 1)", default=0.2)
    overhead: Overhead = field(default_factory=Overhead)
    traffic: Traffic = field(default_factory=Traffic)
    driver: Driver = field(default_factory=Driver)
    endpoints: list[Endpoint] = field(default_factory=list)
    hosts: list[HostSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("hosts: at least one [[hosts]] table is required")
        if not self.endpoints:
            raise ValueError("endpoints: at least one [[endpoints]] table is required")
        names = [h.name for h in self.hosts]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"host name {dupes[0]!r} appears twice")

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


def load(path: Path = DEFAULT_CONFIG) -> DemoConfig:
    """Load and validate a demo site file."""
    return config.load(DemoConfig, path)
