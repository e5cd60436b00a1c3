"""A real OpenSSH sshd that can be stopped and started again on the same port with the same host key: an sshd
restart under a live link, as a host's operator would do it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.support.openssh import SSHD, _sshd_config, _stop_sshd, spawn_sshd
from tests.support.ssh import LOOPBACK, SSHEndpoint, current_user, free_port, public_line, write_keys, write_known_hosts


class RestartableSSHD:
    """`sshd -D` on one loopback port for its whole life; `stop()` ends the listener and every session."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        host_key, self._host_key_path, _client, client_key, self._authorized = write_keys(tmp)
        self.port = free_port()
        self.endpoint = SSHEndpoint(
            host=LOOPBACK,
            port=self.port,
            user=current_user(),
            client_key=client_key,
            known_hosts=write_known_hosts(tmp, self.port, host_key),
            host_key_fingerprint=host_key.get_fingerprint(),
            host_public_key=public_line(host_key),
            kind="openssh",
            log_path=tmp / "sshd.log",
        )
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, attempts: int = 20) -> None:
        """Start listening (again); retried while the port is still held by the last run's sockets."""
        if not os.path.exists(SSHD):
            raise FileNotFoundError(f"{SSHD} is not installed (apt-get install openssh-server)")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        config = self.tmp / "sshd_config"
        config.write_text(_sshd_config(self.tmp, self.port, self._host_key_path, self._authorized))
        log_path = self.endpoint.log_path
        assert log_path is not None
        error = ""
        for _ in range(attempts):
            proc, ok, error = await spawn_sshd(config, self.port, log_path, append=True)
            if ok:
                self._proc = proc
                self.endpoint.server_pid = proc.pid
                return
            await _stop_sshd(proc)
            if "already in use" not in error:
                break
            await asyncio.sleep(0.1)
        raise RuntimeError(f"sshd did not start on {LOOPBACK}:{self.port}: {error}")

    async def stop(self) -> None:
        """Stop the listener and kill every session it started."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await _stop_sshd(proc)

    async def restart(self) -> None:
        await self.stop()
        await self.start()
