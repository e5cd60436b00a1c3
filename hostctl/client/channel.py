"""An SSH channel to a host's agent that hands what arrives to the link's client as it arrives."""

from __future__ import annotations

import asyncio

import asyncssh
from asyncssh.channel import SSHChannel

from hostctl.wire import decode, rpc


class AgentChannel(asyncssh.SSHClientSession[bytes], asyncssh.SSHUNIXSession[bytes]):
    """An SSH channel to a host's agent (its socket, or its command's stdin and stdout), and its client's writer.

    What arrives is handed to the client in the channel's own callback: a fleet's thousand updates a second are
    handled as they come, with no task woken per line as a stream reader would need.
    """

    def __init__(self) -> None:
        self._chan: SSHChannel[bytes] | None = None
        self._client: rpc.Client | None = None
        self._early: list[bytes] = []  # what came before the client was attached
        self._writable = asyncio.Event()
        self._writable.set()

    def attach(self) -> rpc.Client:
        """The client this channel feeds."""
        self._client = client = rpc.Client.fed(self, typed=decode.LINK)
        for data in self._early:
            client.feed(data)
        return client

    def connection_made(self, chan: SSHChannel[bytes]) -> None:
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype is not None:  # the agent command's stderr
            return
        if self._client is None:
            self._early.append(data)
        else:
            self._client.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()  # a writer waiting for room is let go; its write then fails
        if self._client is not None:
            self._client.feed_eof()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def write(self, data: bytes) -> None:
        assert self._chan is not None
        self._chan.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()
