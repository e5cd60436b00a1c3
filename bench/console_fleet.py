"""The console at fleet scale, and key press -> change on screen on the demo site.

    python -m bench.console_fleet [--hosts 100[,1000]] [--cvms 100] [--changing 1.0] [--churn 0.1] [--ssh]
                                  [--connect-timeout 5] [--window 60] [--profile 5] [--presses 20]
                                  [--out FILE.md] [--pstats FILE]

Part 1, once per host count: `bench/fleet_agents.py` (one process, one unix socket per host, or with `--ssh` one SSH
connection per host whose host key, generated for the run, the console verifies; the real JSON-RPC protocol;
`--changing` of the CVMs' CPU % changing at 1 Hz, every one by default, and `--churn` of the CVMs changing online
vCPUs) behind a site file;
`DittoApp(site=...)` headless (`run_test(size=(200, 60))`). Once every link is fresh and every CVM row is shown, for
`--window` seconds: each `app.tick()` (the instance's tick, timed around the original), each screen update
(`Screen._on_timer_update`: layout + compositor render of the dirty widgets; headless, so without writing to a
terminal), each `HostLink._on_notification` (applying one host's update) and the age of the update it applied
(now - the agent's `ts`), the event loop's lag (a 10 ms sleep's overshoot), the process's CPU % and RSS (sampled by a
thread, so a busy event loop does not blur the window), and on the links' thread each update's decoding
(`rpc.notification`). Then `--profile` seconds under cProfile.

Part 2: the embedded demo site (`DemoSession`, `DittoApp(demo=...)`): `--presses` times, put the cursor on a CVM
row, press `plus` or `minus` (alternating) and time until the row's workers cell shows the new count, and until the
first screen update after that cell changed has been rendered.

The time windows are enforced inside the timing hooks and by a sampling thread, not by the event loop (which the
console may saturate), and the agents are stopped from a thread when a part ends so a backlog cannot grow further.
Writes bench/results/console_fleet.md or --out (a hand-written "Findings" section already there is kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import cProfile
import dataclasses
import gc
import hashlib
import io
import math
import os
import pstats
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import textual
from textual.screen import Screen

import dittotui.app as app_module
from bench.fleet_agents import raise_fd_limit
from dittotui.app import DittoApp
from dittotui.session import DemoSession
from dittotui.tables.cvms import CVMTable
from hostctl.client.link import HostLink, LinkState
from hostctl.client.site import Defaults, HostEntry, Site
from hostctl.demo import config as demo_config
from hostctl.demo.site import demo_site
from hostctl.wire import rpc

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "console_fleet.md"
FINDINGS_MARK = "<!-- findings: hand-written, kept when the benchmark rewrites this file -->"
SIZE = (200, 60)
TARGET_MS = 50.0
CPU_TARGET = 50.0  # % of one core, the benchmark's hooks off
RSS_TARGET_MIB = 1024
PAINT_TARGET_MS = 33.0  # key press → screen, beyond the driver's own time: two 60 Hz frames
DRIVER = demo_config.load().driver  # the demo's emulated driver, whose delays a key press waits for
DRIVER_MS = {1: DRIVER.wake_ms, -1: DRIVER.park_ms}  # per step
NAN = float("nan")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation); nan for no values."""
    if not values:
        return NAN
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Probes:
    """Timing hooks (class-level patches in this process only; no file is changed), recording inside a window."""

    def __init__(self) -> None:
        self.start = self.end = 0.0  # perf_counter window
        self.ticks: list[tuple[float, bool]] = []  # (ms, dirty)
        self.renders: list[tuple[float, float]] = []  # (start, end) of every screen update, window or not
        self.rendered = asyncio.Event()  # set after each screen update
        self.render_ms: list[float] = []
        self.notify_ms: list[float] = []
        self.decode_ms: list[float] = []  # decoding one update line into its records (`rpc.notification`)
        self.age_ms: list[float] = []  # now - the update's ts, when it is applied
        self.rows_age_ms: list[float] = []  # now - a host's data ts, when the console rebuilds its rows
        self.notify_cvms = 0
        self.profile_ticks = 0
        self.gc_ms: dict[int, list[float]] = {0: [], 1: [], 2: []}  # pause per collection, by generation
        self._gc_start: dict[
            int, tuple[float, float]
        ] = {}  # per thread: (wall, its CPU time) when its collection began
        self.gc_cpu_ms: list[float] = []  # the CPU time of each collection, on its thread
        self.fresh: list[int] = []  # links fresh, sampled at each tick
        self.app: DittoApp | None = None
        # cProfile follows only the thread that enables it: the screen's loop and the links' thread each get one,
        # enabled and disabled from their own hooks, between these times.
        self.profilers: dict[str, ThreadProfile] = {}
        self.profile_start = self.profile_end = 0.0
        self.quiet = False  # while set, every hook only calls what it wraps: the console's own CPU is measured

    def reset(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.ticks, self.render_ms, self.notify_ms, self.age_ms, self.fresh = [], [], [], [], []
        self.decode_ms = []
        self.rows_age_ms = []
        self.notify_cvms = 0
        self.gc_ms = {0: [], 1: [], 2: []}
        self.gc_cpu_ms = []

    def recording(self, t: float) -> bool:
        self._check_profile(t)
        return self.start <= t < self.end

    def _check_profile(self, t: float) -> None:
        which = self.profilers.get("screen" if threading.current_thread() is threading.main_thread() else "links")
        if which is None or which.stopped:
            return
        if not which.started and self.profile_start <= t < self.profile_end:
            which.profiler.enable()
            which.started = t
        elif t >= self.profile_end:
            if which.started:
                which.profiler.disable()
            which.stopped = t

    @property
    def profiling(self) -> bool:
        screen = self.profilers.get("screen")
        return screen is not None and bool(screen.started) and not screen.stopped

    def install(self) -> None:
        probes = self
        original_render = Screen._on_timer_update
        original_notification = HostLink._on_notification

        def timed_render(screen: Screen) -> None:
            if probes.quiet:
                return original_render(screen)
            work = bool(screen._dirty_widgets or screen._layout_required or screen._repaint_required)
            t0 = time.perf_counter()
            original_render(screen)
            t1 = time.perf_counter()
            probes.renders.append((t0, t1))
            probes.rendered.set()
            if len(probes.renders) > 20000:
                del probes.renders[:10000]
            if probes.recording(t0) and work:  # (pilot.pause calls it with nothing to do)
                probes.render_ms.append((t1 - t0) * 1000)

        def timed_notification(link: HostLink, method: str, params: Any) -> None:
            if probes.quiet:
                return original_notification(link, method, params)
            t0 = time.perf_counter()
            original_notification(link, method, params)
            if probes.recording(t0):
                probes.notify_ms.append((time.perf_counter() - t0) * 1000)
                probes.notify_cvms += len(params.cvms)
                if params.ts is not None:
                    probes.age_ms.append((time.time() - params.ts) * 1000)

        def timed_decode(line: bytes, typed: Any) -> Any:
            if probes.quiet:
                return original_decode(line, typed)
            t0 = time.perf_counter()
            decoded = original_decode(line, typed)
            if decoded is not None and probes.recording(t0):
                probes.decode_ms.append((time.perf_counter() - t0) * 1000)
            return decoded

        def gc_pause(phase: str, info: dict[str, int]) -> None:
            if probes.quiet:
                return
            t = time.perf_counter()
            # Per thread: a finaliser run by one thread's collection may let the other thread run (and collect).
            thread = threading.get_ident()
            if phase == "start":
                probes._gc_start[thread] = (t, time.thread_time())
            elif (began := probes._gc_start.pop(thread, None)) is not None and probes.start <= began[0] < probes.end:
                probes.gc_ms[info["generation"]].append((t - began[0]) * 1000)
                probes.gc_cpu_ms.append((time.thread_time() - began[1]) * 1000)

        def timed_cvm_rows(link: HostLink, **kw: Any) -> Any:
            if probes.quiet:
                return original_cvm_rows(link, **kw)
            if link.snapshot is not None and probes.recording(time.perf_counter()):
                probes.rows_age_ms.append((time.time() - link.snapshot.ts) * 1000)
            return original_cvm_rows(link, **kw)

        original_decode = rpc.notification
        rpc.notification = timed_decode  # type: ignore[assignment]
        original_cvm_rows = app_module.cvm_rows
        app_module.cvm_rows = timed_cvm_rows  # type: ignore[assignment]
        gc.callbacks.append(gc_pause)
        Screen._on_timer_update = timed_render  # type: ignore[method-assign]
        HostLink._on_notification = timed_notification  # type: ignore[method-assign]

    def time_ticks(self, app: DittoApp) -> None:
        """Wrap the instance's tick (before mount, so the app's interval timer calls the wrapper)."""
        probes = self
        self.app = app

        def timed_tick(*, collect: bool = True) -> None:
            if probes.quiet:
                return DittoApp.tick(app, collect=collect)
            dirty = bool(app._dirty or app._changed or app._due)  # it has data to apply
            t0 = time.perf_counter()
            DittoApp.tick(app, collect=collect)
            if probes.recording(t0):
                probes.ticks.append(((time.perf_counter() - t0) * 1000, dirty))
                probes.fresh.append(sum(link.state is LinkState.FRESH for link in app.links))
            elif dirty and probes.profiling:
                probes.profile_ticks += 1

        app.tick = timed_tick  # type: ignore[method-assign]


class Sampler(threading.Thread):
    """Samples CPU times and RSS of this process and the agents' every 0.25 s from a thread."""

    def __init__(self, agents_pid: int) -> None:
        super().__init__(daemon=True)
        self.me = psutil.Process()
        self.agents = psutil.Process(agents_pid)
        self.samples: list[tuple[float, float, float, float]] = []  # (perf_counter, cpu s, rss, agents cpu s)
        self.threads: list[dict[int, float]] = []  # with each sample: CPU seconds per thread (native id)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                c, a = self.me.cpu_times(), self.agents.cpu_times()
                sample = (time.perf_counter(), c.user + c.system, self.me.memory_info().rss, a.user + a.system)
                threads = {t.id: t.user_time + t.system_time for t in self.me.threads()}
                self.samples.append(sample)  # both or neither: the lists stay in step
                self.threads.append(threads)
            except psutil.Error:
                pass
            self.halt.wait(0.25)

    def over(self, start: float, end: float) -> dict[str, float]:
        inside = [i for i, s in enumerate(self.samples) if start <= s[0] <= end]
        if len(inside) < 2:
            return {"cpu": NAN, "agent_cpu": NAN, "rss": NAN, "rss_max": NAN, "screen_cpu": NAN, "links_cpu": NAN}
        (t0, c0, _r0, a0), (t1, c1, r1, a1) = self.samples[inside[0]], self.samples[inside[-1]]
        first, last = self.threads[inside[0]], self.threads[inside[-1]]
        links = next((t.native_id for t in threading.enumerate() if t.name == "links"), None)

        def share(native_id: int | None) -> float:
            if native_id not in first or native_id not in last:
                return NAN
            return 100 * (last[native_id] - first[native_id]) / (t1 - t0)

        return {
            "cpu": 100 * (c1 - c0) / (t1 - t0),
            "agent_cpu": 100 * (a1 - a0) / (t1 - t0),
            "rss": r1 / 2**20,
            "rss_max": max(self.samples[i][2] for i in inside) / 2**20,
            "screen_cpu": share(threading.main_thread().native_id),
            "links_cpu": share(links),
        }


async def loop_lag(samples: list[tuple[float, float]], stop: asyncio.Event, period: float = 0.01) -> None:
    """How late a `period` sleep wakes up: what a key press or a repaint would wait for."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(period)
        samples.append((t0, max(0.0, (time.perf_counter() - t0 - period) * 1000)))


async def wait_for(cond: Any, within: float, what: str, step: float = 0.1, app: DittoApp | None = None) -> float:
    t0 = time.monotonic()
    while not cond():
        if app is not None and (app._exception is not None or not app.is_running):
            raise RuntimeError(f"{what}: the app stopped ({app._exception!r})")
        if time.monotonic() - t0 > within:
            states = (
                "; ".join(f"{link.name} {link.state.value} {link.error}".strip() for link in app.links[:5])
                if app is not None
                else ""
            )
            raise TimeoutError(f"{what}: not within {within:g} s ({'no fleet' if app and not app.fleet else states})")
        await asyncio.sleep(step)
    return time.monotonic() - t0


async def quit_app(app: DittoApp) -> tuple[list[str], bool]:
    """`app.action_quit()`, bounded: returns the links whose task did not end on the first cancel (then cancelled
    again, which gets through; see the findings on `asyncio.wait_for` swallowing a cancellation on Python 3.11)."""
    quitting = asyncio.create_task(app.action_quit())
    done, _ = await asyncio.wait({quitting}, timeout=15)
    if done:
        quitting.result()
        return [], True
    hung = [link.name for link in app.links if link._task is not None and not link._task.done()]
    for link in app.links:
        if link._task is not None:
            link._task.cancel()
    done, _ = await asyncio.wait({quitting}, timeout=15)
    if not done:
        quitting.cancel()
        app.exit()
    return hung, bool(done)


# -- parts 1 and 3: the synthetic fleet -----------------------------------------------------------------------


def start_agents(args: argparse.Namespace, hosts: int, runtime: Path) -> subprocess.Popen[bytes]:
    log = (runtime / "fleet_agents.log").open("ab")
    argv = [sys.executable, "-m", "bench.fleet_agents", "--hosts", str(hosts), "--cvms", str(args.cvms)]
    argv += ["--runtime", str(runtime), "--changing", str(args.changing), "--churn", str(args.churn)]
    if args.ssh:
        argv += ["--ssh-keys", str(runtime / "keys")] + (["--ignore-packets"] if args.ignore_packets else [])
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=ROOT)


def ssh_keys(keys: Path) -> None:
    """A host key for the agents' SSH server, a client key it admits, and the client's SSH config naming it."""
    keys.mkdir(mode=0o700)
    host, client = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
    host.write_private_key(str(keys / "host_key"))
    client.write_private_key(str(keys / "client_key"))
    client.write_public_key(str(keys / "authorized_keys"))
    (keys / "ssh_config").write_text(f"Host 127.0.0.1\n  IdentityFile {keys / 'client_key'}\n")


def fleet_site(args: argparse.Namespace, hosts: int, runtime: Path) -> Site:
    """The console's site: each host's socket, or (`--ssh`) that socket through an SSH connection of its own to the
    agents' SSH server, whose host key known_hosts names."""
    names = [f"host-{i:03d}" for i in range(hosts)]
    if not args.ssh:
        return demo_site({name: runtime / f"{name}.sock" for name in names})
    keys = runtime / "keys"
    port = int((keys / "ssh_port").read_text())
    host_key = asyncssh.read_private_key(str(keys / "host_key"))
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}")
    defaults = Defaults(
        known_hosts=str(keys / "known_hosts"), ssh_config=str(keys / "ssh_config"), timeout=args.connect_timeout
    )
    entries = [
        HostEntry(name=name, ssh=f"127.0.0.1:{port}", socket=str((runtime / f"{name}.sock").absolute()))
        for name in names
    ]
    return Site(defaults=defaults, hosts=entries)


