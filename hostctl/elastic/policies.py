"""Elastic policies: pure decisions over a CVM's recent samples (no I/O, no clock; `now` is given).

Each policy answers how many online vCPUs (boot + active workers) the CVM should have, with the reason, or
None when it lacks the data to say (the guard then holds). Every online vCPU serves requests, so "per worker"
below means per online vCPU.

- `threshold` (Ditto-like): mean CPU use of the online vCPUs over the last sample interval; above `high` wake
  enough workers to bring it back to `target`, below `low` park down towards it.
- `slo`: p99 of the CVM's probed request latency over `window_s`; above `target_ms` add workers in proportion
  to the excess, below `down_below` x target for `down_after_s` park one. Only probes sent since the current
  worker count took effect are judged, so the latency of the count before a scale does not drive another one.
- `concurrency` (Knative-like): mean requests in flight or queued over a stable window, plus `burst` spare
  requests while the CVM serves traffic (like Knative's target burst capacity), divided by the target per
  worker, rounded up; a short panic window may only scale up, and only when it asks for `panic_ratio` times the
  current count. It parks a worker only when the need is `hysteresis` vCPUs below the smaller count, so load
  that hovers at a boundary does not wake and park a worker every few seconds. An idle CVM (under `IDLE`
  requests in flight) keeps no spare: its workers all park. With `lead_s` it predicts from the slope: the stable
  window's mean is moved along its least-squares slope to `lead_s` seconds after now (the mean lags now by half
  the window), so a rising load is met before it arrives and a falling one lets workers park sooner.
- `calibrated`: sized from a calibration of the CVM (`hostctl.calibration`, a file named in the policy's TOML):
  the mean requests in flight over `window_s`, times 1 + `margin`, against the most in flight each vCPU count held
  within the SLO when calibrated (`Calibration.capacity`; a count that held no more than a smaller one is skipped).
  It wants the fewest count that held the demand, so a demand between two calibrated counts rounds up to the next,
  and one above every calibrated count is max, said so in the reason. It wakes at once and parks only down to the
  most it needed over the last `hold_s`. With `lead_s` a rising load is met early along the slope of the last
  `slope_s` (a longer window than the need's, so noise moves it less); a falling slope never parks early.
- `rate`: sized by the oracle's own rule (`Calibration.need`): the calibration's fewest vCPUs within the SLO at the
  requests the CVM's services receive per second, read through the noise of counted arrivals (`Rate._demand`: long
  windows while the load is steady, short ones when it moved, a rising line followed `lead_s` ahead). A rate is not
  swollen by the queue that a burst piles up, as requests in flight are. It wakes at once and parks only down to
  the most it needed over the last `hold_s`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol

from hostctl import calibration
from hostctl.calibration import Calibration as Measured
from hostctl.config import check, non_negative, positive
from hostctl.errors import ConfigError
from hostctl.stats import percentile

IDLE = 0.05  # mean requests in flight below which a CVM counts as idle (the agent's own probes stay under it)


@dataclass(frozen=True, slots=True)
class CVMSample:
    """One sampler tick for one CVM: online vCPUs, CPU use (%), concurrency and requests per second over the tick
    (None: unknown)."""

    ts: float
    online: int
    cpu: float | None = None
    concurrency: float | None = None
    rps: float | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    """One latency probe of one of the CVM's services: when it was sent, how long it took, and whether it worked."""

    ts: float
    ms: float
    ok: bool = True


@dataclass(frozen=True, slots=True)
class Signals:
    """Everything a policy may look at: the time, the CVM's online vCPUs, its samples and probes (oldest first)."""

    now: float
    current: int
    samples: Sequence[CVMSample] = ()
    probes: Sequence[Probe] = ()

    def settled_since(self) -> float:
        """When the current online count took effect: the first sample of the latest run at it (-inf when
        every sample shows it; `now` when none does yet)."""
        samples = list(self.samples)
        changed = next((i for i in range(len(samples) - 1, -1, -1) if samples[i].online != self.current), None)
        if changed is None:
            return -math.inf
        return samples[changed + 1].ts if changed + 1 < len(samples) else self.now

    def recent(self, seconds: float) -> list[CVMSample]:
        """Samples of the last `seconds`; at least the newest one (a window shorter than a tick still sees it)."""
        window = [s for s in self.samples if s.ts > self.now - seconds]
        return window or list(self.samples[-1:])


