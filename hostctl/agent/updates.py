"""A subscription's `update` notifications: what changed since the last update sent to the same peer.

An update's params: `seq` (1, 2, ... per subscription), `ts` (agent wall clock), `cvms` (name -> CVM of each CVM
new or changed), `removed` (names of CVMs gone), `events` (audit events since the last update), and `host` and
`services` only when they changed. The first update of a subscription carries everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from hostctl.wire import rpc
from hostctl.wire.model import Event, Snapshot


class UpdateDiff:
    """What one subscription has sent so far; `next` gives the params of its next update and remembers them."""

    def __init__(self) -> None:
        self.seq = 0
        self._host: dict[str, Any] | None = None
        self._cvms: dict[str, dict[str, Any]] = {}
        self._services: list[dict[str, Any]] | None = None

    def next(self, snapshot: Snapshot, events: Sequence[Event]) -> dict[str, Any]:
        host = snapshot.host.to_dict()
        cvms = {c.name: c.to_dict() for c in snapshot.cvms}
        services = [s.to_dict() for s in snapshot.services]
        self.seq += 1
        update: dict[str, Any] = {
            "seq": self.seq,
            "ts": time.time(),
            "cvms": {name: data for name, data in cvms.items() if self._cvms.get(name) != data},
            "removed": [name for name in self._cvms if name not in cvms],
            "events": [e.to_dict() for e in events],
        }
        if host != self._host:
            update["host"] = host
        if services != self._services:
            update["services"] = services
        self._host, self._cvms, self._services = host, cvms, services
        return update


class Subscription:
    """One peer's updates: every `interval` seconds, and at once after an event is pushed."""

    def __init__(self, peer: rpc.Peer, snapshot: Callable[[], Snapshot]) -> None:
        self.peer = peer
        self.snapshot = snapshot
        self._events: list[Event] = []
        self._nudge = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float) -> None:
        """Start sending (again: a new subscription starts over with a whole snapshot)."""
        self.close()
        self._task = asyncio.get_running_loop().create_task(self._send(interval))

    def push(self, event: Event) -> None:
        """Queue an audit event for the next update and send it without waiting for the interval."""
        if self._task is not None:
            self._events.append(event)
            self._nudge.set()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _send(self, interval: float) -> None:
        diff = UpdateDiff()
        while True:
            events, self._events = self._events, []
            await self.peer.notify("update", diff.next(self.snapshot(), events))
            self._nudge.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._nudge.wait()
