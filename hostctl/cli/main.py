"""`hostctl`: read a libvirt host, scale worker vCPUs, check it (doctor), run the demo site. Bad input exits 2 with
one line."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import stat
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hostctl import __version__
from hostctl.agent.access import Writers
from hostctl.agent.audit import AuditLog
from hostctl.agent.audit import default_path as audit_default_path
from hostctl.agent.metrics import METRICS_AT, parse_address
from hostctl.agent.server import Agent
from hostctl.cli import site as sitecli
from hostctl.client.link import Fleet
from hostctl.client.render import format_doctor, format_scale, format_snapshot
from hostctl.client.site import Site
from hostctl.client.site import load as load_site
from hostctl.demo import launcher
from hostctl.demo.config import DEFAULT_CONFIG
from hostctl.elastic.runner import DEFAULT_POLICIES, PolicySpec, load_policies
from hostctl.errors import HostctlError
from hostctl.experiments import elastic_oracle, elastic_report
from hostctl.experiments import elastic_vs_fixed as elastic_experiment
from hostctl.experiments import security_overhead as experiment
from hostctl.experiments.overhead_runs import Plan, new_seed, parse_connections, parse_scripts
from hostctl.host.doctor import examine
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.lab import launcher as lab_launcher
from hostctl.lab import status as lab_status
from hostctl.lab.domains import PREFIX as LAB_PREFIX
from hostctl.lab.runtime import Lab, default_runtime
from hostctl.load import wrk
from hostctl.load.generators import check_bounds, load_host
from hostctl.load.runs import RunLog
from hostctl.load.trace import TRACES
from hostctl.wire.model import Snapshot


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hostctl", description=__doc__)
    p.add_argument("--version", action="version", version=f"hostctl {__version__}")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--uri",
        default=os.environ.get("LIBVIRT_DEFAULT_URI"),
        help="libvirt URI of one host (qemu:///system, qemu+ssh://host/system, test:///path/node.xml)",
    )
    where.add_argument("--site", type=Path, help="site inventory: reach every host's agent over SSH")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = sub.add_parser("status", help="show the host and its CVMs")
    status.add_argument("--json", action="store_true", help="print the host snapshot as JSON")
    status.add_argument(
        "--sample",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="measure CPU use over this long (0: skip; default 0.5)",
    )

    scale = sub.add_parser("scale", help="set a CVM's online vCPUs (boot vCPUs + active workers)")
    scale.add_argument("cvm", metavar="CVM", help="the CVM's name (with --site: HOST/CVM)")
    scale.add_argument("target", type=int, metavar="N", help="online vCPUs wanted, boot..max")
    scale.add_argument("--expect", type=int, metavar="M", help="refuse unless M vCPUs are online now")
    scale.add_argument("--why", default="manual", help="reason recorded with the action")

    audit = sub.add_parser("audit", help="show the agents' audit logs (with --site)")
    audit.add_argument("--limit", type=int, default=50, help="events per host (default 50)")
    audit.add_argument("--follow", action="store_true", help="then print new events as they happen")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")

    policy = sub.add_parser("policy", help="show or set a CVM's elastic policy (with --site)")
    policy.add_argument("cvm", metavar="HOST/CVM", help="the CVM")
    onoff = policy.add_mutually_exclusive_group()
    onoff.add_argument("--on", dest="enabled", action="store_const", const=True, help="switch its policy on")
    onoff.add_argument("--off", dest="enabled", action="store_const", const=False, help="switch its policy off")
    policy.add_argument("--name", help="choose this policy (one of the agent's configured policies)")
    policy.add_argument("--json", action="store_true", help="print the agent's reply as JSON")

    sys_root = argparse.ArgumentParser(add_help=False)
    sys_root.add_argument(
        "--sys-root",
        type=Path,
        metavar="DIR",
        help="read the kernel's /sys and /dev under DIR (default /: this host's own)",
    )
    doctor = sub.add_parser(
        "doctor",
        parents=[sys_root],
        help="check what the host needs to run elastic CVMs: kvm_amd, /dev/sev, libvirt, QEMU, SEV/SNP, drivers, "
        "guest agents, the agent's files and socket; exit 0 when no check fails (warnings do not), 1 otherwise",
    )
    doctor.add_argument("host", nargs="?", metavar="HOST", help="with --site: this host only (default: every host)")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")

    experiment = sub.add_parser("experiment", help="run a load experiment over the site's CVMs (with --site)")
    experiments = experiment.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    overhead = experiments.add_parser(
        "security-overhead",
        help="rounds of the same wrk load against comparable CVMs of each security type, interleaved in a "
        "shuffled order: median p50/p90/p99 with 95%% bootstrap intervals and the increase over plain, saved as "
        "Markdown, CSV and SVG",
    )
    overhead.add_argument("--out", type=Path, default=Path("."), help="folder for the tables (default: here)")
    overhead.add_argument("--rounds", type=int, default=5, metavar="N", help="rounds, 2 or more (default 5)")
    overhead.add_argument("--duration", type=int, default=5, metavar="S", help="seconds per run (default 5)")
    overhead.add_argument(
        "--connections",
        default="8",
        metavar="N[,N...]",
        help="wrk connections; several (e.g. 1,4,16,64) sweep the offered concurrency (default 8)",
    )
    overhead.add_argument("--threads", type=int, default=2, metavar="N", help="wrk threads (default 2)")
    overhead.add_argument("--timeout", type=int, default=2, metavar="S", help="wrk request timeout (default 2)")
    overhead.add_argument(
        "--script",
        default="all",
        metavar="NAME[,NAME...]",
        help=f"shipped wrk scripts: {', '.join(wrk.SCRIPTS)} or all (default all)",
    )
    overhead.add_argument("--seed", type=int, metavar="N", help="seed of the shuffled order (default: random)")
    overhead.add_argument("--load-host", metavar="NAME", help="a load generator of the site (default: this machine)")
    overhead.add_argument("--history", type=Path, help="run history file (default: XDG state dir)")
    elastic = experiments.add_parser(
        "elastic-vs-fixed",
        help="calibrate one CVM (p99 at fixed vCPU counts across rates), then replay load traces (open loop, "
        "~150 s per run) with fixed-max and each elastic policy, repeated: latency, SLO windows, worker-vCPU-seconds "
        "against the calibration's oracle and fixed-max, scale actions, reaction; saved as Markdown, SVG, JSON, CSV",
    )
    elastic.add_argument(
        "--cvm",
        metavar="HOST/CVM",
        help="the CVM to load (default: the first running CVM with worker vCPUs and a service)",
    )
    elastic.add_argument(
        "--runs",
        metavar="A,B,...",
        help="runs by name (default: fixed-max, oracle-replay and every policy of the agent; fixed-min on request)",
    )
    elastic.add_argument(
        "--traces", default="bursty,diurnal", metavar="A,B", help="traces: bursty, diurnal (default both)"
    )
    elastic.add_argument("--repeats", type=int, default=3, metavar="N", help="repeats of every run (default 3)")
    elastic.add_argument("--seconds", type=float, metavar="S", help="squeeze or stretch each trace to S seconds")
    elastic.add_argument(
        "--calibration", type=Path, metavar="FILE", help="reuse a saved calibration (.json) instead of measuring"
    )
    elastic.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply the trace's request rates (default 1: 60 to 480 req/s)",
    )
    elastic.add_argument("--out", type=Path, default=Path("."), help="folder for the table and plot (default: here)")

    metrics = argparse.ArgumentParser(add_help=False)
    metrics.add_argument(
        "--metrics",
        metavar="[ADDR:]PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (ADDR an IP address, default 127.0.0.1; "
        "PORT 0: any free port)",
    )
    agent_opts = argparse.ArgumentParser(add_help=False, parents=[sys_root, metrics])
    agent_opts.add_argument("--readonly", action="store_true", help="refuse every change, from anyone")
    agent_opts.add_argument(
        "--writers",
        metavar="USER,@GROUP,...",
        help="who may scale and change policies, by user name or @group; everyone else who reaches the agent only "
        "reads (default: the agent's own user and root). A peer is the SSH user for --stdio, the socket's peer "
        "user for serve",
    )
    agent_opts.add_argument("--audit", type=Path, default=None, help="audit log (default: XDG state dir)")
    agent_opts.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    agent_opts.add_argument(
        "--probe-rate", type=float, default=2.0, help="latency probes per second per service (default 2; 0: off)"
    )
    agent_opts.add_argument(
        "--policies",
        type=Path,
        default=None,
        metavar="DIR",
        help="elastic policy files (default: the ones shipped with hostctl, in hostctl/data/policies)",
    )
    agent = sub.add_parser("agent", parents=[agent_opts], help="serve one peer on stdin/stdout (run over SSH)")
    agent.add_argument("--stdio", action="store_true", required=True)
    serve = sub.add_parser("serve", parents=[agent_opts], help="serve on a unix socket (long-running, systemd)")
    serve.add_argument("--socket", type=Path, required=True)
    serve.add_argument(
        "--group",
        help="let this group reach the socket (mode 0660, group-owned); its members read, and write only when "
        "--writers names them or the group",
    )

    demo = sub.add_parser("demo", help="run the embedded demo site").add_subparsers(
        dest="demo", required=True, metavar="ACTION"
    )
    runtime = argparse.ArgumentParser(add_help=False)
    runtime.add_argument("--runtime", type=Path, default=launcher.default_runtime(), help="runtime directory")
    demo_up = demo.add_parser(
        "up",
        parents=[runtime, metrics],
        help="start the demo hosts in the background (--metrics: the first host at PORT, the next at PORT+1, ...)",
    )
    demo_up.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="demo site file")
    demo.add_parser("down", parents=[runtime], help="stop the demo hosts")
    demo_status = demo.add_parser("status", parents=[runtime], help="show the demo hosts and their CVMs")
    demo_status.add_argument("--json", action="store_true")
    serve_host = demo.add_parser("serve-host", parents=[runtime, metrics])
    serve_host.add_argument("name")
    serve_host.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    serve_host.add_argument("--policies", type=Path, default=None, metavar="DIR")

    lab = sub.add_parser("lab", help="run the lab site: real QEMU guests under libvirtd (root)").add_subparsers(
        dest="lab", required=True, metavar="ACTION"
    )
    lab_runtime = argparse.ArgumentParser(add_help=False)
    lab_runtime.add_argument("--runtime", type=Path, default=default_runtime(), help="runtime directory")
    lab_up = lab.add_parser(
        "up", parents=[lab_runtime, metrics], help="start libvirtd if needed, the guests and an agent"
    )
    lab_up.add_argument("--prefix", default=LAB_PREFIX, help="domain name prefix (ends in '-')")
    lab_up.add_argument("--cache", type=Path, default=None, help="guest image cache (default: XDG cache dir)")
    lab.add_parser("down", parents=[lab_runtime], help="stop and remove everything lab up started")
    lab_show = lab.add_parser("status", parents=[lab_runtime], help="show the guests as libvirt and they see them")
    lab_show.add_argument("--json", action="store_true")
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
    except BrokenPipeError:  # e.g. `hostctl status | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


# Numeric options and their bounds, per command: (option, attribute, low, high).
_BOUNDS: dict[str, tuple[tuple[str, str, float, float], ...]] = {
    "status": (("--sample", "sample", 0, 60),),
    "scale": (("N", "target", 0, 4096), ("--expect", "expect", 0, 4096)),
    "audit": (("--limit", "limit", 1, 100_000),),
    "experiment": (
        ("--scale", "scale", 0.01, 100),
        ("--repeats", "repeats", 1, 100),
        ("--seconds", "seconds", 10, 86_400),
    ),  # wrk's options: at least 1, at most the site's [load] bounds
}


def check_options(args: argparse.Namespace) -> None:
    """HostctlError naming the first numeric option outside its bounds (nan and inf included)."""
    for option, attr, low, high in _BOUNDS.get(args.command, ()):
        value = getattr(args, attr, None)
        if value is not None and not low <= value <= high:
            raise HostctlError(f"{option} {value}: must be from {low:g} to {high:g}")


async def _dispatch(args: argparse.Namespace) -> int:
    check_options(args)
    if args.command == "demo":
        return await _demo(args)
    if args.command == "lab":
        return await _lab(args)
    if args.command in ("agent", "serve"):
        return await _agent(args)
    if args.command == "experiment":
        if args.site is None:
            raise HostctlError("experiment runs over a site: pass --site FILE (the demo's is printed by demo up)")
        return await _experiment(args, load_site(args.site))
    if args.site is not None:
        return await sitecli.run(args, load_site(args.site))
    if args.command in ("audit", "policy"):
        raise HostctlError(f"{args.command} talks to the agents: pass --site FILE")
    if not args.uri:
        raise HostctlError("no host given: pass --uri URI or --site FILE (or set LIBVIRT_DEFAULT_URI)")
    if args.command == "doctor":
        return await _doctor(args)
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
            print(format_scale(event))
    return 0


async def _doctor(args: argparse.Namespace) -> int:
    """`doctor` on the host at --uri, with no agent: its checks without an agent's files."""
    if args.host is not None:
        raise HostctlError(f"doctor {args.host}: a host by name is a site's: pass --site FILE (or --uri alone)")
    report = await asyncio.to_thread(examine, args.uri, root=_sys_root(args))
    print(json.dumps({**report.to_dict(), "passed": report.passed}, indent=2) if args.json else format_doctor(report))
    return 0 if report.passed else 1


