"""libvirt test-driver node XML for one demo host, generated from its settings."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

from hostctl.demo.config import CVMSpec, HostSpec
from hostctl.host.domxml import cvm_metadata
from hostctl.wire.security import SecurityType


def node_xml(host: HostSpec, driver: str = "emulated") -> str:
    """A node with the host's CPUs and memory and one running domain per CVM, scaled by `driver`."""
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, value in (("nodes", 1), ("sockets", 1), ("cores", max(1, host.cpus // 2)), ("threads", 2), ("mhz", 2450)):
        ET.SubElement(cpu, tag).text = str(value)
    ET.SubElement(node, "memory").text = str(host.memory_gib * 1024 * 1024)
    for spec in host.cvms:
        node.append(_domain(host, spec, driver))
    ET.indent(node)
    return ET.tostring(node, encoding="unicode")


def _domain(host: HostSpec, spec: CVMSpec, driver: str) -> ET.Element:
    dom = ET.Element("domain", type="test")
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "uuid").text = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dittotui-demo/{host.name}/{spec.name}"))
    ET.SubElement(dom, "memory").text = str(spec.memory_mib * 1024)
    ET.SubElement(dom, "vcpu", current=str(spec.online_vcpus)).text = str(spec.max_vcpus)
    ET.SubElement(ET.SubElement(dom, "os"), "type").text = "hvm"
    if spec.security in (SecurityType.SEV, SecurityType.SEV_ES):
        # libvirt expresses SEV and SEV-ES itself (ES is policy bit 2); SEV-SNP needs libvirt >= 10.5,
        # so on older libvirt it is carried in our metadata only.
        launch = ET.SubElement(dom, "launchSecurity", type="sev")
        ET.SubElement(launch, "cbitpos").text = "51"
        ET.SubElement(launch, "reducedPhysBits").text = "1"
        ET.SubElement(launch, "policy").text = f"0x{spec.policy:04x}"
    metadata = ET.SubElement(dom, "metadata")
    assert spec.policy is not None
    metadata.append(ET.fromstring(cvm_metadata(spec.security, spec.policy, spec.boot_vcpus, driver)))
    return dom
