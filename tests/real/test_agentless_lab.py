"""A host with no agent installed, against the lab: the lab's libvirtd reached as `qemu+ssh://root@127.0.0.1:PORT`
through a real OpenSSH sshd (libvirt's remote side runs `virt-ssh-helper`), its agent a child of the test. What the
guest says (`guest-get-vcpus`) is the truth; host keys are checked, and nothing is left running."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from dittotui.app import DittoApp
from dittotui.tables.hosts import HostsTable
from hostctl.client import site as sites
from hostctl.client.link import HostLink, LinkState
from hostctl.client.site import Defaults, HostEntry
from hostctl.lab import procs
from hostctl.wire.model import Event
from tests.support import ROOT
from tests.support.lab import GUESTS, GuestView, LabSite, guest_view, hostctl
from tests.support.openssh import openssh
from tests.support.ssh import SSHEndpoint
from tests.support.waiting import until

HOST = "lab-ssh"


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def sshd(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SSHEndpoint]:
    """One real sshd on loopback for this module: the way in to the lab's libvirtd."""
    async with openssh(tmp_path_factory.mktemp("agentless-sshd")) as endpoint:
        yield endpoint


def entry(sshd: SSHEndpoint) -> HostEntry:
    """The lab's host with no agent: its libvirt URI alone, the test's SSH key given with keyfile=."""
    uri = f"qemu+ssh://{sshd.user}@{sshd.host}:{sshd.port}/system?keyfile={sshd.client_key}"
    return HostEntry(name=HOST, uri=uri)


def defaults(tmp_path: Path, known_hosts: Path) -> Defaults:
    return Defaults(interval=0.5, timeout=10.0, known_hosts=str(known_hosts), ssh_config=str(tmp_path / "no-config"))


def site_file(tmp_path: Path, sshd: SSHEndpoint, known_hosts: Path) -> Path:
    path = tmp_path / "agentless.toml"
    sites.write(sites.Site(defaults=defaults(tmp_path, known_hosts), hosts=[entry(sshd)]), path)
    return path


async def nothing_left(sshd: SSHEndpoint, pid: int | None) -> None:
    """The agent child, its ssh and the session it opened on the host are all gone."""
    assert pid is None or not procs.running(pid), "the local agent outlived its link"
    await until(lambda: sshd.session_pids() == [], timeout=10)


async def test_a_host_with_no_agent_is_live_and_scales_in_the_guest(
    lab: LabSite, sshd: SSHEndpoint, tmp_path: Path
) -> None:
    cvm = lab.cvm("snp-2")
    try:
        await scale_through_a_link_then_back_through_the_cli(lab, sshd, tmp_path, cvm)
    finally:
        if (await asyncio.to_thread(guest_view, cvm)).online != 1:  # the other lab tests expect the guest as booted
            await asyncio.to_thread(hostctl, "--uri", "qemu:///system", "scale", cvm, "1")


async def scale_through_a_link_then_back_through_the_cli(
    lab: LabSite, sshd: SSHEndpoint, tmp_path: Path, cvm: str
) -> None:
    link = HostLink(entry(sshd), defaults(tmp_path, sshd.known_hosts))
    events: list[Event] = []
    link.on_event(events.append)
    link.start()
    pid = None
    try:
        # A retry is allowed: other sessions' guests on a shared libvirtd may vanish while the agent first reads.
        await until(lambda: link.state is LinkState.FRESH, timeout=60, interval=0.1)
        assert link.snapshot is not None
        assert {lab.cvm(g) for g in GUESTS} <= {c.name for c in link.snapshot.cvms}
        assert [(e.host, e.action) for e in events] == [(HOST, "agentless")]
        assert "policies run only while this console" in events[0].why
        pid = link.local_pid
        event = await link.scale(cvm, 3, expect=1)
        assert (event.ok, event.before, event.after) == (True, 1, 3), event.why
        assert await asyncio.to_thread(guest_view, cvm) == GuestView(present=4, online=3)
    finally:
        await link.stop()
        await nothing_left(sshd, pid)
    # Back through the CLI, which runs an agent of its own for the host.
    site = site_file(tmp_path, sshd, sshd.known_hosts)
    done = await asyncio.to_thread(hostctl, "--site", site, "scale", f"{HOST}/{cvm}", "1", "--expect", "3")
    assert done.returncode == 0, done.stderr
    assert "3 -> 1 vCPUs" in done.stdout and done.stderr == ""
    assert await asyncio.to_thread(guest_view, cvm) == GuestView(present=4, online=1)
    await nothing_left(sshd, None)


