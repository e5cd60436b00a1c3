"""The lab site for one console session: attach to a running lab (left running on quit), or start one (taken down
on quit, since this session started it).

Booting happens before the screen opens, so what it does is printed as it goes (TCG boots take 30-60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hostctl.client.site import Site
from hostctl.client.site import load as load_site
from hostctl.errors import HostctlError
from hostctl.lab import launcher, libvirtd
from hostctl.lab.bounded import within
from hostctl.lab.domains import GUESTS, PREFIX
from hostctl.lab.runtime import Lab, check_runtime

Say = Callable[[str], None]
HEARTBEAT_S = 15.0  # a "still booting" line this often while nothing else shows progress
POLL_S = 0.5
KILL_SETTLE_S = 2.0  # after killing `lab up`, for a libvirt call it had in flight to complete
UP_TIMEOUT = 420.0  # libvirtd, the guest image (built once), the boot of every guest and the host agent


class Interrupted(Exception):
    """The operator pressed Ctrl-C while the lab was booting; the lab is down (what `down` did is the message)."""


@dataclass(frozen=True)
class LabSession:
    """The lab this console shows: its files, its site, and whether this session started it."""

    lab: Lab
    site: Site
    started: bool

    @property
    def label(self) -> str:
        """What the console's header says about the site."""
        fate = "started by this session, taken down on quit" if self.started else "left running on quit"
        return f"lab site: real QEMU guests under TCG, no SNP hardware ({fate})"


def running(runtime: Path) -> Lab | None:
    """The lab `hostctl lab up` runs in `runtime`, if any; HostctlError if one is there but not serving."""
    lab = check_runtime(runtime, create=False)
    if not lab.state.is_file():
        return None
    if lab.agent_pid() is None or not lab.site.is_file():
        why = "its host agent is not running" if lab.agent_pid() is None else "it has no site file"
        raise HostctlError(
            f"the lab in {lab.runtime} is not serving ({why}; still starting?): "
            "see hostctl lab status, or take it down with hostctl lab down"
        )
    return lab


def attach(lab: Lab) -> LabSession:
    """A session on the running `lab`, which it leaves running."""
    return LabSession(lab, load_site(lab.site), started=False)


async def start(runtime: Path, say: Say) -> LabSession:
    """`hostctl lab up` in `runtime`, saying what happens as it goes; Interrupted on Ctrl-C (with the lab taken
    down), HostctlError with one line if it cannot start (it took down what it had started).

    `lab up` runs as a child process: its boot waits on threads that cannot be cancelled, a process can be ended at
    once, so Ctrl-C takes the lab down in seconds rather than after the boot's timeout.
    """
    lab = Lab(runtime.absolute())
    say(
        f"no lab runs in {lab.runtime}: starting one for this session (taken down on quit): libvirtd if none "
        f"serves, the guest image (built once, then cached), {len(GUESTS)} QEMU guests under TCG, one host agent; "
        "booting takes 30-60 s (Ctrl-C stops it)"
    )
    if taken := await asyncio.to_thread(_existing_domains, PREFIX):
        raise HostctlError(
            f"libvirt already has lab domains {', '.join(taken)} that no lab in {lab.runtime} started: another lab "
            "runs (pass its --lab-runtime, or take it down with hostctl lab down --runtime DIR)"
        )
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    def on_sigint() -> None:
        if not interrupted.is_set():
            say("interrupted: taking down what the lab started")
        interrupted.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)  # from before the child exists until the lab is down
    try:
        returncode, out, err = await _up(lab, say, interrupted)
        if interrupted.is_set() or returncode != 0:
            lines = await stop(lab.runtime)  # what the child started, if it could not take it down itself
            if returncode < 0:  # killed: a start it had asked libvirtd for may still complete; sweep once more
                await asyncio.sleep(KILL_SETTLE_S)
                lines += [line for line in await stop(lab.runtime) if line != "lab is not running"]
            if interrupted.is_set():
                raise Interrupted("; ".join(lines))
            why = _last_line(err) or _last_line(out) or f"hostctl lab up exited with status {returncode}"
            if returncode == -signal.SIGKILL:
                why = f"no lab within {UP_TIMEOUT:.0f} s"
            why = why.removeprefix("hostctl: ").replace("pass --runtime ", "pass --lab-runtime ")  # our option's name
            raise HostctlError(f"the lab did not start: {why}")
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    for line in out.decode(errors="replace").splitlines():
        say(f"  {line}")
    return LabSession(lab, load_site(lab.site), started=True)


async def _up(lab: Lab, say: Say, interrupted: asyncio.Event) -> tuple[int, bytes, bytes]:
    """Run `hostctl lab up` until it ends, Ctrl-C or UP_TIMEOUT (then it is killed): (status, stdout, stderr)."""
    argv = [sys.executable, "-m", "hostctl", "lab", "up", "--runtime", str(lab.runtime)]
    child = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches this session only, which ends the child itself
    )
    watch = asyncio.create_task(_progress(lab, say))
    done = asyncio.create_task(child.communicate())
    stop_asked = asyncio.create_task(interrupted.wait())
    try:
        await asyncio.wait({done, stop_asked}, timeout=UP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        stop_asked.cancel()
        if not done.done():
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        out, err = await done
    assert child.returncode is not None
    return child.returncode, out, err


def _existing_domains(prefix: str) -> list[str]:
    """Domains named like the lab's that libvirt already has (none when no libvirtd serves)."""
    try:
        conn = libvirtd.open_connection()
    except HostctlError:
        return []
    try:
        return [dom.name() for dom in libvirtd.prefixed_domains(conn, prefix)]
    finally:
        with contextlib.suppress(Exception):  # closing is best effort
            within(libvirtd.OPEN_TIMEOUT, "closing the libvirt connection", conn.close)


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


async def _progress(lab: Lab, say: Say) -> None:
    """Say when the boot reaches each step the runtime directory shows, and that it is still going."""
    began = last = time.monotonic()
    said = ""
    while True:
        await asyncio.sleep(POLL_S)
        now = time.monotonic()
        step = _step(lab)
        if step != said or now - last >= HEARTBEAT_S:
            say(f"  {now - began:4.0f} s: {step}" + (" ..." if step == said else ""))
            said, last = step, now


def _step(lab: Lab) -> str:
    if lab.pidfile.exists():
        return "every guest agent answered; starting the host agent"
    if consoles := len(list(lab.runtime.glob("*.console"))):
        return f"{consoles} of {len(GUESTS)} guests started; waiting for their guest agents to answer"
    if lab.kernel.exists():
        return "guest image in place; starting the guests"
    return "checking libvirtd and the guest image"


async def stop(runtime: Path) -> list[str]:
    """`lab down` in `runtime`: what it did, one line each."""
    return await launcher.down(runtime)