def stop_agents(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def fleet_part(
    args: argparse.Namespace, probes: Probes, hosts: int, window: float, profile_s: float
) -> dict[str, Any]:
    runtime = Path(tempfile.mkdtemp(prefix="console-fleet-"))
    rss_before = psutil.Process().memory_info().rss / 2**20
    if args.ssh:
        ssh_keys(runtime / "keys")
    agents = start_agents(args, hosts, runtime)
    res: dict[str, Any] = {"rss_before": rss_before, "window": window, "profile_s": profile_s, "hosts": hosts}
    t_part = time.monotonic()
    sampler: Sampler | None = None
    try:
        await wait_for(lambda: (runtime / "ready").exists() or agents.poll() is not None, 60, "fleet_agents ready")
        if agents.poll() is not None:
            raise RuntimeError(
                f"fleet_agents exited with {agents.returncode}: {(runtime / 'fleet_agents.log').read_text()[-500:]}"
            )
        sampler = Sampler(agents.pid)
        sampler.start()
        app = DittoApp(site=fleet_site(args, hosts, runtime))
        probes.time_ticks(app)
        async with app.run_test(size=SIZE) as pilot:
            t_start = time.monotonic()
            table = app.query_one(CVMTable)
            res["fresh_s"] = await wait_for(
                lambda: app.fleet is not None and all(link.state is LinkState.FRESH for link in app.links),
                900,
                "every link fresh",
                app=app,
            )
            rows = hosts * args.cvms
            await wait_for(lambda: table.row_count >= rows, 900, f"{rows} CVM rows", app=app)
            res["rows_s"] = time.monotonic() - t_start
            print(f"  links fresh after {res['fresh_s']:.1f} s, {rows} rows after {res['rows_s']:.1f} s", flush=True)
            await asyncio.sleep(3)  # settle: the first full sync and its repaint are behind us
            if args.quiet > 0:  # the console's CPU with no hook of this benchmark in its way
                probes.quiet = True
                q0 = time.perf_counter()
                await asyncio.sleep(args.quiet)
                probes.quiet = False
                res["quiet_stats"] = sampler.over(q0, time.perf_counter())

            lag: list[tuple[float, float]] = []
            stop = asyncio.Event()
            lag_task = asyncio.create_task(loop_lag(lag, stop))
            w0 = time.perf_counter()
            w1 = w0 + window
            probes.reset(w0, w1)
            # The agents stop at the end of the part whatever the event loop is doing: no backlog grows after it.
            killer = threading.Timer(window + profile_s + 0.5, lambda: agents.poll() is None and agents.terminate())
            killer.daemon = True
            killer.start()
            if profile_s > 0:
                probes.profilers = {"screen": ThreadProfile(), "links": ThreadProfile()}
                probes.profile_ticks = 0
                probes.profile_start, probes.profile_end = w1, w1 + profile_s
            await asyncio.sleep(max(0.0, w1 - time.perf_counter()))
            res["resumed_late_s"] = time.perf_counter() - w1
            stop.set()
            res["stats"] = sampler.over(w0, w1)
            res["rss_now"] = psutil.Process().memory_info().rss / 2**20
            res["ticks"], res["render_ms"], res["notify_ms"] = probes.ticks, probes.render_ms, probes.notify_ms
            res["decode_ms"] = probes.decode_ms
            res["attempts"] = sum(link.attempts for link in app.links)
            res["age_ms"], res["notify_cvms"], res["fresh"] = probes.age_ms, probes.notify_cvms, probes.fresh
            res["rows_age_ms"] = probes.rows_age_ms
            res["gc_ms"], res["gc_cpu_ms"] = probes.gc_ms, probes.gc_cpu_ms
            res["lag"] = [ms for t, ms in lag if w0 <= t < w1]
            res["backlog_mib"] = (
                sum(
                    len(getattr(getattr(link._client, "_reader", None), "_buffer", b""))
                    for link in app.links
                    if link._client is not None
                )
                / 2**20
            )
            res["rows"] = table.row_count
            if probes.profilers:
                screen, links = probes.profilers["screen"], probes.profilers["links"]
                while not screen.stopped:  # the hooks start and stop it on time; this is a fallback
                    await asyncio.sleep(0.25)
                    probes._check_profile(time.perf_counter())
                await asyncio.sleep(0.5)  # the links' thread stops its own at its next update
                if screen.started:
                    res["profile_wall"] = screen.stopped - screen.started
                    res["profile"] = profile_table(screen.profiler, res["profile_wall"])
                    res["profile_ticks"] = probes.profile_ticks
                if links.started and links.stopped:
                    res["links_profile"] = profile_table(links.profiler, links.stopped - links.started, table=False)
                if args.pstats:
                    for name, which in probes.profilers.items():
                        if which.started and which.stopped:
                            which.profiler.dump_stats(f"{args.pstats}.{name}")
                probes.profilers = {}
            killer.cancel()
            await lag_task
            res["quit_hung"], res["quit_ended"] = await quit_app(app)
            await pilot.pause()
    finally:
        if sampler is not None:
            sampler.halt.set()
        res["agents_rc"] = stop_agents(agents)
        shutil.rmtree(runtime, ignore_errors=True)
    res["part_s"] = time.monotonic() - t_part
    probes.app = None  # let the 10k-row app go: its objects would slow every later full garbage collection
    return res


# -- part 2: key press -> change on screen, demo site ---------------------------------------------------------


def workers_of(table: CVMTable, key: str) -> tuple[int, int]:
    """The active and maximum workers shown in a row's workers cell (`███░░░░░ 3/8` -> (3, 8))."""
    cell = table.get_cell(key, "workers")
    text = cell.plain if hasattr(cell, "plain") else str(cell)
    active, _, most = text.split()[-1].partition("/")
    return int(active), int(most)


async def demo_part(args: argparse.Namespace, probes: Probes) -> dict[str, Any]:
    demo = DemoSession()
    app = DittoApp(demo=demo)
    res: dict[str, Any] = {"cell": [], "painted": [], "frame_wait": [], "frame": []}
    try:
        async with app.run_test(size=SIZE) as pilot:
            table = app.query_one(CVMTable)
            await wait_for(
                lambda: (
                    app.fleet is not None
                    and all(link.state is LinkState.FRESH for link in app.links)
                    and table.row_count > 0
                ),
                60,
                "demo site fresh",
                app=app,
            )
            await pilot.pause(0.5)
            # A CVM with room both ways: plus/minus alternate, so the count stays within boot..max.
            key = next(k for k in sorted(table.keys) if 0 < workers_of(table, k)[0] < workers_of(table, k)[1])
            res["cvm"] = key
            changed_at: list[float] = []
            original_sync_groups = table.sync_groups

            def sync_groups(groups: dict[str, Any], parts: dict[str, Any] | None = None) -> None:
                before = workers_of(table, key)
                original_sync_groups(groups, parts)
                if workers_of(table, key) != before:
                    changed_at.append(time.perf_counter())

            table.sync_groups = sync_groups  # type: ignore[method-assign]
            rng = random.Random(7)
            probes.reset(time.perf_counter(), float("inf"))  # for the garbage-collection pauses during the presses
            for i in range(args.presses):
                table.move_cursor(row=table.get_row_index(key))
                await pilot.pause(0.2 + rng.uniform(0, app.refresh_interval))  # any phase of the refresh tick
                before = workers_of(table, key)[0]
                step = 1 if i % 2 == 0 else -1
                changed_at.clear()
                t0 = time.perf_counter()
                await pilot.press("plus" if step > 0 else "minus")
                deadline = t0 + 5
                while workers_of(table, key)[0] != before + step:
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"{key}: workers did not become {before + step} within 5 s")
                    await pilot.pause(0.005)
                t_cell = changed_at[-1] if changed_at else time.perf_counter()
                while not any(start >= t_cell for start, _end in probes.renders):
                    probes.rendered.clear()
                    await probes.rendered.wait()
                t_start, t_paint = next((start, end) for start, end in probes.renders if start >= t_cell)
                res["frame_wait"].append((t_start - t_cell) * 1000)  # the cell changed, the frame not yet begun
                res["frame"].append((t_paint - t_start) * 1000)  # the frame that paints it
                res["cell"].append((t_cell - t0) * 1000)
                res["painted"].append((t_paint - t0) * 1000)
            res["gc_ms"], res["render_ms"] = probes.gc_ms, probes.render_ms
            probes.reset(0, 0)
            res["quit_hung"], res["quit_ended"] = await quit_app(app)
            await pilot.pause()
    finally:
        if demo.running:
            await demo.stop()
    return res


