"""Soak: does a headless agent's memory or CPU creep over time? One agent process with no console (as `hostctl
demo serve-host` runs it), probes at 10x the default rate, a policy on for every CVM (all kinds in turn, through the
agent's `policy` method), and CVMs and services appearing and vanishing all the time (`bench/soak_host.py`).
The agent's RSS and CPU are sampled from /proc every few seconds; after a warm-up their least-squares slopes say
how fast they grow. With `--baseline CHECKOUT` a second agent with that checkout's code runs at the same time on
the same churn, so both share the machine's noise. Writes bench/results/soak.md and soak.svg.

    python -m bench.soak --minutes 30 [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from hostctl.demo import config as demo_config
from hostctl.errors import HostctlError
from hostctl.wire import rpc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PROBE_RATE = 10 * demo_config.DemoConfig.probe_rate  # 10x the default
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

CONFIG = f"""
sample_interval = 1.0
probe_rate = {PROBE_RATE}
[traffic]
base_rps = 2.0
peak_rps = 8.0
day_seconds = 120.0
[[endpoints]]
name = "home-timeline"
path = "/wrk2-api/home-timeline/read"
service_ms = 4.0
weight = 0.6
[[endpoints]]
name = "user-timeline"
path = "/wrk2-api/user-timeline/read"
service_ms = 5.0
weight = 0.3
[[endpoints]]
name = "compose-post"
path = "/wrk2-api/post/compose"
service_ms = 9.0
weight = 0.1
[[hosts]]
name = "soak"
cpus = 16
  [[hosts.cvms]]
  name = "steady-snp"
  security = "sev-snp"
  boot_vcpus = 1
  max_vcpus = 6
  online_vcpus = 2
  [[hosts.cvms]]
  name = "steady-sev"
  security = "sev"
  boot_vcpus = 1
  max_vcpus = 6
  online_vcpus = 2
"""
STEADY = ("steady-snp", "steady-sev")


@dataclass
class Sample:
    at: float  # seconds since the soak started
    rss_mib: float
    cpu_percent: float  # over the interval since the previous sample


@dataclass
class Side:
    """One agent under soak: its code's checkout, its process, what it has done and what was measured."""

    label: str
    checkout: Path
    runtime: Path
    proc: subprocess.Popen[bytes] | None = None
    samples: list[Sample] = field(default_factory=list)
    objects: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    policies_on: int = 0
    refused: list[str] = field(default_factory=list)
    imported: str = ""
    _cpu: tuple[float, int] | None = None
    _stderr: IO[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.runtime / "soak.sock"

    @property
    def stderr(self) -> Path:
        return self.runtime / "stderr.log"

    def start(self, seed: int, period: float) -> None:
        self.runtime.mkdir(parents=True)
        config = self.runtime / "soak.toml"
        config.write_text(CONFIG)
        self._stderr = self.stderr.open("wb")
        argv = [
            sys.executable,
            str(ROOT / "bench" / "soak_host.py"),
            *("--config", str(config), "--runtime", str(self.runtime)),
            *("--policies", str(_policies_of(self.checkout))),
            *("--seed", str(seed), "--period", str(period)),
        ]
        env = {**os.environ, "PYTHONPATH": str(self.checkout), "XDG_STATE_HOME": str(self.runtime / "state")}
        self.proc = subprocess.Popen(
            argv, cwd=self.checkout, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._stderr is not None:
            self._stderr.close()

    def measure(self, at: float) -> None:
        """Read the agent's RSS and CPU time from /proc; CPU % is over the time since the previous reading."""
        assert self.proc is not None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
            rss_pages = int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1])
        except OSError:
            return
        fields = stat.rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        if self._cpu is not None:
            then, before = self._cpu
            cpu = (ticks - before) / TICK / (at - then) * 100
            self.samples.append(Sample(at, rss_pages * PAGE / 2**20, cpu))
        self._cpu = (at, ticks)

    def tracebacks(self) -> list[str]:
        """The last line of every traceback on the agent's stderr (the exception)."""
        found, inside = [], False
        for line in self.stderr.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                inside = True
            elif inside and line and not line[0].isspace():
                found.append(line[:200])
                inside = False
        return found


