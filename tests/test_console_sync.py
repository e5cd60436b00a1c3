"""The console's tables after any mix of updates equal a whole rebuild: a host whose CVMs neither came nor went is
synced by the records that changed alone, and every other change (CVMs coming or going, staleness, the filter,
marks) brings its whole host. Updates are applied by real links (`HostLink._on_notification`, as the links' thread
applies them) to the running console, whose own links are stopped so that only this test speaks for the hosts."""

from __future__ import annotations

import contextlib
import gc
import random
from pathlib import Path

import msgspec
import pytest
from textual.widgets import Input

from dittotui.app import DittoApp
from dittotui.tables.cvms import CVMTable, cvm_rows
from hostctl.client.link import HostLink, LinkState
from hostctl.demo.site import demo_site
from hostctl.wire.decode import Update
from hostctl.wire.model import CVM, DomainState, Event, Host, Latency, Service, Snapshot
from hostctl.wire.security import SecurityType

NAMES = [f"c{i}" for i in range(8)]


def cvm(rng: random.Random, name: str) -> CVM:
    state = DomainState.PAUSED if rng.random() < 0.2 else DomainState.RUNNING
    online = rng.randint(1, 5)
    return CVM(name, f"uuid-{name}", state, SecurityType.SEV_SNP, 0x30000, 1, 5, online, cpu_percent=rng.random() * 100)


def shown(table: CVMTable) -> dict[str, list[str]]:
    return {key: [str(table.get_cell(key, c.key)) for c in table.COLUMNS] for key in table.keys}


def expected(app: DittoApp, links: list[HostLink]) -> dict[str, list[str]]:
    """What a whole rebuild of every host shows, rendered as the table renders it."""
    rows = {}
    for link in links:
        rows |= cvm_rows(link, filter_text=app.filter_text, marks=app.marks)
    return {key: [str(c.render(row[i])) for i, c in enumerate(CVMTable.COLUMNS)] for key, row in rows.items()}


