"""Refusals and host names in the console and the CLI, against real agent processes: every refused request shown
exactly once, and events named by the site's host even when agents share one hostname."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from dittotui.app import DittoApp
from dittotui.refusals import Refusals
from hostctl.client.ref import CVMRef
from hostctl.client.site import Defaults
from hostctl.client.site import write as write_site
from hostctl.demo.site import demo_site
from tests.support import ROOT
from tests.support.agents import AgentProcess
from tests.test_console import online_vcpus, ready, select, until

SITE_HOSTS = ("mec-a", "mec-b")
AGENT_HOSTNAME = "vm"  # what both agents call their host


@pytest.fixture
async def twins(tmp_path: Path) -> AsyncIterator[dict[str, AgentProcess]]:
    """Two agents that both report the hostname `vm`, reached as the site's hosts mec-a and mec-b."""
    procs = {}
    for name in SITE_HOSTS:
        (tmp_path / name).mkdir()
        procs[name] = AgentProcess(tmp_path / name, AGENT_HOSTNAME, wake_ms=0)
    try:
        for proc in procs.values():
            await proc.start()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def console(agents: dict[str, AgentProcess]) -> DittoApp:
    site = demo_site({name: p.socket for name, p in agents.items()})
    site.defaults = Defaults(interval=0.2, timeout=1.0, backoff_max=0.5)
    return DittoApp(site=site, refresh=0.05)


def log_lines(app: DittoApp) -> list[str]:
    return [str(line.text) for line in app.query_one("#events").lines]


def shown(app: DittoApp, *words: str) -> int:
    return sum(all(w in line for w in words) for line in log_lines(app))


async def settled(pilot: Pilot[None], seconds: float = 1.5) -> None:
    """Long enough for an audit event pushed at once, and a few update intervals, to have arrived."""
    await pilot.pause(seconds)


async def test_a_refusal_for_a_cvm_the_agent_no_longer_knows_is_shown_once(twins: dict[str, AgentProcess]) -> None:
    app = console(twins)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot, app)
        assert app.fleet is not None
        link = app.fleet.link("mec-a")
        # What a key press sends for a CVM undefined after the console's snapshot: its agent refuses, unaudited.
        await app.scale_one(link, CVMRef("mec-a", "gone"), 3, 2).wait()
        await until(pilot, lambda: shown(app, "mec-a/gone", "REFUSED") > 0)
        await app.set_policy([CVMRef("mec-a", "gone")], enabled=True).wait()
        await settled(pilot)
        assert shown(app, "mec-a/gone scale REFUSED", "gone") == 1
        assert shown(app, "mec-a/gone policy REFUSED") == 1
        assert shown(app, "mec-a/gone") == 2


async def test_an_audited_refusal_is_shown_once(twins: dict[str, AgentProcess]) -> None:
    app = console(twins)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot, app)
        await select(pilot, app, "mec-a/snp")
        await pilot.press("minus")  # 2 -> 1 vCPU, the boot vCPU only
        await until(pilot, lambda: shown(app, "mec-a/snp scale 2->1 ok") == 1)
        await pilot.press("minus")  # below boot: refused, and audited by the agent
        audit = twins["mec-a"].audit
        await until(pilot, lambda: any(not json.loads(line)["ok"] for line in audit.read_text().splitlines()))
        await settled(pilot)
        refusals = [line for line in log_lines(app) if "mec-a/snp" in line and ("REFUSED" in line or "refused" in line)]
        assert len(refusals) == 1, refusals
        assert await online_vcpus(twins["mec-a"]) == 1


def test_refusals_match_in_either_order_and_unmatched_ones_are_forgotten() -> None:
    now = [0.0]
    refusals = Refusals(keep=30.0, clock=lambda: now[0])
    key = ("mec-a", "snp", "scale")
    assert refusals.replied(key) and not refusals.audited(key)  # reply first
    assert refusals.audited(key) and not refusals.replied(key)  # audit event first
    assert refusals.replied(key) and refusals.replied(key)  # two unaudited refusals: both shown
    now[0] = 31.0
    assert refusals.audited(key)  # a refusal of later: not matched with replies 31 s old
    assert not refusals.replied(key)


async def test_the_console_names_the_site_host_not_the_agents_hostname(twins: dict[str, AgentProcess]) -> None:
    app = console(twins)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot, app)
        await select(pilot, app, "mec-b/snp")
        await pilot.press("plus")
        await until(pilot, lambda: shown(app, "mec-b/snp scale 2->3 ok") == 1)
        assert await online_vcpus(twins["mec-b"]) == 3 and await online_vcpus(twins["mec-a"]) == 2
        assert shown(app, f"{AGENT_HOSTNAME}/") == 0


async def hostctl(*args: str | Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hostctl",
        *map(str, args),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_scale_and_audit_name_the_site_host(twins: dict[str, AgentProcess], tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    write_site(demo_site({name: p.socket for name, p in twins.items()}), path)
    assert await hostctl("--site", path, "scale", "mec-b/snp", "3") == (0, "mec-b/snp: 2 -> 3 vCPUs\n", "")
    assert await hostctl("--site", path, "scale", "mec-a/snp", "1") == (0, "mec-a/snp: 2 -> 1 vCPUs\n", "")
    code, out, _ = await hostctl("--site", path, "audit")
    assert code == 0
    scales = sorted(line.split(" ", 1)[1].split(" by ")[0] for line in out.splitlines())
    assert scales == ["mec-a/snp scale 2->1 ok", "mec-b/snp scale 2->3 ok"]
    code, out, _ = await hostctl("--site", path, "audit", "--json")
    assert sorted((e["host"], e["after"]) for e in map(json.loads, out.splitlines())) == [("mec-a", 1), ("mec-b", 3)]