# -- report ---------------------------------------------------------------------------------------------------

PROFILE_FUNCS = [
    # (label, file suffix, function name); the first TICK_ROWS run inside the tick
    ("`DittoApp.tick` (all of it)", "dittotui/app.py", "tick"),
    ("  `cvm_rows` (build every CVM row)", "dittotui/tables/cvms.py", "cvm_rows"),
    ("      `decode_policy` (`CVM.policy_flags`)", "hostctl/wire/security.py", "decode_policy"),
    ("  `LiveTable._apply` (sync the CVM, host and service rows)", "dittotui/tables/live.py", "_apply"),
    ("    `Widget.refresh` (changed lines on screen)", "textual/widget.py", "refresh"),
    ("  `host_row`", "dittotui/tables/hosts.py", "host_row"),
    ("  `Trends.record`", "dittotui/trends.py", "record"),
    ("`HostLink._on_notification` (apply updates)", "hostctl/client/link.py", "_on_notification"),
    ("  `Model.from_dict`", "hostctl/wire/model.py", "from_dict"),
    ("    `typing.get_type_hints`", "typing.py", "get_type_hints"),
    ("`json.loads` (rpc reader)", "json/__init__.py", "loads"),
    ("`Screen._on_timer_update` (layout + render)", "textual/screen.py", "_on_timer_update"),
    ("  `LiveTable.render_line`", "dittotui/tables/live.py", "render_line"),
    ("    `LiveTable._line` (render a changed row)", "dittotui/tables/live.py", "_line"),
]
TICK_ROWS = 7