@dataclass(frozen=True, slots=True)
class Want:
    """A policy's answer: the online vCPUs it wants (None: no data to decide on) and why."""

    desired: int | None
    reason: str


class Policy(Protocol):
    """A decision function with its own sample interval."""

    @property
    def interval(self) -> float:
        """Seconds between decisions (and between the samples they look at)."""

    @property
    def horizon(self) -> float:
        """Seconds of samples the policy looks back over."""

    @property
    def probe_horizon(self) -> float:
        """Seconds of latency probes the policy looks back over (0: it reads none; they are gathered only then)."""

    def decide(self, signals: Signals) -> Want: ...

    def describe(self) -> str: ...


def _fraction(value: float) -> str | None:
    return None if 0 < value < 1 else "must be between 0 and 1 (exclusive)"


def _percent(value: float) -> str | None:
    return None if 0 < value <= 100 else "must be in (0, 100]"


def _calibration_file(value: str) -> str | None:
    return None if value else "must name a calibration file (.json)"


def _probe_window(value: float) -> str | None:
    return None if 0 < value <= 10 else "must be in (0, 10]: the agent keeps 10 s of probes"


@dataclass(frozen=True)
class Threshold:
    """CPU bands: wake workers above `high` %, park them below `low` %, sized to bring use back to `target` %."""

    interval: float = check(positive, default=0.5)
    high: float = check(_percent, default=70.0)
    low: float = check(_percent, default=30.0)
    target: float = check(_percent, default=50.0)

    def __post_init__(self) -> None:
        if not self.low < self.target < self.high:
            raise ValueError(f"need low < target < high, got {self.low:g} / {self.target:g} / {self.high:g}")

    @property
    def horizon(self) -> float:
        return self.interval

    @property
    def probe_horizon(self) -> float:
        return 0.0

    def decide(self, signals: Signals) -> Want:
        cpus = [s.cpu for s in signals.recent(self.interval) if s.cpu is not None]
        if not cpus:
            return Want(None, "no CPU samples")
        cpu = sum(cpus) / len(cpus)
        current = signals.current
        sized = math.ceil(cpu / self.target * current - 1e-9)
        if cpu > self.high:
            return Want(max(current + 1, sized), f"CPU {cpu:.0f}% > {self.high:g}%")
        if cpu < self.low:
            return Want(min(current - 1, sized), f"CPU {cpu:.0f}% < {self.low:g}%")
        return Want(current, f"CPU {cpu:.0f}% within {self.low:g}..{self.high:g}%")

    def describe(self) -> str:
        return (
            f"CPU bands every {self.interval:g} s: up above {self.high:g}%, down below {self.low:g}%, "
            f"sized for {self.target:g}%"
        )


@dataclass(frozen=True)
class Slo:
    """Keep the p99 of the CVM's probed latency under `target_ms`."""

    interval: float = check(positive, default=0.5)
    target_ms: float = check(positive, default=50.0)
    window_s: float = check(_probe_window, default=3.0)
    down_below: float = check(_fraction, default=0.4)
    down_after_s: float = check(_probe_window, default=6.0)
    min_probes: int = check(positive, default=4)

    @property
    def horizon(self) -> float:
        return 0.0  # it reads probes, not samples

    @property
    def probe_horizon(self) -> float:
        return max(self.window_s, self.down_after_s)

    def decide(self, signals: Signals) -> Want:
        now, current = signals.now, signals.current
        recent = [p for p in signals.probes if p.ts > now - self.window_s]
        if len(recent) < self.min_probes:
            return Want(None, f"{len(recent)} latency probes in {self.window_s:g} s (need {self.min_probes})")
        since = signals.settled_since()
        recent = [p for p in recent if p.ts >= since]
        if len(recent) < self.min_probes:
            return Want(current, f"waiting for {self.min_probes} probes at {current} vCPUs")
        p99 = _p99(recent)
        if p99 > self.target_ms:
            excess = min(p99 / self.target_ms, 4.0) - 1
            return Want(current + max(1, math.ceil(current * excess)), f"p99 {_ms(p99)} > {self.target_ms:g} ms")
        calm = [p for p in signals.probes if p.ts > now - self.down_after_s and p.ts >= since]
        floor = self.down_below * self.target_ms
        settled = bool(calm) and min(p.ts for p in calm) <= now - 0.8 * self.down_after_s
        if settled and _p99(calm) < floor:
            return Want(current - 1, f"p99 {_ms(_p99(calm))} < {floor:g} ms for {self.down_after_s:g} s")
        return Want(current, f"p99 {_ms(p99)} within target {self.target_ms:g} ms")

    def describe(self) -> str:
        return (
            f"p99 latency under {self.target_ms:g} ms (over {self.window_s:g} s), "
            f"down after {self.down_after_s:g} s below {self.down_below * self.target_ms:g} ms"
        )


