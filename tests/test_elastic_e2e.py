"""End to end on the demo site: a real agent process, its real HTTP services and real wrk load.

With a policy on, workers rise under load and wrk's p99 falls; once the load stops, workers return to the floor.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hostctl.load import wrk
from hostctl.wire import rpc
from tests.support.agents import AgentProcess


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    process = AgentProcess(tmp_path, "mec-1", wake_ms=40)  # CVM snp: boot 1, max 5, 2 online
    await process.start()
    yield process
    process.stop()


async def cvm(agent: AgentProcess, name: str = "snp") -> dict:
    snapshot = await rpc.call_unix(str(agent.socket), "snapshot")
    return next(c for c in snapshot["cvms"] if c["name"] == name)


async def service_url(agent: AgentProcess) -> str:
    snapshot = await rpc.call_unix(str(agent.socket), "snapshot")
    return next(s["url"] for s in snapshot["services"] if s["cvm"] == "snp")


@pytest.mark.parametrize(("policy", "connections"), [("concurrency", 8), ("threshold", 8), ("slo", 32)])
async def test_workers_follow_wrk_load_up_and_back_to_the_floor(
    agent: AgentProcess, policy: str, connections: int
) -> None:
    url = await service_url(agent)
    load = {"threads": 1, "connections": connections, "timeout_s": 5}
    before = await wrk.run(url, duration_s=3, **load)  # policy off: 2 vCPUs serve the load
    assert (await cvm(agent))["online_vcpus"] == 2

    await rpc.call_unix(str(agent.socket), "policy", cvm="snp", name=policy, enabled=True, who="test")
    async with asyncio.timeout(120):
        while (await cvm(agent))["online_vcpus"] < 4:
            await wrk.run(url, duration_s=2, **load)
    during = await wrk.run(url, duration_s=3, **load)
    assert during.p(99) < before.p(99), (before.percentiles, during.percentiles)

    async with asyncio.timeout(120):  # load gone: the policy parks workers down to the boot vCPU
        while (snp := await cvm(agent))["online_vcpus"] != 1:
            await asyncio.sleep(0.2)
    assert snp["elastic"]["policy"] == policy and snp["elastic"]["enabled"] is True
    scales = [json.loads(line) for line in agent.audit.read_text().splitlines()]
    scales = [e for e in scales if e["action"] == "scale" and e["cvm"] == "snp"]
    assert scales and all(e["who"] == f"policy:{policy}" and e["ok"] for e in scales)
    assert max(e["after"] for e in scales) >= 4 and scales[-1]["after"] == 1