@dataclasses.dataclass
class ThreadProfile:
    """One thread's profiler, and when its thread started and stopped it (perf_counter; 0: not yet)."""

    profiler: cProfile.Profile = dataclasses.field(default_factory=cProfile.Profile)
    started: float = 0.0
    stopped: float = 0.0


def profile_table(profiler: cProfile.Profile, wall: float, *, table: bool = True) -> list[str]:
    """The PROFILE_FUNCS table (with `table`) and the top functions by own time."""
    raw = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    found = []
    for label, suffix, func in PROFILE_FUNCS:
        cum, calls = 0.0, 0
        for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in raw.items():
            if name == func and filename.replace("\\", "/").endswith(suffix):
                cum += ct
                calls += nc
        found.append((label, cum, calls))
    tick_cum = found[0][1]
    lines = ["| function | calls | cumulative s | % of wall | % of tick |", "|---|---:|---:|---:|---:|"]
    for i, (label, cum, calls) in enumerate(found):
        if not calls:
            continue
        in_tick = f"{100 * cum / tick_cum:.0f}%" if i < TICK_ROWS and tick_cum else ""
        indent = len(label) - len(label.lstrip())
        lines.append(
            f"| {'&nbsp;' * indent}{label.strip()} | {calls} | {cum:.2f} | {100 * cum / wall:.0f}% | {in_tick} |"
        )
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(12)
    text = buf.getvalue()
    top = [
        line.rstrip().replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
        for line in text[text.index("ncalls") :].splitlines()
        if line.strip()
    ]
    top = [line.replace(os.path.dirname(typing.__file__) + "/", "") for line in top]
    return [*(lines if table else []), "", "Top functions by own time:", "", "```", *top, "```"]


