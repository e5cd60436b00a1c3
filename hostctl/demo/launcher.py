"""Launch the demo site's hosts as background agent processes: up, down, status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostctl.agent.audit import AuditLog
from hostctl.agent.metrics import host_port, scrape_config
from hostctl.agent.server import Agent
from hostctl.client import site as sites
from hostctl.demo import config as demo_config
from hostctl.demo.host import DemoHost
from hostctl.demo.site import demo_site
from hostctl.elastic.runner import PolicySpec
from hostctl.errors import HostctlError
from hostctl.lab.procs import log_tail
from hostctl.wire import rpc

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def default_runtime() -> Path:
    """Where the running demo keeps its sockets, pid files, node XML and logs."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"dittotui-demo-{os.getuid()}"


@dataclass
class HostProcess:
    """The files of one demo host process in the runtime directory."""

    name: str
    runtime: Path

    @property
    def socket(self) -> Path:
        return self.runtime / f"{self.name}.sock"

    @property
    def pidfile(self) -> Path:
        return self.runtime / f"{self.name}.pid"

    @property
    def audit(self) -> Path:
        return self.runtime / f"{self.name}.audit.jsonl"

    @property
    def log(self) -> Path:
        return self.runtime / f"{self.name}.log"

    @property
    def metrics(self) -> Path:
        """Where the host serves its Prometheus metrics (`host:port`), while it does."""
        return self.runtime / f"{self.name}.metrics"

    def pid(self) -> int | None:
        """The process id, if the process is alive (a child of ours that exited is reaped, not counted)."""
        try:
            pid = int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid


