"""The elastic runner in the agent: per CVM a chosen policy, on or off, run at its own interval behind the guard.

Policies come from a directory of TOML files (by default `hostctl/data/policies/`, shipped in the package):
`guard.toml` holds the shared guard settings, every other `NAME.toml` one policy named NAME (`kind` = threshold,
slo, concurrency or calibrated; defaults to NAME) with an optional `[guard]` table overriding the shared settings.

Each decision is applied through `LibvirtHost.scale(..., who="policy:NAME", why=reason)` (compare-and-set),
which writes the scale to the audit log. A hold is written too (action `hold`, or `alert` when it holds for
want of data or capacity), but only when its cause differs from the previous decision's for that CVM, so a
steady CVM does not fill the log with one line per tick. Every decision is kept as the CVM's `Elastic` state.

The policy choice and on/off flag per CVM persist in a JSON file next to the audit log
(`NAME.elastic.json` beside `NAME.jsonl`), written atomically, and are restored when the agent starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostctl import data
from hostctl.config import build, read_toml
from hostctl.elastic.guard import Decision, GuardSettings, Situation, guard, hold
from hostctl.elastic.policies import KINDS, CVMSample, Policy, Probe, Signals
from hostctl.errors import ConfigError, HostctlError
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire.model import CVM, DomainState, Elastic, Event

DEFAULT_POLICIES = data.POLICIES
DEFAULT_POLICY = "concurrency"  # the choice of a CVM nobody has chosen for, when configured
_POLICY_WHO = re.compile(r"policy:[\w.-]+")


@dataclass(frozen=True)
class PolicySpec:
    """One configured policy: its name (the file's stem), its decision function and its guard."""

    name: str
    kind: str
    policy: Policy
    guard: GuardSettings
    description: str


def load_policies(directory: Path) -> dict[str, PolicySpec]:
    """Every policy in `directory`; ConfigError naming file, field and value for a bad one."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such policy directory")
    shared_file = directory / "guard.toml"
    shared = read_toml(shared_file) if shared_file.exists() else {}
    build(GuardSettings, shared, source=str(shared_file))
    specs = {}
    for path in sorted(directory.glob("*.toml")):
        if path == shared_file:
            continue
        data = read_toml(path)
        kind = data.pop("kind", path.stem)
        if kind not in KINDS:
            raise ConfigError(f"{path}: kind: {kind!r} is not one of {', '.join(KINDS)}")
        if isinstance(data.get("calibration"), str) and data["calibration"]:  # named relative to the policy's file
            data["calibration"] = str(path.parent / data["calibration"])
        overrides = data.pop("guard", {})
        build(GuardSettings, overrides, source=str(path), where="guard")
        settings = build(GuardSettings, {**shared, **overrides}, source=str(path), where="guard")
        description = data.pop("description", None)
        if description is not None and not isinstance(description, str):
            raise ConfigError(f"{path}: description: expected a string, got {description!r}")
        policy = build(KINDS[kind], data, source=str(path))
        default = policy.describe() if path.stem == kind else f"{kind}: {policy.describe()}"
        specs[path.stem] = PolicySpec(path.stem, kind, policy, settings, description or default)
    return specs


def state_path(audit: Path) -> Path:
    """Where the elastic state lives: beside the audit log, `audit.jsonl` -> `audit.elastic.json`."""
    return audit.with_name(audit.stem + ".elastic.json")


def is_policy(who: str) -> bool:
    """True when a scale was made by a policy runner (`policy:NAME`), not by an operator."""
    return _POLICY_WHO.fullmatch(who) is not None


def requested(name: str | None, enabled: bool | None) -> str:
    """What a policy change asked for: `policy slo, on`."""
    asked = [] if name is None else [f"policy {name}"]
    if enabled is not None:
        asked.append("on" if enabled else "off")
    return ", ".join(asked)


class UnknownPolicy(HostctlError):
    """A policy name this agent has no file for."""


@dataclass
class _Track:
    """One CVM's elastic state: the choice (persisted), its last decision and the policy's task."""

    policy: str
    enabled: bool = False
    since: float | None = None  # when it was last switched on
    decision: Decision | None = None
    decided_at: float | None = None
    logged: str = ""  # cause code of the last decision written to the audit log
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ElasticRunner:
    """Runs the chosen policy of every CVM of one host whose policy is on, on the agent's event loop."""

    def __init__(
        self,
        host: LibvirtHost,
        policies: dict[str, PolicySpec],
        *,
        state_file: Path,
        record: Callable[[Event], None],
        probes: Callable[[str, float, float], list[Probe]] = lambda cvm, now, seconds: [],
        decided: Callable[[str, str, Decision], None] = lambda cvm, policy, decision: None,
    ) -> None:
        self.host = host
        self.policies = policies
        self.state_file = state_file
        self.record = record
        self.probes = probes
        self.decided = decided  # told of every decision (CVM, policy, decision), holds included: the agent's metrics
        self._tracks: dict[str, _Track] = {}
        self._samples: dict[str, deque[CVMSample]] = {}
        self._lock = asyncio.Lock()
        self._keep_s = max([10.0, *(2 * spec.policy.horizon + 1 for spec in policies.values())])
        host.on_change(self._forget_if_gone)

    @property
    def default_policy(self) -> str | None:
        if DEFAULT_POLICY in self.policies:
            return DEFAULT_POLICY
        return min(self.policies, default=None)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Restore the saved choices of the CVMs there are (the others were undefined meanwhile) and start the
        policies that were on."""
        saved = self._load()
        for name, choice in saved.items():
            if self.host.get(name) is not None:
                self._tracks[name] = _Track(choice["policy"], choice["enabled"], choice.get("since"))
        if len(self._tracks) < len(saved):
            self._save()
        for name, track in self._tracks.items():
            if track.enabled:
                self._run(name, track)

    async def stop(self) -> None:
        tasks = [t.task for t in self._tracks.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reading ---------------------------------------------------------------------------------

    def describe(self) -> list[dict[str, str]]:
        """The configured policies, each with a one-line description."""
        return [{"name": spec.name, "description": spec.description} for spec in self.policies.values()]

    def state(self, cvm: str) -> Elastic | None:
        """The CVM's elastic state as the snapshot carries it (None when no policy is configured)."""
        track = self._tracks.get(cvm)
        if track is None:
            default = self.default_policy
            return None if default is None else Elastic(policy=default)
        d = track.decision
        return Elastic(
            policy=track.policy,
            enabled=track.enabled,
            decision="" if d is None else d.label,
            reason="" if d is None else d.reason,
            ts=track.decided_at,
            alert=d is not None and d.alert,
        )

    def sample_interval(self) -> float | None:
        """The shortest interval of a policy that is on (the agent samples at least this often), if any."""
        intervals = [
            self.policies[t.policy].policy.interval
            for t in self._tracks.values()
            if t.enabled and t.policy in self.policies
        ]
        return min(intervals, default=None)

    # -- changing --------------------------------------------------------------------------------

    def choose(self, cvm: str, *, name: str | None = None, enabled: bool | None = None, who: str = "") -> Elastic:
        """Pick the CVM's policy and/or switch it on or off; audited (refused too), saved, and effective at once."""
        try:
            self._check(cvm, name)
        except HostctlError as e:
            if name is not None or enabled is not None:
                why = f"{e} (requested {requested(name, enabled)})"
                self.record(Event(self.host.host.name, cvm, "policy", who, ok=False, why=why))
            raise
        if name is None and enabled is None:
            state = self.state(cvm)
            assert state is not None
            return state
        track = self._tracks.get(cvm)
        if track is None:
            track = self._tracks[cvm] = _Track(self.default_policy or "")
        changes = []
        if name is not None and name != track.policy:
            changes.append(f"policy {track.policy} -> {name}")
            track.policy = name
        if enabled is not None and enabled != track.enabled:
            changes.append("on" if enabled else "off")
            track.enabled = enabled
            track.since = time.time() if enabled else None
        if changes:
            track.logged = ""  # the next decision is written whatever it is
            self._save()
            self.record(
                Event(
                    self.host.host.name,
                    cvm,
                    "policy",
                    who,
                    ok=True,
                    why=f"{', '.join(changes)} ({track.policy} {'on' if track.enabled else 'off'})",
                )
            )
        if track.enabled:
            self._run(cvm, track)
        state = self.state(cvm)
        assert state is not None
        return state

    def _check(self, cvm: str, name: str | None) -> None:
        if not self.policies:
            raise HostctlError("no elastic policies are configured on this agent")
        self.host.cvm(cvm)  # an unknown CVM is refused with the names of the known ones
        if name is not None and name not in self.policies:
            raise UnknownPolicy(f"unknown policy {name!r} (known: {', '.join(self.policies)})")

    def _forget_if_gone(self, cvm: str) -> None:
        """Drop the state of a CVM that is no longer defined: its samples, and its choice (kept while it merely
        stops and starts again)."""
        if self.host.get(cvm) is not None:
            return
        self._samples.pop(cvm, None)
        track = self._tracks.pop(cvm, None)
        if track is not None:
            if track.task is not None:
                track.task.cancel()
            self._save()

    # -- sampling and deciding -------------------------------------------------------------------

    def observe(self) -> None:
        """Take one sample of every running CVM from the host's latest figures (after `LibvirtHost.sample`)."""
        now = time.time()
        running = {c.name for c in self.host.cvms if c.state is DomainState.RUNNING}
        for gone in self._samples.keys() - running:
            del self._samples[gone]
        for cvm in self.host.cvms:
            if cvm.name not in running or cvm.online_vcpus is None:  # an unknown count is no sample
                continue
            samples = self._samples.setdefault(cvm.name, deque())
            samples.append(CVMSample(now, cvm.online_vcpus, cvm.cpu_percent, cvm.concurrency, cvm.rps))
            while samples[0].ts < now - self._keep_s:
                samples.popleft()

    async def step(self, cvm: str) -> Decision:
        """Decide once for `cvm` with its chosen policy behind the guard, and apply the decision."""
        async with self._lock:  # one decision at a time per host, so capacity checks see every change
            track = self._tracks[cvm]
            now = time.time()
            decision = self._decide(cvm, track, now)
            if decision.changes and decision.target is not None:
                try:
                    await self.host.scale(
                        cvm, decision.target, expect=decision.current, who=f"policy:{track.policy}", why=decision.reason
                    )
                except HostctlError as e:  # the backend has audited the refusal
                    decision = hold(decision.current, "refused", str(e), alert=True)
                    track.logged = "refused"
                else:
                    track.logged = decision.code
            elif decision.code != track.logged:
                self.record(
                    Event(
                        self.host.host.name,
                        cvm,
                        "alert" if decision.alert else "hold",
                        f"policy:{track.policy}",
                        ok=True,
                        before=decision.current,
                        after=decision.current,
                        why=decision.reason,
                    )
                )
                track.logged = decision.code
            track.decision, track.decided_at = decision, now
            self.decided(cvm, track.policy, decision)
            return decision

    def _decide(self, name: str, track: _Track, now: float) -> Decision:
        cvm = self.host.get(name)
        if cvm is None or cvm.state is not DomainState.RUNNING:
            state = "gone" if cvm is None else cvm.state.value
            return hold(None, "not-running", f"{name} is {state}")
        if cvm.online_vcpus is None:
            return hold(None, "unknown-count", f"online vCPU count unknown: {cvm.vcpus_error}", alert=True)
        spec = self.policies.get(track.policy)
        if spec is None:
            return hold(
                cvm.online_vcpus,
                "unknown-policy",
                f"policy {track.policy!r} is not configured on this agent",
                alert=True,
            )
        samples = self._samples.get(name, ())
        seconds = spec.policy.probe_horizon
        probes = self.probes(name, now, seconds) if seconds > 0 else []
        want = spec.policy.decide(Signals(now, cvm.online_vcpus, tuple(samples), probes))
        return guard(want, self._situation(cvm, cvm.online_vcpus, track, now, samples), spec.guard)

    def _situation(
        self, cvm: CVM, current: int, track: _Track, now: float, samples: deque[CVMSample] | tuple[()]
    ) -> Situation:
        running = [c for c in self.host.cvms if c.state is DomainState.RUNNING]
        by_hand = (
            cvm.scaled_at is not None
            and not is_policy(cvm.scaled_by)
            and track.since is not None
            and cvm.scaled_at >= track.since
        )
        return Situation(
            now=now,
            current=current,
            boot=cvm.boot_vcpus,
            max=cvm.max_vcpus,
            host_cpus=self.host.host.cpus,
            host_boot=sum(c.boot_vcpus for c in running),
            # A CVM whose count is unknown may run all its workers: capacity counts the worst case.
            host_workers=sum(c.workers_max if c.workers_active is None else c.workers_active for c in running),
            sample_age=now - samples[-1].ts if samples else None,
            last_change=cvm.scaled_at,
            operator_at=cvm.scaled_at if by_hand else None,
        )

    def _run(self, name: str, track: _Track) -> None:
        if track.task is None or track.task.done():
            track.task = asyncio.get_running_loop().create_task(self._loop(name, track))

    async def _loop(self, name: str, track: _Track) -> None:
        """Decide every interval of the chosen policy for as long as it is on."""
        while track.enabled:
            spec = self.policies.get(track.policy)
            await asyncio.sleep(spec.policy.interval if spec is not None else 1.0)
            if track.enabled:  # still on after the sleep
                await self._tick(name, track)

    async def _tick(self, name: str, track: _Track) -> None:
        """One step; a failing step becomes an alerting hold instead of ending the policy."""
        try:
            await self.step(name)
        except Exception as e:  # a bug must not silently end the policy: say so, and try again
            current = track.decision.current if track.decision is not None else None
            track.decision, track.decided_at = (
                hold(current, "error", f"{type(e).__name__}: {e}", alert=True),
                time.time(),
            )
            self.decided(name, track.policy, track.decision)
            if track.logged != "error":
                self.record(
                    Event(
                        self.host.host.name,
                        name,
                        "alert",
                        f"policy:{track.policy}",
                        ok=False,
                        why=track.decision.reason,
                    )
                )
                track.logged = "error"

    # -- persistence -----------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise HostctlError(f"{self.state_file}: cannot read the elastic state: {e}") from None
        cvms = data.get("cvms") if isinstance(data, dict) else None
        if not isinstance(cvms, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("policy"), str) and isinstance(v.get("enabled"), bool)
            for v in cvms.values()
        ):
            raise HostctlError(
                f"{self.state_file}: not an elastic state file (expected "
                '{"cvms": {CVM: {"policy": NAME, "enabled": BOOL}}})'
            )
        return cvms

    def _save(self) -> None:
        """Write the choices atomically: a complete file or the previous one, never half of one."""
        data = {
            "cvms": {
                name: {"policy": t.policy, "enabled": t.enabled, "since": t.since}
                for name, t in sorted(self._tracks.items())
            }
        }
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)
        directory = os.open(self.state_file.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
