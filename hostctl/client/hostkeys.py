"""How a refused SSH host key is reported: one line naming the host, what is wrong and the key's fingerprint, the
same for every way a host is reached (our own SSH links and libvirt's SSH transport)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh

from hostctl.client.site import parse_destination


def refusal_line(destination: str, *, changed: bool, fingerprint: str, known_hosts: Path) -> str:
    """The one line shown when the host key of `destination` is not trusted by `known_hosts`."""
    what = "CHANGED (possible man-in-the-middle)" if changed else "not in known_hosts"
    return (
        f"host key of {destination} is {what}: {fingerprint}; refused. Check it out of band, then update {known_hosts}"
    )


async def fingerprint_of(destination: str, *, ssh_config: Path, timeout: float) -> str:
    """The SHA256 fingerprint of the host key `destination` offers (only read, nothing trusted), or "unknown"."""
    try:
        _user, host, port = parse_destination(destination)
        config = [str(ssh_config)] if ssh_config.is_file() else []
        async with asyncio.timeout(timeout):
            key = await asyncssh.get_server_host_key(host, port or (), config=config)
    except (OSError, TimeoutError, ValueError, asyncssh.Error):
        return "unknown"
    return key.get_fingerprint() if key is not None else "unknown"
