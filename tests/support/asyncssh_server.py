"""An in-process asyncssh server on a free loopback port that runs each exec request as a real subprocess
(`shlex.split` of the command, no shell) and forwards direct-tcpip and direct-streamlocal channels. A session's
processes are killed when its channel closes (e.g. the connection was cut), so no agents are left behind."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import shlex
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import psutil

from tests.support.ssh import (
    LOOPBACK,
    SESSION_PATH,
    SSHEndpoint,
    current_user,
    public_line,
    write_keys,
    write_known_hosts,
)


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
    host_key, _hkp, _client, client_key_path, authorized = write_keys(tmp)
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
        user=current_user(),
        client_key=client_key_path,
        known_hosts=write_known_hosts(tmp, port, host_key),
        host_key_fingerprint=host_key.get_fingerprint(),
        host_public_key=public_line(host_key),
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
