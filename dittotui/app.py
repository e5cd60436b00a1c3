"""The operator console: hosts, CVMs, services and the audit log of a fleet, with one-key actions.

All host I/O is asynchronous (one link per host, see `hostctl.client.link`); the screen is refreshed by a steady tick
that coalesces whatever arrived since the last one and touches only cells that changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input

from dittotui.event_log import EventLog
from dittotui.messages import ExperimentSaved, ScaleRequested, WrkRunRecorded
from dittotui.refusals import Refusals
from dittotui.screens.confirm import ConfirmScreen
from dittotui.screens.detail import DetailScreen
from dittotui.screens.doctor import DoctorScreen
from dittotui.screens.experiment import ExperimentScreen
from dittotui.screens.help import HelpScreen
from dittotui.screens.load import LoadScreen
from dittotui.screens.policy import PolicyScreen
from dittotui.session import DemoSession
from dittotui.tables.cvms import CVMTable, RowCache, cvm_rows
from dittotui.tables.hosts import HostsTable, host_row
from dittotui.tables.live import LiveTable, Row
from dittotui.tables.services import ServicesTable, service_rows
from dittotui.trends import Trends
from hostctl.client.link import Fleet, HostLink, LinkState
from hostctl.client.link_thread import LinkThread
from hostctl.client.ref import CVMRef
from hostctl.client.render import format_event
from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.load.runs import RunLog, RunRecord
from hostctl.load.wrk import WrkResult
from hostctl.wire import rpc
from hostctl.wire.model import CVM, Elastic, Event, Snapshot

FRAME_BUDGET_S = 0.015  # a tick stops rebuilding rows after this long; the rest follow a moment later


class DittoApp(App[None]):
    """dittotui: a terminal control room for elastic confidential VMs."""

    CSS_PATH = "app.tcss"
    TITLE = "dittotui"
    GC_YOUNG: ClassVar[int] = 30_000  # the young generation's collection threshold (see `on_mount`)
    GC_MIDDLE: ClassVar[int] = 50  # young passes between two passes of the middle generation
    YOUNG_PASS_ROWS: ClassVar[int] = 1_000  # ... and the CVM rows built between two young collections of its own,
    YOUNG_PASS_COUNT: ClassVar[int] = 5_000  # ... or the objects made beyond those freed (a small site's garbage)
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("plus", "scale(1)", "+worker"),
        Binding("minus", "scale(-1)", "-worker"),
        Binding("space", "mark", "Mark", show=False),
        Binding("w", "load", "wrk"),
        Binding("a", "toggle_policy", "Elastic"),
        Binding("p", "pick_policy", "Policy", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort", show=False),
        Binding("d", "doctor", "Doctor", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        *,
        site: Site | None = None,
        demo: DemoSession | None = None,
        readonly: bool = False,
        refresh: float = 0.25,
        runs: RunLog | None = None,
        site_label: str = "",
    ) -> None:
        super().__init__()
        self.site = site
        self.site_label = site_label  # what the header says about the site (e.g. the lab's), besides read-only
        self.demo = demo
        self.readonly = readonly
        self.refresh_interval = refresh
        self.fleet: Fleet | None = None
        self.trends = Trends()
        self.marks: set[str] = set()
        self.filter_text = ""
        self.wrk_results: dict[str, WrkResult] = {}  # per service: the last wrk result
        self.runs = runs or RunLog()
        self.run_history: dict[str, list[RunRecord]] = {}  # per service: its wrk runs, oldest first
        self._dirty = True  # every host's rows may be out of date (the filter, marks or wrk results changed)
        self._changed: deque[str] = deque()  # hosts whose link changed, appended on the links' thread
        self._due: dict[str, None] = {}  # hosts whose CVM and service rows wait for a tick, longest-waiting first
        self._cvm_cache: dict[str, RowCache] = {}  # per host: each CVM's row and what it was built from
        self._unfresh: set[str] = set()  # hosts whose row shows an age that grows by itself
        self._site_order: dict[str, int] = {}  # per host: its place in the site file (rows and lines follow it)
        self._states: dict[str, tuple[LinkState, str]] = {}  # per host: the link's state and error last logged
        self._row_versions: dict[str, tuple[object, ...]] = {}  # per host: what its CVM rows were built from
        self._service_versions: dict[str, tuple[object, ...]] = {}  # ... and its service rows
        self._host_versions: dict[str, tuple[object, ...]] = {}  # per host: what its row was built from
        self._host_rows: dict[str, Row] = {}  # ... and the row (two dicts: no new pair per row for the collector)
        self._results_version = 0
        self._recorded: dict[str, float] = {}  # per host: the update last sampled into the trends
        self._seen: dict[str, tuple[list[CVM], list[CVM]]] = {}  # per host: its link's CVM list, and a copy, last sync
        self._mark_versions: dict[str, int] = {}  # per host: bumped when one of its marks changes
        self._frozen = False
        self._built = 0  # CVM rows built since the last young collection
        self.refusals = Refusals()  # each refused request shown once, from its reply or its audit event
        self.clock: Callable[[], datetime] = datetime.now  # the log's timestamps (fixed in snapshot tests)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="main"):
            yield HostsTable(id="hosts")
            yield CVMTable(id="cvms")
            with Horizontal(id="bottom"):
                yield ServicesTable(id="services")
                # min_width: wrap at the pane's width (by default a line is wrapped at 78 columns, then cut)
                yield EventLog(id="events", markup=False, wrap=True, max_lines=2000, min_width=20)
        yield Input(placeholder="filter: words to match in host, CVM, security, state, service", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        # A large fleet replaces thousands of records a second. The records are not tracked by the collector (see
        # `hostctl.wire.model`) and are freed by reference counting, but each rebuilt row is a new tuple. A row that
        # replaces another leaves the collector's count as it was (one made, one freed), so the count alone would let
        # the young generation grow to every row of the fleet, and a pass over it hold the screen for half a second.
        # The tick therefore collects by itself, first thing, every YOUNG_PASS_ROWS rows it built or YOUNG_PASS_COUNT
        # objects made beyond those freed: each pass walks what the last moment made, and stops tracking the rows it
        # finds (see `dittotui.tables.cvms`). Every GC_MIDDLE of its passes also take the middle generation, and every
        # 100 of those the oldest, as the collector's own passes would: cycles that outlive a pass are freed too
        # (bench/results/gc_young.md). The young threshold still bounds a burst of broken links between ticks.
        gc.set_threshold(self.GC_YOUNG, self.GC_MIDDLE, 100)
        self.sub_title = " · ".join(part for part in (self.site_label, "read-only" if self.readonly else "") if part)
        self.hosts_table = self.query_one(HostsTable)
        self.cvm_table = self.query_one(CVMTable)
        self.services_table = self.query_one(ServicesTable)
        self.events = self.query_one("#events", EventLog)
        self.hosts_table.border_title = "Hosts"
        self.cvm_table.border_title = "CVMs (workers = active/max worker vCPUs)"
        self.services_table.border_title = "Services (probed latency, last 10 s, ms)"
        self.events.border_title = "Events and audit"
        self.cvm_table.focus()
        if self.demo is not None:
            self.log_line("starting the embedded demo site: 3 emulated SEV-SNP hosts (use --site FILE for a real one)")
            self.start_demo()
        elif self.site is not None:
            if self.site_label:
                self.log_line(self.site_label)
            self.start_fleet(self.site)
        self.set_interval(self.refresh_interval, self.tick)

    # -- data -------------------------------------------------------------------------------------

    @work(exclusive=True, group="demo")
    async def start_demo(self) -> None:
        assert self.demo is not None
        try:
            site = await self.demo.start()
        except HostctlError as e:
            self.log_line(f"the demo site did not start: {e}", style="bold red")
            return
        self.sub_title = "embedded demo site" + (" (read-only)" if self.readonly else "")
        self.start_fleet(site)

    def start_fleet(self, site: Site) -> None:
        """Follow the site's hosts, with the links on a thread of their own: however many hosts connect or fail at
        once, their SSH handshakes and decoding never hold up the screen."""
        self.fleet = Fleet(site, thread=LinkThread())
        loop = asyncio.get_running_loop()

        def on_audit(event: Event) -> None:  # called on the links' thread: the log is written on the screen's
            with contextlib.suppress(RuntimeError):  # the screen's loop has closed: nobody is left to show it to
                loop.call_soon_threadsafe(self._on_audit, event)

        self._unfresh = set(self.fleet.links)
        self._site_order = {name: i for i, name in enumerate(self.fleet.links)}
        for link in self.fleet.links.values():
            link.on_update(self._link_changed)
            link.on_event(on_audit)
        self.fleet.start()
        self.read_run_history()

    @work(exclusive=True, group="runs")
    async def read_run_history(self) -> None:
        """Read the wrk run history (kept across restarts): each service shows its last result."""
        read = await asyncio.to_thread(self.runs.read)
        for problem in read.problems[:5]:
            self.log_line(f"run history: {problem}", style="yellow")
        self.run_history, self.wrk_results = {}, {}
        for record in read.records:
            self._keep_run(record)
        self._results_version += 1
        self._dirty = True

    def _keep_run(self, record: RunRecord) -> None:
        self.run_history.setdefault(record.key, []).append(record)
        self.wrk_results[record.key] = record.result

    def _link_changed(self, link: HostLink) -> None:
        """A link's data or state changed (called on the links' thread: it only queues its name for the tick)."""
        self._changed.append(link.name)

    def _on_audit(self, event: Event) -> None:
        if (
            not event.ok
            and self._asked_here(event)
            and not self.refusals.audited((event.host, event.cvm, event.action))
        ):
            return  # its reply showed it already
        self._show_now(event.host)  # an action's result shows now, not at the next tick
        when = datetime.fromtimestamp(event.ts).strftime("%H:%M:%S")
        line = format_event(event).split(" ", 1)[1]  # the console shows local time, like its other lines
        # Its line is written once the changed row is on screen: a line scrolls the whole log, whose repaint would
        # hold up the row's by its own cost.
        self.call_after_refresh(self.log_line, f"{when} {line}", style="" if event.ok else "red", stamp=False)

    def _asked_here(self, event: Event) -> bool:
        """True for an event of a request this console sent (its agent writes `who (peer user)`)."""
        link = self.fleet.links.get(event.host) if self.fleet else None
        return link is not None and (event.who == link.who or event.who.startswith(f"{link.who} ("))

    def _refused(self, link: HostLink, ref: CVMRef, action: str, error: rpc.RpcError) -> None:
        """Show a request's refusal unless its audit event showed it already."""
        if self.refusals.replied((link.name, ref.cvm, action)):
            self.log_line(f"{ref.key} {action} REFUSED: {error}", style="red")  # as its audit event reads

    @property
    def links(self) -> list[HostLink]:
        return list(self.fleet.links.values()) if self.fleet else []

    def tick(self, *, collect: bool = True) -> None:
        """Apply whatever arrived since the last tick, in one batch that stays within a frame's budget.

        A tick's work follows what changed, not the size of the fleet: only the hosts whose link said something
        since (and those whose row shows a growing age) are looked at. A tick that shows what a key did at once (a
        mark) passes `collect=False`: the collector's pass, when due, waits for the next steady tick.
        """
        if not self.hosts_table.is_attached or self.fleet is None:  # shutting down, or the demo is starting
            return
        started = time.perf_counter()
        if collect and (self._built >= self.YOUNG_PASS_ROWS or gc.get_count()[0] >= self.YOUNG_PASS_COUNT):
            # First: the pass's time comes out of this tick's budget for rows.
            self._built = 0
            gc.collect(_generation_due())
        links = self.fleet.links
        changed: set[str] = set()
        while self._changed:
            changed.add(self._changed.popleft())
        shown = sorted(changed | self._unfresh, key=self._site_order.__getitem__)
        with self.batch_update():
            for name in shown:
                link = links[name]
                if link.state is LinkState.FRESH:
                    self._unfresh.discard(name)
                else:
                    self._unfresh.add(name)
                if name in changed:
                    self._due.setdefault(name)  # a host already waiting keeps its place
                self._log_link(link)
            self.hosts_table.sync_groups({name: {name: self._host_row(links[name])} for name in shown})
            if self._dirty:
                self._dirty = False
                self._due = dict.fromkeys(links)
            if self._due:
                self._sync_hosts(self.fleet.site.defaults.slo_p99_ms, deadline=started + FRAME_BUDGET_S)
        if not self._frozen and all(link.snapshot for link in links.values()):
            gc.collect(0)  # (what this pass frees need not be frozen)
            gc.freeze()  # the first full picture is long-lived: keep it out of every later full collection
            self._frozen = True

    def _log_link(self, link: HostLink) -> None:
        """Log a link's change of state, and each new reason it fails for (once, however often it retries)."""
        now = (link.state, link.error)
        before = self._states.get(link.name)
        if before == now:
            return
        self._states[link.name] = now
        if link.state is LinkState.FRESH:
            if before is None or before[0] is not LinkState.FRESH:
                self.log_line(f"{link.name}: live{self._read_only_note(link)}", style="green")
        elif link.error:
            self.log_line(f"{link.name}: {link.state.value}: {link.error}", style="yellow")

    @staticmethod
    def _read_only_note(link: HostLink) -> str:
        """What a live host's agent lets this console do, when that is only reading (its hello says so)."""
        if link.hello.get("may_write", True):
            return ""
        who = link.hello.get("user") or "this console's user"
        if link.hello.get("readonly"):
            return " (read-only agent: scales and policy changes are refused)"
        return f" (read-only for {who}: not one of the agent's writers; scales and policy changes are refused)"

    def _sync_hosts(self, slo_ms: float, *, deadline: float) -> None:
        """Bring the CVM and service rows of the hosts due up to date, the longest-waiting first, until `deadline`.

        Hosts left over when the budget is spent are synced by another tick a moment later, so one tick never
        holds the screen for a whole fleet's worth of changes. A host whose CVMs neither came nor went since its
        last sync (its link then keeps the same list, swapping records in place), seen the same way, costs what
        changed: only the records that are new objects are sampled and their rows rebuilt.
        """
        assert self.fleet is not None
        cvms: dict[str, dict[str, Row]] = {}
        parts: dict[str, tuple[list[str], dict[str, Row]]] = {}
        services: dict[str, dict[str, Row]] = {}
        for name in list(self._due):
            link = self.fleet.links[name]
            version = self._version(link)
            if self._row_versions.get(name) == version and self._service_versions.get(name) == version:
                del self._due[name]
                continue
            if services and time.perf_counter() > deadline:
                self.set_timer(FRAME_BUDGET_S, self.tick)
                break
            del self._due[name]
            self._cvm_rows(link, version, cvms, parts)
            self._service_versions[name] = version
            services[name] = service_rows(
                link, self.wrk_results, self.trends.p99, slo_ms=slo_ms, filter_text=self.filter_text
            )
        self.cvm_table.sync_groups(cvms, parts)
        self.services_table.sync_groups(services)

    def _show_now(self, name: str) -> None:
        """Bring one host's row and CVM rows up to date at once (what an action did); its service rows and every
        other host wait for the next tick. A service's latency is not what the action changed, and a frame that
        also repaints every probed service costs about three times as much as one that shows the action alone."""
        link = self.fleet.links.get(name) if self.fleet else None
        if link is None or not self.hosts_table.is_attached:
            return
        cvms: dict[str, dict[str, Row]] = {}
        parts: dict[str, tuple[list[str], dict[str, Row]]] = {}
        with self.batch_update():
            self.hosts_table.sync_groups({name: {name: self._host_row(link)}})
            self._cvm_rows(link, self._version(link), cvms, parts)
            self.cvm_table.sync_groups(cvms, parts)
        self._due.setdefault(name)  # its services, at the next tick

    def _version(self, link: HostLink) -> tuple[object, ...]:
        """What a host's CVM and service rows are built from."""
        snap = link.snapshot
        return (
            snap.ts if snap else None,
            link.state.value,  # (not the member: a tuple holding one stays tracked by the collector)
            self.filter_text,
            self._mark_versions.get(link.name, 0),
            self._results_version,
        )

    def _cvm_rows(
        self,
        link: HostLink,
        version: tuple[object, ...],
        cvms: dict[str, dict[str, Row]],
        parts: dict[str, tuple[list[str], dict[str, Row]]],
    ) -> None:
        """Add a host's CVM rows built from `version` to what a sync applies, unless they were built from it already:
        all of them to `cvms`, or, when its CVMs neither came nor went, only those whose records changed to `parts`."""
        name = link.name
        before = self._row_versions.get(name)
        if before == version:
            return
        self._row_versions[name] = version
        cache = self._cvm_cache.get(name)
        if cache is None:
            cache = self._cvm_cache[name] = RowCache()
        snap = link.snapshot
        cvms_now = snap.cvms if snap else []
        seen = self._seen.get(name)
        if snap is not None and before is not None and before[1:] == version[1:] and seen and seen[0] is cvms_now:
            changed = _swapped(cvms_now, seen[1])
            self._record_trends(link, changed)
            rows = cvm_rows(link, filter_text=self.filter_text, marks=self.marks, cache=cache, only=changed)
            parts[name] = ([f"{name}/{c.name}" for c in changed], rows)
            self._built += len(changed)
        else:
            now = list(cvms_now)
            self._seen[name] = (cvms_now, now)
            self._record_trends(link, now, whole=True)
            cvms[name] = cvm_rows(link, filter_text=self.filter_text, marks=self.marks, cache=cache)
            self._built += len(now)

    def _record_trends(self, link: HostLink, cvms: list[CVM], *, whole: bool = False) -> None:
        """Sample a live host's CVMs (all of them with `whole`, else those whose records changed) and its services,
        once per update it sends."""
        name, snap = link.name, link.snapshot
        if snap is None or link.state is not LinkState.FRESH or self._recorded.get(name) == snap.ts:
            return
        self._recorded[name] = snap.ts
        if whole:
            self.trends.record_all(name, cvms)
        else:
            self.trends.record(name, cvms)
        for s in snap.services:
            if (live := s.latency.get("10s")) is not None and live.count:
                self.trends.record_p99(f"{name}/{s.cvm}/{s.name}", live.p99, snap.ts)

    def _host_row(self, link: HostLink) -> Row:
        """A host's row, rebuilt only when its data, state, age or error changed."""
        age = None if link.age is None or link.state is LinkState.FRESH else int(link.age)
        version = (link.snapshot.ts if link.snapshot else None, link.state.value, age, link.error)
        if self._host_versions.get(link.name) != version:
            self._host_versions[link.name] = version
            self._host_rows[link.name] = host_row(link)
        return self._host_rows[link.name]

    def log_line(self, text: str, *, style: str = "", stamp: bool = True) -> None:
        if self.events.is_attached:
            prefix = self.clock().strftime("%H:%M:%S ") if stamp else ""
            self.events.write(Text(prefix + text, style=style))

    @on(WrkRunRecorded)
    def keep_wrk_run(self, message: WrkRunRecorded) -> None:
        """Keep a finished wrk run (already appended to the run history file) next to its service."""
        record = message.record
        self._keep_run(record)
        self._results_version += 1
        result = record.result
        self.log_line(
            f"wrk {record.key}: p50 {result.p(50):.1f} ms, p99 {result.p(99):.1f} ms, "
            f"{result.rps:.0f} req/s, {result.errors} errors"
        )
        self._dirty = True

    @on(ExperimentSaved)
    def log_experiment(self, message: ExperimentSaved) -> None:
        self.log_line(f"{message.what} saved: {message.report}")

    def snapshots(self) -> dict[str, Snapshot]:
        """Each host's last snapshot (hosts never reached have none)."""
        return {link.name: link.snapshot for link in self.links if link.snapshot is not None}

    # -- selection --------------------------------------------------------------------------------

    def selected(self) -> list[CVMRef]:
        """The marked CVMs, else the one under the cursor."""
        if self.marks:
            return [CVMRef.parse(key) for key in sorted(self.marks)]
        key = self.cvm_table.selected_key
        return [CVMRef.parse(key)] if key else []

    def link_of(self, ref: CVMRef) -> HostLink | None:
        return self.fleet.links.get(ref.host) if self.fleet else None

    def _confirm_bulk(self, refs: list[CVMRef], what: str, then: Callable[[], object]) -> None:
        if len(refs) <= 1:
            then()
            return
        names = ", ".join(r.key for r in refs[:4]) + (" ..." if len(refs) > 4 else "")

        def answered(yes: bool | None) -> None:
            if yes:
                then()

        self.push_screen(ConfirmScreen(f"{what} on {len(refs)} marked CVMs?\n{names}"), answered)

    # -- actions ----------------------------------------------------------------------------------

    def refuse_readonly(self, what: str) -> bool:
        """True when this console was started read-only, after saying in one line that `what` is refused: checked
        before a dialog opens or a request is sent, so nothing reaches an agent."""
        if not self.readonly:
            return False
        line = f"read-only console: {what} refused; nothing was sent"
        self.log_line(line, style="red")
        self.notify(line, severity="warning")
        return True

    def action_scale(self, step: int) -> None:
        verb = "Wake one worker" if step > 0 else "Park one worker"
        if self.refuse_readonly(verb.lower()):
            return
        refs = self.selected()
        self._confirm_bulk(refs, verb, lambda: self.scale_cvms(refs, step))

    @on(ScaleRequested)
    def scale_requested(self, message: ScaleRequested) -> None:
        """A screen's `+`/`-` (the detail screen's, on its CVM)."""
        self.scale_cvms(message.refs, message.step)

    def scale_cvms(self, refs: Iterable[CVMRef], step: int) -> None:
        """Scale each CVM by `step` workers, compare-and-set against the count on screen."""
        if self.refuse_readonly("wake one worker" if step > 0 else "park one worker"):
            return
        for ref in refs:
            link = self.link_of(ref)
            cvm = link.cvm(ref.cvm) if link else None
            if link is None or cvm is None:
                self.log_line(f"{ref.key}: not known to the console", style="red")
                continue
            if cvm.online_vcpus is None:
                self.log_line(
                    f"{ref.key}: not scaled: its online vCPU count is unknown ({cvm.vcpus_error})", style="red"
                )
                continue
            self.scale_one(link, ref, cvm.online_vcpus + step, cvm.online_vcpus)

    @work(group="scale")
    async def scale_one(self, link: HostLink, ref: CVMRef, target: int, expect: int) -> None:
        try:
            await link.scale(ref.cvm, target, expect=expect, why="console")
        except rpc.RpcError as e:
            self._refused(link, ref, "scale", e)
        except HostctlError as e:
            self.log_line(f"{ref.key}: {e}", style="red")

    def action_mark(self) -> None:
        key = self.cvm_table.selected_key
        if key is None:
            return
        self.marks.symmetric_difference_update({key})
        self._marks_changed([key])
        self.tick(collect=False)
        self.cvm_table.action_cursor_down()

    def action_load(self) -> None:
        """The load dialog for the selected service (services table) or the selected CVM's services."""
        if self.refuse_readonly("wrk load"):
            return
        service = None
        if self.focused is self.services_table and (key := self.services_table.selected_key):
            ref, _, service = key.rpartition("/")
            refs = [CVMRef.parse(ref)]
        else:
            refs = self.selected()[:1]
        link = self.link_of(refs[0]) if refs else None
        if self.fleet is None or link is None or link.snapshot is None:
            return
        services = [s for s in link.snapshot.services if s.cvm == refs[0].cvm]
        services.sort(key=lambda s: s.name != service)  # the chosen service first: the dialog's default
        if not services:
            self.notify(f"{refs[0].key} lists no services", severity="warning")
            return
        self.push_screen(
            LoadScreen(link.name, services, site=self.fleet.site, snapshots=self.snapshots, runs=self.runs)
        )

    def action_experiment(self) -> None:
        if self.refuse_readonly("the security-overhead experiment (wrk load)"):
            return
        if self.fleet is None:
            self.notify("no site is open yet", severity="warning")
            return
        self.push_screen(ExperimentScreen(self.fleet.site, self.snapshots, self.runs))

    def action_toggle_policy(self) -> None:
        """Switch the elastic policy of the selected (or marked) CVMs on, or off when all of them run it."""
        refs = self._policy_targets()
        if not refs:
            return
        states = [self._elastic_of(ref) for ref in refs]
        enabled = not all(e is not None and e.enabled for e in states)
        verb = "Switch the elastic policy on" if enabled else "Switch the elastic policy off"
        self._confirm_bulk(refs, verb, lambda: self.set_policy(refs, enabled=enabled))

    def action_pick_policy(self) -> None:
        """Choose which policy the selected (or marked) CVMs run, from what their agent offers."""
        refs = self._policy_targets()
        if refs:
            self.pick_policy(refs)

    def _policy_targets(self) -> list[CVMRef]:
        """The selected CVMs whose agents run policies; says why when there are none."""
        if self.refuse_readonly("elastic policy change"):
            return []
        refs = self.selected()
        offered = [ref for ref in refs if (link := self.link_of(ref)) and link.offers("policy")]
        if refs and not offered:
            link = self.link_of(refs[0])
            agent = link.hello.get("agent", "?") if link else "?"
            self.notify(f"{refs[0].host}: its agent (hostctl {agent}) offers no elastic policies", severity="warning")
        return offered

    def _elastic_of(self, ref: CVMRef) -> Elastic | None:
        link = self.link_of(ref)
        cvm = link.cvm(ref.cvm) if link else None
        return cvm.elastic if cvm else None

    @work(group="policy")
    async def pick_policy(self, refs: list[CVMRef]) -> None:
        link = self.link_of(refs[0])
        assert link is not None
        try:
            policies = await link.policies()
        except (HostctlError, rpc.RpcError) as e:
            self.log_line(f"{link.name}: cannot list policies: {e}", style="red")
            return
        current = self._elastic_of(refs[0])
        what = refs[0].key if len(refs) == 1 else f"{len(refs)} marked CVMs"
        name = await self.push_screen_wait(PolicyScreen(what, policies, current.policy if current else None))
        if name is not None:
            self.set_policy(refs, name=name)

    @work(group="policy")
    async def set_policy(self, refs: list[CVMRef], *, enabled: bool | None = None, name: str | None = None) -> None:
        """Ask each CVM's agent to change its policy; the agent audits it, and the result arrives as an event."""
        for ref in refs:
            link = self.link_of(ref)
            if link is None:
                continue
            try:
                await link.set_policy(ref.cvm, name=name, enabled=enabled)
            except rpc.RpcError as e:
                self._refused(link, ref, "policy", e)
            except HostctlError as e:
                self.log_line(f"{ref.key}: policy not changed: {e}", style="red")

    @on(LiveTable.RowSelected, "#cvms")
    def open_detail(self, event: LiveTable.RowSelected) -> None:
        ref = CVMRef.parse(event.key)
        link = self.link_of(ref)
        if link is not None:
            self.push_screen(DetailScreen(ref, link, self.trends, self.run_history))

    def action_doctor(self) -> None:
        """The doctor report of the selected host (the hosts table's row, else the selected CVM's host)."""
        link = self.selected_host()
        if link is None:
            self.notify("no host selected", severity="warning")
            return
        self.push_screen(DoctorScreen(link))

    def selected_host(self) -> HostLink | None:
        """The host under the cursor in the hosts table when it has focus, else the selected CVM's, else the first."""
        if self.fleet is None:
            return None
        if self.focused is self.hosts_table and (name := self.hosts_table.selected_key):
            return self.fleet.links.get(name)
        refs = self.selected()
        if refs:
            return self.fleet.links.get(refs[0].host)
        return next(iter(self.fleet.links.values()), None)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._dirty = True

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        self.cvm_table.focus()

    def on_key(self, event: events.Key) -> None:
        box = self.query_one("#filter", Input)
        if event.key == "escape" and box.has_class("visible"):
            box.value = ""
            box.remove_class("visible")
            self.cvm_table.focus()

    def action_sort(self) -> None:
        table = self.focused if isinstance(self.focused, LiveTable) else self.cvm_table
        keys = [column.key for column in table.COLUMNS]
        current = keys.index(table.sort_column) if table.sort_column in keys else -1
        table.sort_by(keys[(current + 1) % len(keys)])
        self.notify(f"sorted by {table.sort_column}")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def on_unmount(self) -> None:
        """However the console ends, its links and their thread end with it."""
        if self.fleet is not None:
            await self.fleet.stop()

    async def action_quit(self) -> None:
        """Stop every link and the demo site this session started, then leave."""
        if self.demo is not None and self.demo.running:
            self.notify("stopping the embedded demo site...")
        if self.fleet is not None:
            await self.fleet.stop()
        if self.demo is not None:
            await self.demo.stop()
        self.exit()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand(
            "Wake one worker", "Scale the selected (or marked) CVMs up by one", lambda: self.action_scale(1)
        )
        yield SystemCommand(
            "Park one worker", "Scale the selected (or marked) CVMs down by one", lambda: self.action_scale(-1)
        )
        yield SystemCommand("Mark CVM", "Mark or unmark the selected CVM", self.action_mark)
        yield SystemCommand("Clear marks", "Unmark every CVM", self._clear_marks)
        yield SystemCommand("Run wrk load", "Load one of the selected CVM's services", self.action_load)
        yield SystemCommand(
            "Security-overhead experiment",
            "The same wrk load on one CVM of each security type: p50/p90/p99 and % over plain",
            self.action_experiment,
        )
        yield SystemCommand("Toggle elastic policy", "On/off for the selected CVM", self.action_toggle_policy)
        yield SystemCommand("Pick elastic policy", "Choose the selected CVM's policy", self.action_pick_policy)
        yield SystemCommand(
            "Doctor", "Check the selected host: SEV/SNP, libvirt, QEMU, drivers, guest agents", self.action_doctor
        )
        yield SystemCommand("Filter", "Show only matching CVMs and services", self.action_filter)
        yield SystemCommand("Sort", "Sort the focused table by the next column", self.action_sort)
        yield SystemCommand("Help", "Keys and columns", self.action_help)

    def _clear_marks(self) -> None:
        marked, self.marks = self.marks, set()
        self._marks_changed(marked)

    def _marks_changed(self, keys: Iterable[str]) -> None:
        for key in keys:
            host = CVMRef.parse(key).host
            self._mark_versions[host] = self._mark_versions.get(host, 0) + 1
        self._dirty = True


def _swapped(cvms: list[CVM], copy: list[CVM]) -> list[CVM]:
    """The records of `cvms` that are not those of `copy` (a list of the same length), which then takes them all.

    `cvms` is read once, in one copy: a record the links' thread swaps in meanwhile is found next time."""
    now = cvms[:]
    changed = [cvm for cvm, was in zip(now, copy, strict=True) if cvm is not was]
    copy[:] = now  # the same list object: an old one, not a new one for the collector to walk
    return changed


def _generation_due() -> int:
    """The oldest generation a pass should take, by the collector's own rule: a generation's count is the passes of
    the one below since its last pass (the count alone, not the long-lived share that also gates a full pass)."""
    counts, thresholds = gc.get_count(), gc.get_threshold()
    return 2 if counts[2] >= thresholds[2] else 1 if counts[1] >= thresholds[1] else 0
