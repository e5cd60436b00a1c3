"""Real SSH servers for integration tests (no mocks).

Three building blocks, each usable as an async context manager or as a pytest fixture:

* :func:`openssh` / fixture ``openssh_server`` -- a real OpenSSH ``sshd`` child process on a free
  loopback port, key-only auth, TCP and unix-socket (direct-streamlocal) forwarding allowed.
* :func:`asyncssh_server` / fixture ``asyncssh_ssh_server`` -- an in-process asyncssh server that
  runs each exec request as a real subprocess (``shlex.split`` of the command, no shell) and
  forwards direct-tcpip / direct-streamlocal channels.  Subprocesses are killed when their
  channel closes (e.g. the connection was cut), so no agents are left behind.
* :class:`CuttableProxy` -- a loopback TCP proxy whose connections can be cut (RST), paused
  (black-holed: no bytes in either direction, nothing closed) and whose listener can be taken
  down and brought back on the same port.

Both servers yield an :class:`SSHEndpoint` that carries everything a client needs (host, port,
user, client key, a known_hosts file pinning the server's host key).

Usage from conftest.py::

    from sshkit import openssh_server, asyncssh_ssh_server  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import pwd
import re
import shlex
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import psutil
import pytest
import pytest_asyncio

__all__ = [
    "SESSION_PATH",
    "SSHD",
    "CuttableProxy",
    "SSHEndpoint",
    "asyncssh_server",
    "asyncssh_ssh_server",
    "free_port",
    "openssh",
    "openssh_server",
]

SSHD = "/usr/sbin/sshd"
#: PATH given to every remote session (both servers).
SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0


# --------------------------------------------------------------------------------------------
# endpoint


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

    def connect_options(self, **overrides) -> dict:
        """Keyword arguments for ``asyncssh.connect``."""
        opts = dict(
            host=self.host,
            port=self.port,
            username=self.user,
            client_keys=[str(self.client_key)],
            known_hosts=str(self.known_hosts),
            agent_path=None,
            config=[],
        )
        opts.update(overrides)
        return opts

    def connect(self, **overrides):
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


# --------------------------------------------------------------------------------------------
# shared helpers


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port (racy by nature; callers retry on EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def _public_line(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _write_keys(tmp: Path) -> tuple[asyncssh.SSHKey, Path, asyncssh.SSHKey, Path, Path]:
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
    authorized.write_text(_public_line(client_key) + "\n")
    os.chmod(authorized, 0o600)
    return host_key, host_key_path, client_key, client_key_path, authorized


def _write_known_hosts(tmp: Path, port: int, host_key: asyncssh.SSHKey) -> Path:
    kh = tmp / "known_hosts"
    kh.write_text(f"[{LOOPBACK}]:{port} {_public_line(host_key)}\n")
    return kh


async def _read_banner(host: str, port: int, timeout: float) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        return await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _gone(p: psutil.Process) -> bool:
    """Exited (or a zombie: dead, just not reaped yet -- possibly by a slow init)."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _kill_tree(procs: list[psutil.Process], timeout: float = 2.0) -> None:
    """SIGTERM ``procs``, SIGKILL the ones still running after ``timeout``."""
    for sig_method in ("terminate", "kill"):
        alive = [p for p in procs if not _gone(p)]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                getattr(p, sig_method)()
        deadline = time.monotonic() + timeout
        while alive and time.monotonic() < deadline:
            time.sleep(0.01)
            alive = [p for p in alive if not _gone(p)]
        if not alive:
            return


# --------------------------------------------------------------------------------------------
# OpenSSH


_sshd_version: tuple[int, int] | None = None


def _openssh_version() -> tuple[int, int]:
    global _sshd_version
    if _sshd_version is None:
        import subprocess

        out = subprocess.run([SSHD, "-V"], capture_output=True, text=True, timeout=10)
        m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
        _sshd_version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return _sshd_version


