"""The console driven by Pilot against real agent processes; results are checked through the hosts' agents."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import psutil
import pytest
from textual.pilot import Pilot
from textual.widgets import Markdown, OptionList

from dittotui.app import DittoApp
from dittotui.screens.confirm import ConfirmScreen
from dittotui.screens.detail import DetailScreen
from dittotui.screens.help import HelpScreen
from dittotui.screens.policy import PolicyScreen
from dittotui.session import DemoSession
from dittotui.tables.cvms import CVMTable
from dittotui.tables.hosts import HostsTable
from dittotui.tables.services import ServicesTable
from hostctl.client.site import Defaults
from hostctl.demo import launcher
from hostctl.demo.site import demo_site
from hostctl.wire import rpc
from tests.support.agents import AgentProcess

HOSTS = ("mec-a", "mec-b")


@contextlib.asynccontextmanager
async def agent_processes(runtime: Path, names: Iterable[str]) -> AsyncIterator[dict[str, AgentProcess]]:
    """One running agent per host name (one SEV-SNP CVM `snp` each), stopped afterwards."""
    procs = {name: AgentProcess(runtime, name, wake_ms=0) for name in names}
    for proc in procs.values():
        await proc.start()
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[dict[str, AgentProcess]]:
    async with agent_processes(tmp_path, HOSTS) as procs:
        yield procs


def make_app(agents: dict[str, AgentProcess], **kwargs: object) -> DittoApp:
    site = demo_site({name: p.socket for name, p in agents.items()})
    site.defaults = Defaults(interval=0.2, timeout=1.0, backoff_max=0.5)
    return DittoApp(site=site, refresh=0.05, **kwargs)  # type: ignore[arg-type]


async def online_vcpus(agent: AgentProcess, cvm: str = "snp") -> int:
    """What the host itself reports, asked through its agent."""
    snapshot = await rpc.call_unix(str(agent.socket), "snapshot")
    return next(c["online_vcpus"] for c in snapshot["cvms"] if c["name"] == cvm)


async def until(pilot: Pilot[None], predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


def cell(app: DittoApp, table: type, row: str, column: str) -> str:
    value = app.query_one(table).get_cell(row, column)
    return getattr(value, "plain", value)


async def ready(pilot: Pilot[None], app: DittoApp) -> None:
    """Every host's CVM row shown and its link live (a link holds its snapshot a moment before it subscribes)."""
    await until(pilot, lambda: app.query_one(CVMTable).row_count == len(HOSTS))
    await until(pilot, lambda: all(cell(app, HostsTable, name, "state") == "live" for name in HOSTS))


async def select(pilot: Pilot[None], app: DittoApp, key: str) -> None:
    table = app.query_one(CVMTable)
    table.move_cursor(row=table.get_row_index(key))
    await pilot.pause()


async def test_plus_wakes_a_worker_on_the_host(agents: dict[str, AgentProcess]) -> None:
    app = make_app(agents)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot, app)
        await select(pilot, app, "mec-b/snp")
        assert await online_vcpus(agents["mec-b"]) == 2
        await pilot.press("plus")
        await until(pilot, lambda: "2/4" in cell(app, CVMTable, "mec-b/snp", "workers"))
        assert await online_vcpus(agents["mec-b"]) == 3
        assert await online_vcpus(agents["mec-a"]) == 2
        await pilot.press("minus")
        await until(pilot, lambda: "1/4" in cell(app, CVMTable, "mec-b/snp", "workers"))
        assert await online_vcpus(agents["mec-b"]) == 2
        log = " ".join(str(line.text).rstrip() for line in app.query_one("#events").lines)  # unwrapped
        assert "mec-b/snp scale 2->3 ok" in log and "mec-b/snp scale 3->2 ok" in log


async def policy_of(agent: AgentProcess, cvm: str = "snp") -> dict[str, object]:
    """The CVM's elastic policy as its agent reports it."""
    return await rpc.call_unix(str(agent.socket), "policy", cvm=cvm)