async def serve_host(
    config_path: Path,
    name: str,
    runtime: Path,
    *,
    policies: dict[str, PolicySpec] | None = None,
    metrics: tuple[str, int] | None = None,
) -> None:
    """The body of one demo host process: run the host and its agent (with `policies`, serving Prometheus metrics
    at `metrics` when given) until SIGTERM or SIGINT."""
    config = demo_config.load(config_path)
    try:
        spec = config.host(name)
    except KeyError:
        raise HostctlError(f"{config_path}: no host {name!r}") from None
    proc = HostProcess(name, runtime)
    host = DemoHost(config, spec, runtime)
    await host.start()
    agent = Agent(
        host.backend,
        audit=AuditLog(proc.audit),
        services=host.service_list,
        interval=config.sample_interval,
        probe_rate=config.probe_rate,
        policies=policies,
    )
    agent.start()
    proc.metrics.unlink(missing_ok=True)
    if metrics is not None:
        try:
            address = agent.serve_metrics(metrics).address
        except HostctlError:
            await agent.stop()
            await host.stop()
            raise
        tmp = proc.metrics.with_name(proc.metrics.name + ".tmp")
        tmp.write_text(address + "\n")
        tmp.replace(proc.metrics)
    server = await agent.serve_unix(proc.socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        proc.socket.unlink(missing_ok=True)
        proc.metrics.unlink(missing_ok=True)
        await agent.stop()
        await host.stop()


async def up(config_path: Path, runtime: Path, *, metrics: tuple[str, int] | None = None) -> list[str]:
    """Start every host of the demo site that is not running yet; return a line per host. With `metrics` (address,
    port), the hosts serve Prometheus metrics at port, port + 1, ... (each at a free port for 0), and a Prometheus
    configuration scraping them is written to `prometheus_config(runtime)`."""
    config = demo_config.load(config_path)
    if metrics is not None and metrics[1] and metrics[1] + len(config.hosts) - 1 > 65535:
        raise HostctlError(f"--metrics {metrics[1]}: {len(config.hosts)} hosts need ports up to 65535")
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines, started = [], []
    for i, spec in enumerate(config.hosts):
        proc = HostProcess(spec.name, runtime)
        if proc.pid() is not None:
            lines.append(f"{spec.name}: already running (pid {proc.pid()})")
            continue
        served = None if metrics is None else (metrics[0], metrics[1] + i if metrics[1] else 0)
        child = await asyncio.to_thread(_spawn, proc, config_path, runtime, served)  # fork and exec off the loop
        proc.pidfile.write_text(str(child.pid))
        started.append((proc, child))
    for proc, child in started:
        try:
            await _wait_ready(proc, child)
        except HostctlError:
            await down(runtime)
            raise
        where = f", metrics http://{proc.metrics.read_text().strip()}/metrics" if proc.metrics.exists() else ""
        lines.append(f"{proc.name}: started (pid {child.pid}, socket {proc.socket}{where})")
    sites.write(demo_site({h.name: HostProcess(h.name, runtime).socket for h in config.hosts}), site_file(runtime))
    targets = {
        h.name: proc.metrics.read_text().strip()
        for h in config.hosts
        if (proc := HostProcess(h.name, runtime)).metrics.exists()
    }
    if targets:
        prometheus_config(runtime).write_text(scrape_config(targets))
    return lines


def _spawn(
    proc: HostProcess, config_path: Path, runtime: Path, metrics: tuple[str, int] | None
) -> subprocess.Popen[bytes]:
    """`hostctl demo serve-host NAME` in a session of its own (it outlives this process), logging to its log file."""
    served = [] if metrics is None else ["--metrics", host_port(*metrics)]
    with proc.log.open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hostctl",
                "demo",
                "serve-host",
                proc.name,
                "--config",
                str(config_path),
                "--runtime",
                str(runtime),
                *served,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def site_file(runtime: Path) -> Path:
    """The site inventory of the running demo: its hosts reached through their local sockets."""
    return runtime / "site.toml"


def prometheus_config(runtime: Path) -> Path:
    """A Prometheus configuration scraping the running demo's hosts (written by `up --metrics`)."""
    return runtime / "prometheus.yml"


async def _wait_ready(proc: HostProcess, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise HostctlError(f"demo host {proc.name} exited with status {child.returncode}: {log_tail(proc.log)}")
        if proc.socket.exists():
            with contextlib.suppress(HostctlError, OSError, TimeoutError):
                await rpc.call_unix(str(proc.socket), "hello", timeout=2)
                return
        await asyncio.sleep(0.1)
    raise HostctlError(f"demo host {proc.name} did not answer within {START_TIMEOUT:.0f} s: {log_tail(proc.log)}")


async def down(runtime: Path) -> list[str]:
    """Stop every demo host process and remove its files; nothing is left running."""
    procs = [HostProcess(pidfile.stem, runtime) for pidfile in sorted(runtime.glob("*.pid"))]
    running = {proc.name: pid for proc in procs if (pid := proc.pid()) is not None}
    for pid in running.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(proc.pid() is not None for proc in procs) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for proc in procs:
        if (pid := proc.pid()) is not None:
            os.kill(pid, signal.SIGKILL)
        for path in (proc.pidfile, proc.socket, proc.metrics, runtime / f"{proc.name}.xml"):
            path.unlink(missing_ok=True)
    site_file(runtime).unlink(missing_ok=True)
    prometheus_config(runtime).unlink(missing_ok=True)
    return [f"{name}: stopped (pid {pid})" for name, pid in running.items()] or ["demo site is not running"]


async def status(runtime: Path) -> list[dict[str, Any]]:
    """Ask every running demo host for its snapshot; a host that does not answer says why."""
    results = []
    for pidfile in sorted(runtime.glob("*.pid")):
        proc = HostProcess(pidfile.stem, runtime)
        entry: dict[str, Any] = {"host": proc.name, "pid": proc.pid()}
        if entry["pid"] is None:
            entry["error"] = "not running"
        else:
            try:
                entry["snapshot"] = await rpc.call_unix(str(proc.socket), "snapshot", timeout=5)
            except (HostctlError, TimeoutError) as e:
                entry["error"] = str(e) or "timed out"
        results.append(entry)
    return results
