"""The host agent: owns one host and speaks JSON-RPC 2.0 (one object per line) over stdio or a unix socket.

Methods: `hello`, `snapshot`, `subscribe` (then `update` notifications carry changes, see `hostctl.agent.updates`),
`scale`, `audit`, `policies` (the configured elastic policies), `policy` (a CVM's elastic state; with `name`
and/or `enabled` it changes it) and `doctor` (the host's checks, `hostctl.host.doctor`). Only writers
(`hostctl.agent.access`) may scale or change a policy. Every scale and policy change, applied or refused, is in the
audit log on disk before its reply is sent.
"""

from __future__ import annotations

import asyncio
import grp
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from hostctl import __version__
from hostctl.agent.access import PeerIdentity, Writers, socket_peer, stdio_peer
from hostctl.agent.audit import AuditLog
from hostctl.agent.metrics import MetricsServer, Tallies
from hostctl.agent.probes import Prober
from hostctl.agent.updates import Subscription
from hostctl.elastic.policies import Probe
from hostctl.elastic.runner import ElasticRunner, PolicySpec, UnknownPolicy, requested, state_path
from hostctl.errors import ConfigError
from hostctl.host.doctor import AgentFiles, examine
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire import rpc
from hostctl.wire.doctor import Report
from hostctl.wire.model import Event, Service, Snapshot

PROTOCOL_VERSION = 1
STOP_TIMEOUT_S = 2.0  # how long a stopping agent waits for its connections to end
MUTATING = frozenset({"scale", "policy"})
READ_FORMS = {"policy": frozenset({"cvm", "who"})}  # a mutating method called with only these params reads

# Parameter schemas: name -> (type, required, (min, max) or None).
Schema = dict[str, tuple[type, bool, tuple[float, float] | None]]
SCHEMAS: dict[str, Schema] = {
    "hello": {"client": (str, False, None)},
    "snapshot": {},
    "subscribe": {"interval": (float, False, (0.05, 3600.0))},
    "scale": {
        "cvm": (str, True, None),
        "target": (int, True, (0, 4096)),
        "expect": (int, False, (0, 4096)),
        "who": (str, False, None),
        "why": (str, False, None),
    },
    "audit": {"limit": (int, False, (1, 100_000)), "since": (float, False, (0.0, 1e11))},
    "policies": {},
    "doctor": {},
    "policy": {
        "cvm": (str, True, None),
        "name": (str, False, None),
        "enabled": (bool, False, None),
        "who": (str, False, None),
    },
}


