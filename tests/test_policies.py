"""Each policy's decisions on hand-made traces, and the policy files' checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hostctl.elastic.policies import Concurrency, CVMSample, Probe, Signals, Slo, Threshold
from hostctl.elastic.runner import DEFAULT_POLICIES, load_policies
from hostctl.errors import ConfigError


def cpu_trace(*cpus: float, online: int = 2, step: float = 0.5) -> list[CVMSample]:
    return [CVMSample(ts=i * step, online=online, cpu=c) for i, c in enumerate(cpus, start=1)]


def concurrency_trace(*values: float | None, step: float = 0.2) -> list[CVMSample]:
    return [CVMSample(ts=round(i * step, 3), online=2, cpu=50.0, concurrency=v) for i, v in enumerate(values, start=1)]


# -- threshold ---------------------------------------------------------------------------------------


def test_threshold_wakes_enough_workers_to_bring_cpu_back_to_target() -> None:
    policy = Threshold(interval=0.5, high=70, low=30, target=50)
    samples = cpu_trace(40, 45, 100)
    want = policy.decide(Signals(now=1.5, current=2, samples=samples))
    assert want.desired == 4 and "CPU 100% > 70%" in want.reason  # 2 busy vCPUs / 50% = 4


def test_threshold_adds_at_least_one_just_above_the_band() -> None:
    want = Threshold().decide(Signals(now=0.5, current=3, samples=cpu_trace(72, online=3)))
    assert want.desired == 5  # ceil(3 * 72 / 50) = 5


def test_threshold_averages_only_its_own_interval() -> None:
    policy = Threshold(interval=1.0)
    samples = cpu_trace(100, 100, 100, 20, 20)  # the spike is older than the interval
    assert policy.decide(Signals(now=2.5, current=4, samples=samples)).desired == 2


def test_threshold_parks_below_the_low_band_and_holds_inside() -> None:
    policy = Threshold()
    assert policy.decide(Signals(now=0.5, current=4, samples=cpu_trace(10, online=4))).desired == 1
    assert policy.decide(Signals(now=0.5, current=4, samples=cpu_trace(29, online=4))).desired == 3
    inside = policy.decide(Signals(now=0.5, current=4, samples=cpu_trace(50, online=4)))
    assert inside.desired == 4 and "within 30..70%" in inside.reason


def test_threshold_without_cpu_samples_has_no_answer() -> None:
    want = Threshold().decide(Signals(now=1.0, current=2, samples=[CVMSample(0.9, 2, cpu=None)]))
    assert want.desired is None and want.reason == "no CPU samples"
    assert Threshold().decide(Signals(now=1.0, current=2)).desired is None


def test_threshold_bands_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="low < target < high"):
        Threshold(high=40, low=30, target=50)


# -- slo ---------------------------------------------------------------------------------------------


def probes(*ms: float, start: float = 0.0, step: float = 0.5, ok: bool = True) -> list[Probe]:
    return [Probe(ts=start + i * step, ms=m, ok=ok) for i, m in enumerate(ms)]


def test_slo_adds_workers_in_proportion_to_the_excess() -> None:
    policy = Slo(target_ms=50, window_s=3)
    trace = probes(10, 12, 11, 120, 90, 110)  # p99 of the window = 120 ms: 2.4x the target
    want = policy.decide(Signals(now=3.0, current=2, probes=trace))
    assert want.desired == 5 and "p99 120 ms > 50 ms" in want.reason  # 2 + ceil(2 * 1.4)


def test_slo_excess_is_capped_and_failures_count_as_breaches() -> None:
    policy = Slo(target_ms=50, window_s=3)
    trace = [*probes(10, 12, 11, 5, 5), Probe(2.6, 2000.0, ok=False)]
    want = policy.decide(Signals(now=3.0, current=2, probes=trace))
    assert want.desired == 2 + 6 and "failing" in want.reason  # excess capped at 4x: 2 + ceil(2 * 3)


def test_slo_parks_only_after_a_calm_while() -> None:
    policy = Slo(target_ms=50, window_s=3, down_below=0.4, down_after_s=6)
    calm = probes(*[8.0] * 13, step=0.5)  # 0..6 s, all under 20 ms
    assert policy.decide(Signals(now=6.2, current=4, probes=calm)).desired == 3
    short = probes(*[8.0] * 6, start=3.5)  # calm for 2.5 s only
    assert policy.decide(Signals(now=6.2, current=4, probes=short)).desired == 4
    earlier_spike = probes(30, start=1.0) + probes(*[8.0] * 9, start=2.0)  # 30 ms > 20 ms within 6 s
    held = policy.decide(Signals(now=6.2, current=4, probes=earlier_spike))
    assert held.desired == 4 and "within target" in held.reason


def test_slo_judges_only_probes_since_the_current_count_took_effect() -> None:
    policy = Slo(target_ms=50, window_s=3, min_probes=4)
    samples = [CVMSample(ts=t / 2, online=2 if t < 4 else 4) for t in range(1, 7)]  # 2 vCPUs, then 4 from 2.0 s
    slow_then_fast = probes(200, 200, 200, start=0.5) + probes(9, 9, 9, 9, start=2.0, step=0.25)
    want = policy.decide(Signals(now=3.0, current=4, samples=samples, probes=slow_then_fast))
    assert want.desired == 4 and "within target" in want.reason  # the slow probes were at 2 vCPUs
    early = policy.decide(
        Signals(now=2.4, current=4, samples=[*samples[:4], CVMSample(2.0, 4)], probes=slow_then_fast[:5])
    )
    assert early.desired == 4 and early.reason == "waiting for 4 probes at 4 vCPUs"
    just_scaled = Signals(now=3.0, current=5, samples=samples)  # no sample at 5 vCPUs yet
    assert just_scaled.settled_since() == 3.0 and Signals(now=3.0, current=4).settled_since() == -math.inf


def test_slo_without_enough_probes_has_no_answer() -> None:
    want = Slo(min_probes=4, window_s=3).decide(Signals(now=10.0, current=2, probes=probes(500, 500, start=8)))
    assert want.desired is None and "2 latency probes in 3 s (need 4)" in want.reason


# -- concurrency -------------------------------------------------------------------------------------


def test_concurrency_sizes_for_the_target_per_vcpu_over_the_stable_window() -> None:
    policy = Concurrency(target=0.7, stable_s=6, panic_s=0.6)
    samples = concurrency_trace(*[2.1] * 30)  # 6 s of 2.1 in flight
    want = policy.decide(Signals(now=6.0, current=2, samples=samples))
    assert want.desired == 3 and "2.10 in flight over 6 s" in want.reason


def test_concurrency_panics_up_on_a_burst_the_stable_window_has_not_seen() -> None:
    policy = Concurrency(target=0.7, stable_s=6, panic_s=0.6, panic_ratio=1.5)
    samples = concurrency_trace(*[0.5] * 27, 6.0, 6.0, 6.0)  # a burst in the last 0.6 s
    want = policy.decide(Signals(now=6.0, current=2, samples=samples))
    assert want.desired == 9 and want.reason.startswith("panic")


def test_concurrency_panic_window_never_scales_down() -> None:
    policy = Concurrency(target=0.7, stable_s=6, panic_s=0.6)
    samples = concurrency_trace(*[3.5] * 27, 0.0, 0.0, 0.0)  # the burst just ended
    want = policy.decide(Signals(now=6.0, current=5, samples=samples))
    assert want.desired == 5 and not want.reason.startswith("panic")  # stable mean 3.15 / 0.7 -> 5


def test_concurrency_small_excess_waits_for_the_stable_window() -> None:
    policy = Concurrency(target=1.0, stable_s=6, panic_s=0.6, panic_ratio=1.5)
    samples = concurrency_trace(*[4.0] * 27, 5.0, 5.0, 5.0)  # panic wants 5 of 4: below 1.5x
    assert policy.decide(Signals(now=6.0, current=4, samples=samples)).desired == 5  # stable ceil(4.1) = 5


def test_concurrency_keeps_burst_room_while_serving_and_none_when_idle() -> None:
    policy = Concurrency(target=0.7, burst=1.2, stable_s=6, panic_s=0.6)
    serving = policy.decide(Signals(now=6.0, current=1, samples=concurrency_trace(*[0.35] * 30)))
    assert serving.desired == 3 and "+ 1.2 spare" in serving.reason  # ceil((0.35 + 1.2) / 0.7)
    idle = policy.decide(Signals(now=6.0, current=3, samples=concurrency_trace(*[0.02] * 30)))
    assert idle.desired == 1 and "spare" not in idle.reason  # the agent's own probes: idle, park to the floor


def test_concurrency_hovering_at_a_boundary_keeps_its_worker() -> None:
    policy = Concurrency(target=0.7, burst=1.2, stable_s=6, panic_s=0.6, hysteresis=0.2)
    hovering = concurrency_trace(*[0.2] * 30)  # needs (0.2 + 1.2) / 0.7 = 2.0 vCPUs: a hair above 2
    want = policy.decide(Signals(now=6.0, current=3, samples=hovering))
    assert want.desired == 3 and "within 0.2 vCPU of 2: keep 3" in want.reason
    lower = concurrency_trace(*[0.05] * 30)  # needs 1.79: clearly below 2, so park one
    assert policy.decide(Signals(now=6.0, current=3, samples=lower)).desired == 2


def test_concurrency_without_samples_holds_and_says_so() -> None:
    samples = [CVMSample(ts=1.0, online=2, cpu=80.0, concurrency=None)]  # a real host: CPU but no concurrency
    want = Concurrency().decide(Signals(now=1.0, current=2, samples=samples))
    assert want.desired is None and want.reason == "no concurrency samples"


def test_concurrency_windows_must_nest() -> None:
    with pytest.raises(ValueError, match="panic_s < stable_s"):
        Concurrency(stable_s=1, panic_s=2)


def test_concurrency_with_a_lead_follows_the_slope_ahead() -> None:
    rising = [CVMSample(ts=round(i * 0.1, 3), online=2, concurrency=i * 0.02) for i in range(1, 31)]  # +0.2/s
    plain = Concurrency(target=1.0, stable_s=3.0, panic_s=0.3)
    ahead = Concurrency(target=1.0, stable_s=3.0, panic_s=0.3, lead_s=2.0)
    # mean 0.31 over the window; along the slope 0.31 + 0.2 x (1.5 + 2) = 1.01 two seconds from now
    assert plain.decide(Signals(now=3.0, current=1, samples=rising)).desired == 1
    want = ahead.decide(Signals(now=3.0, current=1, samples=rising))
    assert want.desired == 2 and "1.01 in flight over 3 s at +0.20/s, 2 s ahead" in want.reason
    falling = [CVMSample(ts=round(i * 0.1, 3), online=3, concurrency=3.0 - i * 0.1) for i in range(1, 31)]  # -1/s
    assert plain.decide(Signals(now=3.0, current=3, samples=falling)).desired == 2  # the mean still says 1.45
    assert ahead.decide(Signals(now=3.0, current=3, samples=falling)).desired == 0  # none 2 s on (the guard: boot)
    flat = [CVMSample(ts=1.0, online=2, concurrency=1.5), CVMSample(ts=1.1, online=2, concurrency=1.5)]
    assert ahead.decide(Signals(now=1.1, current=2, samples=flat)).desired == 2  # too few readings: no slope


# -- policy files ------------------------------------------------------------------------------------


def test_the_shipped_policy_files_load() -> None:
    specs = load_policies(DEFAULT_POLICIES)
    assert set(specs) == {"threshold", "slo", "concurrency", "predictive", "calibrated", "rate"}
    predictive = specs["predictive"]
    assert isinstance(predictive.policy, Concurrency) and predictive.policy.lead_s > 0
    assert "ahead along its slope" in predictive.description and predictive.guard.cooldown_up_s == 0.1
    assert isinstance(specs["threshold"].policy, Threshold) and specs["threshold"].policy.interval == 0.5
    assert all(spec.description for spec in specs.values())


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("threshold.toml", "high = 150.0\n", "threshold.toml: high: 150.0 must be in (0, 100]"),
        ("threshold.toml", 'interval = "fast"\n', "threshold.toml: interval: expected a number, got 'fast'"),
        ("fast.toml", 'kind = "magic"\n', "fast.toml: kind: 'magic' is not one of threshold, slo, concurrency"),
        ("slo.toml", "window_s = 30.0\n", "slo.toml: window_s: 30.0 must be in (0, 10]"),
        ("slo.toml", "[guard]\ncooldown_up_s = -1.0\n", "slo.toml: guard.cooldown_up_s: -1.0 must be >= 0"),
        ("slo.toml", "[guard]\nstep = 2\n", "slo.toml: guard.step: unknown key"),
        ("concurrency.toml", "targte = 1.0\n", "concurrency.toml: targte: unknown key"),
        ("concurrency.toml", "panic_s = 9.0\n", "need panic_s < stable_s"),
        ("guard.toml", "overcommit = 0\n", "guard.toml: overcommit: 0.0 must be > 0"),
        ("guard.toml", "max_step_up = 1.5\n", "guard.toml: max_step_up: expected an integer, got 1.5"),
        ("slo.toml", "target_ms = \n", "slo.toml: TOML syntax error"),
    ],
)
def test_bad_policy_files_name_file_field_and_value(tmp_path: Path, file: str, text: str, message: str) -> None:
    write(tmp_path, file, text)
    with pytest.raises(ConfigError) as error:
        load_policies(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_policy_file_overrides_the_shared_guard(tmp_path: Path) -> None:
    write(tmp_path, "guard.toml", "cooldown_down_s = 9.0\noperator_grace_s = 5.0\n")
    write(tmp_path, "quick.toml", 'kind = "concurrency"\ndescription = "quick"\n[guard]\ncooldown_down_s = 1.0\n')
    spec = load_policies(tmp_path)["quick"]
    assert (spec.guard.cooldown_down_s, spec.guard.operator_grace_s, spec.description) == (1.0, 5.0, "quick")


def test_a_missing_policy_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such policy directory"):
        load_policies(tmp_path / "nowhere")
