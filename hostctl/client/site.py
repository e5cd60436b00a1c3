"""The site inventory: which hosts the console and CLI reach, how to reach each agent, services, load generators.

A site file is TOML (see `hostctl/data/site.example.toml`), read and written with `hostctl.config`: every error names
the file, the field path and the value, and `load` reads back what `write` wrote to an equal site.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from hostctl import config
from hostctl.config import between, check
from hostctl.errors import HostctlError

DEFAULT_AGENT = ["hostctl", "agent", "--stdio"]

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # also an ~/.ssh/config alias; never starts with '-'
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_PORT = re.compile(r"[0-9]{1,5}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S*")

AGENTLESS_SCHEME = "qemu+ssh"  # libvirt's ssh transport: the OpenSSH client, run by libvirt
AGENTLESS_PATHS = ("/system", "/session")
# Parameters of libvirt's remote URIs an agentless host may set, and the one value allowed where only one is.
_AGENTLESS_PARAMS = {"keyfile", "socket", "netcat", "name", "mode", "proxy", "no_tty", "no_verify"}
_AGENTLESS_FIXED = {"no_tty": "1", "no_verify": "0"}
_AGENTLESS_CHOICES = {"mode": ("auto", "legacy", "direct"), "proxy": ("auto", "netcat", "native")}
_AGENTLESS_WHY = {
    "command": "is set by hostctl (the OpenSSH client with strict host key checking)",
    "no_verify": "must be 0: host keys are always verified",
    "known_hosts": "is for libvirt's libssh transports; qemu+ssh checks defaults.known_hosts",
    "known_hosts_verify": "is for libvirt's libssh transports; qemu+ssh checks defaults.known_hosts strictly",
    "sshauth": "is for libvirt's libssh transports; qemu+ssh authenticates as the OpenSSH client does",
}


def parse_destination(dest: str) -> tuple[str | None, str, int | None]:
    """Split an SSH destination `[user@]host[:port]` (host may be `[v6]` or an alias) into (user, host, port).

    Raises ValueError saying what is wrong.
    """
    user: str | None = None
    rest = dest
    if "@" in dest:
        user, _, rest = dest.rpartition("@")
        if not _USER.fullmatch(user):
            raise ValueError(f"user {user!r} must be letters, digits, '.', '_' or '-' (not first)")
    port_text: str | None = None
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket:
            raise ValueError("'[' without ']'")
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"unexpected {tail!r} after ']'")
            port_text = tail[1:]
        if not (_is_ipv6(host) or _HOSTNAME.fullmatch(host)):
            raise ValueError(f"{host!r} is not an IPv6 address or host name")
    elif rest.count(":") > 1:  # a bare IPv6 address: no port possible without brackets
        host = rest
        if not _is_ipv6(host):
            raise ValueError(f"{host!r} is not an IPv6 address (write [addr]:port for a port)")
    else:
        host, colon, port_text_ = rest.partition(":")
        port_text = port_text_ if colon else None
        if not _HOSTNAME.fullmatch(host):
            what = "empty host" if not host else f"host {host!r} must be letters, digits, '.', '_' or '-' (not first)"
            raise ValueError(what)
    port = None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} must be 1..65535")
        port = int(port_text)
    return user, host, port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _destination(value: str) -> str | None:
    try:
        parse_destination(value)
    except ValueError as e:
        return f"is not an SSH destination ([user@]host[:port] or an ~/.ssh/config alias): {e}"
    return None


def _name(value: str) -> str | None:
    return None if _NAME.fullmatch(value) else "must be letters, digits, '-', '_' or '.'"


def _non_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _absolute(value: str) -> str | None:
    return None if value.startswith("/") and "\0" not in value else "must be an absolute path"


def _url(value: str) -> str | None:
    ok = value.startswith(("http://", "https://")) and not any(c.isspace() for c in value)
    try:
        ok = ok and bool(urlsplit(value).hostname)
    except ValueError:
        ok = False
    return None if ok else "must start with http:// or https:// and name a host"


def _uri(value: str) -> str | None:
    return None if _URI.fullmatch(value) else "is not a libvirt URI (e.g. qemu:///system)"


def agentless_problem(uri: str) -> str | None:
    """What keeps `uri` from reaching a host with no agent (`qemu+ssh://[user@]host[:port]/system`), or None."""
    try:
        parts = urlsplit(uri)
        netloc, query = parts.netloc, parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        return f"is not a URI: {e}"
    form = f"{AGENTLESS_SCHEME}://[user@]host[:port]/system"
    if parts.scheme != AGENTLESS_SCHEME:
        return f"must be a remote libvirt URI over SSH ({form})"
    if not netloc:
        return f"names no host ({form})"
    try:
        parse_destination(netloc)
    except ValueError as e:
        return f"has a bad host part {netloc!r}: {e}"
    if parts.path not in AGENTLESS_PATHS:
        return f"path {parts.path or '(none)'!r} must be one of {', '.join(AGENTLESS_PATHS)}"
    if parts.fragment:
        return "must have no '#' fragment"
    for key, value in query:
        fixed = _AGENTLESS_FIXED.get(key)
        if key not in _AGENTLESS_PARAMS or (fixed is not None and value != fixed):
            why = _AGENTLESS_WHY.get(key) or (
                f"must be {fixed}"
                if fixed
                else f"is not a parameter hostctl passes (known: {', '.join(sorted(_AGENTLESS_PARAMS))})"
            )
            return f"{key}={value}: {why}"
        if key in _AGENTLESS_CHOICES and value not in _AGENTLESS_CHOICES[key]:
            return f"{key}={value}: must be one of {', '.join(_AGENTLESS_CHOICES[key])}"
        if key in ("keyfile", "socket") and (problem := _absolute(value)):
            return f"{key}={value}: {problem}"
        if not value:
            return f"{key}: must not be empty"
    return None


def _argv_problem(argv: list[str]) -> str | None:
    if not argv or not argv[0]:
        return f"agent = {argv!r} must be a non-empty command, e.g. {DEFAULT_AGENT!r}"
    return None


@dataclass
class Defaults:
    """Settings shared by every host unless a host overrides them."""

    interval: float = check(between(0.05, 3600), default=1.0)  # seconds between agent updates
    timeout: float = check(between(0.1, 3600), default=5.0)  # per-request timeout, seconds
    scale_timeout: float = check(between(0.1, 3600), default=30.0)  # waking workers can take a while, seconds
    slo_p99_ms: float = check(between(0.01, 600_000), default=50.0)  # a service breaks its SLO above this p99
    keepalive: float = check(between(0.1, 3600), default=5.0)  # SSH keepalive interval, seconds
    known_hosts: str = check(_non_empty, default="~/.ssh/known_hosts")
    ssh_config: str = check(_non_empty, default="~/.ssh/config")  # OpenSSH client config, read if present
    agent: list[str] = field(default_factory=lambda: list(DEFAULT_AGENT))  # run over SSH, as argv
    backoff_max: float = check(between(0.1, 3600), default=4.0)  # longest wait between reconnects, seconds

    def __post_init__(self) -> None:
        if problem := _argv_problem(self.agent):
            raise ValueError(problem)


@dataclass
class ServiceEntry:
    """One service of a CVM, reachable at `url` (probed and driven by load generators)."""

    cvm: str = check(_name)
    name: str = check(_name)
    url: str = check(_url)


@dataclass
class HostEntry:
    """One host and how to reach its agent: over SSH (agent command or remote socket), a local socket, or, for a
    host with no agent installed (`uri` alone, `qemu+ssh://...`), an agent run on this machine over libvirt's SSH."""

    name: str = check(_name)
    ssh: str | None = check(_destination, default=None)  # ~/.ssh/config alias or [user@]host[:port]
    socket: str | None = check(_absolute, default=None)  # remote (through ssh) or local agent socket
    agent: list[str] | None = None  # overrides defaults.agent
    jump: str | None = check(_destination, default=None)  # bastion, same syntax as ssh
    uri: str | None = check(_uri, default=None)  # libvirt URI the agent uses; alone: the host has no agent
    services: list[ServiceEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        who = f"host {self.name!r}"
        if self.ssh is None and self.socket is None and self.uri is None:
            raise ValueError(
                f'{who}: give ssh = "user@host" or socket = "/path" (its agent), '
                f'or uri = "{AGENTLESS_SCHEME}://user@host/system" alone (a host with no agent)'
            )
        if self.jump is not None and self.ssh is None:
            raise ValueError(
                f'{who}: jump = {self.jump!r} needs ssh = "user@host" (a jump host is only for SSH; '
                "for a host with no agent, set ProxyJump in the file named by defaults.ssh_config)"
            )
        if self.agentless:
            assert self.uri is not None
            if problem := agentless_problem(self.uri):
                raise ValueError(f"{who}: uri = {self.uri!r} (no ssh or socket: a host with no agent) {problem}")
            if self.agent is not None:
                raise ValueError(
                    f'{who}: agent = {self.agent!r} needs ssh = "user@host"; a host with no agent (uri alone) '
                    "runs hostctl's own agent on this machine"
                )
        if self.agent is not None:
            if problem := _argv_problem(self.agent):
                raise ValueError(f"{who}: {problem}")
            if self.socket is not None:
                raise ValueError(f"{who}: give agent (run a command) or socket (reach a running agent), not both")
        seen: set[tuple[str, str]] = set()
        for s in self.services:
            if (s.cvm, s.name) in seen:
                raise ValueError(f"{who}: service {s.name!r} of cvm {s.cvm!r} appears twice")
            seen.add((s.cvm, s.name))

    @property
    def agentless(self) -> bool:
        """True for a host with no agent installed: only `uri` given, its agent runs on this machine."""
        return self.ssh is None and self.socket is None and self.uri is not None

    def target(self) -> tuple[str | None, str | None, int | None]:
        """(user, host, port) of `ssh`; None for parts not given, all None for a local or agentless host."""
        if self.ssh is None:
            return None, None, None
        return parse_destination(self.ssh)

    def agent_argv(self, defaults: Defaults) -> list[str]:
        """The agent command to run over SSH: this host's `agent`, else `defaults.agent` (a copy)."""
        return list(self.agent if self.agent is not None else defaults.agent)


@dataclass
class LoadGenerator:
    """A host that runs wrk against services; `ssh` None means this machine."""

    name: str = check(_name)
    ssh: str | None = check(_destination, default=None)
    wrk: str = check(_non_empty, default="wrk")  # the wrk binary on that host

    def target(self) -> tuple[str | None, str | None, int | None]:
        """(user, host, port) of `ssh`; all None for this machine."""
        return (None, None, None) if self.ssh is None else parse_destination(self.ssh)


@dataclass
class LoadBounds:
    """Hard upper bounds on every wrk run (the `[load]` table); a request beyond one is refused."""

    max_threads: int = check(between(1, 1024), default=8)
    max_connections: int = check(between(1, 65_536), default=512)
    max_duration_s: int = check(between(1, 86_400), default=300)
    max_timeout_s: int = check(between(1, 3600), default=10)


@dataclass
class Site:
    """The whole inventory. `source` is the file it came from (set by `load`/`write`, not a TOML key)."""

    defaults: Defaults = field(default_factory=Defaults)
    hosts: list[HostEntry] = field(default_factory=list)
    load_generators: list[LoadGenerator] = field(default_factory=list)
    load: LoadBounds = field(default_factory=LoadBounds)

    # Not a dataclass field (no annotation): build() never sees it, so a TOML key `source` is unknown,
    # and it takes no part in equality.
    source = ""

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError('hosts: at least one [[hosts]] table is required (name = "...", ssh = "user@host")')
        _unique("hosts", [h.name for h in self.hosts], "host")
        _unique("load_generators", [g.name for g in self.load_generators], "load generator")

    def host(self, name: str) -> HostEntry:
        """The host called `name`; HostctlError naming the known hosts otherwise."""
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise HostctlError(f"{self.source or 'site'}: unknown host {name!r} (known: {known})")

    def load_generator(self, name: str) -> LoadGenerator:
        """The load generator called `name`; HostctlError naming the known ones otherwise."""
        for g in self.load_generators:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.load_generators) or "none"
        raise HostctlError(f"{self.source or 'site'}: unknown load generator {name!r} (known: {known})")

    def services_of(self, host: str, cvm: str) -> list[ServiceEntry]:
        """The services of CVM `cvm` on host `host` (empty if it has none); unknown host raises HostctlError."""
        return [s for s in self.host(host).services if s.cvm == cvm]


def _unique(where: str, names: list[str], what: str) -> None:
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in first:
            raise ValueError(f"{where}[{i}].name: {what} name {n!r} appears twice (first at {where}[{first[n]}])")
        first[n] = i


def load(path: Path) -> Site:
    """Read and validate a site file; errors are ConfigError naming file, field and value."""
    site = config.load(Site, path)
    site.source = str(path)
    return site


def write(site: Site, path: Path) -> None:
    """Write `site` to `path` atomically, as TOML that `load` reads back to an equal Site; record `path` as
    `site.source`."""
    config.write(site, path, header="# hostctl site inventory (written by hostctl; see hostctl/data/site.example.toml)")
    site.source = str(path)
