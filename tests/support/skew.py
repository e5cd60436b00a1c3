"""Processes whose wall clock is off by a fixed amount, the way a host with a skewed clock stamps its events: a
`sitecustomize` shifts `time.time` and `time.time_ns` before anything else is imported."""

from __future__ import annotations

import os
from pathlib import Path

SKEW_VARIABLE = "SKEWED_CLOCK_SECONDS"
SITECUSTOMIZE = f"""
import os
import time

_skew = float(os.environ["{SKEW_VARIABLE}"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _skew
time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
"""


def skewed(argv: list[str], folder: Path, seconds: float) -> list[str]:
    """`argv` (a Python command) run with its wall clock `seconds` ahead (behind when negative) of this machine's."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return ["env", f"PYTHONPATH={path}", f"{SKEW_VARIABLE}={seconds}", *argv]
