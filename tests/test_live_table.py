"""A live table's lines leave no work for the cyclic collector: a row's line that is replaced is freed at once.

Textual's `Strip.crop_extend` caches its result in the strip it was called on; when no crop or padding is needed
that result is the strip itself, which then refers to itself and is freed only by a pass of the generation it has
reached. A console replaces row lines all the time, and those lines outlive young passes (they are cached until their
row changes), so each would wait for a pass of the middle generation: on the demo site, passes of 0.1-0.2 s."""

from __future__ import annotations

import gc

from textual.app import App, ComposeResult
from textual.strip import Strip

from dittotui.tables.cells import plain
from dittotui.tables.live import Column, LiveTable


class Pair(LiveTable):
    COLUMNS = (Column("name", "Name", 8, plain), Column("value", "Value", 8, plain))


class PairApp(App[None]):
    CSS = "Pair { border: round $primary; }"  # as the console's tables: their lines then fill the window exactly

    def compose(self) -> ComposeResult:
        yield Pair()


async def test_a_replaced_row_line_is_freed_without_the_cycle_collector() -> None:
    app = PairApp()
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(Pair)
        table.sync({f"r{i}": (f"r{i}", "old") for i in range(5)})
        await pilot.pause()
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage, not freed
        try:
            for y in range(6):  # the header and every row, at scroll 0
                table.render_line(y)
            table.sync({f"r{i}": (f"r{i}", "new") for i in range(5)})  # every row's line is dropped
            for y in range(6):
                table.render_line(y)
            gc.collect()
            cyclic = [o for o in gc.garbage if isinstance(o, Strip)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert "new" in table.render_line(1).text
        assert cyclic == []
