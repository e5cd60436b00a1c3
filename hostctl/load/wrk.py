"""wrk runs: the shipped Lua scripts, the argv (never a shell), the summary, and a run on this machine.

Every shipped script ends with a `done()` hook that prints one JSON line (prefix `JSON_PREFIX`) holding the
latency percentiles 50..100 in ms, mean, stdev, max, requests, duration, bytes and error counts. `parse` prefers
that line and falls back to wrk's own `--latency` text (50/75/90/99 only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from hostctl.errors import HostctlError
from hostctl.wire.model import Model

JSON_PREFIX = "hostctl-wrk-json "
SCRIPTS = ("home-timeline", "user-timeline", "compose-post", "mixed")
# The paths the mixed script requests on the target's host and port (endpoint scripts use the target URL's path).
MIXED_PATHS = ("/wrk2-api/home-timeline/read", "/wrk2-api/user-timeline/read", "/wrk2-api/post/compose")
GRACE_S = 15.0  # beyond duration + timeout, how long wrk may take to finish before it is killed

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_TIME = r"([\d.]+)(us|ms|s|m)"
_PERCENTILE = re.compile(rf"^\s*(\d+(?:\.\d+)?)%\s+{_TIME}\s*$", re.MULTILINE)
_LATENCY = re.compile(rf"^\s*Latency\s+{_TIME}\s+{_TIME}\s+{_TIME}", re.MULTILINE)
_REQUESTS = re.compile(rf"^\s*(\d+) requests in {_TIME}, ([\d.]+)([KMGT]?B) read", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_BYTE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}

Progress = Callable[[float, float], Awaitable[None]]
"""An async callback given (elapsed seconds, run duration in seconds) while wrk runs."""


class WrkResult(Model):
    """One wrk run's summary: latency percentiles in ms (keys "50", "99.9", ...), throughput and errors."""

    requests: int
    duration_s: float
    rps: float
    percentiles: dict[str, float] = msgspec.field(default_factory=dict)
    mean_ms: float = 0.0
    stdev_ms: float = 0.0
    max_ms: float = 0.0
    bytes: int = 0
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx: int = 0

    @property
    def errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts + self.non_2xx

    def p(self, percentile: float) -> float:
        """Latency at `percentile` (e.g. 99) in ms."""
        return self.percentiles[f"{percentile:g}"]


@dataclass(frozen=True)
class Params:
    """What one wrk run does: threads, connections, duration, per-request timeout and a shipped script."""

    threads: int = 2
    connections: int = 16
    duration_s: int = 10  # wrk takes whole seconds
    timeout_s: int = 2
    script: str | None = None  # one of SCRIPTS; None: plain GETs of the URL

    def __post_init__(self) -> None:
        for name in ("threads", "connections", "duration_s", "timeout_s"):
            value = getattr(self, name)
            if type(value) is float and value.is_integer():  # 5.0 seconds is 5 seconds
                object.__setattr__(self, name, value := int(value))
            if type(value) is not int or value < 1:
                raise HostctlError(f"wrk {name} = {value!r} must be a whole number >= 1")
        if self.connections < self.threads:
            raise HostctlError(f"wrk connections = {self.connections} must be >= threads = {self.threads}")
        if self.script is not None:
            check_script(self.script)

    def args(self, script_path: str, url: str) -> list[str]:
        """wrk's arguments after the binary."""
        return [
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{self.duration_s}s",
            f"--timeout={self.timeout_s}s",
            "--latency",
            "-s",
            script_path,
            url,
        ]

    def describe(self) -> str:
        script = f" -s {self.script}" if self.script else ""
        return f"wrk -t{self.threads} -c{self.connections} -d{self.duration_s}s --timeout {self.timeout_s}s{script}"


def check_script(name: str) -> None:
    """HostctlError unless `name` is a shipped script."""
    if name not in SCRIPTS:
        raise HostctlError(f"script {name!r} is not a shipped script (choose one of {', '.join(SCRIPTS)})")


def script_text(name: str | None) -> str:
    """The Lua run by wrk: the named shipped script (None: none) followed by the JSON `done()` hook."""
    if name is not None:
        check_script(name)
    folder = resources.files("hostctl.load") / "scripts"
    body = (folder / f"{name}.lua").read_text(encoding="utf-8") if name else ""
    return body + "\n" + (folder / "report.lua").read_text(encoding="utf-8")


# --- parsing ---------------------------------------------------------------------------------------------


def to_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def parse(output: str) -> WrkResult:
    """The summary in wrk's output: the scripts' JSON line if present and sound, else the `--latency` text."""
    for line in output.splitlines():
        if line.startswith(JSON_PREFIX):
            try:
                return _from_json(json.loads(line[len(JSON_PREFIX) :]))
            except (ValueError, KeyError, TypeError):
                break  # a torn or foreign line: the text summary printed before it still counts
    return _from_text(output)


