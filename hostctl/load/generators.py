"""Load runs with guard rails: only services of the inventory, within the site's bounds, from a chosen load host.

A load host is this machine or a site load generator reached over SSH (host key verified). There wrk's argv is
joined with `shlex.join` only at the SSH boundary; its script is copied to a temporary file first and removed
afterwards. Cancelling a run kills wrk on whichever host it runs. Only a complete, successful run is recorded in
the run history.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import asyncssh

from hostctl.client.link import connect_ssh, describe
from hostctl.client.site import Defaults, LoadBounds, LoadGenerator, Site
from hostctl.errors import HostctlError
from hostctl.load import wrk
from hostctl.load.runs import RunLog, RunRecord
from hostctl.load.wrk import Params, Progress, WrkResult
from hostctl.wire.model import Service

THIS_MACHINE = "this machine"
CLEANUP_TIMEOUT = 5.0
_PRINT_PID_THEN_EXEC = 'echo "$$"; exec "$@"'


@dataclass(frozen=True)
class Target:
    """A service load may be aimed at."""

    host: str
    cvm: str
    service: str
    url: str

    @property
    def key(self) -> str:
        return f"{self.host}/{self.cvm}/{self.service}"


class Targets:
    """The service URLs of the inventory: each host's services in the site file, or, for a host whose entry
    lists none, the services its agent reports. Nothing else is a target."""

    def __init__(self, site: Site, reported: Mapping[str, Iterable[Service]] | None = None) -> None:
        reported = reported or {}
        self._by_url: dict[str, Target] = {}
        for entry in site.hosts:
            services = entry.services or reported.get(entry.name, ())
            for s in services:
                self._by_url.setdefault(s.url, Target(entry.name, s.cvm, s.name, s.url))

    def __iter__(self) -> Iterator[Target]:
        return iter(self._by_url.values())

    def resolve(self, url: str) -> Target:
        """The inventory's target at `url`; HostctlError for any other address."""
        try:
            return self._by_url[url]
        except KeyError:
            raise HostctlError(
                f"target {url!r} is not a service of the site inventory; refused "
                "(load runs only against listed services)"
            ) from None


def check_bounds(params: Params, bounds: LoadBounds) -> None:
    """HostctlError naming the first parameter beyond its bound in the site's `[load]` table."""
    for name, value, bound, key in (
        ("threads", params.threads, bounds.max_threads, "max_threads"),
        ("connections", params.connections, bounds.max_connections, "max_connections"),
        ("duration", params.duration_s, bounds.max_duration_s, "max_duration_s"),
        ("timeout", params.timeout_s, bounds.max_timeout_s, "max_timeout_s"),
    ):
        if value > bound:
            raise HostctlError(f"{name} = {value} is above the bound {bound} ([load] {key} in the site file); refused")


class LocalLoadHost:
    """wrk on this machine."""

    def __init__(self, name: str = THIS_MACHINE, binary: str = "wrk") -> None:
        self.name = name
        self.binary = binary

    async def run(self, url: str, params: Params, progress: Progress | None = None) -> WrkResult:
        return await wrk.run(url, params, progress=progress, binary=self.binary)


