"""Why a host cannot be reached, where an operator reads it: every link error names the site host, the address and
port it was reached at and the jump host on the way; the console logs each new reason once, and a host key refusal
whole, fingerprint included. Through real OpenSSH and asyncssh servers and a cuttable TCP proxy."""

from __future__ import annotations

import socket
from pathlib import Path

from textual.pilot import Pilot

from dittotui.app import DittoApp
from dittotui.tables.hosts import HostsTable
from hostctl.client.link import HostLink, LinkState
from hostctl.client.site import Defaults, HostEntry, Site
from tests.support.asyncssh_server import asyncssh_server
from tests.support.openssh import openssh
from tests.support.proxy import CuttableProxy
from tests.support.ssh import LOOPBACK, SSHEndpoint
from tests.support.waiting import until
from tests.test_console import cell
from tests.test_console import until as until_shown
from tests.test_ssh_link import agent_argv, defaults, ssh_config


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def log_text(app: DittoApp) -> str:
    """The event log as one text (its lines wrap: a line break is where a space was)."""
    return " ".join(line.text.rstrip() for line in app.query_one("#events").lines)


async def failing(entry: HostEntry, settings: Defaults, attempts: int = 3) -> HostLink:
    """A link to `entry` after it has failed `attempts` times."""
    link = HostLink(entry, settings)
    link.start()
    await until(lambda: link.attempts > attempts and link.error, timeout=30)
    return link


async def retried(pilot: Pilot[None], link: HostLink, times: int = 3) -> None:
    """Let the link try again `times` more times."""
    start = link.attempts
    await until_shown(pilot, lambda: link.attempts >= start + times, within=30)


async def test_a_changed_host_key_is_logged_once_whole_and_shown_in_the_hosts_row(tmp_path: Path) -> None:
    async with (
        openssh(tmp_path / "old") as old,
        asyncssh_server(tmp_path / "new") as new,
        CuttableProxy(old.host, old.port) as proxy,
    ):
        via = old.for_port(proxy.listen_port)
        settings = defaults(tmp_path, via.known_hosts, ssh_config(tmp_path, **{"mec-1": via}))
        settings.timeout = 10.0  # the first start of the agent on a busy machine
        site = Site(
            defaults=settings,
            hosts=[HostEntry(name="mec-1", ssh="mec-1", agent=agent_argv(tmp_path))],
        )
        app = DittoApp(site=site, refresh=0.05)
        async with app.run_test(size=(300, 40)) as pilot:
            assert app.fleet is not None
            link = app.fleet.link("mec-1")
            await until_shown(pilot, lambda: link.state is LinkState.FRESH, within=20)
            proxy.target_port = new.port  # the same address now answers with another host key
            proxy.cut()
            fingerprint = new.host_key_fingerprint
            await until_shown(pilot, lambda: fingerprint in log_text(app), within=20)
            await retried(pilot, link)
            text = log_text(app)
            assert text.count(fingerprint) == 1 and text.count("CHANGED") == 1
            assert (
                f"mec-1: stale: mec-1 ({LOOPBACK}:{proxy.listen_port}): host key of mec-1 is CHANGED "
                f"(possible man-in-the-middle): {fingerprint}; refused. Check it out of band, then update "
            ) in text
            assert str(via.known_hosts) in text.replace(" ", "")  # a long path folds anywhere
            assert fingerprint in cell(app, HostsTable, "mec-1", "capacity")


async def test_a_host_never_reached_is_logged_once_per_reason(tmp_path: Path) -> None:
    port = closed_port()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    site = Site(
        defaults=Defaults(interval=0.2, timeout=1.0, backoff_max=0.3, known_hosts=str(known_hosts)),
        hosts=[HostEntry(name="mec-9", ssh=f"{LOOPBACK}:{port}")],
    )
    app = DittoApp(site=site, refresh=0.05)
    async with app.run_test(size=(300, 40)) as pilot:
        assert app.fleet is not None
        link = app.fleet.link("mec-9")
        await until_shown(pilot, lambda: link.attempts >= 1 and link.error)
        await retried(pilot, link)
        text = log_text(app)
        assert text.count("mec-9") == 1, text
        assert f"mec-9: connecting: {LOOPBACK}:{port}: Connect call failed ('{LOOPBACK}', {port})" in text


async def test_errors_name_the_address_and_the_jump_host(tmp_path: Path) -> None:
    dead = closed_port()
    async with openssh(tmp_path / "bastion") as bastion:
        gone = SSHEndpoint(LOOPBACK, dead, bastion.user, bastion.client_key, bastion.known_hosts, "")
        config = ssh_config(tmp_path, bastion=bastion, mec=gone, down=gone)
        settings = defaults(tmp_path, bastion.known_hosts, config)
        jump = f"jump host bastion ({LOOPBACK}:{bastion.port})"

        link = await failing(HostEntry(name="mec", ssh="mec", jump="bastion", agent=["true"]), settings)
        await link.stop()
        assert link.error.startswith(f"mec ({LOOPBACK}:{dead}) via {jump}: the jump host could not reach it: ")

        link = await failing(HostEntry(name="mec", ssh="mec", jump="down", agent=["true"]), settings)
        await link.stop()
        assert link.error.startswith(
            f"mec ({LOOPBACK}:{dead}) via jump host down ({LOOPBACK}:{dead}): jump host: Connect call failed"
        )


async def test_a_black_holed_host_times_out_naming_where(tmp_path: Path) -> None:
    async with asyncssh_server(tmp_path / "mec") as server, CuttableProxy(server.host, server.port) as proxy:
        proxy.pause()
        via = server.for_port(proxy.listen_port)
        settings = defaults(tmp_path, via.known_hosts, ssh_config(tmp_path, **{"mec-1": via}))
        settings.timeout = 0.5
        link = await failing(HostEntry(name="mec-1", ssh="mec-1", agent=["true"]), settings, attempts=1)
        await link.stop()
        assert link.error == f"mec-1 ({LOOPBACK}:{proxy.listen_port}): timed out"