def _from_json(data: dict[str, Any]) -> WrkResult:
    """The scripts' JSON summary; a missing key or a value of the wrong kind raises (KeyError, TypeError, ...)."""
    errors = data["errors"]
    percentiles = data["percentiles_ms"]
    if not isinstance(errors, dict) or not isinstance(percentiles, dict) or not percentiles:
        raise ValueError("malformed summary")
    requests, duration = int(data["requests"]), float(data["duration_s"])
    return WrkResult(
        requests=requests,
        duration_s=duration,
        rps=round(requests / duration, 2) if duration > 0 else 0.0,
        percentiles={f"{float(k):g}": float(v) for k, v in percentiles.items()},
        mean_ms=float(data["mean_ms"]),
        stdev_ms=float(data["stdev_ms"]),
        max_ms=float(data["max_ms"]),
        bytes=int(data["bytes"]),
        connect_errors=int(errors["connect"]),
        read_errors=int(errors["read"]),
        write_errors=int(errors["write"]),
        timeouts=int(errors["timeout"]),
        non_2xx=int(errors["status"]),
    )


def _from_text(output: str) -> WrkResult:
    requests, rps = _REQUESTS.search(output), _RPS.search(output)
    if requests is None or rps is None:
        first = output.strip().splitlines()[0] if output.strip() else "(no output)"
        raise HostctlError(f"wrk output has no summary: {first[:120]}")
    result = WrkResult(
        requests=int(requests.group(1)),
        duration_s=to_ms(requests.group(2), requests.group(3)) / 1000,
        rps=float(rps.group(1)),
        percentiles={f"{float(p):g}": to_ms(v, u) for p, v, u in _PERCENTILE.findall(output)},
        bytes=round(float(requests.group(4)) * _BYTE_UNITS[requests.group(5)]),
    )
    if latency := _LATENCY.search(output):
        mean, stdev, top = (to_ms(*latency.group(i, i + 1)) for i in (1, 3, 5))
        result.mean_ms, result.stdev_ms, result.max_ms = mean, stdev, top
    if socket := _SOCKET.search(output):
        result.connect_errors, result.read_errors, result.write_errors, result.timeouts = map(int, socket.groups())
    if non_2xx := _NON_2XX.search(output):
        result.non_2xx = int(non_2xx.group(1))
    return result


# --- running ---------------------------------------------------------------------------------------------


def check_exit(where: str, status: int | None, killed_by: str | None, stderr: str) -> None:
    """HostctlError for a wrk process that did not end well: missing binary, killed, failed."""
    detail = stderr.strip().splitlines()[-1][:200] if stderr.strip() else "no message"
    if killed_by:
        raise HostctlError(f"wrk on {where} was killed by signal {killed_by} mid-run; nothing recorded")
    if status == 127:
        raise HostctlError(f"wrk is not installed on {where} (apt-get install wrk): {detail}")
    if status != 0:
        raise HostctlError(f"wrk on {where} exited with status {status}: {detail}")


async def watch(running: asyncio.Future[Any], duration_s: float, progress: Progress | None, tick: float = 0.5) -> None:
    """Report (elapsed, duration) to `progress` every `tick` seconds until `running` is done."""
    start = time.monotonic()
    while not running.done():
        if progress is not None:
            await progress(min(time.monotonic() - start, duration_s), duration_s)
        await asyncio.wait([running], timeout=tick)


async def run(
    url: str,
    params: Params | None = None,
    *,
    progress: Progress | None = None,
    binary: str = "wrk",
    **options: float | int | str | None,
) -> WrkResult:
    """Run `binary` on this machine against `url` (no checks of target or bounds: see `hostctl.load.generators`).

    `params` or keyword options (threads, connections, duration_s, timeout_s, script). Cancelling kills wrk.
    """
    params = params or Params(**options)  # type: ignore[arg-type]  # Params checks each value's kind itself
    found = shutil.which(binary)
    if found is None:
        raise HostctlError(f"wrk is not installed on this machine ({binary} not found; apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="hostctl-wrk-") as tmp:
        script = Path(tmp) / "run.lua"
        script.write_text(script_text(params.script), encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            found,
            *params.args(str(script), url),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        output = asyncio.ensure_future(proc.communicate())
        try:
            async with asyncio.timeout(params.duration_s + params.timeout_s + GRACE_S):
                await watch(output, params.duration_s, progress)
                out, err = await output
        except TimeoutError:
            raise HostctlError(
                f"wrk on this machine did not finish within {params.duration_s} s + "
                f"{params.timeout_s + GRACE_S:g} s; killed, nothing recorded"
            ) from None
        finally:
            if proc.returncode is None:
                # os.kill, not proc.kill(): Popen's kill polls first, and that poll can reap the exit status asyncio's
                # child watcher waits for (it then reports 255 and logs a warning).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
            output.cancel()
    rc = proc.returncode
    killed_by = signal.Signals(-rc).name if rc is not None and rc < 0 else None
    check_exit("this machine", rc, killed_by, err.decode(errors="replace"))
    return parse(out.decode(errors="replace"))