class SSHLoadHost:
    """wrk on a site load generator, over SSH."""

    def __init__(self, generator: LoadGenerator, defaults: Defaults) -> None:
        assert generator.ssh is not None
        self.generator = generator
        self.defaults = defaults
        self.name = generator.name

    @property
    def where(self) -> str:
        return f"load host {self.name} ({self.generator.ssh})"

    async def run(self, url: str, params: Params, progress: Progress | None = None) -> WrkResult:
        try:
            conn = await connect_ssh(self.generator.ssh or "", self.defaults)
        except HostctlError as e:  # known_hosts missing, or the host key is not trusted
            raise HostctlError(f"{self.where}: {e}; nothing ran") from None
        except (OSError, asyncssh.Error, TimeoutError) as e:
            raise HostctlError(f"{self.where} is unreachable: {describe(e)}; nothing ran") from None
        try:
            path = await self._upload(conn, wrk.script_text(params.script))
            try:
                completed = await self._wrk(conn, params.args(path, url), params, progress)
            finally:
                with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
                    async with asyncio.timeout(CLEANUP_TIMEOUT):
                        await conn.run(shlex.join(["rm", "-f", path]))
        except (OSError, asyncssh.Error) as e:
            raise HostctlError(
                f"{self.where}: connection lost during the run: {describe(e)}; nothing recorded"
            ) from None
        finally:
            conn.close()
        killed_by = completed.exit_signal[0] if completed.exit_signal else None
        wrk.check_exit(self.where, completed.exit_status, killed_by, str(completed.stderr or ""))
        return wrk.parse(str(completed.stdout or ""))

    async def _upload(self, conn: asyncssh.SSHClientConnection, script: str) -> str:
        """Copy `script` to a fresh temporary file on the load host; its path."""
        made = await conn.run(shlex.join(["mktemp", "-t", "hostctl-wrk.XXXXXXXX"]))
        path = str(made.stdout or "").strip()
        if made.exit_status != 0 or not path:
            raise HostctlError(f"{self.where}: cannot make a temporary file: {str(made.stderr or '').strip()}")
        copied = await conn.run(shlex.join(["dd", f"of={path}"]), input=script)
        if copied.exit_status != 0:
            raise HostctlError(f"{self.where}: cannot write {path}: {str(copied.stderr or '').strip()}")
        return path

    async def _wrk(
        self, conn: asyncssh.SSHClientConnection, args: list[str], params: Params, progress: Progress | None
    ) -> asyncssh.SSHCompletedProcess:
        # `sh` prints its pid and execs wrk in place (same pid), so a cancelled run can be killed by pid even where
        # sshd refuses signal requests (e.g. for root). wrk's argv is passed as arguments, never put in the script.
        command = shlex.join(["sh", "-c", _PRINT_PID_THEN_EXEC, "sh", self.generator.wrk, *args])
        process = await conn.create_process(command, stdin=asyncssh.DEVNULL, encoding="utf-8", errors="replace")
        pid = ""
        waiting: asyncio.Future[asyncssh.SSHCompletedProcess] | None = None
        try:
            async with asyncio.timeout(params.duration_s + params.timeout_s + wrk.GRACE_S):
                pid = (await process.stdout.readline()).strip()
                waiting = asyncio.ensure_future(process.wait())
                await wrk.watch(waiting, params.duration_s, progress)
                return await waiting
        except TimeoutError:
            raise HostctlError(f"wrk on {self.where} did not finish in time; killed, nothing recorded") from None
        finally:
            if waiting is None or not waiting.done():  # cancelled or timed out: kill wrk there, drop the channel
                with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
                    async with asyncio.timeout(CLEANUP_TIMEOUT):
                        if not pid:  # cancelled before its pid line was read: wrk may be running all the same
                            pid = (await process.stdout.readline()).strip()
                        if pid.isdigit():
                            await conn.run(shlex.join(["kill", "-KILL", pid]))
                process.close()
                if waiting is not None:
                    waiting.cancel()


LoadHost = LocalLoadHost | SSHLoadHost


def load_host(site: Site, name: str | None = None) -> LoadHost:
    """This machine (None or THIS_MACHINE), or the site's load generator called `name`."""
    if name is None or name == THIS_MACHINE:
        return LocalLoadHost()
    generator = site.load_generator(name)
    if generator.ssh is None:
        return LocalLoadHost(generator.name, generator.wrk)
    return SSHLoadHost(generator, site.defaults)


def load_hosts(site: Site) -> list[str]:
    """The names a load may come from: this machine, then the site's load generators."""
    return [THIS_MACHINE, *(g.name for g in site.load_generators)]


async def run_load(
    site: Site,
    targets: Targets,
    url: str,
    params: Params,
    *,
    host: LoadHost | None = None,
    progress: Progress | None = None,
    history: RunLog | None = None,
    why: str = "",
    labels: dict[str, str] | None = None,
) -> RunRecord:
    """Check the target and bounds, run wrk from `host` (default: this machine), record a successful run."""
    target = targets.resolve(url)
    check_bounds(params, site.load)
    host = host or LocalLoadHost()
    started = time.time()
    result = await host.run(target.url, params, progress)
    record = RunRecord(
        host=target.host,
        cvm=target.cvm,
        service=target.service,
        url=target.url,
        load_host=host.name,
        script=params.script,
        threads=params.threads,
        connections=params.connections,
        duration_s=params.duration_s,
        timeout_s=params.timeout_s,
        started=started,
        result=result,
        why=why,
        labels=dict(labels or {}),
    )
    if history is not None:
        history.append(record)
    return record
