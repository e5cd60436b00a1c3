"""Run wrk (argv, never a shell) and read its `--latency` summary."""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass, field

from hostctl.errors import HostctlError
from hostctl.model import Model

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass
class WrkResult(Model):
    """One wrk run's summary: latency percentiles in ms, throughput and errors."""

    requests: int
    duration_s: float
    rps: float
    percentiles: dict[str, float] = field(default_factory=dict)
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


def to_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def parse(output: str) -> WrkResult:
    """Parse wrk's text summary (run with --latency); HostctlError when it is not one."""
    requests, rps = _REQUESTS.search(output), _RPS.search(output)
    if requests is None or rps is None:
        first = output.strip().splitlines()[0] if output.strip() else "(no output)"
        raise HostctlError(f"wrk output has no summary: {first[:120]}")
    result = WrkResult(
        requests=int(requests.group(1)),
        duration_s=to_ms(requests.group(2), requests.group(3)) / 1000,
        rps=float(rps.group(1)),
        percentiles={f"{float(p):g}": to_ms(v, u) for p, v, u in _PERCENTILE.findall(output)},
    )
    if socket := _SOCKET.search(output):
        result.connect_errors, result.read_errors, result.write_errors, result.timeouts = map(int, socket.groups())
    if non_2xx := _NON_2XX.search(output):
        result.non_2xx = int(non_2xx.group(1))
    return result


def argv(url: str, *, threads: int = 1, connections: int = 8, duration_s: float = 5.0,
         timeout_s: float = 2.0, script: str | None = None) -> list[str]:
    """The wrk command line for one run."""
    binary = shutil.which("wrk")
    if binary is None:
        raise HostctlError("wrk is not installed on this machine (apt-get install wrk)")
    args = [binary, f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", f"--timeout={timeout_s:g}s", "--latency"]
    if script:
        args += ["-s", script]
    return [*args, url]


async def run(url: str, **options: float | int | str | None) -> WrkResult:
    """Run wrk against `url` and parse its summary."""
    proc = await asyncio.create_subprocess_exec(
        *argv(url, **options), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE  # type: ignore[arg-type]
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise HostctlError(f"wrk exited with status {proc.returncode}: {err.decode(errors='replace').strip()[:200]}")
    return parse(out.decode(errors="replace"))
