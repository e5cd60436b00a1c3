"""Links to host agents: one connection per host, over SSH or a local socket, that never blocks another host.

A host with no agent installed (`uri = "qemu+ssh://..."` alone in the site file) gets hostctl's own agent as a
child process of this machine (`hostctl.client.local_agent`), spoken to over its stdin/stdout the same way.

A link keeps the host's latest snapshot current from the agent's `update` notifications. A host that stops
sending is shown stale with the age of its last data; a broken link reconnects with exponential backoff and
jitter; a request in flight when the link breaks fails with a clear error (scale is compare-and-set, so a retry
never applies twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import random
import shlex
import socket
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from asyncssh.config import SSHClientConfig, SSHConfig

from hostctl.client import hostkeys
from hostctl.client.channel import AgentChannel
from hostctl.client.link_thread import LinkThread, on_loop
from hostctl.client.local_agent import START_GRACE, LocalAgent
from hostctl.client.site import Defaults, HostEntry, Site, parse_destination
from hostctl.errors import HostctlError
from hostctl.wire import decode, rpc
from hostctl.wire.doctor import BOUND_S, Report
from hostctl.wire.model import CVM, DomainState, Elastic, Event, Model, Snapshot


class LinkState(StrEnum):
    CONNECTING = "connecting"
    FRESH = "fresh"
    STALE = "stale"


R = TypeVar("R", bound=Model)  # a record of the wire


class LinkError(HostctlError):
    """A request could not be answered over the link."""


def console_user() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


# AES-GCM first: with the CPU's AES instructions it costs a fifth of what asyncssh's ChaCha20-Poly1305 (its default,
# a cipher context built per packet) costs per packet, and a console holds an SSH session per host. An OpenSSH client
# config that names `Ciphers` for a host still decides for that host.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


class _VerifyingClient(asyncssh.SSHClient):
    """Remembers a host key that known_hosts does not trust, so the refusal can name its fingerprint."""

    def __init__(self) -> None:
        self.untrusted: asyncssh.SSHKey | None = None
        self.seen_as: tuple[str, str, int] = ("", "", 22)

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.untrusted = key
        self.seen_as = (host, addr, port)
        return False


async def connect_ssh(
    destination: str, defaults: Defaults, tunnel: asyncssh.SSHClientConnection | None = None
) -> asyncssh.SSHClientConnection:
    """An SSH connection to `destination` whose host key known_hosts trusts (a refusal names the key's
    fingerprint), honouring the OpenSSH client config named by `defaults`."""
    known_hosts = Path(defaults.known_hosts).expanduser()
    if not known_hosts.is_file():
        raise LinkError(f"known_hosts file {known_hosts} does not exist; host keys are always verified")
    user, host, port = parse_destination(destination)
    options: dict[str, Any] = {
        "known_hosts": str(known_hosts),
        "keepalive_interval": defaults.keepalive,
        "keepalive_count_max": 3,
        "connect_timeout": defaults.timeout,
    }
    if user:
        options["username"] = user
    if port:
        options["port"] = port
    if tunnel is not None:
        options["tunnel"] = tunnel
    ssh_config = Path(defaults.ssh_config).expanduser()
    if ssh_config.is_file():
        options["config"] = [str(ssh_config)]
    if not _config_option(defaults, destination, "Ciphers"):
        options["encryption_algs"] = CIPHERS
    verifier = _VerifyingClient()
    try:
        return await asyncssh.connect(host, client_factory=lambda: verifier, **options)
    except asyncssh.HostKeyNotVerifiable:
        raise LinkError(_key_refusal(destination, known_hosts, verifier)) from None


class HostLink:
    """The console's (or CLI's) link to one host agent."""

    def __init__(
        self,
        entry: HostEntry,
        defaults: Defaults,
        *,
        who: str | None = None,
        handshakes: asyncio.Semaphore | None = None,
    ) -> None:
        self.entry = entry
        self.defaults = defaults
        self.who = who or console_user()
        self.state = LinkState.CONNECTING
        self.error = ""
        self.snapshot: Snapshot | None = None
        self.hello: dict[str, Any] = {}
        self.last_data: float | None = None
        self.attempts = 0
        self._client: rpc.Client | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._positions: tuple[list[CVM], dict[str, int]] = ([], {})  # snapshot.cvms, and each name's place in it
        self._running: tuple[list[CVM], int, int] = ([], 0, 0)  # snapshot.cvms, and its `vcpus_running` counts
        self._tunnel: asyncssh.SSHClientConnection | None = None
        self._local: LocalAgent | None = None
        self._noticed = False  # the notice that an agentless host's policies run here, given once
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where the link runs, once started
        self._listeners: list[Callable[[HostLink], None]] = []
        self._event_listeners: list[Callable[[Event], None]] = []
        self._tried = asyncio.Event()
        self._handshakes = handshakes or contextlib.nullcontext()  # shared by a fleet's links: see `Fleet`

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def age(self) -> float | None:
        """Seconds since the last data from this host."""
        return None if self.last_data is None else time.monotonic() - self.last_data

    @property
    def stale_after(self) -> float:
        """The agent sends an update every interval, even with nothing new: two intervals of silence is stale."""
        return 2 * self.defaults.interval

    @property
    def agentless(self) -> bool:
        """True when the host has no agent of its own: its agent runs here, as a child of this process."""
        return self.entry.agentless

    @property
    def local_pid(self) -> int | None:
        """The pid of the agent child of an agentless host while it runs (None otherwise)."""
        return self._local.pid if self._local is not None else None

    @property
    def first_answer(self) -> float:
        """How long the first answer of a (re)connection may take: the request timeout, plus the start-up of the
        local agent for an agentless host."""
        return self.defaults.timeout + (START_GRACE if self.agentless else 0.0)

    @property
    def vcpus_running(self) -> tuple[int, int]:
        """The online vCPUs of the running CVMs whose count is known, and how many running CVMs have none.

        Kept up to date by each update, from the records it carries: reading it costs nothing, however many CVMs
        the host runs."""
        if self.snapshot is None:
            return 0, 0
        cvms, used, unknown = self._running
        return (used, unknown) if cvms is self.snapshot.cvms else _vcpus_running(self.snapshot.cvms)

    def cvm(self, name: str) -> CVM | None:
        """The CVM `name` as the last snapshot has it (None when unknown or never reached)."""
        return next((c for c in self.snapshot.cvms if c.name == name), None) if self.snapshot else None

    def on_update(self, callback: Callable[[HostLink], None]) -> None:
        """Call `callback(link)` after every change of data or state (on the loop the link runs on)."""
        self._listeners.append(callback)

    def on_event(self, callback: Callable[[Event], None]) -> None:
        """Call `callback(event)` for every audit event the agent reports from now on (on the link's loop)."""
        self._event_listeners.append(callback)

    def start(self) -> None:
        """Start following the host on the running loop."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name=f"link-{self.name}")

    def _elsewhere(self) -> asyncio.AbstractEventLoop | None:
        """The link's loop when the caller runs on another one (a console's screen, with links on their thread)."""
        loop = self._loop
        return loop if loop is not None and loop is not asyncio.get_running_loop() and loop.is_running() else None

    async def stop(self) -> None:
        if loop := self._elsewhere():
            return await on_loop(loop, self.stop())
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._drop()

    async def ready(self, timeout: float) -> None:
        """Wait until the first connection attempt has ended (fresh data or an error); `timeout` seconds, and as long
        as a local agent may take to start for an agentless host."""
        if loop := self._elsewhere():
            return await on_loop(loop, self.ready(timeout))
        timeout += self.first_answer - self.defaults.timeout
        try:
            async with asyncio.timeout(timeout):
                await self._tried.wait()
        except TimeoutError:
            self.error = self.error or self._at(f"no answer within {timeout:g} s")

    async def call(self, method: str, *, timeout: float | None = None, **params: Any) -> Any:
        """Call an agent method; LinkError when the link is down, breaks, or the agent does not answer."""
        if loop := self._elsewhere():
            return await on_loop(loop, self.call(method, timeout=timeout, **params))
        client = self._client
        if client is None or client.closed:
            raise LinkError(f"{self.name}: not connected ({self.error or self.state.value}); nothing was sent")
        timeout = timeout or self.defaults.timeout
        try:
            return await client.call(method, timeout=timeout, **params)
        except TimeoutError:
            self._set_state(LinkState.STALE, f"no answer to {method} within {timeout:g} s")
            raise LinkError(
                f"{self.name}: no answer to {method} within {timeout:g} s; it may or may not have "
                "been applied (a retry is safe: scale is compare-and-set)"
            ) from None
        except ConnectionError as e:
            raise LinkError(
                f"{self.name}: link lost during {method} ({e}); it may or may not have been "
                "applied (a retry is safe: scale is compare-and-set)"
            ) from None

    async def scale(self, cvm: str, target: int, *, expect: int | None, why: str = "manual") -> Event:
        result = await self.call(
            "scale", timeout=self.defaults.scale_timeout, cvm=cvm, target=target, expect=expect, who=self.who, why=why
        )
        return self._event(result)

    def offers(self, method: str) -> bool:
        """True when the agent listed `method` in its hello (False until it has answered)."""
        return method in self.hello.get("methods", [])

    async def policies(self) -> dict[str, str]:
        """The agent's elastic policies, name -> one-line description (none from an agent without policies)."""
        if not self.offers("policy"):
            return {}
        return {p["name"]: p["description"] for p in await self.call("policies")}

    async def set_policy(self, cvm: str, *, name: str | None = None, enabled: bool | None = None) -> Elastic:
        """The CVM's elastic state as its agent runs it, after choosing `name` and/or switching it on or off
        (the agent audits every change); with neither, only read."""
        if not self.offers("policy"):
            agent = self.hello.get("agent", "?")
            raise LinkError(f"{self.name}: its agent (hostctl {agent}) offers no elastic policies")
        changes: dict[str, Any] = {k: v for k, v in (("name", name), ("enabled", enabled)) if v is not None}
        return self._record(Elastic, await self.call("policy", cvm=cvm, who=self.who, **changes), "policy")

    async def doctor(self) -> Report:
        """The host's checks as its agent runs them (the agent answers within its own bound)."""
        if not self.offers("doctor"):
            agent = self.hello.get("agent", "?")
            raise LinkError(f"{self.name}: its agent (hostctl {agent}) offers no doctor; upgrade it")
        report = self._record(Report, await self.call("doctor", timeout=self.defaults.timeout + BOUND_S), "doctor")
        report.host = self.name  # the site's name for it, as events are named
        return report

    async def audit(self, limit: int = 100, *, since: float | None = None) -> list[Event]:
        """The last `limit` entries of the agent's audit log, oldest first; with `since` (a time of the agent's own
        clock, e.g. an event's `ts`), the first `limit` entries after it."""
        after = {} if since is None else {"since": since}  # an agent from before `since` knows only `limit`
        return [self._event(e) for e in await self.call("audit", limit=limit, **after)]

    # -- the connection loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            was_fresh = False
            try:
                was_fresh = await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every failure of one host stays with that host
                self.error = await self._local_reason() or self._at(describe(e))
            finally:
                await self._drop()
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError
            self._tried.set()
            failures = 0 if was_fresh else failures + 1
            self._set_state(LinkState.STALE if self.snapshot else LinkState.CONNECTING, self.error)
            delay = min(self.defaults.backoff_max, 0.25 * 2 ** min(failures, 16)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)

    async def _follow(self) -> bool:
        """Connect, say hello, take a snapshot, subscribe, then watch for staleness until the link ends."""
        self.attempts += 1
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation, and stop() would hang.
        async with self._handshakes, asyncio.timeout(self.defaults.timeout + 1):
            client = await self._open()
        client.on_notification(self._on_notification)
        self._client = client
        self.hello = await self.call("hello", timeout=self.first_answer, client=self.who)
        self.snapshot = self._record(Snapshot, await self.call("snapshot"), "snapshot")
        await self.call("subscribe", interval=self.defaults.interval)
        self._fresh()
        self._tried.set()
        if self.agentless and not self._noticed:
            self._noticed = True
            self._notify(self._agentless_notice())
        drop_after = self.stale_after + 2 * self.defaults.timeout
        while not client.closed:
            age = self.age or 0.0
            if age > drop_after:
                self.error = self._at(f"no data for {age:.0f} s; reconnecting")
                return True
            if age > self.stale_after and self.state is not LinkState.STALE:
                self._set_state(LinkState.STALE, self._at(f"no data for {age:.1f} s"))
            # Wake when the data turn stale (or the link is to be dropped), not on a fixed tick: staleness is seen
            # within milliseconds of its deadline.
            if age <= self.stale_after:
                await self._until_stale(client)
            else:
                await client.wait_closed(timeout=drop_after - age + 0.005)
        self.error = await self._local_reason() or self._at(client.broken or "the agent closed the link")
        return True

    async def _until_stale(self, client: rpc.Client) -> None:
        """Return once the data are older than `stale_after`, or the client has closed.

        Each update moves the deadline on: a timer callback re-arms itself then, without waking this task, so a
        fresh link costs one timer per update, not a task's wake-up with its waiters.
        """
        loop = asyncio.get_running_loop()
        stale: asyncio.Future[None] = loop.create_future()
        timer: asyncio.TimerHandle

        def arm() -> asyncio.TimerHandle:
            return loop.call_later(self.stale_after - (self.age or 0.0) + 0.005, check)

        def check() -> None:
            nonlocal timer
            if (self.age or 0.0) > self.stale_after:
                stale.set_result(None)
            else:
                timer = arm()

        timer = arm()
        try:
            await client.wait_closed(until=stale)
        finally:
            timer.cancel()

    async def _open(self) -> rpc.Client:
        """A client of the host's agent, over whichever way the site file says it is reached."""
        entry = self.entry
        if entry.agentless:
            self._local = LocalAgent(entry, self.defaults)
            return rpc.Client(*await self._local.start(), typed=decode.LINK)
        if entry.ssh is None:
            assert entry.socket is not None
            return rpc.Client(*await rpc.open_unix(entry.socket), typed=decode.LINK)
        if entry.jump:
            try:
                self._tunnel = await connect_ssh(entry.jump, self.defaults)
            except Exception as e:
                raise LinkError(f"jump host: {describe(e)}") from None
        try:
            self._conn = await connect_ssh(entry.ssh, self.defaults, tunnel=self._tunnel)
        except asyncssh.ChannelOpenError as e:  # only a jump host opens channels on the way
            raise LinkError(f"the jump host could not reach it: {e.reason}") from None
        session: object
        if entry.socket:
            _, session = await self._conn.create_unix_connection(AgentChannel, entry.socket)
        else:
            command = shlex.join(entry.agent_argv(self.defaults))
            _, session = await self._conn.create_session(AgentChannel, command, encoding=None)
        assert isinstance(session, AgentChannel)
        return session.attach()

    @property
    def where(self) -> str:
        """How this host is reached, as an error names it: `mec-1 (10.0.0.5:22) via jump host bastion (...)`,
        a socket, or the libvirt URI of a host with no agent."""
        entry = self.entry
        if entry.agentless:
            return f"its agent here, over {entry.uri}"
        if entry.ssh is None:
            return f"socket {entry.socket}"
        where, jump = address(entry.ssh, self.defaults)
        jump = entry.jump or jump
        if jump:
            where += f" via jump host {address(jump, self.defaults)[0]}"
        return where + (f", socket {entry.socket}" if entry.socket else "")

    def _at(self, reason: str) -> str:
        """`reason`, saying where the host was reached."""
        return f"{self.where}: {reason}"

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        for conn in (self._conn, self._tunnel):
            if conn is not None:
                conn.abort()
        self._conn = self._tunnel = None
        local, self._local = self._local, None
        if local is not None:
            await local.stop()

    async def _local_reason(self) -> str | None:
        """Why the local agent of an agentless host ended (its host key refusal, its last error, naming its URI or
        destination), if it did."""
        return await self._local.exit_reason() if self._local is not None else None

    def _agentless_notice(self) -> Event:
        return Event(
            host=self.name,
            cvm="*",
            action="agentless",
            who=self.who,
            ok=True,
            why=f"no agent on this host: its agent runs here, over {self.entry.uri}; "
            "its elastic policies run only while this console (or command) runs",
        )

    # -- data ------------------------------------------------------------------------------------

    def _on_notification(self, method: str, update: decode.Update) -> None:
        if method != "update" or self.snapshot is None:
            return
        snapshot = self.snapshot
        if update.host is not None:
            snapshot.host = update.host
        if update.cvms or update.removed:
            self._apply_cvms(snapshot, update.cvms, update.removed)
        if update.services is not None:
            snapshot.services = update.services
        snapshot.ts = time.time() if update.ts is None else update.ts
        self._fresh()  # first: whoever an event wakes finds the update it came with already applied and announced
        for event in update.events:
            self._notify(self._ours(event))

    def _apply_cvms(self, snapshot: Snapshot, changed: dict[str, CVM], removed: list[str]) -> None:
        """Put an update's CVM records into `snapshot`: in place when no CVM came or went (an update's cost follows
        the records it carries; a reader on another thread sees each record whole), else as a new sorted list."""
        cvms, positions = self._positions
        if cvms is snapshot.cvms and not removed and changed.keys() <= positions.keys():
            _, used, unknown = self._running  # counted from this list: the two are set together, below
            for name, cvm in changed.items():
                i = positions[name]
                was, cvms[i] = cvms[i], cvm
                (used_was, unknown_was), (used_now, unknown_now) = _vcpus_of(was), _vcpus_of(cvm)
                used += used_now - used_was
                unknown += unknown_now - unknown_was
            self._running = (cvms, used, unknown)
            return
        merged = {c.name: c for c in snapshot.cvms} | changed
        for name in removed:
            merged.pop(name, None)
        snapshot.cvms = sorted(merged.values(), key=lambda c: c.name)
        self._positions = (snapshot.cvms, {c.name: i for i, c in enumerate(snapshot.cvms)})
        self._running = (snapshot.cvms, *_vcpus_running(snapshot.cvms))

    def _record(self, kind: type[R], data: Any, what: str) -> R:
        """The agent's `what` as its record; LinkError naming this host and the bad value when it is malformed."""
        try:
            return kind.from_dict(data)
        except ValueError as e:
            raise LinkError(f"{self.name}: the agent's {what} is malformed: {e}") from None

    def _event(self, data: dict[str, Any]) -> Event:
        """An event from the agent's reply, naming this site host."""
        return self._ours(self._record(Event, data, "event"))

    def _ours(self, event: Event) -> Event:
        """`event`, naming this site host (agents of several hosts may share one hostname)."""
        event.host = self.name
        return event

    def _notify(self, event: Event) -> None:
        for callback in self._event_listeners:
            callback(event)

    def _fresh(self) -> None:
        self.last_data = time.monotonic()
        self._set_state(LinkState.FRESH, "")

    def _set_state(self, state: LinkState, error: str) -> None:
        self.state = state
        self.error = error
        for callback in self._listeners:
            callback(self)