CODE = [
    "dittotui/app.py",
    "dittotui/tables/live.py",
    "dittotui/tables/cells.py",
    "dittotui/tables/hosts.py",
    "dittotui/tables/cvms.py",
    "dittotui/tables/services.py",
    "dittotui/trends.py",
    "hostctl/client/link.py",
    "hostctl/client/channel.py",
    "hostctl/wire/model.py",
    "hostctl/wire/rpc.py",
]


def code_hash() -> str:
    digest = hashlib.sha256()
    for name in CODE:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def fmt(v: float, digits: int = 1) -> str:
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def mean_us(ms: list[float]) -> float:
    return 1000 * sum(ms) / len(ms) if ms else NAN


def per_update_us(r: dict[str, Any]) -> float:
    """Mean time on the links' thread to decode and apply one host's update."""
    return mean_us(r["decode_ms"]) + mean_us(r["notify_ms"])


def fleet_section(title: str, args: argparse.Namespace, r: dict[str, Any], intro: str = "") -> list[str]:
    dirty = [ms for ms, d in r["ticks"] if d]
    every = [ms for ms, _d in r["ticks"]]
    w = r["window"]
    s = r["stats"]

    def row(name: str, values: list[float], unit: str = "ms", digits: int = 1, bold: bool = False) -> str:
        p99 = fmt(pct(values, 99), digits)
        return (
            f"| {name} | {len(values)} | {fmt(pct(values, 50), digits)} {unit} | "
            f"{'**' if bold else ''}{p99} {unit}{'**' if bold else ''} | "
            f"{fmt(max(values) if values else NAN, digits)} {unit} |"
        )

    fresh = r["fresh"]
    lines = [
        f"## {title}",
        "",
        *([intro, ""] if intro else []),
        f"Window {w:.0f} s (all links fresh after {r['fresh_s']:.1f} s, all {r['hosts'] * args.cvms} rows shown after "
        f"{r['rows_s']:.1f} s, then 3 s to settle).",
        "",
        "| measure | n | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|",
        row("`tick()` that did work (dirty)", dirty, bold=True),
        row("`tick()`, all", every),
        row("screen update (layout + render, headless)", r["render_ms"]),
        row("decoding one host's update (`rpc.notification`, links' thread)", r["decode_ms"], digits=3),
        row("applying one host's update (`_on_notification`, links' thread)", r["notify_ms"], digits=3),
        row("age of an update when applied (now − agent `ts`)", r["age_ms"], digits=0),
        row("age of a host's data when its rows are rebuilt (now − agent `ts`)", r["rows_age_ms"], digits=0),
        row("event-loop lag (10 ms sleep overshoot)", r["lag"]),
        "",
        f"- Per second: {len(every) / w:.2f} ticks ({len(dirty) / w:.2f} dirty; the app asks for 4), "
        f"{len(r['render_ms']) / w:.1f} screen updates, {len(r['notify_ms']) / w:.1f} host updates applied "
        f"({r['notify_cvms'] / max(1, len(r['notify_ms'])):.0f} CVMs each; the agents send {r['hosts']}/s).",
        f"- Cost per host update on the links' thread (decode + apply, means): {per_update_us(r):.0f} µs "
        f"({mean_us(r['decode_ms']):.0f} + {mean_us(r['notify_ms']):.0f}); {r['attempts']} connection attempts for "
        f"{r['hosts']} links in all.",
        f"- Main-loop time per second of wall clock: ticks {sum(every) / w / 10:.0f}%, screen updates "
        f"{sum(r['render_ms']) / w / 10:.0f}%; links' thread: decoding and applying updates "
        f"{(sum(r['notify_ms']) + sum(r['decode_ms'])) / w / 10:.0f}% (SSH and asyncio not counted).",
        "- Garbage collection pauses (all of the process, `gc.callbacks`): "
        + ", ".join(
            f"gen {g}: {len(v)} × p50 {fmt(pct(v, 50))} ms, max {fmt(max(v) if v else NAN)} ms"
            for g, v in r["gc_ms"].items()
        )
        + f"; {sum(map(sum, r['gc_ms'].values())) / w / 10:.0f}% of wall, "
        f"{sum(r['gc_cpu_ms']) / w / 10:.0f}% of a core in the collecting threads' CPU time.",
        f"- Console process: CPU **{cpu_text(r.get('quiet_stats'))}%** of one core with the benchmark's hooks off "
        f"({args.quiet:g} s before the window; its {r['hosts']} links included), {cpu_text(s)}% in the window with "
        "them; RSS "
        f"**{fmt(s['rss'], 0)} MiB** at the end (max {fmt(s['rss_max'], 0)}; {r['rss_before']:.0f} MiB before the "
        f"console started). Agents' process: {fmt(s['agent_cpu'], 0)}% CPU.",
        "- Links shown fresh, sampled at each tick: "
        + (f"min {min(fresh)}, mean {sum(fresh) / len(fresh):.0f} of {r['hosts']}" if fresh else "no tick ran")
        + f". The benchmark's own coroutine woke {r['resumed_late_s']:.1f} s after the window ended; unread updates "
        f"in the links' buffers then: {r['backlog_mib']:.1f} MiB (the agents stop {r['profile_s']:g} s after the "
        "window).",
        "- Quitting: "
        + (
            f"`action_quit()` did not return within 15 s: {len(r['quit_hung'])} link task(s) did not "
            f"end on their first cancel ({', '.join(r['quit_hung'][:5])}"
            f"{' ...' if len(r['quit_hung']) > 5 else ''}); "
            + ("a second cancel ended them." if r["quit_ended"] else "even a second cancel did not.")
            if r["quit_hung"]
            else "`action_quit()` returned normally."
        ),
        "",
    ]
    if "profile" in r:
        lines += [
            f"### Where the main loop's time goes (cProfile, {r['profile_wall']:.1f} s, {r['profile_ticks']} dirty "
            "ticks)",
            "",
            "Cumulative time (children included). cProfile slows pure-Python code several times, so the shares "
            "matter, not the absolute times.",
            "",
            *r["profile"],
            "",
        ]
    if "links_profile" in r:
        lines += [
            "### Where the links' thread's time goes (cProfile, the same seconds)",
            "",
            *r["links_profile"],
            "",
        ]
    return lines