@pytest.mark.parametrize("seed", range(3))
async def test_rows_after_any_mix_of_updates_equal_a_whole_rebuild(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    app = DittoApp(site=demo_site({"mec-a": tmp_path / "a.sock", "mec-b": tmp_path / "b.sock"}), refresh=3600)
    async with app.run_test(size=(160, 50)) as pilot:
        assert app.fleet is not None
        await app.fleet.stop()
        links = list(app.fleet.links.values())
        ts = 1.0e9
        for link in links:
            link.snapshot = Snapshot(Host(link.name, "test:///x", 8, 4096), [cvm(rng, n) for n in NAMES[:5]], ts=ts)
            link._fresh()
        partial = 0
        for step in range(200):
            link = rng.choice(links)
            assert link.snapshot is not None
            have = [c.name for c in link.snapshot.cvms]
            roll = rng.random()
            ts += 1
            if roll < 0.6:  # some records replaced
                partial += 1
                changed = {n: cvm(rng, n) for n in rng.sample(have, k=rng.randint(1, len(have)))}
                link._on_notification("update", Update(seq=step, ts=ts, cvms=changed))
            elif roll < 0.7:  # a CVM comes or goes
                absent = [n for n in NAMES if n not in have]
                if absent and (len(have) < 2 or rng.random() < 0.5):
                    new = rng.choice(absent)
                    link._on_notification("update", Update(seq=step, ts=ts, cvms={new: cvm(rng, new)}))
                else:
                    link._on_notification("update", Update(seq=step, ts=ts, removed=[rng.choice(have)]))
            elif roll < 0.8:  # stale, or fresh again
                if link.state is LinkState.FRESH:
                    link._set_state(LinkState.STALE, "no data for 2.1 s")
                else:
                    link._fresh()
            elif roll < 0.9:
                app.query_one("#filter", Input).value = rng.choice(["", "paused", "mec-b", "c1", "running"])
                await pilot.pause()
            elif app.cvm_table.row_count:
                app.cvm_table.move_cursor(row=rng.randrange(app.cvm_table.row_count))
                app.action_mark()
            app.tick()
            while app._due:  # hosts a busy tick left for the next (its budget spent), as the app's timer would
                app.tick()
            assert shown(app.cvm_table) == expected(app, links), step
        assert partial > 100


async def test_an_action_shows_its_host_at_once_and_leaves_services_and_other_hosts_to_the_tick(tmp_path: Path) -> None:
    """The audit event of an action (a key's scale, a policy's) brings its host's row and CVM rows up to date at once,
    without waiting for the tick; what else arrived meanwhile, a service's latency or another host's CVMs, waits for
    the next tick, so the frame that shows the action paints little else. The tick then shows everything."""
    rng = random.Random(3)
    app = DittoApp(site=demo_site({"mec-a": tmp_path / "a.sock", "mec-b": tmp_path / "b.sock"}), refresh=3600)
    async with app.run_test(size=(160, 50)):
        assert app.fleet is not None
        await app.fleet.stop()
        a, b = links = list(app.fleet.links.values())

        def service(p99: float) -> Service:
            return Service("home", "c0", "http://x/", {"10s": Latency(10, count=100, p50=p99 / 2, p99=p99)})

        for link in links:
            link.snapshot = Snapshot(Host(link.name, "test:///x", 8, 4096), [cvm(rng, n) for n in NAMES[:3]], ts=1e9)
            link.snapshot.services = [service(20.0)]
            link._fresh()

        def tick() -> None:  # until no host is left for a later tick (a slow machine spends a tick's budget early)
            app.tick()
            while app._due:
                app.tick()

        tick()
        before = shown(app.cvm_table)
        p99 = "mec-a/c0/home", "p99"
        shown_p99 = str(app.services_table.get_cell(*p99))

        scaled = msgspec.structs.replace(a.snapshot.cvms[0], online_vcpus=a.snapshot.cvms[0].online_vcpus % 5 + 1)
        a._on_notification("update", Update(seq=1, ts=1e9 + 1, cvms={"c0": scaled}, services=[service(45.0)]))
        b._on_notification("update", Update(seq=1, ts=1e9 + 1, cvms={"c1": cvm(rng, "c1")}))
        app._on_audit(Event("mec-a", "c0", "scale", "console", ok=True, before=1, after=scaled.online_vcpus))

        now, rebuilt = shown(app.cvm_table), expected(app, links)
        assert {k: v for k, v in now.items() if k.startswith("mec-a/")} == {
            k: v for k, v in rebuilt.items() if k.startswith("mec-a/")
        }
        assert now["mec-a/c0"] != before["mec-a/c0"]
        assert now["mec-b/c1"] == before["mec-b/c1"] != rebuilt["mec-b/c1"]  # another host's change waits
        assert str(app.services_table.get_cell(*p99)) == shown_p99  # ... and so does a service's latency
        tick()
        assert shown(app.cvm_table) == expected(app, links)
        assert str(app.services_table.get_cell(*p99)) != shown_p99


async def test_the_console_collects_the_rows_it_builds_in_small_young_passes(tmp_path: Path) -> None:
    """A row that replaces another leaves the collector's count as it was, so the count alone would let every row of
    a fleet pile up for one long pass: the console collects the young generation itself every YOUNG_PASS_ROWS rows
    it builds, and no row is left tracked for a later pass to walk again. Every GC_MIDDLE of its
    passes also take the middle generation, as the collector's own passes would, so cycles that outlive one pass
    are freed too."""
    rng = random.Random(7)
    app = DittoApp(site=demo_site({"mec-a": tmp_path / "a.sock", "mec-b": tmp_path / "b.sock"}), refresh=3600)
    app.YOUNG_PASS_ROWS = 12
    app.GC_MIDDLE = 3
    passes: list[int] = []  # the oldest generation each pass took

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    thresholds = gc.get_threshold()
    try:
        async with app.run_test(size=(160, 50)):
            assert app.fleet is not None
            await app.fleet.stop()
            links = list(app.fleet.links.values())
            for link in links:
                cvms = [cvm(rng, n) for n in NAMES[:5]]
                link.snapshot = Snapshot(Host(link.name, "test:///x", 8, 4096), cvms, ts=1e9)
                link._fresh()
            gc.callbacks.append(collected)
            in_ticks = 0
            for step in range(24):
                link = links[step % 2]
                changed = {n: cvm(rng, n) for n in NAMES[:5]}
                link._on_notification("update", Update(seq=step, ts=1e9 + step, cvms=changed))
                before, rows = len(passes), list(app.cvm_table._rows.values())
                app.tick()
                if len(passes) > before and rows:  # the rows built before this tick have left the young generation
                    in_ticks += 1
                    young_now = {id(o) for o in gc.get_objects(0)}
                    assert len(rows) == 10 and not any(id(row) in young_now for row in rows), step
                    if step >= 6:  # ... and once their values were seen, the pass stopped tracking them at all
                        assert not any(gc.is_tracked(row) for row in rows), step
    finally:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(collected)
        gc.set_threshold(*thresholds)
    assert in_ticks >= 24 // 3 - 1  # 5 rows built a tick, a pass every 12: one every third tick
    assert 1 in passes  # every third pass took the middle generation too