async def follow(side: Side, started: float) -> None:
    """Read the churning host's lines: switch a policy on for every CVM that comes up, keep the object counts."""
    assert side.proc is not None and side.proc.stdout is not None
    policies = await _policy_names(side)
    reader = asyncio.StreamReader(limit=1 << 20)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), side.proc.stdout)
    for cvm in STEADY:
        await _policy_on(side, cvm, policies)
    while line := await reader.readline():
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:  # something else the agent printed
            continue
        if not isinstance(message, dict):
            continue
        if "added" in message:
            side.added += 1
            await _policy_on(side, message["added"], policies)
        elif "removed" in message:
            side.removed += 1
        elif "objects" in message:
            side.objects.append((time.monotonic() - started, {**message["objects"], "all gc": message["gc"]}))
        elif "hostctl" in message:
            side.imported = message["hostctl"]


async def _policy_names(side: Side) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(HostctlError, OSError, TimeoutError):
            described = await rpc.call_unix(str(side.socket), "policies", timeout=5)
            return [p["name"] for p in described]
        if time.monotonic() > deadline or (side.proc is not None and side.proc.poll() is not None):
            raise HostctlError(f"{side.label}: the agent did not answer within 30 s: {side.stderr.read_text()[-800:]}")
        await asyncio.sleep(0.2)


def _policies_of(checkout: Path) -> Path:
    """A checkout's shipped policies: inside the package, or in `configs/` before they moved there."""
    inside = checkout / "hostctl" / "data" / "policies"
    return inside if inside.is_dir() else checkout / "configs" / "policies"


async def _policy_on(side: Side, cvm: str, policies: list[str]) -> None:
    """The next policy in turn, switched on for `cvm`; a refusal is kept with its reason. A CVM just defined may
    not be known to the agent yet (it learns of it from libvirt's event): that is asked again for a few seconds."""
    name = policies[(side.added + STEADY.index(cvm) if cvm in STEADY else side.added) % len(policies)]
    deadline = time.monotonic() + 5
    while True:
        try:
            await rpc.call_unix(str(side.socket), "policy", timeout=10, cvm=cvm, name=name, enabled=True, who="soak")
            side.policies_on += 1
            return
        except rpc.RpcError as e:
            if "unknown CVM" not in str(e) or time.monotonic() > deadline:
                side.refused.append(f"{cvm}: {e}")
                return
        except (HostctlError, TimeoutError) as e:
            side.refused.append(f"{cvm}: {e or 'timed out'}")
            return
        await asyncio.sleep(0.1)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


async def soak(sides: list[Side], minutes: float, interval: float, seed: int, period: float) -> None:
    started = time.monotonic()
    for side in sides:
        side.start(seed, period)
    followers = [asyncio.ensure_future(follow(side, started)) for side in sides]
    try:
        end = started + minutes * 60
        while (now := time.monotonic()) < end:
            for side in sides:
                side.measure(now - started)
                assert side.proc is not None
                if side.proc.poll() is not None:
                    raise HostctlError(f"{side.label}: the agent exited with {side.proc.returncode}")
            for follower in followers:
                if follower.done() and follower.exception() is not None:
                    raise follower.exception()  # type: ignore[misc]
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - now)))
    finally:
        for side in sides:
            side.stop()
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)


