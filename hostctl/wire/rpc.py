"""JSON-RPC 2.0 over a byte stream, one JSON object per line."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from hostctl.errors import HostctlError

MAX_LINE = 1 << 20

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REFUSED = -32000  # the request was understood and refused (HostctlError); nothing changed

Method = Callable[[dict[str, Any]], Awaitable[Any]]


class RpcError(HostctlError):
    """An error reply from the other end."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class Peer:
    """The sending side of one connection: replies and notifications, never interleaved."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._lock:
            self.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            await self.writer.drain()

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})


async def serve(reader: asyncio.StreamReader, peer: Peer, methods: dict[str, Method]) -> None:
    """Answer requests from one peer until it closes the stream. Nothing a peer sends ends the loop."""
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                await _discard_line(reader)
                await peer.send(_error(None, INVALID_REQUEST, f"request longer than {MAX_LINE} bytes"))
                continue
            if line.strip():
                reply = await _handle(line, methods)
                if reply is not None:
                    await peer.send(reply)
    except (ConnectionError, BrokenPipeError):
        return
    finally:
        peer.writer.close()


async def _handle(line: bytes, methods: dict[str, Method]) -> dict[str, Any] | None:
    try:
        request = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _error(None, PARSE_ERROR, f"not JSON: {e}")
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
        return _error(
            request.get("id") if isinstance(request, dict) else None,
            INVALID_REQUEST,
            "expected a JSON-RPC 2.0 request object with a string 'method'",
        )
    rid = request.get("id")
    params = request.get("params", {})
    if not isinstance(params, dict):
        return _error(rid, INVALID_PARAMS, "params must be an object")
    method = methods.get(request["method"])
    if method is None:
        return _error(
            rid, METHOD_NOT_FOUND, f"unknown method {request['method']!r} (known: {', '.join(sorted(methods))})"
        )
    try:
        result = await method(params)
    except RpcError as e:
        return _error(rid, e.code, str(e), e.data)
    except HostctlError as e:
        return _error(rid, REFUSED, str(e), {"current": getattr(e, "current", None)})
    except Exception as e:  # a bug must not take the agent down; the peer gets the reason
        return _error(rid, INTERNAL_ERROR, f"{type(e).__name__}: {e}")
    return None if rid is None else {"jsonrpc": "2.0", "id": rid, "result": result}


async def _discard_line(reader: asyncio.StreamReader) -> None:
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as e:
            await reader.readexactly(e.consumed)
        except asyncio.IncompleteReadError:
            return


def _error(rid: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": rid, "error": error}


class Client:
    """Calls methods on the peer at the other end of a stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._peer = Peer(writer)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._notifications: list[Callable[[str, dict[str, Any]], None]] = []
        self._reading = asyncio.get_running_loop().create_task(self._read())

    def on_notification(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        self._notifications.append(callback)

    async def call(self, method: str, timeout: float = 10.0, **params: Any) -> Any:
        """Send a request and wait for its reply (RpcError on an error reply, TimeoutError on silence)."""
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self._peer.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._pending.pop(rid, None)

    @property
    def closed(self) -> bool:
        return self._reading.done()

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` seconds) for the stream to close; True when it has."""
        await asyncio.wait({self._reading}, timeout=timeout)
        return self._reading.done()

    async def close(self) -> None:
        self._peer.writer.close()
        self._reading.cancel()

    async def _read(self) -> None:
        reason: Exception = ConnectionError("connection closed by the agent")
        try:
            while line := await self._reader.readline():
                await asyncio.sleep(0)  # a backlog of buffered lines must not starve the other links
                message = json.loads(line)
                if "id" not in message and "method" in message:
                    for callback in self._notifications:
                        callback(message["method"], message.get("params", {}))
                    continue
                future = self._pending.get(message.get("id"))
                if future is None or future.done():
                    continue
                if "error" in message:
                    err = message["error"]
                    future.set_exception(RpcError(err.get("code", 0), err.get("message", ""), err.get("data")))
                else:
                    future.set_result(message.get("result"))
        except (ConnectionError, json.JSONDecodeError, ValueError) as e:
            reason = ConnectionError(f"link broken: {e}")
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(reason)


async def open_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The streams of a connection to an agent's unix socket, or a HostctlError naming the socket."""
    try:
        return await asyncio.open_unix_connection(path, limit=MAX_LINE)
    except OSError as e:
        raise HostctlError(f"cannot reach agent socket {path}: {e.strerror or e}") from None


async def connect_unix(path: str) -> Client:
    """Connect to an agent listening on a unix socket."""
    return Client(*await open_unix(path))


async def call_unix(path: str, method: str, *, timeout: float = 10.0, **params: Any) -> Any:
    """One request on a connection of its own to an agent's unix socket."""
    client = await connect_unix(path)
    try:
        return await client.call(method, timeout=timeout, **params)
    finally:
        await client.close()
