"""Recent samples the console keeps while it runs: workers and CPU % per CVM, probed p99 per service.

The detail screen plots them; the services table shows the last p99s as a trend. A CVM's samples are kept as the
points where its values changed, so an update costs what it changed, not what its host holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from hostctl.wire.model import CVM

SAMPLES = 600  # ten minutes at one sample a second

Point = tuple[
    int, int | None, int | None
]  # the host's sample number from which on: workers, whole CPU % (None: unknown)


@dataclass
class Series:
    """One CVM's recent samples, oldest first (a sample whose count or CPU % was unknown is left out)."""

    workers: list[int] = field(default_factory=list)
    cpu: list[int] = field(default_factory=list)


class Trends:
    """Samples of every CVM (keyed `host/cvm`) and service (keyed `host/cvm/service`) seen, the last SAMPLES of each.

    Each update of a host is one sample of each of its CVMs; a CVM whose record did not change keeps its values.
    """

    def __init__(self) -> None:
        self.hosts: dict[str, dict[str, deque[Point]]] = {}  # host -> CVM name -> where its values changed
        self.taken: dict[str, int] = {}  # host -> samples taken of it
        self.p99: dict[str, deque[float]] = {}  # host/cvm/service -> probed p99 (ms)
        self.p99_at: dict[str, deque[float]] = {}  # ... and when each was taken (Unix time)

    def record(self, host: str, changed: Iterable[CVM]) -> None:
        """One sample of a host's CVMs, of which only `changed` may differ from the last."""
        n = self.taken[host] = self.taken.get(host, 0) + 1
        series = self.hosts.setdefault(host, {})
        for cvm in changed:
            value = (cvm.workers_active, None if cvm.cpu_percent is None else round(cvm.cpu_percent))
            points = series.get(cvm.name)
            if points is None:
                points = series[cvm.name] = deque(maxlen=SAMPLES)
            elif points[-1][1:] == value:
                continue
            points.append((n, *value))

    def record_all(self, host: str, cvms: Collection[CVM]) -> None:
        """One sample of all of a host's CVMs; those it no longer has end here, and are forgotten SAMPLES later."""
        self.record(host, cvms)
        n, series = self.taken[host], self.hosts[host]
        for name in series.keys() - {c.name for c in cvms}:
            points = series[name]
            if points[-1][1:] != (None, None):
                points.append((n, None, None))
            elif points[-1][0] <= n - SAMPLES:
                del series[name]

    def record_p99(self, key: str, p99: float, ts: float) -> None:
        """A service's probed p99 at `ts`, keyed `host/cvm/service`."""
        self.p99.setdefault(key, deque(maxlen=SAMPLES)).append(p99)
        self.p99_at.setdefault(key, deque(maxlen=SAMPLES)).append(ts)

    def of(self, key: str) -> Series:
        """The last SAMPLES samples of CVM `host/cvm` (empty when it was never seen)."""
        host, _, cvm = key.partition("/")
        points = self.hosts.get(host, {}).get(cvm)
        series = Series()
        if not points:
            return series
        end = self.taken[host] + 1
        start = end - SAMPLES
        ends = [*(p[0] for p in list(points)[1:]), end]
        for (at, workers, cpu), until in zip(points, ends, strict=True):
            span = until - max(at, start)
            if span > 0 and workers is not None and cpu is not None:
                series.workers += [workers] * span
                series.cpu += [cpu] * span
        return series
