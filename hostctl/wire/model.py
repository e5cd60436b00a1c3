"""The host model: one set of records used on both ends of the wire, carried as JSON."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any, Self

import msgspec

from hostctl.wire.security import SecurityType, decode_policy, risky_flags, smt_allowed


class DomainState(StrEnum):
    """A libvirt domain's run state, as operators name it."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


class Model(msgspec.Struct, gc=False):
    """Base of the wire's records: structs converted losslessly to and from JSON-compatible dicts.

    A record is never tracked by the garbage collector (`gc=False`): records are acyclic data (text, numbers, enums,
    other records, and lists and dicts of them), freed by reference counting. A console that takes in thousands of
    them a second then gives the collector's passes nothing of theirs to walk (bench/results/gc_young.md).
    """

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The record from `data`: missing fields take their defaults, unknown ones are ignored, every value is
        checked against its field's type (ValueError naming the path of a bad one)."""
        return msgspec.convert(data, cls)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))


class Host(Model):
    """One hypervisor host as its agent sees it."""

    name: str
    uri: str
    cpus: int
    memory_mib: int
    cpu_percent: float = 0.0
    load: float | None = None
    sev: bool | None = None
    sev_es: bool | None = None
    sev_snp: bool | None = None
    libvirt_version: str = ""
    confidential: HostSEV | None = None  # None from an agent that predates it


class HostSEV(Model):
    """What a host offers confidential guests. `sev`, `sev_es` and `sev_snp` on `Host` say what libvirt supports;
    here is what the kernel has enabled, the ASIDs (one per running guest) used of the most the firmware allows, the
    firmware's API version and SMT. None is unknown, and `why` names the field with the reason."""

    sev_enabled: bool | None = None  # kvm_amd's sev, sev_es, sev_snp parameters
    sev_es_enabled: bool | None = None
    sev_snp_enabled: bool | None = None
    dev_sev: bool | None = None  # /dev/sev, the firmware device QEMU opens
    max_guests: int | None = None  # SEV ASIDs (libvirt's maxGuests)
    max_es_guests: int | None = None  # SEV-ES and SEV-SNP ASIDs, one pool (libvirt's maxESGuests)
    sev_guests: int = 0  # running SEV CVMs
    es_guests: int = 0  # running SEV-ES and SEV-SNP CVMs
    firmware: str | None = None  # the firmware's API version and build, e.g. "1.55 build 21"
    firmware_from: str = ""  # where it was read
    smt: bool | None = None  # SMT active on the host
    emulated: bool = False  # the demo's facts, not read from any hardware
    why: dict[str, str] = msgspec.field(default_factory=dict)  # field -> why it is unknown

    @property
    def es_free(self) -> int | None:
        """SEV-ES/SNP ASIDs left for another CVM; None when the maximum is unknown."""
        return None if self.max_es_guests is None else max(0, self.max_es_guests - self.es_guests)

    @property
    def sev_free(self) -> int | None:
        return None if self.max_guests is None else max(0, self.max_guests - self.sev_guests)


class Launch(Model):
    """What a running CVM launched with beyond its type and policy, from its domain XML and libvirt's launch
    security info. None is unknown (or not given for this type), and `why` names the field with the reason."""

    measurement: str | None = None  # base64 launch digest (SEV, SEV-ES); an SNP guest's is in its attestation report
    api_version: str | None = None  # the firmware API version it launched under, e.g. "1.55"
    build_id: int | None = None
    kernel_hashes: bool | None = None  # kernel, initrd and command line hashes in the measurement
    host_data: str | None = None  # SNP: 32 bytes base64, carried into the attestation report
    id_block: bool | None = None  # SNP: an ID block given
    id_auth: bool | None = None  # SNP: an ID authentication structure given
    author_key: bool | None = None  # SNP: the ID authentication carries an author key
    why: dict[str, str] = msgspec.field(default_factory=dict)


class Elastic(Model):
    """A CVM's elastic policy as its agent runs it: which one, on or off, and its last decision with the reason."""

    policy: str
    enabled: bool = False
    decision: str = ""  # "up 2→3", "down 3→2" or "hold"
    reason: str = ""
    ts: float | None = None
    alert: bool = False  # the last decision held for want of data or capacity


class CVM(Model):
    """A (confidential) VM with worker vCPUs beyond its boot set."""

    name: str
    uuid: str
    state: DomainState
    security: SecurityType = SecurityType.NONE
    policy: int = 0
    boot_vcpus: int = 1
    max_vcpus: int = 1
    online_vcpus: int | None = 1  # boot + active workers; None: not known now, and `vcpus_error` says why
    driver: str = "hotplug"
    cpu_percent: float | None = 0.0  # of the online vCPUs; None while their count is unknown
    vcpus_error: str = ""  # why the online count is unknown: the guest agent not answering, paused, shut off
    last_online: int | None = None  # while unknown: the last count known (for the operator's eye, never acted on)
    last_online_at: float | None = None  # ... and when it was last read
    scaled_by: str = ""
    scaled_at: float | None = None
    concurrency: float | None = None  # mean requests in flight or queued over the last sample; None: unknown
    rps: float | None = None  # requests its services received per second over the last sample; None: unknown
    elastic: Elastic | None = None
    launch: Launch | None = None  # while running and confidential

    @property
    def policy_flags(self) -> list[str]:
        return decode_policy(self.security, self.policy)

    @property
    def risky(self) -> dict[str, str]:
        """The policy's risky permissions and why each is one."""
        return risky_flags(self.security, self.policy)

    @property
    def smt_allowed(self) -> bool | None:
        """Whether its policy lets it run on a host with SMT on; None where the policy has no say."""
        return smt_allowed(self.security, self.policy)

    @property
    def workers_active(self) -> int | None:
        """Active workers, or None while the online count is unknown."""
        return None if self.online_vcpus is None else max(0, self.online_vcpus - self.boot_vcpus)

    @property
    def workers_max(self) -> int:
        return max(0, self.max_vcpus - self.boot_vcpus)


class Latency(Model):
    """A service's probed latency over one window (milliseconds)."""

    window_s: float
    count: int = 0
    errors: int = 0
    rps: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0


class Service(Model):
    """An HTTP endpoint served by a CVM, with its probed latency per window (`10s`, `60s`) when probed."""

    name: str
    cvm: str
    url: str
    latency: dict[str, Latency] = msgspec.field(default_factory=dict)


class Event(Model):
    """An audit record: who did what to which CVM, the state before and after, and why."""

    host: str
    cvm: str
    action: str
    who: str
    ok: bool
    before: int | None = None
    after: int | None = None
    why: str = ""
    ts: float = msgspec.field(default_factory=time.time)


class Snapshot(Model):
    """A host with everything on it, as one consistent picture."""

    host: Host
    cvms: list[CVM] = msgspec.field(default_factory=list)
    services: list[Service] = msgspec.field(default_factory=list)
    ts: float = msgspec.field(default_factory=time.time)
