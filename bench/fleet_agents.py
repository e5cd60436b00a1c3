"""A synthetic fleet for console benchmarks: many lightweight emulated host agents in ONE process.

    python -m bench.fleet_agents --hosts 100 --cvms 100 --runtime DIR [--changing 1.0] [--churn 0.1] [--ssh-keys KEYS]

serves one unix socket per host (`DIR/host-NNN.sock`) speaking the real agent's JSON-RPC protocol (`hostctl.wire.rpc`,
`hostctl.wire.model` dataclasses, the real agent's parameter schemas) for `hello`, `snapshot`, `subscribe` and `scale`.
With `--ssh-keys KEYS` it serves the same hosts over SSH instead: one asyncssh server on a free loopback port (written
to `KEYS/ssh_port`) with the host key `KEYS/host_key`, admitting the keys of `KEYS/authorized_keys`; a client reaches
host NNN as the agent's socket through its SSH connection (a direct-streamlocal channel to `DIR/host-NNN.sock`,
`socket = ...` with `ssh = ...` in a site file), one SSH connection per host.

No libvirt, no HTTP services: every host's CVMs live in memory. Every `--interval` seconds (hosts staggered in
phase) `--changing` of the CVMs (all by default) take a random-walk step of their `cpu_percent`, and `--churn` of them
(at most those) gain or lose one online vCPU; a subscribed peer gets `update` notifications with the params of the real
agent's (`hostctl.agent.updates`: seq, ts, the CVMs changed since its last update, removed, events, and the host and
services when changed), the changed CVMs found from per-CVM change counters (the real agent compares whole dumps,
which one process could not do for 1,000 hosts). `scale` is compare-and-set like the real backend (refused with code
-32000 and data {"current": n} when `expect` does not match) and sends an update at once. `DIR/ready` is written (with
the pid) once every host listens; SIGTERM or SIGINT stop the process cleanly (sockets and the ready marker removed,
exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import String

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
        self.version = 0  # bumped at every change; a CVM's (and the host's) version is the last it changed at
        self.changed = dict.fromkeys(self.cvms, 0)
        self.host_changed = 0
        self._host_cpu()

    def _host_cpu(self) -> None:
        busy = sum(c.cpu_percent * c.online_vcpus for c in self.cvms.values()) / 100  # busy vCPUs
        cpu_percent, load = round(min(100.0, 100 * busy / self.host.cpus), 1), round(busy, 2)
        if (cpu_percent, load) != (self.host.cpu_percent, self.host.load):
            self.host.cpu_percent, self.host.load = cpu_percent, load
            self.host_changed = self.version

    def sample(self, changing: float, churn: float) -> None:
        """One sampling step: `changing` of the CVMs take a CPU % step, `churn` of them (at most those) gain or
        lose one online vCPU."""
        rng = self.rng
        cvms = list(self.cvms.values())
        moving = cvms if changing >= 1 else rng.sample(cvms, max(1, round(changing * len(cvms))))
        self.version += 1
        for cvm in moving:
            step = rng.uniform(0.5, 5.0) * rng.choice((-1.0, 1.0))
            value = cvm.cpu_percent + step
            if not 0.0 <= value <= 100.0:
                value = cvm.cpu_percent - step
            cvm.cpu_percent = round(value, 1)
            self.changed[cvm.name] = self.version
        for cvm in rng.sample(moving, min(len(moving), max(1, round(churn * len(cvms))))):
            if cvm.online_vcpus >= cvm.max_vcpus:
                cvm.online_vcpus -= 1
            elif cvm.online_vcpus <= cvm.boot_vcpus:
                cvm.online_vcpus += 1
            else:
                cvm.online_vcpus += rng.choice((-1, 1))
            self.changed[cvm.name] = self.version
        self._host_cpu()

    def update(self, seq: int, since: int, events: list[Event]) -> dict[str, Any]:
        """The params of an `update` carrying what changed after version `since` (everything for -1)."""
        update: dict[str, Any] = {
            "seq": seq,
            "ts": time.time(),
            "cvms": {name: self.cvms[name].to_dict() for name, at in self.changed.items() if at > since},
            "removed": [],
            "events": [e.to_dict() for e in events],
        }
        if self.host_changed > since:
            update["host"] = self.host.to_dict()
        if since < 0:
            update["services"] = []
        return update

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
            self.version += 1
            self.changed[name] = self.version
            self._host_cpu()
        event = Event(self.name, name, "scale", who, ok=True, before=current, after=target, why=why)
        self._record(event)
        return event

    def _record(self, event: Event) -> None:
        for session in self.sessions:
            session.push(event)


class Session(Subscription):
    """One connected peer, as in `hostctl.agent.server.Session`, and its subscription: the agent's, but what changed
    is read from the host's per-CVM versions instead of a diff of whole snapshots (one process serves 1,000 hosts)."""

    def __init__(self, fleet_host: FleetHost, peer: rpc.Peer, peer_user: str, interval: float) -> None:
        super().__init__(peer, fleet_host.snapshot)
        self.fh = fleet_host
        self.peer_user = peer_user
        self.interval = interval

    @property
    def methods(self) -> dict[str, rpc.Method]:
        handlers = {"hello": self.hello, "snapshot": self.whole, "subscribe": self.subscribe, "scale": self.scale}
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

    async def whole(self, params: dict[str, Any]) -> dict[str, Any]:
        """`snapshot`: the host's whole picture."""
        return self.fh.snapshot().to_dict()

    async def subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        interval = params.get("interval", self.interval)
        self.start(interval)
        return {"interval": interval}

    async def scale(self, params: dict[str, Any]) -> dict[str, Any]:
        who = f"{params.get('who') or 'unknown'} ({self.peer_user})"
        return self.fh.scale(
            params["cvm"], params["target"], params.get("expect"), who, params.get("why", "")
        ).to_dict()

    async def _send(self, interval: float) -> None:
        """Every interval (at once after an event), what changed since the last update: the first has everything."""
        seq, sent = 0, -1
        while True:
            events, self._events = self._events, []
            seq += 1
            update = self.fh.update(seq, sent, events)
            sent = self.fh.version
            await self.peer.notify("update", update)
            self._nudge.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._nudge.wait()


