"""Bootstrap intervals over rounds: the median of a series and the paired increase of one series over another.

A round is one unit of resampling: draws of round indices (with replacement) are made once and reused for every
series of the same rounds, so an increase compares the same rounds of both series (paired) and the intervals of a
table agree with one another. Intervals are percentile intervals of the resampled statistic; medians are the
project's nearest-rank ones (`hostctl.stats.percentile`). A seeded generator makes a report reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from hostctl.stats import percentile

RESAMPLES = 4000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate and its confidence interval [low, high]."""

    estimate: float
    low: float
    high: float

    def includes(self, value: float) -> bool:
        return self.low <= value <= self.high


def draws(rounds: int, *, resamples: int = RESAMPLES, seed: int = 0) -> list[list[int]]:
    """`resamples` lists of `rounds` round indices drawn with replacement."""
    if rounds < 1:
        raise ValueError("no rounds to resample")
    rng = random.Random(seed)
    indices = range(rounds)
    return [rng.choices(indices, k=rounds) for _ in range(resamples)]


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def median_interval(values: Sequence[float], drawn: list[list[int]], level: float = LEVEL) -> Interval:
    """The median of `values` (one per round) and its bootstrap interval over `drawn` resamples of the rounds."""
    boot = [median([values[i] for i in d]) for d in drawn]
    return _interval(median(values), boot, level)


def increase_interval(
    values: Sequence[float], base: Sequence[float], drawn: list[list[int]], level: float = LEVEL
) -> Interval:
    """Percent increase of the median of `values` over the median of `base` (the same rounds, paired), with its
    bootstrap interval: each resample takes the same rounds of both series."""

    def increase(v: Sequence[float], b: Sequence[float]) -> float:
        return (median(v) / median(b) - 1) * 100

    boot = [increase([values[i] for i in d], [base[i] for i in d]) for d in drawn]
    return _interval(increase(values, base), boot, level)


def _interval(estimate: float, boot: list[float], level: float) -> Interval:
    tail = (1 - level) / 2
    return Interval(estimate, percentile(boot, tail), percentile(boot, 1 - tail))
