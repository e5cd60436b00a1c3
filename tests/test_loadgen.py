"""Load runs with guard rails: inventory targets only, bounds from the site file, this machine or an edge host
over real SSH (Debian's OpenSSH sshd and an asyncssh server), with clear errors and nothing half-recorded."""

from __future__ import annotations

import asyncio
import glob
import os
import random
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from hostctl.client.site import Defaults, HostEntry, LoadBounds, LoadGenerator, ServiceEntry, Site
from hostctl.client.site import load as load_site
from hostctl.demo.services import CVMService
from hostctl.errors import ConfigError, HostctlError
from hostctl.load import generators as loadgen
from hostctl.load.generators import SSHLoadHost, Targets, check_bounds, run_load
from hostctl.load.runs import RunLog
from hostctl.load.wrk import Params
from hostctl.wire.model import Service
from tests.support.asyncssh_server import asyncssh_server
from tests.support.openssh import openssh
from tests.support.ssh import SSHEndpoint, free_port

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")

SERVERS = {"openssh": openssh, "asyncssh": asyncssh_server}


@pytest.fixture
async def service() -> AsyncIterator[CVMService]:
    svc = CVMService("social-snp", overhead=1.45, slots=2, rng=random.Random(5))
    await svc.start()
    yield svc
    await svc.stop()


def site_for(
    service: CVMService, *generators: LoadGenerator, defaults: Defaults | None = None, bounds: LoadBounds | None = None
) -> Site:
    urls = service.urls()
    return Site(
        defaults=defaults or Defaults(),
        hosts=[
            HostEntry(
                name="mec-1",
                socket="/run/agent.sock",
                services=[ServiceEntry(cvm=service.cvm, name=n, url=u) for n, u in urls.items()],
            )
        ],
        load_generators=list(generators),
        load=bounds or LoadBounds(),
    )


# --- targets and bounds --------------------------------------------------------------------------------


def test_targets_are_the_inventory_and_nothing_else() -> None:
    site = Site(
        hosts=[
            HostEntry(
                name="mec-1", socket="/a", services=[ServiceEntry(cvm="snp", name="web", url="http://10.0.0.1/w")]
            ),
            HostEntry(name="mec-2", socket="/b"),
        ]
    )
    reported = {
        "mec-1": [Service(name="other", cvm="snp", url="http://10.0.0.9/evil")],  # the site file's list wins
        "mec-2": [Service(name="home-timeline", cvm="sev", url="http://10.0.0.2:8080/h")],
        "elsewhere": [Service(name="x", cvm="y", url="http://10.0.0.3/")],  # not a host of the site
    }
    targets = Targets(site, reported)
    assert sorted(t.key for t in targets) == ["mec-1/snp/web", "mec-2/sev/home-timeline"]
    assert targets.resolve("http://10.0.0.2:8080/h").key == "mec-2/sev/home-timeline"
    for url in ("http://10.0.0.9/evil", "http://10.0.0.3/", "http://10.0.0.2:8081/h", "http://example.com/"):
        with pytest.raises(HostctlError, match=f"target '{url}' is not a service of the site inventory; refused"):
            targets.resolve(url)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (Params(threads=9, connections=9), r"threads = 9 is above the bound 8 \(\[load\] max_threads"),
        (Params(connections=513), r"connections = 513 is above the bound 512 \(\[load\] max_connections"),
        (Params(duration_s=301), r"duration = 301 is above the bound 300 \(\[load\] max_duration_s"),
        (Params(timeout_s=11), r"timeout = 11 is above the bound 10 \(\[load\] max_timeout_s"),
    ],
)
def test_requests_beyond_the_default_bounds_are_refused(params: Params, message: str) -> None:
    with pytest.raises(HostctlError, match=message):
        check_bounds(params, LoadBounds())
    check_bounds(Params(threads=8, connections=512, duration_s=300, timeout_s=10), LoadBounds())


SITE = """
[load]
max_connections = {max_connections}
max_duration_s = 20

[[hosts]]
name = "mec-1"
socket = "/run/agent.sock"
"""