class Fleet:
    """Links to every host of a site, each independent of the others.

    They connect at most `HANDSHAKES` at a time, each timed from its turn: a thousand SSH handshakes begun at once
    share one loop and its executor, outlast the connect timeout and retry, over and over.
    """

    HANDSHAKES = 32

    def __init__(self, site: Site, *, who: str | None = None, thread: LinkThread | None = None) -> None:
        self.site = site
        gate = asyncio.Semaphore(self.HANDSHAKES)
        self.links = {h.name: HostLink(h, site.defaults, who=who, handshakes=gate) for h in site.hosts}
        self.thread = thread  # the links run there when given (a console), else on the loop that starts them

    def link(self, name: str) -> HostLink:
        try:
            return self.links[name]
        except KeyError:
            raise HostctlError(f"unknown host {name!r} (known: {', '.join(self.links)})") from None

    def start(self) -> None:
        if self.thread is not None:
            self.thread.start()
        for link in self.links.values():
            if self.thread is not None:
                self.thread.soon(link.start)
            else:
                link.start()

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in self.links.values()))
        if self.thread is not None:
            await self.thread.close()

    async def ready(self) -> None:
        """Wait until every host has answered or failed once (bounded by the request timeout)."""
        await asyncio.gather(*(link.ready(self.site.defaults.timeout + 2) for link in self.links.values()))


