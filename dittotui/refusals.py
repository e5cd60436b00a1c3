"""Each refused request of this console shown once: a refusal comes back as the request's error reply, and may also
arrive as an audit event (an agent audits some refusals, or all), in either order."""

from __future__ import annotations

import time
from collections.abc import Callable

# (site host, CVM, action): what a refusal's reply and its audit event share.
Key = tuple[str, str, str]


class Refusals:
    """Counts the refusals shown from one side (reply or audit event) that the other side has not matched yet.

    Each refusal has one reply and at most one audit event, so whichever arrives first is shown and the other is
    dropped. A side left unmatched for `keep` seconds (a refusal the agent never audits) is forgotten.
    """

    def __init__(self, *, keep: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep = keep
        self.clock = clock
        self._replied: dict[Key, list[float]] = {}
        self._audited: dict[Key, list[float]] = {}

    def replied(self, key: Key) -> bool:
        """A refusal's reply came: True when it is to be shown (its audit event has not been)."""
        return self._arrived(key, self._replied, self._audited)

    def audited(self, key: Key) -> bool:
        """A refusal's audit event came: True when it is to be shown (its reply has not been)."""
        return self._arrived(key, self._audited, self._replied)

    def _arrived(self, key: Key, mine: dict[Key, list[float]], other: dict[Key, list[float]]) -> bool:
        now = self.clock()
        waiting = [t for t in other.get(key, ()) if now - t < self.keep]
        if waiting:
            other[key] = waiting[1:]
            return False
        other.pop(key, None)
        mine.setdefault(key, []).append(now)
        mine[key] = [t for t in mine[key] if now - t < self.keep]
        return True
