"""The console's log of events and audit entries."""

from __future__ import annotations

from textual.geometry import Size
from textual.reactive import Reactive
from textual.widgets import RichLog


class EventLog(RichLog):
    """A `RichLog` whose growth repaints only itself.

    Each line written grows a log's scrollable height, and `RichLog` declares that height (`virtual_size`) as a
    reactive that lays out the whole screen: every audit entry then re-arranged and repainted every table, and the
    row a key press changed was painted a layout later. The log's box never depends on its content (its size is
    set by the layout around it), so only its scrollbars follow its height; a scrollbar appearing or going still
    lays out, as that reactive asks for it.
    """

    virtual_size: Reactive[Size] = Reactive(Size(0, 0), layout=False)

    def watch_virtual_size(self, size: Size) -> None:
        self._scroll_update(size)