class FleetSSHServer(asyncssh.SSHServer):
    """Serves a host's agent protocol on each direct-streamlocal channel to that host's socket path."""

    def __init__(self, serve_host: Any) -> None:
        self.serve_host = serve_host
        self.user = ""

    def begin_auth(self, username: str) -> bool:
        self.user = username
        return True  # public key authentication, against authorized_keys

    def unix_connection_requested(self, dest_path: str) -> Any:
        return self.serve_host(dest_path, self.user)


def raise_fd_limit() -> None:
    """One descriptor per connection: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(args: argparse.Namespace) -> None:
    runtime = Path(args.runtime)
    runtime.mkdir(parents=True, exist_ok=True)
    ready = runtime / "ready"
    ready.unlink(missing_ok=True)
    raise_fd_limit()
    rng = random.Random(args.seed)
    hosts = [FleetHost(f"host-{i:03d}", args.cvms, random.Random(rng.random())) for i in range(args.hosts)]
    by_path = {str((runtime / f"{fh.name}.sock").absolute()): fh for fh in hosts}
    sessions: set[Session] = set()

    async def connected(fh: FleetHost, reader: Any, writer: Any, peer_user: str) -> None:
        session = Session(fh, rpc.Peer(writer), peer_user, args.interval)
        fh.sessions.add(session)
        sessions.add(session)
        try:
            await rpc.serve(reader, session.peer, session.methods)
        finally:
            session.close()
            fh.sessions.discard(session)
            sessions.discard(session)

    def over_ssh(path: str, user: str) -> Any:
        fh = by_path.get(path)
        if fh is None:
            return False  # no such host: "connection refused"
        return lambda r, w: connected(fh, r, w, user)

    servers: list[Any] = []
    if args.ssh_keys:
        if not args.ignore_packets:
            send_like_sshd()
        keys = Path(args.ssh_keys)
        listener = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[str(keys / "host_key")],
            authorized_client_keys=str(keys / "authorized_keys"),
            server_factory=lambda: FleetSSHServer(over_ssh),
            backlog=4096,
            keepalive_interval=0,
        )
        servers.append(listener)
        (keys / "ssh_port").write_text(f"{listener.get_port()}\n")
    else:
        for path, fh in by_path.items():
            Path(path).unlink(missing_ok=True)
            servers.append(
                await asyncio.start_unix_server(
                    lambda r, w, fh=fh: connected(fh, r, w, socket_peer(w).label), path=path, limit=rpc.MAX_LINE
                )
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
                fh.sample(args.changing, args.churn)
            k += 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sampling = loop.create_task(sampler())
    ready.write_text(f"{os.getpid()}\n")
    over = "SSH" if args.ssh_keys else "unix sockets"
    print(
        f"fleet_agents: {args.hosts} hosts x {args.cvms} CVMs over {over} in {runtime} (pid {os.getpid()})", flush=True
    )
    try:
        await stop.wait()
    finally:
        sampling.cancel()
        for server in servers:
            server.close()
        for session in list(sessions):
            session.close()
            session.peer.writer.close()
        for path in by_path:
            Path(path).unlink(missing_ok=True)
        await asyncio.gather(sampling, return_exceptions=True)
        ready.unlink(missing_ok=True)
        print("fleet_agents: stopped", flush=True)


def send_like_sshd() -> None:
    """Make this process's SSH server send what OpenSSH's sshd sends: no empty MSG_IGNORE before every packet.

    asyncssh inserts one before each packet once a session is encrypted (a countermeasure for CBC ciphers, applied
    to every cipher). OpenSSH's sshd, which real hosts run, does not: 50 lines written by a command over it arrive
    as 50 channel-data packets and no ignore packet (counted on the console's side against the tests' sshd). Left
    in, each update would cost the console two packets where a real host costs one.
    """
    send_packet = SSHConnection.send_packet
    empty = String(b"")

    def without_ignore(self: SSHConnection, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if pkttype == MSG_IGNORE and args == (empty,):
            return
        send_packet(self, pkttype, *args, **kwargs)

    SSHConnection.send_packet = without_ignore  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--cvms", type=int, default=100, help="CVMs per host")
    parser.add_argument("--runtime", required=True, help="directory for the sockets and the ready marker")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (and default updates)")
    parser.add_argument("--changing", type=float, default=1.0, help="share of CVMs whose CPU %% changes per sample")
    parser.add_argument("--churn", type=float, default=0.1, help="share of CVMs changing online vCPUs per sample")
    parser.add_argument("--ssh-keys", help="serve over SSH: host_key and authorized_keys here, ssh_port written here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ignore-packets", action="store_true", help="over SSH, let asyncssh send an ignore packet before each packet"
    )
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
