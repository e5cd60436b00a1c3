"""SEV facts from the lab's real libvirtd and QEMU: their domain capabilities are read (not assumed), the kernel's
side matches what this machine shows, and the slots in use are the lab's running CVMs."""

from __future__ import annotations

import json
from pathlib import Path

from hostctl.host.libvirt_host import LibvirtHost
from hostctl.host.platform import read_platform
from hostctl.wire.doctor import Report, Status
from hostctl.wire.model import DomainState
from tests.support.lab import URI, LabSite, hostctl


async def test_real_libvirt_and_kernel_facts(lab: LabSite) -> None:
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


def test_doctor_on_the_lab(lab: LabSite) -> None:
    """`hostctl doctor` against the real libvirtd: real versions, the lab's guest-driver CVMs' guest agents answer
    a real guest-ping, the SEV hardware checks say emulated (the lab has none), and the host passes."""
    done = hostctl("--uri", URI, "doctor", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = Report.from_dict(json.loads(done.stdout))
    checks = {c.name: c for c in report.checks}
    assert report.emulated and checks["libvirt"].status == Status.OK
    assert checks["QEMU"].status == Status.OK and checks["QEMU"].detail[0].isdigit(), checks["QEMU"]
    ours = [name for name in checks if name.startswith(lab.prefix) and name.endswith(" guest agent")]
    assert len(ours) == 2, sorted(checks)  # the two SNP guests run the guest driver; the plain one hotplug
    for name in ours:
        assert checks[name].status == Status.OK and checks[name].detail == "answers (guest-ping)"
