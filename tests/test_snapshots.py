"""SVG snapshots of the console's main screens (pytest-textual-snapshot), against real demo agents.

The agents run with background traffic off, so every CPU % stays 0.0 and nothing on screen moves; the demo CVMs'
UUIDs are uuid5 of their names, service ports never appear on these screens, and the event log's clock is fixed.

Baselines live in `tests/__snapshots__/test_snapshots/`; after a deliberate change of the screens, look at the new
pictures and accept them with `.venv/bin/python -m pytest tests/test_snapshots.py --snapshot-update`.

How it runs: `snap_compare` calls `App.run()`, i.e. `asyncio.run()` -- a fresh event loop, which must not be
started inside a running one, and which clears the thread's current event loop when it ends. So the tests are
plain (sync) functions and each screenshot is taken in a worker thread: the session-scoped pytest-asyncio loop
(which starts and stops the agents) is never touched by the app's loop.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Markdown, RichLog

from dittotui.app import DittoApp
from dittotui.screens.confirm import ConfirmScreen
from dittotui.screens.help import HelpScreen
from dittotui.screens.load import LoadScreen
from dittotui.tables.cvms import CVMTable
from dittotui.tables.hosts import HostsTable
from dittotui.tables.services import ServicesTable
from hostctl.client.link import LinkState
from hostctl.client.site import load
from hostctl.demo import launcher

# The demo site's shape (hostctl/data/demo.toml, kept here so a tweak to the demo does not move these pictures),
# with background traffic and the agents' latency probes off: no request is ever served, so CPU % is 0.0
# everywhere, always, and no latency is measured.
CONFIG = """
sample_interval = 1.0
probe_rate = 0.0
jitter = 0.0

[traffic]
base_rps = 0.0
peak_rps = 0.0

[[endpoints]]
name = "home-timeline"
path = "/wrk2-api/home-timeline/read"
service_ms = 4.0
weight = 0.6

[[endpoints]]
name = "user-timeline"
path = "/wrk2-api/user-timeline/read"
service_ms = 5.0
weight = 0.3

[[endpoints]]
name = "compose-post"
path = "/wrk2-api/post/compose"
service_ms = 9.0
weight = 0.1

[[hosts]]
name = "mec-1"
cpus = 16
memory_gib = 64
  [[hosts.cvms]]
  name = "social-snp"
  security = "sev-snp"
  boot_vcpus = 1
  max_vcpus = 9
  online_vcpus = 2
  [[hosts.cvms]]
  name = "social-sev"
  security = "sev"
  boot_vcpus = 1
  max_vcpus = 9
  online_vcpus = 2
  [[hosts.cvms]]
  name = "social-plain"
  security = "none"
  boot_vcpus = 1
  max_vcpus = 9
  online_vcpus = 2

[[hosts]]
name = "mec-2"
cpus = 16
memory_gib = 64
  [[hosts.cvms]]
  name = "media-snp"
  security = "sev-snp"
  policy = 0x30000
  boot_vcpus = 1
  max_vcpus = 5
  online_vcpus = 2
  [[hosts.cvms]]
  name = "media-es"
  security = "sev-es"
  boot_vcpus = 1
  max_vcpus = 5
  [[hosts.cvms]]
  name = "cache-plain"
  security = "none"
  boot_vcpus = 1
  max_vcpus = 5

[[hosts]]
name = "regional-1"
role = "regional"
cpus = 64
memory_gib = 256
  [[hosts.cvms]]
  name = "social-snp-big"
  security = "sev-snp"
  boot_vcpus = 2
  max_vcpus = 18
  online_vcpus = 4
  [[hosts.cvms]]
  name = "gateway-plain"
  security = "none"
  boot_vcpus = 1
  max_vcpus = 5
  online_vcpus = 2
