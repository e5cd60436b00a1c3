"""Emulated DeathStarBench-like microservices: one real aiohttp server per demo CVM.

A request waits for a free slot (one per online vCPU), then holds it for its service time
scaled by the CVM's security overhead and some jitter. More slots under the same load
therefore means lower latency, which is the physics the demo rests on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web
from aiohttp.typedefs import Handler

from hostctl.config import check, non_negative, positive


@dataclass(frozen=True)
class Endpoint:
    """One HTTP endpoint: where it lives, what it costs, and its share of the mixed workload."""

    name: str = check(lambda v: None if v and "/" not in v else "must be a non-empty name without '/'")
    path: str = check(lambda v: None if v.startswith("/") else "must start with '/'")
    service_ms: float = check(positive)
    weight: float = check(non_negative, default=1.0)


DEFAULT_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("home-timeline", "/wrk2-api/home-timeline/read", 4.0, 0.6),
    Endpoint("user-timeline", "/wrk2-api/user-timeline/read", 5.0, 0.3),
    Endpoint("compose-post", "/wrk2-api/post/compose", 9.0, 0.1),
)


class Slots:
    """An asyncio concurrency limiter whose capacity may change at any time.

    Waiters are served FIFO. Raising the capacity admits waiters at once; lowering it lets
    in-flight holders finish while new entrants wait. Busy time is integrated as
    slot-seconds (in-flight count x elapsed monotonic time), queueing likewise (waiting count x time).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self._capacity = capacity
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._busy = 0.0
        self._busy_total = 0.0
        self._queued_total = 0.0
        self._mark = time.monotonic()

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"capacity must be >= 0, got {value}")
        self._capacity = value
        self._wake()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(1 for fut in self._waiters if not fut.done())

    async def acquire(self) -> None:
        """Wait for a free slot and take it."""
        self._wake()  # queued waiters go first; cancelled ones are discarded
        if self._in_flight < self._capacity and not self._waiters:
            self._adjust(+1)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tick()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just before the cancellation landed
            elif fut in self._waiters:  # _wake() may already have discarded it
                self._tick()
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back and hand it to the next waiter if capacity allows."""
        if self._in_flight <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._adjust(-1)
        self._wake()

    def take_busy_seconds(self) -> float:
        """Busy slot-seconds since the previous call, in-flight time included; resets the counter."""
        self._adjust(0)
        busy, self._busy = self._busy, 0.0
        return busy

    def totals(self) -> tuple[float, float]:
        """Request-seconds in flight and queued since creation (never reset; readers keep their own marks)."""
        self._tick()
        return self._busy_total, self._queued_total

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def _adjust(self, delta: int) -> None:
        self._tick()
        self._in_flight += delta

    def _tick(self) -> None:
        now = time.monotonic()
        elapsed, self._mark = now - self._mark, now
        self._busy += self._in_flight * elapsed
        self._busy_total += self._in_flight * elapsed
        self._queued_total += len(self._waiters) * elapsed

    def _wake(self) -> None:
        self._tick()
        while self._waiters and self._in_flight < self._capacity:
            fut = self._waiters.popleft()
            if not fut.done():
                self._adjust(+1)
                fut.set_result(None)


class CVMService:
    """One CVM's microservices served over real HTTP on loopback, throttled by vCPU slots."""

    def __init__(
        self,
        cvm: str,
        *,
        overhead: float,
        slots: int,
        endpoints: Sequence[Endpoint] = DEFAULT_ENDPOINTS,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if overhead <= 0:
            raise ValueError(f"overhead must be > 0, got {overhead}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {jitter}")
        self.cvm = cvm
        self.overhead = overhead
        self.endpoints = tuple(endpoints)
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._slots = Slots(slots)
        self._requests = {e.name: 0 for e in self.endpoints}
        self._errors = {e.name: 0 for e in self.endpoints}
        self._arrived = 0  # requests received since creation, on every endpoint
        self._cpu_mark = time.monotonic()
        self._demand_mark = (time.monotonic(), 0.0, 0)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @property
    def slots(self) -> Slots:
        return self._slots

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError(f"{self.cvm}: service not started")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve every endpoint (GET and POST) on host:port; port 0 picks a free one."""
        if self._runner is not None:
            raise RuntimeError(f"{self.cvm}: service already started")
        app = web.Application()
        for endpoint in self.endpoints:
            handler = self._handler(endpoint)
            app.router.add_get(endpoint.path, handler)
            app.router.add_post(endpoint.path, handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._base_url = f"http://{bound_host}:{bound_port}"
        self._cpu_mark = time.monotonic()
        self._slots.take_busy_seconds()

    async def stop(self) -> None:
        """Stop serving; safe to call more than once."""
        runner, self._runner, self._base_url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    def set_slots(self, n: int) -> None:
        """Set how many requests may be served at once (online vCPUs)."""
        self._slots.capacity = n

    def cpu_percent(self) -> float:
        """Busy share of the slot capacity since the previous call, in percent (0..100)."""
        now = time.monotonic()
        elapsed, self._cpu_mark = now - self._cpu_mark, now
        busy = self._slots.take_busy_seconds()
        capacity = self._slots.capacity
        if capacity == 0 or elapsed <= 0:
            return 0.0
        return min(100.0, max(0.0, busy / (elapsed * capacity) * 100.0))

    def demand(self) -> tuple[float, float]:
        """Since the previous call: the mean requests in flight or queued, and the requests received per second
        (the demand the concurrency and rate policies read)."""
        now = time.monotonic()
        busy, queued = self._slots.totals()
        (then, before, arrived), self._demand_mark = self._demand_mark, (now, busy + queued, self._arrived)
        if now <= then:
            return 0.0, 0.0
        return (busy + queued - before) / (now - then), (self._arrived - arrived) / (now - then)

    def urls(self) -> dict[str, str]:
        """Endpoint name -> full URL."""
        return {e.name: self.base_url + e.path for e in self.endpoints}

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-endpoint request and error counts."""
        return {name: {"requests": self._requests[name], "errors": self._errors[name]} for name in self._requests}

    def _handler(self, endpoint: Endpoint) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            self._requests[endpoint.name] += 1
            self._arrived += 1
            try:
                async with self._slots:
                    factor = self._rng.uniform(1 - self.jitter, 1 + self.jitter)
                    ms = endpoint.service_ms * self.overhead * factor
                    await asyncio.sleep(ms / 1000)
            except BaseException:
                self._errors[endpoint.name] += 1
                raise
            return web.json_response({"cvm": self.cvm, "endpoint": endpoint.name, "ms": round(ms, 3)})

        return handle
