"""The agent of a host with no agent installed: `hostctl --uri qemu+ssh://... agent --stdio` as a child process of
this machine, spoken to over its stdin/stdout like an agent over SSH, reaching the host over libvirt's SSH transport.

libvirt's `ssh` transport runs the OpenSSH client with the arguments it chooses and a cleared environment; its URI
parameter `command` names the program to run instead. hostctl points it at a small wrapper (written for each host,
mode 0700) that runs OpenSSH with the site's settings first on the command line, where OpenSSH takes the first value
of each option: strict host key checking against `defaults.known_hosts` only, never a prompt (BatchMode), no
connection sharing, timeouts and keepalives. An unknown or changed key ends the child at once; its link then shows
one line naming the host and the key's fingerprint.

The child's stderr goes to `agent.log` in the host's state directory (with its audit log and elastic state); it
ends with the link: its stdin is closed, then SIGTERM, then SIGKILL, each after a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlsplit

import hostctl
from hostctl.client import hostkeys
from hostctl.client.site import Defaults, HostEntry
from hostctl.errors import HostctlError
from hostctl.wire import rpc

START_GRACE = 15.0  # on top of the request timeout: Python start-up, libvirt over SSH, the first read of the host
STOP_GRACE = 3.0  # from closing its stdin to SIGTERM, and from SIGTERM to SIGKILL, seconds
LOG_ROTATE = 1 << 20  # agent.log is moved to agent.log.1 past this size when an agent starts
_KEY_FAILED = "Host key verification failed"
_CHANGED = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|has changed and you have requested strict checking")
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]+")


class LocalAgentError(HostctlError):
    """The local agent of a host with no agent could not be started."""


def state_root() -> Path:
    """`$XDG_STATE_HOME/dittotui/agentless` (usually `~/.local/state/dittotui/agentless`)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dittotui" / "agentless"


def state_dir(entry: HostEntry, root: Path | None = None) -> Path:
    """The host's own directory: its name and a digest of its URI (two sites may name different hosts alike)."""
    assert entry.uri is not None
    digest = hashlib.sha256(entry.uri.encode()).hexdigest()[:10]
    return (root or state_root()) / f"{entry.name}-{digest}"


def destination(uri: str) -> str:
    """`[user@]host[:port]` of an agentless URI: the host as SSH names it."""
    return urlsplit(uri).netloc


def _ssh_value(path: Path) -> str:
    """A path as one value of an OpenSSH `-o` option: quoted, with OpenSSH's `%` tokens escaped."""
    text = str(path).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{text}"'


