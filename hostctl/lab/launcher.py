"""Launch the lab site: libvirtd, a few real guests and one host agent serving them; up, status, down.

Every call that can block is bounded; the blocking parts run on threads (`up`, `status` and `down` are async
for the CLI's loop, like the demo's launcher). What `up` started is recorded in the runtime directory, so `down`
stops exactly that: the agent, every domain with the lab's prefix, and the daemons only if `up` started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from hostctl.client import site as sites
from hostctl.errors import HostctlError
from hostctl.lab import domains, guest, libvirtd, procs, qga
from hostctl.lab.bounded import within
from hostctl.lab.domains import GUESTS, GuestSpec
from hostctl.wire import rpc

HOST = "lab"  # the lab's host in its site file
BOOT_TIMEOUT = 180.0  # from starting the guests until every guest agent answers
AGENT_TIMEOUT = 30.0  # from starting the host agent until it answers
CALL_TIMEOUT = 60.0  # one libvirt call: define, start, destroy, undefine, list
STOP_TIMEOUT = 10.0  # the host agent's exit after SIGTERM


def default_runtime() -> Path:
    """Where the lab keeps its sockets, pid files, boot files and logs (QEMU's user must be able to enter it)."""
    return Path(tempfile.gettempdir()) / f"dittotui-lab-{os.getuid()}"


@dataclass(frozen=True)
class Lab:
    """The files of one lab in its runtime directory."""

    runtime: Path

    @property
    def state(self) -> Path:
        return self.runtime / "lab.json"

    @property
    def site(self) -> Path:
        return self.runtime / "site.toml"

    @property
    def socket(self) -> Path:
        return self.runtime / "agent.sock"

    @property
    def pidfile(self) -> Path:
        return self.runtime / "agent.pid"

    @property
    def log(self) -> Path:
        return self.runtime / "agent.log"

    @property
    def audit(self) -> Path:
        return self.runtime / "audit.jsonl"

    @property
    def kernel(self) -> Path:
        return self.runtime / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.runtime / "initrd.img"

    def console(self, name: str) -> Path:
        return self.runtime / f"{name}.console"

    def files(self) -> list[Path]:
        """Every file the lab may leave in its runtime directory."""
        fixed = [self.state, self.site, self.socket, self.pidfile, self.log, self.audit, self.kernel, self.initrd]
        daemon_files = [f for d in libvirtd.daemons(self.runtime) for f in (d.pidfile, d.log)]
        return fixed + daemon_files + sorted(self.runtime.glob("*.console"))

    def prefix(self) -> str:
        """The domain prefix `up` recorded (the default if it recorded none)."""
        try:
            recorded = json.loads(self.state.read_text())["prefix"]
            return domains.check_prefix(str(recorded))
        except (OSError, ValueError, KeyError, TypeError):
            return domains.PREFIX

    def agent_pid(self) -> int | None:
        """The host agent's pid, if the process that `up` started still runs (not a reused pid)."""
        pid = procs.read_pid(self.pidfile)
        if pid is None:
            return None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child that exited
        if not procs.running(pid):
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if b"hostctl" in argv and str(self.socket).encode() in argv else None


def check_runtime(runtime: Path, *, create: bool) -> Lab:
    """The lab at `runtime` (made absolute); HostctlError if that path is not a directory (or cannot be made one)."""
    runtime = runtime.absolute()
    if runtime.exists() and not runtime.is_dir():
        raise HostctlError(f"runtime directory {runtime} is not a directory")
    if create:
        if blocked := _closed_ancestor(runtime):
            raise HostctlError(
                f"runtime directory {runtime}: QEMU's user cannot enter {blocked} "
                f"(mode {stat.S_IMODE(blocked.stat().st_mode):04o}); pass --runtime under {tempfile.gettempdir()}"
            )
        try:
            runtime.mkdir(parents=True, exist_ok=True)
            runtime.chmod(0o711)  # QEMU runs as its own user: it must reach the boot files
        except OSError as e:
            raise HostctlError(f"runtime directory {runtime}: {e.strerror}") from None
    return Lab(runtime)


def _closed_ancestor(path: Path) -> Path | None:
    """The first existing directory on the way to `path` that others may not enter (the lab makes the rest)."""
    path = path.absolute()
    for d in [*reversed(path.parents), path]:
        if not d.exists():
            return None
        if d != path and not d.stat().st_mode & stat.S_IXOTH:
            return d
    return None


# -- up ------------------------------------------------------------------------------------------------------


async def up(
    runtime: Path,
    *,
    prefix: str = domains.PREFIX,
    cache: Path | None = None,
    guests: tuple[GuestSpec, ...] = GUESTS,
    boot_timeout: float = BOOT_TIMEOUT,
) -> list[str]:
    """Start the lab: libvirtd, the guests (booted in parallel), the host agent and the site file."""
    try:
        domains.check_prefix(prefix)
    except ValueError as e:
        raise HostctlError(str(e)) from None
    lab = check_runtime(runtime, create=True)
    if lab.state.is_file() and lab.prefix() != prefix:
        raise HostctlError(
            f"the lab in {lab.runtime} runs with domain prefix {lab.prefix()!r}: pass --prefix {lab.prefix()} "
            "or take it down first (hostctl lab down)"
        )
    lines: list[str] = []
    try:
        lines += await asyncio.to_thread(_up_blocking, lab, prefix, cache, guests, boot_timeout)
        lines += await _start_agent(lab)
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
    lines = libvirtd.ensure(lab.runtime)
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


async def _start_agent(lab: Lab) -> list[str]:
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
    ]
    child = await asyncio.to_thread(_spawn, argv, lab)
    deadline = time.monotonic() + AGENT_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise HostctlError(f"host agent exited with status {child.returncode}: {_tail(lab.log)}")
        if lab.socket.exists():
            with contextlib.suppress(HostctlError, OSError, TimeoutError):
                await asyncio.wait_for(rpc.call_unix(str(lab.socket), "hello", timeout=2), 5)
                return [f"host agent: started (pid {child.pid}, socket {lab.socket})"]
        await asyncio.sleep(0.1)
    raise HostctlError(f"host agent did not answer within {AGENT_TIMEOUT:.0f} s: {_tail(lab.log)}")