async def _experiment(args: argparse.Namespace, site: Site) -> int:
    """`experiment security-overhead`: run it over the site's links, print the table and save it."""
    if args.experiment == "elastic-vs-fixed":
        return await _elastic_vs_fixed(args, site)
    plan = Plan(
        scripts=parse_scripts(args.script),
        connections=parse_connections(args.connections),
        rounds=args.rounds,
        threads=args.threads,
        duration_s=args.duration,
        timeout_s=args.timeout,
        seed=new_seed() if args.seed is None else args.seed,
    )
    for script, connections in plan.blocks():
        check_bounds(plan.params(script, connections), site.load)
    host = load_host(site, args.load_host)
    shown = ""

    async def progress(what: str, fraction: float) -> None:
        nonlocal shown
        if what != shown:
            shown = what
            print(f"[{fraction:4.0%}] {what}", file=sys.stderr, flush=True)

    fleet = Fleet(site)
    fleet.start()
    try:
        await fleet.ready()
        report = await experiment.security_overhead(
            site,
            lambda: {n: link.snapshot for n, link in fleet.links.items() if link.snapshot is not None},
            plan,
            host=host,
            progress=progress,
            history=RunLog(args.history),
        )
    finally:
        await fleet.stop()
    paths = report.save(args.out)
    print(report.markdown())
    print(f"saved: {', '.join(map(str, paths))}")
    return 0