@dataclass(frozen=True)
class Concurrency:
    """Requests in flight or queued per online vCPU, held at `target` (Knative-like stable and panic windows)."""

    interval: float = check(positive, default=0.2)
    target: float = check(positive, default=0.7)
    stable_s: float = check(positive, default=6.0)
    panic_s: float = check(positive, default=0.6)
    panic_ratio: float = check(lambda v: None if v >= 1 else "must be >= 1", default=1.5)
    burst: float = check(non_negative, default=0.0)
    hysteresis: float = check(lambda v: None if 0 <= v < 1 else "must be in [0, 1)", default=0.2)
    lead_s: float = check(non_negative, default=0.0)

    def __post_init__(self) -> None:
        if not self.panic_s < self.stable_s:
            raise ValueError(f"need panic_s < stable_s, got {self.panic_s:g} and {self.stable_s:g}")

    @property
    def horizon(self) -> float:
        return self.stable_s

    @property
    def probe_horizon(self) -> float:
        return 0.0

    def decide(self, signals: Signals) -> Want:
        window = signals.recent(self.stable_s)
        stable = _mean_concurrency(window)
        panic = _mean_concurrency(signals.recent(self.panic_s))
        if stable is None or panic is None:
            return Want(None, "no concurrency samples")
        over = f"over {self.stable_s:g} s"
        slope = _slope(window) if self.lead_s else None
        if slope is not None:
            stable = max(0.0, stable + slope * (self.stable_s / 2 + self.lead_s))
            over = f"{over} at {slope:+.2f}/s, {self.lead_s:g} s ahead"
        want_stable, want_panic = self._size(stable), self._size(panic)
        current = signals.current
        spare = f" + {self.burst:g} spare" if self.burst and stable >= IDLE else ""
        if want_panic > max(current, want_stable) and want_panic >= self.panic_ratio * current:
            return Want(
                want_panic, f"panic: {panic:.2f} in flight over {self.panic_s:g} s{spare} / {self.target:g} per vCPU"
            )
        reason = f"{stable:.2f} in flight {over}{spare} / {self.target:g} per vCPU"
        if want_stable < current and self._need(stable) > current - 1 - self.hysteresis:
            return Want(current, f"{reason}; within {self.hysteresis:g} vCPU of {current - 1}: keep {current}")
        return Want(want_stable, reason)

    def _need(self, concurrency: float) -> float:
        """The online vCPUs `concurrency` asks for, unrounded."""
        return (concurrency + (self.burst if concurrency >= IDLE else 0.0)) / self.target

    def _size(self, concurrency: float) -> int:
        return math.ceil(self._need(concurrency) - 1e-9)

    def describe(self) -> str:
        burst = f" (+{self.burst:g} spare while serving)" if self.burst else ""
        lead = f" predicted {self.lead_s:g} s ahead along its slope," if self.lead_s else ""
        return (
            f"{self.target:g} requests in flight per vCPU{burst} over {self.stable_s:g} s,{lead} "
            f"panic up over {self.panic_s:g} s"
        )


