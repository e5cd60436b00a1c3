"""What a client needs to reach a test SSH server (`SSHEndpoint`), and the keys both test servers are set up with."""

from __future__ import annotations

import dataclasses
import os
import pwd
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

#: PATH given to every remote session (both servers).
SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOOPBACK = "127.0.0.1"


def _no_pids() -> list[int]:
    return []


@dataclass
class SSHEndpoint:
    """Everything a client needs to reach one test SSH server."""

    host: str
    port: int
    user: str
    client_key: Path  # private key, OpenSSH format, no passphrase, mode 0600
    known_hosts: Path  # one line: "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
    host_key_fingerprint: str  # "SHA256:..." (asyncssh key.get_fingerprint())
    host_public_key: str = ""  # "ssh-ed25519 AAAA..." (no comment)
    kind: str = ""  # "openssh" | "asyncssh"
    server_pid: int | None = None  # sshd listener pid; None for the in-process asyncssh server
    log_path: Path | None = None  # sshd's stderr log (openssh only)
    _session_pids: Callable[[], list[int]] = field(default=_no_pids, repr=False, compare=False)

    # -- helpers ---------------------------------------------------------------------------

    def session_pids(self) -> list[int]:
        """PIDs of live processes started for remote sessions (commands and their children).

        For openssh: descendants of the sshd listener that are not sshd itself.
        For asyncssh: the subprocesses started for exec requests (and their process groups).
        """
        return self._session_pids()

    def known_hosts_line(self, port: int | None = None) -> str:
        return f"[{self.host}]:{self.port if port is None else port} {self.host_public_key}\n"

    def for_port(self, port: int) -> SSHEndpoint:
        """The same server seen on another port (e.g. through a :class:`CuttableProxy`).

        known_hosts entries are port specific, so a sibling known_hosts file is written for
        ``[host]:port``.
        """
        kh = self.known_hosts.with_name(f"{self.known_hosts.name}.{port}")
        kh.write_text(self.known_hosts_line(port))
        return dataclasses.replace(self, port=port, known_hosts=kh)

    def connect_options(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``asyncssh.connect``."""
        opts: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "client_keys": [str(self.client_key)],
            "known_hosts": str(self.known_hosts),
            "agent_path": None,
            "config": [],
        }
        opts.update(overrides)
        return opts

    def connect(self, **overrides: Any) -> Any:
        """``asyncssh.connect(...)`` for this endpoint (await it or use ``async with``)."""
        return asyncssh.connect(**self.connect_options(**overrides))

    def ssh_argv(self, *command: str, ssh: str = "ssh") -> list[str]:
        """argv for the OpenSSH client, strict host key checking against our known_hosts."""
        return [
            ssh,
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-p",
            str(self.port),
            f"{self.user}@{self.host}",
            *command,
        ]


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port (racy by nature; callers retry on EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def current_user() -> str:
    """The name of the user running the tests (the user both servers log clients in as)."""
    return pwd.getpwuid(os.getuid()).pw_name


def public_line(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 AAAA...`: the key's public half as known_hosts and authorized_keys write it."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def write_keys(tmp: Path) -> tuple[asyncssh.SSHKey, Path, asyncssh.SSHKey, Path, Path]:
    """Generate host + client ed25519 keys and authorized_keys under ``tmp``."""
    host_key = asyncssh.generate_private_key("ssh-ed25519", comment="dittotui-test-host")
    client_key = asyncssh.generate_private_key("ssh-ed25519", comment="dittotui-test-client")
    host_key_path = tmp / "ssh_host_ed25519_key"
    client_key_path = tmp / "id_ed25519"
    host_key.write_private_key(str(host_key_path))
    host_key.write_public_key(str(host_key_path) + ".pub")
    client_key.write_private_key(str(client_key_path))
    client_key.write_public_key(str(client_key_path) + ".pub")
    # sshd and ssh both refuse private keys readable by others.
    os.chmod(host_key_path, 0o600)
    os.chmod(client_key_path, 0o600)
    authorized = tmp / "authorized_keys"
    authorized.write_text(public_line(client_key) + "\n")
    os.chmod(authorized, 0o600)
    return host_key, host_key_path, client_key, client_key_path, authorized


def write_known_hosts(tmp: Path, port: int, host_key: asyncssh.SSHKey) -> Path:
    """A known_hosts file pinning `host_key` for the loopback server on `port`."""
    kh = tmp / "known_hosts"
    kh.write_text(f"[{LOOPBACK}]:{port} {public_line(host_key)}\n")
    return kh