def _vcpus_of(cvm: CVM) -> tuple[int, int]:
    """What a CVM adds to `HostLink.vcpus_running`."""
    if cvm.state is not DomainState.RUNNING:
        return 0, 0
    return (0, 1) if cvm.online_vcpus is None else (cvm.online_vcpus, 0)


def _vcpus_running(cvms: list[CVM]) -> tuple[int, int]:
    """`HostLink.vcpus_running` of these CVMs: what each adds, summed."""
    counts = [_vcpus_of(c) for c in cvms]
    return sum(used for used, _ in counts), sum(unknown for _, unknown in counts)


def _key_refusal(destination: str, known_hosts: Path, verifier: _VerifyingClient) -> str:
    key = verifier.untrusted
    fingerprint = key.get_fingerprint() if key is not None else "unknown"
    try:
        trusted = asyncssh.read_known_hosts(str(known_hosts)).match(*verifier.seen_as)[0]
    except (OSError, ValueError):
        trusted = []
    return hostkeys.refusal_line(destination, changed=bool(trusted), fingerprint=fingerprint, known_hosts=known_hosts)


def _client_config(defaults: Defaults, destination: str) -> SSHConfig | None:
    """The OpenSSH client config named by `defaults` as it applies to `destination` (None: no such file, or one
    asyncssh cannot read; the connection then reports the latter)."""
    config = Path(defaults.ssh_config).expanduser()
    if not config.is_file():
        return None
    user, host, port = parse_destination(destination)
    try:
        return SSHClientConfig.load(
            None, [str(config)], False, False, False, getpass.getuser(), user or "", host, port or ()
        )
    except (OSError, ValueError, asyncssh.Error):
        return None