@dataclass(frozen=True)
class Calibrated:
    """The fewest vCPUs the CVM's calibration says hold the requests in flight within the SLO, plus a margin."""

    calibration: str = check(_calibration_file)
    interval: float = check(positive, default=0.1)
    window_s: float = check(positive, default=1.0)
    margin: float = check(non_negative, default=0.15)
    hold_s: float = check(non_negative, default=3.0)
    lead_s: float = check(non_negative, default=0.0)
    slope_s: float = check(positive, default=3.0)
    # Read from the file when the policy loads: (vCPU count, the most in flight it held within the SLO), ascending
    # in both, and the calibrated CVM's max vCPUs.
    held: ClassVar[tuple[tuple[int, float], ...]]
    most: ClassVar[int]

    def __post_init__(self) -> None:
        measured = calibration.load(Path(self.calibration))
        held: list[tuple[int, float]] = []
        for n, load in enumerate(measured.capacity(), start=1):
            if load is not None and (not held or load > held[-1][1]):
                held.append((n, load))  # a count that holds no more than a smaller one is never the fewest
        if not held:
            raise ConfigError(f"{self.calibration}: cells: no cell within the SLO has a reading of requests in flight")
        object.__setattr__(self, "held", tuple(held))
        object.__setattr__(self, "most", measured.max)

    @property
    def horizon(self) -> float:
        return max(self.window_s + self.hold_s, self.slope_s if self.lead_s else 0.0)

    @property
    def probe_horizon(self) -> float:
        return 0.0

    def need(self, concurrency: float) -> tuple[int, str]:
        """(vCPUs for `concurrency` requests in flight, why): the fewest calibrated count holding it with the
        margin; max beyond the top; 1 when idle (the guard raises it to the boot vCPUs)."""
        if concurrency < IDLE:
            return 1, f"idle ({concurrency:.2f} in flight)"
        demand = concurrency * (1 + self.margin)
        for n, load in self.held:
            if load >= demand:
                return (
                    n,
                    f"{concurrency:.2f} in flight x {1 + self.margin:g}: {n} vCPUs held {load:.2f} when calibrated",
                )
        top_n, top = self.held[-1]
        return self.most, (
            f"{concurrency:.2f} in flight x {1 + self.margin:g} beyond the calibration "
            f"(at most {top:.2f}, at {top_n} vCPUs): max {self.most}"
        )

    def decide(self, signals: Signals) -> Want:
        samples = list(signals.samples)
        concurrency, ahead = self._demand(samples, signals.now)
        if concurrency is None:
            return Want(None, "no concurrency samples")
        want, why = self.need(concurrency)
        return _held(self, signals, samples, want, why + ahead)

    def _demand(self, samples: Sequence[CVMSample], t: float) -> tuple[float | None, str]:
        """The requests in flight to size for at time `t` (the mean of the `window_s` before it, or its newest
        sample, moved ahead along a rising slope), and how it was led; None without readings."""
        before = [s for s in samples if s.ts <= t]
        mean = _mean_concurrency([s for s in before if s.ts > t - self.window_s] or before[-1:])
        if mean is None or not self.lead_s:
            return mean, ""
        slope = _slope([s for s in before if s.ts > t - self.slope_s])
        if slope is None or slope <= 0:
            return mean, ""
        return mean + slope * self.lead_s, f" ({slope:+.2f}/s, {self.lead_s:g} s ahead)"

    def describe(self) -> str:
        counts = ", ".join(f"{n}: {load:.2f}" for n, load in self.held)
        lead = f", {self.lead_s:g} s ahead along the slope of {self.slope_s:g} s" if self.lead_s else ""
        return (
            f"the calibration's vCPUs for the requests in flight over {self.window_s:g} s x {1 + self.margin:g}"
            f"{lead} (held within the SLO: {counts}; max beyond), down after {self.hold_s:g} s lower"
        )


