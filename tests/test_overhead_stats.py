"""The security-overhead statistics on generated data: bootstrap intervals and their coverage, paired increases,
"not distinguishable", the disagreement warnings, the shuffled schedule, and the report's files."""

from __future__ import annotations

import csv
import io
import math
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from hostctl.errors import HostctlError
from hostctl.experiments import bootstrap
from hostctl.experiments.overhead_report import Report
from hostctl.experiments.overhead_runs import Choice, Measurement, Plan, parse_connections, parse_scripts
from hostctl.experiments.overhead_stats import analyse
from hostctl.experiments.security_overhead import schedule
from hostctl.load.generators import Target
from hostctl.load.wrk import SCRIPTS, WrkResult
from hostctl.wire.security import SecurityType

S = SecurityType
SVG = "{http://www.w3.org/2000/svg}"


def test_the_interval_holds_the_true_median_about_95_times_in_100() -> None:
    # the percentile bootstrap of a median of 9 covers a little under its level (about 93%); seeded, so exact
    rng = random.Random(7)
    drawn = bootstrap.draws(9, resamples=800, seed=1)
    trials, held = 250, 0
    for _ in range(trials):
        values = [rng.expovariate(1.0) for _ in range(9)]  # median ln 2
        held += bootstrap.median_interval(values, drawn).includes(math.log(2))
    assert 0.88 <= held / trials <= 0.99, held


def test_the_paired_increase_ignores_drift_that_every_type_shares() -> None:
    drift = [1.0, 3.0, 0.5, 2.0, 1.5]  # the machine's background load, round by round
    plain = [10.0 * d for d in drift]
    snp = [14.5 * d for d in drift]  # always 1.45x plain within a round
    drawn = bootstrap.draws(5, seed=0)
    increase = bootstrap.increase_interval(snp, plain, drawn)
    assert increase.low == pytest.approx(45.0) and increase.high == pytest.approx(45.0)
    alone = bootstrap.median_interval(snp, drawn)  # the latency itself does vary as much as the drift
    assert alone.high / alone.low > 2


def test_draws_are_reproducible_and_refuse_no_rounds() -> None:
    assert bootstrap.draws(5, resamples=20, seed=3) == bootstrap.draws(5, resamples=20, seed=3)
    with pytest.raises(ValueError, match="no rounds"):
        bootstrap.draws(0)


def result(p50: float, p90: float | None = None, p99: float | None = None, rps: float = 100.0) -> WrkResult:
    p90, p99 = p90 or p50 * 1.3, p99 or p50 * 1.8
    return WrkResult(requests=500, duration_s=5.0, rps=rps, percentiles={"50": p50, "90": p90, "99": p99})


def choice(security: SecurityType) -> Choice:
    return Choice(security, 2, Target("mec-1", security.value, "home-timeline", f"http://x/{security.value}"))


def measurements(
    latency: Callable[[int, SecurityType], float],
    types: tuple[SecurityType, ...] = (S.NONE, S.SEV, S.SEV_SNP),
    rounds: int = 5,
    script: str = "home-timeline",
    connections: int = 8,
) -> list[Measurement]:
    return [
        Measurement(r, 0, script, connections, choice(t), 0.0, result(latency(r, t)))
        for r in range(1, rounds + 1)
        for t in types
    ]


def noisy(seed: int, factor: dict[SecurityType, float], noise: float = 0.05) -> Callable[[int, SecurityType], float]:
    rng = random.Random(seed)
    return lambda r, t: 20.0 * factor[t] * (1 + rng.uniform(-noise, noise))