def _config_option(defaults: Defaults, destination: str, name: str) -> object:
    config = _client_config(defaults, destination)
    return None if config is None else config.get(name)


def address(destination: str, defaults: Defaults) -> tuple[str, str | None]:
    """(`[user@]host:port`, or `alias (host:port)`, and the jump host the OpenSSH client config names, if any) of an
    SSH destination, resolved through that config as the connection resolves it; port 22 when neither names one."""
    user, host, port = parse_destination(destination)
    given, jump = host, None
    if (options := _client_config(defaults, destination)) is not None:
        host = str(options.get("Hostname") or host)
        port = port or int(str(options.get("Port") or 22))
        jump = str(options.get("ProxyJump") or "") or None
    shown = f"[{host}]:{port or 22}" if ":" in host else f"{host}:{port or 22}"
    return (f"{user}@{shown}" if user else shown) if host == given else f"{destination} ({shown})", jump


def describe(error: BaseException) -> str:
    """One line saying what went wrong with a connection."""
    if isinstance(error, HostctlError):
        return str(error)
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, asyncssh.PermissionDenied):
        return f"SSH authentication refused: {error.reason}"
    if isinstance(error, asyncssh.Error):
        return f"SSH: {error.reason}"
    if isinstance(error, OSError):
        return f"{error.strerror or error}"
    return f"{type(error).__name__}: {error}"
