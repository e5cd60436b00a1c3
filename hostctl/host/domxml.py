"""Read a libvirt domain's XML: launch security, our namespaced metadata, vCPU counts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TypeVar

from hostctl.host.sev import parse_launch_xml
from hostctl.wire.model import Launch
from hostctl.wire.security import SecurityType

# Our metadata lives in two namespaces: one written when a CVM is defined (security where libvirt cannot
# express it, boot vCPUs, worker driver), one rewritten after every scale (so other clients see a change).
CVM_NS = "urn:dittotui:cvm:1"
CVM_KEY = "ditto"
WORKERS_NS = "urn:dittotui:workers:1"
WORKERS_KEY = "dittow"

ES_REQUIRED = 1 << 2


@dataclass
class DomainFacts:
    """What a domain's XML says about it as a CVM."""

    security: SecurityType = SecurityType.NONE
    policy: int = 0
    vcpus_current: int = 1
    vcpus_max: int = 1
    boot_vcpus: int | None = None
    driver: str | None = None
    guest_agent: bool = False
    scaled_by: str = ""
    scaled_at: float | None = None
    launch: Launch | None = None  # what its <launchSecurity> says beyond type and policy


def parse_domain(xml: str) -> DomainFacts:
    """Parse a domain's XML into the facts the host model needs."""
    root = ET.fromstring(xml)
    facts = DomainFacts()
    vcpu = root.find("vcpu")
    if vcpu is not None and vcpu.text:
        facts.vcpus_max = int(vcpu.text)
        facts.vcpus_current = int(vcpu.get("current", vcpu.text))
    facts.guest_agent = any(t.get("name") == "org.qemu.guest_agent.0" for t in root.findall("devices/channel/target"))
    launch = root.find("launchSecurity")
    if launch is not None:
        facts.policy = _int(launch.findtext("policy"), 0)
        kind = launch.get("type")
        if kind == "sev-snp":
            facts.security = SecurityType.SEV_SNP
            facts.policy = _int(launch.findtext("policy"), 0x30000)
        elif kind == "sev":
            facts.security = SecurityType.SEV_ES if facts.policy & ES_REQUIRED else SecurityType.SEV
        if facts.security.confidential:
            facts.launch = parse_launch_xml(launch, facts.security)
    meta = root.find(f"metadata/{{{CVM_NS}}}cvm")
    if meta is not None:
        security = meta.find(f"{{{CVM_NS}}}security")
        if security is not None and launch is None:
            # Only where the libvirt in use cannot express it (sev-snp before libvirt 10.5).
            facts.security = SecurityType(security.get("type", "none"))
            facts.policy = _int(security.get("policy"), 0)
        workers = meta.find(f"{{{CVM_NS}}}workers")
        if workers is not None:
            facts.boot_vcpus = _int(workers.get("boot"), None)
            facts.driver = workers.get("driver")
    state = root.find(f"metadata/{{{WORKERS_NS}}}workers")
    if state is not None:
        facts.scaled_by = state.get("by", "")
        facts.scaled_at = float(state.get("at", "0")) or None
    return facts


def cvm_metadata(security: SecurityType, policy: int, boot_vcpus: int, driver: str) -> str:
    """The definition-time metadata element for a CVM."""
    el = ET.Element(f"{CVM_KEY}:cvm", {f"xmlns:{CVM_KEY}": CVM_NS})
    ET.SubElement(el, f"{CVM_KEY}:security", type=security.value, policy=hex(policy))
    ET.SubElement(el, f"{CVM_KEY}:workers", boot=str(boot_vcpus), driver=driver)
    return ET.tostring(el, encoding="unicode")


def workers_metadata(active: int, maximum: int, by: str, at: float) -> str:
    """The element rewritten after every scale (libvirt fires no event for a vCPU change)."""
    el = ET.Element("workers", active=str(active), max=str(maximum), by=by, at=f"{at:.3f}")
    return ET.tostring(el, encoding="unicode")


D = TypeVar("D", int, None)  # the default of `_int`: a number, or None for "not given"


def _int(text: str | None, default: D) -> int | D:
    """`text` as an integer (decimal, or hex with 0x), `default` when it is missing or blank."""
    if text is None or not text.strip():
        return default
    return int(text.strip(), 0)