def _spawn(argv: list[str], lab: Lab) -> subprocess.Popen[bytes]:
    with lab.log.open("ab") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    lab.pidfile.write_text(str(child.pid))
    return child


# -- status --------------------------------------------------------------------------------------------------


async def status(runtime: Path) -> dict[str, Any]:
    """The lab as it is: libvirtd, each prefixed guest (libvirt's and the guest's own vCPU view), the agent."""
    lab = check_runtime(runtime, create=False)
    report: dict[str, Any] = {"runtime": str(lab.runtime), "prefix": lab.prefix(), "running": lab.state.is_file()}
    report.update(await asyncio.to_thread(_status_blocking, lab))
    agent: dict[str, Any] = {"pid": lab.agent_pid(), "socket": str(lab.socket)}
    if agent["pid"] is None:
        agent["error"] = "not running"
    else:
        try:
            hello = await asyncio.wait_for(rpc.call_unix(str(lab.socket), "hello", timeout=5), 10)
            agent["host"] = hello.get("host") if isinstance(hello, dict) else None
        except (HostctlError, OSError, TimeoutError) as e:
            agent["error"] = str(e) or "no answer within 5 s"
    report["agent"] = agent
    report["site"] = str(lab.site) if lab.site.is_file() else None
    return report


def _status_blocking(lab: Lab) -> dict[str, Any]:
    ours = libvirtd.daemons(lab.runtime)[1].pid() is not None
    try:
        conn = libvirtd.open_connection()
    except HostctlError as e:
        return {"libvirtd": {"serving": False, "started_by_lab": ours, "error": str(e)}, "guests": []}
    try:
        guests = [_guest_status(dom) for dom in _prefixed(conn, lab.prefix())]
    finally:
        with contextlib.suppress(libvirt.libvirtError, HostctlError):
            within(libvirtd.OPEN_TIMEOUT, "closing the libvirt connection", conn.close)
    return {"libvirtd": {"serving": True, "started_by_lab": ours}, "guests": guests}


