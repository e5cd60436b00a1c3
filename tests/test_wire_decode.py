"""The typed decoder gives the records `from_dict` gives, for every record a real agent sends and for generated
ones, and refuses malformed updates with one line naming the bad value; a link says so and reconnects."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostctl.wire import rpc
from hostctl.wire.decode import LINK, Update, notification
from hostctl.wire.model import CVM, HostSEV, Latency, Launch, Snapshot
from tests.support.agents import AgentProcess
from tests.support.wire import from_dicts
from tests.test_model import cvms, events, floats, hosts, names, services


def typed(line: bytes) -> Update:
    decoded = notification(line, LINK)
    assert decoded is not None and decoded[0] == "update"
    update: Update = decoded[1]
    return update


def update_line(params: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": "update", "params": params}).encode()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    proc = AgentProcess(tmp_path, "mec-1", wake_ms=0)
    await proc.start()
    yield proc
    proc.stop()


async def test_every_record_a_real_agent_sends_decodes_as_from_dict_does(agent: AgentProcess) -> None:
    reader, writer = await rpc.open_unix(str(agent.socket))
    client = rpc.Client(reader, writer)  # plain JSON: the raw lines are what both decoders get
    lines: list[bytes] = []
    client.on_notification(lambda method, params: lines.append(update_line(params)))
    await client.call("policy", cvm="snp", name=(await client.call("policies"))[0]["name"], enabled=True, who="t")
    await client.call("subscribe", interval=0.2)
    await client.call("scale", cvm="snp", target=3, expect=2, who="t")
    for _ in range(100):  # until the probes' windows have reached the services' records
        if any(typed(line).services and typed(line).services[0].latency for line in lines):  # type: ignore[index]
            break
        await asyncio.sleep(0.1)
    snapshot_line = json.dumps(await client.call("snapshot")).encode()
    await client.close()

    updates = [typed(line) for line in lines]
    assert updates == [from_dicts(json.loads(line)["params"]) for line in lines]
    seen = [u for u in updates if u.host is not None and u.services]
    assert seen and all(type(c) is CVM for u in updates for c in u.cvms.values())
    host = seen[0].host
    assert host is not None and type(host.confidential) is HostSEV and host.confidential.why  # unknown, and why
    assert any(type(s.latency.get("10s")) is Latency for u in seen for s in u.services or [])
    snp = next(u.cvms["snp"] for u in updates if "snp" in u.cvms)
    assert type(snp.launch) is Launch and snp.elastic is not None and snp.elastic.enabled
    assert any(e.action == "scale" and e.after == 3 for u in updates for e in u.events)
    assert msgspec.json.decode(snapshot_line, type=Snapshot) == Snapshot.from_dict(json.loads(snapshot_line))


launches = st.builds(
    Launch,
    measurement=st.none() | names,
    api_version=st.none() | names,
    build_id=st.none() | st.integers(0, 1 << 31),
    kernel_hashes=st.none() | st.booleans(),
    why=st.dictionaries(names, names, max_size=2),
)
latencies = st.builds(Latency, window_s=floats, count=st.integers(0, 1 << 40), rps=floats, p99=floats)
params = st.fixed_dictionaries(
    {
        "seq": st.integers(0, 1 << 62),
        "ts": floats,
        "cvms": st.dictionaries(names, st.builds(lambda c, launch: (c, launch), cvms, st.none() | launches)),
        "removed": st.lists(names, max_size=3),
        "events": st.lists(events, max_size=3),
    },
    optional={
        "host": hosts,
        "services": st.lists(
            st.builds(lambda s, lat: (s, lat), services, st.dictionaries(st.sampled_from(["10s", "60s"]), latencies)),
            max_size=3,
        ),
    },
)


def wire(generated: dict[str, Any]) -> dict[str, Any]:
    """The generated records as the agent puts them on the wire (`to_dict`)."""
    out = dict(generated)
    cvm_records = {}
    for name, (cvm, launch) in generated["cvms"].items():
        cvm.launch = launch
        cvm_records[name] = cvm.to_dict()
    out["cvms"] = cvm_records
    out["events"] = [e.to_dict() for e in generated["events"]]
    if "host" in generated:
        out["host"] = generated["host"].to_dict()
    if "services" in generated:
        records = []
        for service, latency in generated["services"]:
            service.latency = latency
            records.append(service.to_dict())
        out["services"] = records
    return out


@settings(max_examples=60)
@given(params)
def test_generated_updates_decode_as_from_dict_does(generated: dict[str, Any]) -> None:
    line = update_line(wire(generated))
    assert typed(line) == from_dicts(json.loads(line)["params"])


def test_unknown_stays_none_and_missing_fields_take_their_defaults() -> None:
    record = {"name": "a", "uuid": "u", "state": "paused", "online_vcpus": None, "cpu_percent": None, "future": [1]}
    (cvm,) = typed(update_line({"cvms": {"a": record}})).cvms.values()
    assert cvm == CVM.from_dict(record)
    assert (cvm.online_vcpus, cvm.cpu_percent, cvm.launch, cvm.max_vcpus) == (None, None, None, 1)
    assert type(typed(update_line({"cvms": {"a": {**record, "cpu_percent": 7}}})).cvms["a"].cpu_percent) is float


@pytest.mark.parametrize(
    ("params", "error"),
    [
        (
            {"cvms": {"a": {"name": "a", "state": "running"}}},
            r"update: Object missing required field `uuid` - at `\$.cvms\[...\]`",
        ),
        (
            {"cvms": {"a": {"name": "a", "uuid": "u", "state": "dancing"}}},
            r"update: Invalid enum value 'dancing' - at `\$.cvms\[...\].state`",
        ),
        (
            {"host": {"name": "h", "uri": "u", "cpus": "many", "memory_mib": 1}},
            r"update: Expected `int`, got `str` - at `\$.host.cpus`",
        ),
        (
            {"events": [{"host": "h", "cvm": "c", "action": "scale", "who": "w", "ok": "yes"}]},
            r"update: Expected `bool`, got `str` - at `\$.events\[0\].ok`",
        ),
        ({"cvms": []}, r"update: Expected `object`, got `array` - at `\$.cvms`"),
    ],
    ids=["missing field", "bad enum", "wrong type", "bad event", "not an object"],
)
def test_a_malformed_update_is_one_line_naming_the_value(params: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=f"^{error}$"):
        notification(update_line(params), LINK)


def test_other_messages_are_left_to_the_plain_decoder() -> None:
    assert notification(b'{"jsonrpc":"2.0","id":1,"result":{"cvms":[]}}', LINK) is None
    assert notification(b'{"jsonrpc":"2.0","method":"other","params":{"x":1}}', LINK) is None
    with pytest.raises(ValueError, match=r"^not a JSON-RPC message: JSON is malformed: invalid character \(byte 48\)$"):
        notification(b'{"jsonrpc":"2.0","method":"other","params":{"x":NaN}}', LINK)  # strict JSON, as replies are
    with pytest.raises(ValueError, match=r"^not a JSON-RPC message: Expected `object`, got `array`$"):
        notification(b"[1]", LINK)
    with pytest.raises(ValueError, match=r"^update: a notification needs object params$"):
        notification(b'{"jsonrpc":"2.0","method":"update"}', LINK)


async def test_a_link_given_a_malformed_update_says_why_it_broke() -> None:
    ours, theirs = socket.socketpair()
    client = rpc.Client(*await asyncio.open_connection(sock=ours, limit=rpc.MAX_LINE), typed=LINK)
    agent_reader, agent_writer = await asyncio.open_connection(sock=theirs, limit=rpc.MAX_LINE)
    calling = asyncio.ensure_future(client.call("hello", timeout=5))
    await agent_reader.readline()
    agent_writer.write(update_line({"host": {"name": "h", "uri": "u", "cpus": None, "memory_mib": 1}}) + b"\n")
    with pytest.raises(ConnectionError, match=r"^link broken: update: Expected `int`, got `null` - at `\$.host.cpus`$"):
        await calling
    assert await client.wait_closed(5) and client._reading.exception() is None
    assert client.broken.startswith("link broken: update: Expected `int`")
    await client.close()
    agent_writer.close()
    ours.close()
    theirs.close()


@given(cuts=st.lists(st.integers(1, 400), max_size=30))
async def test_a_fed_client_takes_lines_however_its_transport_splits_them(cuts: list[int]) -> None:
    """A transport hands a fed client its bytes as they arrive, split anywhere: each line is handled once it is
    whole, in order."""
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    client = rpc.Client.fed(writer, typed=LINK)
    seen: list[int] = []
    client.on_notification(lambda method, update: seen.append(update.seq))
    stream = b"".join(update_line({"seq": seq}) + b"\n" for seq in range(1, 6))
    at = 0
    for cut in [*cuts, len(stream)]:
        client.feed(stream[at : at + cut])
        at += cut
    assert seen == [1, 2, 3, 4, 5] and not client.closed
    await client.close()
    await writer.wait_closed()
    theirs.close()


async def test_a_fed_client_answers_calls_and_fails_them_when_its_input_ends_or_breaks() -> None:
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    agent, agent_writer = await asyncio.open_connection(sock=theirs)
    client = rpc.Client.fed(writer, typed=LINK)
    calling = asyncio.ensure_future(client.call("hello", timeout=5))
    request = json.loads(await agent.readline())
    reply = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": {"agent": "x"}}).encode() + b"\n"
    client.feed(reply[:10])
    client.feed(reply[10:])
    assert await calling == {"agent": "x"}
    calling = asyncio.ensure_future(client.call("snapshot", timeout=5))
    await agent.readline()
    client.feed_eof()
    with pytest.raises(ConnectionError, match=r"^connection closed by the agent$"):
        await calling
    assert client.closed and not client.broken

    broken = rpc.Client.fed(writer, typed=LINK)
    calling = asyncio.ensure_future(broken.call("hello", timeout=5))
    await agent.readline()
    broken.feed(b"x" * (rpc.MAX_LINE + 1))  # no end of line in sight: the link is dropped, not buffered on
    with pytest.raises(ConnectionError, match=rf"^link broken: a line longer than {rpc.MAX_LINE} bytes$"):
        await calling
    assert broken.closed
    for stream in (writer, agent_writer):  # (their sockets with them)
        stream.close()
        await stream.wait_closed()
