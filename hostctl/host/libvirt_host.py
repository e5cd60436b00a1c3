"""One libvirt host, kept current from libvirt's events. Blocking libvirt calls run on worker threads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import libvirt
import libvirtaio
import psutil

from hostctl.errors import HostctlError, ScaleRefused
from hostctl.host import drivers
from hostctl.host.domxml import WORKERS_KEY, WORKERS_NS, parse_domain, workers_metadata
from hostctl.wire.model import CVM, DomainState, Event, Host, Service, Snapshot

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


class _EventBinding:
    """The asyncio loop libvirt's event implementation is registered on: one per process."""

    loop: asyncio.AbstractEventLoop | None = None


def register_event_loop() -> None:
    """Register libvirt's event loop on the running asyncio loop (once per process, before any open)."""
    loop = asyncio.get_running_loop()
    if _EventBinding.loop is loop:
        return
    if _EventBinding.loop is not None and not _EventBinding.loop.is_closed():
        raise RuntimeError("libvirt events are already bound to another running event loop")
    libvirt.registerErrorHandler(lambda *_: None, None)
    libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    _EventBinding.loop = loop


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
        capabilities: dict[str, bool] | None = None,
        cpu_source: Callable[[str], float] | None = None,
        concurrency_source: Callable[[str], float | None] | None = None,
    ) -> None:
        self.uri = uri
        self.name = name
        self._driver_options = driver_options or {}
        self._capabilities = capabilities
        self._cpu_source = cpu_source
        self._concurrency_source = concurrency_source
        self._drivers: dict[str, drivers.WorkerDriver] = {}
        self._driver_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="libvirt")
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
        """Open the connection and read the inventory; from then on events keep it current."""
        register_event_loop()
        conn = await self._run(self._open_blocking)
        self._conn = conn
        host, cvms = await self._run(self._read_all)
        self._host = host
        self.name = host.name
        self._cvms = {c.name: c for c in cvms}
        self._callbacks = [
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata, None),
        ]

    async def close(self) -> None:
        """Deregister events and close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            for cb in self._callbacks:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cb)
            self._callbacks = []
            await self._run(conn.close)
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

    async def sample(self) -> None:
        """Sample CPU use: per CVM from CPU-time deltas (or the cpu_source), for the host from psutil.

        With a concurrency_source, each CVM's `concurrency` is its mean requests in flight or queued since the
        previous sample; without one it stays None (the host does not know it).
        """
        usage = await self._run(self._sample_blocking)
        for name, measured in usage.items():
            pct = measured if self._cpu_source is None else self._cpu_source(name)
            cvm = self._cvms.get(name)
            if cvm is not None and pct is not None:
                cvm.cpu_percent = round(pct, 1)
            if cvm is not None and self._concurrency_source is not None:
                concurrency = self._concurrency_source(name)
                cvm.concurrency = None if concurrency is None else round(concurrency, 2)
        host = self.host
        if is_local_hypervisor(self.uri):
            host.cpu_percent = psutil.cpu_percent()
            host.load = os.getloadavg()[0]
        else:
            used = sum(c.cpu_percent / 100 * c.online_vcpus for c in self._cvms.values())
            host.cpu_percent = round(min(100.0, 100 * used / max(1, host.cpus)), 1)
        for name in usage:
            self._changed(name)

    # -- scaling ---------------------------------------------------------------------------------

    async def scale(self, name: str, target: int, *, expect: int | None = None, who: str = "", why: str = "") -> Event:
        """Set `name`'s online vCPUs to `target` (boot..max), only if `expect` (when given) is what is found.

        A retry of an applied request finds the target already in place and changes nothing.
        """
        cvm = self.cvm(name)
        lock = self._scale_locks.setdefault(name, asyncio.Lock())
        async with lock:
            try:
                before, after = await self._run(self._scale_blocking, cvm, target, expect, who)
            except HostctlError as e:
                event = Event(
                    self.host.name,
                    name,
                    "scale",
                    who,
                    ok=False,
                    before=getattr(e, "current", None),
                    after=target,
                    why=str(e),
                )
                self._record(event)
                raise
            fresh = await self._run(self._read_named, name)
            if fresh is not None:
                self._store(fresh)
        if before == after:
            why = f"{why} (already at {after}, nothing changed)".strip()
        event = Event(self.host.name, name, "scale", who, ok=True, before=before, after=after, why=why)
        self._record(event)
        return event

    def _scale_blocking(self, cvm: CVM, target: int, expect: int | None, who: str) -> tuple[int, int]:
        assert self._conn is not None
        dom = self._conn.lookupByName(cvm.name)
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
        current = driver.online(dom)
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

    def _read_all(self) -> tuple[Host, list[CVM]]:
        assert self._conn is not None
        conn = self._conn
        _model, memory_mib, cpus, *_ = conn.getInfo()
        version = conn.getLibVersion()
        host = Host(
            name=self.name or conn.getHostname(),
            uri=self.uri,
            cpus=cpus,
            memory_mib=memory_mib,
            libvirt_version=f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}",
            **(self._capabilities or self._host_capabilities(conn)),
        )
        return host, [self._read(dom) for dom in conn.listAllDomains()]

    @staticmethod
    def _host_capabilities(conn: libvirt.virConnect) -> dict[str, bool | None]:
        try:
            root = ET.fromstring(conn.getDomainCapabilities())
        except libvirt.libvirtError:
            return {"sev": None, "sev_es": None, "sev_snp": None}
        sev = root.find("features/sev")
        types = {v.text for v in root.findall("features/launchSecurity/enum[@name='sectype']/value")}
        has_sev = sev is not None and sev.get("supported") == "yes"
        return {"sev": has_sev, "sev_es": has_sev, "sev_snp": "sev-snp" in types}

    def _read_named(self, name: str) -> CVM | None:
        assert self._conn is not None
        try:
            return self._read(self._conn.lookupByName(name))
        except libvirt.libvirtError:
            return None

    def _read(self, dom: libvirt.virDomain) -> CVM:
        facts = parse_domain(dom.XMLDesc(0))
        state = _STATES.get(dom.state()[0], DomainState.OTHER)
        boot = facts.boot_vcpus
        if boot is None:
            boot = parse_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).vcpus_current
        driver_name = facts.driver or ("guest" if facts.guest_agent or facts.security.confidential else "hotplug")
        online = facts.vcpus_current
        if state is DomainState.RUNNING and driver_name in drivers.REGISTRY:
            online = self._driver(driver_name).online(dom)
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
            scaled_by=facts.scaled_by,
            scaled_at=facts.scaled_at,
        )

    def _sample_blocking(self) -> dict[str, float]:
        assert self._conn is not None
        now = time.monotonic()
        usage = {}
        for dom in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            _state, _maxmem, _mem, vcpus, cpu_ns = dom.info()
            name = dom.name()
            prev = self._cpu_prev.get(name)
            self._cpu_prev[name] = (cpu_ns, now)
            if prev is not None and now > prev[1]:
                usage[name] = max(0.0, min(100.0, (cpu_ns - prev[0]) / 1e9 / (now - prev[1]) / max(1, vcpus) * 100))
            else:
                usage[name] = 0.0
        return usage

    def _driver(self, name: str) -> drivers.WorkerDriver:
        with self._driver_lock:
            if name not in self._drivers:
                self._drivers[name] = drivers.create(name, **self._driver_options.get(name, {}))
            return self._drivers[name]

    # -- events (on the event loop) --------------------------------------------------------------

    def _on_lifecycle(self, _conn: object, dom: libvirt.virDomain, event: int, _detail: int, _opaque: object) -> None:
        name = dom.name()
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            if self._cvms.pop(name, None) is not None:
                self._changed(name)
            return
        self._schedule_refresh(name)

    def _on_metadata(self, _conn: object, dom: libvirt.virDomain, _kind: int, _nsuri: str, _opaque: object) -> None:
        self._schedule_refresh(dom.name())

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
                cvm = await self._run(self._read_named, name)
                if cvm is None:
                    if self._cvms.pop(name, None) is not None:
                        self._changed(name)
                else:
                    self._store(cvm)
                if not self._refreshing.get(name):
                    return
                self._refreshing[name] = False
        finally:
            self._refreshing.pop(name, None)

    def _store(self, cvm: CVM) -> None:
        old = self._cvms.get(cvm.name)
        if old is not None:  # fresh reads carry no samples
            cvm.cpu_percent = old.cpu_percent
            cvm.concurrency = old.concurrency
        if old != cvm:
            self._cvms[cvm.name] = cvm
            self._changed(cvm.name)

    def _changed(self, name: str) -> None:
        for callback in self._change_listeners:
            callback(name)

    def _record(self, event: Event) -> None:
        for callback in self._event_listeners:
            callback(event)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
