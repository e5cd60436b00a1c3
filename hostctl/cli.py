"""`hostctl`: read a libvirt host, scale worker vCPUs, run the demo site. Bad input exits 2 with one line."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hostctl import __version__
from hostctl.backend import LibvirtHost
from hostctl.demo import site
from hostctl.demo.config import DEFAULT_CONFIG
from hostctl.errors import HostctlError
from hostctl.model import Snapshot


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hostctl", description=__doc__)
    p.add_argument("--version", action="version", version=f"hostctl {__version__}")
    p.add_argument("--uri", default=os.environ.get("LIBVIRT_DEFAULT_URI"),
                   help="libvirt URI of the host (qemu:///system, qemu+ssh://host/system, test:///path/node.xml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = sub.add_parser("status", help="show the host and its CVMs")
    status.add_argument("--json", action="store_true", help="print the host snapshot as JSON")
    status.add_argument("--sample", type=float, default=0.5, metavar="SECONDS",
                        help="measure CPU use over this long (0: skip; default 0.5)")

    scale = sub.add_parser("scale", help="set a CVM's online vCPUs (boot vCPUs + active workers)")
    scale.add_argument("cvm")
    scale.add_argument("target", type=int, metavar="N", help="online vCPUs wanted, boot..max")
    scale.add_argument("--expect", type=int, metavar="M", help="refuse unless M vCPUs are online now")
    scale.add_argument("--why", default="manual", help="reason recorded with the action")

    demo = sub.add_parser("demo", help="run the embedded demo site").add_subparsers(dest="demo", required=True,
                                                                                  metavar="ACTION")
    runtime = argparse.ArgumentParser(add_help=False)
    runtime.add_argument("--runtime", type=Path, default=site.default_runtime(), help="runtime directory")
    demo_up = demo.add_parser("up", parents=[runtime], help="start the demo hosts in the background")
    demo_up.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="demo site file")
    demo.add_parser("down", parents=[runtime], help="stop the demo hosts")
    demo_status = demo.add_parser("status", parents=[runtime], help="show the demo hosts and their CVMs")
    demo_status.add_argument("--json", action="store_true")
    serve = demo.add_parser("serve-host", parents=[runtime])
    serve.add_argument("name")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(_dispatch(args))
    except HostctlError as e:
        print(f"hostctl: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return await _demo(args)
    if not args.uri:
        raise HostctlError("no host given: pass --uri URI (or set LIBVIRT_DEFAULT_URI)")
    async with LibvirtHost(args.uri) as host:
        if args.command == "status":
            if args.sample > 0:
                await host.sample()
                await asyncio.sleep(args.sample)
                await host.sample()
            snapshot = host.snapshot()
            print(snapshot.to_json() if args.json else format_snapshot(snapshot))
        else:
            event = await host.scale(args.cvm, args.target, expect=args.expect, who=_who(), why=args.why)
            print(f"{event.host}/{event.cvm}: {event.before} -> {event.after} vCPUs" + (
                f" ({event.why})" if event.before == event.after else ""))
    return 0


async def _demo(args: argparse.Namespace) -> int:
    if args.demo == "serve-host":
        await site.serve_host(args.config, args.name, args.runtime)
    elif args.demo == "up":
        print("\n".join(await site.up(args.config, args.runtime)))
    elif args.demo == "down":
        print("\n".join(await site.down(args.runtime)))
    else:
        entries = await site.status(args.runtime)
        if args.json:
            print(json.dumps(entries, indent=2))
        elif not entries:
            print("demo site is not running (start it with: hostctl demo up)")
        else:
            for entry in entries:
                if "snapshot" in entry:
                    print(format_snapshot(Snapshot.from_dict(entry["snapshot"]), services=True))
                else:
                    print(f"{entry['host']}: {entry['error']}")
        if any("error" in e for e in entries):
            return 1
    return 0


def _who() -> str:
    return f"{getpass.getuser()}@hostctl"


def format_snapshot(snapshot: Snapshot, *, services: bool = False) -> str:
    """The human-readable status table."""
    h = snapshot.host
    caps = " ".join(f"{label} {_yes(v)}" for label, v in (("SEV", h.sev), ("SEV-ES", h.sev_es), ("SNP", h.sev_snp)))
    lines = [f"{h.name}  {h.cpus} CPUs  {h.memory_mib / 1024:.1f} GiB  CPU {h.cpu_percent:.1f}%  {caps}  "
             f"libvirt {h.libvirt_version}"]
    rows = [("CVM", "SECURITY", "STATE", "BOOT", "WORKERS", "CPU%", "DRIVER", "POLICY")]
    for c in snapshot.cvms:
        rows.append((c.name, c.security.value, c.state.value, str(c.boot_vcpus),
                     f"{c.workers_active}/{c.workers_max}", f"{c.cpu_percent:.1f}", c.driver,
                     f"{c.policy:#x} {','.join(c.policy_flags)}" if c.security.confidential else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    if services:
        lines += [f"  {s.cvm}/{s.name}: {s.url}" for s in snapshot.services]
    return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"
