"""Shared fixtures: private state per test, a demo host in libvirt's test driver, and real SSH servers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from hostctl.host.libvirt_host import LibvirtHost
from tests.support.asyncssh_server import asyncssh_server
from tests.support.nodes import make_node
from tests.support.openssh import SSHD, openssh
from tests.support.ssh import SSHEndpoint


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit logs, policy state and run history of every test (and of the agents it starts) stay in its tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[LibvirtHost]:
    """An open LibvirtHost over a generated node whose CVMs use the emulated driver."""
    backend = LibvirtHost(
        f"test://{make_node(tmp_path)}", name="edge-1", driver_options={"emulated": {"wake_ms": 1, "park_ms": 1}}
    )
    await backend.open()
    yield backend
    await backend.close()


@pytest_asyncio.fixture(loop_scope="session")
async def openssh_server(tmp_path: Path) -> AsyncIterator[SSHEndpoint]:
    """A real OpenSSH sshd on a free loopback port (skipped if sshd is not installed)."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} not found: install openssh-server to run real-sshd tests")
    async with openssh(tmp_path / "openssh") as endpoint:
        yield endpoint


@pytest_asyncio.fixture(loop_scope="session")
async def asyncssh_ssh_server(tmp_path: Path) -> AsyncIterator[SSHEndpoint]:
    """An in-process asyncssh server running commands as real subprocesses."""
    async with asyncssh_server(tmp_path / "asyncssh") as endpoint:
        yield endpoint
