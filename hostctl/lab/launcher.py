"""Launch the lab site: libvirtd, a few real guests and one host agent serving them; up and down.

Every call that can block is bounded; the blocking parts run on threads (`up` and `down` are async
for the CLI's loop, like the demo's launcher). What `up` started is recorded in the runtime directory, so `down`
stops exactly that: the agent, every domain with the lab's prefix, and the daemons only if `up` started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import libvirt

from hostctl.agent.metrics import METRICS_AT, host_port
from hostctl.client import site as sites
from hostctl.errors import HostctlError
from hostctl.lab import domains, guest, libvirtd, procs, qga
from hostctl.lab.bounded import within
from hostctl.lab.domains import GUESTS, GuestSpec
from hostctl.lab.libvirtd import CALL_TIMEOUT
from hostctl.lab.runtime import Lab, check_runtime
from hostctl.wire import rpc

HOST = "lab"  # the lab's host in its site file
BOOT_TIMEOUT = 180.0  # from starting the guests until every guest agent answers
AGENT_TIMEOUT = 30.0  # from starting the host agent until it answers
STOP_TIMEOUT = 10.0  # the host agent's exit after SIGTERM


# -- up ------------------------------------------------------------------------------------------------------


async def up(
    runtime: Path,
    *,
    prefix: str = domains.PREFIX,
    cache: Path | None = None,
    guests: tuple[GuestSpec, ...] = GUESTS,
    boot_timeout: float = BOOT_TIMEOUT,
    metrics: tuple[str, int] | None = None,
) -> list[str]:
    """Start the lab: libvirtd, the guests (booted in parallel), the host agent (serving Prometheus metrics at
    `metrics` when given) and the site file."""
    try:
        domains.check_prefix(prefix)
    except ValueError as e:
        raise HostctlError(str(e)) from None
    created = not runtime.exists()
    lab = check_runtime(runtime, create=True)
    if lab.state.is_file() and lab.prefix() != prefix:
        raise HostctlError(
            f"the lab in {lab.runtime} runs with domain prefix {lab.prefix()!r}: pass --prefix {lab.prefix()} "
            "or take it down first (hostctl lab down)"
        )
    if not lab.state.is_file():  # a new lab: domains with its prefix belong to another one, never to be taken over
        try:
            await asyncio.to_thread(_refuse_taken, lab, prefix)
        except HostctlError:
            if created:
                with contextlib.suppress(OSError):
                    lab.runtime.rmdir()
            raise
    lines: list[str] = []
    try:
        lines += await asyncio.to_thread(_up_blocking, lab, prefix, cache, guests, boot_timeout)
        lines += await _start_agent(lab, metrics)
        site = sites.Site(hosts=[sites.HostEntry(name=HOST, socket=str(lab.socket), uri=libvirtd.URI)])
        sites.write(site, lab.site)
    except OSError as e:
        await down(runtime)
        raise HostctlError(f"lab up: {e.filename or runtime}: {e.strerror}") from None
    except BaseException:
        await down(runtime)
        raise
    return lines


def _up_blocking(
    lab: Lab, prefix: str, cache: Path | None, guests: tuple[GuestSpec, ...], boot_timeout: float
) -> list[str]:
    lab.state.write_text(json.dumps({"prefix": prefix, "guests": [prefix + g.name for g in guests]}) + "\n")
    lines = libvirtd.ensure()
    image, built = guest.build(cache)
    lines.append(f"guest image: {'built' if built else 'cached'} {image.initrd.parent} (kernel {_kernel(image)})")
    for source, target in ((image.kernel, lab.kernel), (image.initrd, lab.initrd)):
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        tmp.chmod(0o644)
        os.replace(tmp, target)
    conn = libvirtd.open_connection()
    try:
        doms = []
        for spec in guests:
            dom, line = _start_guest(conn, lab, prefix, spec)
            doms.append(dom)
            lines.append(line)
        lines += _wait_agents(doms, boot_timeout)
    finally:
        with contextlib.suppress(libvirt.libvirtError, HostctlError):
            within(libvirtd.OPEN_TIMEOUT, "closing the libvirt connection", conn.close)
    return lines


def _refuse_taken(lab: Lab, prefix: str) -> None:
    """HostctlError when libvirt already has domains with `prefix` (another lab's: its `down` would remove ours)."""
    if not libvirtd.answers():
        return
    conn = libvirtd.open_connection()
    try:
        taken = [dom.name() for dom in libvirtd.prefixed_domains(conn, prefix)]
    finally:
        with contextlib.suppress(libvirt.libvirtError, HostctlError):
            within(libvirtd.OPEN_TIMEOUT, "closing the libvirt connection", conn.close)
    if taken:
        raise HostctlError(
            f"domains with prefix {prefix!r} already exist ({', '.join(taken)}): another lab's; take it down, "
            f"or pass --prefix with another name for this one in {lab.runtime}"
        )


def _kernel(image: guest.Image) -> str:
    try:
        return str(json.loads(image.manifest.read_text())["kernel"])
    except (OSError, ValueError, KeyError):
        return "unknown: no manifest"


def _start_guest(conn: libvirt.virConnect, lab: Lab, prefix: str, spec: GuestSpec) -> tuple[libvirt.virDomain, str]:
    name = prefix + spec.name
    xml = domains.domain_xml(spec, prefix=prefix, kernel=lab.kernel, initrd=lab.initrd, console=lab.console(name))

    def start() -> tuple[libvirt.virDomain, str]:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            dom = None
        if dom is not None and dom.isActive():
            return dom, f"{name}: already running"
        if dom is not None:
            dom.undefine()
        dom = conn.defineXML(xml)
        dom.create()
        return (
            dom,
            f"{name}: started ({spec.security.value}, driver {spec.driver}, {spec.boot_vcpus} of {spec.max_vcpus})",
        )

    try:
        return within(CALL_TIMEOUT, f"starting {name}", start)
    except libvirt.libvirtError as e:
        raise HostctlError(f"{name}: libvirt cannot start it: {e.get_error_message()}") from None


def _wait_agents(doms: list[libvirt.virDomain], timeout: float) -> list[str]:
    """Wait, in parallel, until every guest's agent answers `guest-ping`."""
    deadline = time.monotonic() + timeout
    took: dict[str, float | None] = {}

    def wait(dom: libvirt.virDomain) -> None:
        took[dom.name()] = qga.wait_ping(dom, deadline)

    threads = [threading.Thread(target=wait, args=(d,), daemon=True) for d in doms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + qga.TIMEOUT + 10)
    silent = [d.name() for d in doms if took.get(d.name()) is None]
    if silent:
        raise HostctlError(f"guest agent of {', '.join(silent)} did not answer within {timeout:.0f} s of boot")
    return [f"{name}: guest agent answered after {seconds:.1f} s" for name, seconds in sorted(took.items()) if seconds]


async def _start_agent(lab: Lab, metrics: tuple[str, int] | None = None) -> list[str]:
    """Start one host agent serving qemu:///system on the lab's socket (after the guests answer, so its first
    read sees their real counts); wait until it answers."""
    if (pid := lab.agent_pid()) is not None:
        return [f"host agent: already running (pid {pid}, socket {lab.socket})"]
    argv = [
        sys.executable,
        "-m",
        "hostctl",
        "--uri",
        libvirtd.URI,
        "serve",
        "--socket",
        str(lab.socket),
        "--audit",
        str(lab.audit),
        "--probe-rate",
        "0",
        *([] if metrics is None else ["--metrics", host_port(*metrics)]),
    ]
    child = await asyncio.to_thread(_spawn, argv, lab)
    deadline = time.monotonic() + AGENT_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise HostctlError(f"host agent exited with status {child.returncode}: {procs.log_tail(lab.log)}")
        if lab.socket.exists():
            with contextlib.suppress(HostctlError, OSError, TimeoutError):
                await asyncio.wait_for(rpc.call_unix(str(lab.socket), "hello", timeout=2), 5)
                served = [f", {line.removeprefix('hostctl: ')}" for line in _log_lines(lab) if METRICS_AT in line]
                return [f"host agent: started (pid {child.pid}, socket {lab.socket}{''.join(served[-1:])})"]
        await asyncio.sleep(0.1)
    raise HostctlError(f"host agent did not answer within {AGENT_TIMEOUT:.0f} s: {procs.log_tail(lab.log)}")


def _log_lines(lab: Lab) -> list[str]:
    """The host agent's log, line by line (none when it cannot be read)."""
    try:
        return lab.log.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _spawn(argv: list[str], lab: Lab) -> subprocess.Popen[bytes]:
    with lab.log.open("ab") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    lab.pidfile.write_text(str(child.pid))
    return child


# -- down ----------------------------------------------------------------------------------------------------


async def down(runtime: Path) -> list[str]:
    """Stop the host agent, destroy and undefine every prefixed domain, stop the daemons `up` started, and
    remove the runtime directory's lab files (and the directory, once empty)."""
    lab = check_runtime(runtime, create=False)
    try:
        lines = await asyncio.to_thread(_down_blocking, lab)
    except OSError as e:
        raise HostctlError(f"lab down: {e.filename or runtime}: {e.strerror}") from None
    return lines or ["lab is not running"]


def _stop_agent(lab: Lab) -> list[str]:
    pid = lab.agent_pid()
    if pid is None:
        return []
    procs.terminate(pid, lambda: lab.agent_pid() == pid, STOP_TIMEOUT)
    return [f"host agent: stopped (pid {pid})"]


def _down_blocking(lab: Lab) -> list[str]:
    lines = _stop_agent(lab)
    removed, left = _remove_domains(lab)
    lines += removed
    if left:  # stopping libvirtd now would orphan their QEMU processes
        return [*lines, f"libvirtd left running: {', '.join(left)} could not be removed; run lab down again"]
    if libvirtd.daemons()[1].pid() is not None and (others := _active_domains()):
        # Other guests run on the libvirtd a lab started: stopping it would orphan their QEMU processes. Its pid
        # file stays, so the lab down that finds no other guest stops it.
        lines.append(f"libvirtd left running (started by a lab): it still runs {', '.join(others)}")
    else:
        lines += libvirtd.stop()
    if lab.runtime.is_dir():
        for path in lab.files():
            path.unlink(missing_ok=True)
        try:
            lab.runtime.rmdir()
        except OSError:
            lines.append(f"left {lab.runtime}: it holds files the lab did not make")
    return lines


def _remove_domains(lab: Lab) -> tuple[list[str], list[str]]:
    """Destroy and undefine every domain with the lab's prefix: (lines, names of those that remain)."""
    lines: list[str] = []
    left: list[str] = []
    prefix = lab.prefix()
    try:
        conn = libvirtd.open_connection()
    except HostctlError as e:
        if lab.state.is_file():
            lines.append(f"cannot remove {prefix}* domains: {e}")
        return lines, left
    try:
        for dom in libvirtd.prefixed_domains(conn, prefix):
            problem = _remove(dom)
            lines.append(f"{dom.name()}: {problem or 'destroyed and undefined'}")
            if problem:
                left.append(dom.name())
    except HostctlError as e:
        lines.append(f"cannot list {prefix}* domains: {e}")
        left.append(f"{prefix}*")
    finally:
        with contextlib.suppress(libvirt.libvirtError, HostctlError):
            within(libvirtd.OPEN_TIMEOUT, "closing the libvirt connection", conn.close)
    return lines, left


def _active_domains() -> list[str]:
    """The names of the running domains of the host (any prefix); unknown counts as none running."""
    try:
        conn = libvirtd.open_connection()
    except HostctlError:
        return []
    try:
        names = within(
            CALL_TIMEOUT,
            "listing domains",
            lambda: [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)],
        )
    except (HostctlError, libvirt.libvirtError):
        names = []
    finally:
        with contextlib.suppress(libvirt.libvirtError, HostctlError):
            within(libvirtd.OPEN_TIMEOUT, "closing the libvirt connection", conn.close)
    return sorted(names)


def _remove(dom: libvirt.virDomain) -> str | None:
    """Destroy (if running) and undefine `dom`: None when done, else why not."""

    def remove() -> None:
        if dom.isActive():
            dom.destroy()
        dom.undefine()

    try:
        within(CALL_TIMEOUT, f"removing {dom.name()}", remove)
    except libvirt.libvirtError as e:
        return f"not removed: {e.get_error_message()}"
    except HostctlError as e:
        return f"not removed: {e}"
    return None
