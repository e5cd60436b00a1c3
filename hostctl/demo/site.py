"""The demo site: a site file's worth of demo agents on this machine, each reached through its local socket."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from hostctl.client.site import HostEntry, ServiceEntry, Site


def demo_site(hosts: dict[str, Path], services: Mapping[str, Iterable[ServiceEntry]] | None = None) -> Site:
    """A site whose hosts are demo agents on this machine: host name -> agent socket path."""
    services = services or {}
    return Site(
        hosts=[
            HostEntry(name=name, socket=str(Path(sock).absolute()), services=list(services.get(name, ())))
            for name, sock in hosts.items()
        ]
    )