def test_a_difference_whose_interval_includes_zero_is_not_distinguishable(tmp_path: Path) -> None:
    runs = measurements(noisy(2, {S.NONE: 1.0, S.SEV: 1.0, S.SEV_SNP: 1.45}))
    plan = Plan(scripts=("home-timeline",), connections=(8,), rounds=5, seed=1)
    report = Report(plan, "this machine", 1_700_000_000.0, runs)
    [block] = report.analysis.blocks
    plain, sev, snp = block.lines
    assert plain.increase == {50: None, 90: None, 99: None} and plain.why_no_increase == "plain is the base"
    assert all(i is not None and i.includes(0) for i in sev.increase.values())
    assert all(i is not None and 25 < i.low <= i.estimate <= i.high < 65 for i in snp.increase.values())
    markdown = report.markdown()
    [sev_row] = [line for line in markdown.splitlines() if line.startswith("| home-timeline | 8 | SEV |")]
    assert sev_row.count("not distinguishable") == 3
    [snp_row] = [line for line in markdown.splitlines() if line.startswith("| home-timeline | 8 | SEV-SNP |")]
    assert "not distinguishable" not in snp_row
    assert "5 rounds; in each, every security type runs once per script and connection count" in markdown
    assert "(seed 1)" in markdown and "15 of 15 runs counted" in markdown
    assert "## Warnings" not in markdown  # 5% noise: the rounds agree
    rows = list(csv.DictReader(io.StringIO(report.csv())))
    assert {(r["security"], r["distinguishable"]) for r in rows} == {("plain", ""), ("SEV", "no"), ("SEV-SNP", "yes")}
    assert len(rows) == 9 and {r["percentile"] for r in rows} == {"50", "90", "99"}
    p50 = next(r for r in rows if r["security"] == "SEV-SNP" and r["percentile"] == "50")
    assert float(p50["low_ms"]) <= float(p50["median_ms"]) <= float(p50["high_ms"])
    assert float(p50["increase_low_pct"]) <= float(p50["increase_pct"]) <= float(p50["increase_high_pct"])


def test_rounds_that_disagree_widely_are_warned_about() -> None:
    def latency(r: int, t: SecurityType) -> float:
        if t is S.SEV_SNP:
            return 30.0 if r != 3 else 80.0  # one round far off: spread
        if t is S.SEV:
            return 24.0 if r % 2 else 16.0  # +20% in odd rounds, -20% in even ones: the sign flips
        return 20.0

    analysis = analyse(measurements(latency), [("home-timeline", 8)], resamples=500)
    [warning] = analysis.warnings
    assert warning.startswith("rounds disagree widely in home-timeline, 8 connections: ")
    assert "SEV-SNP p50 30.0-80.0 ms (2.7x)" in warning
    assert "rounds disagree on the sign: SEV p50 from -20% to +20% over plain" in warning
    calm = analyse(measurements(lambda r, t: 20.0), [("home-timeline", 8)], resamples=500)
    assert calm.warnings == []


def test_what_cannot_be_estimated_is_unknown_with_why() -> None:
    runs = measurements(lambda r, t: 20.0 if t is S.NONE else 25.0, rounds=2)
    runs[0] = Measurement(1, 0, "home-timeline", 8, choice(S.NONE), 0.0, result(20.0), excluded="vCPUs changed")
    report = Report(Plan(scripts=("home-timeline",), rounds=2, seed=0), "x", 0.0, runs)
    [block] = report.analysis.blocks
    plain, sev, _ = block.lines
    assert plain.rounds == (2,) and plain.latency[50] is None
    assert sev.increase[50] is None and sev.why_no_increase == "1 round with plain, 2 needed"
    markdown = report.markdown()
    assert "unknown (1 round: no interval)" in markdown and "unknown (1 round with plain, 2 needed)" in markdown
    assert "5 of 6 runs counted" in markdown
    no_plain = Report(report.plan, "x", 0.0, [m for m in runs if m.choice.security is not S.NONE])
    assert no_plain.analysis.blocks[0].lines[0].why_no_increase == "no plain run to compare with"


