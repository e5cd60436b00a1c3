"""A small run of the console's fleet benchmark over SSH: three hosts, each its own verified SSH connection to the
agents' process, every host fresh, the report written with the per-update costs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_the_fleet_bench_runs_the_console_over_ssh(tmp_path: Path) -> None:
    out = tmp_path / "fleet.md"
    argv = [sys.executable, "-m", "bench.console_fleet", "--hosts", "3", "--ssh", "--changing", "0.1"]
    argv += ["--window", "3", "--quiet", "2", "--profile", "0", "--presses", "0", "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = out.read_text()
    assert "one SSH connection per host" in report and "verified by the console against a known_hosts" in report
    assert "Links shown fresh, sampled at each tick: min 3, mean 3 of 3" in report
    assert "3 connection attempts for 3 links in all" in report  # each link connected at its first attempt
    decoded = re.search(r"\| decoding one host's update [^|]*\| (\d+) \|", report)
    assert decoded is not None and int(decoded.group(1)) >= 3  # every host's updates went through the typed decoder
    assert "10% of the CVMs take a random-walk step of their CPU %" in report
    # the console's CPU, measured once more with the benchmark's own hooks passing straight through
    assert re.search(r"CPU \*\*\d+ \(screen \d+ / links \d+\)%\*\* of one core with the benchmark's hooks off", report)
    assert re.search(r"\*\*3 hosts: (every target met|\d of 4 targets NOT met)\*\* — dirty-tick p99", report)
