"""Percentiles by nearest rank: the one definition every latency figure of hostctl uses.

The q-quantile (0 <= q <= 1) of n values is the value at rank ceil(q·n), 1-based, of the values in ascending
order (rank 1 for q = 0). It is always one of the values, never an interpolation between two: p50 of an even
count is the lower of the middle pair, p100 is the largest value, and p99 of fewer than 100 values is the largest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank `q`-quantile of `values` (q as a fraction: 0.99 for p99); ValueError when there are none."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q!r} is outside 0..1")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values to take a percentile of")
    rank = math.ceil(q * len(ordered) - 1e-9)  # the tolerance keeps 0.07 x 100 (7.000000000000001) at rank 7
    return ordered[max(rank, 1) - 1]
