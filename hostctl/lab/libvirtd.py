"""A libvirtd serving qemu:///system: used if one answers, else started (virtlogd + libvirtd) and later stopped;
and bounded connections to it.

The daemons a lab starts are remembered by pid files in a directory of their own (not a lab's runtime directory:
they serve every lab on the machine and may outlive the one that started them, and libvirtd's log must stay where
QEMU's start-up can write it), so `stop` ends exactly what a lab started and never a daemon somebody else runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt

from hostctl.errors import HostctlError
from hostctl.lab import procs
from hostctl.lab.bounded import within

URI = "qemu:///system"
OPEN_TIMEOUT = 10.0  # one attempt to open the URI
START_TIMEOUT = 30.0  # from starting the daemons to the URI opening
STOP_TIMEOUT = 15.0  # SIGTERM, then SIGKILL
CALL_TIMEOUT = 60.0  # one libvirt call of the lab: define, start, destroy, undefine, list
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def daemon_dir() -> Path:
    """Where the daemons a lab started keep their pid files and logs (private to this user)."""
    path = Path(tempfile.gettempdir()) / f"dittotui-lab-daemons-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@dataclass(frozen=True)
class Daemon:
    """One daemon a lab may start: its binary, its pid file and its log."""

    name: str
    folder: Path

    @property
    def pidfile(self) -> Path:
        return self.folder / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of the daemon we started, if it still runs as that program (not a reused pid)."""
        pid = procs.read_pid(self.pidfile)
        if pid is None or not procs.running(pid):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        return pid if comm == self.name else None


def daemons() -> list[Daemon]:
    """The daemons a lab starts, in start order."""
    folder = daemon_dir()
    return [Daemon("virtlogd", folder), Daemon("libvirtd", folder)]


def open_connection(timeout: float = OPEN_TIMEOUT) -> libvirt.virConnect:
    """A connection to qemu:///system, or HostctlError saying why not (bounded by `timeout`)."""
    libvirt.registerErrorHandler(lambda *_: None, None)

    def connect() -> libvirt.virConnect:
        try:
            return libvirt.open(URI)
        except libvirt.libvirtError as e:
            raise HostctlError(f"cannot open {URI}: {e.get_error_message()}") from None

    return within(timeout, f"opening {URI}", connect)


def prefixed_domains(conn: libvirt.virConnect, prefix: str) -> list[libvirt.virDomain]:
    """Every domain (running or not) whose name starts with `prefix`."""

    def listed() -> list[tuple[str, libvirt.virDomain]]:
        try:
            return [(d.name(), d) for d in conn.listAllDomains(0)]
        except libvirt.libvirtError as e:
            raise HostctlError(f"cannot list domains: {e.get_error_message()}") from None

    doms = within(CALL_TIMEOUT, "listing domains", listed)
    return [d for name, d in sorted(doms, key=lambda pair: pair[0]) if name.startswith(prefix)]


def answers(timeout: float = OPEN_TIMEOUT) -> bool:
    """True if a libvirtd serves qemu:///system now."""
    try:
        conn = open_connection(timeout)
    except HostctlError:
        return False
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
    return True


def ensure() -> list[str]:
    """Make sure a libvirtd serves qemu:///system; start virtlogd and libvirtd (as root) if none does."""
    if answers():
        ours = daemons()[1].pid() is not None
        return [f"libvirtd: serving {URI}" + (" (started by the lab)" if ours else " (not started by the lab)")]
    if os.geteuid() != 0:
        raise HostctlError(f"no libvirtd serves {URI}, and starting one needs root (run as root, or start libvirtd)")
    lines = []
    virtlogd, libvirtd = daemons()
    if not _accepts(VIRTLOGD_SOCKET):
        _start(virtlogd)
        lines.append(f"virtlogd: started (pid {virtlogd.pid()})")
    _start(libvirtd)
    deadline = time.monotonic() + START_TIMEOUT
    while not answers(max(1.0, min(OPEN_TIMEOUT, deadline - time.monotonic()))):
        if libvirtd.pid() is None:
            stop()
            raise HostctlError(
                f"libvirtd exited at start{_hint(libvirtd.log)}: {procs.log_tail(libvirtd.log, lines=2)}"
            )
        if time.monotonic() > deadline:
            stop()
            raise HostctlError(
                f"libvirtd did not serve {URI} within {START_TIMEOUT:.0f} s: {procs.log_tail(libvirtd.log, lines=2)}"
            )
        time.sleep(0.2)
    lines.append(f"libvirtd: started (pid {libvirtd.pid()}), serving {URI}")
    return lines


def stop() -> list[str]:
    """Stop the daemons a lab started (libvirtd first), and only those; remove their pid files."""
    lines = []
    for daemon in reversed(daemons()):
        pid = daemon.pid()
        if pid is not None:
            procs.terminate(pid, functools.partial(_is, daemon, pid), STOP_TIMEOUT)
            lines.append(f"{daemon.name}: stopped (pid {pid})")
        daemon.pidfile.unlink(missing_ok=True)
    return lines


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if path is None:
        raise HostctlError(f"{name} not found: install libvirt-daemon and libvirt-daemon-driver-qemu")
    return path


def _start(daemon: Daemon) -> None:
    argv = [_binary(daemon.name), "--daemon", "--pid-file", str(daemon.pidfile)]
    env = {**os.environ, "LIBVIRT_LOG_OUTPUTS": f"3:file:{daemon.log}"}
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=START_TIMEOUT,
            start_new_session=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise HostctlError(f"{daemon.name} --daemon did not return within {START_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip() or procs.log_tail(daemon.log, lines=2)
        raise HostctlError(f"{daemon.name} did not start (status {done.returncode}): {err}")
    deadline = time.monotonic() + START_TIMEOUT
    while daemon.pid() is None:
        if time.monotonic() > deadline:
            raise HostctlError(f"{daemon.name} wrote no pid file {daemon.pidfile} within {START_TIMEOUT:.0f} s")
        time.sleep(0.05)


def _is(daemon: Daemon, pid: int) -> bool:
    return daemon.pid() == pid


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _hint(log: Path) -> str:
    """What is missing, when the log says so plainly."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    if "Failed to parse user" in text or "Failed to parse group" in text:
        return " (QEMU's user is missing: install libvirt-daemon-system, which creates it)"
    return ""
