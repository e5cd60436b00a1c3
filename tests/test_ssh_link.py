"""Links over real SSH: Debian's OpenSSH sshd and an asyncssh server, both running the real agent.

Host keys are verified, ~/.ssh/config-style aliases and jump hosts are honoured, and a cut TCP connection
recovers by itself without applying a retried scale twice.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from hostctl.client.link import CIPHERS, HostLink, LinkError, LinkState, connect_ssh
from hostctl.client.site import Defaults, HostEntry
from tests.support.agents import AgentProcess
from tests.support.asyncssh_server import asyncssh_server
from tests.support.nodes import make_node
from tests.support.openssh import openssh
from tests.support.proxy import CuttableProxy
from tests.support.ssh import SSHEndpoint
from tests.support.waiting import until

SERVERS = {"openssh": openssh, "asyncssh": asyncssh_server}


@pytest.fixture(params=sorted(SERVERS))
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SSHEndpoint]:
    async with SERVERS[request.param](tmp_path / request.param) as endpoint:
        yield endpoint


def ssh_config(tmp_path: Path, **aliases: SSHEndpoint) -> Path:
    """An OpenSSH client config naming each endpoint by an alias (the way operators reach MEC hosts)."""
    path = tmp_path / "ssh_config"
    path.write_text(
        "".join(
            f"Host {alias}\n  HostName {e.host}\n  Port {e.port}\n  User {e.user}\n"
            f"  IdentityFile {e.client_key}\n  IdentitiesOnly yes\n"
            for alias, e in aliases.items()
        )
    )
    return path


def defaults(tmp_path: Path, known_hosts: Path, config: Path) -> Defaults:
    return Defaults(
        interval=0.2,
        timeout=3.0,
        scale_timeout=8.0,
        keepalive=1.0,
        backoff_max=0.5,
        known_hosts=str(known_hosts),
        ssh_config=str(config),
    )


def agent_argv(tmp_path: Path) -> list[str]:
    node = make_node(tmp_path)
    return [
        sys.executable,
        "-m",
        "hostctl",
        "--uri",
        f"test://{node}",
        "agent",
        "--stdio",
        "--audit",
        str(tmp_path / "stdio-audit.jsonl"),
    ]


async def started(link: HostLink) -> HostLink:
    link.start()
    await link.ready(15)
    return link


async def test_the_agent_runs_over_ssh(server: SSHEndpoint, tmp_path: Path) -> None:
    entry = HostEntry(name="mec-1", ssh="mec-1", agent=agent_argv(tmp_path))
    link = await started(
        HostLink(
            entry, defaults(tmp_path, server.known_hosts, ssh_config(tmp_path, **{"mec-1": server})), who="alice@laptop"
        )
    )
    try:
        assert link.state is LinkState.FRESH, link.error
        assert {c.name for c in link.snapshot.cvms} == {"snp", "es", "sev", "plain"}
        event = await link.scale("snp", 3, expect=2)
        assert (event.before, event.after) == (2, 3)
        await until(lambda: link.cvm("snp").online_vcpus == 3)
        audit = json.loads((tmp_path / "stdio-audit.jsonl").read_text().splitlines()[-1])
        assert audit["who"].startswith("alice@laptop (root@")
        if server.kind == "openssh":  # sshd tells the agent where the console connects from
            assert "root@ssh:127.0.0.1" in audit["who"]
    finally:
        await link.stop()
    for _ in range(100):  # the agent ends with its channel
        if not server.session_pids():
            break
        await asyncio.sleep(0.05)
    assert not server.session_pids()


async def test_sessions_prefer_aes_gcm_unless_the_client_config_names_ciphers(
    server: SSHEndpoint, tmp_path: Path
) -> None:
    config = ssh_config(tmp_path, **{"mec-1": server})
    settings = defaults(tmp_path, server.known_hosts, config)
    conn = await connect_ssh("mec-1", settings)
    async with conn:
        assert conn.get_extra_info("send_cipher") == conn.get_extra_info("recv_cipher") == CIPHERS[0]
    config.write_text(config.read_text() + "  Ciphers chacha20-poly1305@openssh.com\n")
    conn = await connect_ssh("mec-1", settings)
    async with conn:
        assert conn.get_extra_info("send_cipher") == "chacha20-poly1305@openssh.com"


async def test_an_unknown_host_key_is_refused_with_its_fingerprint(server: SSHEndpoint, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{server.host}]:{server.port + 1} {other}\n")  # a key for another host only
    entry = HostEntry(name="mec-1", ssh="mec-1", agent=agent_argv(tmp_path))
    link = await started(HostLink(entry, defaults(tmp_path, known_hosts, ssh_config(tmp_path, **{"mec-1": server}))))
    try:
        assert link.state is LinkState.CONNECTING
        assert "not in known_hosts" in link.error and server.host_key_fingerprint in link.error
        with pytest.raises(LinkError, match="nothing was sent"):
            await link.call("hello")
    finally:
        await link.stop()


async def test_a_changed_host_key_is_refused_as_such(server: SSHEndpoint, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{server.host}]:{server.port} {other}\n")
    entry = HostEntry(name="mec-1", ssh="mec-1", agent=agent_argv(tmp_path))
    link = await started(HostLink(entry, defaults(tmp_path, known_hosts, ssh_config(tmp_path, **{"mec-1": server}))))
    try:
        assert "CHANGED" in link.error and server.host_key_fingerprint in link.error
    finally:
        await link.stop()


async def test_a_host_behind_a_jump_host(tmp_path: Path) -> None:
    async with openssh(tmp_path / "bastion") as bastion, asyncssh_server(tmp_path / "mec") as mec:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(bastion.known_hosts.read_text() + mec.known_hosts.read_text())
        config = ssh_config(tmp_path, bastion=bastion, mec=mec)
        entry = HostEntry(name="mec", ssh="mec", jump="bastion", agent=agent_argv(tmp_path))
        link = await started(HostLink(entry, defaults(tmp_path, known_hosts, config)))
        try:
            assert link.state is LinkState.FRESH, link.error
            assert (await link.call("hello"))["protocol"] == 1
        finally:
            await link.stop()


async def test_cut_tcp_recovers_and_a_retry_applies_once(server: SSHEndpoint, tmp_path: Path) -> None:
    """A long-running agent (`serve`) reached through SSH; the TCP connection is cut mid-scale."""
    agent = AgentProcess(tmp_path, "mec-1", wake_ms=1000)
    await agent.start()
    try:
        async with CuttableProxy(server.host, server.port) as proxy:
            via = server.for_port(proxy.listen_port)
            entry = HostEntry(name="mec-1", ssh="mec-1", socket=str(agent.socket))
            link = await started(
                HostLink(entry, defaults(tmp_path, via.known_hosts, ssh_config(tmp_path, **{"mec-1": via})))
            )
            try:
                assert link.state is LinkState.FRESH, link.error
                scale = asyncio.ensure_future(link.scale("snp", 3, expect=2))
                await asyncio.sleep(0.3)
                proxy.cut()
                with pytest.raises(LinkError, match="link lost during scale"):
                    await scale
                await until(lambda: link.state is LinkState.FRESH, timeout=15)
                await asyncio.sleep(1.0)  # the agent finishes what it began
                retry = await link.scale("snp", 3, expect=2)
                assert retry.before == retry.after == 3
            finally:
                await link.stop()
        changes = [
            e for e in map(json.loads, agent.audit.read_text().splitlines()) if e["ok"] and e["before"] != e["after"]
        ]
        assert [(e["before"], e["after"]) for e in changes] == [(2, 3)]
    finally:
        agent.stop()


async def test_a_black_holed_link_goes_stale_then_recovers(server: SSHEndpoint, tmp_path: Path) -> None:
    async with CuttableProxy(server.host, server.port) as proxy:
        via = server.for_port(proxy.listen_port)
        entry = HostEntry(name="mec-1", ssh="mec-1", agent=agent_argv(tmp_path))
        link = await started(
            HostLink(entry, defaults(tmp_path, via.known_hosts, ssh_config(tmp_path, **{"mec-1": via})))
        )
        try:
            assert link.state is LinkState.FRESH, link.error
            proxy.pause()
            with pytest.raises(LinkError, match="no answer to snapshot"):
                await link.call("snapshot")
            assert link.state is LinkState.STALE
            proxy.resume()
            await until(lambda: link.state is LinkState.FRESH, timeout=20)
        finally:
            await link.stop()
