"""Load traces and their open-loop replay over real HTTP (aiohttp).

A trace is a request rate over time made of phases: steady levels, steps, short spikes and a compressed daily
rhythm. Two shapes ship: `bursty` (steps, a spike, a ramp, a day) and `diurnal` (one steady rise and fall).
Replay is open loop: requests leave at Poisson arrival times of the trace's rate whether or not earlier ones came
back, so a slow service cannot slow its own load down; the time a request waits for a connection counts in its
latency.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Phase:
    """`seconds` of load going from `rps` to `until_rps` (a cosine hump up to `peak_rps` and back if given)."""

    name: str
    seconds: float
    rps: float
    until_rps: float | None = None
    peak_rps: float | None = None

    def rate(self, t: float) -> float:
        """The rate `t` seconds into the phase."""
        if self.peak_rps is not None:
            return self.rps + (self.peak_rps - self.rps) * (1 - math.cos(2 * math.pi * t / self.seconds)) / 2
        end = self.rps if self.until_rps is None else self.until_rps
        return self.rps + (end - self.rps) * t / self.seconds


@dataclass(frozen=True)
class Trace:
    """Phases one after the other, under a name."""

    phases: tuple[Phase, ...]
    name: str = "trace"

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def rate(self, t: float) -> float:
        for phase in self.phases:
            if t < phase.seconds:
                return phase.rate(t)
            t -= phase.seconds
        return 0.0

    def steps(self) -> list[tuple[float, float]]:
        """(time, new rate) of each sudden rise: a phase starting well above where the previous one ended."""
        rises, start, before = [], 0.0, None
        for phase in self.phases:
            if before is not None and phase.rps > 1.5 * before:
                rises.append((start, phase.rps))
            start += phase.seconds
            before = phase.rate(phase.seconds)
        return rises

    def scaled(self, factor: float) -> Trace:
        """The same shape at `factor` times the rate."""
        return Trace(
            tuple(
                Phase(
                    p.name,
                    p.seconds,
                    p.rps * factor,
                    None if p.until_rps is None else p.until_rps * factor,
                    None if p.peak_rps is None else p.peak_rps * factor,
                )
                for p in self.phases
            ),
            self.name,
        )

    def lasting(self, seconds: float) -> Trace:
        """The same shape and rates in `seconds` (every phase stretched or squeezed alike)."""
        factor = seconds / self.seconds
        return Trace(
            tuple(Phase(p.name, p.seconds * factor, p.rps, p.until_rps, p.peak_rps) for p in self.phases), self.name
        )

    def peak(self, start: float, end: float, step: float = 0.01) -> float:
        """The highest rate from `start` to `end` (sampled every `step` seconds, both ends included)."""
        count = max(1, math.ceil((end - start) / step))
        return max(self.rate(min(start + i * step, end - 1e-9)) for i in range(count + 1))


def bursty(base: float = 60.0, step: float = 300.0, spike: float = 480.0, peak: float = 400.0) -> Trace:
    """The benchmark trace (150 s): a step, a spike, a ramp and a compressed day, at a quiet base rate."""
    return Trace(
        (
            Phase("quiet", 15, base),
            Phase("step", 20, step),
            Phase("quiet", 10, base),
            Phase("spike", 5, spike),
            Phase("quiet", 15, base),
            Phase("ramp", 10, base, until_rps=step),
            Phase("quiet", 5, base),
            Phase("day", 60, base, peak_rps=peak),
            Phase("night", 10, base),
        ),
        "bursty",
    )


def diurnal(base: float = 60.0, peak: float = 420.0) -> Trace:
    """The second benchmark trace (150 s): a steady daily rise from a quiet night to a peak and back, no steps."""
    return Trace(
        (Phase("night", 10, base), Phase("day", 130, base, peak_rps=peak), Phase("night", 10, base)), "diurnal"
    )


TRACES: dict[str, Callable[[], Trace]] = {"bursty": bursty, "diurnal": diurnal}


@dataclass(frozen=True, slots=True)
class Request:
    """One replayed request: when it left (seconds into the trace), how long it took, whether it worked."""

    at: float
    ms: float
    ok: bool


async def replay(
    trace: Trace, url: str, *, timeout_s: float = 2.0, max_connections: int = 512, seed: int = 1
) -> list[Request]:
    """Send requests at the trace's rate to `url` (Poisson arrivals) and return every one of them."""
    rng = random.Random(seed)
    done: list[Request] = []
    pending: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=max_connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:

        async def one(at: float, started: float) -> None:
            ok = False
            try:
                async with session.get(url) as response:
                    await response.read()
                    ok = response.status < 400
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            done.append(Request(at, (time.monotonic() - started) * 1000, ok))

        start = time.monotonic()
        at = 0.0
        while True:
            rate = trace.rate(at)
            at += rng.expovariate(rate) if rate > 0 else 0.05
            if at >= trace.seconds:
                break
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if trace.rate(at) <= 0:
                continue
            task = asyncio.get_running_loop().create_task(one(at, start + at))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending, return_exceptions=True)
    return sorted(done, key=lambda r: r.at)
