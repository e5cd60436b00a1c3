"""`make screenshots`: drive the real console headless on the embedded demo site and export SVG screenshots.

Starts `DittoApp(demo=DemoSession())` under `App.run_test`, waits until every demo host is live and reports CPU
use, then presses keys the way an operator would and writes `screenshots/*.svg`:

    dashboard.svg        the main screen after waking a worker (the audit log shows the action)
    detail.svg           one CVM's facts and its worker/CPU history (~10 s, with a worker step)
    load.svg             the wrk dialog after a short real 3 s run (if wrk is installed)
    help.svg             the help screen (`?`)
    confirm.svg          two CVMs marked with space, then `+`: the bulk-action confirmation
    policy.svg           `p` on a CVM: the elastic policies its host's agent offers
    palette.svg          the command palette (ctrl+p)
    dashboard-80x24.svg  the main screen in an 80x24 terminal

The demo site is stopped at the end (`action_quit`), and again on any error, so no demo process is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input, Label, RichLog

from dittotui.app import DittoApp
from dittotui.screens.confirm import ConfirmScreen
from dittotui.screens.detail import DetailScreen
from dittotui.screens.help import HelpScreen
from dittotui.screens.load import LoadScreen
from dittotui.screens.policy import PolicyScreen
from dittotui.session import DemoSession
from dittotui.tables.cvms import CVMTable
from hostctl.client.link import LinkState
from hostctl.client.ref import CVMRef
from hostctl.wire import model

ROOT = Path(__file__).resolve().parents[1]
SIZE = (140, 40)
CVM = "mec-1/social-snp"  # the CVM the screenshots act on
ELASTIC_CVM = "regional-1/social-snp-big"  # the CVM whose elastic policy is switched on (not scaled by hand)
HISTORY_SECONDS = 10.0  # how much history the detail plots show
LOAD_SECONDS = 3


def log(message: str) -> None:
    print(f"screenshots: {message}", flush=True)


async def wait_until(pilot: Pilot[None], what: str, ready: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {within:.0f} s")
        await pilot.pause(0.1)


def events_text(app: DittoApp) -> str:
    return "\n".join(strip.text for strip in app.query_one("#events", RichLog).lines)


def live_with_cpu(app: DittoApp) -> bool:
    """Every host live, every CVM row shown, and CPU samples in (some background traffic measured)."""
    links, snapshots = app.links, app.snapshots()
    if not links or len(snapshots) < len(links) or any(link.state is not LinkState.FRESH for link in links):
        return False
    cvms = [(host, c) for host, snapshot in snapshots.items() for c in snapshot.cvms]
    if app.query_one(CVMTable).row_count < len(cvms):
        return False
    samples = [len(app.trends.of(f"{host}/{c.name}").cpu) for host, c in cvms]
    return min(samples) >= 3 and any(c.cpu_percent > 0 for _host, c in cvms)


def cvm_of(app: DittoApp, key: str) -> model.CVM:
    """CVM `host/name` as the console last heard of it."""
    ref = CVMRef.parse(key)
    link = app.link_of(ref)
    cvm = link.cvm(ref.cvm) if link is not None else None
    if cvm is None:
        raise LookupError(f"{key} is not in its host's snapshot")
    return cvm


def elastic_on(app: DittoApp, key: str) -> bool:
    elastic = cvm_of(app, key).elastic
    return elastic is not None and elastic.enabled


def online_vcpus(app: DittoApp, key: str) -> int:
    return cvm_of(app, key).online_vcpus


async def move_to(pilot: Pilot[None], key: str) -> None:
    table = pilot.app.query_one(CVMTable)
    table.focus()
    table.move_cursor(row=table.get_row_index(key))
    await pilot.pause()


async def scale_up(pilot: Pilot[None], key: str) -> None:
    """`+` on `key`; returns once the agent reports the new vCPU count."""
    app = pilot.app
    assert isinstance(app, DittoApp)
    before = online_vcpus(app, key)
    await move_to(pilot, key)
    await pilot.press("plus")
    await wait_until(pilot, f"{key} to scale", lambda: online_vcpus(app, key) == before + 1, within=15)


async def shoot(pilot: Pilot[None], out: Path, name: str) -> None:
    await pilot.pause(0.3)  # let the last tick and any layout settle
    await pilot.wait_for_scheduled_animations()
    path = pilot.app.save_screenshot(name, str(out))
    log(f"wrote {Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else path}")


async def run_load(pilot: Pilot[None], screen: LoadScreen) -> None:
    """A short real wrk run from the dialog: seconds set to LOAD_SECONDS, then Run; waits for the result."""
    screen.query_one("#duration", Input).value = str(LOAD_SECONDS)
    await pilot.pause(0.1)
    await pilot.click("#run")
    result = screen.query_one("#result", Label)
    log(f"running wrk for {LOAD_SECONDS} s...")
    await wait_until(pilot, "the wrk result", lambda: " req/s " in str(result.content), within=LOAD_SECONDS + 20)


async def open_load(pilot: Pilot[None]) -> LoadScreen:
    await pilot.press("w")
    await wait_until(pilot, "the load dialog", lambda: isinstance(pilot.app.screen, LoadScreen))
    screen = pilot.app.screen
    assert isinstance(screen, LoadScreen)
    return screen


async def take(out: Path, run_wrk: bool) -> None:
    demo = DemoSession()
    app = DittoApp(demo=demo)
    try:
        async with app.run_test(size=SIZE) as pilot:
            started = time.monotonic()
            log("starting the embedded demo site...")
            await wait_until(pilot, "every host live with CPU data", lambda: live_with_cpu(app), within=45)
            log(f"all {len(app.links)} hosts live after {time.monotonic() - started:.1f} s")

            # An elastic policy: pick it with `p` (shot), switch it on with `a`; its decisions then show on the
            # dashboard.
            await move_to(pilot, ELASTIC_CVM)
            await pilot.press("p")
            await wait_until(pilot, "the policy dialog", lambda: isinstance(app.screen, PolicyScreen))
            await pilot.pause(0.3)
            await shoot(pilot, out, "policy.svg")
            await pilot.press("enter")
            await pilot.pause(0.3)
            await pilot.press("a")
            await wait_until(pilot, "the policy switched on", lambda: elastic_on(app, ELASTIC_CVM), within=10)

            # Build up history for the detail plots: one worker woken now, another half way through.
            history_start = time.monotonic()
            await scale_up(pilot, CVM)
            await wait_until(pilot, "the audit event", lambda: "scale" in events_text(app), within=10)

            # Meanwhile: the help screen and the command palette.
            await pilot.press("question_mark")
            await wait_until(pilot, "the help screen", lambda: isinstance(app.screen, HelpScreen))
            await shoot(pilot, out, "help.svg")
            await pilot.press("escape")

            await pilot.press("ctrl+p")
            await pilot.pause(0.3)
            await pilot.press(*"worker")
            await shoot(pilot, out, "palette.svg")
            await pilot.press("escape")
            await pilot.pause(0.2)

            await asyncio.sleep(max(0.0, HISTORY_SECONDS / 2 - (time.monotonic() - history_start)))
            await scale_up(pilot, CVM)
            await asyncio.sleep(max(0.0, HISTORY_SECONDS - (time.monotonic() - history_start)))

            await move_to(pilot, CVM)
            await shoot(pilot, out, "dashboard.svg")

            await pilot.press("enter")
            await wait_until(pilot, "the detail screen", lambda: isinstance(app.screen, DetailScreen))
            await pilot.pause(1.2)  # one refresh of the plots after opening
            await shoot(pilot, out, "detail.svg")
            await pilot.press("escape")
            await pilot.pause(0.2)

            # Bulk action: mark two CVMs, `+` asks first; answer no and unmark them again.
            await move_to(pilot, CVM)
            await pilot.press("space", "space", "plus")
            await wait_until(pilot, "the confirm dialog", lambda: isinstance(app.screen, ConfirmScreen))
            await shoot(pilot, out, "confirm.svg")
            await pilot.press("n")
            await pilot.pause(0.2)
            await move_to(pilot, CVM)
            await pilot.press("space", "space")
            await move_to(pilot, CVM)

            # The wrk dialog, after a short real run when wrk is installed.
            screen = await open_load(pilot)
            if run_wrk and shutil.which("wrk"):
                await run_load(pilot, screen)
            else:
                log("wrk not run (not installed, or --no-wrk): the dialog is shown before a run")
            await shoot(pilot, out, "load.svg")
            await screen.dismiss()
            await pilot.pause(0.3)

            await move_to(pilot, CVM)
            await pilot.resize_terminal(80, 24)
            await pilot.pause(0.5)
            await move_to(pilot, CVM)
            await shoot(pilot, out, "dashboard-80x24.svg")

            log("stopping the demo site...")
            await app.action_quit()
    finally:
        await demo.stop()  # after an error: leave no demo process behind (and always: its runtime directory)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "screenshots", help="directory for the SVGs")
    p.add_argument("--no-wrk", dest="wrk", action="store_false", help="show the load dialog without a wrk run")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    asyncio.run(take(args.out, args.wrk))
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