async def test_site_status_shows_the_lab_fresh(lab: LabSite, sshd: SSHEndpoint, tmp_path: Path) -> None:
    site = site_file(tmp_path, sshd, sshd.known_hosts)
    done = await asyncio.to_thread(hostctl, "--site", site, "status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    (host,) = json.loads(done.stdout)["hosts"]
    assert (host["name"], host["state"], host["error"]) == (HOST, "fresh", "")
    online = {c["name"]: c["online_vcpus"] for c in host["snapshot"]["cvms"]}
    for name in GUESTS:
        assert online[lab.cvm(name)] == (await asyncio.to_thread(guest_view, lab.cvm(name))).online
    await nothing_left(sshd, None)


async def test_an_unknown_host_key_is_refused_and_nothing_connects(
    lab: LabSite, sshd: SSHEndpoint, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    done = await asyncio.to_thread(hostctl, "--site", site_file(tmp_path, sshd, known_hosts), "status")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{HOST}: connecting (host key of {sshd.user}@{sshd.host}:{sshd.port} is not in known_hosts: "
        f"{sshd.host_key_fingerprint}; refused. Check it out of band, then update {known_hosts})"
    ]
    assert done.stderr == ""
    assert known_hosts.read_text() == ""
    await nothing_left(sshd, None)


async def test_the_console_marks_the_host_and_says_where_its_policies_run(
    lab: LabSite, sshd: SSHEndpoint, tmp_path: Path
) -> None:
    site = sites.Site(defaults=defaults(tmp_path, sshd.known_hosts), hosts=[entry(sshd)])
    app = DittoApp(site=site, refresh=0.1)
    async with app.run_test(size=(140, 40)) as pilot:

        def shown(column: str) -> str:
            try:
                value = app.query_one(HostsTable).get_cell(HOST, column)
            except KeyError:  # no row yet: the first refresh has not run
                return ""
            return str(getattr(value, "plain", value))

        def log() -> str:
            return " ".join(str(line.text).rstrip() for line in app.query_one("#events").lines)  # unwrapped

        await until(lambda: shown("state") == "live", timeout=30, interval=0.1)
        assert shown("host") == f"{HOST} ◇"
        await until(lambda: "policies run only while this console" in log(), timeout=5)
        link = app.fleet.links[HOST] if app.fleet else None
        assert link is not None
        pid = link.local_pid
        await app.action_quit()
        await pilot.pause()
    await nothing_left(sshd, pid)


async def test_the_agent_dies_with_a_killed_console(lab: LabSite, sshd: SSHEndpoint, tmp_path: Path) -> None:
    """A console killed outright (no stop, no quit) leaves no agent behind: the agent leaves with its peer."""
    site = site_file(tmp_path, sshd, sshd.known_hosts)
    argv = [sys.executable, "-m", "hostctl", "--site", str(site), "audit", "--follow"]
    cli = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await until(sshd.session_pids, timeout=60, interval=0.1)  # the agent reached the host
        (child,) = psutil.Process(cli.pid).children()
        assert "--stdio" in child.cmdline()
    finally:
        cli.kill()
        await cli.wait()
    await until(lambda: not procs.running(child.pid), timeout=10)
    await nothing_left(sshd, child.pid)