"""

CLOCK = datetime(2026, 11, 23, 3, 0, 0)
# The first tick comes a whole second after mount; local links are live long before, so every host's rows and
# its "live" line arrive in one tick, in site order. (At 0.25 s a busy machine could split them over two ticks,
# and rows are appended in arrival order.)
REFRESH = 1.0
SETTLE_TIMEOUT = 20.0

Snap = Callable[..., bool]


@pytest.fixture(scope="module")
async def site_file(tmp_path_factory: pytest.TempPathFactory):
    """The demo hosts above as real agent processes, and the site file that reaches them (stopped afterwards)."""
    runtime = tmp_path_factory.mktemp("snapshots")
    config = runtime / "demo.toml"
    config.write_text(CONFIG)
    try:
        await launcher.up(config, runtime)  # waits until every agent answers; writes demo_site(...) to site.toml
        yield launcher.site_file(runtime)
    finally:
        await launcher.down(runtime)


@pytest.fixture
def console(site_file: Path) -> DittoApp:
    app = DittoApp(site=load(site_file), refresh=REFRESH)
    app.clock = lambda: CLOCK
    return app


def settled(app: DittoApp) -> str | None:
    """None when every host is live and every table shows it all; else what is still missing."""
    links = app.links
    if not links:
        return "no links yet"
    if waiting := [link.name for link in links if link.state is not LinkState.FRESH or link.snapshot is None]:
        return f"hosts not live: {waiting}"
    cvms = [f"{link.name}/{c.name}" for link in links for c in link.snapshot.cvms]  # type: ignore[union-attr]
    services = sum(len(link.snapshot.services) for link in links)  # type: ignore[union-attr]
    shown = (
        app.query_one(HostsTable).row_count,
        app.query_one(CVMTable).row_count,
        app.query_one(ServicesTable).row_count,
    )
    if shown != (len(links), len(cvms), services):
        return f"rows shown {shown}, expected {(len(links), len(cvms), services)}"
    return None


def unsteady(app: DittoApp) -> str | None:
    """What would make the picture differ from run to run, if anything.

    Rows and "live" lines are in site order unless the hosts came up over more than one tick; CPU % moves if
    anything serves requests.
    """
    links = app.links
    expected = [f"{link.name}/{c.name}" for link in links for c in link.snapshot.cvms]  # type: ignore[union-attr]
    rows = app.query_one(CVMTable).keys
    lines = [strip.text.rstrip() for strip in app.query_one("#events", RichLog).lines]
    live = [f"{CLOCK:%H:%M:%S} {link.name}: live" for link in links]
    if rows != expected or lines != live:
        return f"hosts came up over several ticks: rows {rows}, log {lines}"
    busy = {f"{link.name}/{c.name}": c.cpu_percent for link in links for c in link.snapshot.cvms if c.cpu_percent}  # type: ignore[union-attr]
    busy |= {link.name: link.snapshot.host.cpu_percent for link in links if link.snapshot.host.cpu_percent}  # type: ignore[union-attr]
    if busy:
        return f"CPU % is not 0.0 (something serves requests: traffic, probes?): {busy}"
    return None


def waiting_for_the_site(problems: list[str], *then: Callable[[Pilot], Awaitable[None]]) -> Callable:
    """A `run_before`: wait until the site is fully shown (and one more tick has run), then do `then`."""

    async def run_before(pilot: Pilot) -> None:
        app: DittoApp = pilot.app  # type: ignore[assignment]
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (missing := settled(app)) is not None:
            if time.monotonic() > deadline:
                problems.append(f"the site was not shown within {SETTLE_TIMEOUT:.0f} s: {missing}")
                return
            await pilot.pause(0.05)
        await pilot.pause(REFRESH + 0.1)  # one more tick: nothing may change any more
        if problem := unsteady(app):
            problems.append(problem)
        for step in then:
            await step(pilot)

    return run_before


def snapshot(
    snap_compare: Snap,
    app: DittoApp,
    *then: Callable[[Pilot], Awaitable[None]],
    terminal_size: tuple[int, int] = (120, 36),
) -> None:
    """Compare `app`, once settled and after `then`, with its baseline SVG (see the module docstring)."""
    problems: list[str] = []
    with ThreadPoolExecutor(1, thread_name_prefix="snapshot") as pool:
        same = pool.submit(
            snap_compare, app, terminal_size=terminal_size, run_before=waiting_for_the_site(problems, *then)
        ).result()
    assert not problems, problems
    assert same


async def wait_for(pilot: Pilot, what: str, ready: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not ready():
        assert time.monotonic() < deadline, f"no {what} within {within:g} s"
        await pilot.pause(0.05)


async def press_help(pilot: Pilot) -> None:
    await pilot.press("question_mark")
    await wait_for(pilot, "help screen", lambda: isinstance(pilot.app.screen, HelpScreen))
    # The Markdown document is built after the screen mounts.
    await wait_for(pilot, "help text", lambda: bool(pilot.app.screen.query_one(Markdown).children))


async def mark_two_then_plus(pilot: Pilot) -> None:
    await pilot.press("space", "space", "plus")
    await wait_for(pilot, "confirm dialog", lambda: isinstance(pilot.app.screen, ConfirmScreen))


async def press_w(pilot: Pilot) -> None:
    await pilot.press("w")  # the dialog only: no wrk run
    await wait_for(pilot, "load dialog", lambda: isinstance(pilot.app.screen, LoadScreen))


def test_dashboard(snap_compare: Snap, console: DittoApp) -> None:
    """Hosts, CVMs, services and the event log of the three-host demo site, all live and idle."""
    snapshot(snap_compare, console)


def test_help(snap_compare: Snap, console: DittoApp) -> None:
    """`?`: every key and what the columns mean."""
    snapshot(snap_compare, console, press_help)


def test_confirm(snap_compare: Snap, console: DittoApp) -> None:
    """Two CVMs marked with space, then `+`: the bulk action asks first."""
    snapshot(snap_compare, console, mark_two_then_plus)


def test_load_dialog(snap_compare: Snap, console: DittoApp) -> None:
    """`w`: the wrk dialog for the CVM under the cursor, before any run."""
    snapshot(snap_compare, console, press_w)


def test_dashboard_80x24(snap_compare: Snap, console: DittoApp) -> None:
    """The dashboard in a small terminal."""
    snapshot(snap_compare, console, terminal_size=(80, 24))
