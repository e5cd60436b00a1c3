"""The guest's own view, asked of its qemu-guest-agent with a timeout on every call."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]

from hostctl.errors import HostctlError
from hostctl.lab.bounded import within

TIMEOUT = 5  # seconds the guest agent may take to answer one command


def command(dom: libvirt.virDomain, execute: str, timeout: int = TIMEOUT) -> Any:
    """Run one guest-agent command and return its `return` value; HostctlError saying why not."""
    request = json.dumps({"execute": execute})

    def ask() -> Any:
        try:
            reply = libvirt_qemu.qemuAgentCommand(dom, request, timeout, 0)
        except libvirt.libvirtError as e:
            raise HostctlError(f"guest agent: {e.get_error_message()}") from None
        return json.loads(reply)["return"]

    return within(timeout + 5, f"guest agent of {dom.name()}: {execute}", ask)


def ping(dom: libvirt.virDomain, timeout: int = TIMEOUT) -> bool:
    """True if the guest agent answers `guest-ping`."""
    try:
        command(dom, "guest-ping", timeout)
    except HostctlError:
        return False
    return True


@dataclass(frozen=True)
class GuestVcpus:
    """The vCPUs as the guest sees them (`guest-get-vcpus`)."""

    present: int
    online: int


def vcpus(dom: libvirt.virDomain, timeout: int = TIMEOUT) -> GuestVcpus:
    """How many vCPUs the guest has and how many it has online; HostctlError if its agent does not say."""
    listed = command(dom, "guest-get-vcpus", timeout)
    return GuestVcpus(present=len(listed), online=sum(1 for v in listed if v.get("online")))


def wait_ping(dom: libvirt.virDomain, deadline: float) -> float | None:
    """Poll until the guest agent answers or `deadline` (monotonic) passes: the seconds it took, or None."""
    start = time.monotonic()
    while time.monotonic() < deadline:
        if ping(dom, timeout=max(1, min(TIMEOUT, int(deadline - time.monotonic())))):
            return time.monotonic() - start
        time.sleep(1)
    return None
