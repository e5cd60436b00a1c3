"""Recent samples the console keeps while it runs: workers and CPU % per CVM, probed p99 per service.

The detail screen plots them; the services table shows the last p99s as a trend.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from hostctl.wire.model import CVM

SAMPLES = 600  # ten minutes at one sample a second


@dataclass
class Series:
    """One CVM's recent samples, oldest first."""

    workers: deque[int] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    cpu: deque[int] = field(default_factory=lambda: deque(maxlen=SAMPLES))  # whole percent: small ints cost no memory


class Trends:
    """Samples of every CVM (keyed `host/cvm`) and service (keyed `host/cvm/service`) seen, the last SAMPLES of each."""

    def __init__(self) -> None:
        self.hosts: dict[str, dict[str, Series]] = {}  # host -> CVM name -> its samples
        self.p99: dict[str, deque[float]] = {}  # host/cvm/service -> probed p99 (ms)
        self.p99_at: dict[str, deque[float]] = {}  # ... and when each was taken (Unix time)

    def record(self, host: str, cvms: Iterable[CVM]) -> None:
        """One sample of each of a host's CVMs."""
        series = self.hosts.setdefault(host, {})
        for cvm in cvms:
            s = series.get(cvm.name)
            if s is None:
                s = series[cvm.name] = Series()
            if cvm.workers_active is None or cvm.cpu_percent is None:
                continue  # an unknown count is no sample: the plots skip it rather than show a made-up one
            s.workers.append(cvm.workers_active)
            s.cpu.append(round(cvm.cpu_percent))

    def record_p99(self, key: str, p99: float, ts: float) -> None:
        """A service's probed p99 at `ts`, keyed `host/cvm/service`."""
        self.p99.setdefault(key, deque(maxlen=SAMPLES)).append(p99)
        self.p99_at.setdefault(key, deque(maxlen=SAMPLES)).append(ts)

    def of(self, key: str) -> Series:
        """The samples of CVM `host/cvm` (empty when it was never seen)."""
        host, _, cvm = key.partition("/")
        return self.hosts.get(host, {}).get(cvm) or Series()
