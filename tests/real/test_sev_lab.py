"""SEV facts from the lab's real libvirtd and QEMU: their domain capabilities are read (not assumed), the kernel's
side matches what this machine shows, and the slots in use are the lab's running CVMs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hostctl.host.libvirt_host import LibvirtHost
from hostctl.host.platform import read_platform
from hostctl.wire.model import DomainState
from tests.support.lab import LabSite


def test_real_libvirt_and_kernel_facts(lab: LabSite) -> None:
    async def read() -> None:
        async with LibvirtHost("qemu:///system") as backend:
            host = backend.host
            facts = host.confidential
            assert facts is not None and not facts.emulated
            assert host.sev is not None, facts.why  # QEMU's domain capabilities say yes or no
            if not host.sev:
                assert (host.sev_es, host.sev_snp, facts.max_guests, facts.max_es_guests) == (False, False, 0, 0)
            platform = read_platform(Path("/"))
            assert facts.sev_snp_enabled == platform.enabled("sev_snp") and facts.smt == platform.smt_active
            if facts.sev_snp_enabled is None:
                assert facts.why["sev_snp_enabled"]
            ours = [c for c in backend.cvms if c.name.startswith(lab.prefix) and c.state is DomainState.RUNNING]
            assert ours and facts.es_guests >= sum(1 for c in ours if c.security.es_asid)
            for cvm in ours:
                if cvm.security.confidential:
                    assert cvm.launch is not None and cvm.launch.why, cvm

    asyncio.run(read())
