"""An update's records as the links decoded them before the typed decoder: `json.loads`'s dicts, then
`Model.from_dict` record by record (what the decoder is checked against, and measured against)."""

from __future__ import annotations

from typing import Any

from hostctl.wire.decode import Update
from hostctl.wire.model import CVM, Event, Host, Service


def from_dicts(params: dict[str, Any]) -> Update:
    """An update's records from its `params` as `json.loads` gives them."""
    return Update(
        seq=params.get("seq", 0),
        ts=params.get("ts"),
        cvms={name: CVM.from_dict(data) for name, data in params.get("cvms", {}).items()},
        removed=params.get("removed", []),
        events=[Event.from_dict(e) for e in params.get("events", [])],
        host=Host.from_dict(params["host"]) if "host" in params else None,
        services=[Service.from_dict(s) for s in params["services"]] if "services" in params else None,
    )