async def test_p_picks_and_a_toggles_the_policy_on_the_host(agents: dict[str, AgentProcess]) -> None:
    app = make_app(agents)
    async with app.run_test(size=(160, 36)) as pilot:
        await ready(pilot, app)
        await select(pilot, app, "mec-b/snp")
        assert (await policy_of(agents["mec-b"]))["enabled"] is False
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PolicyScreen))
        options = app.screen.query_one(OptionList)
        options.highlighted = next(i for i in range(options.option_count) if options.get_option_at_index(i).id == "slo")
        await pilot.press("enter")
        await until(pilot, lambda: "slo" in cell(app, CVMTable, "mec-b/snp", "elastic"))
        state = await policy_of(agents["mec-b"])
        assert state["policy"] == "slo" and state["enabled"] is False  # picking does not switch it on
        await pilot.press("a")
        await until(pilot, lambda: cell(app, CVMTable, "mec-b/snp", "elastic").startswith("●"))
        state = await policy_of(agents["mec-b"])
        assert state["enabled"] is True and state["policy"] == "slo"
        assert (await policy_of(agents["mec-a"]))["enabled"] is False
        await pilot.press("a")
        await until(pilot, lambda: cell(app, CVMTable, "mec-b/snp", "elastic").startswith("○"))
        assert (await policy_of(agents["mec-b"]))["enabled"] is False
        log = " ".join(str(line.text).rstrip() for line in app.query_one("#events").lines)  # unwrapped
        assert "mec-b/snp policy ok" in log and "(slo on)" in log and "(slo off)" in log


async def test_a_refusal_is_shown_in_the_log(agents: dict[str, AgentProcess]) -> None:
    app = make_app(agents)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot, app)
        await select(pilot, app, "mec-a/snp")
        for _ in range(2):  # 2 -> 1 vCPU (the boot vCPU only), then below boot: refused
            await pilot.press("minus")
            await pilot.pause(0.3)
        await until(pilot, lambda: any("REFUSED" in str(line.text) for line in app.query_one("#events").lines))
        assert await online_vcpus(agents["mec-a"]) == 1


async def test_readonly_console_refuses_every_change_key_before_any_request(agents: dict[str, AgentProcess]) -> None:
    app = make_app(agents, readonly=True)

    def refusals(what: str) -> int:  # the log's lines wrap at its width: join them back first
        text = " ".join(str(line.text).rstrip() for line in app.query_one("#events").lines)
        return text.count(f"read-only console: {what} refused; nothing was sent")

    async with app.run_test(size=(200, 36)) as pilot:
        await ready(pilot, app)
        await pilot.press("space", "space")  # both CVMs marked: the refusal comes before the bulk confirm
        for key, what in (
            ("plus", "wake one worker"),
            ("minus", "park one worker"),
            ("w", "wrk load"),
            ("a", "elastic policy change"),
            ("p", "elastic policy change"),
        ):
            before = refusals(what)
            await pilot.press(key)
            assert app.screen is app.screen_stack[0], f"{key} opened {app.screen}"
            assert refusals(what) == before + 1, key
        app.action_experiment()  # the command palette's security-overhead experiment runs wrk too
        await pilot.pause()
        assert app.screen is app.screen_stack[0] and refusals("the security-overhead experiment (wrk load)") == 1
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("plus")  # the detail screen's + is refused like the dashboard's
        assert refusals("wake one worker") == 2
        await pilot.pause(0.5)
        for agent in agents.values():  # no request reached an agent: it would have audited it, refused or not
            assert await online_vcpus(agent) == 2 and (await policy_of(agent))["enabled"] is False
            assert not agent.audit.exists() or agent.audit.read_text() == ""


