"""The JSON-RPC server against hostile input: what the fuzz found, one test each, and the fuzz at small volume
against a real agent process (the 100,000-message run is `bench/fuzz_rpc.py`)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostctl.wire import rpc
from tests.support import rpc_fuzz

HELLO = b'{"jsonrpc":"2.0","id":"after","method":"hello"}\n'


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rpc_fuzz.LoggedAgent]:
    """One agent process for the module: every test also checks it is still well."""
    process = rpc_fuzz.LoggedAgent(tmp_path_factory.mktemp("fuzz"))
    asyncio.run(process.start())
    try:
        yield process
    finally:
        process.stop()


async def _exchange(path: Path, data: bytes, replies: int) -> list[Any]:
    """Send `data` on one connection and read `replies` lines, each parsed as strict JSON."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=4 * rpc.MAX_LINE)
    try:
        writer.write(data)
        await writer.drain()
        return [rpc_fuzz.strict_json(await asyncio.wait_for(reader.readline(), 5)) for _ in range(replies)]
    finally:
        writer.close()


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"hello"}',
        b'{"jsonrpc":"2.0","id":NaN,"method":"hello"}',
        b'{"jsonrpc":"2.0","id":1e400,"method":"hello"}',
        b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{"client":-Infinity}}',
    ],
    ids=["deep nesting", "5000 digits", "NaN", "overflowing number", "Infinity"],
)
async def test_what_strict_json_cannot_read_is_a_parse_error_on_a_live_connection(
    agent: rpc_fuzz.LoggedAgent, line: bytes
) -> None:
    error, hello = await _exchange(agent.socket, line + b"\n" + HELLO, 2)
    assert error["id"] is None and error["error"]["code"] == rpc.PARSE_ERROR
    assert hello["id"] == "after" and hello["result"]["host"] == "fuzz"
    assert agent.tracebacks() == 0


@pytest.mark.parametrize("rid", [True, {"n": 1}, [1], []])
async def test_a_request_with_an_invalid_id_is_refused_before_it_runs(agent: rpc_fuzz.LoggedAgent, rid: Any) -> None:
    request = {"jsonrpc": "2.0", "id": rid, "method": "scale", "params": {"cvm": "snp", "target": 4, "who": "bad"}}
    error, hello = await _exchange(agent.socket, json.dumps(request).encode() + b"\n" + HELLO, 2)
    assert error == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": rpc.INVALID_REQUEST, "message": error["error"]["message"]},
    }
    assert "id must be a string, a number or null" in error["error"]["message"]
    assert hello["id"] == "after"
    assert '"who":"bad (' not in agent.audit.read_text()


async def test_notifications_are_never_answered_and_a_null_id_is(agent: rpc_fuzz.LoggedAgent) -> None:
    lines = [
        b'{"jsonrpc":"2.0","method":"reboot"}',
        b'{"jsonrpc":"2.0","method":"scale","params":{"cvm":"snp","target":"3"}}',
        b'{"jsonrpc":"2.0","method":"snapshot","params":[1]}',
        b'{"jsonrpc":"2.0","id":null,"method":"policies"}',
    ]
    nulled, hello = await _exchange(agent.socket, b"\n".join(lines) + b"\n" + HELLO, 2)
    assert nulled["id"] is None and isinstance(nulled["result"], list)
    assert hello["id"] == "after"


async def test_a_batch_gets_one_error_saying_batches_are_not_supported(agent: rpc_fuzz.LoggedAgent) -> None:
    (error,) = await _exchange(agent.socket, b'[{"jsonrpc":"2.0","id":1,"method":"hello"}]\n', 1)
    assert error["id"] is None and error["error"]["code"] == rpc.INVALID_REQUEST
    assert "batches are not supported" in error["error"]["message"]


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.mark.parametrize(
    ("result", "why"),
    [(float("nan"), "Out of range float"), (object(), "not JSON serializable")],
    ids=["nan", "object"],
)
async def test_a_result_that_is_not_json_is_an_internal_error_for_its_id(
    socket_pair: tuple[socket.socket, socket.socket], result: object, why: str
) -> None:
    async def method(params: dict[str, Any]) -> object:
        return result

    ours, theirs = socket_pair
    reader, writer = await asyncio.open_connection(sock=theirs, limit=rpc.MAX_LINE)
    serving = asyncio.ensure_future(rpc.serve(reader, rpc.Peer(writer), {"odd": method}))
    client_reader, client_writer = await asyncio.open_connection(sock=ours)
    client_writer.write(b'{"jsonrpc":"2.0","id":3,"method":"odd"}\n{"jsonrpc":"2.0","id":4,"method":"nope"}\n')
    odd = rpc_fuzz.strict_json(await asyncio.wait_for(client_reader.readline(), 5))
    nope = rpc_fuzz.strict_json(await asyncio.wait_for(client_reader.readline(), 5))
    assert odd["id"] == 3 and odd["error"]["code"] == rpc.INTERNAL_ERROR and why in odd["error"]["message"]
    assert nope["id"] == 4 and nope["error"]["code"] == rpc.METHOD_NOT_FOUND
    client_writer.close()
    await asyncio.wait_for(serving, 5)


async def test_the_fuzz_at_small_volume_finds_nothing(agent: rpc_fuzz.LoggedAgent) -> None:
    tally = await rpc_fuzz.run(agent.socket, rpc_fuzz.Fuzzer(seed=7).cases(3000))
    await rpc_fuzz.cut_connections(agent.socket, 20)
    assert tally.problems == []
    assert sum(tally.sent.values()) == 3000 and len(tally.sent) == 11
    snapshot = await rpc.call_unix(str(agent.socket), "snapshot", timeout=5)
    assert [c["name"] for c in snapshot["cvms"]] == ["snp"]
    applied, wrong = rpc_fuzz.applied_scales(agent.audit.read_text().splitlines())
    assert wrong == [] and applied > 0
    assert agent.proc is not None and agent.proc.poll() is None and agent.tracebacks() == 0


@pytest.mark.parametrize(
    "line",
    [b"[1]", b"5", b'{"jsonrpc":"2.0","id":1,"error":"boom"}', b"[" * 100_000 + b"]" * 100_000],
    ids=["array", "number", "error not an object", "deep nesting"],
)
async def test_a_client_whose_agent_sends_no_message_says_the_link_is_broken(
    socket_pair: tuple[socket.socket, socket.socket], line: bytes
) -> None:
    ours, theirs = socket_pair
    client = rpc.Client(*await asyncio.open_connection(sock=ours, limit=rpc.MAX_LINE))
    agent_reader, agent_writer = await asyncio.open_connection(sock=theirs, limit=rpc.MAX_LINE)
    calling = asyncio.ensure_future(client.call("hello", timeout=5))
    await agent_reader.readline()
    agent_writer.write(line + b"\n")
    with pytest.raises(ConnectionError, match="link broken: "):
        await calling
    assert await client.wait_closed(5) and client._reading.exception() is None
    await client.close()
    agent_writer.close()
