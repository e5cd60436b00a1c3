"""Live latency between load runs: each service probed at a low, steady, open-loop rate.

Open loop: probes leave on a fixed schedule whether or not earlier ones came back, so a slow service cannot
hide its slowness by slowing the prober down. Each service keeps 10 s and 60 s windows of exact samples (at a
few requests per second a window holds a few hundred samples, so sorting beats a histogram's approximation); a
window drops what has aged out of it as samples come, and a service no longer listed is dropped with its windows.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from hostctl.stats import percentile
from hostctl.wire.model import Latency, Service

WINDOWS = (10.0, 60.0)


@dataclass
class ProbeSample:
    """One probe of one service: when it was sent (monotonic clock), how long it took (ms), whether it worked."""

    at: float
    ms: float
    ok: bool


class Window:
    """Samples of the last `seconds`, and their summary (percentiles by nearest rank, `hostctl.stats`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.samples: deque[ProbeSample] = deque()

    def add(self, sample: ProbeSample) -> None:
        """Keep `sample`, and drop the oldest samples older than the window before it."""
        self.samples.append(sample)
        oldest = sample.at - self.seconds
        while self.samples[0].at < oldest:
            self.samples.popleft()

    def since(self, start: float) -> list[ProbeSample]:
        """The samples sent at `start` or later."""
        # Samples are stamped when sent but recorded when answered, so they are not strictly in order.
        return [s for s in self.samples if s.at >= start]

    def stats(self, now: float) -> Latency:
        samples = self.since(now - self.seconds)
        ok = sorted(s.ms for s in samples if s.ok)
        errors = len(samples) - len(ok)

        def pct(q: float) -> float:
            return round(percentile(ok, q), 3) if ok else 0.0

        return Latency(
            window_s=self.seconds,
            count=len(samples),
            errors=errors,
            rps=round(len(samples) / self.seconds, 2),
            p50=pct(0.5),
            p90=pct(0.9),
            p99=pct(0.99),
            max=round(ok[-1], 3) if ok else 0.0,
        )


class Prober:
    """Probes every listed service `rate` times a second, at most `max_in_flight` outstanding per service."""

    def __init__(
        self,
        services: Callable[[], list[Service]],
        *,
        rate: float = 2.0,
        timeout: float = 2.0,
        max_in_flight: int = 8,
        windows: tuple[float, ...] = WINDOWS,
        on_sample: Callable[[str, str, ProbeSample], None] = lambda cvm, service, sample: None,
    ) -> None:
        self.services = services
        self.on_sample = on_sample  # told of every probe (CVM, service, sample): the agent's metrics
        self.rate = rate
        self.window_seconds = windows
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.windows: dict[str, tuple[Window, ...]] = {}
        self._in_flight: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._requests: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self.rate > 0:
            self._task = asyncio.get_running_loop().create_task(self._schedule())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for request in list(self._requests):
            request.cancel()
        await asyncio.gather(*self._requests, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def latency(self, service: Service) -> dict[str, Latency]:
        """The service's windows, keyed `10s` and `60s`."""
        now = time.monotonic()
        windows = self.windows.get(_key(service), ())
        return {f"{w.seconds:g}s": w.stats(now) for w in windows}

    async def _schedule(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while True:
            listed = self.services()
            for gone in (self.windows.keys() | self._in_flight.keys()) - {_key(s) for s in listed}:
                self.windows.pop(gone, None)
                self._in_flight.pop(gone, None)
            for service in listed:
                key = _key(service)
                if key not in self.windows:
                    self.windows[key] = tuple(Window(s) for s in self.window_seconds)
                if self._in_flight.get(key, 0) >= self.max_in_flight:
                    self._record(service, ProbeSample(time.monotonic(), self.timeout * 1000, ok=False))
                    continue
                request = asyncio.get_running_loop().create_task(self._probe(key, service))
                self._requests.add(request)
                request.add_done_callback(self._requests.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _probe(self, key: str, service: Service) -> None:
        assert self._session is not None
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        started = time.monotonic()
        ok = False
        try:
            async with self._session.get(service.url) as response:
                await response.read()
                ok = response.status < 400
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        finally:
            if key in self._in_flight:  # not when the service went away meanwhile
                self._in_flight[key] -= 1
        self._record(service, ProbeSample(started, (time.monotonic() - started) * 1000, ok))

    def _record(self, service: Service, sample: ProbeSample) -> None:
        for window in self.windows.get(_key(service), ()):
            window.add(sample)
        self.on_sample(service.cvm, service.name, sample)


def _key(service: Service) -> str:
    return f"{service.cvm}/{service.name}"
