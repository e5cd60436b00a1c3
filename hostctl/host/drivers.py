"""Worker vCPU drivers: how a CVM's active worker count is read and changed. They register by name.

Drivers run on a worker thread (never on an event loop) and may block, but never without a bound: a driver that
asks the guest (`asks_guest`) sets libvirt's guest-agent response timeout before every call. A count a driver
cannot read raises `CountUnknown`, never a stand-in number.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import libvirt

from hostctl.errors import HostctlError
from hostctl.wire.model import CVM

AGENT_TIMEOUT_S = 3.0  # how long one guest-agent call may wait for the guest's answer


class CountUnknown(HostctlError):
    """The online vCPU count cannot be read now; the message says why."""


class WorkerDriver(Protocol):
    """Reads and sets the number of online vCPUs (boot + active workers) of one domain."""

    name: str
    asks_guest: bool  # True when reading the count waits on the guest (its agent), not only on libvirt

    def refuse(self, cvm: CVM) -> str | None:
        """Why this driver must not scale `cvm` at all, or None."""

    def online(self, dom: libvirt.virDomain) -> int:
        """The online vCPU count as this driver controls it; CountUnknown when it cannot be read."""

    def apply(self, dom: libvirt.virDomain, cvm: CVM, target: int) -> None:
        """Make `target` vCPUs online; raise HostctlError with a clear reason on failure."""


REGISTRY: dict[str, Callable[..., WorkerDriver]] = {}


def register(name: str) -> Callable[[Callable[..., WorkerDriver]], Callable[..., WorkerDriver]]:
    """Class decorator: make a driver available by name (e.g. a host with Ditto's own interface)."""

    def deco(factory: Callable[..., WorkerDriver]) -> Callable[..., WorkerDriver]:
        REGISTRY[name] = factory
        return factory

    return deco


def create(name: str, **options: Any) -> WorkerDriver:
    """Instantiate a registered driver."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise HostctlError(f"unknown worker driver {name!r} (known: {', '.join(sorted(REGISTRY))})") from None
    return factory(**options)


def _live(dom: libvirt.virDomain) -> int:
    online: int = dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)  # libvirt-python is untyped
    return online


@register("guest")
class GuestDriver:
    """Asks the guest agent to online/offline vCPUs beyond the boot set: SNP-safe, no hotplug."""

    name = "guest"
    asks_guest = True

    def __init__(self, timeout_s: float = AGENT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s

    def refuse(self, cvm: CVM) -> str | None:
        return None

    def online(self, dom: libvirt.virDomain) -> int:
        return guest_online(dom, self.timeout_s)

    def apply(self, dom: libvirt.virDomain, cvm: CVM, target: int) -> None:
        bound_agent(dom, self.timeout_s)
        try:
            dom.setVcpusFlags(target, libvirt.VIR_DOMAIN_VCPU_GUEST)
        except libvirt.libvirtError as e:
            raise HostctlError(
                f"{cvm.name}: the guest agent cannot set online vCPUs "
                f"(is qemu-guest-agent running in the guest?): {e.get_error_message()}"
            ) from None


def bound_agent(dom: libvirt.virDomain, seconds: float) -> None:
    """Make libvirt give up on this domain's guest agent after `seconds` (its default is to wait forever)."""
    with contextlib.suppress(libvirt.libvirtError):  # a driver without agents (the test driver) has no such knob
        dom.agentSetResponseTimeout(max(1, math.ceil(seconds)), 0)


def guest_online(dom: libvirt.virDomain, timeout_s: float) -> int:
    """The vCPUs online as the guest itself counts them (its agent); CountUnknown when it does not answer."""
    bound_agent(dom, timeout_s)
    try:
        online: int = dom.vcpusFlags(libvirt.VIR_DOMAIN_VCPU_GUEST)  # libvirt-python is untyped
    except libvirt.libvirtError as e:
        raise CountUnknown(f"guest agent not answering: {e.get_error_message()}") from None
    return online


@register("hotplug")
class HotplugDriver:
    """Live vCPU hotplug. Plain VMs only: under SEV-ES/SNP the launch measurement covers every vCPU."""

    name = "hotplug"
    asks_guest = False

    def refuse(self, cvm: CVM) -> str | None:
        if cvm.security.measures_vcpus:
            return (
                f"{cvm.name}: hotplug refused for {cvm.security.value}: the launch measurement covers every "
                "vCPU's register state, so vCPUs cannot be added after launch (use the 'guest' driver)"
            )
        return None

    def online(self, dom: libvirt.virDomain) -> int:
        return _live(dom)

    def apply(self, dom: libvirt.virDomain, cvm: CVM, target: int) -> None:
        try:
            dom.setVcpusFlags(target, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as e:
            raise HostctlError(
                f"{cvm.name}: vCPU hotplug to {target} failed: {e.get_error_message()}; now {_both_views(dom)}"
            ) from None


@register("emulated")
class EmulatedDriver:
    """Demo site: sets the live vCPU count in libvirt's test driver after a wake/park delay per vCPU."""

    name = "emulated"
    asks_guest = False

    def __init__(self, wake_ms: float = 40.0, park_ms: float = 15.0) -> None:
        self.wake_ms = wake_ms
        self.park_ms = park_ms

    def refuse(self, cvm: CVM) -> str | None:
        return None

    def online(self, dom: libvirt.virDomain) -> int:
        return _live(dom)

    def apply(self, dom: libvirt.virDomain, cvm: CVM, target: int) -> None:
        change = target - _live(dom)
        time.sleep(abs(change) * (self.wake_ms if change > 0 else self.park_ms) / 1000)
        try:
            dom.setVcpusFlags(target, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as e:
            raise HostctlError(f"{cvm.name}: emulated scale to {target} failed: {e.get_error_message()}") from None


def _both_views(dom: libvirt.virDomain) -> str:
    """What libvirt and the guest each count after a failed change (a timed-out hot-unplug leaves them apart)."""
    try:
        plugged = f"libvirt counts {_live(dom)} plugged vCPUs"
    except libvirt.libvirtError as e:
        plugged = f"libvirt's count is unknown ({e.get_error_message()})"
    try:
        seen = f"the guest has {guest_online(dom, AGENT_TIMEOUT_S)} online"
    except CountUnknown as e:
        seen = f"the guest's own count is unknown ({e})"
    return f"{plugged}, {seen}"
