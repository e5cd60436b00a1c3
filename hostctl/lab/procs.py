"""Background processes an embedded site started: found by pid file and checked against /proc so a reused pid is
never signalled, and the last lines of their logs for an error message."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def running(pid: int) -> bool:
    """True if `pid` is a live process (a zombie awaiting its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def read_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile`, if it holds one."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def terminate(pid: int, still: Callable[[], bool], timeout: float) -> None:
    """SIGTERM `pid`, wait up to `timeout` while `still()` says it is the same live process, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while still() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        time.sleep(0.05)
    if still():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def log_tail(log: Path, lines: int = 3) -> str:
    """The last `lines` lines of a process's log, joined on one line (for a one-line error)."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