async def test_a_killed_agent_turns_stale_and_keys_still_work(agents: dict[str, AgentProcess]) -> None:
    app = make_app(agents)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot, app)
        agents["mec-a"].kill()
        await until(pilot, lambda: cell(app, HostsTable, "mec-a", "state").startswith(("stale", "connecting")))
        assert cell(app, HostsTable, "mec-b", "state") == "live"
        started = time.monotonic()
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert time.monotonic() - started < 2
        await select(pilot, app, "mec-b/snp")
        await pilot.press("plus")
        await until(pilot, lambda: "2/4" in cell(app, CVMTable, "mec-b/snp", "workers"))
        assert await online_vcpus(agents["mec-b"]) == 3
        await until(pilot, lambda: cell(app, HostsTable, "mec-a", "state").startswith("stale"))
        await agents["mec-a"].start()
        await until(pilot, lambda: cell(app, HostsTable, "mec-a", "state") == "live")


async def test_marked_rows_scale_together_after_a_confirm(agents: dict[str, AgentProcess]) -> None:
    app = make_app(agents)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot, app)
        await select(pilot, app, "mec-a/snp")
        await pilot.press("space")
        await select(pilot, app, "mec-b/snp")
        await pilot.press("space")
        assert cell(app, CVMTable, "mec-a/snp", "mark") == "●"
        await pilot.press("plus")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause(0.3)
        assert await online_vcpus(agents["mec-a"]) == 2
        await pilot.press("plus")
        await pilot.press("y")
        await until(pilot, lambda: all("2/4" in cell(app, CVMTable, f"{h}/snp", "workers") for h in HOSTS))
        assert [await online_vcpus(agents[h]) for h in HOSTS] == [3, 3]


async def test_filter_sort_detail_and_help(agents: dict[str, AgentProcess]) -> None:
    app = make_app(agents)
    async with app.run_test(size=(120, 36)) as pilot:
        await ready(pilot, app)
        await pilot.press("slash", *"mec-b", "enter")
        await until(pilot, lambda: app.query_one(CVMTable).row_count == 1)
        await pilot.press("slash", "escape")
        await until(pilot, lambda: app.query_one(CVMTable).row_count == 2)
        await pilot.press("s")
        assert app.query_one(CVMTable).sort_column == "mark"
        await pilot.press("s")
        assert app.query_one(CVMTable).sort_column == "cvm"
        await select(pilot, app, "mec-a/snp")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await pilot.pause(0.2)
        assert "sev-snp" in str(app.screen.query_one("#facts").render())
        assert [p.id for p in app.screen.query(".latency-plot")] == ["p99-home-timeline"]
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)


async def test_j_k_g_and_shift_g_move_the_cursor_in_every_table(tmp_path: Path) -> None:
    async with agent_processes(tmp_path, ("mec-a", "mec-b", "mec-c", "mec-d")) as four:
        app = make_app(four)
        async with app.run_test(size=(120, 36)) as pilot:
            tables = [app.query_one(HostsTable), app.query_one(CVMTable), app.query_one(ServicesTable)]
            await until(pilot, lambda: [table.row_count for table in tables] == [4, 4, 4])
            for table in tables:
                table.focus()
                rows = []
                for key in ("G", "k", "g", "j", "j", "k", "down", "up", "end", "home"):
                    await pilot.press(key)
                    rows.append(table.cursor_row)
                    assert table.selected_key == table.keys[table.cursor_row]
                assert rows == [3, 2, 0, 1, 2, 1, 2, 1, 3, 0], table.id


async def test_quit_stops_the_demo_site_it_started() -> None:
    demo = DemoSession()
    app = DittoApp(demo=demo, refresh=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.query_one(CVMTable).row_count == 10, within=20)
        pids = [launcher.HostProcess(h, demo.runtime).pid() for h in ("mec-1", "mec-2", "regional-1")]
        assert all(pids)
        await pilot.press("q")
        await until(pilot, lambda: not demo.running, within=10)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert not demo.runtime.exists()