def report(args: argparse.Namespace, sides: list[Side], warmup_s: float) -> list[str]:
    command = f"python -m bench.soak --minutes {args.minutes:g}" + (" --baseline CHECKOUT" if args.baseline else "")
    lines = [
        "# Soak: a headless agent's memory and CPU over time",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()}, {os.cpu_count()} cores shared with other work, "
        f"{platform.system()} {platform.release().split('-')[0]}, Python {sys.version.split()[0]}.",
        f"`{command}` writes this file (seed {args.seed}, a sample every {args.interval:g} s, warm-up "
        f"{warmup_s / 60:.1f} min).",
        "",
        f"Each agent: one demo host, probes at {PROBE_RATE:g}/s per service (10x the default), 2 steady CVMs and up to "
        f"3 more defined, started, stripped of their service, destroyed and undefined on a seeded schedule (a change "
        f"every {args.period:g} s), a policy switched on for every CVM that comes up (each kind in turn), no console "
        "or subscriber. Both agents run at the same time on the same schedule. Slopes: least squares over the samples "
        "after the warm-up.",
        "",
        "| agent | samples | RSS after warm-up MiB | RSS at end MiB | RSS slope MiB/hour | CPU mean % | "
        "CPU slope %/hour | CVMs added / removed | policies on | refused | tracebacks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for side in sides:
        after = [s for s in side.samples if s.at >= warmup_s] or side.samples
        if not after:
            lines.append(f"| {side.label} | 0 | | | | | | | | | |")
            continue
        rss = slope([(s.at / 3600, s.rss_mib) for s in after])
        cpu = slope([(s.at / 3600, s.cpu_percent) for s in after])
        mean_cpu = sum(s.cpu_percent for s in after) / len(after)
        lines.append(
            f"| {side.label} | {len(after)} | {after[0].rss_mib:.1f} | {after[-1].rss_mib:.1f} | {rss:+.1f} | "
            f"{mean_cpu:.1f} | {cpu:+.1f} | {side.added} / {side.removed} | {side.policies_on} | "
            f"{len(side.refused)} | {len(side.tracebacks())} |"
        )
    lines += ["", "Live objects in the agent (gc), first report after the warm-up and the last:", ""]
    names = list(sides[0].objects[-1][1]) if sides[0].objects else []
    lines += ["| agent | when | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for side in sides:
        kept = [o for o in side.objects if o[0] >= warmup_s] or side.objects
        for at, counts in kept[:1] + kept[-1:]:
            lines.append(
                f"| {side.label} | {at / 60:.1f} min | " + " | ".join(str(counts.get(n, "")) for n in names) + " |"
            )
    lines += ["", "RSS over time (MiB; one row per side, each column a tenth of the run):", "", "```"]
    for side in sides:
        lines.append(f"{side.label:>9} " + " ".join(f"{v:6.1f}" for v in _deciles(side.samples)))
    lines += ["```", "", "![RSS over time](soak.svg)"]
    refusals = [f"- {side.label}: {r}" for side in sides for r in side.refused[:5]]
    if refusals:
        lines += ["", "Policy switches refused:", "", *refusals]
    errors = [f"- {side.label}: `{e}` ({n}x)" for side in sides for e, n in Counter(side.tracebacks()).items()]
    if errors:
        lines += ["", "Tracebacks on the agents' stderr (their exceptions):", "", *errors]
    return lines


def _deciles(samples: list[Sample]) -> list[float]:
    if not samples:
        return []
    return [samples[min(len(samples) - 1, len(samples) * i // 10)].rss_mib for i in range(10)] + [samples[-1].rss_mib]


def svg(sides: list[Side]) -> str:
    """RSS over time, one polyline per side."""
    width, height, pad = 640, 240, 40
    points = [s for side in sides for s in side.samples]
    if not points:
        return '<svg xmlns="http://www.w3.org/2000/svg"/>\n'
    t_max = max(s.at for s in points) or 1.0
    low, high = min(s.rss_mib for s in points), max(s.rss_mib for s in points)
    span = (high - low) or 1.0

    def xy(s: Sample) -> str:
        x = pad + s.at / t_max * (width - 2 * pad)
        y = height - pad - (s.rss_mib - low) / span * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    colours = ["#1f77b4", "#d62728"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{pad}" y="15">agent RSS (MiB), {low:.1f} to {high:.1f}, over {t_max / 60:.1f} min</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
    ]
    for i, side in enumerate(sides):
        colour = colours[i % len(colours)]
        line = " ".join(xy(s) for s in side.samples)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{line}"/>')
        out.append(f'<text x="{pad + 150 * i}" y="{height - 12}" fill="{colour}">{side.label}</text>')
    return "\n".join([*out, "</svg>"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--baseline", type=Path, help="another checkout of this repository: its agent runs alongside")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--warmup", type=float, help="minutes left out of the slopes (default: a sixth, at most 5)")
    parser.add_argument("--period", type=float, default=2.0, help="seconds between two changes of the host")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.md")
    parser.add_argument(
        "--keep", type=Path, help="keep the agents' files (logs, audit, node XML) in this new directory"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0 or args.period <= 0:
        parser.error("--minutes, --interval and --period must be positive")
    if args.baseline is not None and not (args.baseline / "hostctl" / "demo" / "launcher.py").is_file():
        print(f"--baseline: {args.baseline} is not a checkout of this repository (no hostctl/demo/launcher.py)")
        return 2
    warmup_s = 60 * (args.warmup if args.warmup is not None else min(5.0, args.minutes / 6))
    if args.keep is not None and args.keep.exists():
        print(f"--keep: {args.keep} already exists")
        return 2
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        files = args.keep or Path(tmp)
        sides = [Side("this tree", ROOT, files / "this")]
        if args.baseline is not None:
            sides.append(Side("baseline", args.baseline.resolve(), files / "baseline"))
        try:
            asyncio.run(soak(sides, args.minutes, args.interval, args.seed, args.period))
        except HostctlError as e:
            print(f"soak: {e}")
            return 1
        lines = report(args, sides, warmup_s)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".svg").write_text(svg(sides))
    print("\n".join(lines))
    for side in sides:
        print(f"{side.label}: hostctl from {side.imported}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
