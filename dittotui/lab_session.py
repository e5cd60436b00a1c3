"""The lab site for one console session: attach to a running lab (left running on quit), or start one (taken down
on quit, since this session started it).

Booting happens before the screen opens, so what it does is printed as it goes (TCG boots take 30-60 s).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hostctl.client.site import Site
from hostctl.client.site import load as load_site
from hostctl.errors import HostctlError
from hostctl.lab import launcher
from hostctl.lab.domains import GUESTS
from hostctl.lab.runtime import Lab, check_runtime

Say = Callable[[str], None]
HEARTBEAT_S = 15.0  # a "still booting" line this often while nothing else shows progress
POLL_S = 0.5


class Interrupted(Exception):
    """The operator pressed Ctrl-C while the lab was booting."""


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
    """`lab up` in `runtime`, saying what happens as it goes; Interrupted on Ctrl-C (after `up` took down what it
    had started), HostctlError with one line if it cannot start."""
    lab = Lab(runtime.absolute())
    say(
        f"no lab runs in {lab.runtime}: starting one for this session (taken down on quit): libvirtd if none "
        f"serves, the guest image (built once, then cached), {len(GUESTS)} QEMU guests under TCG, one host agent; "
        "booting takes 30-60 s (Ctrl-C stops it)"
    )
    loop = asyncio.get_running_loop()
    up = asyncio.create_task(launcher.up(runtime))
    interrupted = threading.Event()

    def on_sigint() -> None:
        if not interrupted.is_set():
            say("interrupted: taking down what the lab started (this can take a while)")
        interrupted.set()
        up.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    watch = asyncio.create_task(_progress(lab, say))
    try:
        lines = await up
    except asyncio.CancelledError:
        if interrupted.is_set():
            raise Interrupted from None
        raise
    finally:
        watch.cancel()
        loop.remove_signal_handler(signal.SIGINT)
    for line in lines:
        say(f"  {line}")
    return LabSession(lab, load_site(lab.site), started=True)


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


def abandon(runtime: Path) -> list[str]:
    """After an interrupted start: wait for the boot step under way (bounded), then take the lab down.

    Ctrl-C is ignored meanwhile: stopping half way would leave guests running.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    deadline = time.monotonic() + launcher.BOOT_TIMEOUT + 60
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    return asyncio.run(stop(runtime))
