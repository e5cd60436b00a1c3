"""Bounded calls: run a blocking call (libvirt, a subprocess) and give up after a deadline with one clear line."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from hostctl.errors import HostctlError

T = TypeVar("T")


def within(seconds: float, what: str, fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` on a daemon thread, or HostctlError naming `what` after `seconds`.

    A call that overstays is abandoned (its thread never holds up the process's exit); libvirt's client calls
    have no deadline of their own, so every one the lab makes goes through here.
    """
    done = threading.Event()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args))
        except BaseException as e:
            error.append(e)
        finally:
            done.set()

    threading.Thread(target=run, name=f"lab: {what}", daemon=True).start()
    if not done.wait(seconds):
        raise HostctlError(f"{what}: no answer within {seconds:g} s")
    if error:
        raise error[0]
    return result[0]


def run(argv: Sequence[str], *, timeout: float, what: str, stdin: bytes | None = None, check: bool = True) -> str:
    """Run `argv` (never a shell) and return its stdout; HostctlError with its stderr on failure or timeout.

    With `check` False a non-zero exit status is no error (stdout is returned all the same).
    """
    return run_bytes(argv, timeout=timeout, what=what, stdin=stdin, check=check).decode(errors="replace")


def run_bytes(
    argv: Sequence[str], *, timeout: float, what: str, stdin: bytes | None = None, check: bool = True
) -> bytes:
    """As `run`, returning stdout as bytes."""
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise HostctlError(f"{what}: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise HostctlError(f"{what}: {argv[0]} did not finish within {timeout:g} s") from None
    if check and done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise HostctlError(f"{what}: {argv[0]} exited with status {done.returncode}: {' | '.join(err[-2:])}")
    return done.stdout