def _sshd_config(tmp: Path, port: int, host_key_path: Path, authorized: Path) -> str:
    lines = [
        f"ListenAddress {LOOPBACK}",
        f"Port {port}",
        f"HostKey {host_key_path}",
        f"AuthorizedKeysFile {authorized}",
        f"PidFile {tmp / 'sshd.pid'}",
        "UsePAM no",
        "StrictModes no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "AllowStreamLocalForwarding yes",
        "AllowTcpForwarding yes",
        "X11Forwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "LogLevel ERROR",
        "ClientAliveInterval 5",
        "MaxSessions 100",
        "MaxStartups 100",
        f"SetEnv PATH={SESSION_PATH}",
        "Subsystem sftp internal-sftp",
    ]
    if _openssh_version() >= (9, 8):
        # Reconnect/cut tests look like abuse to the 9.8+ penalty system.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def openssh(tmp: Path) -> AsyncIterator[SSHEndpoint]:
    """Run a real OpenSSH sshd (foreground child) on a free loopback port."""
    if not os.path.exists(SSHD):
        raise FileNotFoundError(f"{SSHD} is not installed (apt-get install openssh-server)")
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
    host_key, host_key_path, _client, client_key_path, authorized = _write_keys(tmp)
    config = tmp / "sshd_config"
    log_path = tmp / "sshd.log"

    proc: asyncio.subprocess.Process | None = None
    port = 0
    last_error = ""
    for _attempt in range(5):  # free_port() is racy; retry on "Address already in use"
        port = free_port()
        config.write_text(_sshd_config(tmp, port, host_key_path, authorized))
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                SSHD,
                "-D",
                "-e",
                "-f",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        ok, last_error = await _wait_sshd(proc, port, log_path)
        if ok:
            break
        await _stop_sshd(proc)
        proc = None
        if "already in use" not in last_error:
            break
    if proc is None:
        raise RuntimeError(f"sshd did not start on {LOOPBACK}:{port}: {last_error}")

    def session_pids() -> list[int]:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        out = []
        for k in kids:
            with contextlib.suppress(psutil.Error):
                if k.name() != "sshd" and k.status() != psutil.STATUS_ZOMBIE:
                    out.append(k.pid)
        return out

    try:
        endpoint = SSHEndpoint(
            host=LOOPBACK,
            port=port,
            user=_current_user(),
            client_key=client_key_path,
            known_hosts=_write_known_hosts(tmp, port, host_key),
            host_key_fingerprint=host_key.get_fingerprint(),
            host_public_key=_public_line(host_key),
            kind="openssh",
            server_pid=proc.pid,
            log_path=log_path,
            _session_pids=session_pids,
        )
        yield endpoint
    finally:
        await _stop_sshd(proc)


async def _wait_sshd(proc: asyncio.subprocess.Process, port: int, log_path: Path) -> tuple[bool, str]:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            return False, (
                f"sshd exited with status {proc.returncode}; stderr:\n{log_path.read_text(errors='replace')}"
            )
        try:
            banner = await _read_banner(LOOPBACK, port, 1.0)
        except (TimeoutError, OSError) as e:
            last = repr(e)
        else:
            if banner.startswith(b"SSH-"):
                return True, ""
            last = f"unexpected banner {banner!r}"
        await asyncio.sleep(0.02)
    return False, (f"timed out after {START_TIMEOUT}s ({last}); sshd stderr:\n{log_path.read_text(errors='replace')}")


async def _stop_sshd(proc: asyncio.subprocess.Process) -> None:
    # Killing the listener does not end existing connections or their sessions, so
    # collect the whole tree first (sessions call setsid(), killpg would miss them).
    try:
        tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    others = [p for p in tree if p.pid != proc.pid]
    if others:
        await asyncio.to_thread(_kill_tree, others)
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# --------------------------------------------------------------------------------------------
# asyncssh server


