"""Shared fixtures: demo hosts in libvirt's test driver, generated from real settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostctl.demo.config import CVMSpec, HostSpec
from hostctl.demo.nodexml import node_xml
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire.security import SecurityType

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit logs, policy state and run history of every test (and of the agents it starts) stay in its tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
async def host(tmp_path: Path):
    """An open LibvirtHost over a generated node whose CVMs use the emulated driver."""
    backend = LibvirtHost(
        f"test://{make_node(tmp_path)}", name="edge-1", driver_options={"emulated": {"wake_ms": 1, "park_ms": 1}}
    )
    await backend.open()
    yield backend
    await backend.close()
