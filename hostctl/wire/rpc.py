"""JSON-RPC 2.0 over a byte stream, one JSON object per line.

The server side answers anything a peer sends with one well-formed reply, or none for a notification (a request
without an `id`), and never ends for it: text that is not strict JSON (NaN, numbers too long to convert, nesting
too deep to parse) is a parse error; an `id` that is not a string, a number or null is an invalid request, answered
with a null id; batches (arrays) are not supported and get one invalid-request error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hostctl.errors import HostctlError
from hostctl.wire.decode import Notifications, notification

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


class Writer(Protocol):
    """Where a peer's messages go: an asyncio stream writer, or a transport's own (see `Client.fed`)."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class Peer:
    """The sending side of one connection: replies and notifications, never interleaved."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_line(json.dumps(message, separators=(",", ":")).encode())

    async def send_line(self, line: bytes) -> None:
        """Send one encoded message (without its newline)."""
        async with self._lock:
            self.writer.write(line + b"\n")
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
                    await peer.send_line(_encode_reply(reply))
    except ConnectionError:
        return
    finally:
        peer.writer.close()


async def _handle(line: bytes, methods: dict[str, Method]) -> dict[str, Any] | None:
    try:
        request = json.loads(line, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _error(None, PARSE_ERROR, f"not JSON: {e}"[:300])
    if isinstance(request, list):
        return _error(None, INVALID_REQUEST, "batches are not supported: send one JSON-RPC 2.0 request per line")
    rid = request.get("id") if isinstance(request, dict) else None
    if not _is_id(rid):
        return _error(None, INVALID_REQUEST, f"id must be a string, a number or null, got {type(rid).__name__}")
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
        return _error(rid, INVALID_REQUEST, "expected a JSON-RPC 2.0 request object with a string 'method'")
    notification = "id" not in request  # executed, never answered, even with an error
    params = request.get("params", {})
    method = methods.get(request["method"])
    if not isinstance(params, dict):
        reply = _error(rid, INVALID_PARAMS, "params must be an object")
    elif method is None:
        known = ", ".join(sorted(methods))
        reply = _error(rid, METHOD_NOT_FOUND, f"unknown method {request['method'][:100]!r} (known: {known})")
    else:
        try:
            reply = {"jsonrpc": "2.0", "id": rid, "result": await method(params)}
        except RpcError as e:
            reply = _error(rid, e.code, str(e), e.data)
        except HostctlError as e:
            reply = _error(rid, REFUSED, str(e), {"current": getattr(e, "current", None)})
        except Exception as e:  # a bug must not take the agent down; the peer gets the reason
            reply = _error(rid, INTERNAL_ERROR, f"{type(e).__name__}: {e}")
    return None if notification else reply


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _is_id(value: Any) -> bool:
    """JSON-RPC 2.0 ids: a string, a number (not a boolean) or null."""
    return value is None or isinstance(value, str | float) or (isinstance(value, int) and not isinstance(value, bool))


def _encode_reply(reply: dict[str, Any]) -> bytes:
    """The reply as strict JSON; a result that cannot be encoded becomes an internal error for the same id."""
    try:
        return json.dumps(reply, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as e:
        error = _error(reply.get("id"), INTERNAL_ERROR, f"reply is not JSON: {e}"[:300])
        return json.dumps(error, separators=(",", ":")).encode()


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
    """Calls methods on the peer at the other end of a stream. The params of the notifications `typed` names are
    handed to the callbacks as their records (`hostctl.wire.decode`), any other as plain JSON."""

    def __init__(
        self, reader: asyncio.StreamReader | None, writer: Writer, *, typed: Notifications | None = None
    ) -> None:
        self._typed = typed
        self._peer = Peer(writer)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._notifications: list[Callable[[str, Any], None]] = []
        self.broken = ""  # why the stream stopped being read, when the peer sent something that is not a message
        self._partial = b""  # the start of a line still to come (`feed`)
        loop = asyncio.get_running_loop()
        # Done once nothing more will be read: a task reading `reader`, or a future that `feed_eof` ends.
        self._reading: asyncio.Future[None] = (
            loop.create_future() if reader is None else loop.create_task(self._read(reader))
        )

    @classmethod
    def fed(cls, writer: Writer, *, typed: Notifications | None = None) -> Client:
        """A client whose input the transport hands to `feed` from its own callback, as it arrives: a message is
        handled there and then, with no task woken per line as a stream reader needs."""
        return cls(None, writer, typed=typed)

    def feed(self, data: bytes) -> None:
        """Bytes from the peer: each line they complete is handled at once (a fed client's input)."""
        if self._reading.done():
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        try:
            if len(self._partial) > MAX_LINE:
                raise ValueError(f"a line longer than {MAX_LINE} bytes")
            for line in lines:
                self._line(line)
        except (ValueError, RecursionError) as e:  # ValueError: the line is not a message
            self._end(self._broken(e))

    def feed_eof(self) -> None:
        """The peer closed the stream (a fed client's input)."""
        self._end(ConnectionError("connection closed by the agent"))

    def on_notification(self, callback: Callable[[str, Any], None]) -> None:
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

    async def wait_closed(self, timeout: float | None = None, *, until: asyncio.Future[None] | None = None) -> bool:
        """Wait (at most `timeout` seconds, and no longer than `until` is pending) for the stream to close; True when
        it has."""
        waits = {self._reading} if until is None else {self._reading, until}
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return self._reading.done()

    async def close(self) -> None:
        self._peer.writer.close()
        if isinstance(self._reading, asyncio.Task):
            self._reading.cancel()
        else:
            self._end(ConnectionError("connection closed"))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason: Exception = ConnectionError("connection closed by the agent")
        try:
            while line := await reader.readline():
                await asyncio.sleep(0)  # a backlog of buffered lines must not starve the other links
                self._line(line)
        except (ConnectionError, ValueError, RecursionError) as e:  # ValueError: the line is not a message
            reason = self._broken(e)
        finally:
            self._fail_pending(reason)

    def _line(self, line: bytes) -> None:
        """Handle one line from the peer: a notification, or the reply to a pending call."""
        if self._typed is not None and (typed := notification(line, self._typed)) is not None:
            for callback in self._notifications:
                callback(*typed)
            return
        message = _message(line)
        if "id" not in message:
            for callback in self._notifications:
                callback(message["method"], message.get("params", {}))
            return
        future = self._pending.get(message["id"])
        if future is None or future.done():
            return
        if "error" in message:
            err = message["error"]
            future.set_exception(RpcError(err.get("code", 0), err.get("message", ""), err.get("data")))
        else:
            future.set_result(message.get("result"))

    def _broken(self, error: Exception) -> ConnectionError:
        reason = ConnectionError(f"link broken: {error}"[:300])
        self.broken = str(reason)
        return reason

    def _end(self, reason: Exception) -> None:
        """A fed client's input has ended: pending calls fail with `reason`, and the client is closed."""
        if not self._reading.done():
            self._reading.set_result(None)
        self._fail_pending(reason)

    def _fail_pending(self, reason: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(reason)


def _message(line: bytes) -> dict[str, Any]:
    """A reply or a notification from the agent; ValueError for anything else."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"not a JSON-RPC message: {line[:80]!r}")
    if "id" not in message and not (isinstance(message.get("method"), str) and isinstance(message.get("params"), dict)):
        raise ValueError(f"a notification needs a string method and object params: {line[:80]!r}")
    if "error" in message and not isinstance(message["error"], dict):
        raise ValueError(f"an error must be an object: {line[:80]!r}")
    return message


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