@dataclass(frozen=True)
class Rate:
    """The fewest vCPUs the CVM's calibration keeps within the SLO at its request rate: the oracle's rule."""

    calibration: str = check(_calibration_file)
    interval: float = check(positive, default=0.1)
    window_s: float = check(positive, default=4.0)
    quick_s: float = check(positive, default=0.3)
    z: float = check(positive, default=3.0)
    below: float = check(non_negative, default=1.0)
    lead_s: float = check(non_negative, default=0.5)
    slope_s: float = check(positive, default=5.0)
    hold_s: float = check(non_negative, default=0.5)
    measured: ClassVar[Measured]  # read from the file when the policy loads

    def __post_init__(self) -> None:
        if not self.quick_s < self.window_s:
            raise ValueError(f"need quick_s < window_s, got {self.quick_s:g} and {self.window_s:g}")
        object.__setattr__(self, "measured", calibration.load(Path(self.calibration)))

    @property
    def horizon(self) -> float:
        return max(self.window_s, self.slope_s) + self.hold_s

    @property
    def probe_horizon(self) -> float:
        return 0.0

    def need(self, rps: float) -> tuple[int, str]:
        """(vCPUs for `rps` requests per second, why): the calibration's need at `rps`."""
        count, beyond = self.measured.need(rps)
        if beyond:
            return count, f"{rps:.0f} req/s beyond the calibration (up to {self.measured.rates[-1]:g}): max {count}"
        return count, f"{rps:.0f} req/s: {count} vCPU{'s' if count > 1 else ''} within the SLO when calibrated"

    def decide(self, signals: Signals) -> Want:
        samples = [s for s in signals.samples if s.rps is not None]
        rps, how = self._demand(samples, signals.now)
        if rps is None:
            return Want(None, "no request-rate samples")
        want, why = self.need(rps)
        return _held(self, signals, samples, want, why + how)

    def _demand(self, samples: Sequence[CVMSample], t: float) -> tuple[float | None, str]:
        """The request rate to size for at time `t`, and how it was read; None without readings.

        Arrivals are counted, so a rate over T seconds has a standard error of sqrt(rate / T). The rate is the mean
        over the longest window (`quick_s`, doubled up to `window_s`) whose two halves agree within `z` errors: a
        steady load is read over long windows, with little noise, and one that just moved over the short ones. When
        the readings of the last `slope_s` (or of its last half, which sees a ramp begin sooner) lie on a rising line,
        the rate is moved along it from the middle of its window to
        `lead_s` after `t`; a step is no line, and is read by the windows. Otherwise it is taken `below` errors
        lower, so that a load at a calibrated rate is not sized for the next one about half of the time.
        """
        before = [(s.ts, s.rps) for s in samples if s.rps is not None and s.ts <= t]
        if not before:
            return None, ""
        rate, over = self._mean(before, t, self.quick_s)
        seconds = self.quick_s
        while seconds < self.window_s:
            seconds = min(2 * seconds, self.window_s)
            newer, older = self._mean(before, t, seconds / 2), self._mean(before, t - seconds / 2, seconds / 2)
            spread = math.sqrt(max(newer[0], older[0], 1.0) * (1 / newer[1] + 1 / older[1]))
            if abs(newer[0] - older[0]) > self.z * spread:
                break  # the load moved within this window: read it over the shorter one
            rate, over = self._mean(before, t, seconds)
        fit = next(filter(None, (self._line(before, t, span) for span in (self.slope_s, self.slope_s / 2))), None)
        if fit is None:  # no rise, or not a line (a step is read by the windows)
            return max(0.0, rate - self.below * math.sqrt(rate / over)), f" (over {over:.1f} s)"
        ahead = over / 2 + self.lead_s
        return rate + fit.slope * ahead, f" (over {over:.1f} s, {fit.slope:+.0f} req/s per s, {self.lead_s:g} s ahead)"

    def _line(self, readings: Sequence[tuple[float, float]], t: float, seconds: float) -> Fit | None:
        """The line through the readings of the `seconds` before `t` when it rises (its slope more than `z` errors
        above zero) and is one (their scatter about it no more than twice a count's); else None."""
        if not self.lead_s:
            return None
        points = [(ts, r) for ts, r in readings if ts > t - seconds]
        fit = _fit(points)
        if fit is None or fit.slope <= self.z * fit.error:
            return None
        return fit if fit.scatter <= 2 * max(sum(r for _, r in points) / len(points), 1.0) / self.interval else None

    def _mean(self, readings: Sequence[tuple[float, float]], t: float, seconds: float) -> tuple[float, float]:
        """The mean rate of the readings of the `seconds` up to `t` (at least the newest before it) and the
        seconds they cover."""
        upto = [(ts, r) for ts, r in readings if ts <= t] or readings[:1]
        window = [r for ts, r in upto if ts > t - seconds] or [upto[-1][1]]
        return sum(window) / len(window), len(window) * self.interval

    def describe(self) -> str:
        lead = f", {self.lead_s:g} s ahead along a rising line of {self.slope_s:g} s" if self.lead_s else ""
        return (
            f"the calibration's vCPUs for the request rate (over up to {self.window_s:g} s, as short as "
            f"{self.quick_s:g} s when it moved){lead} (calibrated up to {self.measured.rates[-1]:g} req/s; max "
            f"beyond), down after {self.hold_s:g} s lower"
        )


