"""The elastic-vs-fixed experiment's parts: traces, open-loop replay against a real demo service, the figures
of a run (SLO windows, worker-vCPU-seconds, reaction) on hand-made runs, and the plot."""

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
from hostctl.experiments.elastic_plot import timeline_svg
from hostctl.experiments.elastic_vs_fixed import Comparison, Run, on_site
from hostctl.load.trace import Phase, Request, Trace, bursty, replay
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


def run(online: list[tuple[float, int]], requests: list[Request], name: str = "r") -> Run:
    trace = Trace((Phase("quiet", 10, 50), Phase("step", 10, 400), Phase("quiet", 10, 50)))
    return Run(name, trace, boot=1, max=9, slo_ms=50, requests=requests, online=online, actions=len(online) - 1)


def test_windows_worker_seconds_and_reaction_of_a_hand_made_run() -> None:
    requests = [Request(t / 10, 10.0, True) for t in range(300)]
    requests[150:152] = [Request(15.0, 900.0, True), Request(15.1, 800.0, True)]  # 2 slow of 100: p99 800 ms
    r = run([(0.0, 1), (10.4, 3), (10.9, 5), (25.0, 2)], requests)
    assert [(start, ok) for start, _, ok in r.windows()] == [(0.0, True), (10.0, False), (20.0, True)]
    assert r.within_slo == pytest.approx(2 / 3)
    # workers beyond the boot vCPU: 0 until 10.4, 2 until 10.9, 4 until 25, then 1 until 30
    assert r.worker_seconds == pytest.approx(0.5 * 2 + 14.1 * 4 + 5 * 1)
    # 400 req/s x 10 ms / 0.8 -> 5 vCPUs are enough, reached 0.9 s after the step
    ((start, rate, reaction),) = r.reactions(service_ms=10.0)
    assert (start, rate) == (10.0, 400) and reaction == pytest.approx(0.9)
    assert run([(0.0, 1)], requests).reactions(10.0)[0][2] is None  # never
    assert run([(0.0, 9)], requests).reactions(10.0)[0][2] == 0.0  # already enough
    assert r.percentile(50) == 10.0 and r.percentile(100) == 900.0 and r.windows()[1][1] == 800.0
    failed = run([(0.0, 1)], [Request(1.0, 5.0, False), *requests[11:]])
    assert not failed.windows()[0][2]  # a failure breaks its window's SLO whatever the p99


def test_the_table_and_the_plot(tmp_path: Path) -> None:
    requests = [Request(t / 10, 10.0 + t % 7, True) for t in range(300)]
    comparison = Comparison(
        "h/svc",
        "http://x/e",
        runs=[run([(0.0, 9)], requests, "fixed-max"), run([(0.0, 1), (10.5, 6), (22.0, 1)], requests, "p")],
    )
    table = elastic_report.markdown(comparison).splitlines()
    assert table[0].startswith("| run | p50 ms | p99 ms | 10 s windows within SLO | worker-vCPU-s | vs fixed-max")
    assert table[2].startswith("| fixed-max |") and "| 100% |" in table[2]
    assert table[3].startswith("| p |") and "| 2 |" in table[3]
    (verdict,) = elastic_report.verdicts(comparison)
    assert verdict == (
        "p: misses the targets (SLO windows 100% ≥ 99%; worker-vCPU-s 24% of fixed-max ≤ 60%; "
        "slowest reaction never > 1 s)"
    )  # 6 vCPUs, where 400 req/s x 13 ms / 0.8 needs 7
    md, svg = elastic_report.save(comparison, tmp_path, "x")
    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg") and len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 5
    assert "![timeline](x.svg)" in md.read_text()
    assert math.isclose(comparison.runs[1].worker_seconds, 11.5 * 5)
    assert "fixed-max" in timeline_svg(comparison.runs)


async def test_the_comparison_on_a_real_demo_agent(tmp_path: Path) -> None:
    """fixed-min and the concurrency policy on a real agent process through the site's link, with a short trace."""
    agent = AgentProcess(tmp_path, "mec-1", wake_ms=10)
    await agent.start()
    try:
        site = demo_site({"mec-1": agent.socket})
        trace = Trace((Phase("quiet", 3, 20), Phase("step", 6, 400), Phase("quiet", 3, 20)))
        comparison = await on_site(site, trace, runs=["fixed-min", "concurrency"], settle_s=0.5)
    finally:
        agent.stop()
    fixed, elastic = comparison.runs
    assert comparison.target == "mec-1/snp" and (fixed.name, elastic.name) == ("fixed-min", "concurrency")
    assert fixed.online == [(0.0, 1)] and fixed.worker_seconds == 0 and fixed.actions == 0
    assert elastic.actions > 0 and max(n for _, n in elastic.online) > 1 and elastic.worker_seconds > 0
    assert elastic.online[0] == (0.0, 1) and all(0 <= at <= trace.seconds for at, _ in elastic.online)
    assert len(elastic.requests) > 1000 and len(fixed.requests) > 1000  # ~2500 sent at the trace's rate
    assert [v.split(":")[0] for v in elastic_report.verdicts(comparison)] == ["concurrency"]
    events = [json.loads(line) for line in agent.audit.read_text().splitlines()]
    switches = [e["why"] for e in events if e["action"] == "policy"]
    assert switches[-2:] == ["on (concurrency on)", "off (concurrency off)"]  # left off after its run
