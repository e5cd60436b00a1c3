"""The guard, by property over random wishes, sample streams and host states, and on worked examples."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hostctl.elastic.guard import GuardSettings, Situation, capacity, guard
from hostctl.elastic.policies import Want

guard_settings = st.builds(
    GuardSettings,
    max_step_up=st.integers(1, 8),
    max_step_down=st.integers(1, 8),
    cooldown_up_s=st.floats(0, 5),
    cooldown_down_s=st.floats(0, 20),
    overcommit=st.floats(0.25, 4),
    stale_after_s=st.floats(0.1, 10),
    operator_grace_s=st.floats(0, 120),
)
wants = st.builds(Want, desired=st.none() | st.integers(-5, 80), reason=st.just("wish"))


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    boot = draw(st.integers(1, 4))
    top = draw(st.integers(boot, boot + 32))
    current = draw(st.integers(boot, top))
    others_boot = draw(st.integers(0, 32))
    others_workers = draw(st.integers(0, 64))
    now = draw(st.floats(1000, 2000))
    return Situation(
        now=now,
        current=current,
        boot=boot,
        max=top,
        host_cpus=draw(st.integers(1, 128)),
        host_boot=boot + others_boot,
        host_workers=current - boot + others_workers,
        sample_age=draw(st.none() | st.floats(0, 30)),
        last_change=draw(st.none() | st.floats(now - 60, now)),
        operator_at=draw(st.none() | st.floats(now - 200, now)),
    )


@settings(max_examples=2000)
@given(wants, situations(), guard_settings)
def test_every_decision_is_within_bounds_steps_and_capacity(want: Want, s: Situation, g: GuardSettings) -> None:
    d = guard(want, s, g)
    assert d.current == s.current
    if not d.changes:
        return
    assert s.boot <= d.target <= s.max
    if d.target > s.current:
        assert d.target - s.current <= g.max_step_up
        assert s.host_workers + (d.target - s.current) <= capacity(s, g)  # never beyond the host
        assert s.last_change is None or s.now - s.last_change >= g.cooldown_up_s
    else:
        assert s.current - d.target <= g.max_step_down
        assert s.last_change is None or s.now - s.last_change >= g.cooldown_down_s


@settings(max_examples=1000)
@given(wants, situations(), guard_settings)
def test_stale_or_missing_data_always_holds(want: Want, s: Situation, g: GuardSettings) -> None:
    d = guard(want, s, g)
    if s.sample_age is None or s.sample_age > g.stale_after_s or want.desired is None:
        assert not d.changes
        in_grace = s.operator_at is not None and s.now - s.operator_at < g.operator_grace_s
        assert d.alert or in_grace


@settings(max_examples=1000)
@given(wants, situations(), guard_settings)
def test_the_operator_wins_for_the_grace_time(want: Want, s: Situation, g: GuardSettings) -> None:
    d = guard(want, s, g)
    if s.operator_at is not None and s.now - s.operator_at < g.operator_grace_s:
        assert not d.changes and d.code == "operator"


@st.composite
def runs(draw: st.DrawFn) -> tuple[GuardSettings, list[tuple[float, int | None, bool, bool]]]:
    """A guard and a stream of ticks: (seconds since the previous tick, wish, sample fresh?, operator scaled?)."""
    g = draw(guard_settings)
    ticks = draw(
        st.lists(
            st.tuples(
                st.floats(0.05, 3),
                st.none() | st.integers(0, 20),
                st.booleans(),
                st.integers(0, 9).map(lambda n: n == 0),
            ),  # one tick in ten, by hand
            min_size=1,
            max_size=80,
        )
    )
    return g, ticks


@settings(max_examples=400)
@given(runs(), st.integers(2, 16), st.integers(0, 12))
def test_a_run_respects_cooldowns_grace_and_capacity(run: tuple[GuardSettings, list], cpus: int, others: int) -> None:
    """Drive the guard through a stream of ticks, applying its decisions as the runner does."""
    g, ticks = run
    boot, top = 1, 9
    now, current = 0.0, boot
    last_sample, last_change, operator_at = 0.0, None, None
    for dt, desired, fresh, by_hand in ticks:
        now += dt
        if fresh:
            last_sample = now
        if by_hand:  # an operator moves it somewhere within bounds
            current = min(top, current + 1)
            last_change = operator_at = now
        s = Situation(
            now=now,
            current=current,
            boot=boot,
            max=top,
            host_cpus=cpus,
            host_boot=boot + others,
            host_workers=current - boot + others,
            sample_age=now - last_sample,
            last_change=last_change,
            operator_at=operator_at,
        )
        d = guard(Want(desired, "wish"), s, g)
        if d.changes:
            stale = now - last_sample > g.stale_after_s
            assert not stale and desired is not None
            assert operator_at is None or now - operator_at >= g.operator_grace_s
            wait = g.cooldown_up_s if d.target > current else g.cooldown_down_s
            assert last_change is None or now - last_change >= wait
            if d.target > current:
                assert d.target - boot + others <= capacity(s, g)
            current, last_change = d.target, now
        assert boot <= current <= top


def situation(**changes: object) -> Situation:
    base = {
        "now": 100.0,
        "current": 2,
        "boot": 1,
        "max": 9,
        "host_cpus": 16,
        "host_boot": 3,
        "host_workers": 1,
        "sample_age": 0.1,
    }
    return Situation(**{**base, **changes})  # type: ignore[arg-type]


def test_capacity_is_cpus_times_overcommit_minus_boot_vcpus() -> None:
    s = situation(host_cpus=16, host_boot=3)
    assert capacity(s, GuardSettings(overcommit=1.0)) == 13
    assert capacity(s, GuardSettings(overcommit=1.5)) == 21
    assert capacity(situation(host_cpus=3, host_boot=3), GuardSettings(overcommit=1.1)) == 0


def test_an_up_is_cut_to_what_the_host_has_left() -> None:
    d = guard(Want(9, "busy"), situation(host_cpus=8, host_boot=3, host_workers=3), GuardSettings(max_step_up=8))
    assert (d.target, d.code) == (4, "up")  # 5 workers of capacity, 3 in use: 2 more
    full = guard(Want(9, "busy"), situation(host_cpus=8, host_boot=3, host_workers=5), GuardSettings())
    assert (full.changes, full.code, full.alert) == (False, "capacity", True)
    assert "host at capacity (5 workers of 5)" in full.reason


def test_a_down_is_allowed_on_a_host_over_capacity() -> None:
    d = guard(Want(1, "idle"), situation(current=5, host_cpus=4, host_boot=3, host_workers=9), GuardSettings())
    assert (d.target, d.label) == (4, "down 5→4")


def test_holds_name_their_cause() -> None:
    g = GuardSettings(stale_after_s=3, cooldown_down_s=10, operator_grace_s=60)
    assert guard(Want(5, "x"), situation(sample_age=None), g).reason == "no samples yet"
    assert "samples are 4.0 s old (stale after 3 s)" in guard(Want(1, "x"), situation(sample_age=4.0), g).reason
    assert guard(Want(None, "no concurrency samples"), situation(), g).code == "no-data"
    cooling = guard(Want(1, "idle"), situation(last_change=95.0), g)
    assert cooling.code == "cooldown" and "5.0 of 10 s" in cooling.reason
    paused = guard(Want(5, "busy"), situation(operator_at=90.0), g)
    assert paused.code == "operator" and "paused 50 s more" in paused.reason
    steady = guard(Want(40, "very busy"), situation(current=9), g)
    assert (steady.label, steady.reason) == ("hold", "very busy (at max)")
