"""The elastic-vs-fixed experiment's parts: traces, open-loop replay against a real demo service, the figures
of a run (SLO windows, worker-vCPU-seconds, reaction to the oracle's rises) on hand-made runs, the report and its
plots, and the whole experiment (calibration included) on a real demo agent."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hostctl.demo.services import CVMService, Endpoint
from hostctl.demo.site import demo_site
from hostctl.experiments import elastic_report
from hostctl.experiments.elastic_oracle import Calibration, Cell, Oracle
from hostctl.experiments.elastic_plot import timeline_svg
from hostctl.experiments.elastic_vs_fixed import Comparison, Run, on_site
from hostctl.load.trace import Phase, Request, Trace, bursty, diurnal, replay
from tests.support.agents import AgentProcess


def test_trace_rates_steps_and_scaling() -> None:
    trace = Trace(
        (
            Phase("quiet", 10, 50),
            Phase("step", 10, 300),
            Phase("ramp", 10, 50, until_rps=150),
            Phase("day", 20, 50, peak_rps=250),
        )
    )
    assert trace.seconds == 50
    assert (trace.rate(5), trace.rate(15), trace.rate(25), trace.rate(40), trace.rate(60)) == (50, 300, 100, 250, 0)
    assert trace.steps() == [(10.0, 300)]  # the ramp and the day rise smoothly: no step
    assert trace.scaled(0.5).rate(15) == 150 and trace.scaled(0.5).rate(40) == 125
    assert [start for start, _ in bursty().steps()] == [15.0, 45.0] and bursty().seconds == 150
    day = diurnal()
    assert (day.name, day.seconds, day.steps(), day.rate(5), day.rate(75)) == ("diurnal", 150, [], 60, 420)
    short = bursty().lasting(50)
    assert short.seconds == pytest.approx(50) and short.name == "bursty" and short.rate(5) == 300  # the step at 5 s
    assert trace.peak(8, 12) == 300 and trace.peak(0, 1) == 50


@pytest.fixture
async def service() -> AsyncIterator[CVMService]:
    svc = CVMService("svc", overhead=1.0, slots=2, endpoints=(Endpoint("e", "/e", 2.0),), jitter=0.0)
    await svc.start()
    yield svc
    await svc.stop()


async def test_replay_is_open_loop_at_the_trace_rate(service: CVMService) -> None:
    trace = Trace((Phase("a", 2, 100),))
    requests = await replay(trace, service.urls()["e"])
    assert 120 <= len(requests) <= 280  # Poisson around 200
    assert all(r.ok and r.ms >= 2.0 for r in requests) and all(0 <= r.at < 2 for r in requests)
    assert service.stats()["e"]["requests"] == len(requests)


async def test_replay_counts_failures_with_their_time() -> None:
    requests = await replay(Trace((Phase("a", 0.5, 40),)), "http://127.0.0.1:9/nothing", timeout_s=0.5)
    assert requests and not any(r.ok for r in requests)


TRACE = Trace((Phase("quiet", 10, 50), Phase("step", 10, 400), Phase("quiet", 10, 50)), "t")
# 50 req/s: 1 vCPU; 400 req/s: 5 vCPUs
CALIBRATION = Calibration("h/svc", 1, 9, 50, [Cell(50, 1, 5, 250, 0, 8, 20), Cell(400, 5, 5, 2000, 0, 9, 30)])


def run(online: list[tuple[float, int]], requests: list[Request], name: str = "r", repeat: int = 1) -> Run:
    return Run(name, TRACE, 1, 9, 50, requests, online, len(online) - 1, repeat)


def test_windows_worker_seconds_and_reaction_of_a_hand_made_run() -> None:
    requests = [Request(t / 10, 10.0, True) for t in range(300)]
    requests[150:152] = [Request(15.0, 900.0, True), Request(15.1, 800.0, True)]  # 2 slow of 100: p99 800 ms
    r = run([(0.0, 1), (10.4, 3), (10.9, 5), (25.0, 2)], requests)
    assert [(start, ok) for start, _, ok in r.windows()] == [(0.0, True), (10.0, False), (20.0, True)]
    assert r.within_slo == pytest.approx(2 / 3)
    # workers beyond the boot vCPU: 0 until 10.4, 2 until 10.9, 4 until 25, then 1 until 30
    assert r.worker_seconds == pytest.approx(0.5 * 2 + 14.1 * 4 + 5 * 1)
    oracle = Oracle(TRACE, CALIBRATION)
    assert oracle.need == (1,) * 10 + (5,) * 10 + (1,) * 10 and oracle.worker_seconds == 40
    # the oracle needs 5 vCPUs from 10 s to 20 s: reached 0.9 s after
    ((start, need, reaction),) = r.reactions(oracle)
    assert (start, need) == (10.0, 5) and reaction == pytest.approx(0.9) and r.slowest_reaction(oracle) == reaction
    assert run([(0.0, 1)], requests).reactions(oracle)[0][2] is None  # never
    assert run([(0.0, 1), (21.0, 5)], requests).slowest_reaction(oracle) == math.inf  # too late: the need is gone
    assert run([(0.0, 9)], requests).reactions(oracle)[0][2] == 0.0  # already enough
    assert r.percentile(50) == 10.0 and r.percentile(100) == 900.0 and r.windows()[1][1] == 800.0
    failed = run([(0.0, 1)], [Request(1.0, 5.0, False), *requests[11:]])
    assert not failed.windows()[0][2]  # a failure breaks its window's SLO whatever the p99


def test_the_tables_the_targets_and_the_plots(tmp_path: Path) -> None:
    requests = [Request(t / 10, 10.0 + t % 7, True) for t in range(300)]
    comparison = Comparison(
        "h/svc",
        "http://x/e",
        CALIBRATION,
        runs=[
            run([(0.0, 9)], requests, "fixed-max"),
            run([(0.0, 1), (10.3, 5), (20.5, 1)], requests, "p"),
            run([(0.0, 1), (10.2, 5), (21.0, 1)], requests, "p", repeat=2),
            run([(0.0, 1), (10.6, 6), (22.0, 1)], requests, "q"),
        ],
    )
    table = elastic_report.markdown(comparison).splitlines()
    assert table[0] == "### t" and table[2].startswith("| run | repeats | p99 ms | 10 s windows within SLO |")
    assert table[4] == "| oracle | - | - | - | 40 | 1.00× | 17% | - | 0 | - |"  # 40 of 8 workers x 30 s
    assert table[5].startswith("| fixed-max | 1 |") and "| 3/3 | 240 | 6.00× | 100% |" in table[5]
    # p: 40.8 and 43.2 worker-s over two repeats, reactions 0.3 and 0.2 s
    assert "| p | 2 |" in table[6] and "| 3/3, 3/3 | 42 (41-43) | 1.05× (1.02×-1.08×) | 18% (17%-18%) |" in table[6]
    assert table[6].endswith("| 2 (2-2) | 0.25 (0.20-0.30) | 0 |")
    best, other = elastic_report.verdicts(comparison)
    assert best.line() == (
        "`p` meets every target: t: worker-vCPU-s 1.05× the oracle's (≤ 1.3×) (met); t: windows within the SLO "
        "≥ 100% in every repeat (≥ 99%) (met); t: slowest reaction 0.30 s (≤ 0.5 s) (met)"
    )
    assert other.policy == "q" and other.met == 1 and "q` misses 2 of 3 targets" in other.line()  # 1.43×, 0.6 s
    md = elastic_report.save(comparison, tmp_path, "x")
    text = md.read_text()
    assert "![t: repeat 1](x-t.svg)" in text and "| 50 | 1 | 1: 20 |" in text and "## Targets" in text
    root = ET.fromstring((tmp_path / "x-t.svg").read_text())
    lines = root.findall(".//{http://www.w3.org/2000/svg}polyline")
    assert root.tag.endswith("svg") and len(lines) == 1 + 3 + 1 + 3  # load, vCPUs of repeat 1's runs, oracle, p99
    assert "oracle" in timeline_svg(comparison.runs[:2], Oracle(TRACE, CALIBRATION))


async def test_the_comparison_on_a_real_demo_agent(tmp_path: Path) -> None:
    """fixed-min, the oracle replayed and the concurrency policy on a real agent process through the site's link,
    with a short trace."""
    agent = AgentProcess(tmp_path, "mec-1", wake_ms=10)
    await agent.start()
    try:
        site = demo_site({"mec-1": agent.socket})
        trace = Trace((Phase("quiet", 3, 20), Phase("step", 6, 400), Phase("quiet", 3, 20)), "short")
        comparison = await on_site(
            site,
            [trace],
            runs=["fixed-min", "oracle-replay", "concurrency"],
            rates=[20, 400],
            cell_s=0.5,
            min_requests=20,
            settle_s=0.5,
        )
    finally:
        agent.stop()
    fixed, replayed, elastic = comparison.runs
    assert comparison.target == "mec-1/snp" and (fixed.name, elastic.name) == ("fixed-min", "concurrency")
    calibration = comparison.calibration
    assert (calibration.target, calibration.boot, calibration.max, calibration.rates) == ("mec-1/snp", 1, 5, [20, 400])
    assert all(c.requests > 0 for c in calibration.cells) and calibration.cells[0].vcpus == 1
    # a cell lasts cell_s, or as long as min_requests take at its rate
    assert {c.rps: c.seconds for c in calibration.cells} == {20: 1.0, 400: 0.5}
    at_400 = [c.vcpus for c in calibration.cells if c.rps == 400]
    assert at_400 == sorted(at_400) and at_400[0] == calibration.fewest(20)  # walked up from 20 req/s's need
    assert fixed.online == [(0.0, 1)] and fixed.worker_seconds == 0 and fixed.actions == 0
    assert elastic.actions > 0 and max(n for _, n in elastic.online) > 1 and elastic.worker_seconds > 0
    assert elastic.online[0] == (0.0, 1) and all(0 <= at <= trace.seconds for at, _ in elastic.online)
    assert len(elastic.requests) > 1000 and len(fixed.requests) > 1000  # ~2500 sent at the trace's rate
    assert [v.policy for v in elastic_report.verdicts(comparison)] == ["concurrency"]  # baselines are not judged
    # the replay follows the oracle's need, each change made at the start of its second (plus the driver's delay)
    need = comparison.oracle(trace).need
    assert need[0] == 1 and need[3] > 1 and replayed.online[0] == (0.0, 1)
    changes = [(float(t), n) for t, n in enumerate(need) if t > 0 and n != need[t - 1]]
    assert [n for _, n in replayed.online[1:]] == [n for _, n in changes]
    assert all(t <= at < t + 0.5 for (at, _), (t, _) in zip(replayed.online[1:], changes, strict=True))
    assert replayed.worker_seconds == pytest.approx(comparison.oracle(trace).worker_seconds, abs=1.0)
    assert comparison.oracle(trace).worker_seconds >= 0 and elastic.repeat == fixed.repeat == 1
    events = [json.loads(line) for line in agent.audit.read_text().splitlines()]
    switches = [e["why"] for e in events if e["action"] == "policy"]
    assert switches[-2:] == ["on (concurrency on)", "off (concurrency off)"]  # left off after its run
