"""A real OpenSSH sshd (a foreground child) on a free loopback port: key-only auth, TCP and unix-socket
(direct-streamlocal) forwarding allowed. Stopping it kills every session it started, even ones that called setsid()."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil

from tests.support.ssh import (
    LOOPBACK,
    SESSION_PATH,
    SSHEndpoint,
    current_user,
    free_port,
    public_line,
    write_keys,
    write_known_hosts,
)

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 10.0


@functools.cache
def _openssh_version() -> tuple[int, int]:
    out = subprocess.run([SSHD, "-V"], capture_output=True, text=True, timeout=10, check=False)  # prints, exits 1
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


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
    host_key, host_key_path, _client, client_key_path, authorized = write_keys(tmp)
    config = tmp / "sshd_config"
    log_path = tmp / "sshd.log"

    proc: asyncio.subprocess.Process | None = None
    port = 0
    last_error = ""
    for _attempt in range(5):  # free_port() is racy; retry on "Address already in use"
        port = free_port()
        config.write_text(_sshd_config(tmp, port, host_key_path, authorized))
        proc, ok, last_error = await spawn_sshd(config, port, log_path)
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
            user=current_user(),
            client_key=client_key_path,
            known_hosts=write_known_hosts(tmp, port, host_key),
            host_key_fingerprint=host_key.get_fingerprint(),
            host_public_key=public_line(host_key),
            kind="openssh",
            server_pid=proc.pid,
            log_path=log_path,
            _session_pids=session_pids,
        )
        yield endpoint
    finally:
        await _stop_sshd(proc)


async def spawn_sshd(
    config: Path, port: int, log_path: Path, *, append: bool = False
) -> tuple[asyncio.subprocess.Process, bool, str]:
    """sshd in the foreground (its own session) on `config`, its output to `log_path`: (the process, whether it
    listens on `port`, why not)."""
    with log_path.open("ab" if append else "wb") as log:
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
    ok, error = await _wait_sshd(proc, port, log_path)
    return proc, ok, error


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
        others = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        others = []
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    if others:
        await asyncio.to_thread(_kill_tree, others)
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


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
