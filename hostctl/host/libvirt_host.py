"""One libvirt host, kept current from libvirt's events. Blocking libvirt calls run on worker threads.

Calls that wait on a guest (its agent) run on a pool of their own, one at a time per CVM and each bounded, so a hung
guest costs at most that bound and never delays reads, scales or snapshots of another CVM. libvirt sends no event
when vCPUs change, so every sample also reconciles the counts (libvirt's in one bulk call where the driver has it,
the guests' within a time budget) and reports a change made outside hostctl as an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlparse

import libvirt
import msgspec
import psutil

from hostctl.errors import HostctlError, ScaleRefused
from hostctl.host import drivers, events, sev
from hostctl.host.domxml import WORKERS_KEY, WORKERS_NS, parse_domain, workers_metadata
from hostctl.host.drivers import CountUnknown
from hostctl.host.platform import Platform, read_platform
from hostctl.wire.model import CVM, DomainState, Event, Host, HostSEV, Launch, Service, Snapshot

T = TypeVar("T")

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
}
_NO_COUNT = {DomainState.PAUSED: "paused", DomainState.SHUTOFF: "shut off", DomainState.CRASHED: "crashed"}
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd went away",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed",
}
OUTSIDE = "outside hostctl"  # who an event names when a count changed without a scale of ours


class Demand(NamedTuple):
    """What a CVM's services were asked since the previous sample: the mean requests in flight or queued, and the
    requests received per second."""

    concurrency: float
    rps: float


def is_local_hypervisor(uri: str) -> bool:
    """True for a real hypervisor on this machine (psutil then describes the host itself)."""
    parsed = urlparse(uri)
    return parsed.scheme in ("qemu", "qemu+unix", "lxc") and not parsed.hostname


class LibvirtHost:
    """A libvirt connection, its CVMs kept current from lifecycle and metadata-change events."""

    def __init__(
        self,
        uri: str,
        *,
        name: str | None = None,
        driver_options: dict[str, dict[str, Any]] | None = None,
        capabilities: dict[str, bool | None] | None = None,
        sev_facts: HostSEV | None = None,
        platform_root: Path | None = None,
        cpu_source: Callable[[str], float] | None = None,
        demand_source: Callable[[str], Demand | None] | None = None,
    ) -> None:
        self.uri = uri
        self.name = name
        self._driver_options = driver_options or {}
        self._capabilities = capabilities
        self._sev_facts = sev_facts  # given (the demo's, emulated): neither libvirt nor the kernel is asked
        # The kernel's SEV parameters and SMT are read under this root: `/` for a hypervisor on this machine.
        self.platform_root = (
            platform_root if platform_root is not None else Path("/") if is_local_hypervisor(uri) else None
        )
        self._cpu_source = cpu_source
        self._demand_source = demand_source
        self._drivers: dict[str, drivers.WorkerDriver] = {}
        self._driver_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="libvirt")
        self._confirmed: dict[str, float] = {}  # CVM -> when its count was last read (Unix time)
        self._asking: dict[
            str, tuple[float, asyncio.Future[Any]]
        ] = {}  # CVM -> its guest call in flight: since, outcome
        self._counting: set[asyncio.Task[None]] = set()
        self.guest_errors: Counter[str] = Counter()  # CVM -> guest-agent calls that failed or overstayed, since start
        self._reconnecting: asyncio.Task[None] | None = None
        self.agent_timeout = float(self._driver_options.get("guest", {}).get("timeout_s", drivers.AGENT_TIMEOUT_S))
        self._conn: libvirt.virConnect | None = None
        self._host: Host | None = None
        self._cvms: dict[str, CVM] = {}
        self._cpu_prev: dict[str, tuple[int, float]] = {}
        self._callbacks: list[int] = []
        self._refreshing: dict[str, bool] = {}
        self._scale_locks: dict[str, asyncio.Lock] = {}
        self._change_listeners: list[Callable[[str], None]] = []
        self._event_listeners: list[Callable[[Event], None]] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the connection and read the inventory; from then on events keep it current, and a connection that
        breaks (libvirtd restarted) is opened again with backoff."""
        events.register_event_loop()
        await self._connect()

    async def _connect(self) -> None:
        conn = await self._run(self._open_blocking)
        try:
            host, cvms = await self._run(self._read_all, conn)
        except HostctlError:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise
        self._conn = conn
        self._host = host
        self.name = host.name
        old, self._cvms = self._cvms, {c.name: c for c in cvms}
        for name in old.keys() | self._cvms.keys():  # after a reconnect: whatever changed meanwhile
            if name not in self._cvms:
                self._forget(name)
            if old.get(name) != self._cvms.get(name):
                self._changed(name)
        self._callbacks = [
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata, None),
        ]
        with contextlib.suppress(libvirt.libvirtError):  # QEMU only: the guest agent came or went
            self._callbacks.append(
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, self._on_agent, None)
            )
        with contextlib.suppress(libvirt.libvirtError):  # remote and QEMU connections tell when they break
            conn.registerCloseCallback(self._on_closed, None)
        await self._count_guests(self.agent_timeout)

    def _on_closed(self, _conn: object, reason: int, _opaque: object) -> None:
        """The connection broke (libvirtd stopped or restarted): no count is known until it is open again."""
        if self._conn is None or self._reconnecting is not None:
            return
        self._conn, self._callbacks = None, []
        why = _CLOSE_REASONS.get(reason, "closed")
        for cvm in list(self._cvms.values()):
            last, at = self._last_known(cvm)
            self._store_count(
                msgspec.structs.replace(
                    cvm,
                    online_vcpus=None,
                    vcpus_error=f"libvirt connection lost ({why}); reconnecting",
                    last_online=last,
                    last_online_at=at,
                    cpu_percent=None,
                )
            )
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                except HostctlError:
                    delay = min(10.0, delay * 2)
                    continue
                return
        finally:
            self._reconnecting = None

    async def close(self) -> None:
        """Deregister events, close the connection and let libvirt's event loop release it while this loop runs
        (a connection freed after the loop has closed makes libvirtaio print "Event loop is closed" tracebacks)."""
        for task in [*self._counting, *([self._reconnecting] if self._reconnecting else [])]:
            task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            for cb in self._callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cb)
            self._callbacks = []
            closing = asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
            done, _ = await asyncio.wait({closing}, timeout=2)  # libvirt may wait for a guest call in flight
            for future in done:
                future.exception()
            del conn
            gc.collect()  # domain objects in dead frames hold the connection
            await events.drain(2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> LibvirtHost:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reading ---------------------------------------------------------------------------------

    @property
    def host(self) -> Host:
        if self._host is None:
            raise HostctlError(f"{self.uri}: not open")
        return self._host

    @property
    def connected(self) -> bool:
        """Whether the libvirt connection is open (False while it is reconnecting)."""
        return self._conn is not None

    @property
    def cvms(self) -> list[CVM]:
        return sorted(self._cvms.values(), key=lambda c: c.name)

    def cvm(self, name: str) -> CVM:
        """The CVM called `name`, or a clear error listing the ones there are."""
        try:
            return self._cvms[name]
        except KeyError:
            known = ", ".join(sorted(self._cvms)) or "none"
            raise HostctlError(f"unknown CVM {name!r} on {self.name} (known: {known})") from None

    def get(self, name: str) -> CVM | None:
        """The CVM called `name`, if there is one."""
        return self._cvms.get(name)

    def snapshot(self, services: list[Service] | None = None) -> Snapshot:
        """A consistent picture of the host, without touching libvirt."""
        return Snapshot(host=self.host, cvms=self.cvms, services=list(services or []))

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call `callback(cvm_name)` whenever that CVM's record changes (or it goes away)."""
        self._change_listeners.append(callback)

    def on_event(self, callback: Callable[[Event], None]) -> None:
        """Call `callback(event)` for every audit event (scales and refusals)."""
        self._event_listeners.append(callback)

    async def sample(self, budget: float | None = None) -> None:
        """Sample CPU use and reconcile the online counts.

        CPU % of a CVM is of its online vCPUs (CPU-time delta over the online count; None while that count is
        unknown), or the cpu_source's; for the host from psutil. Counts libvirt keeps are read in the same pass; the
        guests' are asked, waiting `budget` seconds at most (default half a second), and an answer that comes later is
        taken in when it comes. With a demand_source, each CVM's `concurrency` is its mean requests in flight or
        queued since the previous sample and `rps` the requests its services received per second; without one both
        stay None (the host does not know them).
        """
        used, counts = await self._run(self._sample_blocking)
        for name, count in counts.items():
            self._reconcile(name, count, "")
        await self._count_guests(min(0.5, self.agent_timeout) if budget is None else budget)
        for name, cores in used.items():
            cvm = self._cvms.get(name)
            if cvm is None:
                continue
            if self._cpu_source is not None:
                cvm.cpu_percent = round(self._cpu_source(name), 1)
            elif cvm.online_vcpus:
                cvm.cpu_percent = round(max(0.0, min(100.0, 100 * cores / cvm.online_vcpus)), 1)
            else:
                cvm.cpu_percent = None
            if self._demand_source is not None:
                demand = self._demand_source(name)
                cvm.concurrency = None if demand is None else round(demand.concurrency, 2)
                cvm.rps = None if demand is None else round(demand.rps, 1)
        host = self.host
        if is_local_hypervisor(self.uri):
            host.cpu_percent = psutil.cpu_percent()
            host.load = os.getloadavg()[0]
        else:
            busy = sum((c.cpu_percent or 0.0) / 100 * (c.online_vcpus or 0) for c in self._cvms.values())
            host.cpu_percent = round(min(100.0, 100 * busy / max(1, host.cpus)), 1)
        for name in used:
            self._changed(name)

    # -- scaling ---------------------------------------------------------------------------------

    async def scale(self, name: str, target: int, *, expect: int | None = None, who: str = "", why: str = "") -> Event:
        """Set `name`'s online vCPUs to `target` (boot..max), only if `expect` (when given) is what is found.

        A retry of an applied request finds the target already in place and changes nothing.
        """
        try:
            cvm = self.cvm(name)
        except HostctlError as e:  # e.g. undefined between the peer's snapshot and its request
            raise self._refused(name, target, who, why, e) from None
        if cvm.state is not DomainState.RUNNING:  # before the guest is asked: a paused guest never answers
            refused = ScaleRefused(f"{name}: refused: it is {cvm.state.value}, not running")
            raise self._refused(name, target, who, why, refused) from None
        lock = self._scale_locks.setdefault(name, asyncio.Lock())
        async with lock:
            await self._quiet(name)
            try:
                if self._asks_guest(cvm):  # it may wait on the guest: bounded, and on a thread of its own
                    before, after = await self._ask(name, self._scale_blocking, cvm, target, expect, who)
                else:
                    before, after = await self._run(self._scale_blocking, cvm, target, expect, who)
            except HostctlError as e:
                raise self._refused(name, target, who, why, e) from None
            with contextlib.suppress(HostctlError):  # unreadable now: the next event or sample reads it
                if (fresh := await self._run(self._read_named, name)) is not None:
                    self._store(fresh)
            self._counted(name, after)
        if before == after:
            why = f"{why} (already at {after}, nothing changed)".strip()
        event = Event(self.host.name, name, "scale", who, ok=True, before=before, after=after, why=why)
        self._record(event)
        return event

    def _refused(self, name: str, target: int, who: str, why: str, error: HostctlError) -> HostctlError:
        """Audit a scale that was refused or failed, and return the error to raise. The event's counts are the one
        it stayed at (unknown when that is not known, or when it may have been applied); its why gives the reason,
        the target and the request's own why."""
        failed = _scale_failure(name, error)
        stayed = getattr(failed, "current", None)
        if stayed is None and (cvm := self._cvms.get(name)) is not None:
            stayed = cvm.online_vcpus
        after = None if isinstance(error, _Overdue) else stayed
        asked = f"requested {target} vCPUs" + (f", why: {why}" if why else "")
        event = Event(
            self.host.name, name, "scale", who, ok=False, before=stayed, after=after, why=f"{failed} ({asked})"
        )
        self._record(event)
        return failed

    def _scale_blocking(self, cvm: CVM, target: int, expect: int | None, who: str) -> tuple[int, int]:
        try:
            return self._scale_domain(cvm, target, expect, who)
        except libvirt.libvirtError as e:  # e.g. destroyed or undefined while we scaled it
            raise HostctlError(f"{cvm.name}: libvirt: {e.get_error_message()}") from None

    def _scale_domain(self, cvm: CVM, target: int, expect: int | None, who: str) -> tuple[int, int]:
        conn = self._connected()
        dom = conn.lookupByName(cvm.name)
        cvm = self._read(dom)
        driver = self._driver(cvm.driver)
        if cvm.state is not DomainState.RUNNING:
            raise ScaleRefused(f"{cvm.name}: refused: it is {cvm.state.value}, not running")
        if not cvm.boot_vcpus <= target <= cvm.max_vcpus:
            raise ScaleRefused(
                f"{cvm.name}: refused: {target} vCPUs is outside boot..max ({cvm.boot_vcpus}..{cvm.max_vcpus})"
            )
        if reason := driver.refuse(cvm):
            raise ScaleRefused(reason)
        try:
            current = driver.online(dom)
        except CountUnknown as e:
            raise ScaleRefused(
                f"{cvm.name}: refused: its online vCPU count is unknown ({e}); nothing changed"
            ) from None
        if current == target:
            return current, current
        if expect is not None and expect != current:
            raise ScaleRefused(
                f"{cvm.name}: refused: expected {expect} online vCPUs but found {current}; nothing changed",
                current=current,
            )
        driver.apply(dom, cvm, target)
        metadata = workers_metadata(target - cvm.boot_vcpus, cvm.max_vcpus - cvm.boot_vcpus, who, time.time())
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata, WORKERS_KEY, WORKERS_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE
        )
        return current, target

    # -- blocking helpers (worker threads only) --------------------------------------------------

    def _connected(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is None:
            raise HostctlError(f"libvirt at {self.uri}: not connected (reconnecting)")
        return conn

    def _open_blocking(self) -> libvirt.virConnect:
        parsed = urlparse(self.uri)
        if parsed.scheme == "test" and parsed.path != "/default" and not Path(parsed.path).is_file():
            raise HostctlError(f"cannot open libvirt URI {self.uri!r}: no node file at {parsed.path}")
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise HostctlError(f"cannot open libvirt URI {self.uri!r}: {e.get_error_message()}") from None
        if parsed.hostname:
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(5, 3)
        return conn

    def _read_all(self, conn: libvirt.virConnect) -> tuple[Host, list[CVM]]:
        _model, memory_mib, cpus, *_ = conn.getInfo()
        version = conn.getLibVersion()
        support = self._sev_support(conn)
        capabilities: dict[str, bool | None] = self._capabilities or {
            "sev": support.sev,
            "sev_es": support.sev_es,
            "sev_snp": support.sev_snp,
        }
        facts = self._sev_facts or sev.host_facts(support, *self._platform())
        cvms = []
        for dom in conn.listAllDomains():
            try:
                cvms.append(self._read(dom))
            except libvirt.libvirtError:  # undefined since it was listed: its event says so
                continue
        host = Host(
            name=self.name or conn.getHostname(),
            uri=self.uri,
            cpus=cpus,
            memory_mib=memory_mib,
            libvirt_version=f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}",
            confidential=sev.count_guests(facts, cvms),
            sev=capabilities.get("sev"),
            sev_es=capabilities.get("sev_es"),
            sev_snp=capabilities.get("sev_snp"),
        )
        return host, cvms

    def _sev_support(self, conn: libvirt.virConnect) -> sev.Support:
        """libvirt's SEV support and guest limits: domain capabilities, then node SEV info for what they lack."""
        if self._capabilities is not None or self._sev_facts is not None:
            return sev.Support()
        try:
            support = sev.parse_domain_capabilities(conn.getDomainCapabilities())
        except libvirt.libvirtError as e:
            why = f"libvirt gives no domain capabilities: {e.get_error_message()}"
            return sev.Support(why=dict.fromkeys(("sev", "sev_es", "sev_snp", "max_guests", "max_es_guests"), why))
        if support.sev and (support.max_guests is None or support.max_es_guests is None):
            with contextlib.suppress(libvirt.libvirtError):  # the reasons the capabilities gave stand
                sev.node_limits(conn.getSEVInfo(), support)
        return support

    def _platform(self) -> tuple[Platform | None, str]:
        """The kernel's side of SEV under `platform_root`, or None with why it is not read."""
        if self.platform_root is None:
            return None, f"{self.uri} is not a hypervisor on this machine: its kernel is not read from here"
        return read_platform(self.platform_root), ""

    def _read_named(self, name: str) -> CVM | None:
        """`name` read now, or None when libvirt has no such domain (any other libvirt error is raised)."""
        conn = self._connected()
        try:
            return self._read(conn.lookupByName(name))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _read(self, dom: libvirt.virDomain) -> CVM:
        facts = parse_domain(dom.XMLDesc(0))
        state = _STATES.get(dom.state()[0], DomainState.OTHER)
        boot = facts.boot_vcpus
        if boot is None:
            boot = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).vcpus_current
        driver_name = facts.driver or ("guest" if facts.guest_agent or facts.security.confidential else "hotplug")
        online: int | None = None
        error = _NO_COUNT.get(state, "") if state is not DomainState.RUNNING else ""
        if state is DomainState.RUNNING:
            driver = self._driver(driver_name) if driver_name in drivers.REGISTRY else None
            if driver is None:
                error = f"unknown worker driver {driver_name!r}"
            elif driver.asks_guest:
                error = "not counted yet"  # the guest is asked on the guest pool, never in a plain read
            else:
                online = driver.online(dom)
        elif state is DomainState.OTHER:
            error = "neither running nor stopped"
        return CVM(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=state,
            security=facts.security,
            policy=facts.policy,
            boot_vcpus=boot,
            max_vcpus=facts.vcpus_max,
            online_vcpus=online,
            driver=driver_name,
            cpu_percent=None if online is None else 0.0,
            vcpus_error=error,
            scaled_by=facts.scaled_by,
            scaled_at=facts.scaled_at,
            launch=self._launch(dom, facts.launch)
            if state is DomainState.RUNNING and facts.security.confidential
            else None,
        )

    @staticmethod
    def _launch(dom: libvirt.virDomain, launch: Launch | None) -> Launch:
        """A running CVM's launch facts: its XML's, and what libvirt's launch security info adds."""
        if launch is None:  # sev-snp carried in our metadata: libvirt launched it with no <launchSecurity>
            return Launch(why={"launch": "sev-snp in hostctl's metadata only (libvirt before 10.5): libvirt has none"})
        try:
            return sev.add_launch_info(launch, dom.launchSecurityInfo())
        except libvirt.libvirtError as e:
            return sev.add_launch_info(launch, None, f"libvirt's launch security info: {e.get_error_message()}")

    def _sample_blocking(self) -> tuple[dict[str, float], dict[str, int]]:
        """Per running domain, CPU cores used since the last sample; and the online counts libvirt keeps (drivers
        that do not ask the guest), from one bulk stats call where the hypervisor has it."""
        conn = self._connected()
        now = time.monotonic()
        used: dict[str, float] = {}
        counts: dict[str, int] = {}
        wanted = libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU
        for dom, stats in conn.getAllDomainStats(wanted, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE):
            name = dom.name()
            cpu_ns = stats.get("cpu.time")
            if cpu_ns is None:  # the test driver has no CPU or vCPU stats: ask the domain
                try:
                    cpu_ns = dom.info()[4]
                except libvirt.libvirtError:  # gone since the stats were taken
                    continue
            prev = self._cpu_prev.get(name)
            self._cpu_prev[name] = (cpu_ns, now)
            used[name] = (cpu_ns - prev[0]) / 1e9 / (now - prev[1]) if prev is not None and now > prev[1] else 0.0
            cvm = self._cvms.get(name)
            if cvm is not None and cvm.driver in drivers.REGISTRY and not self._driver(cvm.driver).asks_guest:
                plugged = stats.get("vcpu.current")
                counts[name] = int(plugged) if plugged is not None else self._driver(cvm.driver).online(dom)
        for gone in self._cpu_prev.keys() - used.keys():
            del self._cpu_prev[gone]
        return used, counts

    # -- counts ----------------------------------------------------------------------------------

    async def _ask(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)`, which may wait on `name`'s guest, on a thread of its own: one such call at a time per
        CVM, none new while one overstays (libvirt would queue it behind the first on that domain), and a daemon
        thread, so a call libvirt holds on to never holds up the process's exit."""
        if (asking := self._asking.get(name)) is not None:
            raise _Waiting(time.monotonic() - asking[0])
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())  # a late outcome nobody awaits is fine
        self._asking[name] = (time.monotonic(), answer)

        def settle(result: T | None, error: BaseException | None) -> None:
            self._asking.pop(name, None)
            if answer.done():
                return
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result)  # type: ignore[arg-type]  # fn returned a T

        def call() -> None:
            try:
                result, error = fn(*args), None
            except BaseException as e:  # handed to the awaiting task as it is
                result, error = None, e
            with contextlib.suppress(RuntimeError):  # the loop closed while libvirt held the call
                loop.call_soon_threadsafe(settle, result, error)

        threading.Thread(target=call, name=f"guest-agent {name}", daemon=True).start()
        bound = 2 * self.agent_timeout + 5  # a scale asks twice (count, then change); libvirt's own bound is first
        done, _ = await asyncio.wait({answer}, timeout=bound)
        if not done:
            raise _Overdue(bound)
        return answer.result()

    async def _quiet(self, name: str) -> None:
        """Let a guest call in flight (a count) end first, unless it has already outstayed the agent timeout."""
        if (asking := self._asking.get(name)) is not None:
            left = self.agent_timeout - (time.monotonic() - asking[0])
            if left > 0:
                await asyncio.wait({asking[1]}, timeout=left)

    async def _count_guests(self, budget: float) -> None:
        """Ask every running CVM whose count lives in its guest, all at once; wait at most `budget` seconds.

        A late answer is taken in when it comes; a guest whose call has waited longer than the agent timeout shows
        as not answering meanwhile (a slow guest is not an unknown one).
        """
        names = [c.name for c in self._cvms.values() if c.state is DomainState.RUNNING and self._asks_guest(c)]
        tasks = {self._start_count(name) for name in names}
        if tasks:
            await asyncio.wait(tasks, timeout=budget)

    async def _count_guest(self, name: str) -> None:
        self.guest_errors[name] += 0  # counted from its first ask, so a rate over it starts at zero
        try:
            count = await self._ask(name, self._guest_count_blocking, name)
        except _Waiting as e:
            if e.seconds > self.agent_timeout:
                self.guest_errors[name] += 1
                self._reconcile(name, None, f"guest agent not answering (no answer in {e.seconds:.0f} s)")
            return
        except CountUnknown as e:
            self.guest_errors[name] += 1
            self._reconcile(name, None, str(e))
            return
        except HostctlError:  # the domain went away: its lifecycle event removes it
            return
        self._reconcile(name, count, "")

    def _guest_count_blocking(self, name: str) -> int:
        conn = self._connected()
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as e:
            raise HostctlError(f"{name}: {e.get_error_message()}") from None
        cvm = self._cvms.get(name)
        return self._driver(cvm.driver if cvm is not None else "guest").online(dom)

    def _asks_guest(self, cvm: CVM) -> bool:
        return cvm.driver in drivers.REGISTRY and self._driver(cvm.driver).asks_guest

    def _reconcile(self, name: str, count: int | None, error: str) -> None:
        """Take in a count read now (or why none could be): a known count that changed while no scale of ours ran
        is reported as changed outside hostctl."""
        cvm = self._cvms.get(name)
        if cvm is None or cvm.state is not DomainState.RUNNING:
            return
        if count is None:
            last, at = self._last_known(cvm)
            self._store_count(
                msgspec.structs.replace(
                    cvm, online_vcpus=None, vcpus_error=error, last_online=last, last_online_at=at, cpu_percent=None
                )
            )
            return
        busy = self._scale_locks.get(name)
        if cvm.online_vcpus is not None and cvm.online_vcpus != count and (busy is None or not busy.locked()):
            why = f"changed outside hostctl: {cvm.online_vcpus}→{count}"
            self._record(
                Event(self.host.name, name, "outside", OUTSIDE, ok=True, before=cvm.online_vcpus, after=count, why=why)
            )
        self._counted(name, count)

    def _last_known(self, cvm: CVM) -> tuple[int | None, float | None]:
        """The count to show as last known once `cvm`'s count turns unknown, and when it was last read."""
        if cvm.online_vcpus is not None:
            return cvm.online_vcpus, self._confirmed.get(cvm.name)
        return cvm.last_online, cvm.last_online_at

    def _counted(self, name: str, count: int) -> None:
        """`count` was read just now."""
        self._confirmed[name] = time.time()
        cvm = self._cvms.get(name)
        if cvm is not None:
            fresh = msgspec.structs.replace(
                cvm, online_vcpus=count, vcpus_error="", last_online=None, last_online_at=None
            )
            if cvm.cpu_percent is None:
                fresh.cpu_percent = 0.0 if self._cpu_source is None else None
            self._store_count(fresh)

    def _store_count(self, cvm: CVM) -> None:
        if self._cvms.get(cvm.name) != cvm:
            self._cvms[cvm.name] = cvm
            self._changed(cvm.name)

    def _driver(self, name: str) -> drivers.WorkerDriver:
        with self._driver_lock:
            if name not in self._drivers:
                self._drivers[name] = drivers.create(name, **self._driver_options.get(name, {}))
            return self._drivers[name]

    # -- events (on the event loop) --------------------------------------------------------------

    def _on_lifecycle(self, _conn: object, dom: libvirt.virDomain, event: int, _detail: int, _opaque: object) -> None:
        name = dom.name()
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            self._remove(name)
            return
        self._schedule_refresh(name)

    def _on_metadata(self, _conn: object, dom: libvirt.virDomain, _kind: int, _nsuri: str, _opaque: object) -> None:
        self._schedule_refresh(dom.name())

    def _on_agent(self, _conn: object, dom: libvirt.virDomain, _state: int, _reason: int, _opaque: object) -> None:
        self._recount(dom.name())

    def _recount(self, name: str) -> None:
        """Ask the guest for its count now (it just started, or its agent came or went)."""
        cvm = self._cvms.get(name)
        if cvm is not None and cvm.state is DomainState.RUNNING and self._asks_guest(cvm):
            self._start_count(name)

    def _start_count(self, name: str) -> asyncio.Task[None]:
        """Count `name`'s guest in a task of its own, kept until it ends (close cancels it)."""
        task = asyncio.get_running_loop().create_task(self._count_guest(name))
        self._counting.add(task)
        task.add_done_callback(self._counting.discard)
        return task

    def _schedule_refresh(self, name: str) -> None:
        if name in self._refreshing:
            self._refreshing[name] = True  # read again once the running refresh ends
            return
        self._refreshing[name] = False
        asyncio.get_running_loop().create_task(self._refresh(name))

    async def _refresh(self, name: str) -> None:
        try:
            while True:
                if self._conn is None:
                    return
                try:
                    cvm = await self._run(self._read_named, name)
                except HostctlError:  # libvirt unreachable: the record stays; the close callback says why
                    return
                if cvm is None:
                    self._remove(name)
                else:
                    self._store(cvm)
                if not self._refreshing.get(name):
                    return
                self._refreshing[name] = False
        finally:
            self._refreshing.pop(name, None)

    def _store(self, cvm: CVM) -> None:
        old = self._cvms.get(cvm.name)
        running = cvm.state is DomainState.RUNNING
        if old is not None and running and old.state is DomainState.RUNNING:  # fresh reads carry no samples
            cvm.cpu_percent = old.cpu_percent
            cvm.concurrency, cvm.rps = old.concurrency, old.rps
            if self._asks_guest(cvm):  # nor the guest's count: that comes from asking the guest
                cvm.online_vcpus, cvm.vcpus_error = old.online_vcpus, old.vcpus_error
                cvm.last_online_at, cvm.last_online = old.last_online_at, old.last_online
                cvm.cpu_percent = old.cpu_percent
        elif old is not None and not running:
            cvm.last_online, cvm.last_online_at = self._last_known(old)
        if old != cvm:
            self._cvms[cvm.name] = cvm
            self._changed(cvm.name)
        if running and self._asks_guest(cvm) and (old is None or old.state is not DomainState.RUNNING):
            self._recount(cvm.name)

    def _remove(self, name: str) -> None:
        """`name` is no longer defined: drop it and what was kept about it."""
        self._forget(name)
        if self._cvms.pop(name, None) is not None:
            self._changed(name)

    def _forget(self, name: str) -> None:
        """Drop what is kept per CVM beside its record (the CPU-time history goes at the next sample, the guest-call
        bookkeeping when its call ends)."""
        self._confirmed.pop(name, None)
        self.guest_errors.pop(name, None)
        self._scale_locks.pop(name, None)  # a scale holding it keeps its own reference

    def _changed(self, name: str) -> None:
        if self._host is not None and self._host.confidential is not None:
            self._host = msgspec.structs.replace(
                self._host, confidential=sev.count_guests(self._host.confidential, list(self._cvms.values()))
            )
        for callback in self._change_listeners:
            callback(name)

    def _record(self, event: Event) -> None:
        for callback in self._event_listeners:
            callback(event)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the libvirt pool; a libvirt error becomes one line naming the URI."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except libvirt.libvirtError as e:
            raise HostctlError(f"libvirt at {self.uri}: {e.get_error_message()}") from None


def _scale_failure(name: str, error: HostctlError) -> HostctlError:
    """The error a failed scale reports: a guest call already waiting means nothing was sent; one that outlasted
    every bound may still be applied."""
    if isinstance(error, _Waiting):
        return ScaleRefused(f"{name}: refused: its guest agent is not answering ({error}); nothing changed")
    if isinstance(error, _Overdue):
        return HostctlError(
            f"{name}: {error}; the change may or may not have been applied (a retry is safe: scale is compare-and-set)"
        )
    return error


class _Waiting(CountUnknown):
    """A call to this guest is already in flight (for `seconds`): no second one is sent."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"a call to it has waited {seconds:.0f} s")
        self.seconds = seconds


class _Overdue(CountUnknown):
    """A call to this guest outlasted every bound: it may still be applied by libvirt."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"guest agent not answering (no answer within {seconds:g} s)")