def target_line(r: dict[str, Any]) -> str:
    """The issue's four targets for the console, each met or not, in one line."""
    dirty = [ms for ms, d in r["ticks"] if d]
    d99 = pct(dirty, 99)
    cpu = (r.get("quiet_stats") or r["stats"])["cpu"]
    rss = r["stats"]["rss"]
    fresh = min(r["fresh"]) if r["fresh"] else 0
    checks = [
        (f"dirty-tick p99 {fmt(d99, 0)} ms over {len(dirty)} dirty ticks (≤ {TARGET_MS:.0f})", d99 <= TARGET_MS),
        (f"CPU {fmt(cpu, 0)}% of a core (≤ {CPU_TARGET:.0f})", cpu <= CPU_TARGET),
        (f"RSS {fmt(rss, 0)} MiB (≤ {RSS_TARGET_MIB})", rss <= RSS_TARGET_MIB),
        (f"fresh at every tick: at least {fresh} of {r['hosts']}", fresh == r["hosts"]),
    ]
    missed = sum(not ok for _, ok in checks)
    verdict = "every target met" if not missed else f"{missed} of {len(checks)} targets NOT met"
    return f"**{r['hosts']} hosts: {verdict}** — " + "; ".join(
        f"{text} {'met' if ok else 'NOT met'}" for text, ok in checks
    )


def cpu_text(stats: dict[str, float] | None) -> str:
    """`60 (screen 31 / links 29)`: the console's CPU and its two threads' shares, % of one core."""
    if stats is None:
        return "not measured"
    return (
        f"{fmt(stats['cpu'], 0)} (screen {fmt(stats.get('screen_cpu', NAN), 0)} / "
        f"links {fmt(stats.get('links_cpu', NAN), 0)})"
    )