async def _elastic_vs_fixed(args: argparse.Namespace, site: Site) -> int:
    """`experiment elastic-vs-fixed`: the comparison of bench/policies.py on any site."""

    async def progress(what: str) -> None:
        print(what, file=sys.stderr, flush=True)

    traces = []
    for name in args.traces.split(","):
        if name not in TRACES:
            raise HostctlError(f"--traces: unknown trace {name!r} (choose from {', '.join(TRACES)})")
        trace = TRACES[name]().scaled(args.scale)
        traces.append(trace if args.seconds is None else trace.lasting(args.seconds))
    calibration = None if args.calibration is None else elastic_oracle.load(args.calibration)
    comparison = await elastic_experiment.on_site(
        site,
        traces,
        cvm=args.cvm,
        runs=args.runs.split(",") if args.runs else None,
        repeats=args.repeats,
        calibration=calibration,
        progress=progress,
    )
    saved = [elastic_report.save(comparison, args.out)]
    if calibration is None:
        saved += comparison.calibration.save(args.out, "elastic-vs-fixed-calibration")
    print(elastic_report.markdown(comparison))
    print(f"saved: {', '.join(map(str, saved))}")
    return 0


async def _agent(args: argparse.Namespace) -> int:
    """Run the agent for the host at --uri until its peer leaves (stdio) or SIGTERM (socket)."""
    if not args.uri:
        raise HostctlError("the agent needs the host's libvirt URI: pass --uri URI (or set LIBVIRT_DEFAULT_URI)")
    metrics = parse_address(args.metrics) if args.metrics is not None else None
    if args.command == "agent":
        _check_stdio()
    policies = _policies(args.policies)
    writers = Writers.parse(args.writers) if args.writers is not None else None
    root = _sys_root(args)
    # The kernel's SEV facts: under --sys-root when given, else / for a hypervisor on this machine, none if remote.
    host = LibvirtHost(args.uri, platform_root=root if args.sys_root else None)
    await host.open()
    agent = Agent(
        host,
        audit=AuditLog(args.audit or audit_default_path()),
        readonly=args.readonly,
        writers=writers,
        interval=args.interval,
        probe_rate=args.probe_rate,
        policies=policies,
        root=root,
    )
    agent.start()
    try:
        if metrics is not None:
            print(f"{METRICS_AT}{agent.serve_metrics(metrics).url}", file=sys.stderr, flush=True)
        if args.command == "agent":
            await agent.serve_stdio()
        else:
            server = await agent.serve_unix(args.socket, group=args.group)
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            await stop.wait()
            server.close()
            args.socket.unlink(missing_ok=True)
    finally:
        await agent.stop()
        await host.close()
    return 0