KINDS: dict[str, type[Threshold] | type[Slo] | type[Concurrency] | type[Calibrated] | type[Rate]] = {
    "threshold": Threshold,
    "slo": Slo,
    "concurrency": Concurrency,
    "calibrated": Calibrated,
    "rate": Rate,
}


class _Sizing(Protocol):
    """A policy that sizes by a calibration: the count a demand needs, and the demand it read at a time."""

    @property
    def hold_s(self) -> float: ...

    def need(self, demand: float) -> tuple[int, str]: ...

    def _demand(self, samples: Sequence[CVMSample], t: float) -> tuple[float | None, str]: ...


def _held(sizing: _Sizing, signals: Signals, samples: Sequence[CVMSample], want: int, why: str) -> Want:
    """Wake to `want` at once; park only down to the most `sizing` needed for its demand at any sample of its last
    `hold_s`, and not before `hold_s` of samples are seen."""
    current, hold_s = signals.current, sizing.hold_s
    if want >= current:
        return Want(want, why)
    if not samples or samples[0].ts > signals.now - hold_s:
        return Want(current, f"{why}; keep {current} until {hold_s:g} s of samples are seen")
    demands = (sizing._demand(samples, s.ts)[0] for s in samples if s.ts > signals.now - hold_s)
    held = max([want, *(sizing.need(d)[0] for d in demands if d is not None)])
    if held >= current:
        return Want(current, f"{why}; {held} needed within the last {hold_s:g} s: keep {current}")
    return Want(held, f"{why}; at most {held} needed for {hold_s:g} s")


def _mean_concurrency(samples: Sequence[CVMSample]) -> float | None:
    values = [s.concurrency for s in samples if s.concurrency is not None]
    return sum(values) / len(values) if values else None


def _slope(samples: Sequence[CVMSample]) -> float | None:
    """The least-squares slope of concurrency over time (per second); None with fewer than 3 readings."""
    fit = _fit([(s.ts, s.concurrency) for s in samples if s.concurrency is not None])
    return None if fit is None else fit.slope


class Fit(NamedTuple):
    """A least-squares line through (time, value) points: its slope, the slope's standard error, and the variance
    of the points about the line."""

    slope: float
    error: float
    scatter: float


def _fit(points: Sequence[tuple[float, float]]) -> Fit | None:
    """The least-squares line through (time, value) points; None with fewer than 3 points or all at one time."""
    n = len(points)
    if n < 3:
        return None
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread <= 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    scatter = sum((v - mean_v - slope * (t - mean_t)) ** 2 for t, v in points) / (n - 2)
    return Fit(slope, math.sqrt(scatter / spread), scatter)


def _p99(probes: Sequence[Probe]) -> float:
    """The 99th percentile latency (nearest rank); a failed probe counts as infinitely slow."""
    return percentile((p.ms if p.ok else math.inf for p in probes), 0.99)


def _ms(value: float) -> str:
    return "failing" if math.isinf(value) else f"{value:.0f} ms"