def test_the_schedule_runs_every_type_once_per_block_and_round_in_shuffled_orders() -> None:
    plan = Plan(scripts=("home-timeline", "mixed"), connections=(1, 8), rounds=6, seed=42)
    types = [choice(s) for s in (S.NONE, S.SEV, S.SEV_ES, S.SEV_SNP)]
    steps = schedule(plan, {"home-timeline": types, "mixed": types})
    assert len(steps) == 6 * 4 * 4 and steps == schedule(plan, {"home-timeline": types, "mixed": types})
    orders = set()
    for r in range(1, 7):
        mine = [s for s in steps if s.round == r]
        blocks = [(s.script, s.connections) for s in mine[::4]]
        assert sorted(blocks) == sorted(plan.blocks())
        for i in range(0, 16, 4):  # a block's types run back to back, each once
            assert {(s.script, s.connections) for s in mine[i : i + 4]} == {blocks[i // 4]}
            assert sorted(s.choice.security.value for s in mine[i : i + 4]) == sorted(t.value for t in S)
        orders.add(tuple(s.choice.security for s in mine[:4]))
    assert len(orders) > 1  # not the same order every round
    other = schedule(Plan(scripts=plan.scripts, connections=plan.connections, rounds=6, seed=43), {"mixed": types})
    assert {s.script for s in other} == {"mixed"}  # a script with no CVM is not scheduled


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Plan(rounds=1), "rounds = 1 must be a whole number from 2 to 1000"),
        (lambda: Plan(connections=(4, 4)), "connections 4,4: give each count at most once"),
        (lambda: Plan(connections=(0,)), "wrk connections = 0 must be a whole number >= 1"),
        (lambda: Plan(scripts=()), "scripts (none): name each shipped script at most once"),
        (lambda: parse_connections("1,x"), "--connections 1,x: 'x' is not a whole number"),
        (lambda: parse_scripts("mixed,../evil"), "script '../evil' is not a shipped script"),
    ],
)
def test_bad_plans_are_refused_naming_the_value(make: Callable[[], object], message: str) -> None:
    with pytest.raises(HostctlError) as caught:
        make()
    assert message in str(caught.value)


def test_plan_parsing_and_thread_count() -> None:
    assert parse_scripts("all") == SCRIPTS and parse_scripts("mixed, compose-post") == ("mixed", "compose-post")
    assert parse_connections("1,4,16,64") == (1, 4, 16, 64)
    plan = Plan(connections=(1, 64), threads=2, seed=0)
    assert plan.params("mixed", 1).threads == 1 and plan.params("mixed", 64).threads == 2  # wrk: threads <= conns


def test_the_report_saves_markdown_csvs_and_figures(tmp_path: Path) -> None:
    factor = {S.NONE: 1.0, S.SEV: 1.2, S.SEV_ES: 1.3, S.SEV_SNP: 1.45}
    runs: list[Measurement] = []
    for script in ("home-timeline", "mixed"):
        for c in (1, 4, 16):
            latency = noisy(c, {t: c * f for t, f in factor.items()})  # latency grows with the connections
            runs += measurements(latency, types=tuple(factor), script=script, connections=c)
    plan = Plan(scripts=("home-timeline", "mixed"), connections=(1, 4, 16), rounds=5, seed=9)
    report = Report(plan, "this machine", 1_700_000_000.0, runs, notes=["SEV left out: none"], resamples=500)
    paths = report.save(tmp_path / "out")
    assert [p.name.removeprefix(paths[0].stem) for p in paths] == [".md", ".csv", "-runs.csv", ".svg", "-sweep.svg"]
    assert paths[0].read_text() == report.markdown() and "## Notes\n\n- SEV left out: none" in report.markdown()
    assert len(list(csv.DictReader(io.StringIO(paths[1].read_text())))) == 2 * 3 * 4 * 3
    assert len(list(csv.DictReader(io.StringIO(paths[2].read_text())))) == len(runs)
    bars = ET.fromstring(paths[3].read_text())
    bar_rects = [r for r in bars.iter(f"{SVG}rect") if r.get("fill") in ("#7f7f7f", "#1f77b4", "#ff7f0e", "#d62728")]
    assert len(bar_rects) == 4 + 3 * 3 * 2 * 4  # the legend, then 3 percentiles x 3 counts x 2 scripts x 4 types
    labels = [t.text for t in bars.iter(f"{SVG}text")]
    assert "p99 (ms), 1 connection" in labels and "p50 (ms), 16 connections" in labels
    increases = [t for t in labels if t and re.fullmatch(r"[+-]\d+%|n\.d\.", t)]
    assert len(increases) == 3 * 3 * 2 * 3  # above every bar but plain's
    sweep = ET.fromstring(paths[4].read_text())
    assert len(list(sweep.iter(f"{SVG}polyline"))) == 5 * 2 * 4  # 5 rows x 2 scripts x 4 types
    assert "p99 increase over plain (%), mixed" in [t.text for t in sweep.iter(f"{SVG}text")]
    single = Report(Plan(scripts=("mixed",), seed=0), "x", 0.0, measurements(lambda r, t: 20.0, script="mixed"))
    assert list(single.figures()) == [".svg"]  # one connection count: no sweep
    with pytest.raises(HostctlError, match="cannot save the experiment in"):
        report.save(paths[0])  # a file, not a folder
