"""`hostctl --site FILE status|scale|audit|policy`: the CLI over the links to a site's agents.

`status --json` prints `{"hosts": [{"name", "state", "age_s", "error", "snapshot"}]}` where `state` is
`fresh`, `stale` or `connecting`, `age_s` the seconds since the host's last data (null if none) and `snapshot`
the host model (null if never reached). Exit status: 0 when every host is fresh, 1 otherwise, 2 on bad input.
`audit --json` prints one event object per line. `policy HOST/CVM [--name NAME] [--on|--off]` shows (and sets)
a CVM's elastic policy; `--json` prints the agent's reply. `doctor [HOST]` prints each host's checks (its agent runs
them); `--json` prints `{"hosts": [{"name", "error", "report"}]}`; exit 0 when every host answered and no check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from hostctl.client.link import Fleet, HostLink, LinkState
from hostctl.client.ref import CVMRef
from hostctl.client.render import format_doctor, format_event, format_scale, format_snapshot
from hostctl.client.site import Site
from hostctl.errors import HostctlError
from hostctl.wire.doctor import Report
from hostctl.wire.model import Event


async def run(args: argparse.Namespace, site: Site) -> int:
    fleet = Fleet(site)
    try:
        if args.command == "status":
            return await _status(fleet, as_json=args.json)
        if args.command == "scale":
            return await _scale(fleet, args)
        if args.command == "policy":
            return await _policy(fleet, args)
        if args.command == "doctor":
            return await _doctor(fleet, args)
        return await _audit(fleet, args)
    finally:
        await fleet.stop()


async def _status(fleet: Fleet, *, as_json: bool) -> int:
    fleet.start()
    await fleet.ready()
    links = list(fleet.links.values())
    if as_json:
        print(json.dumps({"hosts": [_host_json(link) for link in links]}, indent=2))
    for link in links if not as_json else []:
        age = f", data {link.age:.1f} s old" if link.age is not None else ""
        print(f"{link.name}: {link.state.value}{age}" + (f" ({link.error})" if link.error else ""))
        if link.snapshot is not None:
            print(format_snapshot(link.snapshot))
    return 0 if all(link.state is LinkState.FRESH for link in links) else 1


def _host_json(link: HostLink) -> dict[str, object]:
    return {
        "name": link.name,
        "state": link.state.value,
        "age_s": None if link.age is None else round(link.age, 3),
        "error": link.error,
        "snapshot": None if link.snapshot is None else link.snapshot.to_dict(),
    }


async def _scale(fleet: Fleet, args: argparse.Namespace) -> int:
    ref = CVMRef.parse(args.cvm)
    link = await _connected(fleet, ref.host)
    event = await link.scale(ref.cvm, args.target, expect=args.expect, why=args.why)
    print(format_scale(event))
    return 0


async def _policy(fleet: Fleet, args: argparse.Namespace) -> int:
    ref = CVMRef.parse(args.cvm)
    link = await _connected(fleet, ref.host)
    state = await link.set_policy(ref.cvm, name=args.name, enabled=args.enabled)
    if args.json:
        print(json.dumps({"cvm": ref.cvm, **state.to_dict()}))
        return 0
    print(f"{ref.key}: policy {state.policy} {'on' if state.enabled else 'off'}")
    if state.decision:
        print(f"  last decision: {state.decision}: {state.reason}" + ("  (ALERT)" if state.alert else ""))
    return 0


async def _doctor(fleet: Fleet, args: argparse.Namespace) -> int:
    if args.sys_root is not None:
        raise HostctlError("--sys-root is the agent's own setting (hostctl serve --sys-root DIR), not the site's")
    links = [fleet.link(args.host)] if args.host else list(fleet.links.values())
    for link in links:
        link.start()
    await asyncio.gather(*(link.ready(fleet.site.defaults.timeout + 2) for link in links))
    results = await asyncio.gather(*(_doctor_one(link) for link in links))
    if args.json:
        hosts = [
            {"name": link.name, "error": error, "report": None if report is None else report.to_dict()}
            for link, (report, error) in zip(links, results, strict=True)
        ]
        print(json.dumps({"hosts": hosts}, indent=2))
    else:
        for link, (report, error) in zip(links, results, strict=True):
            print(format_doctor(report) if report is not None else f"{link.name}: doctor not run: {error}")
    return 0 if all(report is not None and report.passed for report, _ in results) else 1


async def _doctor_one(link: HostLink) -> tuple[Report | None, str]:
    """The host's report, or why there is none (unreachable, an agent without a doctor)."""
    if link.state is not LinkState.FRESH:
        return None, f"not reachable ({link.error or link.state.value})"
    try:
        return await link.doctor(), ""
    except HostctlError as e:
        return None, str(e)


async def _audit(fleet: Fleet, args: argparse.Namespace) -> int:
    links = list(fleet.links.values())
    fleet.start()
    await fleet.ready()
    events: list[Event] = []
    failed = False
    for link in links:
        try:
            events += await link.audit(args.limit)
        except HostctlError as e:
            print(f"{link.name}: {e}")
            failed = True
    for event in sorted(events, key=lambda e: e.ts):
        print(format_event(event, as_json=args.json))
    if not args.follow:
        return 1 if failed else 0
    for link in links:
        link.on_event(lambda event: print(format_event(event, as_json=args.json), flush=True))
    await asyncio.Event().wait()
    return 0


async def _connected(fleet: Fleet, name: str) -> HostLink:
    link = fleet.link(name)
    link.start()
    await link.ready(fleet.site.defaults.timeout + 2)
    if link.state is not LinkState.FRESH:
        raise HostctlError(f"{name}: not reachable ({link.error or link.state.value}); nothing was sent")
    return link
