"""A synthetic fleet for console benchmarks: many lightweight emulated host agents in ONE process.

    python -m bench.fleet_agents --hosts 100 --cvms 100 --runtime DIR

serves one unix socket per host (`DIR/host-NNN.sock`) speaking the real agent's JSON-RPC protocol (`hostctl.wire.rpc`,
`hostctl.wire.model` dataclasses, the real agent's parameter schemas) for `hello`, `snapshot`, `subscribe` and `scale`.
No libvirt, no HTTP services: every host's CVMs live in memory. Every `--interval` seconds (hosts staggered in
phase) every CVM's `cpu_percent` takes a random-walk step and about `--churn` of them gain or lose one online vCPU;
a subscribed peer gets `update` notifications carrying only the CVMs changed since its last update, sent by the real
agent's `hostctl.agent.updates.Subscription`. `scale` is compare-and-set like the real backend (refused with code
-32000 and data {"current": n} when `expect` does not match). `DIR/ready` is written (with the pid) once every
socket listens; SIGTERM or SIGINT stop the process cleanly (sockets and the ready marker removed, exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from hostctl import __version__
from hostctl.agent.access import socket_peer
from hostctl.agent.server import PROTOCOL_VERSION, SCHEMAS, checked
from hostctl.agent.updates import Subscription
from hostctl.demo.config import DEFAULT_POLICY
from hostctl.errors import HostctlError, ScaleRefused
from hostctl.wire import rpc
from hostctl.wire.model import CVM, DomainState, Event, Host, Snapshot
from hostctl.wire.security import SecurityType

SECURITY_MIX = (SecurityType.SEV_SNP, SecurityType.SEV_SNP, SecurityType.SEV_ES, SecurityType.SEV, SecurityType.NONE)
METHODS = ("hello", "snapshot", "subscribe", "scale")


class FleetHost:
    """One emulated host: its CVMs in memory and its connected sessions."""

    def __init__(self, name: str, cvms: int, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.host = Host(
            name=name,
            uri="test:///fleet",
            cpus=640,
            memory_mib=1024 * 1024,
            cpu_percent=0.0,
            load=0.0,
            sev=True,
            sev_es=True,
            sev_snp=True,
            libvirt_version="emulated",
        )
        self.cvms: dict[str, CVM] = {}
        for j in range(cvms):
            security = SECURITY_MIX[j % len(SECURITY_MIX)]
            name_j = f"cvm-{j:03d}"
            self.cvms[name_j] = CVM(
                name=name_j,
                uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.{name_j}")),
                state=DomainState.RUNNING,
                security=security,
                policy=DEFAULT_POLICY[security],
                boot_vcpus=1,
                max_vcpus=9,
                online_vcpus=rng.randint(1, 9),
                driver="emulated",
                cpu_percent=round(rng.uniform(5, 95), 1),
            )
        self.sessions: set[Session] = set()
        self._host_cpu()

    def _host_cpu(self) -> None:
        busy = sum(c.cpu_percent * c.online_vcpus for c in self.cvms.values()) / 100  # busy vCPUs
        self.host.cpu_percent = round(min(100.0, 100 * busy / self.host.cpus), 1)
        self.host.load = round(busy, 2)

    def sample(self, churn: float) -> None:
        """One sampling step: every CPU % walks, about `churn` of the CVMs gain or lose one online vCPU."""
        rng = self.rng
        for cvm in self.cvms.values():
            step = rng.uniform(0.5, 5.0) * rng.choice((-1.0, 1.0))
            value = cvm.cpu_percent + step
            if not 0.0 <= value <= 100.0:
                value = cvm.cpu_percent - step
            cvm.cpu_percent = round(value, 1)
        for cvm in rng.sample(list(self.cvms.values()), max(1, round(churn * len(self.cvms)))):
            if cvm.online_vcpus >= cvm.max_vcpus:
                cvm.online_vcpus -= 1
            elif cvm.online_vcpus <= cvm.boot_vcpus:
                cvm.online_vcpus += 1
            else:
                cvm.online_vcpus += rng.choice((-1, 1))
        self._host_cpu()

    def snapshot(self) -> Snapshot:
        return Snapshot(host=self.host, cvms=sorted(self.cvms.values(), key=lambda c: c.name), services=[])

    def scale(self, name: str, target: int, expect: int | None, who: str, why: str) -> Event:
        """Compare-and-set, like `LibvirtHost.scale`: every request, applied or refused, becomes an event."""
        cvm = self.cvms.get(name)
        try:
            if cvm is None:
                raise HostctlError(f"unknown CVM {name!r} on {self.name} (known: {', '.join(sorted(self.cvms))})")
            if not cvm.boot_vcpus <= target <= cvm.max_vcpus:
                raise ScaleRefused(
                    f"{name}: refused: {target} vCPUs is outside boot..max ({cvm.boot_vcpus}..{cvm.max_vcpus})"
                )
            current = cvm.online_vcpus
            if current != target and expect is not None and expect != current:
                raise ScaleRefused(
                    f"{name}: refused: expected {expect} online vCPUs but found {current}; nothing changed",
                    current=current,
                )
        except HostctlError as e:
            self._record(
                Event(
                    self.name,
                    name,
                    "scale",
                    who,
                    ok=False,
                    before=getattr(e, "current", None),
                    after=target,
                    why=str(e),
                )
            )
            raise
        if current == target:
            why = f"{why} (already at {target}, nothing changed)".strip()
        else:
            cvm.online_vcpus = target
            cvm.scaled_by, cvm.scaled_at = who, time.time()
            self._host_cpu()
        event = Event(self.name, name, "scale", who, ok=True, before=current, after=target, why=why)
        self._record(event)
        return event

    def _record(self, event: Event) -> None:
        for session in self.sessions:
            session.updates.push(event)


class Session:
    """One connected peer, as in `hostctl.agent.server.Session`: its subscription and what it has been sent."""

    def __init__(self, fleet_host: FleetHost, peer: rpc.Peer, peer_user: str, interval: float) -> None:
        self.fh = fleet_host
        self.peer = peer
        self.peer_user = peer_user
        self.interval = interval
        self.updates = Subscription(peer, fleet_host.snapshot)

    @property
    def methods(self) -> dict[str, rpc.Method]:
        handlers = {"hello": self.hello, "snapshot": self.snapshot, "subscribe": self.subscribe, "scale": self.scale}
        return {name: checked(name, fn) for name, fn in handlers.items()}

    async def hello(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "agent": __version__,
            "host": self.fh.name,
            "pid": os.getpid(),
            "readonly": False,
            "interval": self.interval,
            "methods": sorted(m for m in SCHEMAS if m in METHODS),
        }

    async def snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.fh.snapshot().to_dict()

    async def subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        interval = params.get("interval", self.interval)
        self.updates.start(interval)
        return {"interval": interval}

    async def scale(self, params: dict[str, Any]) -> dict[str, Any]:
        who = f"{params.get('who') or 'unknown'} ({self.peer_user})"
        return self.fh.scale(
            params["cvm"], params["target"], params.get("expect"), who, params.get("why", "")
        ).to_dict()


async def serve(args: argparse.Namespace) -> None:
    runtime = Path(args.runtime)
    runtime.mkdir(parents=True, exist_ok=True)
    ready = runtime / "ready"
    ready.unlink(missing_ok=True)
    rng = random.Random(args.seed)
    hosts = [FleetHost(f"host-{i:03d}", args.cvms, random.Random(rng.random())) for i in range(args.hosts)]

    async def connected(fh: FleetHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(fh, rpc.Peer(writer), socket_peer(writer).label, args.interval)
        fh.sessions.add(session)
        try:
            await rpc.serve(reader, session.peer, session.methods)
        finally:
            session.updates.close()
            fh.sessions.discard(session)

    servers = []
    for fh in hosts:
        path = runtime / f"{fh.name}.sock"
        path.unlink(missing_ok=True)
        servers.append(
            await asyncio.start_unix_server(lambda r, w, fh=fh: connected(fh, r, w), path=str(path), limit=rpc.MAX_LINE)
        )
        os.chmod(path, 0o600)

    async def sampler() -> None:
        """Sample every host once per interval, host i at phase i/N of the interval (no drift)."""
        start = time.monotonic()
        k = 0
        while True:
            for i, fh in enumerate(hosts):
                due = start + (k + i / len(hosts)) * args.interval
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                fh.sample(args.churn)
            k += 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sampling = loop.create_task(sampler())
    ready.write_text(f"{os.getpid()}\n")
    print(f"fleet_agents: {args.hosts} hosts x {args.cvms} CVMs listening in {runtime} (pid {os.getpid()})", flush=True)
    try:
        await stop.wait()
    finally:
        sampling.cancel()
        for server in servers:
            server.close()
        for fh in hosts:
            for session in list(fh.sessions):
                session.updates.close()
                session.peer.writer.close()
            (runtime / f"{fh.name}.sock").unlink(missing_ok=True)
        await asyncio.gather(sampling, return_exceptions=True)
        ready.unlink(missing_ok=True)
        print("fleet_agents: stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--cvms", type=int, default=100, help="CVMs per host")
    parser.add_argument("--runtime", required=True, help="directory for the sockets and the ready marker")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (and default updates)")
    parser.add_argument("--churn", type=float, default=0.1, help="share of CVMs changing online vCPUs per sample")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