class Agent:
    """One host's agent: the backend, its services, the audit log, the sampler and the elastic policies."""

    def __init__(
        self,
        host: LibvirtHost,
        *,
        audit: AuditLog,
        services: Callable[[], list[Service]] = list,
        readonly: bool = False,
        writers: Writers | None = None,
        interval: float = 1.0,
        probe_rate: float = 2.0,
        policies: dict[str, PolicySpec] | None = None,
        root: Path = Path("/"),
    ) -> None:
        self.host = host
        self.root = root  # where the doctor reads the host's /sys and /dev
        self.audit = audit
        self.readonly = readonly
        self.writers = writers or Writers.default()
        self.interval = interval
        self.services = services
        self.tallies = Tallies()  # counted for Prometheus whether or not metrics are served
        self.sampled_at: float | None = None  # the last sample that worked (Unix time)
        self.prober = Prober(services, rate=probe_rate, on_sample=self.tallies.probed)
        self.elastic = ElasticRunner(
            host,
            policies or {},
            state_file=state_path(audit.path),
            record=self.record,
            probes=self._probes,
            decided=self.tallies.decided,
        )
        self._metrics: MetricsServer | None = None
        self._sessions: set[Session] = set()
        self._socket: tuple[Path, str | None] | None = None  # the socket served, and the group let reach it
        self._sampler: asyncio.Task[None] | None = None
        host.on_event(self.record)

    def start(self) -> None:
        """Start sampling, probing services and the elastic policies that were on (the host is already open)."""
        self.elastic.start()
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())
        self.prober.start()

    def serve_metrics(self, address: tuple[str, int]) -> MetricsServer:
        """Serve Prometheus metrics at `address` (`hostctl.agent.metrics`) until `stop`."""
        self._metrics = MetricsServer(self, address)
        return self._metrics

    @property
    def peers(self) -> int:
        return len(self._sessions)

    async def stop(self) -> None:
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.stop)
        if self._sampler is not None:
            self._sampler.cancel()
        await self.elastic.stop()
        # End each connection as its peer would (EOF), so no connection task is left to be cancelled at exit.
        serving = [task for session in self._sessions if (task := session.end()) is not None]
        if serving:
            await asyncio.wait(serving, timeout=STOP_TIMEOUT_S)
        await self.prober.stop()
        self.audit.close()

    def service_list(self) -> list[Service]:
        """The host's services with their probed latency."""
        return [msgspec.structs.replace(s, latency=self.prober.latency(s)) for s in self.services()]

    def snapshot(self) -> Snapshot:
        """The host with its services' latency and each CVM's elastic state."""
        snapshot = self.host.snapshot(self.service_list())
        snapshot.cvms = [msgspec.structs.replace(c, elastic=self.elastic.state(c.name)) for c in snapshot.cvms]
        return snapshot

    async def serve_stdio(self) -> None:
        """Serve one peer on stdin/stdout (the form run by `ssh host hostctl agent --stdio`)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=rpc.MAX_LINE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self.serve(reader, writer, peer=stdio_peer())

    async def serve_unix(self, path: Path, *, group: str | None = None) -> asyncio.Server:
        """Listen on a unix socket only the owner can reach, or also `group` (mode 0660, group-owned): `hostctl
        serve`, reached through SSH. Reaching it lets a peer read; writing takes being a writer."""
        gid = _group_id(group) if group is not None else None
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(
            lambda r, w: self.serve(r, w, peer=socket_peer(w)), path=str(path), limit=rpc.MAX_LINE
        )
        if gid is None:
            os.chmod(path, 0o600)
        else:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        self._socket = (path, group)
        return server

    async def doctor(self) -> Report:
        """The host's checks, with this agent's files and socket (blocking reads on a thread, each bounded)."""
        socket, group = self._socket or (None, None)
        files = AgentFiles(self.audit.path, self.elastic.state_file, socket, group)
        return await asyncio.to_thread(
            examine,
            self.host.uri,
            name=self.host.host.name,
            root=self.root,
            ping_s=self.host.agent_timeout,
            files=files,
        )

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, peer: PeerIdentity) -> None:
        session = Session(self, rpc.Peer(writer), peer, asyncio.current_task())
        self._sessions.add(session)
        try:
            await rpc.serve(reader, session.peer, session.methods)
        finally:
            session.close()
            self._sessions.discard(session)

    def record(self, event: Event) -> None:
        """Append `event` to the audit log and push it to every subscribed peer."""
        self.audit.append(event)
        self.tallies.event(event)
        for session in self._sessions:
            session.push(event)

    async def _sample_forever(self) -> None:
        """Sample every `interval`, or at the shortest interval of a policy that is on; a failed sample is
        skipped (the policies then see their samples age and hold)."""
        while True:
            await asyncio.sleep(min(self.interval, self.elastic.sample_interval() or self.interval))
            try:
                await self.host.sample()
            except Exception:  # libvirt gone or a CVM vanished mid-sample: the next tick tries again
                continue
            self.sampled_at = time.time()
            self.elastic.observe()

    def _probes(self, cvm: str, now: float, seconds: float) -> list[Probe]:
        """The latency probes of the CVM's services sent in the last `seconds` (at most the prober's shortest
        window), on the wall clock, oldest first."""
        mono = time.monotonic()
        offset = now - mono
        probes = [
            Probe(s.at + offset, s.ms, s.ok)
            for key, windows in self.prober.windows.items()
            if key.rpartition("/")[0] == cvm
            for s in windows[0].since(mono - seconds)
        ]
        return sorted(probes, key=lambda p: p.ts)


class Session:
    """One connected peer: its subscription and its view of what it has been sent."""

    def __init__(self, agent: Agent, peer: rpc.Peer, identity: PeerIdentity, task: asyncio.Task[Any] | None) -> None:
        self.agent = agent
        self.peer = peer
        self.task = task  # the task serving this connection
        self.identity = identity
        self.may_write = not agent.readonly and agent.writers.allows(identity)
        self.client = ""  # who the peer said it is in its hello: the default `who` of its actions
        self.updates = Subscription(peer, agent.snapshot)

    @property
    def methods(self) -> dict[str, rpc.Method]:
        handlers = {
            "hello": self.hello,
            "snapshot": self.snapshot,
            "subscribe": self.subscribe,
            "scale": self.scale,
            "audit": self.audit,
            "policies": self.policies,
            "policy": self.policy,
            "doctor": self.doctor,
        }
        return {
            name: checked(name, self._authorized(name, fn) if name in MUTATING else fn) for name, fn in handlers.items()
        }

    def push(self, event: Event) -> None:
        """Queue an audit event for this peer (if subscribed) and send it without waiting for the interval."""
        self.updates.push(event)

    def close(self) -> None:
        self.updates.close()

    def end(self) -> asyncio.Task[Any] | None:
        """Stop sending and close the connection; the task serving it then ends as at the peer's EOF."""
        self.close()
        self.peer.writer.close()
        return self.task

    async def hello(self, params: dict[str, Any]) -> dict[str, Any]:
        self.client = params.get("client", "")
        return {
            "protocol": PROTOCOL_VERSION,
            "agent": __version__,
            "host": self.agent.host.host.name,
            "pid": os.getpid(),
            "readonly": self.agent.readonly,
            "user": self.identity.label,
            "may_write": self.may_write,
            "interval": self.agent.interval,
            "methods": sorted(SCHEMAS),
        }

    async def snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.agent.snapshot().to_dict()

    async def subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        interval = params.get("interval", self.agent.interval)
        self.updates.start(interval)
        return {"interval": interval}

    async def scale(self, params: dict[str, Any]) -> dict[str, Any]:
        event = await self.agent.host.scale(
            params["cvm"],
            params["target"],
            expect=params.get("expect"),
            who=self._who(params),
            why=params.get("why", ""),
        )
        return event.to_dict()

    async def policies(self, params: dict[str, Any]) -> list[dict[str, str]]:
        return self.agent.elastic.describe()

    async def policy(self, params: dict[str, Any]) -> dict[str, Any]:
        cvm = params["cvm"]
        try:
            state = self.agent.elastic.choose(
                cvm, name=params.get("name"), enabled=params.get("enabled"), who=self._who(params)
            )
        except UnknownPolicy as e:
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"policy: {e}"[:300]) from None
        return {
            "cvm": cvm,
            "policy": state.policy,
            "enabled": state.enabled,
            "decision": state.decision,
            "reason": state.reason,
            "ts": state.ts,
            "alert": state.alert,
        }

    async def doctor(self, params: dict[str, Any]) -> dict[str, Any]:
        return (await self.agent.doctor()).to_dict()

    async def audit(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        events = await asyncio.to_thread(self.agent.audit.tail, params.get("limit", 100), params.get("since"))
        return [e.to_dict() for e in events]

    def _who(self, params: dict[str, Any]) -> str:
        """Who an action is by: the name the peer gave (or its hello's), and the peer itself."""
        return f"{params.get('who') or self.client or 'unknown'} ({self.identity.label})"

    def _authorized(self, name: str, fn: rpc.Method) -> rpc.Method:
        """`fn` for a writer; for anyone else its read form only, a change refused and audited."""

        async def method(params: dict[str, Any]) -> Any:
            if not self.may_write and not params.keys() <= READ_FORMS.get(name, frozenset()):
                self._refuse(name, params)
            return await fn(params)

        return method

    def _refuse(self, name: str, params: dict[str, Any]) -> None:
        """Audit a change this peer may not make, then refuse it (REFUSED, with the count it stayed at)."""
        user = self.identity.user
        if self.agent.readonly:
            message = f"agent is read-only: {name} refused; nothing changed"
        else:
            message = (
                f"{user} may only read on this agent: {name} refused; nothing changed "
                f"(to grant it, add {user} or one of its groups as @GROUP to the agent's --writers)"
            )
        cvm = self.agent.host.get(params["cvm"])
        stayed = cvm.online_vcpus if cvm is not None and name == "scale" else None
        asked = f"{params['target']} vCPUs" if name == "scale" else requested(params.get("name"), params.get("enabled"))
        self.agent.record(
            Event(
                self.agent.host.host.name,
                params["cvm"],
                name,
                self._who(params),
                ok=False,
                before=stayed,
                after=stayed,
                why=f"{message} (requested {asked}" + (f", why: {params['why']})" if params.get("why") else ")"),
            )
        )
        raise rpc.RpcError(rpc.REFUSED, message, {"current": stayed})


def checked(name: str, fn: rpc.Method) -> rpc.Method:
    """Wrap a method with its schema check: `fn` gets only known, typed, bounded parameters."""
    schema = SCHEMAS[name]

    async def method(params: dict[str, Any]) -> Any:
        return await fn(_validate(name, schema, params))

    return method


def _validate(method: str, schema: Schema, params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise rpc.RpcError(
            rpc.INVALID_PARAMS,
            f"{method}: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(schema)) or 'none'})",
        )
    clean = {}
    for key, (kind, required, bounds) in schema.items():
        value = params.get(key)
        if value is None:
            if required:
                raise rpc.RpcError(rpc.INVALID_PARAMS, f"{method}: missing parameter {key!r}")
            continue
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise rpc.RpcError(
                rpc.INVALID_PARAMS, f"{method}: parameter {key!r} must be {kind.__name__}, got {value!r}"[:300]
            )
        if bounds is not None and isinstance(value, int | float) and not bounds[0] <= value <= bounds[1]:
            raise rpc.RpcError(
                rpc.INVALID_PARAMS, f"{method}: parameter {key!r} = {value!r} is outside {bounds[0]:g}..{bounds[1]:g}"
            )
        if isinstance(value, str) and len(value) > 1000:
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"{method}: parameter {key!r} is longer than 1000 characters")
        clean[key] = value
    return clean


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"--group: no group {group!r} on this host") from None