def _sys_root(args: argparse.Namespace) -> Path:
    """--sys-root, a directory (default /)."""
    root: Path = args.sys_root or Path("/")
    if not root.is_dir():
        raise HostctlError(f"--sys-root {root}: not a directory")
    return root


def _check_stdio() -> None:
    """`agent --stdio` speaks on stdin/stdout through asyncio's pipe transports: refuse a file or /dev/null in one
    line instead of a traceback (ssh gives pipes or sockets; a terminal works for trying it by hand)."""
    for name, fd in (("stdin", 0), ("stdout", 1)):
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)):
            kind = "a regular file" if stat.S_ISREG(mode) else "neither a pipe, a socket nor a terminal"
            raise HostctlError(f"agent --stdio: {name} is {kind}; run it as ssh does, with pipes or a socket")


def _policies(directory: Path | None) -> dict[str, PolicySpec]:
    """The policies in `directory` (default: the shipped ones). A missing directory is an error; one holding no policy
    is a warning, since an empty directory is how an agent is run with manual scaling only."""
    directory = directory or DEFAULT_POLICIES
    specs = load_policies(directory)
    if not specs:
        print(f"hostctl: warning: {directory}: no policy files (NAME.toml); elastic policies are off", file=sys.stderr)
    return specs


async def _demo(args: argparse.Namespace) -> int:
    metrics = parse_address(args.metrics) if getattr(args, "metrics", None) is not None else None
    if args.demo == "serve-host":
        await launcher.serve_host(
            args.config, args.name, args.runtime, policies=_policies(args.policies), metrics=metrics
        )
    elif args.demo == "up":
        print("\n".join(await launcher.up(args.config, args.runtime, metrics=metrics)))
        print(f"site file: {launcher.site_file(args.runtime)}")
        if metrics is not None:
            print(f"prometheus config: {launcher.prometheus_config(args.runtime)}")
    elif args.demo == "down":
        print("\n".join(await launcher.down(args.runtime)))
    else:
        entries = await launcher.status(args.runtime)
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


async def _lab(args: argparse.Namespace) -> int:
    """`lab up|status|down`: the lab site's real guests, as `demo` is for the emulated one."""
    if args.lab == "up":
        metrics = parse_address(args.metrics) if args.metrics is not None else None
        print("\n".join(await lab_launcher.up(args.runtime, prefix=args.prefix, cache=args.cache, metrics=metrics)))
        print(f"site file: {Lab(args.runtime.absolute()).site}")
        return 0
    if args.lab == "down":
        print("\n".join(await lab_launcher.down(args.runtime)))
        return 0
    report = await lab_status.report(args.runtime)
    print(json.dumps(report, indent=2) if args.json else lab_status.format_report(report))
    return 0 if lab_status.healthy(report) else 1


def _who() -> str:
    return f"{getpass.getuser()}@hostctl"
