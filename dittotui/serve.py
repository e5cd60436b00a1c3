"""`dittotui --serve`: the console in a browser.

textual-serve serves a page (xterm.js) whose websocket runs one console process per visitor, its screen streamed to
the page and the page's keys streamed back. Every visitor's console opens the same site (the embedded demo site,
started once for the server, or `--site FILE`) and is read-only unless the server was started with
`--allow-changes`. The server listens on loopback unless `--host` names another address, and accepts a websocket
only from a page it served (its `Origin`), so another web site open in the same browser cannot drive a console.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import ipaddress
import logging
import os
import shlex
import signal
import socket
import sys
from asyncio.subprocess import PIPE, Process
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from dittotui.session import DemoSession
from hostctl.client.site import load as load_site
from hostctl.demo import launcher
from hostctl.errors import HostctlError

MAX_VISITORS = 8  # consoles at once: each is a process with a link to every host
QUIT_TIMEOUT = 5.0  # a visitor's console gets this long to quit after its page closes, then it is killed
TEMPLATES = Path(__file__).parent / "templates"  # the page, with no request to any other site (fonts are served here)

log = logging.getLogger("dittotui.serve")


@dataclass(frozen=True)
class ServeOptions:
    """What `dittotui --serve` was asked for, checked."""

    host: str
    port: int
    allow_changes: bool
    refresh: float
    site: Path | None  # None: the embedded demo site, started for the server
    demo_config: Path


def parse_port(text: str) -> int:
    """A TCP port from the command line: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise HostctlError(
            f"--port {text!r}: not a number; give a TCP port from 1 to 65535 (0: any free port)"
        ) from None
    if not 0 <= port <= 65535:
        raise HostctlError(f"--port {port}: out of range; give a TCP port from 1 to 65535 (0: any free port)")
    return port


def parse_host(text: str) -> str:
    """One IP address of this machine to listen on; every address at once (0.0.0.0, ::) is refused."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise HostctlError(f"--host {text!r}: not an IP address; give one address of this machine") from None
    if address.is_unspecified:
        raise HostctlError(f"--host {text}: would listen on every network; give the one address visitors use")
    return str(address)


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def origins(host: str, port: int) -> frozenset[str]:
    """The pages allowed to open a console: those this server serves (on loopback, under each loopback name)."""
    if ipaddress.ip_address(host).is_loopback:
        return frozenset(url_of(name, port) for name in (host, "localhost", "127.0.0.1", "::1"))
    return frozenset({url_of(host, port)})


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts so that a port in use costs nothing."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        why = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise HostctlError(f"cannot listen on {url_of(host, port)}: {why}") from None


def console_argv(options: ServeOptions, site_file: Path) -> list[str]:
    """The command each visitor's console runs: this Python, this package, the site, read-only unless allowed."""
    argv = [sys.executable, "-m", "dittotui", "--site", str(site_file), "--refresh", str(options.refresh)]
    return argv if options.allow_changes else [*argv, "--readonly"]


class Visitor(AppService):
    """One visitor's console: a process of its own, started from an argv list (never through a shell)."""

    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        super().__init__(shlex.join(argv), **kwargs)
        self.argv = argv

    async def _open_app_process(self, width: int = 80, height: int = 24) -> Process:
        env = self._build_environment(width=width, height=height)
        self._process = process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=PIPE, stdout=PIPE, stderr=PIPE, env=env
        )
        assert process.stdin is not None
        self._stdin = process.stdin
        return process

    async def run(self) -> None:
        """Stream the console to the page; when the console ends (`q`, or it failed), so does the page's session."""
        try:
            await super().run()
        finally:
            with contextlib.suppress(Exception):
                await self.remote_close()

    async def end(self) -> None:
        """Ask the console to quit, and kill it if it has not within QUIT_TIMEOUT."""
        process = self._process
        try:
            async with asyncio.timeout(QUIT_TIMEOUT):
                await self.stop()
                if process is not None:
                    await process.wait()
        except TimeoutError:
            if process is not None and process.returncode is None:
                # os.kill, not process.kill(): Popen's kill polls first, and that poll can reap the exit status
                # that asyncio's child watcher is waiting for (it then reports 255 and logs a warning).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                await process.wait()