def summary(args: argparse.Namespace, fleets: list[dict[str, Any]]) -> list[str]:
    """The fleets of this run side by side."""
    measures: list[tuple[str, Any]] = [
        ("dirty tick p50 / p99 (ms)", lambda r, d: f"{fmt(pct(d, 50))} / {fmt(pct(d, 99))}"),
        (
            "screen update p50 / p99 (ms)",
            lambda r, d: f"{fmt(pct(r['render_ms'], 50))} / {fmt(pct(r['render_ms'], 99))}",
        ),
        ("host updates applied per second", lambda r, d: f"{len(r['notify_ms']) / r['window']:.0f}"),
        ("CVM records per second", lambda r, d: f"{r['notify_cvms'] / r['window']:.0f}"),
        ("cost per host update, decode + apply (µs, mean)", lambda r, d: f"{per_update_us(r):.0f}"),
        (
            "age of an update when applied p50 / p99 (ms)",
            lambda r, d: f"{fmt(pct(r['age_ms'], 50), 0)} / {fmt(pct(r['age_ms'], 99), 0)}",
        ),
        (
            "age of a host's data when its rows are rebuilt p50 / p99 (ms)",
            lambda r, d: f"{fmt(pct(r['rows_age_ms'], 50), 0)} / {fmt(pct(r['rows_age_ms'], 99), 0)}",
        ),
        ("event-loop lag p99 (ms)", lambda r, d: fmt(pct(r["lag"], 99))),
        ("console CPU, the benchmark's hooks off (% of one core)", lambda r, d: cpu_text(r.get("quiet_stats"))),
        ("console CPU, in the window with its hooks (% of one core)", lambda r, d: cpu_text(r["stats"])),
        ("console RSS at the end (MiB)", lambda r, d: fmt(r["stats"]["rss"], 0)),
        ("agents' process CPU (% of one core)", lambda r, d: fmt(r["stats"]["agent_cpu"], 0)),
        (
            "links fresh at every tick (min of all)",
            lambda r, d: f"{min(r['fresh']) if r['fresh'] else '-'} of {r['hosts']}",
        ),
        ("all links fresh after (s)", lambda r, d: f"{r['fresh_s']:.1f}"),
    ]
    lines = [
        "| measure | " + " | ".join(f"{r['hosts']} hosts" for r in fleets) + " |",
        "|---|" + "---:|" * len(fleets),
    ]
    for label, value in measures:
        cells = [value(r, [ms for ms, dirty in r["ticks"] if dirty]) for r in fleets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def report(args: argparse.Namespace, fleets: list[dict[str, Any]], demo: dict[str, Any]) -> str:
    c, p = demo["cell"], demo["painted"]
    beyond = [ms - DRIVER_MS[1 if i % 2 == 0 else -1] for i, ms in enumerate(p)]  # presses alternate plus, minus
    counts = " and ".join(str(r["hosts"]) for r in fleets)
    link = (
        "one SSH connection per host (asyncssh's server in the agents' process, its host key generated for the run "
        "and verified by the console against a known_hosts naming it; the agent's socket reached through the "
        "connection as a direct-streamlocal channel, as `socket` with `ssh` in a site file; "
        + (
            "asyncssh's own ignore packet before each packet left in, so the console handles two packets per update"
            if args.ignore_packets
            else "the server sends no ignore packet before each packet, as OpenSSH's sshd does not (asyncssh's does)"
        )
        + ")"
        if args.ssh
        else "one unix socket per host"
    )
    changing = (
        "every CVM's CPU % takes a random-walk step"
        if args.changing >= 1
        else f"{args.changing:.0%} of the CVMs take a random-walk step of their CPU %"
    )
    lines = [
        "# Console at fleet scale",
        "",
        f"One run of `python -m bench.console_fleet {' '.join(sys.argv[1:])}` (Textual {textual.__version__}, "
        f"Python {sys.version.split()[0]}, asyncssh {asyncssh.__version__}, {os.cpu_count()} cores shared by the "
        "console, the agents' process and whatever else ran on the machine).",
        "",
        "## Setup",
        "",
        f"- **Code measured** (no VCS information is read): sha256 of {', '.join(f.split('/')[-1] for f in CODE)} "
        f"= `{code_hash()}`.",
        f"- **Fleet**: `bench/fleet_agents.py`, one process serving {counts} hosts in turn, {link}, with the "
        "real JSON-RPC protocol (`hostctl.wire.rpc`, `hostctl.wire.model`, the agent's parameter schemas), no HTTP "
        f"services. {args.cvms} CVMs per host (SEV-SNP/SEV-ES/SEV/none mixed; boot 1, max 9 vCPUs). Every "
        f"second {changing} and {args.churn:.0%} of them change online vCPUs (hosts staggered in phase); each "
        "subscribed link gets an `update` with only the changed CVMs, as from the real agent: one update per host "
        "per second.",
        "- **Console**: `DittoApp(site=...)` (interval 1 s, refresh tick 0.25 s) headless via "
        f"`app.run_test(size={SIZE})`; the console process also runs the links, on their own thread.",
        "- **Measured** within the window: each `app.tick()` (the instance's tick wrapped with `perf_counter`); each "
        "screen update `Screen._on_timer_update` (layout and compositor render of the dirty widgets; headless, so "
        "writing to a terminal is not included); on the links' thread, each update's decoding (`rpc.notification`: "
        "JSON straight into the model's records) and `HostLink._on_notification` (applying it to the host's "
        "snapshot), and the age of that update (now − the agent's `ts`: how old the data are when the console takes "
        "them in); event-loop lag (overshoot of a 10 ms sleep: how long a key press or a repaint waits); CPU % "
        "(user+sys / wall, 100% = one core) and RSS, sampled by a thread. The window is enforced in the timing "
        "hooks and by that thread, not by the event loop. The console's CPU is also measured on its own, over "
        f"{args.quiet:g} s before the window in which every hook of this benchmark only calls what it wraps: the "
        "hooks' timing, and their count of fresh links at every tick, cost the console a few % of a core.",
        "",
        *[target_line(r) + "." for r in fleets],
        "",
        *([*summary(args, fleets), ""] if len(fleets) > 1 else []),
    ]
    for r in fleets:
        lines += fleet_section(f"Fleet: {r['hosts']} hosts × {args.cvms} CVMs at 1 Hz", args, r)
    if demo["cvm"] == "-":
        return "\n".join([*lines, "## Key press → worker change on screen (demo site)", "", "Not run.", ""])
    lines += [
        "## Key press → worker change on screen (demo site)",
        "",
        "Embedded demo site (`DemoSession`: 3 emulated hosts with HTTP services and background traffic; emulated "
        f"driver: {DRIVER.wake_ms:g} ms to wake / {DRIVER.park_ms:g} ms to park one worker). "
        f"Cursor on `{demo['cvm']}`, `plus` and `minus` "
        f"alternating, {len(c)} presses, each after a random pause so presses fall at any phase of the 0.25 s "
        "refresh tick. Time from `pilot.press` to the row's workers cell showing the new count (the moment "
        "sync that changed it returned; checked with `table.get_cell(key, 'workers')`), and to the end of the first "
        "screen update that started after it (headless render).",
        "",
        "| measure | p50 | p99 | max |",
        "|---|---:|---:|---:|",
        f"| key → workers cell updated | {fmt(pct(c, 50), 0)} ms | {fmt(pct(c, 99), 0)} ms | {fmt(max(c), 0)} ms |",
        f"| key → screen updated | {fmt(pct(p, 50), 0)} ms | {fmt(pct(p, 99), 0)} ms | {fmt(max(p), 0)} ms |",
        f"| key → screen updated, less the driver's time | {fmt(pct(beyond, 50), 0)} ms | "
        f"**{fmt(pct(beyond, 99), 0)} ms** | {fmt(max(beyond), 0)} ms |",
        *(
            [
                f"| ... of which: cell changed → its frame begins | {fmt(pct(w, 50), 0)} ms | {fmt(pct(w, 99), 0)} ms "
                f"| {fmt(max(w), 0)} ms |",
                f"| ... of which: that frame (layout + render) | {fmt(pct(f, 50), 0)} ms | {fmt(pct(f, 99), 0)} ms | "
                f"{fmt(max(f), 0)} ms |",
            ]
            if (w := demo.get("frame_wait")) and (f := demo.get("frame"))
            else []
        ),
        "",
        f"Target: the screen painted within the driver's time + {PAINT_TARGET_MS:.0f} ms (two 60 Hz frames) at p99: "
        f"**{'met' if pct(beyond, 99) <= PAINT_TARGET_MS else 'NOT met'}**. The driver's time is the emulated "
        f"driver's own delay for the press: {DRIVER_MS[1]:.0f} ms to wake (`plus`), {DRIVER_MS[-1]:.0f} ms to park "
        "(`minus`).",
        "",
        f"All presses, sorted (key → cell / key → screen, ms): {', '.join(f'{v:.0f}' for v in sorted(c))} / "
        f"{', '.join(f'{v:.0f}' for v in sorted(p))}. Screen updates during the presses: {len(demo['render_ms'])}, "
        f"p50 {fmt(pct(demo['render_ms'], 50))} ms, p99 {fmt(pct(demo['render_ms'], 99))} ms. Garbage "
        "collections in the console process during the presses: "
        + ", ".join(
            f"{name} {len(demo['gc_ms'][gen])}"
            + (f" (max {max(demo['gc_ms'][gen]):.0f} ms)" if demo["gc_ms"][gen] else "")
            for gen, name in ((0, "young"), (1, "middle"), (2, "full"))
        )
        + ".",
        "",
        "The path: key → `scale` RPC (on the links' thread) → the agent applies it (the driver's delay) → the agent "
        "sends an `update` carrying the new count and the audit event at once → the links' thread hands the event "
        "to the screen's loop, which refreshes at once (not at the next 0.25 s tick) → the next screen update "
        "paints the row → the log line is written after it.",
        "",
    ]
    return "\n".join(lines)


def write_report(text: str, out: Path = OUT) -> None:
    findings = ""
    if out.exists():
        old = out.read_text()
        if FINDINGS_MARK in old:
            findings = old[old.index(FINDINGS_MARK) :]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + ("\n" + findings if findings else ""))


