"""The libvirt backend on libvirt's test driver: inventory, events, compare-and-set scaling, drivers."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import libvirt
import pytest

from hostctl.errors import HostctlError, ScaleRefused
from hostctl.host.domxml import WORKERS_NS
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire.model import DomainState, Event
from hostctl.wire.security import SecurityType
from tests.support.nodes import make_node


async def test_inventory_reads_security_and_vcpus(host: LibvirtHost) -> None:
    by_name = {c.name: c for c in host.cvms}
    assert {n: c.security for n, c in by_name.items()} == {
        "snp": SecurityType.SEV_SNP,
        "es": SecurityType.SEV_ES,
        "sev": SecurityType.SEV,
        "plain": SecurityType.NONE,
    }
    snp = by_name["snp"]
    assert snp.policy == 0x30000 and snp.policy_flags == ["smt-allowed", "reserved-1"]
    assert (snp.boot_vcpus, snp.online_vcpus, snp.max_vcpus) == (1, 2, 5)
    assert (snp.workers_active, snp.workers_max) == (1, 4)
    assert snp.state is DomainState.RUNNING and snp.driver == "emulated"
    assert by_name["es"].policy_flags == ["no-debug", "no-key-sharing", "es-required"]
    assert host.host.cpus == 16 and host.host.memory_mib == 64 * 1024


async def test_scale_applies_and_writes_metadata(host: LibvirtHost) -> None:
    event = await host.scale("snp", 4, expect=2, who="alice", why="test")
    assert (event.ok, event.before, event.after, event.who) == (True, 2, 4, "alice")
    assert host.cvm("snp").online_vcpus == 4 and host.cvm("snp").scaled_by == "alice"
    # What libvirt itself now says, read on a thread of our own.
    conn = host._conn
    dom = conn.lookupByName("snp")
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 4
    meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, WORKERS_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert 'active="3"' in meta and 'max="4"' in meta and 'by="alice"' in meta


async def test_compare_and_set_refuses_a_stale_expectation(host: LibvirtHost) -> None:
    with pytest.raises(ScaleRefused) as refused:
        await host.scale("snp", 3, expect=4)
    assert refused.value.current == 2 and "expected 4" in str(refused.value) and "found 2" in str(refused.value)
    assert host.cvm("snp").online_vcpus == 2


async def test_a_retried_request_applies_once(host: LibvirtHost) -> None:
    events: list[Event] = []
    host.on_event(events.append)
    first = await host.scale("snp", 3, expect=2, who="console")
    retry = await host.scale("snp", 3, expect=2, who="console")
    assert (first.before, first.after) == (2, 3)
    assert (retry.before, retry.after) == (3, 3) and "nothing changed" in retry.why
    assert host.cvm("snp").online_vcpus == 3
    applied = [e for e in events if e.ok and e.before != e.after]
    assert len(applied) == 1


@pytest.mark.parametrize("target", [0, 6, 100, -1])
async def test_targets_outside_boot_to_max_are_refused(host: LibvirtHost, target: int) -> None:
    events: list[Event] = []
    host.on_event(events.append)
    with pytest.raises(ScaleRefused, match=r"outside boot\.\.max \(1\.\.5\)"):
        await host.scale("plain", target)
    assert host.cvm("plain").online_vcpus == 2
    assert [e.ok for e in events] == [False]


async def test_unknown_cvm_names_the_known_ones(host: LibvirtHost) -> None:
    with pytest.raises(HostctlError, match=r"unknown CVM 'nope' on edge-1 \(known: es, plain, sev, snp\)"):
        await host.scale("nope", 2)


async def test_metadata_change_event_updates_the_inventory(host: LibvirtHost) -> None:
    """Another writer's metadata change arrives as an event and the record is re-read."""
    changed: list[str] = []
    host.on_change(changed.append)
    conn = host._conn
    dom = conn.lookupByName("sev")
    await asyncio.to_thread(dom.setVcpusFlags, 4, libvirt.VIR_DOMAIN_AFFECT_LIVE)  # no event for this alone
    await asyncio.to_thread(
        dom.setMetadata,
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        '<workers active="3" max="4" by="bob" at="1.0"/>',
        "dittow",
        WORKERS_NS,
        libvirt.VIR_DOMAIN_AFFECT_LIVE,
    )
    for _ in range(100):
        if host.cvm("sev").online_vcpus == 4:
            break
        await asyncio.sleep(0.01)
    assert host.cvm("sev").online_vcpus == 4 and host.cvm("sev").scaled_by == "bob"
    assert "sev" in changed


