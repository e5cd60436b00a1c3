"""Node XML files for libvirt's test driver, generated from the demo's real settings."""

from __future__ import annotations

from pathlib import Path

from hostctl.demo.config import CVMSpec, HostSpec
from hostctl.demo.nodexml import node_xml
from hostctl.wire.security import SecurityType


def make_node(tmp_path: Path, driver: str = "emulated", name: str = "edge-1") -> Path:
    """A node XML file with one CVM of each security type (boot 1, max 5, 2 online)."""
    spec = HostSpec(
        name=name,
        cvms=[
            CVMSpec(name="snp", security=SecurityType.SEV_SNP, boot_vcpus=1, max_vcpus=5, online_vcpus=2),
            CVMSpec(name="es", security=SecurityType.SEV_ES, boot_vcpus=1, max_vcpus=5, online_vcpus=2),
            CVMSpec(name="sev", security=SecurityType.SEV, boot_vcpus=1, max_vcpus=5, online_vcpus=2),
            CVMSpec(name="plain", security=SecurityType.NONE, boot_vcpus=1, max_vcpus=5, online_vcpus=2),
        ],
    )
    path = tmp_path / f"{name}-{driver}.xml"
    path.write_text(node_xml(spec, driver=driver))
    return path
