"""Who is at the other end of an agent, and whether they may change anything.

A peer on the unix socket is known by the socket's credentials (SO_PEERCRED: its uid and gid, then the user's
groups); a peer of the stdio form (`ssh host hostctl agent --stdio`) is the SSH user, the agent's own user. Writers
may scale and change policies; everyone else reads. With no writers configured, the agent's own user and root
are the writers.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from hostctl.errors import ConfigError


@dataclass(frozen=True)
class PeerIdentity:
    """A connected peer: its user, that user's groups, and where it came from (`socket`, `ssh:ADDR`, `local`)."""

    user: str
    groups: frozenset[str]
    where: str

    @property
    def label(self) -> str:
        """`user@where`, as the audit log names the peer."""
        return f"{self.user}@{self.where}"


@dataclass(frozen=True)
class Writers:
    """The users and groups (`@group`) that may change things."""

    users: frozenset[str]
    groups: frozenset[str]

    @classmethod
    def default(cls) -> Writers:
        """The agent's own user and root."""
        return cls(frozenset({_user_name(os.geteuid()), "root"}), frozenset())

    @classmethod
    def parse(cls, text: str, *, source: str = "--writers") -> Writers:
        """`alice,@ops` -> users {alice} and groups {ops}; ConfigError naming the bad entry."""
        users: set[str] = set()
        groups: set[str] = set()
        for entry in (part.strip() for part in text.split(",")):
            name = entry.removeprefix("@")
            if not name or any(c.isspace() or c in "@:/=" for c in name):
                raise ConfigError(f"{source}: {entry!r} is not a user name or @group (e.g. alice,@ops)")
            (groups if entry.startswith("@") else users).add(name)
        return cls(frozenset(users), frozenset(groups))

    def allows(self, peer: PeerIdentity) -> bool:
        return peer.user in self.users or not self.groups.isdisjoint(peer.groups)

    def describe(self) -> str:
        """`alice, @ops`."""
        return ", ".join([*sorted(self.users), *(f"@{g}" for g in sorted(self.groups))])


def stdio_peer() -> PeerIdentity:
    """The peer of a stdio agent: the SSH user (this process's user) and the SSH client's address."""
    uid = os.geteuid()
    client = os.environ.get("SSH_CLIENT", "").split(" ")[0]
    return PeerIdentity(_user_name(uid), _groups(uid, os.getegid()), f"ssh:{client}" if client else "local")


def socket_peer(writer: asyncio.StreamWriter) -> PeerIdentity:
    """The peer of a unix socket connection, from its credentials; `unknown` with no groups when unreadable."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return PeerIdentity("unknown", frozenset(), "socket")
    _pid, uid, gid = struct.unpack("3i", creds)
    return PeerIdentity(_user_name(uid), _groups(uid, gid), "socket")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid={uid}"  # no name: matches no writer entry (those hold no '=')


def _groups(uid: int, gid: int) -> frozenset[str]:
    """The names of `gid` and of the groups the user `uid` belongs to."""
    try:
        gids = {gid, *os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)}
    except KeyError:
        gids = {gid}
    names = set()
    for g in gids:
        try:
            names.add(grp.getgrgid(g).gr_name)
        except KeyError:
            continue
    return frozenset(names)
