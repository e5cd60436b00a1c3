"""The guard around every policy: turns what a policy wants into what may safely be done (pure, no I/O).

In order, the guard holds when an operator scaled the CVM by hand within `operator_grace_s` (the operator
wins), when the newest sample is missing or older than `stale_after_s` (never act, least of all scale down,
on data it does not have), or when the policy has no data. Otherwise it clamps the wanted count to boot..max,
limits the step (`max_step_up`, `max_step_down`), waits out the cooldown since the last change
(`cooldown_up_s` before an up, `cooldown_down_s` before a down), and caps an up by the host's capacity:

    worker capacity = floor(host cpus x overcommit) - boot vCPUs of all running CVMs on the host

Boot vCPUs always run, so they are paid first; the active workers of all running CVMs on the host together
never exceed what is left. A host already over capacity (by hand) gets no more workers, only fewer.

SEV ASIDs are no limit here: a CVM holds one ASID however many of its vCPUs run, so waking a worker never needs a
free SEV-ES/SNP slot. A host with none left is shown where it matters, before another CVM launches: `hostctl status`,
the console's Hosts table (`15/15 full`) and CVM detail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hostctl.config import check, non_negative, positive
from hostctl.elastic.policies import Want


@dataclass(frozen=True)
class GuardSettings:
    """Limits shared by every policy (a policy file may override them in its `[guard]` table)."""

    max_step_up: int = check(positive, default=4)
    max_step_down: int = check(positive, default=1)
    cooldown_up_s: float = check(non_negative, default=0.5)
    cooldown_down_s: float = check(non_negative, default=2.0)
    overcommit: float = check(positive, default=1.0)
    stale_after_s: float = check(positive, default=3.0)
    operator_grace_s: float = check(non_negative, default=60.0)


@dataclass(frozen=True, slots=True)
class Situation:
    """The facts the guard checks a wish against (times in seconds, on the same clock as `now`)."""

    now: float
    current: int
    boot: int
    max: int
    host_cpus: int
    host_boot: int  # boot vCPUs of all running CVMs on the host, this one included
    host_workers: int  # active workers of all running CVMs on the host, this one included
    sample_age: float | None  # age of the newest sample; None when there is none
    last_change: float | None = None  # when the online count last changed, by anyone
    operator_at: float | None = None  # when an operator last scaled it by hand while the policy was on


@dataclass(frozen=True, slots=True)
class Decision:
    """The guarded outcome: the target (equal to `current` for a hold; both None when the count is unknown), a short
    cause code and the reason."""

    current: int | None
    target: int | None
    code: str  # "up", "down", or why it holds: steady, operator, stale, no-data, cooldown, capacity, ...
    reason: str
    alert: bool = False

    @property
    def changes(self) -> bool:
        return self.target != self.current

    @property
    def label(self) -> str:
        """`up 2→3`, `down 3→2` or `hold`."""
        if self.current is None or self.target is None or not self.changes:
            return "hold"
        return f"{'up' if self.target > self.current else 'down'} {self.current}→{self.target}"


def capacity(situation: Situation, settings: GuardSettings) -> int:
    """Active workers the host may run in all: floor(cpus x overcommit) - boot vCPUs of its running CVMs."""
    return math.floor(situation.host_cpus * settings.overcommit + 1e-9) - situation.host_boot


def hold(current: int | None, code: str, reason: str, *, alert: bool = False) -> Decision:
    return Decision(current, current, code, reason, alert)


def guard(want: Want, s: Situation, settings: GuardSettings) -> Decision:
    """What may be done about `want` in situation `s`: a new target, or a hold with its cause."""
    current = s.current
    if s.operator_at is not None and s.now - s.operator_at < settings.operator_grace_s:
        left = settings.operator_grace_s - (s.now - s.operator_at)
        return hold(
            current,
            "operator",
            f"operator scaled it {s.now - s.operator_at:.0f} s ago; policy paused {left:.0f} s more",
        )
    if s.sample_age is None:
        return hold(current, "stale", "no samples yet", alert=True)
    if s.sample_age > settings.stale_after_s:
        return hold(
            current,
            "stale",
            f"samples are {s.sample_age:.1f} s old (stale after {settings.stale_after_s:g} s)",
            alert=True,
        )
    if want.desired is None:
        return hold(current, "no-data", want.reason, alert=True)
    target = max(s.boot, min(s.max, want.desired))
    bound = " (at max)" if want.desired > s.max else " (at boot)" if want.desired < s.boot else ""
    if target == current:
        return hold(current, "steady", want.reason + bound)
    since = math.inf if s.last_change is None else s.now - s.last_change
    if target > current:
        target = min(target, current + settings.max_step_up)
        if since < settings.cooldown_up_s:
            return hold(
                current,
                "cooldown",
                f"{want.reason}; cooling down ({since:.1f} of {settings.cooldown_up_s:g} s since the last change)",
            )
        room = capacity(s, settings) - s.host_workers
        if target - current > room:
            target = current + max(0, room)
            if target == current:
                return hold(
                    current,
                    "capacity",
                    f"{want.reason}; host at capacity ({s.host_workers} workers of {capacity(s, settings)})",
                    alert=True,
                )
        return Decision(current, target, "up", want.reason)
    target = max(target, current - settings.max_step_down)
    if since < settings.cooldown_down_s:
        return hold(
            current,
            "cooldown",
            f"{want.reason}; cooling down ({since:.1f} of {settings.cooldown_down_s:g} s since the last change)",
        )
    return Decision(current, target, "down", want.reason + bound)
