"""The SSH test kit against real clients: asyncssh and the OpenSSH ``ssh`` binary."""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import asyncssh
import psutil
import pytest

from tests.support.asyncssh_server import asyncssh_server
from tests.support.openssh import SSHD, openssh
from tests.support.proxy import CuttableProxy
from tests.support.ssh import SSHEndpoint
from tests.support.waiting import until

PY = sys.executable


def py(code: str) -> str:
    return shlex.join([PY, "-c", code])


# A stand-in for the remote agent: runs until its stdin closes.
AGENT_UNTIL_EOF = py("import sys; print('up', flush=True); sys.stdin.read()")
# A stubborn agent: ignores stdin, only dies when killed.
AGENT_FOREVER = py("import time; print('up', flush=True); time.sleep(300)")


@pytest.fixture(params=["openssh", "asyncssh"])
def server(request) -> SSHEndpoint:
    name = "openssh_server" if request.param == "openssh" else "asyncssh_ssh_server"
    return request.getfixturevalue(name)


@pytest.fixture
def sock_dir():
    # unix socket paths are limited to ~108 bytes; pytest's tmp_path can be longer
    d = tempfile.mkdtemp(prefix="sk", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


eventually = functools.partial(until, timeout=5.0, interval=0.05)


class Watch(asyncssh.SSHClient):
    """Client that records how the connection ended."""

    def __init__(self) -> None:
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def watched(ep: SSHEndpoint, **kw):
    opts = ep.connect_options(**kw)
    return await asyncssh.create_connection(Watch, **opts)


def _pids_alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


# --------------------------------------------------------------------------------------------
# the endpoint itself


def test_endpoint_files(server: SSHEndpoint):
    line = server.known_hosts.read_text()
    assert line == f"[127.0.0.1]:{server.port} {server.host_public_key}\n"
    assert line.count("\n") == 1 and " ssh-ed25519 AAAA" in line
    assert server.host == "127.0.0.1"
    key = asyncssh.import_public_key(server.host_public_key)
    assert key.get_fingerprint() == server.host_key_fingerprint
    assert server.host_key_fingerprint.startswith("SHA256:")
    assert oct(server.client_key.stat().st_mode & 0o777) == oct(0o600)
    asyncssh.read_private_key(str(server.client_key))  # OpenSSH format, no passphrase
    if server.kind == "openssh":
        assert psutil.pid_exists(server.server_pid)


# --------------------------------------------------------------------------------------------
# commands


async def test_run_python(server: SSHEndpoint):
    async with server.connect() as conn:
        assert conn.get_server_host_key().get_fingerprint() == server.host_key_fingerprint
        result = await conn.run(py("print(1+1)"), check=True)
        assert result.stdout.strip() == "2"
        path = (await conn.run(py("import os; print(os.environ['PATH'])"), check=True)).stdout
        for d in ("/usr/local/bin", "/usr/bin", "/bin"):
            assert d in path.strip().split(":")


async def test_exit_status_and_stderr(server: SSHEndpoint):
    async with server.connect() as conn:
        result = await conn.run(py("import sys; sys.stderr.write('boom'); sys.exit(3)"))
        assert result.exit_status == 3
        assert result.stderr == "boom"
        result = await conn.run(py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
        assert result.exit_signal is not None and result.exit_signal[0] == "KILL"


async def test_line_echo_round_trip(server: SSHEndpoint):
    async with server.connect() as conn:
        async with conn.create_process("cat") as proc:
            for i in range(3):
                proc.stdin.write(f"line {i}\n")
                assert await asyncio.wait_for(proc.stdout.readline(), 5) == f"line {i}\n"
            proc.stdin.write_eof()
            result = await asyncio.wait_for(proc.wait(), 5)
        assert result.exit_status == 0


async def test_binary_round_trip(server: SSHEndpoint):
    payload = bytes(range(256)) * 2048  # 512 KiB, exercises flow control both ways
    async with server.connect() as conn:
        result = await asyncio.wait_for(conn.run("cat", input=payload, encoding=None), 10)
    assert result.exit_status == 0 and result.stdout == payload


# --------------------------------------------------------------------------------------------
# host keys


async def test_unknown_host_key_refused(server: SSHEndpoint, tmp_path: Path):
    other = asyncssh.generate_private_key("ssh-ed25519")
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(
        f"[127.0.0.1]:{server.port} "
        f"{other.export_public_key().decode().split()[0]} "
        f"{other.export_public_key().decode().split()[1]}\n"
    )
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with server.connect(known_hosts=str(wrong)):
            pass
    # known_hosts entries are port specific: the right key under another port is no match
    wrong.write_text(server.known_hosts_line(port=server.port + 1))
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with server.connect(known_hosts=str(wrong)):
            pass


# --------------------------------------------------------------------------------------------
# direct-streamlocal (unix socket on the remote side)


async def test_direct_streamlocal(server: SSHEndpoint, sock_dir: Path):
    path = str(sock_dir / "agent.sock")

    async def echo(reader, writer):
        while line := await reader.readline():
            writer.write(b"echo:" + line)
            await writer.drain()
        writer.close()

    unix = await asyncio.start_unix_server(echo, path)
    try:
        async with server.connect() as conn:
            reader, writer = await conn.open_unix_connection(path)
            for msg in (b"hello\n", b"world\n"):
                writer.write(msg)
                assert await asyncio.wait_for(reader.readline(), 5) == b"echo:" + msg
            writer.close()
            # a missing socket is an open failure, not a hang
            with pytest.raises(asyncssh.ChannelOpenError):
                await asyncio.wait_for(conn.open_unix_connection(path + ".missing"), 5)
    finally:
        unix.close()
        await unix.wait_closed()


# --------------------------------------------------------------------------------------------
# CuttableProxy


async def test_proxy_cut_and_reconnect(server: SSHEndpoint):
    async with CuttableProxy(server.host, server.port) as proxy:
        via = server.for_port(proxy.listen_port)
        conn, client = await watched(via)
        proc = await conn.create_process(AGENT_UNTIL_EOF)
        assert await asyncio.wait_for(proc.stdout.readline(), 5) == "up\n"
        agents = await eventually(server.session_pids)
        assert proxy.connections == 1 and proxy.accepted == 1

        assert proxy.cut() == 1
        exc = await asyncio.wait_for(client.lost, 5)
        assert exc is not None  # lost (reset), not a clean close
        await asyncio.wait_for(conn.wait_closed(), 5)
        with pytest.raises((asyncssh.Error, OSError)):
            await conn.run("true")
        assert proxy.connections == 0
        # the server noticed too: the agent saw EOF (openssh) / was killed (asyncssh)
        await eventually(lambda: not _pids_alive(agents))

        async with via.connect() as again:
            assert (await again.run(py("print(1+1)"), check=True)).stdout.strip() == "2"
            assert proxy.connections == 1 and proxy.accepted == 2
        conn.close()


async def test_proxy_pause_resume(server: SSHEndpoint):
    async with CuttableProxy(server.host, server.port) as proxy:
        via = server.for_port(proxy.listen_port)
        async with via.connect() as conn:
            proxy.pause()
            task = asyncio.create_task(conn.run(py("print(1+1)")))
            done, _ = await asyncio.wait({task}, timeout=0.5)
            assert not done, "request went through a paused (black-holed) link"
            assert proxy.connections == 1
            proxy.resume()
            result = await asyncio.wait_for(task, 10)
            assert result.stdout.strip() == "2"

        # a handshake through a paused link hangs too, and completes after resume
        proxy.pause()
        # (asyncssh.connect() returns an awaitable context manager, not a coroutine)
        connecting = asyncio.ensure_future(via.connect())
        done, _ = await asyncio.wait({connecting}, timeout=0.5)
        assert not done
        proxy.resume()
        async with await asyncio.wait_for(connecting, 10) as conn:
            assert (await conn.run("true")).exit_status == 0


async def test_proxy_stop_and_start_listening(server: SSHEndpoint):
    async with CuttableProxy(server.host, server.port) as proxy:
        via = server.for_port(proxy.listen_port)
        async with via.connect() as conn:
            await proxy.stop_listening()
            with pytest.raises(OSError):  # ConnectionRefusedError: "host down"
                async with via.connect():
                    pass
            # already open connections are untouched
            assert (await conn.run("true")).exit_status == 0
        port = proxy.listen_port
        await proxy.start_listening()
        assert proxy.listen_port == port
        async with via.connect() as conn:
            assert (await conn.run("true")).exit_status == 0


# --------------------------------------------------------------------------------------------
# no agents left behind


async def test_asyncssh_kills_agent_when_channel_closes(asyncssh_ssh_server: SSHEndpoint):
    ep = asyncssh_ssh_server
    async with ep.connect() as conn:
        proc = await conn.create_process(AGENT_FOREVER)
        assert await asyncio.wait_for(proc.stdout.readline(), 5) == "up\n"
        pids = await eventually(ep.session_pids)
        proc.close()
        await eventually(lambda: not _pids_alive(pids))
        assert ep.session_pids() == []


async def test_asyncssh_kills_agent_when_connection_cut(asyncssh_ssh_server: SSHEndpoint):
    ep = asyncssh_ssh_server
    async with CuttableProxy(ep.host, ep.port) as proxy:
        conn = await ep.for_port(proxy.listen_port).connect()
        proc = await conn.create_process(AGENT_FOREVER)
        assert await asyncio.wait_for(proc.stdout.readline(), 5) == "up\n"
        pids = await eventually(ep.session_pids)
        proxy.cut()
        await eventually(lambda: not _pids_alive(pids))
        conn.close()


@pytest.mark.parametrize("kind", ["openssh", "asyncssh"])
async def test_teardown_kills_sessions(kind: str, tmp_path: Path):
    if kind == "openssh" and not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} not found")
    cm = openssh if kind == "openssh" else asyncssh_server
    async with cm(tmp_path) as ep:
        conn = await ep.connect()
        proc = await conn.create_process(AGENT_FOREVER)
        assert await asyncio.wait_for(proc.stdout.readline(), 5) == "up\n"
        pids = await eventually(ep.session_pids)
        sshd_pid = ep.server_pid
    assert _pids_alive(pids) == []
    if sshd_pid is not None:
        assert _pids_alive([sshd_pid]) == []
    await asyncio.wait_for(conn.wait_closed(), 5)


# --------------------------------------------------------------------------------------------
# the real OpenSSH client


async def test_openssh_client_against_sshd(openssh_server: SSHEndpoint, tmp_path: Path):
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH client (ssh) not installed")
    ep = openssh_server
    proc = await asyncio.create_subprocess_exec(
        *ep.ssh_argv("true"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()

    # the exact argv from the brief, too
    proc = await asyncio.create_subprocess_exec(
        "ssh",
        "-i",
        str(ep.client_key),
        "-o",
        f"UserKnownHostsFile={ep.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-p",
        str(ep.port),
        f"{ep.user}@127.0.0.1",
        shlex.join([PY, "-c", "print(1+1)"]),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "2"

    # and a host key mismatch is refused by the real client as well
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    argv = ep.ssh_argv("true")
    argv[argv.index(f"UserKnownHostsFile={ep.known_hosts}")] = f"UserKnownHostsFile={empty}"
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 255
    assert b"verification failed" in err or b"No ED25519 host key is known" in err, err
