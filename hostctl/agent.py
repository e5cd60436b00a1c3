"""The host agent: owns one host and answers JSON-RPC requests about it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostctl import __version__, rpc
from hostctl.backend import LibvirtHost
from hostctl.model import Service

PROTOCOL_VERSION = 1


class Agent:
    """JSON-RPC methods over one LibvirtHost."""

    def __init__(
        self,
        host: LibvirtHost,
        *,
        services: Callable[[], list[Service]] = list,
        readonly: bool = False,
    ) -> None:
        self.host = host
        self.readonly = readonly
        self._services = services

    @property
    def methods(self) -> dict[str, rpc.Method]:
        return {"hello": self.hello, "snapshot": self.snapshot, "scale": self.scale}

    async def hello(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "agent": __version__,
            "host": self.host.host.name,
            "readonly": self.readonly,
            "capabilities": ["snapshot", "scale"],
        }

    async def snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.host.snapshot(self._services()).to_dict()

    async def scale(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.readonly:
            raise rpc.RpcError(rpc.REFUSED, f"{self.host.host.name}: agent is read-only; scale refused")
        cvm = _param(params, "cvm", str)
        target = _param(params, "target", int)
        expect = _param(params, "expect", int, required=False)
        who = _param(params, "who", str, required=False) or "unknown"
        why = _param(params, "why", str, required=False) or ""
        event = await self.host.scale(cvm, target, expect=expect, who=who, why=why)
        return event.to_dict()

    async def serve_unix(self, path: Path) -> asyncio.Server:
        """Listen on a unix socket only the owner can reach."""
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(
            lambda r, w: rpc.serve(r, w, self.methods), path=str(path), limit=rpc.MAX_LINE
        )
        os.chmod(path, 0o600)
        return server


def _param(params: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    value = params.get(name)
    if value is None:
        if required:
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"missing parameter {name!r}")
        return None
    if type(value) is not kind:
        raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter {name!r}: expected {kind.__name__}, got {value!r}")
    return value
