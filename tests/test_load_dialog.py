"""The console's wrk dialog driven by Pilot against real agents: script and load host, the site's bounds, cancel
(wrk is killed, nothing recorded), and the run history on disk."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, ProgressBar, Select

from dittotui.app import DittoApp
from dittotui.screens.load import LoadScreen
from dittotui.tables.cvms import CVMTable
from hostctl.client.site import Defaults, LoadBounds, LoadGenerator
from hostctl.demo.site import demo_site
from hostctl.load.runs import RunLog
from tests.support.agents import AgentProcess
from tests.test_console import select, until

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentProcess]:
    proc = AgentProcess(tmp_path, "mec-a", wake_ms=0)
    await proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def make_app(agent: AgentProcess, bounds: LoadBounds | None = None) -> DittoApp:
    site = demo_site({agent.name: agent.socket})
    site.defaults = Defaults(interval=0.2, timeout=1.0, backoff_max=0.5)
    site.load_generators = [LoadGenerator(name="edge-1", ssh="ops@edge-1.invalid")]
    site.load = bounds or LoadBounds()
    return DittoApp(site=site, refresh=0.05)


async def open_dialog(pilot: Pilot[None], app: DittoApp) -> LoadScreen:
    await until(pilot, lambda: app.fleet is not None and app.fleet.links["mec-a"].snapshot is not None)
    await until(pilot, lambda: bool(app.fleet.links["mec-a"].snapshot.services))  # type: ignore[union-attr]
    await select(pilot, app, "mec-a/snp")
    await pilot.press("w")
    assert isinstance(app.screen, LoadScreen)
    return app.screen


async def ready_one(pilot: Pilot[None], app: DittoApp) -> None:
    await until(pilot, lambda: app.query_one(CVMTable).row_count == 1)


def wrk_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "wrk"]


async def test_a_run_with_a_chosen_script_is_kept_in_the_history(agent: AgentProcess) -> None:
    app = make_app(agent)
    async with app.run_test(size=(140, 40)) as pilot:
        await ready_one(pilot, app)
        dialog = await open_dialog(pilot, app)
        assert dialog.query_one("#load-host", Select).value == "this machine"
        assert dialog.query_one("#script", Select).value == "home-timeline"
        dialog.query_one("#script", Select).value = "user-timeline"
        dialog.query_one("#duration", Input).value = "2"
        await pilot.click("#run")
        await until(pilot, lambda: "p99" in str(dialog.query_one("#result").render()), within=20)
        assert dialog.query_one("#progress", ProgressBar).progress == 2
        assert app.wrk_results["mec-a/snp/home-timeline"].requests > 0
    [record] = RunLog().read().records  # under the test's XDG_STATE_HOME
    assert (record.key, record.script, record.load_host, record.why) == (
        "mec-a/snp/home-timeline",
        "user-timeline",
        "this machine",
        "console",
    )
    assert record.result.errors == 0 and record.result == app.wrk_results[record.key]


async def test_cancel_kills_wrk_and_records_nothing(agent: AgentProcess) -> None:
    app = make_app(agent)
    async with app.run_test(size=(140, 40)) as pilot:
        await ready_one(pilot, app)
        dialog = await open_dialog(pilot, app)
        dialog.query_one("#duration", Input).value = "60"
        await pilot.click("#run")
        await until(pilot, lambda: dialog.query_one("#progress", ProgressBar).progress > 0 and bool(wrk_children()))
        assert not dialog.query_one("#cancel", Button).disabled
        await pilot.press("escape")  # escape during a run stops wrk and keeps the dialog open
        await until(pilot, lambda: "cancelled" in str(dialog.query_one("#result").render()))
        assert app.screen is dialog and dialog.query_one("#cancel", Button).disabled
        await until(pilot, lambda: not wrk_children())
        assert "mec-a/snp/home-timeline" not in app.wrk_results
        await pilot.press("escape")
        assert not isinstance(app.screen, LoadScreen)
    assert RunLog().read().records == []


async def test_the_sites_bounds_limit_the_dialog(agent: AgentProcess) -> None:
    app = make_app(agent, LoadBounds(max_connections=8, max_duration_s=5))
    async with app.run_test(size=(140, 40)) as pilot:
        await ready_one(pilot, app)
        dialog = await open_dialog(pilot, app)
        assert dialog.query_one("#connections", Input).value == "8"
        assert dialog.query_one("#duration", Input).value == "5"
        dialog.query_one("#connections", Input).value = "9"
        await pilot.click("#run")
        await pilot.pause()
        assert "connections must be 1..8 and seconds 1..5" in str(dialog.query_one("#result").render())
        assert not wrk_children() and app.wrk_results == {}


async def test_an_unreachable_load_host_is_a_clear_message(agent: AgentProcess) -> None:
    app = make_app(agent)
    async with app.run_test(size=(140, 40)) as pilot:
        await ready_one(pilot, app)
        dialog = await open_dialog(pilot, app)
        dialog.query_one("#load-host", Select).value = "edge-1"
        dialog.query_one("#duration", Input).value = "1"
        await pilot.click("#run")
        await until(
            pilot,
            lambda: (
                "edge-1" in str(dialog.query_one("#result").render())
                and "nothing ran" in str(dialog.query_one("#result").render())
            ),
            within=15,
        )
    assert RunLog().read().records == []
