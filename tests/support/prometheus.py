"""A real Prometheus (Debian's `prometheus` package) on a free loopback port scraping given agents, its HTTP API, and
promtool. A missing binary is a failure naming the package, never a skip: `make test` installs it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from hostctl.agent.metrics import scrape_config
from tests.support.ssh import LOOPBACK, free_port

START_TIMEOUT = 30.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`; AssertionError naming the Debian package when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if path is None:
        raise AssertionError(f"{name} not found: install Debian's prometheus package (make test installs it)")
    return path


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


async def scrape(address: str) -> str:
    """An agent's /metrics text, as Prometheus would fetch it (the classic text format)."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session, session.get(f"http://{address}/metrics") as r:
        assert r.status == 200, r.status
        return await r.text()


class Prometheus:
    """A running Prometheus and its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.get(f"{self.url}{path}", params=params) as response,
        ):
            body = await response.json()
        assert body.get("status") == "success", body
        return body["data"]

    async def query(self, expr: str) -> dict[str, float]:
        """An instant query's vector: {its labels as `k=v,...` (sorted; no __name__, job, instance, agent): value}."""
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        ignored = {"__name__", "job", "instance", "agent"}
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k not in ignored): float(r["value"][1])
            for r in data["result"]
        }

    async def wait(self, expr: str, timeout: float = 20.0) -> dict[str, float]:
        """Poll `expr` until its vector is not empty; AssertionError with the last answer after `timeout`."""
        deadline = time.monotonic() + timeout
        while not (result := await self.query(expr)):
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {expr} still empty after {timeout:g} s")
            await asyncio.sleep(0.2)
        return result


@contextlib.asynccontextmanager
async def prometheus(tmp: Path, targets: dict[str, str], *, interval_s: float = 1.0) -> AsyncIterator[Prometheus]:
    """Prometheus scraping `targets` (name -> `host:port`) every `interval_s` with the shipped alert rules, its data in
    `tmp`; stopped (killed if need be) on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(scrape_config(targets, interval_s=interval_s))
    log_path = tmp / "prometheus.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        for _attempt in range(5):  # free_port() is racy: another port when this one was taken meanwhile
            port = free_port()
            with log_path.open("ab") as log:
                proc = await asyncio.create_subprocess_exec(
                    tool("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{port}",
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            server = Prometheus(f"http://{LOOPBACK}:{port}")
            if await _ready(server, proc):
                break
            if "address already in use" not in log_path.read_text(errors="replace"):
                raise AssertionError(f"Prometheus did not start: {log_path.read_text(errors='replace')[-2000:]}")
        else:
            raise AssertionError("Prometheus found no free port in 5 tries")
        yield server
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _ready(server: Prometheus, proc: asyncio.subprocess.Process) -> bool:
    """Whether Prometheus answers /-/ready before it exits or START_TIMEOUT passes."""
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline and proc.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{server.url}/-/ready") as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.1)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    return False
