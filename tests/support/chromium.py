"""Headless Chromium (Debian's `chromium`) driven over its DevTools protocol: a page, its keys, its terminal's text.

The protocol is JSON over a websocket (aiohttp's client, a dependency already); Chromium comes from Debian, so
nothing downloads a browser. Every wait is bounded, and `chromium()` kills the browser and removes its profile.

A page served by `dittotui --serve` draws the terminal with xterm.js on a canvas, so its text is not in the DOM.
`Page.xterm()` reads it from xterm's own buffer: the page's one `window.onresize` handler is textual-serve's
`() => this.fit()`, whose `this` holds the terminal. A breakpoint on that function's call pauses inside it, and an
expression evaluated in that paused frame keeps `this.terminal` as `window.__xterm`; `text()` then reads each
buffer line with xterm's public `translateToString`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach Google's services, whose connections a
# closed network refuses; --disable-quic likewise. --no-sandbox: tests run as root.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
TIMEOUT = 10.0  # any one protocol call, and the browser's start


class DevToolsError(Exception):
    """The browser answered a call with an error, or not in time."""


class Page:
    """One browser tab over its DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and (reply := self.replies.pop(data["id"], None)) is not None and not reply.done():
                reply.set_result(data)
            elif "method" in data:
                self.events.put_nowait(data)
        for reply in self.replies.values():
            if not reply.done():
                reply.set_exception(DevToolsError("the browser closed the page's connection"))

    async def call(self, method: str, timeout: float = TIMEOUT, **params: Any) -> dict[str, Any]:
        """Send one protocol command and return its result."""
        ident = next(self.ids)
        reply = self.replies[ident] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        try:
            data = await asyncio.wait_for(reply, timeout)
        except TimeoutError:
            raise DevToolsError(f"{method}: no answer within {timeout:g} s") from None
        if "error" in data:
            raise DevToolsError(f"{method}: {data['error'].get('message')}")
        result: dict[str, Any] = data.get("result", {})
        return result

    async def event(self, method: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The parameters of the next event called `method` (others before it are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = await asyncio.wait_for(self.events.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise DevToolsError(f"no {method} event within {timeout:g} s") from None
            if event["method"] == method:
                params: dict[str, Any] = event.get("params", {})
                return params

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable), awaiting a promise."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        navigated = await self.call("Page.navigate", url=url)
        if "errorText" in navigated:
            raise DevToolsError(f"{url}: {navigated['errorText']}")
        await self.event("Page.loadEventFired")

    async def xterm(self) -> None:
        """Keep the page's xterm.js terminal as `window.__xterm` (see the module's note)."""
        await self.call("Debugger.enable")
        handler = (await self.call("Runtime.evaluate", expression="window.onresize"))["result"]
        if handler.get("type") != "function":
            raise DevToolsError("the page has no resize handler: not a textual-serve page, or not loaded yet")
        await self.call("Debugger.setBreakpointOnFunctionCall", objectId=handler["objectId"])
        called = asyncio.create_task(self.call("Runtime.evaluate", expression="window.onresize()"))
        paused = await self.event("Debugger.paused")
        await self.call(
            "Debugger.evaluateOnCallFrame",
            callFrameId=paused["callFrames"][0]["callFrameId"],
            expression="window.__xterm = this.terminal",
        )
        await self.call("Debugger.resume")
        await called
        await self.call("Debugger.disable")
        if not await self.evaluate("!!(window.__xterm && window.__xterm.buffer)"):
            raise DevToolsError("the page's resize handler holds no xterm terminal")

    async def text(self) -> str:
        """The terminal's screen as text, one line per row."""
        return str(
            await self.evaluate(
                "(() => { const b = window.__xterm.buffer.active, rows = [];"
                " for (let y = 0; y < b.length; y++) rows.push(b.getLine(y).translateToString(true));"
                " return rows.join('\\n'); })()"
            )
        )

    async def wait_text(self, *words: str, timeout: float = 20.0) -> str:
        """The terminal's text once every one of `words` is on it; DevToolsError (with the screen) if not in time."""
        deadline = time.monotonic() + timeout
        while True:
            screen = await self.text()
            if all(word in screen for word in words):
                return screen
            if time.monotonic() > deadline:
                raise DevToolsError(f"not on the page within {timeout:g} s: {words}; the page shows:\n{screen}")
            await asyncio.sleep(0.1)

    async def wait_for(self, expression: str, timeout: float = 20.0) -> None:
        """Wait until a JavaScript expression in the page is true; DevToolsError if not in time."""
        deadline = time.monotonic() + timeout
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise DevToolsError(f"{expression!r} not true within {timeout:g} s")
            await asyncio.sleep(0.1)

    async def type(self, text: str) -> None:
        """Type `text` into the focused terminal as key presses."""
        await self.evaluate("window.__xterm.focus()")
        for char in text:
            await self.call("Input.dispatchKeyEvent", type="keyDown", key=char, text=char)
            await self.call("Input.dispatchKeyEvent", type="keyUp", key=char)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def chromium(*, width: int = 1280, height: int = 800) -> AsyncIterator[Page]:
    """A headless Chromium with a new profile, and its one tab; killed (and its profile removed) afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    with (profile / "chromium.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            port = await _devtools_port(profile, proc)
            async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
                targets = await reply.json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(url, max_msg_size=0) as ws:
                page = Page(ws)
                try:
                    yield page
                finally:
                    page.reader.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the browser and its helpers (renderer, GPU, zygote)
        await asyncio.wait_for(proc.wait(), TIMEOUT)
        shutil.rmtree(profile, ignore_errors=True)


async def _devtools_port(profile: Path, proc: asyncio.subprocess.Process) -> int:
    """The DevTools port Chromium picked, from the file it writes in its profile once it listens."""
    deadline = time.monotonic() + TIMEOUT
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            tail = (profile / "chromium.log").read_text(errors="replace")[-500:]
            raise DevToolsError(f"chromium exited with status {proc.returncode}: {tail}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(marker.read_text().split()[0])
        await asyncio.sleep(0.05)
    raise DevToolsError(f"chromium did not listen for DevTools within {TIMEOUT:g} s")
