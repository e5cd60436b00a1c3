"""The console on the lab site, driven by Pilot: a key press wakes or parks a worker in a real guest, checked against
the guest's own view (`guest-get-vcpus`), not the console's model."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import RichLog

from dittotui import lab_session
from dittotui.app import DittoApp
from dittotui.screens.detail import DetailScreen
from dittotui.tables.cvms import CVMTable
from dittotui.tables.hosts import HostsTable
from hostctl.client.site import load as load_site
from hostctl.lab.launcher import HOST
from tests.support import ROOT
from tests.support.lab import GUESTS, GuestView, LabSite, guest_view, libvirt_live_vcpus

WITHIN = 60.0  # the first snapshot of three TCG guests, or one scale through the guest agent, on a busy machine


async def until(pilot: Pilot[None], predicate: Callable[[], bool], within: float = WITHIN) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"condition not reached within {within:g} s"
        await pilot.pause(0.05)


def cell(app: DittoApp, table: type, row: str, column: str) -> str:
    value: object = app.query_one(table).get_cell(row, column)
    return str(getattr(value, "plain", value))


async def online_in_guest(domain: str, expected: int, within: float = WITHIN) -> GuestView:
    """The guest's own view once it shows `expected` online vCPUs (asked off the app's loop); the last view seen
    otherwise, for the assertion to show."""
    deadline = time.monotonic() + within
    while True:
        view = await asyncio.to_thread(guest_view, domain)
        if view.online == expected or time.monotonic() > deadline:
            return view
        await asyncio.sleep(0.2)


async def test_plus_and_minus_wake_and_park_a_worker_in_the_guest(lab: LabSite) -> None:
    cvm = lab.cvm("snp-2")
    key = f"{HOST}/{cvm}"
    before = await asyncio.to_thread(guest_view, cvm)
    assert before.present == 4 and before.online < 4, before
    found = lab_session.running(lab.runtime)  # what `dittotui --lab --lab-runtime DIR` attaches to
    assert found is not None
    session = lab_session.attach(found)
    app = DittoApp(site=session.site, site_label=session.label, refresh=0.1)
    async with app.run_test(size=(160, 40)) as pilot:
        assert (
            app.sub_title.startswith("lab site: real QEMU guests under TCG") and "left running on quit" in app.sub_title
        )
        hosts = app.query_one(HostsTable)
        await until(pilot, lambda: HOST in hosts.keys and cell(app, HostsTable, HOST, "state") == "live")
        table = app.query_one(CVMTable)
        await until(pilot, lambda: {f"{HOST}/{lab.cvm(n)}" for n in GUESTS} <= set(table.keys))
        assert cell(app, CVMTable, key, "security") == "sev-snp"
        assert cell(app, CVMTable, f"{HOST}/{lab.cvm('plain')}", "security") == "none"
        workers = f"{before.online - 1}/3"
        await until(pilot, lambda: workers in cell(app, CVMTable, key, "workers"))

        table.move_cursor(row=table.get_row_index(key))
        await pilot.pause()
        await pilot.press("plus")
        await until(pilot, lambda: f"{before.online}/3" in cell(app, CVMTable, key, "workers"))
        assert await online_in_guest(cvm, before.online + 1) == GuestView(present=4, online=before.online + 1)
        assert await asyncio.to_thread(libvirt_live_vcpus, cvm) == 4, "the guest driver must never hotplug"

        await pilot.press("minus")
        await until(pilot, lambda: workers in cell(app, CVMTable, key, "workers"))
        assert await online_in_guest(cvm, before.online) == before

        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen))
        facts = str(app.screen.query_one("#facts").render())
        assert "security sev-snp" in facts and "via driver 'guest'" in facts, facts
        await pilot.press("escape")

        log = " ".join(str(line.text).rstrip() for line in app.query_one("#events", RichLog).lines)  # unwrapped
        n = before.online  # the audit line names the host as its agent does (this machine's name), not the site
        assert f"/{cvm} scale {n}->{n + 1} ok" in log and f"/{cvm} scale {n + 1}->{n} ok" in log, log
        await app.action_quit()


async def test_a_read_only_console_changes_nothing_in_the_guest(lab: LabSite) -> None:
    cvm = lab.cvm("snp-1")
    key = f"{HOST}/{cvm}"
    before = await asyncio.to_thread(guest_view, cvm)
    app = DittoApp(site=load_site(lab.site), readonly=True, refresh=0.1)
    async with app.run_test(size=(160, 40)) as pilot:
        assert "read-only" in app.sub_title
        table = app.query_one(CVMTable)
        await until(pilot, lambda: key in table.keys)
        table.move_cursor(row=table.get_row_index(key))
        await pilot.pause()
        await pilot.press("plus")
        events = app.query_one("#events", RichLog)
        refused = "read-only console: wake one worker refused"
        await until(pilot, lambda: refused in " ".join(str(line.text).rstrip() for line in events.lines))
        await app.action_quit()
    assert await asyncio.to_thread(guest_view, cvm) == before


def test_dittotui_lab_finds_the_running_lab(lab: LabSite, tmp_path: Path) -> None:
    found = lab_session.running(lab.runtime)
    assert found is not None and found.site == lab.site
    session = lab_session.attach(found)
    assert not session.started, "a lab this session did not start must be left running"
    assert [h.name for h in session.site.hosts] == [HOST]
    assert lab_session.running(tmp_path) is None, "no lab runs in an empty directory: --lab starts one"


def dittotui(*args: str | Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dittotui", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)


def test_lab_with_site_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = dittotui("--lab", "--site", tmp_path / "site.toml")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "dittotui: --lab and --site cannot go together: the lab site has its own site file"
    ]


def test_a_lab_runtime_that_is_a_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    runtime = tmp_path / "not-a-dir"
    runtime.write_text("")
    done = dittotui("--lab", "--lab-runtime", runtime)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [f"dittotui: runtime directory {runtime} is not a directory"]


def test_a_lab_that_cannot_start_is_one_line_and_exit_2() -> None:
    closed = Path(tempfile.mkdtemp())  # mode 0700: QEMU's user cannot enter it, so `lab up` refuses it
    try:
        runtime = closed / "run"
        done = dittotui("--lab", "--lab-runtime", runtime)
        assert (done.returncode, "Traceback" in done.stderr) == (2, False), done.stderr
        (line,) = done.stderr.splitlines()
        assert line == (
            f"dittotui: the lab did not start: runtime directory {runtime}: QEMU's user cannot enter {closed} "
            f"(mode 0700); pass --lab-runtime under {tempfile.gettempdir()}"
        ) or line.startswith("dittotui: libvirt already has lab domains ditto-lab-"), line  # another lab runs here
        assert "starting one for this session" in done.stdout or "already has" in line
        assert not runtime.exists()
    finally:
        shutil.rmtree(closed, ignore_errors=True)


def test_a_lab_that_is_not_serving_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "lab.json").write_text('{"prefix": "ditto-lab-"}\n')  # what `lab up` writes first
    done = dittotui("--lab", "--lab-runtime", tmp_path, "--readonly")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"dittotui: the lab in {tmp_path} is not serving (its host agent is not running; still starting?): "
        "see hostctl lab status, or take it down with hostctl lab down"
    ]
