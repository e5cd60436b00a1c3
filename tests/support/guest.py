"""Reaching inside a lab guest without its agent: a shell on its serial console, for faults the agent cannot cause
on itself (stopped, killed, gone) and for load."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def console(runtime: Path, domain: str) -> Path:
    """The unix socket of the guest's serial console (the lab puts it in its runtime directory)."""
    return runtime / f"{domain}.console"


def shell(runtime: Path, domain: str, command: str, *, settle: float = 0.5) -> str:
    """Run `command` in the guest's console shell; what the console printed meanwhile (an echo, the output)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(console(runtime, domain)))
        sock.sendall(command.encode() + b"\n")
        time.sleep(settle)
        sock.settimeout(0.5)
        out = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                out += chunk
    return out.decode(errors="replace")


@contextlib.contextmanager
def agent_stopped(runtime: Path, domain: str) -> Iterator[None]:
    """The guest's qemu-guest-agent stopped (SIGSTOP: connected, never answering) until the block ends."""
    shell(runtime, domain, "kill -STOP $(pidof qemu-ga)")
    try:
        yield
    finally:
        shell(runtime, domain, "kill -CONT $(pidof qemu-ga)")


@contextlib.contextmanager
def agent_gone(runtime: Path, domain: str) -> Iterator[None]:
    """No qemu-guest-agent in the guest (killed, and kept from respawning) until the block ends."""
    shell(runtime, domain, "mv /usr/sbin/qemu-ga /usr/sbin/qemu-ga.off; kill -KILL $(pidof qemu-ga)")
    try:
        yield
    finally:
        shell(runtime, domain, "mv /usr/sbin/qemu-ga.off /usr/sbin/qemu-ga")


def kill_agent(runtime: Path, domain: str) -> None:
    """Kill the guest agent (the guest's init starts it again within a second or two)."""
    shell(runtime, domain, "kill -KILL $(pidof qemu-ga)", settle=0.1)


def busy(runtime: Path, domain: str, seconds: int) -> None:
    """Keep one guest vCPU busy for `seconds` (in the background)."""
    shell(runtime, domain, f"timeout {seconds} yes > /dev/null &", settle=0.2)


def wait_for(what: str, probe: Callable[[], T | None], *, within: float, every: float = 0.5) -> T:
    """Poll `probe` until it returns something other than None (or False); AssertionError naming `what` after
    `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g} s (last seen: {value!r})")
        time.sleep(every)
