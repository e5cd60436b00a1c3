"""The fault campaign: a running console, scale requests in flight, and hundreds of faults injected under it.

    python -m bench.faults [--hosts 5] [--per-kind 100] [--interval 0.25] [--timeout 1.0] [--seed 1]
                           [--out FILE.md]

Each host is a real agent (`hostctl demo serve-host`: libvirt's test driver, emulated workers that take `--wake-ms`
to wake) behind its own OpenSSH sshd, reached through a cuttable TCP proxy. The console is the real `DittoApp`
headless (`run_test`) on a site file naming those hosts. One task per host keeps a scale request in flight through
the console's own path (`ScaleRequested`, the message the detail screen's `+`/`-` posts); each request carries a
unique `why` (the one change to that path: each link's `scale` is wrapped to put the request's token in place of the
console's fixed "console" and to record what the console was told). Meanwhile the faults, spread over the hosts in
parallel, each host one at a time, once its link is fresh again:

- `kill`: the agent gets SIGKILL and is started again (the fault ends when it answers on its socket);
- `stop`: the agent gets SIGSTOP for 1.5-4 link timeouts, then SIGCONT;
- `cut`: the proxy aborts its TCP connections (RST); the fault ends at once;
- `sshd`: sshd and every session it started are stopped, then sshd starts again on the same port and key;
- `blackhole`: the proxy forwards nothing for 1.5-4 link timeouts (nothing is closed), then forwards again.

Counted from the agents' audit logs on disk and from the console: scale actions lost or applied twice, the console
loop's lateness (a 10 ms ticker on its loop), time to stale after each fault starts and to fresh after it ends
(state changes as the link reports them to the console), tracebacks in the console's and agents' output.
Writes bench/results/faults.md (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import textual

from dittotui.app import DittoApp
from dittotui.messages import ScaleRequested
from hostctl.client import site as site_file
from hostctl.client.link import HostLink, LinkError, LinkState
from hostctl.client.ref import CVMRef
from hostctl.client.site import Defaults, HostEntry, Site
from hostctl.stats import percentile
from hostctl.wire import rpc
from hostctl.wire.model import Event

OUT = Path(__file__).parent / "results" / "faults.md"
FINDINGS_MARK = "<!-- findings: hand-written, kept when the benchmark rewrites this file -->"
KINDS = ("kill", "stop", "cut", "sshd", "blackhole")
CVM = "snp"  # the one CVM of each agent (boot 1, max 5, 2 online at start)
LOW, HIGH = 2, 4  # the console scales it between these counts
STALL_MS = 100.0
STALE_INTERVALS = 2.0
FRESH_S = 5.0
RECOVERY_CAP_S = 30.0  # a fault whose link is not fresh again this long after it ended counts as not fresh
HOLD = (1.5, 4.0)  # stop and blackhole last this many link timeouts (uniform)
TRACEBACK = "Traceback (most recent call last)"


# -- what is recorded ---------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One scale request issued through the console, and what became of it."""

    token: str
    host: str
    issued: float  # monotonic
    step: int
    target: int | None = None
    expect: int | None = None
    sent: float | None = None  # when the console's link call began (None: the console did not send it)
    done: float | None = None
    outcome: str = "pending"  # applied | unchanged | refused | failed | not sent | skipped | error | pending
    detail: str = ""
    shown: bool = False  # the console showed the operator its failure (log line)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> str:
        return CVMRef(self.host, CVM).key


@dataclass
class Fault:
    host: str
    kind: str
    start: float
    end: float
    hold: float
    in_flight: int = 0  # requests of this host in flight when it began
    stale_s: float | None = None  # from start to the link's first state other than fresh
    silence_s: float | None = None  # then, how long the link had gone without data
    fresh_s: float | None = None  # from end (or from stale, if later) to fresh again


@dataclass
class Campaign:
    """Everything one run records, and its settings."""

    args: argparse.Namespace
    runtime: Path
    requests: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    states: dict[str, list[tuple[float, LinkState]]] = field(default_factory=dict)
    silences: dict[str, dict[float, float]] = field(default_factory=dict)  # per host: at each stale, s without data
    lateness: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, ms) of the console's loop
    lines: list[tuple[float, str, str]] = field(default_factory=list)  # the console's log: (monotonic, text, style)
    audit: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    control: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, ms) of the control's late wakes
    # (monotonic, the console thread's stack, where the links' thread was) at each stall
    stall_stacks: list[tuple[float, str, str]] = field(default_factory=list)
    # (monotonic, ms, CPU ms of the collecting thread, generation) of each garbage collection in the console's process
    collections: list[tuple[float, float, float, int]] = field(default_factory=list)
    bench_errors: list[str] = field(default_factory=list)  # the injecting side's own failures (not the console's)
    app_exception: str = ""
    wall_s: float = 0.0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


# -- the hosts, in a process of their own -------------------------------------------------------------------------