async def test_lifecycle_events_update_state(host: LibvirtHost) -> None:
    dom = host._conn.lookupByName("plain")
    await asyncio.to_thread(dom.suspend)
    for _ in range(100):
        if host.cvm("plain").state is DomainState.PAUSED:
            break
        await asyncio.sleep(0.01)
    assert host.cvm("plain").state is DomainState.PAUSED
    with pytest.raises(ScaleRefused, match="paused, not running"):
        await host.scale("plain", 3)


async def test_cpu_sampling_gives_percentages(host: LibvirtHost) -> None:
    await host.sample()
    await asyncio.sleep(0.1)
    await host.sample()
    assert all(0.0 <= c.cpu_percent <= 100.0 for c in host.cvms)
    assert 0.0 <= host.host.cpu_percent <= 100.0


async def _open(tmp_path: Path, driver: str) -> LibvirtHost:
    backend = LibvirtHost(f"test://{make_node(tmp_path, driver=driver)}")
    await backend.open()
    return backend


@pytest.mark.parametrize("cvm", ["snp", "es"])
async def test_hotplug_is_refused_when_the_launch_measures_vcpus(tmp_path: Path, cvm: str) -> None:
    backend = await _open(tmp_path, "hotplug")
    try:
        with pytest.raises(ScaleRefused, match="launch measurement covers every vCPU"):
            await backend.scale(cvm, 3, expect=2)
        assert backend.cvm(cvm).online_vcpus == 2
    finally:
        await backend.close()


async def test_hotplug_scales_plain_and_sev_vms(tmp_path: Path) -> None:
    backend = await _open(tmp_path, "hotplug")
    try:
        assert (await backend.scale("plain", 4, expect=2)).after == 4
        assert (await backend.scale("sev", 1, expect=2)).after == 1
    finally:
        await backend.close()


async def test_guest_driver_without_a_guest_agent_knows_no_count(tmp_path: Path) -> None:
    """No guest agent (the test driver has none): the count is unknown with the reason, never libvirt's stand-in."""
    backend = await _open(tmp_path, "guest")
    try:
        snp = backend.cvm("snp")
        assert snp.online_vcpus is None and snp.workers_active is None and snp.cpu_percent is None
        assert snp.vcpus_error.startswith("guest agent not answering: ")
        with pytest.raises(ScaleRefused, match=r"^snp: refused: its online vCPU count is unknown \(guest agent not "):
            await backend.scale("snp", 3, expect=2)
        await backend.sample()
        assert backend.cvm("snp").online_vcpus is None
    finally:
        await backend.close()


async def test_unknown_driver_is_a_clear_error(tmp_path: Path) -> None:
    backend = await _open(tmp_path, "ditto-hv")
    try:
        with pytest.raises(HostctlError, match="unknown worker driver 'ditto-hv'"):
            await backend.scale("snp", 3)
    finally:
        await backend.close()


async def test_a_registered_driver_plugs_in_by_name(tmp_path: Path) -> None:
    from hostctl.host import drivers

    calls: list[int] = []

    @drivers.register("ditto-hv")
    class DittoDriver(drivers.EmulatedDriver):
        name = "ditto-hv"

        def apply(self, dom, cvm, target):  # type: ignore[no-untyped-def]
            calls.append(target)
            super().apply(dom, cvm, target)

    try:
        backend = await _open(tmp_path, "ditto-hv")
        try:
            await backend.scale("snp", 3, expect=2)
            assert calls == [3] and backend.cvm("snp").online_vcpus == 3
        finally:
            await backend.close()
    finally:
        drivers.REGISTRY.pop("ditto-hv")


async def test_unreachable_uri_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HostctlError, match=re.escape("cannot open libvirt URI 'test:///no/such/node.xml'")):
        await LibvirtHost("test:///no/such/node.xml").open()
    with pytest.raises(HostctlError, match="cannot open libvirt URI 'bogus:///x'"):
        await LibvirtHost("bogus:///x").open()
