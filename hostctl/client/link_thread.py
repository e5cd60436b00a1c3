"""An event loop on a thread of its own for a console's links.

SSH handshakes, host-key checks and the decoding of every host's updates then run beside the screen's loop instead
of on it: a reconnect storm after a network blip (every host of a site handshaking at once) cannot freeze the
screen. A link started here keeps its work on this loop; its `call`, `ready` and `stop` hop here from any other
loop, and its listeners are called on this thread (a console hands what they see to its own loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
JOIN_TIMEOUT_S = 5.0  # how long closing waits for the thread; its links are stopped before, so it ends at once


class LinkThread:
    """A daemon thread running one event loop until `close`."""

    def __init__(self, name: str = "links") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def soon(self, callback: Callable[[], object]) -> None:
        """Run `callback()` on the thread's loop."""
        self.loop.call_soon_threadsafe(callback)

    async def close(self) -> None:
        """Stop the loop and wait for the thread (off the caller's loop)."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT_S)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


async def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` run on `loop` (another thread's); cancelling the caller cancels it there."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
