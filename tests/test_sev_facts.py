"""SEV facts: libvirt's support and guest limits, the kernel's side, ASIDs in use, and what each CVM launched with.

What needs SEV hardware is read from libvirt's documented XML and parameter names (tests/data/sev/README.md); the
rest runs on libvirt's test driver and a sysfs tree written under tmp_path.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hostctl.host import sev
from hostctl.host.domxml import parse_domain
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.host.platform import read_platform
from hostctl.wire.model import CVM, DomainState, Host, HostSEV, Launch, Snapshot
from hostctl.wire.security import SecurityType, decode_policy, risky_flags, smt_allowed
from tests.support.nodes import make_node
from tests.test_cli import hostctl

DATA = Path(__file__).parent / "data" / "sev"


def data(name: str) -> str:
    return (DATA / name).read_text()


def sysfs(root: Path, *, sev_snp: str = "Y", smt: str = "1", dev_sev: bool = True) -> Path:
    """A host's kvm_amd parameters, /dev/sev and SMT state, as the kernel shows them."""
    files = {
        "sys/module/kvm_amd/parameters/sev": "Y\n",
        "sys/module/kvm_amd/parameters/sev_es": "Y\n",
        "sys/module/kvm_amd/parameters/sev_snp": f"{sev_snp}\n",
        "sys/devices/system/cpu/smt/control": "on\n",
        "sys/devices/system/cpu/smt/active": f"{smt}\n",
    }
    if dev_sev:
        files["dev/sev"] = ""
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def test_an_snp_host_reports_its_slots() -> None:
    support = sev.parse_domain_capabilities(data("domcaps-snp.xml"))
    assert (support.sev, support.sev_es, support.sev_snp) == (True, True, True)
    assert (support.max_guests, support.max_es_guests) == (494, 15) and support.why == {}


def test_sev_es_needs_es_slots_not_just_sev() -> None:
    """The defect: SEV-ES was taken to be supported wherever SEV was. With no ES ASID, no SEV-ES or SNP guest runs."""
    support = sev.parse_domain_capabilities(data("domcaps-sev-only.xml"))
    assert support.sev is True and support.max_guests == 509
    assert (support.sev_es, support.sev_snp, support.max_es_guests) == (False, False, 0)


def test_older_libvirt_limits_come_from_node_sev_info() -> None:
    support = sev.parse_domain_capabilities(data("domcaps-old.xml"))
    assert support.sev is True and support.sev_es is None and support.max_es_guests is None
    assert "no maxESGuests (libvirt before 8.0)" in support.why["max_es_guests"]
    assert "no launch security types" in support.why["sev_snp"]
    sev.node_limits(json.loads(data("node-sev-info.json")), support)
    assert (support.max_guests, support.max_es_guests, support.sev_es) == (494, 15, True)
    assert "max_es_guests" not in support.why and "sev_es" not in support.why


def test_a_host_without_sev() -> None:
    support = sev.parse_domain_capabilities(data("domcaps-nosev.xml"))
    assert (support.sev, support.sev_es, support.sev_snp, support.max_es_guests) == (False, False, False, 0)
    bare = sev.parse_domain_capabilities("<domainCapabilities><features/></domainCapabilities>")
    assert bare.sev is None and "no <sev> element" in bare.why["sev"]


def test_kernel_facts_and_why_they_are_unknown(tmp_path: Path) -> None:
    support = sev.parse_domain_capabilities(data("domcaps-snp.xml"))
    facts = sev.host_facts(support, read_platform(sysfs(tmp_path / "snp", sev_snp="N")))
    assert (facts.sev_enabled, facts.sev_es_enabled, facts.sev_snp_enabled) == (True, True, False)
    assert facts.dev_sev is True and facts.smt is True and facts.why == {}
    bare = tmp_path / "bare"
    bare.mkdir()
    unknown = sev.host_facts(support, read_platform(bare))
    assert unknown.sev_snp_enabled is None and unknown.smt is None and unknown.dev_sev is False
    assert "kvm_amd is not loaded" in unknown.why["sev_snp_enabled"] and unknown.why["smt"] == "absent"
    remote = sev.host_facts(support, None, "not on this machine")
    assert remote.sev_enabled is None and remote.why["smt"] == "not on this machine"


