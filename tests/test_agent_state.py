"""State that never grows and refusals that are never lost: a real agent over libvirt's test driver, real probes
of a real HTTP service, domains defined and undefined through the agent's own libvirt connection."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest

from hostctl.agent.audit import AuditLog
from hostctl.agent.probes import Prober, ProbeSample, Window
from hostctl.agent.server import Agent
from hostctl.demo.services import CVMService, Endpoint
from hostctl.elastic.runner import DEFAULT_POLICIES, load_policies, state_path
from hostctl.errors import HostctlError
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire import rpc
from hostctl.wire.model import Event, Service
from tests.support import waiting
from tests.support.nodes import make_node

BASE = ["es", "plain", "sev", "snp"]


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    """A headless agent (no console, nobody subscribed) with the shipped policies, serving on a socket."""
    host = LibvirtHost(
        f"test://{make_node(tmp_path)}", name="edge-1", driver_options={"emulated": {"wake_ms": 0, "park_ms": 0}}
    )
    await host.open()
    agent = Agent(
        host,
        audit=AuditLog(tmp_path / "audit.jsonl"),
        interval=0.05,
        probe_rate=0,
        policies=load_policies(DEFAULT_POLICIES),
    )
    agent.start()
    server = await agent.serve_unix(tmp_path / "agent.sock")
    yield agent
    server.close()
    await agent.stop()
    await host.close()


def audited(agent: Agent) -> list[dict]:
    return [json.loads(line) for line in agent.audit.path.read_text().splitlines()]


async def test_a_scale_of_an_undefined_cvm_is_audited(host: LibvirtHost) -> None:
    events: list[Event] = []
    host.on_event(events.append)
    with pytest.raises(HostctlError, match="unknown CVM 'gone' on edge-1"):
        await host.scale("gone", 3, expect=2, who="alice")
    (event,) = events
    assert (event.cvm, event.action, event.who, event.ok) == ("gone", "scale", "alice", False)
    assert (event.before, event.after) == (None, None)  # no count to have stayed at
    assert event.why.startswith("unknown CVM 'gone'") and event.why.endswith("(requested 3 vCPUs)")


async def test_a_refused_scale_records_the_count_it_stayed_at(host: LibvirtHost) -> None:
    events: list[Event] = []
    host.on_event(events.append)
    with pytest.raises(HostctlError, match=r"outside boot\.\.max"):
        await host.scale("snp", 9, who="alice")
    (event,) = events
    assert (event.ok, event.before, event.after) == (False, 2, 2)
    assert event.why.endswith("(requested 9 vCPUs)")


async def test_refused_policy_changes_are_audited(agent: Agent, tmp_path: Path) -> None:
    socket = str(tmp_path / "agent.sock")
    with pytest.raises(rpc.RpcError, match="unknown CVM 'nope'") as unknown_cvm:
        await rpc.call_unix(socket, "policy", cvm="nope", enabled=True, who="alice")
    with pytest.raises(rpc.RpcError, match="unknown policy 'magic'") as unknown_policy:
        await rpc.call_unix(socket, "policy", cvm="snp", name="magic", who="alice")
    assert (unknown_cvm.value.code, unknown_policy.value.code) == (rpc.REFUSED, rpc.INVALID_PARAMS)
    with pytest.raises(rpc.RpcError, match="unknown CVM 'nope'"):  # a read of it is refused, not audited
        await rpc.call_unix(socket, "policy", cvm="nope")
    first, second = audited(agent)
    assert (first["cvm"], first["action"], first["ok"]) == ("nope", "policy", False)
    assert first["who"].startswith("alice (") and first["why"].endswith("(requested on)")
    assert (second["cvm"], second["ok"]) == ("snp", False) and second["why"].endswith("(requested policy magic)")


def test_a_window_keeps_only_its_seconds_without_being_read() -> None:
    window = Window(10.0)
    for i in range(10_000):  # 1000 s at 10 probes a second, never summarised
        window.add(ProbeSample(at=i * 0.1, ms=1.0, ok=True))
    assert len(window.samples) <= 101
    assert window.stats(now=999.9).count == 101


async def test_a_headless_prober_keeps_a_bounded_number_of_samples() -> None:
    """Probes at 50/s into windows of 0.2 and 0.4 s, never summarised: each window holds about its own seconds."""
    service = CVMService("probe-me", overhead=0.5, slots=8, jitter=0.0, endpoints=[Endpoint("read", "/read", 1.0, 1.0)])
    await service.start()
    listed = [Service("read", "probe-me", service.urls()["read"])]
    prober = Prober(lambda: listed, rate=50.0, windows=(0.2, 0.4))
    prober.start()
    try:
        await waiting.until(lambda: service.stats()["read"]["requests"] >= 150, timeout=60)
        short, long = prober.windows["probe-me/read"]
        # 50/s over the window, plus those answered late or out of order: nowhere near the 150 sent.
        assert 0 < len(short.samples) <= 50 * 0.2 * 2 + prober.max_in_flight
        assert 0 < len(long.samples) <= 50 * 0.4 * 2 + prober.max_in_flight
        listed.clear()  # the service is gone: so are its windows
        await waiting.until(lambda: prober.windows == {}, timeout=10)
    finally:
        await prober.stop()
        await service.stop()


def _define(conn: libvirt.virConnect, template: str, name: str) -> None:
    root = ET.fromstring(template)
    root.find("name").text = name  # type: ignore[union-attr]
    root.remove(root.find("uuid"))  # type: ignore[arg-type]
    conn.defineXML(ET.tostring(root, encoding="unicode")).create()


def _undefine(conn: libvirt.virConnect, name: str) -> None:
    dom = conn.lookupByName(name)
    dom.destroy()
    dom.undefine()


def _sizes(agent: Agent) -> dict[str, int]:
    host, runner = agent.host, agent.elastic
    return {
        "cvms": len(host.cvms),
        "confirmed": len(host._confirmed),
        "scale locks": len(host._scale_locks),
        "cpu history": len(host._cpu_prev),
        "guest calls": len(host._asking),
        "elastic tracks": len(runner._tracks),
        "elastic samples": len(runner._samples),
    }


async def test_state_of_undefined_domains_is_dropped(agent: Agent) -> None:
    host = agent.host
    conn = host._conn
    assert conn is not None
    await host.scale("snp", 3, who="t")
    agent.elastic.choose("snp", name="threshold", who="t")
    await waiting.until(lambda: len(agent.elastic._samples) == 4)
    before = _sizes(agent)
    template = await asyncio.to_thread(lambda: conn.lookupByName("plain").XMLDesc(0))
    names = [f"tmp-{i}" for i in range(12)]
    for name in names:
        await asyncio.to_thread(_define, conn, template, name)
    await waiting.until(lambda: len(host.cvms) == 16)
    for name in names:
        await host.scale(name, 3, who="t")
        agent.elastic.choose(name, name="threshold", enabled=name.endswith(("0", "5")), who="t")
    await waiting.until(lambda: len(agent.elastic._samples) == 16 and len(host._cpu_prev) == 16)
    assert _sizes(agent)["scale locks"] == 13 and _sizes(agent)["elastic tracks"] == 13
    for name in names:
        await asyncio.to_thread(_undefine, conn, name)
    await waiting.until(lambda: len(host.cvms) == 4)
    await waiting.until(lambda: _sizes(agent) == before)  # the CPU history goes at the next sample
    assert set(json.loads(state_path(agent.audit.path).read_text())["cvms"]) == {"snp"}


async def test_a_restart_keeps_the_policy_choice(agent: Agent) -> None:
    """Shut off and started again, a CVM is the same CVM: its choice stays."""
    conn = agent.host._conn
    assert conn is not None
    agent.elastic.choose("snp", name="slo", who="t")
    await asyncio.to_thread(lambda: conn.lookupByName("snp").destroy())
    await waiting.until(lambda: agent.host.cvm("snp").state.value == "shutoff")
    await asyncio.to_thread(lambda: conn.lookupByName("snp").create())
    await waiting.until(lambda: agent.host.cvm("snp").state.value == "running")
    state = agent.elastic.state("snp")
    assert state is not None and state.policy == "slo"
    assert json.loads(state_path(agent.audit.path).read_text())["cvms"]["snp"]["policy"] == "slo"
