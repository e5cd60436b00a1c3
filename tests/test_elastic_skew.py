"""The elastic-vs-fixed experiment against an agent whose clock is far from this machine's: the run's scale events
are picked by the agent's own clock, a bounded page at a time."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from hostctl.agent.audit import AuditLog
from hostctl.demo.site import demo_site
from hostctl.experiments.elastic_oracle import Calibration, Cell
from hostctl.experiments.elastic_vs_fixed import on_site
from hostctl.load.trace import Phase, Trace
from hostctl.wire.model import Event
from tests.support.agents import AgentProcess
from tests.support.skew import skewed


class SkewedAgent(AgentProcess):
    """A demo agent whose clock is `skew` seconds off this machine's."""

    def __init__(self, runtime: Path, name: str, skew: float) -> None:
        super().__init__(runtime, name, wake_ms=10)
        self.skew = skew

    @property
    def argv(self) -> list[str]:
        return skewed(super().argv, self.runtime / "clock", self.skew)


@pytest.mark.parametrize("skew", [-3600.0, 86_400.0])
async def test_the_comparison_reads_scales_by_the_agents_clock(tmp_path: Path, skew: float) -> None:
    """An agent whose clock is an hour behind or a day ahead: its scale events are still those of the run."""
    agent = SkewedAgent(tmp_path, "mec-1", skew)
    await agent.start()
    try:
        site = demo_site({"mec-1": agent.socket})
        trace = Trace((Phase("quiet", 2, 20), Phase("step", 5, 400), Phase("quiet", 2, 20)))
        calibration = Calibration("mec-1/snp", 1, 5, 50, [Cell(20, 1, 1, 20, 0, 5, 9)])  # judged by, not measured
        comparison = await on_site(site, [trace], runs=["concurrency"], calibration=calibration, settle_s=0.5)
    finally:
        agent.stop()
    events = [json.loads(line) for line in agent.audit.read_text().splitlines()]
    assert abs(events[-1]["ts"] - time.time() - skew) < 60  # the agent's clock is off indeed
    (run,) = comparison.runs
    scales = [e for e in events if e["action"] == "scale" and e["ok"] and e["before"] != e["after"]]
    assert 0 < run.actions <= len(scales) - 1  # the policy's scales; not the one that set the start count
    assert run.online[0] == (0.0, 1) and max(n for _, n in run.online) > 1
    assert all(0 <= at <= trace.seconds for at, _ in run.online)


def test_the_audit_log_pages_forward_from_a_time_of_its_own_clock(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    try:
        for ts in range(1, 11):
            log.append(Event("h", "c", "scale", "w", ok=True, before=ts, after=ts + 1, ts=float(ts)))
            if ts == 5:
                os.write(os.open(log.path, os.O_WRONLY | os.O_APPEND), b'{"torn": \n')
        assert [e.ts for e in log.tail(3)] == [8.0, 9.0, 10.0]
        assert [e.ts for e in log.tail(3, since=4.0)] == [5.0, 6.0, 7.0]
        assert [e.ts for e in log.tail(100, since=8.5)] == [9.0, 10.0]
        assert log.tail(3, since=10.0) == []
    finally:
        log.close()