def test_bounds_come_from_the_site_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(max_connections=64))
    bounds = load_site(path).load
    assert (bounds.max_threads, bounds.max_connections, bounds.max_duration_s) == (8, 64, 20)
    with pytest.raises(HostctlError, match=r"connections = 65 is above the bound 64"):
        check_bounds(Params(connections=65), bounds)
    for bad, message in (
        ("0", r"load\.max_connections: 0 must be from 1 to 65536"),
        ('"many"', r"load\.max_connections: expected an integer, got 'many'"),
    ):
        path.write_text(SITE.format(max_connections=bad))
        with pytest.raises(ConfigError, match=rf"site\.toml: {message}"):
            load_site(path)


# --- runs from this machine ----------------------------------------------------------------------------


async def test_a_run_from_this_machine_is_recorded(service: CVMService, tmp_path: Path) -> None:
    site = site_for(service)
    history = RunLog(tmp_path / "runs.jsonl")
    url = service.urls()["compose-post"]
    record = await run_load(
        site,
        Targets(site),
        url,
        Params(threads=1, connections=4, duration_s=1, script="compose-post"),
        history=history,
        why="test",
    )
    assert record.key == "mec-1/social-snp/compose-post" and record.load_host == "this machine"
    assert record.result.requests > 0 and record.result.errors == 0
    assert service.stats()["compose-post"]["requests"] >= record.result.requests
    assert history.read().records == [record]


async def test_refusals_run_nothing_and_record_nothing(service: CVMService, tmp_path: Path) -> None:
    site = site_for(service, bounds=LoadBounds(max_connections=4))
    history = RunLog(tmp_path / "runs.jsonl")
    with pytest.raises(HostctlError, match="is not a service of the site inventory"):
        await run_load(site, Targets(site), service.base_url + "/admin", Params(duration_s=1), history=history)
    with pytest.raises(HostctlError, match="connections = 16 is above the bound 4"):
        await run_load(site, Targets(site), service.urls()["home-timeline"], Params(duration_s=1), history=history)
    assert sum(s["requests"] for s in service.stats().values()) == 0
    assert not history.path.exists()


async def test_a_failed_run_records_nothing(tmp_path: Path) -> None:
    svc = CVMService("gone", overhead=1.0, slots=1)
    await svc.start()
    url = svc.urls()["home-timeline"]
    site = site_for(svc)
    await svc.stop()  # listed, but nobody answers any more
    history = RunLog(tmp_path / "runs.jsonl")
    with pytest.raises(HostctlError, match="wrk on this machine exited with status 1: unable to connect"):
        await run_load(site, Targets(site), url, Params(threads=1, connections=1, duration_s=1), history=history)
    assert not history.path.exists()


def test_load_hosts_are_this_machine_and_the_sites_generators() -> None:
    site = Site(
        hosts=[HostEntry(name="h", socket="/s")],
        load_generators=[LoadGenerator(name="edge-1", ssh="ops@edge-1"), LoadGenerator(name="local-2")],
    )
    assert loadgen.load_hosts(site) == ["this machine", "edge-1", "local-2"]
    assert isinstance(loadgen.load_host(site), loadgen.LocalLoadHost)
    assert isinstance(loadgen.load_host(site, "edge-1"), SSHLoadHost)
    assert loadgen.load_host(site, "local-2").name == "local-2"
    with pytest.raises(HostctlError, match=r"unknown load generator 'edge-9' \(known: edge-1, local-2\)"):
        loadgen.load_host(site, "edge-9")


# --- runs from an edge host over SSH -------------------------------------------------------------------


@pytest.fixture(params=sorted(SERVERS))
async def edge(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SSHEndpoint]:
    async with SERVERS[request.param](tmp_path / request.param) as endpoint:
        yield endpoint


def edge_defaults(tmp_path: Path, endpoint: SSHEndpoint, known_hosts: Path | None = None) -> Defaults:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host edge-1\n  HostName {endpoint.host}\n  Port {endpoint.port}\n  User {endpoint.user}\n"
        f"  IdentityFile {endpoint.client_key}\n  IdentitiesOnly yes\n"
    )
    return Defaults(
        timeout=5.0, keepalive=1.0, known_hosts=str(known_hosts or endpoint.known_hosts), ssh_config=str(config)
    )


def script_files() -> set[str]:
    return {p for d in {"/tmp", tempfile.gettempdir()} for p in glob.glob(os.path.join(d, "hostctl-wrk.*"))}


