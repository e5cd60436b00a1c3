"""The append-only audit log: one JSON line per action, on disk before the action is answered."""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path

from hostctl.wire.model import Event


def default_path() -> Path:
    """`$XDG_STATE_HOME/dittotui/audit.jsonl` (usually `~/.local/state/dittotui/audit.jsonl`)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dittotui" / "audit.jsonl"


class AuditLog:
    """Appends events to a JSON-lines file, flushed and fsynced on every write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def append(self, event: Event) -> None:
        os.write(self._fd, event.to_json().encode() + b"\n")
        os.fsync(self._fd)

    def tail(self, limit: int, since: float | None = None) -> list[Event]:
        """The last `limit` events; with `since` (a time of this agent's clock), the first `limit` written after it,
        to page forward. A torn or foreign line is skipped, never fatal."""
        if since is not None:
            return self._after(since)[:limit]
        lines: deque[str] = deque(maxlen=limit)
        with self.path.open(encoding="utf-8", errors="replace") as f:
            lines.extend(f)
        return [e for e in map(_parse, lines) if e is not None]

    def _after(self, since: float) -> list[Event]:
        """The events stamped after `since`, read back from the end of the log (events are written in time order)."""
        with self.path.open(encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        after = []
        for line in reversed(lines):
            event = _parse(line)
            if event is None:
                continue
            if event.ts <= since:
                break
            after.append(event)
        return after[::-1]

    def close(self) -> None:
        os.close(self._fd)


def _parse(line: str) -> Event | None:
    try:
        return Event.from_dict(json.loads(line))
    except (ValueError, KeyError, TypeError):
        return None
