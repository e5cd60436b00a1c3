"""The host agent: owns one host and speaks JSON-RPC 2.0 (one object per line) over stdio or a unix socket.

Methods: `hello`, `snapshot`, `subscribe` (then `update` notifications carry changes, see `hostctl.agent.updates`),
`scale`, `audit`, `policies` (the configured elastic policies) and `policy` (a CVM's elastic state; with `name`
and/or `enabled` it changes it). Every scale, applied or refused, is in the audit log on disk before its reply is sent.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import pwd
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hostctl import __version__
from hostctl.agent.audit import AuditLog
from hostctl.agent.probes import Prober
from hostctl.agent.updates import Subscription
from hostctl.elastic.policies import Probe
from hostctl.elastic.runner import ElasticRunner, PolicySpec, state_path
from hostctl.host.libvirt_host import LibvirtHost
from hostctl.wire import rpc
from hostctl.wire.model import Event, Service, Snapshot

PROTOCOL_VERSION = 1
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
        interval: float = 1.0,
        probe_rate: float = 2.0,
        policies: dict[str, PolicySpec] | None = None,
    ) -> None:
        self.host = host
        self.audit = audit
        self.readonly = readonly
        self.interval = interval
        self.services = services
        self.prober = Prober(services, rate=probe_rate)
        self.elastic = ElasticRunner(
            host, policies or {}, state_file=state_path(audit.path), record=self._on_event, probes=self._probes
        )
        self._sessions: set[Session] = set()
        self._sampler: asyncio.Task[None] | None = None
        host.on_event(self._on_event)

    def start(self) -> None:
        """Start sampling, probing services and the elastic policies that were on (the host is already open)."""
        self.elastic.start()
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())
        self.prober.start()

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        await self.elastic.stop()
        for session in self._sessions:
            session.close()
        await self.prober.stop()
        self.audit.close()

    def service_list(self) -> list[Service]:
        """The host's services with their probed latency."""
        return [replace(s, latency=self.prober.latency(s)) for s in self.services()]

    def snapshot(self) -> Snapshot:
        """The host with its services' latency and each CVM's elastic state."""
        snapshot = self.host.snapshot(self.service_list())
        snapshot.cvms = [replace(c, elastic=self.elastic.state(c.name)) for c in snapshot.cvms]
        return snapshot

    async def serve_stdio(self) -> None:
        """Serve one peer on stdin/stdout (the form run by `ssh host hostctl agent --stdio`)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=rpc.MAX_LINE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self.serve(reader, writer, peer_user=_ssh_user())

    async def serve_unix(self, path: Path) -> asyncio.Server:
        """Listen on a unix socket only the owner can reach (`hostctl serve`, reached through SSH)."""
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(
            lambda r, w: self.serve(r, w, peer_user=peer_user_of(w)), path=str(path), limit=rpc.MAX_LINE
        )
        os.chmod(path, 0o600)
        return server

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, peer_user: str) -> None:
        session = Session(self, rpc.Peer(writer), peer_user)
        self._sessions.add(session)
        try:
            await rpc.serve(reader, session.peer, session.methods)
        finally:
            session.close()
            self._sessions.discard(session)

    def _on_event(self, event: Event) -> None:
        self.audit.append(event)
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
            self.elastic.observe()

    def _probes(self, cvm: str, now: float) -> list[Probe]:
        """The latency probes of the CVM's services over the prober's shortest window, on the wall clock."""
        offset = now - time.monotonic()
        probes = [
            Probe(s.at + offset, s.ms, s.ok)
            for key, windows in self.prober.windows.items()
            if key.rpartition("/")[0] == cvm
            for s in windows[0].samples
        ]
        return sorted(probes, key=lambda p: p.ts)


class Session:
    """One connected peer: its subscription and its view of what it has been sent."""

    def __init__(self, agent: Agent, peer: rpc.Peer, peer_user: str) -> None:
        self.agent = agent
        self.peer = peer
        self.peer_user = peer_user
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
        }
        return {name: checked(name, fn, self.agent.readonly) for name, fn in handlers.items()}

    def push(self, event: Event) -> None:
        """Queue an audit event for this peer (if subscribed) and send it without waiting for the interval."""
        self.updates.push(event)

    def close(self) -> None:
        self.updates.close()

    async def hello(self, params: dict[str, Any]) -> dict[str, Any]:
        self.client = params.get("client", "")
        return {
            "protocol": PROTOCOL_VERSION,
            "agent": __version__,
            "host": self.agent.host.host.name,
            "pid": os.getpid(),
            "readonly": self.agent.readonly,
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
        who = f"{params.get('who') or self.client or 'unknown'} ({self.peer_user})"
        event = await self.agent.host.scale(
            params["cvm"], params["target"], expect=params.get("expect"), who=who, why=params.get("why", "")
        )
        return event.to_dict()

    async def policies(self, params: dict[str, Any]) -> list[dict[str, str]]:
        return self.agent.elastic.describe()

    async def policy(self, params: dict[str, Any]) -> dict[str, Any]:
        cvm, name = params["cvm"], params.get("name")
        known = self.agent.elastic.policies
        if name is not None and name not in known:
            raise rpc.RpcError(
                rpc.INVALID_PARAMS, f"policy: unknown policy {name!r} (known: {', '.join(known) or 'none'})"[:300]
            )
        who = f"{params.get('who') or self.client or 'unknown'} ({self.peer_user})"
        state = self.agent.elastic.choose(cvm, name=name, enabled=params.get("enabled"), who=who)
        return {
            "cvm": cvm,
            "policy": state.policy,
            "enabled": state.enabled,
            "decision": state.decision,
            "reason": state.reason,
            "ts": state.ts,
            "alert": state.alert,
        }

    async def audit(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        events = await asyncio.to_thread(self.agent.audit.tail, params.get("limit", 100), params.get("since"))
        return [e.to_dict() for e in events]


def checked(name: str, fn: rpc.Method, readonly: bool) -> rpc.Method:
    """Wrap a method with its schema check and the read-only refusal."""
    schema = SCHEMAS[name]

    async def method(params: dict[str, Any]) -> Any:
        given = {key for key, value in params.items() if value is not None}
        if readonly and name in MUTATING and not given <= READ_FORMS.get(name, frozenset()):
            raise rpc.RpcError(rpc.REFUSED, f"agent is read-only: {name} refused; nothing changed")
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


def _ssh_user() -> str:
    """Who is at the other end of a stdio agent: the SSH user and client address, or the local user."""
    client = os.environ.get("SSH_CLIENT", "").split(" ")[0]
    return f"{getpass.getuser()}@ssh:{client}" if client else f"{getpass.getuser()}@local"


def peer_user_of(writer: asyncio.StreamWriter) -> str:
    """The user of the process connected to our unix socket (SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return f"{pwd.getpwuid(uid).pw_name}@socket"
    except (OSError, KeyError, AttributeError):
        return "unknown@socket"