def dump_tasks() -> None:
    """SIGUSR1: print every asyncio task's stack (to see what a slow run is waiting for)."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=sys.stderr)
    sys.stderr.flush()


async def main(args: argparse.Namespace) -> None:
    if args.gc_young:
        DittoApp.GC_YOUNG = args.gc_young
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    raise_fd_limit()
    probes = Probes()
    probes.install()
    t0 = time.monotonic()
    fleets = []
    not_run: dict[str, Any] = {"cell": [NAN], "painted": [NAN], "cvm": "-"}
    for hosts in args.hosts:
        print(f"part 1: the fleet, {hosts} hosts", flush=True)
        # Each part runs in a context of its own: Textual keeps the running app in a context variable, and a finished
        # 10k-row app left reachable there would slow every later full garbage collection.
        fleet = await asyncio.create_task(
            fleet_part(args, probes, hosts, args.window, args.profile), context=contextvars.copy_context()
        )
        print(f"  done in {fleet['part_s']:.0f} s (agents exit status {fleet['agents_rc']})", flush=True)
        fleets.append(fleet)
        write_report(report(args, fleets, not_run), args.out)  # the fleet figures are kept even if a later part fails
        gc.collect()
    demo = not_run
    if args.presses > 0:
        print("part 2: key press on the demo site", flush=True)
        t1 = time.monotonic()
        gc.collect()
        demo = await asyncio.create_task(demo_part(args, probes), context=contextvars.copy_context())
        print(f"  done in {time.monotonic() - t1:.0f} s", flush=True)
    text = report(args, fleets, demo)
    write_report(text, args.out)
    print(text)
    print(f"total {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--hosts",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[100],
        help="hosts, or counts run in turn: 100,1000",
    )
    parser.add_argument("--cvms", type=int, default=100)
    parser.add_argument("--changing", type=float, default=1.0, help="share of CVMs whose CPU %% changes each second")
    parser.add_argument("--churn", type=float, default=0.1, help="share of CVMs changing online vCPUs each second")
    parser.add_argument("--ssh", action="store_true", help="one SSH connection per host (default: unix sockets)")
    parser.add_argument(
        "--connect-timeout", type=float, default=5.0, help="the site's request (and SSH connect) timeout, seconds"
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument(
        "--quiet", type=float, default=20.0, help="seconds before the window with the timing hooks off (CPU alone)"
    )
    parser.add_argument("--profile", type=float, default=5.0, help="seconds under cProfile after the window (0: none)")
    parser.add_argument("--presses", type=int, default=20, help="key presses on the demo site (0: skip)")
    parser.add_argument("--out", type=Path, default=OUT, help="the report (default: bench/results/console_fleet.md)")
    parser.add_argument("--pstats", help="also save the raw cProfile data here (for pstats / snakeviz)")
    parser.add_argument("--gc-young", type=int, help="the console's young-generation collection threshold")
    parser.add_argument(
        "--ignore-packets",
        action="store_true",
        help="with --ssh, let the agents' asyncssh server send an ignore packet before each packet (sshd sends none)",
    )
    asyncio.run(main(parser.parse_args()))