def test_slots_in_use_are_counted_by_type() -> None:
    def cvm(name: str, security: SecurityType, state: DomainState = DomainState.RUNNING) -> CVM:
        return CVM(name=name, uuid=name, state=state, security=security)

    facts = HostSEV(max_guests=494, max_es_guests=2)
    cvms = [
        cvm("a", SecurityType.SEV_SNP),
        cvm("b", SecurityType.SEV_ES),
        cvm("c", SecurityType.SEV),
        cvm("d", SecurityType.NONE),
        cvm("e", SecurityType.SEV_SNP, DomainState.SHUTOFF),
    ]
    counted = sev.count_guests(facts, cvms)
    assert (counted.es_guests, counted.sev_guests, counted.es_free, counted.sev_free) == (2, 1, 0, 493)
    assert counted.firmware is None and "none gave it" in counted.why["firmware"]
    assert facts.es_guests == 0  # a copy: the host's record is replaced, never changed under a reader
    cvms[2].launch = sev.add_launch_info(Launch(), json.loads(data("launch-info-sev.json")))
    counted = sev.count_guests(facts, cvms)
    assert counted.firmware == "1.55 build 21" and counted.firmware_from == "libvirt's launch security info of c"
    assert "firmware" not in counted.why


def test_snp_launch_facts_from_the_domain_xml() -> None:
    facts = parse_domain(data("domain-snp.xml"))
    assert facts.security is SecurityType.SEV_SNP and facts.policy == 0x02030000
    launch = facts.launch
    assert launch is not None
    assert (launch.kernel_hashes, launch.id_block, launch.id_auth, launch.author_key) == (True, True, True, True)
    assert launch.host_data == "3q2+796tvu/erb7v3q2+796tvu/erb7v3q2+796tvu8="


def test_sev_launch_facts_from_xml_and_launch_info() -> None:
    facts = parse_domain(data("domain-sev.xml"))
    assert facts.security is SecurityType.SEV and facts.launch is not None
    launch = sev.add_launch_info(facts.launch, json.loads(data("launch-info-sev.json")))
    assert launch.kernel_hashes is True and launch.host_data is None and launch.id_block is None
    assert launch.measurement is not None and len(launch.measurement) == 64
    assert (launch.api_version, launch.build_id) == ("1.55", 21)
    failed = sev.add_launch_info(Launch(), None, "libvirt's launch security info: not supported")
    assert failed.measurement is None and failed.why["measurement"] == "libvirt's launch security info: not supported"


def test_every_snp_policy_bit_is_named() -> None:
    assert decode_policy(SecurityType.SEV_SNP, 0x02030000) == ["smt-allowed", "reserved-1", "page-swap-disable"]
    every = sum(1 << bit for bit in range(16, 26))
    assert not [f for f in decode_policy(SecurityType.SEV_SNP, every) if f.startswith("bit-")]
    assert decode_policy(SecurityType.SEV, 0x37_01_0001) == ["no-debug", "api>=1.55"]


@pytest.mark.parametrize(
    ("security", "policy", "risky"),
    [
        (SecurityType.SEV_SNP, 0x30000, set()),
        (SecurityType.SEV_SNP, 0xF0000, {"debug-allowed", "migrate-ma"}),
        (SecurityType.SEV, 0x3, set()),
        (SecurityType.SEV_ES, 0x4, {"debug", "key-sharing"}),
        (SecurityType.NONE, 0, set()),
    ],
)
def test_risky_bits(security: SecurityType, policy: int, risky: set[str]) -> None:
    assert set(risky_flags(security, policy)) == risky