class _AsyncsshKit:
    """Shared state of one asyncssh test server: live connections and session subprocesses."""

    def __init__(self) -> None:
        self.conns: set[asyncssh.SSHServerConnection] = set()
        self.procs: set[asyncio.subprocess.Process] = set()
        self.kill_grace = 1.0
        path = [d for d in os.environ.get("PATH", "").split(":") if d]
        path += [d for d in SESSION_PATH.split(":") if d not in path]
        self.env = dict(os.environ, PATH=":".join(path))
        self.home = pwd.getpwuid(os.getuid()).pw_dir

    def server_factory(self) -> asyncssh.SSHServer:
        kit = self

        class _Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                self._conn = conn
                kit.conns.add(conn)

            def connection_lost(self, exc: Exception | None) -> None:
                kit.conns.discard(self._conn)

            def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
                return True  # direct-tcpip to anywhere

            def unix_connection_requested(self, dest_path: str):
                return True  # direct-streamlocal@openssh.com to any socket path

        return _Server()

    async def kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the session's process group, SIGKILL whatever is left after a grace."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            if sig == signal.SIGTERM and proc.returncode is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), self.kill_grace)
        await proc.wait()

    def session_pids(self) -> list[int]:
        groups = {p.pid for p in self.procs}  # each session runs in its own process group
        if not groups:
            return []
        out = []
        for q in psutil.process_iter(["status"]):
            if _pgid(q.pid) in groups and q.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(q.pid)
        return sorted(out)

    async def handle_process(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command
        if process.subsystem:
            process.stderr.write(f"subsystem {process.subsystem!r} not supported\n".encode())
            process.exit(1)
            return
        argv = shlex.split(command) if command else [pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                cwd=self.home,
                start_new_session=True,
            )
        except OSError as e:
            with contextlib.suppress(Exception):
                process.stderr.write(f"{argv[0]}: {e.strerror}\n".encode())
                process.exit(127 if e.errno == errno.ENOENT else 126)
            return

        self.procs.add(proc)
        stdin_t = asyncio.create_task(_pump_ssh_to_proc(process, proc))
        out_t = asyncio.create_task(_pump_proc_to_ssh(proc.stdout, process.stdout))
        err_t = asyncio.create_task(_pump_proc_to_ssh(proc.stderr, process.stderr))
        closed_t = asyncio.create_task(process.channel.wait_closed())
        exit_t = asyncio.create_task(proc.wait())
        try:
            await asyncio.wait({exit_t, closed_t}, return_when=asyncio.FIRST_COMPLETED)
            if not exit_t.done():
                # Channel (or the whole connection) went away first: don't leave agents behind.
                await self.kill(proc)
                return
            # Process exited: flush its output (unless the channel dies meanwhile), then report.
            pending = {out_t, err_t}
            while pending and not closed_t.done():
                done, _ = await asyncio.wait(pending | {closed_t}, return_when=asyncio.FIRST_COMPLETED)
                pending -= done
            if closed_t.done():
                return
            rc = proc.returncode
            with contextlib.suppress(Exception):
                if rc is not None and rc < 0:
                    try:
                        name = signal.Signals(-rc).name[3:]
                    except ValueError:
                        name = "KILL"
                    process.exit_with_signal(name)
                else:
                    process.exit(rc or 0)
        finally:
            for t in (stdin_t, out_t, err_t, closed_t, exit_t):
                t.cancel()
            if proc.returncode is None:
                await self.kill(proc)
            self.procs.discard(proc)

    async def close(self) -> None:
        for conn in list(self.conns):
            conn.close()
        for conn in list(self.conns):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)
        procs = [p for p in self.procs if p.returncode is None]
        await asyncio.gather(*(self.kill(p) for p in procs), return_exceptions=True)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