class Lab:
    """The hosts and the injector, run by `bench.fault_lab` in a process of its own (so that neither the proxies'
    forwarding nor the injector shares the console's GIL), ordered over its stdin and answering on its stdout."""

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.proc: asyncio.subprocess.Process | None = None
        self.hosts: list[dict[str, Any]] = []
        self._next = 0
        self._waiting: dict[int, tuple[Callable[[float], None], asyncio.Future[tuple[float, str | None]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self, names: list[str], wake_ms: float, nice: int) -> None:
        """Start the process and its hosts; return once every host is up (or raise with the lab's last words)."""
        argv = [sys.executable, "-m", "bench.fault_lab", str(self.runtime), str(wake_ms), str(nice), *names]
        with (self.runtime / "lab.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=Path(__file__).parent.parent
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60 + 10 * len(names))
        if not line:
            raise RuntimeError(f"the fault lab ended before its hosts were up (see {self.runtime / 'lab.log'})")
        self.hosts = json.loads(line)["hosts"]
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            said = json.loads(line)
            started, done = self._waiting[said["id"]]
            if "started" in said:
                started(said["started"])
            else:
                self._waiting.pop(said["id"])
                done.set_result((said["ended"], said["error"]))
        for _started, done in self._waiting.values():  # the lab ended: nothing more will be said
            if not done.done():
                done.set_exception(RuntimeError("the fault lab ended"))

    async def inject(self, host: str, kind: str, hold: float, started: Callable[[float], None]) -> float:
        """Have the lab inflict `kind` on `host`; `started` gets its start time; returns its end time."""
        assert self.proc is not None and self.proc.stdin is not None
        self._next += 1
        done: asyncio.Future[tuple[float, str | None]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = (started, done)
        order = {"id": self._next, "host": host, "kind": kind, "hold": hold}
        self.proc.stdin.write((json.dumps(order) + "\n").encode())
        await self.proc.stdin.drain()
        ended, error = await done
        if error is not None:
            raise RuntimeError(error)
        return ended

    async def close(self) -> None:
        """End of input: the lab stops every host and exits (killed if it has not within a bound)."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


def site_for(lab: Lab, runtime: Path, args: argparse.Namespace) -> Path:
    """A site file naming every host by an ssh alias (through its proxy) and its agent's socket."""
    config = runtime / "ssh_config"
    known_hosts = runtime / "known_hosts"
    config.write_text(
        "".join(
            f"Host {h['name']}\n  HostName {h['host']}\n  Port {h['port']}\n"
            f"  User {h['user']}\n  IdentityFile {h['key']}\n  IdentitiesOnly yes\n"
            for h in lab.hosts
        )
    )
    known_hosts.write_text("".join(h["known_hosts"] for h in lab.hosts))
    site = Site(
        defaults=Defaults(
            interval=args.interval,
            timeout=args.timeout,
            scale_timeout=args.scale_timeout,
            keepalive=args.keepalive,
            backoff_max=args.backoff_max,
            known_hosts=str(known_hosts),
            ssh_config=str(config),
        ),
        hosts=[HostEntry(name=h["name"], ssh=h["name"], socket=h["socket"]) for h in lab.hosts],
    )
    path = runtime / "site.toml"
    site_file.write(site, path)
    return path


def plan(args: argparse.Namespace, names: list[str]) -> dict[str, list[tuple[str, float]]]:
    """Each host's faults in order: `per_kind` of each kind in all, dealt round the hosts, shuffled per host."""
    rng = random.Random(args.seed)
    faults = [kind for kind in KINDS for _ in range(args.per_kind)]
    rng.shuffle(faults)
    out: dict[str, list[tuple[str, float]]] = {name: [] for name in names}
    for i, kind in enumerate(faults):
        hold = rng.uniform(*HOLD) * args.timeout if kind in ("stop", "blackhole") else 0.0
        out[names[i % len(names)]].append((kind, hold))
    return out


async def run_faults(lab: Lab, host: str, faults: list[tuple[str, float]], c: Campaign, seed: int) -> None:
    """One host's faults, one at a time, each once the link is fresh again."""
    rng = random.Random(seed)
    states = c.states[host]
    for kind, hold in faults:
        await until(lambda: bool(states) and states[-1][1] is LinkState.FRESH, RECOVERY_CAP_S)
        await asyncio.sleep(rng.uniform(0.3, 1.2))  # so that faults fall at every phase of the requests
        fault = Fault(host, kind, 0.0, 0.0, hold)

        def began(when: float, fault: Fault = fault) -> None:
            fault.start = when
            fault.in_flight = sum(1 for r in c.requests if r.host == host and r.sent is not None and r.done is None)

        try:
            fault.end = await lab.inject(host, kind, hold, began)
        except Exception as e:  # the bench's own failure: written down, and the campaign goes on
            c.bench_errors.append(f"{host} {kind}: {e}")
            fault.end = time.monotonic()
        c.faults.append(fault)
        # Wait for the link to notice the fault and recover from it (the figures are taken later, from `states`).
        await until(lambda f=fault: went_stale(states, f.start) is not None, hold + RECOVERY_CAP_S)
        await until(lambda f=fault: fresh_again(states, f) is not None, RECOVERY_CAP_S)


async def until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


def went_stale(states: list[tuple[float, LinkState]], start: float) -> float | None:
    """When the link first left fresh at or after `start`."""
    return next((t for t, s in list(states) if t >= start and s is not LinkState.FRESH), None)


def fresh_again(states: list[tuple[float, LinkState]], fault: Fault) -> float | None:
    """When the link was fresh again after the fault ended (and after it went stale): the fault's end when the link
    was back before it (a killed agent's successor can be reached before the bench's own check of it answers)."""
    stale = went_stale(states, fault.start)
    if stale is None:
        return None
    after = max(stale, fault.end)
    seen = list(states)
    then = [s for t, s in seen if stale <= t <= after]
    if then and then[-1] is LinkState.FRESH:
        return after
    return next((t for t, s in seen if t >= after and s is LinkState.FRESH), None)


# -- the console side ---------------------------------------------------------------------------------------------


class Console:
    """Hooks on the running console: what each request became, what the operator was shown, the link states."""

    def __init__(self, app: DittoApp, c: Campaign) -> None:
        self.app = app
        self.c = c
        self.outstanding: dict[str, Request] = {}  # host -> its request in flight
        self.expected_lines: dict[str, Request] = {}  # a failure's log line -> its request

    def install(self) -> None:
        original_log = self.app.log_line

        def log_line(text: str, *, style: str = "", stamp: bool = True) -> None:
            self.c.lines.append((time.monotonic(), text, style))
            self._seen(text)
            original_log(text, style=style, stamp=stamp)

        self.app.log_line = log_line  # type: ignore[method-assign]
        for link in self.app.links:
            self.c.states[link.name] = [(time.monotonic(), link.state)]
            self.c.silences[link.name] = {}
            link.on_update(self._state)
            self._wrap(link)

    def _state(self, link: HostLink) -> None:
        states = self.c.states[link.name]
        if states[-1][1] is not link.state:
            now = time.monotonic()
            states.append((now, link.state))
            if link.last_data is not None:
                self.c.silences[link.name][now] = now - link.last_data

    def _seen(self, text: str) -> None:
        if (req := self.expected_lines.pop(text, None)) is not None:
            req.shown = True
            return
        for req in self.outstanding.values():
            if req.sent is None and text.startswith(f"{req.key}: not "):  # "not scaled: ...", "not known ..."
                req.outcome, req.detail, req.shown = "skipped", text, True
                req.done = time.monotonic()
                req.finished.set()

    def _wrap(self, link: HostLink) -> None:
        original = link.scale

        async def scale(cvm: str, target: int, *, expect: int | None, why: str = "manual") -> Event:
            req = self.outstanding.get(link.name)
            if req is None or req.sent is not None:
                self.c.bench_errors.append(f"{link.name}: a scale the bench did not ask for ({cvm} -> {target})")
                return await original(cvm, target, expect=expect, why=why)
            req.target, req.expect, req.sent = target, expect, time.monotonic()
            try:
                event = await original(cvm, target, expect=expect, why=req.token)
            except rpc.RpcError as e:
                refused = e.code == rpc.REFUSED and isinstance(e.data, dict) and "current" in e.data
                req.outcome, req.detail = ("refused" if refused else "failed"), str(e)
                if not refused:
                    self.expected_lines[f"{req.key}: {e}"] = req
                raise
            except LinkError as e:
                req.outcome, req.detail = ("not sent" if "nothing was sent" in str(e) else "failed"), str(e)
                self.expected_lines[f"{req.key}: {e}"] = req
                raise
            except BaseException as e:
                req.outcome, req.detail = "error", f"{type(e).__name__}: {e}"
                raise
            else:
                req.outcome = "applied" if event.before != event.after else "unchanged"
                req.detail = f"{event.before}->{event.after}"
                return event
            finally:
                req.done = time.monotonic()
                req.finished.set()

        link.scale = scale  # type: ignore[method-assign]

    async def drive(self, host: str, stop: asyncio.Event, seed: int) -> None:
        """Keep one scale request of this host in flight, through the console's own message, until `stop`."""
        rng = random.Random(seed)
        link = self.app.links[[lk.name for lk in self.app.links].index(host)]
        n = 0
        while not stop.is_set():
            cvm = link.cvm(CVM)
            count = cvm.online_vcpus if cvm is not None else None
            step = 1 if count is None or count <= LOW else -1 if count >= HIGH else rng.choice((1, -1))
            n += 1
            req = Request(token=f"fault-campaign {host}#{n}", host=host, issued=time.monotonic(), step=step)
            self.c.requests.append(req)
            self.outstanding[host] = req
            self.app.post_message(ScaleRequested([CVMRef(host, CVM)], step))
            limit = self.c.args.scale_timeout + self.c.args.timeout + 5
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await req.finished.wait()
            self.outstanding.pop(host, None)
            await asyncio.sleep(rng.uniform(0.05, 0.3))


async def ticker(c: Campaign, stop: asyncio.Event, watch: StallWatch, period: float = 0.01) -> None:
    """How late a `period` sleep wakes on the console's loop: what a key press or a repaint waits for."""
    while not stop.is_set():
        t0 = time.perf_counter()
        watch.beat(t0 + period)
        await asyncio.sleep(period)
        c.lateness.append((time.monotonic(), max(0.0, (time.perf_counter() - t0 - period) * 1000)))


class StallWatch(threading.Thread):
    """Says what the console's thread was running when its loop is late: its stack, sampled from another thread
    once per stall (an idle loop's `select` there means the thread was kept from running, not busy), and where the
    links' thread was then."""

    def __init__(self, c: Campaign) -> None:
        super().__init__(name="stall-watch", daemon=True)
        self.c = c
        self.target = threading.get_ident()
        self.links = next((t.ident for t in threading.enumerate() if t.name == "links"), None)
        self.due = time.perf_counter()
        self.caught = False
        self.halt = threading.Event()

    def beat(self, due: float) -> None:
        self.due, self.caught = due, False

    def run(self) -> None:
        while not self.halt.wait(0.02):
            late = time.perf_counter() - self.due
            if late * 1000 <= STALL_MS or self.caught:
                continue
            self.caught = True
            frames = sys._current_frames()
            links = frames.get(self.links) if self.links is not None else None
            links_at = (
                f"{Path(links.f_code.co_filename).name}:{links.f_lineno} {links.f_code.co_name}" if links else "-"
            )
            self.c.stall_stacks.append((time.monotonic(), stack(frames.get(self.target)), links_at))


class GCWatch:
    """Every garbage collection of the console's process: its start, wall time, the CPU time of the thread it ran
    on (much less than the wall time: the thread was kept from running meanwhile) and generation."""

    def __init__(self, c: Campaign) -> None:
        self.c = c
        self.began = self.cpu = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.began, self.cpu = time.monotonic(), time.thread_time()
        else:
            took, cpu = (time.monotonic() - self.began) * 1000, (time.thread_time() - self.cpu) * 1000
            self.c.collections.append((self.began, took, cpu, info["generation"]))

    def __enter__(self) -> GCWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self)


def stack(frame: FrameType | None, depth: int = 6) -> str:
    where = []
    while frame is not None and len(where) < depth:
        code = frame.f_code
        where.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(where)


CONTROL = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t0 = time.perf_counter()
    time.sleep(0.01)
    late = (time.perf_counter() - t0 - 0.01) * 1000
    if late > 50:
        print(f"{time.monotonic():.3f} {late:.1f}", flush=True)
"""


class Control:
    """The same 10 ms ticker in a process of its own doing nothing else: when it is late too, the machine was busy
    (its other work), not the console."""

    def __init__(self, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONTROL, str(seconds)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )

    def stalls(self) -> list[tuple[float, float]]:
        """(monotonic, ms) of each wake-up more than 50 ms late."""
        self.proc.kill()
        out, _ = self.proc.communicate(timeout=10)
        return [(float(t), float(ms)) for t, ms in (line.split() for line in out.splitlines())]


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """The process's stderr (fd 2: where a headless Textual app and asyncio write tracebacks) into `path`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    if not await until(predicate, timeout, 0.05):
        raise TimeoutError(f"{what}: not within {timeout:g} s")


async def campaign(args: argparse.Namespace, runtime: Path, progress: Callable[[str], None] = print) -> Campaign:
    """Run the whole campaign; the agents, sshds and proxies are stopped whatever happens."""
    c = Campaign(args, runtime)
    names = [f"mec-{i}" for i in range(1, args.hosts + 1)]
    lab = Lab(runtime)
    t0 = time.monotonic()
    try:
        await lab.start(names, args.wake_ms, args.hosts_nice)
        if args.gc_young:
            DittoApp.GC_YOUNG = args.gc_young
        app = DittoApp(site=site_file.load(site_for(lab, runtime, args)))
        with stderr_to(runtime / "console.log"), GCWatch(c):
            await console_run(app, c, lab, progress=progress)
    finally:
        await lab.close()
    c.wall_s = time.monotonic() - t0
    c.bench_errors += [f"the fault lab: {n} tracebacks (see lab.log)" for n in [tracebacks(runtime / "lab.log")] if n]
    for name in names:
        path = runtime / f"{name}.audit.jsonl"
        c.audit[name] = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return c


async def console_run(app: DittoApp, c: Campaign, lab: Lab, *, progress: Callable[[str], None]) -> None:
    args = c.args
    names = [h["name"] for h in lab.hosts]
    async with app.run_test(size=(160, 50)):
        await wait_until(lambda: app.fleet is not None, 10, "the console's fleet")
        console = Console(app, c)
        console.install()
        await wait_until(lambda: all(link.state is LinkState.FRESH for link in app.links), 60, "every link fresh")
        progress(f"  {len(names)} hosts fresh; faults begin")
        stop = asyncio.Event()
        watch = StallWatch(c)
        watch.start()
        control = Control(24 * 3600)
        tasks = [asyncio.create_task(ticker(c, stop, watch))]
        tasks += [asyncio.create_task(console.drive(name, stop, args.seed + i)) for i, name in enumerate(names)]
        planned = plan(args, names)
        runs = [run_faults(lab, name, planned[name], c, args.seed * 1000 + i) for i, name in enumerate(names)]
        report_task = asyncio.create_task(report_progress(c, args.per_kind * len(KINDS), progress))
        try:
            await asyncio.gather(*runs)
        finally:
            report_task.cancel()
            watch.halt.set()
            c.control = await asyncio.to_thread(control.stalls)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Every request ends within the scale timeout; give the last ones that long.
        await until(
            lambda: all(r.done is not None or r.outcome != "pending" for r in c.requests), args.scale_timeout + 5
        )
        await asyncio.sleep(2 * args.interval)  # the last audit events reach the console
        if app._exception is not None:
            c.app_exception = f"{type(app._exception).__name__}: {app._exception}"
        await asyncio.wait_for(app.action_quit(), 15)


async def report_progress(c: Campaign, total: int, progress: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(30)
        progress(f"  {len(c.faults)}/{total} faults, {len(c.requests)} requests")


# -- counting -----------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the audit logs and the console say about the requests."""

    outcomes: dict[str, int]
    lost: list[tuple[Request, str]]
    doubled: list[tuple[Request, int]]
    applied_though_failed: int  # reported failed ("may or may not have been applied") and in fact applied
    refusals_unaudited: int
    strays: int  # audit entries of a scale no request of ours explains


def tally(c: Campaign) -> Tally:
    applied: dict[str, int] = {}
    ok: dict[str, int] = {}
    refusals: dict[str, list[dict[str, Any]]] = {}
    strays = 0
    tokens = {r.token for r in c.requests}
    for host, entries in c.audit.items():
        refusals[host] = []
        for e in entries:
            if e.get("action") != "scale":
                continue
            if not e["ok"]:
                refusals[host].append(e)
                continue
            token = str(e.get("why", "")).split(" (already at", 1)[0]
            if token not in tokens:
                strays += 1
                continue
            ok[token] = ok.get(token, 0) + 1
            if e["before"] != e["after"]:
                applied[token] = applied.get(token, 0) + 1
    outcomes: dict[str, int] = {}
    lost: list[tuple[Request, str]] = []
    doubled: list[tuple[Request, int]] = []
    applied_though_failed = refusals_unaudited = 0
    used: set[tuple[str, int]] = set()  # (host, index) of the refusal entries matched
    for r in c.requests:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        if applied.get(r.token, 0) > 1:
            doubled.append((r, applied[r.token]))
        if r.outcome in ("applied", "unchanged") and not ok.get(r.token):
            lost.append((r, f"the console was told {r.detail}; no audit entry"))
        elif r.outcome == "pending":
            lost.append((r, "neither applied nor reported failed (no outcome)"))
        elif r.outcome == "error":
            lost.append((r, f"an unexpected error: {r.detail}"))
        elif r.outcome in ("failed", "not sent") and not r.shown:
            lost.append((r, f"failed without a line on the console: {r.detail}"))
        elif r.outcome == "refused":
            entry = next(
                (
                    i
                    for i, e in enumerate(refusals.get(r.host, []))
                    if (r.host, i) not in used and e["cvm"] == CVM and f"why: {r.token})" in str(e.get("why", ""))
                ),
                None,
            )
            if entry is None:
                refusals_unaudited += 1
            else:
                used.add((r.host, entry))
            if not refused_shown(c, r):
                lost.append((r, f"refused without a line on the console: {r.detail}"))
        if r.outcome == "failed" and applied.get(r.token):
            applied_though_failed += 1
    return Tally(outcomes, lost, doubled, applied_though_failed, refusals_unaudited, strays)


def refused_shown(c: Campaign, r: Request) -> bool:
    """The console showed the refusal: its reply (which carries the agent's message) or its audit event (whose why
    names the request's own why), whichever came first."""
    assert r.sent is not None and r.done is not None
    needle = f"{r.key} scale "
    return any(
        needle in text and "REFUSED" in text and (f"why: {r.token})" in text or r.detail in text)
        for t, text, _style in c.lines
        if r.sent <= t <= r.done + 10
    )


def kind_of(c: Campaign, r: Request) -> str:
    """The fault a request overlapped (its host's, from its start to 5 s after its end), or 'none'."""
    start, end = r.sent if r.sent is not None else r.issued, r.done if r.done is not None else float("inf")
    for f in c.faults:
        if f.host == r.host and start <= f.end + FRESH_S and end >= f.start:
            return f.kind
    return "none"


def measure(c: Campaign) -> None:
    for f in c.faults:
        states = c.states[f.host]
        stale = went_stale(states, f.start)
        fresh = fresh_again(states, f)
        f.stale_s = None if stale is None else stale - f.start
        f.silence_s = None if stale is None else c.silences[f.host].get(stale)
        f.fresh_s = None if fresh is None or stale is None else fresh - max(stale, f.end)
        if f.fresh_s is not None and f.fresh_s > RECOVERY_CAP_S:
            f.fresh_s = None


def tracebacks(path: Path) -> int:
    return path.read_text(errors="replace").count(TRACEBACK) if path.exists() else 0


# -- the report ---------------------------------------------------------------------------------------------------


def machine_busy(c: Campaign, when: float, ms: float) -> bool:
    """The control ticker was late at the same time as the console's (the lateness is logged when it ends)."""
    return any(t - late / 1000 - 0.05 <= when and when - ms / 1000 - 0.05 <= t for t, late in c.control)


def in_gc(c: Campaign, when: float, ms: float) -> bool:
    """A garbage collection of the console's process overlapped the late wake that ended at `when`."""
    return any(start <= when and when - ms / 1000 <= start + took / 1000 for start, took, _cpu, _gen in c.collections)


def during_gc(c: Campaign) -> str:
    """One sentence on the console process's garbage collections and the stalls they overlapped."""
    stalls = [(t, ms) for t, ms in c.lateness if ms > STALL_MS]
    overlapped = sum(1 for t, ms in stalls if in_gc(c, t, ms))
    by_gen = {g: [(ms, cpu) for _s, ms, cpu, gen in c.collections if gen == g] for g in (0, 1, 2)}
    pauses = ", ".join(
        f"gen {g}: {len(v)} (p50 {fmt_one([ms for ms, _ in v])} ms, max {fmt_one([ms for ms, _ in v], max)} ms; "
        f"its thread's CPU p50 {fmt_one([cpu for _, cpu in v])} ms, max {fmt_one([cpu for _, cpu in v], max)} ms)"
        for g, v in by_gen.items()
    )
    return f"Garbage collections of the console's process: {pauses}; {overlapped} of the stalls overlapped one."


def fmt_one(values: list[float], pick: Callable[[list[float]], float] = lambda v: percentile(v, 0.5)) -> str:
    return f"{pick(values):.0f}" if values else "-"


def fmt(values: list[float], unit: str = "", digits: int = 1) -> str:
    if not values:
        return "-"
    return (
        " / ".join(f"{v:.{digits}f}" for v in (percentile(values, 0.5), percentile(values, 0.99), max(values))) + unit
    )


def report(c: Campaign, t: Tally, command: str) -> str:
    args = c.args
    lat = [ms for _t, ms in c.lateness]
    stalls = [ms for ms in lat if ms > STALL_MS]
    shared = sum(1 for when, ms in c.lateness if ms > STALL_MS and machine_busy(c, when, ms))
    control_stalls = [ms for _t, ms in c.control if ms > STALL_MS]
    control_max = max((ms for _t, ms in c.control), default=0.0)
    agent_tb = {name: tracebacks(c.runtime / f"{name}.agent.log") for name in c.audit}
    console_tb = tracebacks(c.runtime / "console.log") + (1 if c.app_exception else 0)
    by_kind: dict[str, list[Fault]] = {k: [f for f in c.faults if f.kind == k] for k in KINDS}
    req_kind = {r.token: kind_of(c, r) for r in c.requests}
    rows = []
    verdicts = []
    for kind, faults in by_kind.items():
        stale = [f.stale_s / args.interval for f in faults if f.stale_s is not None]
        fresh = [f.fresh_s for f in faults if f.fresh_s is not None]
        not_stale = sum(f.stale_s is None for f in faults)
        not_fresh = sum(f.stale_s is not None and f.fresh_s is None for f in faults)
        overlapping = sum(1 for r in c.requests if req_kind[r.token] == kind)
        lost = sum(1 for r, _ in t.lost if req_kind[r.token] == kind)
        doubled = sum(1 for r, _ in t.doubled if req_kind[r.token] == kind)
        holds = [f.hold for f in faults if f.hold]
        rows.append(
            f"| {kind} | {len(faults)} | {f'{min(holds):.1f}-{max(holds):.1f}' if holds else '0'} | "
            f"{sum(f.in_flight for f in faults)} | {overlapping} | {lost} | {doubled} | {fmt(stale)} | {not_stale} | "
            f"{fmt(fresh, digits=2)} | {not_fresh} |"
        )
        stale_ok = not not_stale and bool(stale) and max(stale) <= STALE_INTERVALS
        fresh_ok = not not_fresh and bool(fresh) and max(fresh) <= FRESH_S
        verdicts.append(
            f"| {kind} | {'pass' if stale_ok else 'FAIL'} (max {max(stale) if stale else float('nan'):.1f}"
            f"{f', {not_stale} never stale' if not_stale else ''}) | "
            f"{'pass' if fresh_ok else 'FAIL'} (max {max(fresh) if fresh else float('nan'):.2f} s"
            f"{f', {not_fresh} not fresh within {RECOVERY_CAP_S:.0f} s' if not_fresh else ''}) |"
        )
    silent = [f for f in c.faults if f.kind in ("stop", "blackhole") and f.silence_s is not None]
    past = [(f.silence_s - STALE_INTERVALS * args.interval) * 1000 for f in silent if f.silence_s is not None]
    none_lost = sum(1 for r, _ in t.lost if req_kind[r.token] == "none")
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t.outcomes.items(), key=lambda kv: -kv[1]))
    lines = [
        "# Fault campaign",
        "",
        f"One run of `{command}` on {c.started:%Y-%m-%d} ({platform.machine()}, {os.cpu_count()} cores shared with "
        f"other work; Python {sys.version.split()[0]}, Textual {textual.__version__}): "
        f"{len(c.faults)} faults in {c.wall_s / 60:.1f} min of wall clock.",
        "",
        "## Setup",
        "",
        f"- **Hosts**: {args.hosts}, each a real agent (`hostctl demo serve-host`: libvirt's test driver, one SEV-SNP "
        f"CVM `{CVM}` of boot 1 / max 5 vCPUs, emulated workers taking {args.wake_ms:g} ms to wake) behind its own "
        "OpenSSH sshd (key auth, host key verified), reached through a cuttable TCP proxy; the console reaches "
        "each agent's socket through its SSH connection. The hosts, their proxies and the fault injector run in a "
        f"process of their own (`bench/fault_lab.py`) at niceness {args.hosts_nice}, with every agent and sshd it "
        "starts: on a site they are other machines; here they share the console's cores.",
        f"- **Console**: `DittoApp` headless (`run_test`) on a site file naming those hosts (interval "
        f"{args.interval:g} s, timeout {args.timeout:g} s, scale timeout {args.scale_timeout:g} s, SSH keepalive "
        f"{args.keepalive:g} s, reconnect backoff at most {args.backoff_max:g} s; a link is stale after 2 intervals "
        "of silence and reconnects after 2 intervals + 2 timeouts).",
        f"- **Requests**: one task per host keeps a scale request in flight through the console's own path "
        f"(`ScaleRequested`, as the detail screen's `+`/`-`; the console compares-and-sets against the count on "
        f"screen), between {LOW} and {HIGH} workers, 0.05-0.3 s apart, each with a unique `why`: each link's "
        "`scale` is wrapped to put the request's token in place of the console's fixed `console` and to record "
        "the reply or error the console got (nothing else on the path is changed).",
        f"- **Faults**: {args.per_kind} of each kind, shuffled and dealt round the hosts (seed {args.seed}); each "
        "host runs its faults one at a time, each 0.3-1.2 s after its link is fresh again; the hosts run in "
        f"parallel. `stop` and `blackhole` hold for {HOLD[0]:g}-{HOLD[1]:g} link timeouts (uniform).",
        "",
        "| kind | what is done | the fault ends when |",
        "|---|---|---|",
        "| kill | the agent gets SIGKILL, then is started again | the new agent answers `hello` on its socket |",
        "| stop | the agent gets SIGSTOP, then SIGCONT | SIGCONT is sent |",
        "| cut | the proxy aborts every connection (RST) | at once |",
        "| sshd | sshd and every session it started are stopped, sshd started again (same port and key) | sshd "
        "sends its banner |",
        "| blackhole | the proxy forwards nothing either way and closes nothing, then forwards again | forwarding "
        "resumes |",
        "",
        "## Per kind",
        "",
        "| kind | faults | hold (s) | requests in flight at the start | requests overlapping | lost | doubled | "
        "time to stale, intervals (p50 / p99 / max) | never stale | time to fresh, s (p50 / p99 / max) | "
        f"not fresh within {RECOVERY_CAP_S:.0f} s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "- **requests in flight at the start**: the console's `scale` calls on that host sent and not yet answered "
        "when the fault began; **requests overlapping**: requests on that host from their sending to their end "
        f"overlapping the fault or the {FRESH_S:g} s after it (each counted under the first such fault).",
        "- **lost**: the console was told applied but no audit entry has the request's `why`, or the request was "
        "neither applied nor reported failed (no outcome, an unexpected error, or a failure the console showed "
        "no line for). **doubled**: two or more audit entries that changed the count carry one request's `why`.",
        "- **time to stale**: from the fault's start to the link's first state other than fresh, as the link "
        "reports it to the console (its `on_update` callback), in link intervals. **time to fresh**: from the "
        "fault's end (or from going stale, if that came later) to fresh again, in seconds.",
        "",
        "## Targets",
        "",
        "| kind | stale within 2 intervals | fresh within 5 s |",
        "|---|---|---|",
        *verdicts,
        "",
        f"For the silent faults (stop, blackhole: {len(silent)} seen stale), a link is declared stale after "
        f"{STALE_INTERVALS:g} intervals without data; it was seen stale that long plus (p50 / p99 / max) "
        f"{fmt(past, ' ms')}: the links' thread waking late, and data already on its way when the fault began "
        "(which counts from the fault's start but not from the link's last data).",
        "",
        during_gc(c),
        "",
        "| target | figure | verdict |",
        "|---|---|---|",
        f"| 0 scale actions lost | {len(t.lost)} lost of {len(c.requests)} requests "
        f"({none_lost} outside any fault) | {'pass' if not t.lost else 'FAIL'} |",
        f"| 0 applied twice | {len(t.doubled)} | {'pass' if not t.doubled else 'FAIL'} |",
        f"| 0 console loop stalls > {STALL_MS:.0f} ms | {len(stalls)} over {len(lat)} ticks; lateness p50 / p99 / "
        f"max {fmt(lat, ' ms')}; {shared} of them while the control ticker (a process of its own) was late too; "
        f"the control: {len(control_stalls)} over {STALL_MS:.0f} ms, max {control_max:.0f} ms | "
        f"{'pass' if not stalls else 'FAIL'} |",
        f"| 0 tracebacks | console {console_tb}, agents {sum(agent_tb.values())} | "
        f"{'pass' if not console_tb and not sum(agent_tb.values()) else 'FAIL'} |",
        "",
        "## Requests",
        "",
        f"{len(c.requests)} requests: {outcomes}. `applied`: the console was told the count changed; `unchanged`: "
        "told it was already at the target; `refused`: the agent refused it (compare-and-set found another count; "
        "the console shows the audited refusal); `failed`: sent, then the link broke or timed out (the console "
        "shows the error, which says it may or may not have been applied); `not sent`: the link was down, nothing "
        "was sent (the console says so); `skipped`: the console did not send it (the count "
        "on screen was unknown) and said so.",
        "",
        f"- Reported failed and in fact applied (the audit log has it; the console said it may have been): "
        f"{t.applied_though_failed}.",
        f"- Refusals with no audit entry of theirs (a refusal's entry names the request's `why` after its reason): "
        f"{t.refusals_unaudited}.",
        f"- Audit entries of scales no request explains: {t.strays}.",
        f"- The injecting side's own errors (not the console's): {len(c.bench_errors)}"
        + (f" (first: {c.bench_errors[0]})" if c.bench_errors else "")
        + ".",
        f"- The console's app exception: {c.app_exception or 'none'}.",
        "",
    ]
    if t.lost or t.doubled:
        lines += ["### Lost and doubled requests", ""]
        lines += [f"- lost: {r.token} ({req_kind[r.token]}): {why}" for r, why in t.lost[:20]]
        lines += [f"- doubled: {r.token} ({req_kind[r.token]}): {n} entries" for r, n in t.doubled[:20]]
        lines.append("")
    if stalls:
        worst = sorted(c.lateness, key=lambda x: -x[1])[:5]
        lines += [
            "### Console loop stalls",
            "",
            "The five worst (time since the campaign began, lateness, faults under way on any host from 0.5 s before "
            "to 2 s after):",
            "",
        ]
        t0 = c.lateness[0][0]
        for when, ms in worst:
            active = [f"{f.host} {f.kind}" for f in c.faults if f.start - 0.5 <= when <= f.end + 2]
            busy = "; the control was late too" if machine_busy(c, when, ms) else ""
            lines.append(f"- {when - t0:.1f} s: {ms:.0f} ms ({', '.join(active) or 'no fault'}{busy})")
        idle = sum(1 for _t, at, _links in c.stall_stacks if at.startswith("selectors.py"))
        links_busy = sum(1 for _t, _at, at in c.stall_stacks if not at.startswith(("selectors.py", "threading.py")))
        places: dict[str, int] = {}
        for _t, at, _links in c.stall_stacks:
            places[at] = places.get(at, 0) + 1
        lines += [
            "",
            f"The console thread's stack, sampled from another thread {STALL_MS:.0f}-{STALL_MS + 20:.0f} ms into "
            f"each stall ({len(c.stall_stacks)} samples; {idle} in the loop's `select`, i.e. the loop had nothing "
            "to run and its thread was kept from running: the machine's other work or another thread holding the "
            f"GIL). The links' thread was running Python code, not waiting, at {links_busy} of them. "
            "Most frequent, innermost frame first:",
            "",
            *(f"- {n} x `{stack}`" for stack, n in sorted(places.items(), key=lambda kv: -kv[1])[:8]),
        ]
        lines.append("")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=5)
    p.add_argument("--per-kind", type=int, default=100, help="faults of each kind, over all hosts")
    p.add_argument("--interval", type=float, default=0.25, help="the links' update interval, s")
    p.add_argument("--timeout", type=float, default=1.0, help="the links' request timeout, s")
    p.add_argument("--scale-timeout", type=float, default=3.0)
    p.add_argument("--keepalive", type=float, default=1.0, help="SSH keepalive interval, s")
    p.add_argument(
        "--backoff-max",
        type=float,
        default=Defaults().backoff_max,
        help="longest wait between reconnects, s (default: a site's)",
    )
    p.add_argument("--wake-ms", type=float, default=300.0, help="how long one emulated worker takes to wake")
    p.add_argument(
        "--hosts-nice",
        type=int,
        default=10,
        help="niceness of the hosts' processes (agents, sshds, proxies), which share the console's cores here",
    )
    p.add_argument(
        "--gc-young", type=int, help="the console's young-generation collection threshold (default: the console's)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    return p


def checked(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in one line, or None."""
    for name in ("hosts", "per_kind"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1"
    for name in ("interval", "timeout", "scale_timeout", "keepalive", "backoff_max", "wake_ms"):
        if not getattr(args, name) > 0:
            return f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive"
    return None


async def main(args: argparse.Namespace, command: str) -> str:
    runtime = Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    print(f"{args.hosts} hosts, {args.per_kind} faults of each kind", flush=True)
    c = await campaign(args, runtime, progress=lambda line: print(line, flush=True))
    measure(c)
    text = report(c, tally(c), command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.exists() else ""
    findings = old[old.index(FINDINGS_MARK) :] if FINDINGS_MARK in old else ""
    args.out.write_text(text + ("\n" + findings if findings else ""))
    print(text)
    print(f"(runtime kept for inspection: {runtime})", flush=True)
    return text


if __name__ == "__main__":
    arguments = parser().parse_args()
    if problem := checked(arguments):
        print(f"python -m bench.faults: {problem}", file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(arguments, "python -m bench.faults " + " ".join(sys.argv[1:])))
