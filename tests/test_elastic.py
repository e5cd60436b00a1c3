"""The elastic runner in a real agent over libvirt's test driver: the `policy`/`policies` RPC, decisions
applied through compare-and-set scales, the guard's holds, the audit log and the persisted state."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hostctl.agent.audit import AuditLog
from hostctl.agent.server import Agent
from hostctl.client import site as sites
from hostctl.demo.site import demo_site
from hostctl.elastic.runner import load_policies, state_path
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire import rpc
from tests.support import ROOT, waiting
from tests.support.agents import AgentProcess
from tests.support.nodes import make_node

GUARD = """
max_step_up = 2
max_step_down = 1
cooldown_up_s = 0.0
cooldown_down_s = 0.2
overcommit = {overcommit}
stale_after_s = 0.6
operator_grace_s = 60.0
"""


def policy_dir(tmp_path: Path, overcommit: float = 1.0) -> Path:
    """The shipped policies with a quick guard (short cooldowns) and the given overcommit."""
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "guard.toml").write_text(GUARD.format(overcommit=overcommit))
    (directory / "threshold.toml").write_text("interval = 0.1\n")
    (directory / "concurrency.toml").write_text("interval = 0.1\n")
    (directory / "slo.toml").write_text("interval = 0.1\n")
    return directory


class Served:
    """An agent with policies over a test-driver host whose CPU use the test sets per CVM."""

    def __init__(
        self, tmp_path: Path, *, readonly: bool = False, overcommit: float = 1.0, driver: str = "emulated"
    ) -> None:
        self.tmp_path = tmp_path
        self.readonly = readonly
        self.policies = load_policies(policy_dir(tmp_path, overcommit))
        self.node = make_node(tmp_path, driver=driver)
        self.audit = tmp_path / "audit.jsonl"
        self.socket = tmp_path / "agent.sock"
        self.cpu: dict[str, float] = {}
        self.host: LibvirtHost | None = None
        self.agent: Agent | None = None
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.host = LibvirtHost(
            f"test://{self.node}",
            name="edge-1",
            driver_options={"emulated": {"wake_ms": 0, "park_ms": 0}},
            cpu_source=lambda name: self.cpu.get(name, 50.0),
        )
        await self.host.open()
        self.agent = Agent(
            self.host,
            audit=AuditLog(self.audit),
            readonly=self.readonly,
            interval=0.1,
            probe_rate=0,
            policies=self.policies,
        )
        self.agent.start()
        self.server = await self.agent.serve_unix(self.socket)

    async def stop(self) -> None:
        assert self.server is not None and self.agent is not None and self.host is not None
        self.server.close()
        await self.agent.stop()
        await self.host.close()

    async def call(self, method: str, **params: object) -> object:
        return await rpc.call_unix(str(self.socket), method, **params)

    def online(self, cvm: str = "snp") -> int:
        assert self.host is not None
        return self.host.cvm(cvm).online_vcpus

    def audit_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


until = functools.partial(waiting.until, timeout=30.0, interval=0.05)  # generous: the machine is shared and slow


async def state(served: Served, cvm: str = "snp") -> dict:
    result = await served.call("policy", cvm=cvm)
    assert isinstance(result, dict)
    return result


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(tmp_path)
    await s.start()
    yield s
    await s.stop()


async def test_policies_lists_each_with_a_description(served: Served) -> None:
    listed = await served.call("policies")
    assert [p["name"] for p in listed] == ["concurrency", "slo", "threshold"]
    assert all(p["description"] for p in listed)
    assert "policy" in (await served.call("hello"))["methods"]


async def test_policy_get_and_set(served: Served) -> None:
    assert await state(served) == {
        "cvm": "snp",
        "policy": "concurrency",
        "enabled": False,
        "decision": "",
        "reason": "",
        "ts": None,
        "alert": False,
    }
    picked = await served.call("policy", cvm="snp", name="threshold", who="alice")
    assert (picked["policy"], picked["enabled"]) == ("threshold", False)
    on = await served.call("policy", cvm="snp", enabled=True, who="alice")
    assert (on["policy"], on["enabled"]) == ("threshold", True)
    entry = [e for e in served.audit_lines() if e["action"] == "policy"][-1]
    assert entry["cvm"] == "snp" and entry["who"].startswith("alice (") and "threshold on" in entry["why"]
    snapshot = await served.call("snapshot")
    elastic = {c["name"]: c["elastic"] for c in snapshot["cvms"]}
    assert elastic["snp"]["policy"] == "threshold" and elastic["snp"]["enabled"] is True
    assert elastic["es"] == {
        "policy": "concurrency",
        "enabled": False,
        "decision": "",
        "reason": "",
        "ts": None,
        "alert": False,
    }


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        (
            {"cvm": "snp", "name": "magic"},
            rpc.INVALID_PARAMS,
            "unknown policy 'magic' (known: concurrency, slo, threshold)",
        ),
        ({"cvm": "snp", "enabled": 1}, rpc.INVALID_PARAMS, "parameter 'enabled' must be bool, got 1"),
        ({"cvm": "snp", "enabled": "yes"}, rpc.INVALID_PARAMS, "must be bool"),
        ({"name": "slo"}, rpc.INVALID_PARAMS, "missing parameter 'cvm'"),
        ({"cvm": "nope", "enabled": True}, rpc.REFUSED, "unknown CVM 'nope' on edge-1"),
        ({"cvm": "snp", "force": True}, rpc.INVALID_PARAMS, "unknown parameter 'force'"),
    ],
)
async def test_bad_policy_requests_are_refused(served: Served, params: dict, code: int, message: str) -> None:
    with pytest.raises(rpc.RpcError) as error:
        await served.call("policy", **params)
    assert error.value.code == code and message in str(error.value)
    assert (await state(served))["enabled"] is False


async def test_readonly_agent_reads_policies_but_refuses_changes(tmp_path: Path) -> None:
    served = Served(tmp_path, readonly=True)
    await served.start()
    try:
        assert (await state(served))["policy"] == "concurrency"
        assert len(await served.call("policies")) == 3
        for change in ({"enabled": True}, {"name": "slo"}):
            with pytest.raises(rpc.RpcError, match="read-only: policy refused; nothing changed"):
                await served.call("policy", cvm="snp", **change)
        assert (await state(served))["enabled"] is False and not state_path(served.audit).exists()
    finally:
        await served.stop()


async def test_threshold_wakes_workers_under_load_and_parks_them_when_idle(served: Served) -> None:
    served.cpu["snp"] = 100.0
    await served.call("policy", cvm="snp", name="threshold", enabled=True, who="alice")
    await until(lambda: served.online() == 5)  # max
    served.cpu["snp"] = 0.0
    await until(lambda: served.online() == 1)  # boot
    scales = [e for e in served.audit_lines() if e["action"] == "scale" and e["cvm"] == "snp"]
    assert all(e["who"] == "policy:threshold" and e["ok"] for e in scales)
    ups = [e for e in scales if e["after"] > e["before"]]
    downs = [e for e in scales if e["after"] < e["before"]]
    assert ups and downs and all(e["after"] - e["before"] <= 2 for e in ups)  # max_step_up
    assert all(e["before"] - e["after"] == 1 for e in downs)  # max_step_down
    assert all("CPU 100% > 70%" in e["why"] for e in ups) and all("CPU 0% < 30%" in e["why"] for e in downs)
    assert served.online("es") == 2  # other CVMs are left alone


async def test_a_hold_is_logged_once_per_cause(served: Served) -> None:
    served.cpu["snp"] = 50.0  # within the bands: steady
    await served.call("policy", cvm="snp", name="threshold", enabled=True)
    await until(lambda: served.agent.elastic.state("snp").decision == "hold")  # type: ignore[union-attr]
    ticks = 0

    def after_ticks() -> bool:
        nonlocal ticks
        ticks += 1
        return ticks > 20

    await until(after_ticks)  # about a second of 0.1 s decisions
    holds = [e for e in served.audit_lines() if e["action"] == "hold" and e["cvm"] == "snp"]
    assert len(holds) == 1 and "CPU 50% within 30..70%" in holds[0]["why"]
    assert holds[0]["who"] == "policy:threshold" and holds[0]["before"] == holds[0]["after"] == 2
    current = await state(served)
    assert current["decision"] == "hold" and "within" in current["reason"] and current["ts"] is not None


async def test_no_concurrency_signal_on_a_real_host_holds_and_alerts(served: Served) -> None:
    await served.call("policy", cvm="snp", name="concurrency", enabled=True)
    await until(lambda: served.agent.elastic.state("snp").reason == "no concurrency samples")  # type: ignore
    current = await state(served)
    assert current["decision"] == "hold" and current["alert"] is True
    alerts = [e["why"] for e in served.audit_lines() if e["action"] == "alert" and e["cvm"] == "snp"]
    # Once each: a policy switched on before the agent's first sample alerts "no samples yet" first.
    assert alerts in (["no concurrency samples"], ["no samples yet", "no concurrency samples"])
    assert served.online() == 2


async def test_the_operator_wins_for_the_grace_time(served: Served) -> None:
    served.cpu["snp"] = 50.0
    await served.call("policy", cvm="snp", name="threshold", enabled=True)
    await served.call("scale", cvm="snp", target=4, expect=2, who="bob", why="by hand")
    served.cpu["snp"] = 0.0  # the policy would park workers now
    await until(lambda: "operator scaled it" in served.agent.elastic.state("snp").reason)  # type: ignore
    assert served.online() == 4
    hold = [e for e in served.audit_lines() if e["action"] == "hold"][-1]
    assert "policy paused" in hold["why"]


async def test_stale_samples_hold_and_never_scale_down(served: Served) -> None:
    served.cpu["snp"] = 50.0
    await served.call("policy", cvm="snp", name="threshold", enabled=True)
    await until(lambda: served.agent.elastic.state("snp").decision == "hold")  # type: ignore[union-attr]
    assert served.agent is not None and served.agent._sampler is not None
    served.agent._sampler.cancel()  # the sampler dies: no more samples
    served.cpu["snp"] = 0.0
    await until(lambda: "samples are" in served.agent.elastic.state("snp").reason)  # type: ignore
    assert served.online() == 2 and (await state(served))["alert"] is True


async def test_an_unknown_count_holds_with_an_alert_and_never_scales(tmp_path: Path) -> None:
    """Guest-driver CVMs whose guest agent does not answer (the test driver has none): no count, so no decision."""
    served = Served(tmp_path, driver="guest")
    await served.start()
    try:
        served.cpu["snp"] = 100.0  # the threshold policy would wake workers, if it knew how many run
        await served.call("policy", cvm="snp", name="threshold", enabled=True)
        await until(lambda: "count unknown" in served.agent.elastic.state("snp").reason)  # type: ignore[union-attr]
        current = await state(served)
        assert current["decision"] == "hold" and current["alert"] is True
        assert current["reason"].startswith("online vCPU count unknown: guest agent not answering")
        assert not [e for e in served.audit_lines() if e["action"] == "scale"]
        alert = [e for e in served.audit_lines() if e["action"] == "alert"][-1]
        assert (alert["before"], alert["after"]) == (None, None)
    finally:
        await served.stop()


async def test_host_capacity_caps_the_policy(tmp_path: Path) -> None:
    served = Served(tmp_path, overcommit=0.5)  # 16 CPUs x 0.5 - 4 boot vCPUs = 4 workers, all in use
    await served.start()
    try:
        served.cpu["snp"] = 100.0
        await served.call("policy", cvm="snp", name="threshold", enabled=True)
        await until(lambda: "host at capacity" in served.agent.elastic.state("snp").reason)  # type: ignore
        assert served.online() == 2 and (await state(served))["alert"] is True
    finally:
        await served.stop()


async def test_the_choice_survives_an_agent_restart(tmp_path: Path) -> None:
    served = Served(tmp_path)
    await served.start()
    served.cpu["snp"] = 50.0
    await served.call("policy", cvm="snp", name="threshold", enabled=True)
    await served.call("policy", cvm="es", name="slo")
    await served.stop()
    saved = json.loads(state_path(served.audit).read_text())
    assert saved["cvms"]["snp"]["policy"] == "threshold" and saved["cvms"]["snp"]["enabled"] is True
    await served.start()
    try:
        assert ((await state(served))["policy"], (await state(served))["enabled"]) == ("threshold", True)
        assert ((await state(served, "es"))["policy"], (await state(served, "es"))["enabled"]) == ("slo", False)
        await until(lambda: served.agent.elastic.state("snp").decision == "hold")  # type: ignore[union-attr]
    finally:
        await served.stop()


async def test_a_corrupt_state_file_is_one_clear_error(tmp_path: Path) -> None:
    served = Served(tmp_path)
    state_path(served.audit).write_text('{"cvms": {"snp": {"policy": 3}}}')
    with pytest.raises(Exception, match="not an elastic state file"):
        await served.start()
    assert served.host is not None
    await served.host.close()


async def test_a_real_agent_process_keeps_its_choice_across_a_restart(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, "mec-1", wake_ms=0)
    await agent.start()
    try:
        on = await rpc.call_unix(str(agent.socket), "policy", cvm="snp", name="slo", enabled=True, who="alice")
        assert (on["policy"], on["enabled"]) == ("slo", True)
        agent.stop()
        await agent.start()
        after = await rpc.call_unix(str(agent.socket), "policy", cvm="snp")
        assert (after["policy"], after["enabled"]) == ("slo", True)
        snp: dict = {}

        async def snapshot_of_snp() -> None:
            nonlocal snp
            while snp.get("concurrency") is None:  # the demo reports it from its first sample on
                snapshot = await rpc.call_unix(str(agent.socket), "snapshot")
                snp = next(c for c in snapshot["cvms"] if c["name"] == "snp")
                await asyncio.sleep(0.05)

        await asyncio.wait_for(snapshot_of_snp(), 30)
        assert snp["elastic"]["policy"] == "slo" and snp["elastic"]["enabled"] is True
    finally:
        agent.stop()


async def hostctl(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hostctl", *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_site_cli_shows_and_sets_a_policy(served: Served, tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    sites.write(demo_site({"edge-1": served.socket}), site)
    rc, out, _ = await hostctl("--site", str(site), "policy", "edge-1/snp", "--name", "slo", "--on")
    assert rc == 0 and out.splitlines()[0] == "edge-1/snp: policy slo on"
    await until(lambda: served.agent.elastic.state("snp").decision != "")  # type: ignore[union-attr]
    rc, out, _ = await hostctl("--site", str(site), "policy", "edge-1/snp", "--json")
    reply = json.loads(out)
    assert rc == 0 and (reply["policy"], reply["enabled"]) == ("slo", True) and reply["decision"] == "hold"
    rc, _, err = await hostctl("--site", str(site), "policy", "edge-1/snp", "--name", "magic")
    assert rc == 2 and err.strip().endswith("unknown policy 'magic' (known: concurrency, slo, threshold)")
    assert len(err.strip().splitlines()) == 1
    rc, _, err = await hostctl("--site", str(site), "policy", "snp", "--off")
    assert rc == 2 and "name the CVM as HOST/CVM" in err
    rc, _, err = await hostctl(
        "--site", str(site), "experiment", "elastic-vs-fixed", "--cvm", "edge-1/snp", "--runs", "fixed-max,magic"
    )
    assert (
        rc == 2
        and "unknown run 'magic' (choose from fixed-min, fixed-max, oracle-replay, concurrency, slo, threshold)" in err
    )
    rc, _, err = await hostctl("--site", str(site), "experiment", "elastic-vs-fixed", "--cvm", "edge-1/snp")
    assert rc == 2 and "edge-1/snp: no service to send load to" in err
