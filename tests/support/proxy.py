"""A loopback TCP proxy for fault injection (`CuttableProxy`): its connections can be cut (RST) or paused
(black-holed: no bytes either way, nothing closed), and its listener taken down and brought back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from tests.support.ssh import LOOPBACK


class _Half(asyncio.Protocol):
    """One socket of a proxied connection; forwards to its peer."""

    def __init__(self, proxy: CuttableProxy, pair: _Pair) -> None:
        self.proxy = proxy
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending = bytearray()  # bytes held back (paused / peer not connected yet)
        self.eof = False  # EOF received, not yet forwarded
        self.lost = False
        self.write_blocked = False  # our transport's write buffer is full

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()  # reading is enabled by update_reading() once linked

    def data_received(self, data: bytes) -> None:
        self.pending += data
        self.pair.flush()

    def eof_received(self) -> bool:
        self.eof = True
        self.pair.flush()
        return True  # keep the transport open for half-close

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.pair.half_lost(self)

    def pause_writing(self) -> None:
        self.write_blocked = True
        self.pair.update_reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self.pair.update_reading()

    # helpers
    def set_reading(self, want: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if want and not t.is_reading():
            t.resume_reading()
        elif not want and t.is_reading():
            t.pause_reading()


class _Pair:
    def __init__(self, proxy: CuttableProxy) -> None:
        self.proxy = proxy
        self.client = _Half(proxy, self)
        self.server: _Half | None = None
        self.connect_task: asyncio.Task | None = None
        self.closed = False

    def halves(self) -> list[_Half]:
        return [h for h in (self.client, self.server) if h is not None]

    @property
    def linked(self) -> bool:
        return self.server is not None and self.server.transport is not None

    def update_reading(self) -> None:
        for h in self.halves():
            peer = h.peer
            want = (
                self.linked
                and not self.proxy.paused
                and not self.closed
                and peer is not None
                and not peer.write_blocked
                and not peer.lost
            )
            h.set_reading(want)

    def flush(self) -> None:
        """Forward held-back bytes/EOF/close in both directions, unless paused."""
        if self.proxy.paused or not self.linked or self.closed:
            self.update_reading()
            return
        for h in self.halves():
            peer = h.peer
            assert peer is not None and peer.transport is not None
            if h.pending and not peer.lost:
                peer.transport.write(bytes(h.pending))
            h.pending.clear()
            if h.eof and not peer.lost:
                h.eof = False
                with contextlib.suppress(OSError, RuntimeError):
                    if peer.transport.can_write_eof():
                        peer.transport.write_eof()
            if h.lost and not peer.lost and not peer.transport.is_closing():
                peer.transport.close()  # graceful: write buffer is flushed first
        self.update_reading()

    def half_lost(self, half: _Half) -> None:
        if self.server is None:  # client left before the upstream connection existed
            if self.connect_task is not None:
                self.connect_task.cancel()
        elif not all(h.lost for h in self.halves()):
            self.flush()  # forwards the close to the peer (deferred while paused)
            return
        self.closed = True
        self.proxy._pairs.discard(self)

    def abort(self, rst: bool) -> None:
        self.closed = True
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        for h in self.halves():
            t = h.transport
            if t is None:
                continue
            if rst:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        self.proxy._pairs.discard(self)


class CuttableProxy:
    """A loopback TCP proxy in front of ``(target_host, target_port)`` for fault injection.

    * ``cut()``     -- abort every open connection (RST by default); the listener stays up.
    * ``pause()``   -- black-hole: stop forwarding in both directions, close nothing.
    * ``resume()``  -- forward again (held-back bytes are delivered).
    * ``stop_listening()`` / ``start_listening()`` -- refuse new connections (host down) and
      accept again on the same port.
    """

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = LOOPBACK, listen_port: int = 0
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.paused = False
        self.accepted = 0  # connections accepted since start
        self._pairs: set[_Pair] = set()
        self._server: asyncio.AbstractServer | None = None

    @property
    def connections(self) -> int:
        """Currently open proxied connections."""
        return len(self._pairs)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> CuttableProxy:
        await self.start_listening()
        return self

    async def start_listening(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.listen_host, self.listen_port, reuse_address=True)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        """Close the listener (new connections are refused); open connections are untouched."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1)

    def _accept(self) -> _Half:
        self.accepted += 1
        pair = _Pair(self)
        self._pairs.add(pair)
        pair.connect_task = asyncio.get_running_loop().create_task(self._connect(pair))
        return pair.client

    async def _connect(self, pair: _Pair) -> None:
        loop = asyncio.get_running_loop()
        server_half = _Half(self, pair)
        try:
            await loop.create_connection(lambda: server_half, self.target_host, self.target_port)
        except (OSError, asyncio.CancelledError):
            if pair.client.transport is not None:
                pair.client.transport.abort()
            pair.closed = True
            self._pairs.discard(pair)
            return
        if pair.closed:
            if server_half.transport is not None:
                server_half.transport.abort()
            return
        pair.server = server_half
        server_half.peer, pair.client.peer = pair.client, server_half
        pair.flush()

    def cut(self, rst: bool = True) -> int:
        """Abort every open connection; returns how many were cut."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.abort(rst)
        return len(pairs)

    def pause(self) -> None:
        self.paused = True
        for pair in list(self._pairs):
            pair.update_reading()

    def resume(self) -> None:
        self.paused = False
        for pair in list(self._pairs):
            pair.flush()

    async def close(self) -> None:
        await self.stop_listening()
        self.cut(rst=False)
        await asyncio.sleep(0)  # let transports finish closing

    async def __aenter__(self) -> CuttableProxy:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()