def _guest_status(dom: libvirt.virDomain) -> dict[str, Any]:
    name = dom.name()

    def read() -> tuple[int, int, int]:
        state = dom.state()[0]
        active = dom.isActive()
        plugged = dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE if active else libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        return state, plugged, dom.vcpusFlags(libvirt.VIR_DOMAIN_VCPU_MAXIMUM)

    entry: dict[str, Any] = {"name": name}
    try:
        state, plugged, maximum = within(CALL_TIMEOUT, f"reading {name}", read)
    except (HostctlError, libvirt.libvirtError) as e:
        entry["error"] = str(e) if isinstance(e, HostctlError) else e.get_error_message()
        return entry
    entry.update(state=_STATE.get(state, "other"), libvirt_vcpus=plugged, max_vcpus=maximum)
    if state != libvirt.VIR_DOMAIN_RUNNING:
        entry.update(guest_online=None, guest_why=f"{entry['state']}: no guest view")
        return entry
    try:
        seen = qga.vcpus(dom)
        entry.update(guest_online=seen.online, guest_present=seen.present)
    except HostctlError as e:
        entry.update(guest_online=None, guest_why=str(e))
    return entry


_STATE = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
}


def _prefixed(conn: libvirt.virConnect, prefix: str) -> list[libvirt.virDomain]:
    """Every domain (running or not) whose name starts with `prefix`."""

    def listed() -> list[tuple[str, libvirt.virDomain]]:
        try:
            return [(d.name(), d) for d in conn.listAllDomains(0)]
        except libvirt.libvirtError as e:
            raise HostctlError(f"cannot list domains: {e.get_error_message()}") from None

    doms = within(CALL_TIMEOUT, "listing domains", listed)
    return [d for name, d in sorted(doms, key=lambda pair: pair[0]) if name.startswith(prefix)]


def format_status(report: dict[str, Any]) -> str:
    """`lab status` for people: libvirtd, each guest with libvirt's and the guest's own vCPU counts, the agent."""
    if not report["running"] and not report["guests"]:
        return "lab is not running (start it with: hostctl lab up)"
    daemon = report["libvirtd"]
    who = "started by the lab" if daemon.get("started_by_lab") else "not started by the lab"
    lines = [f"libvirtd: {'serving ' + libvirtd.URI if daemon['serving'] else daemon.get('error')} ({who})"]
    for g in report["guests"]:
        if "error" in g:
            lines.append(f"  {g['name']}: {g['error']}")
            continue
        guest_view = (
            f"{g['guest_online']} of {g['guest_present']} online in the guest"
            if g.get("guest_online") is not None
            else f"guest view unknown ({g['guest_why']})"
        )
        lines.append(f"  {g['name']}: {g['state']}, libvirt {g['libvirt_vcpus']}/{g['max_vcpus']} vCPUs, {guest_view}")
    agent = report["agent"]
    if "error" in agent:
        lines.append(f"host agent: {agent['error']}")
    else:
        lines.append(f"host agent: pid {agent['pid']}, socket {agent['socket']}")
    if report["site"]:
        lines.append(f"site file: {report['site']}")
    return "\n".join(lines)


def healthy(report: dict[str, Any]) -> bool:
    """True when the lab is up: libvirtd serves, every guest's agent answers, the host agent answers."""
    return (
        bool(report["running"])
        and bool(report["libvirtd"]["serving"])
        and bool(report["guests"])
        and all(g.get("guest_online") is not None for g in report["guests"])
        and "error" not in report["agent"]
    )


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
    if libvirtd.daemons(lab.runtime)[1].pid() is not None and (others := _active_domains()):
        # Somebody else's guests run on the libvirtd we started: stopping it would orphan their QEMU processes.
        lines.append(f"libvirtd left running (started by the lab): it still runs {', '.join(others)}")
        for daemon in libvirtd.daemons(lab.runtime):
            daemon.pidfile.unlink(missing_ok=True)
    lines += libvirtd.stop(lab.runtime)
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
        for dom in _prefixed(conn, prefix):
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


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
