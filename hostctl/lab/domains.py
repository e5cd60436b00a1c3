"""Domain XML of the lab's guests: small TCG guests booted from the lab kernel, with a guest-agent channel.

A guest-driver "CVM" has every vCPU present from launch (as under SEV-SNP, where the launch measurement covers
them all) and boots with only its boot vCPUs online (`maxcpus=`); its workers are then onlined by the guest
agent. A hotplug VM starts with its boot vCPUs plugged and gets more by live hotplug.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from hostctl.host.domxml import cvm_metadata
from hostctl.lab.guest import AGENT_PORT
from hostctl.wire.security import SNP_DEFAULT_POLICY, SecurityType

PREFIX = "ditto-lab-"
MEMORY_MIB = 200
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*-")


@dataclass(frozen=True)
class GuestSpec:
    """One lab guest: its name (without the prefix), security metadata, worker driver and vCPUs."""

    name: str
    security: SecurityType
    driver: str  # "guest" or "hotplug"
    boot_vcpus: int = 1
    max_vcpus: int = 4

    @property
    def policy(self) -> int:
        return SNP_DEFAULT_POLICY if self.security is SecurityType.SEV_SNP else 0

    @property
    def plugged_vcpus(self) -> int:
        """vCPUs present at start: all of them for the guest driver, the boot ones for hotplug."""
        return self.max_vcpus if self.driver == "guest" else self.boot_vcpus


# Two guest-driver "SNP" CVMs with 1 boot vCPU of 4 and one plain hotplug VM.
GUESTS = (
    GuestSpec("snp-1", SecurityType.SEV_SNP, "guest"),
    GuestSpec("snp-2", SecurityType.SEV_SNP, "guest"),
    GuestSpec("plain", SecurityType.NONE, "hotplug"),
)


def check_prefix(prefix: str) -> str:
    """`prefix` if it is a safe domain-name prefix (letters, digits, '._-', ending in '-'), else ValueError."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"domain prefix {prefix!r} must be letters, digits, '.', '_' or '-' and end in '-'")
    return prefix


def domain_xml(spec: GuestSpec, *, prefix: str, kernel: Path, initrd: Path, console: Path) -> str:
    """The libvirt domain XML of `spec` (type qemu: TCG), booting `kernel` + `initrd` directly."""
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = prefix + spec.name
    ET.SubElement(dom, "memory", unit="MiB").text = str(MEMORY_MIB)
    ET.SubElement(dom, "vcpu", placement="static", current=str(spec.plugged_vcpus)).text = str(spec.max_vcpus)
    metadata = ET.SubElement(dom, "metadata")
    metadata.append(ET.fromstring(cvm_metadata(spec.security, spec.policy, spec.boot_vcpus, spec.driver)))
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64").text = "hvm"
    ET.SubElement(os_, "kernel").text = str(kernel)
    ET.SubElement(os_, "initrd").text = str(initrd)
    ET.SubElement(os_, "cmdline").text = cmdline(spec)
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "source", mode="bind")
    ET.SubElement(channel, "target", type="virtio", name=AGENT_PORT)
    serial = ET.SubElement(devices, "serial", type="unix")
    ET.SubElement(serial, "source", mode="bind", path=str(console))
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def cmdline(spec: GuestSpec) -> str:
    """The guest kernel's command line: serial console, quiet, and only the boot vCPUs online at start."""
    args = ["console=ttyS0", "quiet", "panic=-1"]
    if spec.plugged_vcpus > spec.boot_vcpus:
        args.append(f"maxcpus={spec.boot_vcpus}")
    return " ".join(args)
