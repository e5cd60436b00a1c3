"""The agent's protocol on a real unix socket over a real test-driver host: methods, schemas, audit, faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostctl.agent.audit import AuditLog
from hostctl.agent.server import Agent
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire import rpc
from tests.support.nodes import make_node


class Served:
    """An agent listening on a socket, and a raw line-level connection to it."""

    def __init__(self, agent: Agent, socket: Path, audit: Path) -> None:
        self.agent = agent
        self.socket = socket
        self.audit = audit

    async def client(self) -> rpc.Client:
        return await rpc.connect_unix(str(self.socket))

    async def raw(self, line: bytes) -> dict:
        reader, writer = await asyncio.open_unix_connection(str(self.socket), limit=rpc.MAX_LINE * 4)
        try:
            writer.write(line)
            await writer.drain()
            return json.loads(await asyncio.wait_for(reader.readline(), 5))
        finally:
            writer.close()


async def _serve(tmp_path: Path, *, readonly: bool = False) -> AsyncIterator[Served]:
    host = LibvirtHost(
        f"test://{make_node(tmp_path)}", name="edge-1", driver_options={"emulated": {"wake_ms": 0, "park_ms": 0}}
    )
    await host.open()
    audit = tmp_path / "audit.jsonl"
    agent = Agent(host, audit=AuditLog(audit), readonly=readonly, interval=0.1)
    agent.start()
    socket = tmp_path / "agent.sock"
    server = await agent.serve_unix(socket)
    try:
        yield Served(agent, socket, audit)
    finally:
        server.close()
        await agent.stop()
        await host.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path):
        yield s


@pytest.fixture
async def readonly(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path, readonly=True):
        yield s


async def test_hello_and_snapshot(served: Served) -> None:
    client = await served.client()
    hello = await client.call("hello", client="test")
    assert hello["protocol"] == 1 and hello["host"] == "edge-1" and hello["readonly"] is False
    assert {"hello", "snapshot", "subscribe", "scale", "audit"} <= set(hello["methods"])
    snapshot = await client.call("snapshot")
    assert {c["name"] for c in snapshot["cvms"]} == {"snp", "es", "sev", "plain"}
    await client.close()


async def test_subscribe_sends_changes_not_snapshots(served: Served) -> None:
    client = await served.client()
    updates: list[dict] = []
    client.on_notification(lambda method, params: updates.append(params))
    await client.call("subscribe", interval=0.1)
    await asyncio.sleep(0.35)
    assert len(updates) >= 2
    assert set(updates[0]["cvms"]) == {"snp", "es", "sev", "plain"} and "host" in updates[0]
    quiet = updates[-1]
    assert all(
        set(c)
        <= {
            "cpu_percent",
            "name",
            "uuid",
            "state",
            "security",
            "policy",
            "boot_vcpus",
            "max_vcpus",
            "online_vcpus",
            "driver",
            "vcpus_error",
            "last_online",
            "last_online_at",
            "scaled_by",
            "scaled_at",
            "concurrency",
            "rps",
            "elastic",
            "launch",
        }
        for c in quiet["cvms"].values()
    )
    updates.clear()
    await client.call("scale", cvm="snp", target=3, expect=2, who="alice")
    for _ in range(50):
        if any(u["events"] for u in updates):
            break
        await asyncio.sleep(0.01)
    event_update = next(u for u in updates if u["events"])
    assert event_update["events"][0]["after"] == 3
    assert event_update["cvms"]["snp"]["online_vcpus"] == 3
    await client.close()


async def test_every_action_is_audited_before_the_reply(served: Served) -> None:
    client = await served.client()
    await client.call("scale", cvm="snp", target=4, expect=2, who="alice", why="load")
    # The reply has arrived: the line must already be on disk.
    lines = served.audit.read_text().splitlines()
    entry = json.loads(lines[-1])
    assert (entry["cvm"], entry["before"], entry["after"], entry["ok"], entry["why"]) == ("snp", 2, 4, True, "load")
    assert entry["who"].startswith("alice (") and "@socket" in entry["who"]
    with pytest.raises(rpc.RpcError) as refused:
        await client.call("scale", cvm="snp", target=3, expect=2, who="bob")
    assert refused.value.code == rpc.REFUSED and refused.value.data == {"current": 4}
    entry = json.loads(served.audit.read_text().splitlines()[-1])
    assert entry["ok"] is False and "expected 2" in entry["why"] and "(requested 3 vCPUs)" in entry["why"]
    # A refusal records the count it stayed at, not the one asked for.
    assert [(e["before"], e["after"]) for e in await client.call("audit", limit=2)] == [(2, 4), (4, 4)]
    await client.close()


async def test_readonly_agent_refuses_scale_itself(readonly: Served) -> None:
    client = await readonly.client()
    assert (await client.call("hello"))["readonly"] is True
    with pytest.raises(rpc.RpcError, match="read-only: scale refused"):
        await client.call("scale", cvm="snp", target=3, expect=2)
    assert readonly.agent.host.cvm("snp").online_vcpus == 2
    assert (await client.call("snapshot"))["cvms"]
    await client.close()


@pytest.mark.parametrize(
    ("line", "code", "message"),
    [
        (b"{not json\n", rpc.PARSE_ERROR, "not JSON"),
        (b"[1,2]\n", rpc.INVALID_REQUEST, "JSON-RPC 2.0 request"),
        (b'{"jsonrpc":"2.0","id":1,"method":"reboot"}\n', rpc.METHOD_NOT_FOUND, "unknown method 'reboot'"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"scale","params":{"cvm":"snp","target":"3"}}\n',
            rpc.INVALID_PARAMS,
            "parameter 'target' must be int, got '3'",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"scale","params":{"cvm":"snp","target":true}}\n',
            rpc.INVALID_PARAMS,
            "must be int",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"scale","params":{"target":3}}\n',
            rpc.INVALID_PARAMS,
            "missing parameter 'cvm'",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"scale","params":{"cvm":"snp","target":3,"force":1}}\n',
            rpc.INVALID_PARAMS,
            "unknown parameter 'force'",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"interval":0}}\n',
            rpc.INVALID_PARAMS,
            "outside 0.05..3600",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"snapshot","params":[1]}\n',
            rpc.INVALID_PARAMS,
            "params must be an object",
        ),
        (b"x" * (rpc.MAX_LINE + 10) + b"\n", rpc.INVALID_REQUEST, "longer than"),
    ],
)
async def test_bad_requests_get_jsonrpc_errors(served: Served, line: bytes, code: int, message: str) -> None:
    reply = await served.raw(line)
    assert reply["error"]["code"] == code and message in reply["error"]["message"]
    assert (await served.raw(b'{"jsonrpc":"2.0","id":7,"method":"hello"}\n'))["result"]["host"] == "edge-1"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=300).filter(lambda b: b"\n" not in b and b.strip()))
async def test_the_agent_survives_any_line(served: Served, junk: bytes) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.socket))
    writer.write(junk + b'\n{"jsonrpc":"2.0","id":"after","method":"hello"}\n')
    await writer.drain()
    replies = []
    while not replies or replies[-1].get("id") != "after":
        replies.append(json.loads(await asyncio.wait_for(reader.readline(), 5)))
    writer.close()
    assert replies[-1]["result"]["protocol"] == 1
    assert all("error" in r for r in replies[:-1])
