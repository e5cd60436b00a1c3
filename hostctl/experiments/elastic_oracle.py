"""The calibration of one CVM and the oracle it gives: the fewest vCPUs that keep p99 within the SLO, per second of
a trace, and the worker-vCPU-seconds of sizing the CVM that way (pure; measuring is `elastic_calibration`).

The calibration (`hostctl.calibration`) is re-exported here for the experiment's modules.

The oracle of a trace gives each whole second the need at the highest rate of that second (the trace's rate, the
expectation of its Poisson arrivals). It is a bound no real policy reaches: it knows the rate in advance, wakes and
parks at once and carries no queue from one second to the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hostctl.calibration import Calibration, Cell, load
from hostctl.load.trace import Trace

__all__ = ["Calibration", "Cell", "Oracle", "load"]


@dataclass(frozen=True)
class Oracle:
    """The calibration's need for every whole second of a trace."""

    trace: Trace
    calibration: Calibration
    need: tuple[int, ...] = field(init=False)
    beyond: tuple[bool, ...] = field(init=False)

    def __post_init__(self) -> None:
        needs = [self.calibration.need(self.trace.peak(t, t + 1)) for t in range(math.ceil(self.trace.seconds))]
        object.__setattr__(self, "need", tuple(n for n, _ in needs))
        object.__setattr__(self, "beyond", tuple(b for _, b in needs))

    def at(self, t: float) -> int:
        """The need at `t` seconds into the trace (the last second's after the end)."""
        return self.need[min(max(int(t), 0), len(self.need) - 1)]

    @property
    def worker_seconds(self) -> float:
        """Active workers (beyond the boot vCPUs) integrated over the trace, the last second cut at its end."""
        total = 0.0
        for t, n in enumerate(self.need):
            total += (min(t + 1.0, self.trace.seconds) - t) * (n - self.calibration.boot)
        return total

    @property
    def seconds_beyond(self) -> int:
        """Seconds whose rate the calibration does not cover (the oracle took max vCPUs)."""
        return sum(self.beyond)

    def rises(self, step: float = 0.01) -> list[tuple[float, float, int]]:
        """(when, until, new need) at each second whose need is above the previous second's (before the first: the
        boot vCPUs). `when` is the moment in that second at which the trace's rate first needs it (sampled every
        `step` seconds): the oracle sizes the whole second for its highest rate, but the load needing it arrives
        then. `until` is the second the need falls below it again (or the end of the trace)."""
        out = []
        for t, n in enumerate(self.need):
            if n > (self.need[t - 1] if t > 0 else self.calibration.boot):
                until = next((u for u in range(t + 1, len(self.need)) if self.need[u] < n), self.trace.seconds)
                moments = (min(t + i * step, t + 1 - 1e-9) for i in range(round(1 / step) + 1))  # as `Trace.peak`
                when = next(m for m in moments if self.calibration.need(self.trace.rate(m))[0] >= n)
                out.append((round(when, 6), float(until), n))
        return out
