"""`dittotui --serve` as the real command (`python -m dittotui --serve --port 0 ...`), for the browser tests and the
browser screenshot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from hostctl.demo.launcher import HostProcess
from tests.support import ROOT

START_TIMEOUT = 30.0  # the demo site and the server, on a busy 2-core machine
STOP_TIMEOUT = 20.0  # its consoles quit, then the demo site is taken down


@dataclass
class Served:
    """A running `dittotui --serve`: the address it serves on and, when it started the demo site, that site."""

    url: str
    pid: int
    out: list[str]  # what it printed (stdout and stderr) up to the address
    hosts: list[str] = field(default_factory=list)  # the demo site's hosts
    runtime: Path | None = None  # the demo site's runtime directory (sockets, audit logs)

    def audit(self) -> list[dict[str, object]]:
        """Every event in the demo hosts' audit logs."""
        assert self.runtime is not None, "this server started no demo site"
        events = []
        for name in self.hosts:
            path = HostProcess(name, self.runtime).audit
            if path.exists():
                events += [json.loads(line) for line in path.read_text().splitlines()]
        return events


@contextlib.asynccontextmanager
async def served(*args: str) -> AsyncIterator[Served]:
    """`dittotui --serve --port 0 ARGS` until SIGTERM. Afterwards it has exited 0 and printed no traceback, and the
    demo site it started (if any) is down."""
    argv = [sys.executable, "-m", "dittotui", "--serve", "--port", "0", *args]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    out: list[str] = []
    pids: list[int] = []
    try:
        server = None
        demo: tuple[list[str], Path] | None = None
        async with asyncio.timeout(START_TIMEOUT):
            while server is None:
                line = (await proc.stdout.readline()).decode()
                assert line, f"dittotui --serve ended: {''.join(out)}"
                out.append(line)
                if found := re.search(r"demo site up: (.+) \(site file (\S+)/site\.toml\)", line):
                    demo = found.group(1).split(", "), Path(found.group(2))
                    pids = [pid for name in demo[0] if (pid := HostProcess(name, demo[1]).pid())]
                    assert len(pids) == len(demo[0]), line
                if found := re.search(r"serving the console on (\S+)", line):
                    server = Served(found.group(1), proc.pid, out, *(demo or ([], None)))
        yield server
    finally:
        # os.kill, not proc.send_signal() or proc.kill(): those poll first, and a poll can reap the exit status that
        # asyncio's child watcher waits for (which then reports 255).
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended on its own
                os.kill(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                out.append((await proc.stdout.read()).decode())
                await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
    assert proc.returncode == 0, "".join(out)
    assert "Traceback" not in "".join(out)
    for pid in pids:  # the demo site it started is down with it
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
