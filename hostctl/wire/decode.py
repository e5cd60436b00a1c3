"""Typed decoding of the wire: an agent's JSON straight into the model's records, checked on the way (msgspec).

The wire format is unchanged: the records are the model's own structs, decoded as `Model.from_dict` decodes
them (missing fields take their defaults, unknown fields are ignored, null stays None: unknown), but without the
intermediate dicts, and every value is checked against its field's type: a malformed record is a `ValueError` naming
the method and the path of the bad value, never a half-built record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from hostctl.wire.model import CVM, Event, Host, Service


class Update(msgspec.Struct, gc=False):
    """The params of an agent's `update` notification (see `hostctl.agent.updates`): the CVMs new or changed, the
    names of those gone, the audit events since the last update, and the host and its services when they changed."""

    seq: int = 0
    ts: float | None = None  # the agent's wall clock when it was sent
    cvms: dict[str, CVM] = msgspec.field(default_factory=dict)
    removed: list[str] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)
    host: Host | None = None  # None: unchanged
    services: list[Service] | None = None  # None: unchanged


class Notifications:
    """Decoders for the params of the notifications named: method -> record type."""

    def __init__(self, types: Mapping[str, type]) -> None:
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {m: msgspec.json.Decoder(t) for m, t in types.items()}

    def __contains__(self, method: object) -> bool:
        return method in self._decoders

    def decode(self, method: str, params: bytes | msgspec.Raw) -> Any:
        """The params of a `method` notification as its record; ValueError naming the method and the bad value."""
        try:
            return self._decoders[method].decode(params)
        except msgspec.DecodeError as e:  # ValidationError included
            raise ValueError(f"{method}: {e}") from None


class _Envelope(msgspec.Struct):
    """A message's method, id and params, the params left undecoded until the method is known."""

    method: Any = None
    id: Any = msgspec.UNSET
    params: msgspec.Raw = msgspec.Raw()


_ENVELOPE = msgspec.json.Decoder(_Envelope)

#: What a console's link decodes into records; any other message stays plain JSON.
LINK = Notifications({"update": Update})


def notification(line: bytes, typed: Notifications) -> tuple[str, Any] | None:
    """(method, params record) of a notification `typed` decodes; None for any other message (a reply, another
    method), left to the plain decoder. ValueError when the line is not a JSON object in strict JSON (as the agent's
    replies are: no NaN), or the params are malformed."""
    try:
        envelope = _ENVELOPE.decode(line)
    except msgspec.DecodeError as e:
        raise ValueError(f"not a JSON-RPC message: {e}") from None
    method = envelope.method
    if envelope.id is not msgspec.UNSET or not isinstance(method, str) or method not in typed:
        return None
    if not envelope.params:
        raise ValueError(f"{method}: a notification needs object params")
    return method, typed.decode(method, envelope.params)