def ssh_argv(ssh: str, defaults: Defaults) -> list[str]:
    """OpenSSH with the site's settings; libvirt's own arguments follow (the first value of an option wins)."""
    config = Path(defaults.ssh_config).expanduser()
    known_hosts = Path(defaults.known_hosts).expanduser()
    options = {
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": _ssh_value(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "KnownHostsCommand": "none",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "VerifyHostKeyDNS": "no",
        "BatchMode": "yes",
        "ControlMaster": "no",
        "ControlPath": "none",
        "PermitLocalCommand": "no",
        "ConnectTimeout": str(max(1, math.ceil(defaults.timeout))),
        "ServerAliveInterval": str(max(1, math.ceil(defaults.keepalive))),
        "ServerAliveCountMax": "3",
        "LogLevel": "ERROR",
    }
    argv = [ssh, "-F", str(config) if config.is_file() else "/dev/null"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return argv


def wrapper_text(python: str, argv: list[str]) -> str:
    """The program libvirt runs in place of `ssh`: exec OpenSSH with `argv` first, then libvirt's arguments."""
    if not python.startswith("/") or any(c.isspace() for c in python) or len(python) > 200:
        raise LocalAgentError(f"cannot run {python!r} from a #! line (a path with no spaces is needed)")
    return (
        f"#!{python} -I\n"
        '"""Written by hostctl for a host with no agent: OpenSSH with strict host key checking (see hostctl.client.'
        'local_agent). Rewritten at every connection."""\n'
        "import os\nimport sys\n\n"
        f"ARGV = {argv!r}\n"
        "os.execv(ARGV[0], ARGV + sys.argv[1:])\n"
    )


def agent_uri(uri: str, wrapper: Path) -> str:
    """The site's URI with `command` (the wrapper) and `no_tty=1` (never a prompt) added for libvirt."""
    parts = urlsplit(uri)
    extra = f"command={quote(str(wrapper), safe='/')}&no_tty=1"
    query = f"{parts.query}&{extra}" if parts.query else extra
    return parts._replace(query=query).geturl()


def agent_argv(uri: str, wrapper: Path, audit: Path, python: str = sys.executable) -> list[str]:
    """The child: this tree's hostctl agent on stdin/stdout for `uri`, its audit log (and elastic state) in `audit`."""
    return [python, "-m", "hostctl", "--uri", agent_uri(uri, wrapper), "agent", "--stdio", "--audit", str(audit)]


def _write_private(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` atomically (a reader sees the old or the new file), owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class LocalAgent:
    """One run of the agent child of an agentless host: start, its streams, its exit reason, stop."""

    def __init__(self, entry: HostEntry, defaults: Defaults, *, root: Path | None = None) -> None:
        assert entry.agentless and entry.uri is not None
        self.entry = entry
        self.uri = entry.uri
        self.defaults = defaults
        self.dir = state_dir(entry, root)
        self.log = self.dir / "agent.log"
        self.wrapper = self.dir / "ssh"
        self.audit = self.dir / "audit.jsonl"
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._log_from = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def argv(self) -> list[str]:
        return agent_argv(self.uri, self.wrapper, self.audit)

    def prepare(self) -> None:
        """The state directory, the OpenSSH wrapper and the log; LocalAgentError saying what is missing."""
        known_hosts = Path(self.defaults.known_hosts).expanduser()
        if not known_hosts.is_file():
            raise LocalAgentError(f"known_hosts file {known_hosts} does not exist; host keys are always verified")
        ssh = shutil.which("ssh")
        if ssh is None:
            raise LocalAgentError("the OpenSSH client (ssh) is not installed; libvirt's qemu+ssh transport runs it")
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
            _write_private(self.wrapper, wrapper_text(sys.executable, ssh_argv(ssh, self.defaults)), 0o700)
            if self.log.is_file() and self.log.stat().st_size > LOG_ROTATE:
                os.replace(self.log, self.log.with_name("agent.log.1"))
        except OSError as e:
            raise LocalAgentError(f"cannot prepare {self.dir}: {e.strerror or e}") from None

    async def start(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Start the child; its stdout and stdin, for the JSON-RPC client."""
        self.prepare()
        env = dict(os.environ)
        tree = str(Path(hostctl.__file__).resolve().parents[1])  # the child runs this very hostctl
        env["PYTHONPATH"] = os.pathsep.join(p for p in (tree, env.get("PYTHONPATH", "")) if p)
        self._log_file = open(self.log, "ab")  # noqa: SIM115 (closed by stop)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._log_file.write(f"--- {started} hostctl agent for {self.uri} (host {self.entry.name})\n".encode())
        self._log_file.flush()
        self._log_from = self._log_file.tell()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=self._log_file,
                env=env,
                start_new_session=True,  # a ^C meant for the console is not the agent's; stop() ends it
                limit=rpc.MAX_LINE,
            )
        except OSError as e:
            await self.stop()
            raise LocalAgentError(f"cannot start the local agent: {e.strerror or e}") from None
        assert self._proc.stdout is not None and self._proc.stdin is not None
        return self._proc.stdout, self._proc.stdin

    async def exit_reason(self, wait: float = 2.0) -> str | None:
        """Why the child ended (waiting up to `wait` seconds for it to end), or None while it runs."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await proc.wait()
        if proc.returncode is None:
            return None
        text = self._stderr()
        if _KEY_FAILED in text:
            return await self._key_refusal(text)
        status = f"status {proc.returncode}" if proc.returncode >= 0 else f"signal {-proc.returncode}"
        message = _last_error(text).replace(agent_uri(self.uri, self.wrapper), self.uri) or "no message"
        return f"its local agent exited ({status}): {message} (log: {self.log})"

    async def stop(self) -> None:
        """End the child (stdin closed, then SIGTERM, then SIGKILL) and wait for it; never leaves it running."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.returncode is None:
                await _end(proc)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def _stderr(self) -> str:
        """What the child wrote to its log (bounded: the last 64 KiB of this run)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(max(self._log_from, f.seek(0, os.SEEK_END) - 65536))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def _key_refusal(self, text: str) -> str:
        dest = destination(self.uri)
        shown = _FINGERPRINT.search(text)  # OpenSSH names the offered key only when it differs from a known one
        fingerprint = (
            shown.group(0)
            if shown
            else await hostkeys.fingerprint_of(
                dest, ssh_config=Path(self.defaults.ssh_config).expanduser(), timeout=self.defaults.timeout
            )
        )
        return hostkeys.refusal_line(
            dest,
            changed=bool(_CHANGED.search(text)),
            fingerprint=fingerprint.rstrip("."),
            known_hosts=Path(self.defaults.known_hosts).expanduser(),
        )


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Close the child's stdin (the agent leaves when its peer does), then SIGTERM, then SIGKILL."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        for step in (None, proc.terminate, proc.kill):
            if step is not None:
                with contextlib.suppress(ProcessLookupError):
                    step()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE):
                    await proc.wait()
                    return
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise


def _last_error(text: str) -> str:
    """The child's error as one line: from its last `hostctl: ` line on (the message may span lines); else the
    exception that ended it (the first traceback's last line: later ones are noise from its shutdown); else its last
    line."""
    lines = [line for line in text.replace("\r", "").splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("hostctl: ")]
    if starts:
        message = " ".join(lines[starts[-1] :])[len("hostctl: ") :]
    else:
        after = next((i for i, line in enumerate(lines) if line.startswith("Traceback ")), None)
        raised = (line for line in lines[after + 1 :] if not line[0].isspace()) if after is not None else iter(())
        message = next(raised, lines[-1] if lines else "")
    return " ".join(message.split())