def test_bad_site_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dittotui", "--site", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == f"dittotui: {tmp_path / 'none.toml'}: no such file"


async def test_load_dialog_runs_wrk_and_keeps_the_result(agents: dict[str, AgentProcess]) -> None:
    from dittotui.screens.load import LoadScreen

    app = make_app(agents)
    async with app.run_test(size=(140, 40)) as pilot:
        await ready(pilot, app)
        await until(pilot, lambda: app.query_one(ServicesTable).row_count == len(HOSTS))
        await select(pilot, app, "mec-a/snp")
        await pilot.press("w")
        assert isinstance(app.screen, LoadScreen)
        app.screen.query_one("#duration").value = "2"
        await pilot.click("#run")
        await until(pilot, lambda: "p50" in str(app.screen.query_one("#result").render()), within=15)
        await pilot.press("escape")
        key = "mec-a/snp/home-timeline"
        await until(pilot, lambda: cell(app, ServicesTable, key, "wrk").endswith("ms"))
        assert app.wrk_results[key].requests > 0 and app.wrk_results[key].errors == 0
        assert cell(app, ServicesTable, "mec-b/snp/home-timeline", "wrk") == "-"
        services = app.query_one(ServicesTable)  # `w` on a service row aims at that service
        services.focus()
        services.move_cursor(row=services.get_row_index("mec-b/snp/home-timeline"))
        await pilot.press("w")
        assert isinstance(app.screen, LoadScreen) and app.screen.host == "mec-b"
        assert app.screen.services[0].name == "home-timeline"
        await pilot.press("escape")

    restarted = make_app(agents)  # the run history survives a restart of the console
    async with restarted.run_test(size=(140, 40)) as pilot:
        await ready(pilot, restarted)
        await until(pilot, lambda: cell(restarted, ServicesTable, key, "wrk").endswith("ms"))
        await select(pilot, restarted, "mec-a/snp")
        await pilot.press("enter")
        marks = restarted.screen.query_one("#runs-home-timeline")
        await until(pilot, lambda: "wrk " in str(marks.render()) and "(1 run in the history)" in str(marks.render()))


async def test_the_security_overhead_experiment_runs_from_the_console(agents: dict[str, AgentProcess]) -> None:
    from dittotui.screens.experiment import ExperimentScreen
    from hostctl.experiments.overhead_runs import Plan

    app = make_app(agents)
    async with app.run_test(size=(140, 44)) as pilot:
        await ready(pilot, app)
        app.action_experiment()
        await until(pilot, lambda: isinstance(app.screen, ExperimentScreen))
        screen = app.screen
        await pilot.pause()
        assert "5 rounds of wrk -t2 -d5s" in str(screen.query_one("#question").render())  # the command's defaults
        screen.plan = Plan(scripts=("home-timeline",), connections=(4,), rounds=2, threads=1, duration_s=1, seed=1)
        await pilot.pause()
        await pilot.click("#run")
        await until(pilot, lambda: "saved:" in str(screen.query_one("#step").render()), within=30)
        [md] = (app.runs.path.parent / "experiments").glob("*.md")
        saved = sorted(p.name.removeprefix(md.stem) for p in md.parent.iterdir())
        assert saved == ["-runs.csv", ".csv", ".md", ".svg"]  # runs, summary, report, bars
        table = md.read_text()
        # these agents serve HTTP on their SNP CVM only: the others are left out, and why
        assert "| SEV-SNP | mec-a/snp |" in table and "plain left out: no running CVM of this type serves" in table
        shown = screen.query_one("#report", Markdown).source
        assert shown == table and re.search(r"\| \d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\] \|", shown)  # with intervals
        records = [r for r in app.runs.read().records if r.why.startswith("experiment")]
        assert [r.labels for r in records] == [
            {"security": "sev-snp", "round": "1"},
            {"security": "sev-snp", "round": "2"},
        ]
        assert all(r.result.requests > 0 for r in records)
