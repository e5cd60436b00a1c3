"""`lab status`: libvirtd, each lab guest as libvirt and as the guest itself sees it, and the host agent."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import libvirt

from hostctl.errors import HostctlError
from hostctl.lab import libvirtd, qga
from hostctl.lab.bounded import within
from hostctl.lab.runtime import Lab, check_runtime
from hostctl.wire import rpc


async def report(runtime: Path) -> dict[str, Any]:
    """The lab as it is: libvirtd, each prefixed guest (libvirt's and the guest's own vCPU view), the agent."""
    lab = check_runtime(runtime, create=False)
    result: dict[str, Any] = {"runtime": str(lab.runtime), "prefix": lab.prefix(), "running": lab.state.is_file()}
    result.update(await asyncio.to_thread(_status_blocking, lab))
    agent: dict[str, Any] = {"pid": lab.agent_pid(), "socket": str(lab.socket)}
    if agent["pid"] is None:
        agent["error"] = "not running"
    else:
        try:
            hello = await asyncio.wait_for(rpc.call_unix(str(lab.socket), "hello", timeout=5), 10)
            agent["host"] = hello.get("host") if isinstance(hello, dict) else None
        except (HostctlError, OSError, TimeoutError) as e:
            agent["error"] = str(e) or "no answer within 5 s"
    result["agent"] = agent
    result["site"] = str(lab.site) if lab.site.is_file() else None
    return result


def _status_blocking(lab: Lab) -> dict[str, Any]:
    ours = libvirtd.daemons()[1].pid() is not None
    try:
        conn = libvirtd.open_connection()
    except HostctlError as e:
        return {"libvirtd": {"serving": False, "started_by_lab": ours, "error": str(e)}, "guests": []}
    try:
        guests = [_guest_status(dom) for dom in libvirtd.prefixed_domains(conn, lab.prefix())]
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
        state, plugged, maximum = within(libvirtd.CALL_TIMEOUT, f"reading {name}", read)
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


def format_report(report: dict[str, Any]) -> str:
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
