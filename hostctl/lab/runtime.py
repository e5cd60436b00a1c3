"""The lab's runtime directory: its files (state, site file, sockets, pid files, boot files, logs)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hostctl.errors import HostctlError
from hostctl.lab import domains, procs


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
        return fixed + sorted(self.runtime.glob("*.console"))

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
