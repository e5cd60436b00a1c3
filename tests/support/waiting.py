"""Waiting for a condition another task or process makes true: poll it until it holds, with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `predicate` every `interval` seconds until it returns something true, and return that;
    AssertionError when it has not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s")
        await asyncio.sleep(interval)
    return value
