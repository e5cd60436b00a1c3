"""libvirt's event loop on asyncio (libvirtaio), bound to one running loop per process, and quiet once it has closed.

A connection that outlives its loop (a guest call libvirt still holds when the process exits) makes libvirt update
or remove its handles and timers on a closed loop; stock libvirtaio then prints "Event loop is closed" tracebacks.
Here such late calls are dropped: the loop, and the process, are going away.
"""

from __future__ import annotations

import asyncio
import contextlib

import libvirt
import libvirtaio


class _Impl(libvirtaio.virEventAsyncIOImpl):  # type: ignore[misc]  # libvirtaio is untyped
    """libvirtaio's implementation, ignoring what libvirt asks of it after its loop has closed."""

    def _add_handle(self, fd: int, event: int, cb: object, opaque: object) -> int:
        return -1 if self.loop.is_closed() else int(super()._add_handle(fd, event, cb, opaque))

    def _update_handle(self, watch: int, event: int) -> None:
        if not self.loop.is_closed():
            super()._update_handle(watch, event)

    def _remove_handle(self, watch: int) -> int:
        if self.loop.is_closed():
            self.callbacks.pop(watch, None)
            return 0
        return int(super()._remove_handle(watch))

    def _add_timeout(self, timeout: int, cb: object, opaque: object) -> int:
        return -1 if self.loop.is_closed() else int(super()._add_timeout(timeout, cb, opaque))

    def _update_timeout(self, timer: int, timeout: int) -> None:
        if not self.loop.is_closed():
            super()._update_timeout(timer, timeout)

    def _remove_timeout(self, timer: int) -> int:
        if self.loop.is_closed():
            self.callbacks.pop(timer, None)
            return 0
        return int(super()._remove_timeout(timer))


class _Binding:
    """The implementation registered with libvirt: one per process, bound to one loop at a time."""

    impl: _Impl | None = None


def register_event_loop() -> None:
    """Bind libvirt's events to the running asyncio loop (before any connection is opened)."""
    loop = asyncio.get_running_loop()
    impl = _Binding.impl
    if impl is not None and impl.loop is loop:
        return
    if impl is not None and not impl.loop.is_closed():
        raise RuntimeError("libvirt events are already bound to another running event loop")
    libvirt.registerErrorHandler(lambda *_: None, None)
    _Binding.impl = _Impl(loop=loop).register()


async def drain(timeout: float) -> None:
    """Let libvirt's pending releases run on this loop (after closing a connection), for at most `timeout` s."""
    impl = _Binding.impl
    if impl is not None and impl.loop is asyncio.get_running_loop():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await impl.drain()