async def test_a_run_from_an_edge_host_over_ssh(edge: SSHEndpoint, service: CVMService, tmp_path: Path) -> None:
    site = site_for(service, LoadGenerator(name="edge-1", ssh="edge-1"), defaults=edge_defaults(tmp_path, edge))
    history = RunLog(tmp_path / "runs.jsonl")
    seen: list[float] = []

    async def progress(elapsed: float, total: float) -> None:
        seen.append(elapsed)

    before = script_files()
    record = await run_load(
        site,
        Targets(site),
        service.urls()["home-timeline"],
        Params(threads=1, connections=4, duration_s=2, script="mixed"),
        host=loadgen.load_host(site, "edge-1"),
        progress=progress,
        history=history,
    )
    assert record.load_host == "edge-1" and record.script == "mixed"
    assert record.result.requests > 0 and record.result.errors == 0 and "99.99" in record.result.percentiles
    assert service.stats()["compose-post"]["requests"] > 0  # the mixed script ran there
    assert seen and max(seen) <= 2
    assert history.read().records == [record]
    assert not script_files() - before  # the uploaded script was removed


async def test_wrk_missing_on_the_edge_host(edge: SSHEndpoint, service: CVMService, tmp_path: Path) -> None:
    host = SSHLoadHost(
        LoadGenerator(name="edge-1", ssh="edge-1", wrk="/nonexistent/wrk"), edge_defaults(tmp_path, edge)
    )
    with pytest.raises(HostctlError, match=r"wrk is not installed on load host edge-1 \(edge-1\)"):
        await host.run(service.urls()["home-timeline"], Params(duration_s=1))


async def test_edge_host_unreachable(service: CVMService, tmp_path: Path, edge: SSHEndpoint) -> None:
    port = free_port()
    host = SSHLoadHost(LoadGenerator(name="edge-9", ssh=f"{edge.user}@127.0.0.1:{port}"), edge_defaults(tmp_path, edge))
    with pytest.raises(HostctlError, match=r"load host edge-9 \(.*\) is unreachable: .*; nothing ran"):
        await host.run(service.urls()["home-timeline"], Params(duration_s=1))


async def test_edge_host_with_an_unknown_key_is_refused(edge: SSHEndpoint, service: CVMService, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    host = SSHLoadHost(LoadGenerator(name="edge-1", ssh="edge-1"), edge_defaults(tmp_path, edge, empty))
    with pytest.raises(
        HostctlError,
        match=re.escape(
            f"load host edge-1 (edge-1): host key of edge-1 is not in known_hosts: {edge.host_key_fingerprint}; refused"
        ),
    ):
        await host.run(service.urls()["home-timeline"], Params(duration_s=1))
    assert service.stats()["home-timeline"]["requests"] == 0


def remote_wrk(url: str) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["name", "cmdline", "status"])
        if p.info["name"] == "wrk" and url in (p.info["cmdline"] or []) and p.info["status"] != "zombie"
    ]


async def started_remotely(url: str, task: asyncio.Task[object]) -> psutil.Process:
    for _ in range(300):
        if found := remote_wrk(url):
            return found[0]
        assert not task.done(), task
        await asyncio.sleep(0.05)
    raise AssertionError("wrk did not start on the edge host")


async def test_cancelling_kills_wrk_on_the_edge_host(edge: SSHEndpoint, service: CVMService, tmp_path: Path) -> None:
    host = SSHLoadHost(LoadGenerator(name="edge-1", ssh="edge-1"), edge_defaults(tmp_path, edge))
    url = service.urls()["home-timeline"]
    before = script_files()
    task = asyncio.ensure_future(host.run(url, Params(threads=1, connections=2, duration_s=60)))
    process = await started_remotely(url, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.get_running_loop().run_in_executor(None, process.wait, 10)
    assert remote_wrk(url) == [] and not script_files() - before


async def test_wrk_killed_on_the_edge_host_mid_run(edge: SSHEndpoint, service: CVMService, tmp_path: Path) -> None:
    host = SSHLoadHost(LoadGenerator(name="edge-1", ssh="edge-1"), edge_defaults(tmp_path, edge))
    url = service.urls()["home-timeline"]
    task = asyncio.ensure_future(host.run(url, Params(threads=1, connections=2, duration_s=60)))
    (await started_remotely(url, task)).kill()
    with pytest.raises(HostctlError, match=r"wrk on load host edge-1 \(edge-1\) was killed by signal KILL mid-run"):
        await task