def test_smt_allowed_only_where_the_policy_says() -> None:
    assert smt_allowed(SecurityType.SEV_SNP, 0x30000) is True
    assert smt_allowed(SecurityType.SEV_SNP, 0x20000) is False
    assert smt_allowed(SecurityType.SEV, 0x1) is None


def test_facts_cross_the_wire_and_old_peers_still_load() -> None:
    host = Host("h", "test:///x", 4, 1024, confidential=HostSEV(max_es_guests=15, es_guests=15, why={"smt": "x"}))
    cvm = CVM("c", "u", DomainState.RUNNING, launch=Launch(host_data="AAAA", id_block=False, why={"a": "b"}))
    snapshot = Snapshot(host=host, cvms=[cvm])
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    old = snapshot.to_dict()
    del old["host"]["confidential"], old["cvms"][0]["launch"]
    loaded = Snapshot.from_dict(old)
    assert loaded.host.confidential is None and loaded.cvms[0].launch is None


async def test_libvirt_host_reads_the_kernel_under_its_root(tmp_path: Path) -> None:
    """The test driver has no domain capabilities, SEV info or launch security info: each is unknown with libvirt's
    reason; the kernel's side comes from the tree under `platform_root`; slots in use from the running CVMs."""
    backend = LibvirtHost(f"test://{make_node(tmp_path)}", platform_root=sysfs(tmp_path / "root", smt="0"))
    async with backend:
        facts = backend.host.confidential
        assert facts is not None
        assert (facts.sev_enabled, facts.sev_es_enabled, facts.sev_snp_enabled, facts.smt) == (True, True, True, False)
        assert (facts.es_guests, facts.sev_guests) == (2, 1)  # snp and es; sev
        assert facts.max_es_guests is None and "not supported" in facts.why["max_es_guests"]
        assert backend.host.sev is None and backend.host.sev_es is None
        launch = backend.cvm("es").launch
        assert launch is not None and launch.measurement is None
        assert launch.why["measurement"].startswith("libvirt's launch security info: ")
        assert backend.cvm("plain").launch is None
        dom = backend._conn.lookupByName("snp")  # type: ignore[union-attr]
        await asyncio.to_thread(dom.destroy)  # its lifecycle event frees its slot
        for _ in range(200):
            if backend.cvm("snp").state is DomainState.SHUTOFF:
                break
            await asyncio.sleep(0.01)
        after = backend.snapshot().host.confidential
        assert after is not None and (after.es_guests, after.sev_guests) == (1, 1)


async def test_a_remote_or_test_uri_is_not_read_from_this_machine(tmp_path: Path) -> None:
    async with LibvirtHost(f"test://{make_node(tmp_path)}") as backend:
        facts = backend.host.confidential
        assert facts is not None and facts.sev_enabled is None and facts.smt is None
        assert "not a hypervisor on this machine" in facts.why["sev_enabled"]


def test_status_json_and_text_say_what_is_unknown_and_why(tmp_path: Path) -> None:
    uri = f"test://{make_node(tmp_path)}"
    data = json.loads(hostctl("--uri", uri, "status", "--json", check=True).stdout)
    facts = data["host"]["confidential"]
    assert (facts["es_guests"], facts["sev_guests"], facts["max_es_guests"]) == (2, 1, None)
    assert "virConnectGetDomainCapabilities" in facts["why"]["max_es_guests"]
    launch = next(c["launch"] for c in data["cvms"] if c["name"] == "es")
    assert launch["measurement"] is None and "launch security info" in launch["why"]["measurement"]
    text = hostctl("--uri", uri, "status", check=True).stdout
    assert "slots: SEV 1/?  ES/SNP 2/?  firmware ?  SMT ?" in text
    assert "unknown sev, sev_es, sev_snp, max_guests, max_es_guests: libvirt gives no domain capabilities" in text
