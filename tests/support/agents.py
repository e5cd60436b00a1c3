"""Real agent processes for link tests and benches: demo hosts whose worker wake-up is slow enough to catch
mid-request."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from hostctl.demo.launcher import HostProcess
from hostctl.errors import HostctlError
from hostctl.wire import rpc
from tests.support import ROOT

CONFIG = """
sample_interval = 0.2
[traffic]
peak_rps = 0.0
base_rps = 0.0
[driver]
wake_ms = {wake_ms}
park_ms = 10.0
[[endpoints]]
name = "home-timeline"
path = "/wrk2-api/home-timeline/read"
service_ms = 4.0
{hosts}
"""

HOST = """
[[hosts]]
name = "{name}"
  [[hosts.cvms]]
  name = "snp"
  security = "sev-snp"
  boot_vcpus = 1
  max_vcpus = 5
  online_vcpus = 2
"""


async def answers_hello(socket: Path, *, tries: int) -> bool:
    """Whether an agent answers `hello` on `socket` within `tries` attempts 50 ms apart (it may still be starting)."""
    for _ in range(tries):
        if socket.exists():
            with contextlib.suppress(HostctlError, OSError, TimeoutError):
                await rpc.call_unix(str(socket), "hello", timeout=1)
                return True
        await asyncio.sleep(0.05)
    return False


class AgentProcess:
    """`hostctl demo serve-host NAME` as its own process, restartable, with its socket and audit log."""

    def __init__(self, runtime: Path, name: str, wake_ms: float = 1000.0, *, log: Path | None = None) -> None:
        self.runtime = runtime
        self.name = name
        self.log = log  # its stdout and stderr, appended (inherited when None)
        self.config = runtime / f"{name}.toml"
        self.config.write_text(CONFIG.format(wake_ms=wake_ms, hosts=HOST.format(name=name)))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return HostProcess(self.name, self.runtime).socket

    @property
    def audit(self) -> Path:
        return HostProcess(self.name, self.runtime).audit

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "hostctl",
            "demo",
            "serve-host",
            self.name,
            "--config",
            str(self.config),
            "--runtime",
            str(self.runtime),
        ]

    async def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        if self.log is None:
            self.proc = await asyncio.to_thread(subprocess.Popen, self.argv, cwd=ROOT, stdin=subprocess.DEVNULL)
        else:
            with self.log.open("ab") as out:
                self.proc = await asyncio.to_thread(
                    subprocess.Popen, self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out
                )
        if not await answers_hello(self.socket, tries=200):
            raise RuntimeError(f"agent {self.name} did not start")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