async def _pump_ssh_to_proc(process: asyncssh.SSHServerProcess, proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    try:
        while True:
            try:
                data = await process.stdin.read(65536)
            except asyncssh.SignalReceived as exc:
                sig = getattr(signal, "SIG" + exc.signal, None)
                if sig is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                continue
            except (asyncssh.TerminalSizeChanged, asyncssh.BreakReceived):
                continue
            if not data:
                break
            proc.stdin.write(data)
            await proc.stdin.drain()
    except (OSError, asyncssh.Error, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()  # EOF to the subprocess


async def _pump_proc_to_ssh(src: asyncio.StreamReader, dst: asyncssh.SSHWriter) -> None:
    try:
        while True:
            data = await src.read(65536)
            if not data:
                return
            dst.write(data)
            await dst.drain()
    except (OSError, asyncssh.Error):
        pass


@contextlib.asynccontextmanager
async def asyncssh_server(tmp: Path) -> AsyncIterator[SSHEndpoint]:
    """Run an in-process asyncssh server on a free loopback port."""
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    host_key, _hkp, _client, client_key_path, authorized = _write_keys(tmp)
    kit = _AsyncsshKit()
    acceptor = await asyncssh.create_server(
        kit.server_factory,
        LOOPBACK,
        0,
        server_host_keys=[host_key],
        authorized_client_keys=str(authorized),
        process_factory=kit.handle_process,
        encoding=None,  # bytes end to end; the client picks its own encoding
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
        login_timeout=30,
    )
    port = acceptor.get_port()
    endpoint = SSHEndpoint(
        host=LOOPBACK,
        port=port,
        user=_current_user(),
        client_key=client_key_path,
        known_hosts=_write_known_hosts(tmp, port, host_key),
        host_key_fingerprint=host_key.get_fingerprint(),
        host_public_key=_public_line(host_key),
        kind="asyncssh",
        server_pid=None,
        _session_pids=kit.session_pids,
    )
    try:
        yield endpoint
    finally:
        acceptor.close()  # stops listening only; live connections stay open ...
        await acceptor.wait_closed()
        await kit.close()  # ... so close them (and their subprocesses) ourselves


# --------------------------------------------------------------------------------------------
# cuttable TCP proxy


class _Half(asyncio.Protocol):
    """One socket of a proxied connection; forwards to its peer."""

    def __init__(self, proxy: CuttableProxy, pair: _Pair) -> None:
        self.proxy = proxy
        self.pair = pair
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending = bytearray()  # bytes held back (paused / peer not connected yet)
        self.eof = False  # EOF received, not yet forwarded
        self.lost = False
        self.write_blocked = False  # our transport's write buffer is full

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()  # reading is enabled by update_reading() once linked

    def data_received(self, data: bytes) -> None:
        self.pending += data
        self.pair.flush()

    def eof_received(self) -> bool:
        self.eof = True
        self.pair.flush()
        return True  # keep the transport open for half-close

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.pair.half_lost(self)

    def pause_writing(self) -> None:
        self.write_blocked = True
        self.pair.update_reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self.pair.update_reading()

    # helpers
    def set_reading(self, want: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if want and not t.is_reading():
            t.resume_reading()
        elif not want and t.is_reading():
            t.pause_reading()


class _Pair:
    def __init__(self, proxy: CuttableProxy) -> None:
        self.proxy = proxy
        self.client = _Half(proxy, self)
        self.server: _Half | None = None
        self.connect_task: asyncio.Task | None = None
        self.closed = False

    def halves(self) -> list[_Half]:
        return [h for h in (self.client, self.server) if h is not None]

    @property
    def linked(self) -> bool:
        return self.server is not None and self.server.transport is not None

    def update_reading(self) -> None:
        for h in self.halves():
            peer = h.peer
            want = (
                self.linked
                and not self.proxy.paused
                and not self.closed
                and peer is not None
                and not peer.write_blocked
                and not peer.lost
            )
            h.set_reading(want)

    def flush(self) -> None:
        """Forward held-back bytes/EOF/close in both directions, unless paused."""
        if self.proxy.paused or not self.linked or self.closed:
            self.update_reading()
            return
        for h in self.halves():
            peer = h.peer
            assert peer is not None and peer.transport is not None
            if h.pending and not peer.lost:
                peer.transport.write(bytes(h.pending))
            h.pending.clear()
            if h.eof and not peer.lost:
                h.eof = False
                with contextlib.suppress(OSError, RuntimeError):
                    if peer.transport.can_write_eof():
                        peer.transport.write_eof()
            if h.lost and not peer.lost and not peer.transport.is_closing():
                peer.transport.close()  # graceful: write buffer is flushed first
        self.update_reading()

    def half_lost(self, half: _Half) -> None:
        if self.server is None:  # client left before the upstream connection existed
            if self.connect_task is not None:
                self.connect_task.cancel()
        elif not all(h.lost for h in self.halves()):
            self.flush()  # forwards the close to the peer (deferred while paused)
            return
        self.closed = True
        self.proxy._pairs.discard(self)

    def abort(self, rst: bool) -> None:
        self.closed = True
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        for h in self.halves():
            t = h.transport
            if t is None:
                continue
            if rst:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        self.proxy._pairs.discard(self)


class CuttableProxy:
    """A loopback TCP proxy in front of ``(target_host, target_port)`` for fault injection.

    * ``cut()``     -- abort every open connection (RST by default); the listener stays up.
    * ``pause()``   -- black-hole: stop forwarding in both directions, close nothing.
    * ``resume()``  -- forward again (held-back bytes are delivered).
    * ``stop_listening()`` / ``start_listening()`` -- refuse new connections (host down) and
      accept again on the same port.
    """

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = LOOPBACK, listen_port: int = 0
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.paused = False
        self.accepted = 0  # connections accepted since start
        self._pairs: set[_Pair] = set()
        self._server: asyncio.AbstractServer | None = None

    @property
    def connections(self) -> int:
        """Currently open proxied connections."""
        return len(self._pairs)

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> CuttableProxy:
        await self.start_listening()
        return self

    async def start_listening(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.listen_host, self.listen_port, reuse_address=True)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        """Close the listener (new connections are refused); open connections are untouched."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1)

    def _accept(self) -> _Half:
        self.accepted += 1
        pair = _Pair(self)
        self._pairs.add(pair)
        pair.connect_task = asyncio.get_running_loop().create_task(self._connect(pair))
        return pair.client

    async def _connect(self, pair: _Pair) -> None:
        loop = asyncio.get_running_loop()
        server_half = _Half(self, pair)
        try:
            await loop.create_connection(lambda: server_half, self.target_host, self.target_port)
        except (OSError, asyncio.CancelledError):
            if pair.client.transport is not None:
                pair.client.transport.abort()
            pair.closed = True
            self._pairs.discard(pair)
            return
        if pair.closed:
            if server_half.transport is not None:
                server_half.transport.abort()
            return
        pair.server = server_half
        server_half.peer, pair.client.peer = pair.client, server_half
        pair.flush()

    def cut(self, rst: bool = True) -> int:
        """Abort every open connection; returns how many were cut."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.abort(rst)
        return len(pairs)

    def pause(self) -> None:
        self.paused = True
        for pair in list(self._pairs):
            pair.update_reading()

    def resume(self) -> None:
        self.paused = False
        for pair in list(self._pairs):
            pair.flush()

    async def close(self) -> None:
        await self.stop_listening()
        self.cut(rst=False)
        await asyncio.sleep(0)  # let transports finish closing

    async def __aenter__(self) -> CuttableProxy:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()


# --------------------------------------------------------------------------------------------
# pytest fixtures


@pytest_asyncio.fixture(loop_scope="session")
async def openssh_server(tmp_path: Path) -> AsyncIterator[SSHEndpoint]:
    """A real OpenSSH sshd on a free loopback port (skipped if sshd is not installed)."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} not found: install openssh-server to run real-sshd tests")
    async with openssh(tmp_path / "openssh") as endpoint:
        yield endpoint


@pytest_asyncio.fixture(loop_scope="session")
async def asyncssh_ssh_server(tmp_path: Path) -> AsyncIterator[SSHEndpoint]:
    """An in-process asyncssh server running commands as real subprocesses."""
    async with asyncssh_server(tmp_path / "asyncssh") as endpoint:
        yield endpoint
