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
UNKNOWN = -1  # a count or CPU % the host could not read (never plotted)


class Changes:
    """Where a CVM's values changed: from each host sample number on, its workers and whole CPU % (-1: unknown).

    Three deques of ints, not one of tuples: a point is then no object the garbage collector follows.
    """

    __slots__ = ("at", "cpu", "workers")

    def __init__(self) -> None:
        self.at: deque[int] = deque(maxlen=SAMPLES)
        self.workers: deque[int] = deque(maxlen=SAMPLES)
        self.cpu: deque[int] = deque(maxlen=SAMPLES)

    def last(self) -> tuple[int, int] | None:
        return (self.workers[-1], self.cpu[-1]) if self.at else None

    def add(self, n: int, workers: int, cpu: int) -> None:
        self.at.append(n)
        self.workers.append(workers)
        self.cpu.append(cpu)


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
        self.hosts: dict[str, dict[str, Changes]] = {}  # host -> CVM name -> where its values changed
        self.taken: dict[str, int] = {}  # host -> samples taken of it
        self.p99: dict[str, deque[float]] = {}  # host/cvm/service -> probed p99 (ms)
        self.p99_at: dict[str, deque[float]] = {}  # ... and when each was taken (Unix time)

    def record(self, host: str, changed: Iterable[CVM]) -> None:
        """One sample of a host's CVMs, of which only `changed` may differ from the last."""
        n = self.taken[host] = self.taken.get(host, 0) + 1
        series = self.hosts.setdefault(host, {})
        for cvm in changed:
            active, percent = cvm.workers_active, cvm.cpu_percent
            workers = UNKNOWN if active is None else active
            cpu = UNKNOWN if percent is None else round(percent)
            changes = series.get(cvm.name)
            if changes is None:
                changes = series[cvm.name] = Changes()
            elif changes.workers[-1] == workers and changes.cpu[-1] == cpu:  # (a Changes is never empty)
                continue
            changes.add(n, workers, cpu)

    def record_all(self, host: str, cvms: Collection[CVM]) -> None:
        """One sample of all of a host's CVMs; those it no longer has end here, and are forgotten SAMPLES later."""
        self.record(host, cvms)
        n, series = self.taken[host], self.hosts[host]
        for name in series.keys() - {c.name for c in cvms}:
            changes = series[name]
            if changes.last() != (UNKNOWN, UNKNOWN):
                changes.add(n, UNKNOWN, UNKNOWN)
            elif changes.at[-1] <= n - SAMPLES:
                del series[name]

    def record_p99(self, key: str, p99: float, ts: float) -> None:
        """A service's probed p99 at `ts`, keyed `host/cvm/service`."""
        self.p99.setdefault(key, deque(maxlen=SAMPLES)).append(p99)
        self.p99_at.setdefault(key, deque(maxlen=SAMPLES)).append(ts)

    def of(self, key: str) -> Series:
        """The last SAMPLES samples of CVM `host/cvm` (empty when it was never seen)."""
        host, _, cvm = key.partition("/")
        changes = self.hosts.get(host, {}).get(cvm)
        series = Series()
        if changes is None:
            return series
        end = self.taken[host] + 1
        start = end - SAMPLES
        ends = [*list(changes.at)[1:], end]
        for at, until, workers, cpu in zip(changes.at, ends, changes.workers, changes.cpu, strict=True):
            span = until - max(at, start)
            if span > 0 and UNKNOWN not in (workers, cpu):
                series.workers += [workers] * span
                series.cpu += [cpu] * span
        return series
