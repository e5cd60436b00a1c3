"""A real Prometheus scraping a demo agent started by `demo up --metrics`, and promtool on what ships: the agent's
metrics, the scrape config, the alert rules and their tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hostctl import data
from hostctl.demo import launcher
from hostctl.demo.launcher import HostProcess
from hostctl.wire import rpc
from hostctl.wire.model import Snapshot
from tests.support.agents import CONFIG, HOST
from tests.support.prometheus import prometheus, promtool, scrape

RULES = data.PROMETHEUS / "alerts.yml"


class Demo:
    """One demo host (`m1`, CVM `snp`: boot 1, max 5, 2 online) serving its metrics on a free loopback port."""

    def __init__(self, runtime: Path, lines: list[str]) -> None:
        self.runtime = runtime
        self.lines = lines
        self.proc = HostProcess("m1", runtime)
        self.address = self.proc.metrics.read_text().strip()

    async def call(self, method: str, **params: Any) -> Any:
        return await rpc.call_unix(str(self.proc.socket), method, timeout=10, **params)

    async def snapshot(self) -> Snapshot:
        return Snapshot.from_dict(await self.call("snapshot"))


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    config = tmp_path / "demo.toml"
    config.write_text(CONFIG.format(wake_ms=5, hosts=HOST.format(name="m1")))
    runtime = tmp_path / "run"
    lines = await launcher.up(config, runtime, metrics=("127.0.0.1", 0))
    try:
        yield Demo(runtime, lines)
    finally:
        await launcher.down(runtime)


async def test_prometheus_reads_back_what_the_agent_says_after_a_scale(tmp_path: Path, demo: Demo) -> None:
    assert f"metrics http://{demo.address}/metrics" in demo.lines[0]
    async with prometheus(tmp_path / "prometheus", {"m1": demo.address}) as prom:
        assert await prom.wait('up{job="hostctl"} == 1') == {"": 1.0}
        assert (await demo.snapshot()).cvms[0].online_vcpus == 2
        await demo.call("scale", cvm="snp", target=4, expect=2, who="test")
        with pytest.raises(rpc.RpcError, match=r"outside boot\.\.max"):
            await demo.call("scale", cvm="snp", target=9, who="test")
        snapshot = await demo.snapshot()
        (snp,) = snapshot.cvms
        assert snp.online_vcpus == 4  # nothing else scales it: no policy is on, no traffic

        labels = "cvm=snp,host=m1,security=sev-snp"
        await prom.wait('hostctl_cvm_online_vcpus{cvm="snp"} == 4')
        for metric, value in {
            "hostctl_cvm_online_vcpus": snp.online_vcpus,
            "hostctl_cvm_boot_vcpus": snp.boot_vcpus,
            "hostctl_cvm_max_vcpus": snp.max_vcpus,
            "hostctl_cvm_workers_active": snp.workers_active,
            "hostctl_cvm_workers_max": snp.workers_max,
            "hostctl_cvm_online_vcpus_known": 1,
        }.items():
            assert await prom.query(metric) == {labels: value}, metric
        assert await prom.query("hostctl_host_cpus") == {"host=m1": snapshot.host.cpus}
        assert await prom.query("hostctl_host_workers_active") == {"host=m1": snp.workers_active}
        assert await prom.query('hostctl_cvm_state{state="running"}') == {"cvm=snp,host=m1,state=running": 1}
        assert await prom.query("hostctl_scale_actions_total > 0") == {
            "by=operator,cvm=snp,host=m1,result=applied": 1,
            "by=operator,cvm=snp,host=m1,result=refused": 1,
        }
        assert snp.elastic is not None
        assert await prom.query("hostctl_cvm_policy_enabled") == {f"cvm=snp,host=m1,policy={snp.elastic.policy}": 0}
        # The agent probes its service twice a second: the histogram Prometheus keeps counts them.
        probes = await prom.wait("hostctl_probe_latency_seconds_count > 0")
        assert list(probes) == ["cvm=snp,host=m1,service=home-timeline"]
        assert await prom.query("hostctl_probe_failures_total") == {"cvm=snp,host=m1,service=home-timeline": 0}
        assert await prom.query("hostctl_host_fresh") == {"host=m1": 1}
        assert (await prom.query("process_resident_memory_bytes"))[""] > 0

        # The shipped rules are loaded, and none fires on this healthy host.
        groups = (await prom.get("/api/v1/rules"))["groups"]
        assert [(g["name"], len(g["rules"])) for g in groups] == [("hostctl", 6)]
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
        assert (await prom.get("/api/v1/alerts"))["alerts"] == []


async def test_promtool_passes_the_agents_metrics_and_the_demos_config(demo: Demo) -> None:
    text = await scrape(demo.address)
    checked = promtool("check", "metrics", stdin=text)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", ""), checked
    config = promtool("check", "config", str(launcher.prometheus_config(demo.runtime)))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_passes_the_shipped_config_rules_and_rule_tests() -> None:
    for args in (
        ("check", "rules", str(RULES)),
        ("test", "rules", str(data.PROMETHEUS / "alerts_test.yml")),
        ("check", "config", str(data.PROMETHEUS / "prometheus.yml")),
    ):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout
