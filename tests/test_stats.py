"""The one percentile definition: nearest rank."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostctl.stats import percentile


def test_nearest_rank_on_a_hundred_values() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # any order
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0 and percentile(values, 1.0) == 100.0
    assert percentile(values, 0.07) == 7.0  # 0.07 x 100 is 7.000000000000001 in floating point: still rank 7


def test_edges() -> None:
    assert percentile([3.0], 0.5) == percentile([3.0], 0.99) == percentile([3.0], 1.0) == 3.0
    assert percentile([1.0, 2.0], 0.5) == 1.0  # the lower of the middle pair: a value, never an interpolation
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0 and percentile([1.0, 2.0], 0.0) == 1.0
    assert percentile([1.0, math.inf], 0.99) == math.inf  # a failed probe counts as infinitely slow
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 99)


@given(st.lists(st.floats(allow_nan=False), min_size=1), st.floats(0, 1))
def test_at_least_q_of_the_values_are_at_or_below_it(values: list[float], q: float) -> None:
    p = percentile(values, q)
    assert p in values
    assert sum(v <= p for v in values) >= q * len(values) - 1e-6
    assert sum(v < p for v in values) < max(q * len(values), 1)
