"""Open-loop background traffic with a daily rhythm (compressed into minutes) for the demo."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence

import aiohttp


def rate_at(t: float, *, base_rps: float, peak_rps: float, day_seconds: float, phase: float = 0.0) -> float:
    """Request rate at time t: base_rps at "night", peak_rps at "midday", smooth in between.

    phase shifts the curve by a fraction of a day.
    """
    if day_seconds <= 0:
        raise ValueError(f"day_seconds must be > 0, got {day_seconds}")
    return base_rps + (peak_rps - base_rps) * (1 - math.cos(2 * math.pi * (t / day_seconds + phase))) / 2


class BackgroundTraffic:
    """Poisson arrivals at the rate_at() curve, each request its own task, spread over weighted targets.

    Open loop: arrivals do not wait for responses. An arrival finding max_in_flight requests
    outstanding is dropped. Counters: sent, ok, errors (failed or non-2xx/3xx), dropped.
    """

    def __init__(
        self,
        targets: Sequence[tuple[str, float]],
        *,
        base_rps: float,
        peak_rps: float,
        day_seconds: float,
        phase: float = 0.0,
        rng: random.Random | None = None,
        max_in_flight: int = 64,
    ) -> None:
        if not targets:
            raise ValueError("at least one target is required")
        if base_rps < 0 or peak_rps < 0 or max(base_rps, peak_rps) <= 0:
            raise ValueError("rates must be >= 0 and not both 0")
        if day_seconds <= 0:
            raise ValueError(f"day_seconds must be > 0, got {day_seconds}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._urls = [url for url, _ in targets]
        self._weights = [weight for _, weight in targets]
        self.base_rps = base_rps
        self.peak_rps = peak_rps
        self.day_seconds = day_seconds
        self.phase = phase
        self.max_in_flight = max_in_flight
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._t0 = 0.0
        self.sent = 0
        self.ok = 0
        self.errors = 0
        self.dropped = 0

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def elapsed(self) -> float:
        """Seconds since start() on the monotonic clock."""
        return time.monotonic() - self._t0

    def current_rps(self) -> float:
        """The target arrival rate right now."""
        return rate_at(
            self.elapsed(),
            base_rps=self.base_rps,
            peak_rps=self.peak_rps,
            day_seconds=self.day_seconds,
            phase=self.phase,
        )

    async def start(self) -> None:
        if self._loop_task is not None:
            raise RuntimeError("background traffic already started")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(limit=self.max_in_flight),
        )
        self._t0 = time.monotonic()
        self._loop_task = asyncio.create_task(self._arrivals(self._session), name="background-traffic")

    async def stop(self) -> None:
        """Cancel the arrival loop and every outstanding request, then close the session."""
        tasks = [t for t in (self._loop_task, *self._requests) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        self._requests.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _arrivals(self, session: aiohttp.ClientSession) -> None:
        # Non-homogeneous Poisson process by thinning: candidates at the maximum rate, each
        # kept with probability rate_at(now) / max rate. Deadlines are absolute, so event-loop
        # lag does not lower the offered rate; catch-up after a long stall is capped at 1 s.
        max_rps = max(self.base_rps, self.peak_rps)
        deadline = time.monotonic()
        while True:
            deadline = max(deadline, time.monotonic() - 1.0) + self._rng.expovariate(max_rps)
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            if self._rng.random() * max_rps >= self.current_rps():
                continue
            if len(self._requests) >= self.max_in_flight:
                self.dropped += 1
                continue
            url = self._rng.choices(self._urls, weights=self._weights)[0]
            task = asyncio.create_task(self._request(session, url))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            self.sent += 1

    async def _request(self, session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.get(url) as response:
                await response.read()
                success = response.status < 400
        except Exception:  # any failing target is just an error, never a crash
            success = False
        if success:
            self.ok += 1
        else:
            self.errors += 1
