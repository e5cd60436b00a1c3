"""The `calibrated` policy: sizing from a calibration file (between calibrated counts round up, beyond the top max),
waking at once and parking only after the hold, its look-ahead, and bad calibration files refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hostctl.calibration import Calibration, Cell
from hostctl.demo.site import demo_site
from hostctl.elastic.policies import Calibrated, CVMSample, Signals
from hostctl.elastic.runner import load_policies
from hostctl.errors import ConfigError
from hostctl.experiments.elastic_vs_fixed import on_site
from hostctl.load.trace import Phase, Trace
from tests.support import ROOT
from tests.support.agents import AgentProcess


def cell(rps: float, vcpus: int, p99: float, concurrency: float | None) -> Cell:
    return Cell(rps, vcpus, 5.0, int(rps * 5), 0, p99 / 2, p99, concurrency)


# Counts 1-3 and 5 hold 0.5 / 1.0 / 2.5 / 4.0 in flight within the SLO; 4 holds less than 3 (noise: never the
# fewest); a cell over the SLO holds nothing; counts 6-8 were never measured.
CALIBRATION = Calibration(
    "h/svc",
    boot=1,
    max=8,
    slo_ms=50,
    cells=[
        cell(60, 1, 30, 0.5),
        cell(120, 1, 200, 6.0),
        cell(120, 2, 30, 1.0),
        cell(240, 3, 40, 2.5),
        cell(300, 4, 45, 2.2),
        cell(360, 5, 45, 4.0),
    ],
)


def policy(tmp_path: Path, **settings: float) -> Calibrated:
    path = tmp_path / "cal.json"
    path.write_text(CALIBRATION.to_json())
    return Calibrated(str(path), **settings)


def flat(*values: float, online: int, step: float = 0.1) -> list[CVMSample]:
    return [CVMSample(round(i * step, 3), online, concurrency=v) for i, v in enumerate(values, start=1)]


def test_the_need_rounds_up_to_the_next_calibrated_count_and_is_max_beyond(tmp_path: Path) -> None:
    p = policy(tmp_path, margin=0.0)
    needs = {c: p.need(c)[0] for c in (0.01, 0.3, 0.5, 0.6, 1.0, 1.1, 2.5, 2.6, 4.0)}
    assert needs == {0.01: 1, 0.3: 1, 0.5: 1, 0.6: 2, 1.0: 2, 1.1: 3, 2.5: 3, 2.6: 5, 4.0: 5}  # 4 is skipped
    count, why = p.need(4.1)
    assert count == 8 and "beyond the calibration (at most 4.00, at 5 vCPUs): max 8" in why
    assert "idle" in p.need(0.01)[1]
    assert policy(tmp_path, margin=0.2).need(0.45)[0] == 2  # 0.45 x 1.2 = 0.54 > 0.5
    assert "1: 0.50, 2: 1.00, 3: 2.50, 5: 4.00; max beyond" in p.describe()


def test_it_wakes_at_once_and_parks_only_after_the_hold(tmp_path: Path) -> None:
    p = policy(tmp_path, margin=0.0, window_s=0.5, hold_s=2.0)
    samples = flat(*[0.4] * 30, *[2.0] * 5, online=1)  # 3 s at 1 vCPU's load, then 0.5 s at 3's
    up = p.decide(Signals(now=3.5, current=1, samples=samples))
    assert up.desired == 3 and "2.00 in flight x 1: 3 vCPUs held 2.50" in up.reason
    busy = flat(*[2.0] * 30, online=3)
    samples = busy + [CVMSample(round(3.0 + i / 10, 3), 3, concurrency=0.8) for i in range(1, 16)]  # 1.5 s lower
    keep = p.decide(Signals(now=4.5, current=3, samples=samples))
    assert keep.desired == 3 and "3 needed within the last 2 s: keep 3" in keep.reason
    samples += [CVMSample(round(4.5 + i / 10, 3), 3, concurrency=0.8) for i in range(1, 16)]  # 3 s lower
    down = p.decide(Signals(now=6.0, current=3, samples=samples))
    assert down.desired == 2 and "at most 2 needed for 2 s" in down.reason
    young = p.decide(Signals(now=1.0, current=3, samples=flat(*[0.1] * 10, online=3)))
    assert young.desired == 3 and "until 2 s of samples are seen" in young.reason
    assert p.decide(Signals(now=1.0, current=2, samples=[CVMSample(1.0, 2)])).desired is None


def test_the_lead_meets_a_rise_and_never_parks_early(tmp_path: Path) -> None:
    p = policy(tmp_path, margin=0.0, window_s=0.5, lead_s=2.0, slope_s=3.0, hold_s=0.0)
    rising = flat(*[0.2 + i * 0.1 for i in range(30)], online=3)  # +1/s: 2.9 now, 2.7 over the window
    want = p.decide(Signals(now=3.0, current=3, samples=rising))
    assert want.desired == 8 and "+1.00/s, 2 s ahead" in want.reason  # 2.7 + 2 beyond the top
    assert policy(tmp_path, margin=0.0, window_s=0.5).decide(Signals(now=3.0, current=3, samples=rising)).desired == 5
    falling = flat(*[5.0 - i * 0.1 for i in range(30)], online=3)  # -1/s: 2.3 over the window, 0.3 if led
    assert p.decide(Signals(now=3.0, current=3, samples=falling)).desired == 3
    held = policy(tmp_path, margin=0.0, window_s=0.5, lead_s=2.0, hold_s=2.0)
    dropped = rising + [CVMSample(round(3.0 + i / 10, 3), 8, concurrency=0.3) for i in range(1, 6)]  # 0.5 s low
    keep = held.decide(Signals(now=3.5, current=8, samples=dropped))
    assert keep.desired == 8 and "8 needed within the last 2 s" in keep.reason  # a led rise is held like any other


def write_policy(directory: Path, calibration: str | None) -> None:
    line = "" if calibration is None else f'calibration = "{calibration}"\n'
    (directory / "cal.toml").write_text(f'kind = "calibrated"\n{line}')


def test_a_policy_file_names_its_calibration_relative_to_itself(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "svc.json").write_text(CALIBRATION.to_json())
    write_policy(tmp_path, "data/svc.json")
    spec = load_policies(tmp_path)["cal"]
    assert isinstance(spec.policy, Calibrated) and spec.policy.held[-1] == (5, 4.0) and spec.kind == "calibrated"


def no_readings() -> str:
    data = json.loads(CALIBRATION.to_json())
    for c in data["cells"]:
        c.pop("concurrency", None)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("calibration", "text", "message"),
    [
        (None, None, "cal.toml: calibration: required key is missing"),
        ("", None, "cal.toml: calibration: '' must name a calibration file"),
        ("gone.json", None, "gone.json: no such file"),
        ("c.json", "{", "c.json: not JSON"),
        ("c.json", '{"target": "h/svc", "boot": 1, "max": 8, "cells": []}', "c.json: slo_ms: required key is missing"),
        (
            "c.json",
            '{"target": "h", "boot": 1, "max": 8, "slo_ms": 50, "cells": [{"rps": -1}]}',
            "c.json: cells[0].rps",
        ),
        ("c.json", no_readings(), "c.json: cells: no cell within the SLO has a reading of requests in flight"),
    ],
)
def test_a_bad_calibration_is_one_line_naming_file_and_field(
    tmp_path: Path, calibration: str | None, text: str | None, message: str
) -> None:
    if text is not None:
        (tmp_path / "c.json").write_text(text)
    write_policy(tmp_path, calibration)
    with pytest.raises(ConfigError) as error:
        load_policies(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_agent_with_a_bad_calibration_exits_2_with_one_line(tmp_path: Path) -> None:
    write_policy(tmp_path, "gone.json")
    argv = [sys.executable, "-m", "hostctl", "demo", "serve-host", "h", "--policies", str(tmp_path)]
    done = subprocess.run(
        argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().endswith(f"{tmp_path}/gone.json: no such file") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_the_shipped_policy_in_the_experiment_on_a_real_demo_agent(tmp_path: Path) -> None:
    """The shipped `calibrated` policy (its calibration file beside it) in a real agent process, judged against a
    hand-made calibration of the test CVM: it wakes workers for a step of load, each scale with its sizing reason."""
    agent = AgentProcess(tmp_path, "mec-1", wake_ms=10)
    await agent.start()
    try:
        site = demo_site({"mec-1": agent.socket})
        trace = Trace((Phase("quiet", 2, 20), Phase("step", 4, 400), Phase("quiet", 2, 20)), "short")
        judged = Calibration("mec-1/snp", 1, 5, 50, [cell(20, 1, 20, 0.1), cell(400, 3, 40, 2.0)])
        comparison = await on_site(site, [trace], runs=["calibrated"], calibration=judged, settle_s=0.5)
    finally:
        agent.stop()
    (run,) = comparison.runs
    assert run.name == "calibrated" and run.online[0] == (0.0, 1) and max(n for _, n in run.online) > 1
    assert run.actions > 0 and len(run.requests) > 1000 and run.worker_seconds > 0
    assert "the calibration's vCPUs for the requests in flight" in " ".join(comparison.notes)
    events = [json.loads(line) for line in agent.audit.read_text().splitlines()]
    ups = [e for e in events if e["who"] == "policy:calibrated" and e["action"] == "scale" and e["after"] > e["before"]]
    assert ups and all("in flight x 1.15" in e["why"] for e in ups)
    assert all("vCPUs held" in e["why"] or "beyond the calibration" in e["why"] for e in ups)