class ConsoleServer(Server):
    """textual-serve's server, with each console started from an argv list, pages of other sites refused, a bound
    on visitors, and every console ended (within QUIT_TIMEOUT) when the server stops."""

    def __init__(self, argv: list[str], *, host: str, port: int) -> None:
        super().__init__(
            shlex.join(argv), host=host, port=port, title="dittotui", public_url=url_of(host, port),
            templates_path=TEMPLATES,
        )  # fmt: skip
        self.argv = argv
        self.origins = origins(host, port)
        self.visitors: dict[Visitor, web.WebSocketResponse] = {}

    async def on_startup(self, app: web.Application) -> None:
        """(textual-serve prints its logo here; `serve` says what it serves instead.)"""

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every page's websocket: its console is then asked to quit (and killed past QUIT_TIMEOUT)."""
        await asyncio.gather(*(ws.close() for ws in list(self.visitors.values()) if ws.prepared))

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        origin = request.headers.get("Origin")
        if origin not in self.origins:
            log.warning("refused a console to a page of %s: only pages of %s", origin, self.public_url)
            raise web.HTTPForbidden(text=f"pages of {origin} may not open a console here\n")
        if len(self.visitors) >= MAX_VISITORS:
            log.warning("refused a console: %d are open already (the most at once)", MAX_VISITORS)
            raise web.HTTPServiceUnavailable(text=f"{MAX_VISITORS} consoles are open already\n")
        websocket = web.WebSocketResponse(heartbeat=15)  # a page gone without a word is closed within 30 s
        visitor = Visitor(
            self.argv,
            write_bytes=websocket.send_bytes,
            write_str=websocket.send_str,
            close=websocket.close,
            download_manager=self.download_manager,
        )
        self.visitors[visitor] = websocket  # counted from here: two pages at once cannot pass MAX_VISITORS
        try:
            await websocket.prepare(request)
            log.info("console opened for %s (%d open)", request.remote, len(self.visitors))
            await visitor.start(
                to_int(request.query.get("width", "80"), 80), to_int(request.query.get("height", "24"), 24)
            )
            await self._process_messages(websocket, visitor)
        except Exception as e:  # a malformed message from the page ends its console; the server goes on
            log.warning("console of %s ended: %s: %s", request.remote, type(e).__name__, e)
        finally:
            del self.visitors[visitor]
            await visitor.end()
            if websocket.prepared:
                await websocket.close()
            log.info("console closed for %s (%d open)", request.remote, len(self.visitors))
        return websocket


class OneLine(logging.Formatter):
    """A log record as one line: an exception is its type and message, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"dittotui: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return line


def _say(line: str, *, err: bool = False) -> None:
    print(f"dittotui: {line}", file=sys.stderr if err else sys.stdout, flush=True)


def serve(options: ServeOptions) -> int:
    """Serve the console until SIGINT or SIGTERM, then 0 (130 when interrupted while the demo site starts);
    HostctlError, one line, when it cannot start (a bad site file, a port in use), with nothing left running."""
    if options.site is not None:
        load_site(options.site)  # a bad site file is one line now, not one per visitor
    sock = bind(options.host, options.port)
    _log_in_lines()
    demo = DemoSession(options.demo_config) if options.site is None else None
    try:
        return asyncio.run(_serve(options, sock, demo))
    except KeyboardInterrupt:  # while the demo site was starting, before the server took over the signals
        _say("interrupted", err=True)
        return 130
    finally:
        sock.close()
        if demo is not None and demo.running:
            _say("stopping the demo site")
            asyncio.run(demo.stop())


def _log_in_lines() -> None:
    """The server's own log and its libraries' warnings, one line each on stderr (never a traceback)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    for name in ("dittotui.serve", "textual-serve", "aiohttp"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO if name == "dittotui.serve" else logging.WARNING)
        logger.propagate = False


async def _serve(options: ServeOptions, sock: socket.socket, demo: DemoSession | None) -> int:
    site_file = options.site
    if demo is not None:
        _say("starting the embedded demo site (use --site FILE for a real one)")
        site = await demo.start()
        site_file = launcher.site_file(demo.runtime)
        _say(f"demo site up: {', '.join(h.name for h in site.hosts)} (site file {site_file})")
    assert site_file is not None
    port = sock.getsockname()[1]
    server = ConsoleServer(console_argv(options, site_file.resolve()), host=options.host, port=port)
    runner = web.AppRunner(await server._make_app(), handle_signals=False, shutdown_timeout=QUIT_TIMEOUT + 1)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, shutdown_timeout=QUIT_TIMEOUT + 1).start()
        url = url_of(options.host, port)
        if options.allow_changes:
            _say(
                f"warning: --allow-changes: whoever reaches {url} can scale CVMs, run wrk and switch elastic "
                f"policies, as {getpass.getuser()} on every host of the site",
                err=True,
            )
        if not ipaddress.ip_address(options.host).is_loopback:
            _say(f"warning: {url} is not loopback: whoever reaches it sees the site", err=True)
        mode = "changes allowed" if options.allow_changes else "read-only; --allow-changes lets visitors change things"
        _say(f"serving the console on {url} ({mode})")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        _say("ctrl+c stops the server" + (" and the demo site" if demo is not None else ""))
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
