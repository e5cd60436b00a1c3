"""Live tables on Textual's line API: rows are kept as raw values and drawn only while on screen.

A row's line is rendered when its values change and cached; scrolling, the cursor and zebra stripes are styles
applied when a line is painted. A table of 10,000 CVMs therefore costs what its visible lines cost, and a sync
touches only the rows whose values changed. Columns have fixed widths: nothing is ever re-measured.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Row = tuple[Any, ...]  # one raw value per column, in the order of the table's COLUMNS
Cell = Text | str
PADDING = 1  # cells of space on each side of a column
PAD = " " * PADDING


# A row holds only plain values and tuples of them (no enum member: it is an object the collector tracks), so the
# collector's first pass over it stops tracking it, and no later pass walks it again. A tuple of values is untracked
# only once that pass has reached it, which may be after the row: rows share those tuples, built once.
_SHARED: dict[tuple[Any, ...], tuple[Any, ...]] = {}
SHARED_MAX = 16_384


def shared(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The one tuple of these values that rows share (the set is cleared when it grows large: values vary little)."""
    if len(_SHARED) > SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(values, values)


class Column(NamedTuple):
    """A table column: the key it is sorted and looked up by, its header, its width in cells, and how a raw value
    of the row is drawn."""

    key: str
    label: str
    width: int
    render: Callable[[Any], Cell]


class LiveTable(ScrollView, can_focus=True):
    """Rows synced from a dict of key -> raw row, a row cursor that stays on its row, sortable by any column."""

    COLUMNS: ClassVar[tuple[Column, ...]] = ()
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select", "Open", show=False),
        Binding("up,k", "cursor(-1)", show=False),
        Binding("down,j", "cursor(1)", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home,g", "first", show=False),
        Binding("end,G", "last", show=False),
        Binding("left", "scroll_left", show=False),
        Binding("right", "scroll_right", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"live-table--header", "live-table--cursor", "live-table--even-row"}
    DEFAULT_CSS = """
    LiveTable {
        background: $surface;
        color: $foreground;
        height: auto;
        max-height: 100%;
        & > .live-table--header { text-style: bold; background: $panel; color: $foreground; }
        & > .live-table--even-row { background: $surface-lighten-1 50%; }
        &:dark > .live-table--even-row { background: $surface-darken-1 40%; }
        & > .live-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus {
            background-tint: $foreground 5%;
            & > .live-table--cursor {
                background: $block-cursor-background;
                color: $block-cursor-foreground;
                text-style: $block-cursor-text-style;
            }
            & > .live-table--header { background-tint: $foreground 5%; }
        }
    }
    """

    class RowSelected(Message):
        """Enter (or a click on the cursor's row) on a row."""

        def __init__(self, table: LiveTable, key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> LiveTable:
            return self.table

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rows: dict[str, Row] = {}  # key -> newest raw values
        self._order: list[str] = []  # keys as shown, top to bottom
        self._index: dict[str, int] | None = None  # key -> position in _order (rebuilt after a reorder)
        self._lines: dict[str, Strip] = {}  # key -> its rendered line (unstyled, full width)
        self._sort_keys: dict[str, Any] = {}  # key -> sort key of its value in the sort column
        self._groups: dict[str, set[str]] = {}  # group (host) -> its row keys, for sync_groups
        self._cursor_key: str | None = None
        self.cursor_row = 0
        self.sort_column: str | None = None
        self.sort_reverse = False
        self._keys = [column.key for column in self.COLUMNS]
        self._renders = [column.render for column in self.COLUMNS]
        self._widths = [column.width for column in self.COLUMNS]  # the last one stretches to fill the table
        # Resolved once per paint: a row's style by 2 * (under the cursor) + (even), and the header's.
        self._row_styles: tuple[Style, ...] = ()
        self._header_style = Style()

    # -- queries ----------------------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def keys(self) -> list[str]:
        """Row keys in the order shown."""
        return list(self._order)

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor."""
        return self._cursor_key

    @property
    def _width(self) -> int:
        """Cells across a whole row, padding included."""
        return sum(width + 2 * PADDING for width in self._widths)

    def get_row_index(self, key: str) -> int:
        return self._positions()[key]

    def get_cell(self, key: str, column: str) -> Cell:
        """The cell as rendered from the row's newest values."""
        at = self._keys.index(column)
        return self._renders[at](self._rows[key][at])

    # -- syncing ----------------------------------------------------------------------------------

    def sync(self, rows: Mapping[str, Row]) -> None:
        """Show exactly `rows`: add new ones, drop those that are gone, redraw those whose values changed."""
        gone = self._rows.keys() - rows.keys()
        self._apply([rows], gone)

    def sync_groups(
        self,
        groups: Mapping[str, Mapping[str, Row]],
        parts: Mapping[str, tuple[Collection[str], Mapping[str, Row]]] | None = None,
    ) -> None:
        """Like `sync`, for only the groups (hosts) whose rows may have changed; other groups stay as they are.

        A group in `parts` changed only in the rows of the keys given: of those, the ones in its rows are shown and
        the others are not; its other rows stay as they are.
        """
        gone: set[str] = set()
        for group, rows in groups.items():
            members = self._groups.setdefault(group, set())  # changed in place: no new set for the collector
            left = members - rows.keys()
            members.difference_update(left)
            members.update(rows)
            gone |= left
        for group, (keys, rows) in (parts or {}).items():
            members = self._groups.setdefault(group, set())
            left = {key for key in keys if key not in rows and key in members}
            members.difference_update(left)
            members.update(rows)  # (`|=` with a dict's keys would bind a new set, not change this one)
            gone |= left
        self._apply([*groups.values(), *(rows for _, rows in (parts or {}).values())], gone)

    def _apply(self, batches: Iterable[Mapping[str, Row]], gone: set[str]) -> None:
        sort_at = self._keys.index(self.sort_column) if self.sort_column is not None else None
        changed: list[str] = []
        added = reorder = False
        for rows in batches:
            for key, row in rows.items():
                old = self._rows.get(key)
                if old == row:
                    continue
                self._rows[key] = row
                self._lines.pop(key, None)
                if old is None:
                    self._order.append(key)
                    added = True
                else:
                    changed.append(key)
                if sort_at is not None and (old is None or old[sort_at] != row[sort_at]):
                    self._sort_keys[key] = _sort_key(row[sort_at])
                    reorder = True
        for key in gone:
            del self._rows[key]
            self._lines.pop(key, None)
            self._sort_keys.pop(key, None)
        if gone:
            self._order = [key for key in self._order if key in self._rows]
        if added or gone or reorder:
            self._reorder(sort=reorder)
        elif changed:
            self._refresh_rows(changed)

    def _reorder(self, *, sort: bool) -> None:
        if sort and self.sort_column is not None:
            self._order.sort(key=self._sort_keys.__getitem__, reverse=self.sort_reverse)
        self._index = None
        self.virtual_size = Size(self._width, len(self._order) + 1)
        self._follow_cursor()
        self.refresh()

    def _refresh_rows(self, keys: list[str]) -> None:
        """Repaint the lines of these rows that are on screen."""
        positions = self._positions()
        top = int(self.scroll_y)
        bottom = top + self.size.height
        for key in keys:
            if top <= positions[key] < bottom:
                self.refresh_line(positions[key] + 1)

    def _positions(self) -> dict[str, int]:
        if self._index is None:
            self._index = {key: i for i, key in enumerate(self._order)}
        return self._index

    # -- sorting ----------------------------------------------------------------------------------

    def sort_by(self, column: str) -> None:
        """Sort by `column`; asking again reverses the order."""
        self.sort_reverse = not self.sort_reverse if self.sort_column == column else False
        self.sort_column = column
        at = self._keys.index(column)
        self._sort_keys = {key: _sort_key(row[at]) for key, row in self._rows.items()}
        self._reorder(sort=True)

    # -- the cursor -------------------------------------------------------------------------------

    def move_cursor(self, *, row: int) -> None:
        """Put the cursor on row `row` (clamped) and scroll it into view."""
        if not self._order:
            return
        self.cursor_row = max(0, min(row, len(self._order) - 1))
        self._cursor_key = self._order[self.cursor_row]
        self.refresh()
        self._scroll_to_cursor()

    def _follow_cursor(self) -> None:
        """After rows moved: keep the cursor on its row (or on the same line when its row is gone)."""
        if not self._order:
            self._cursor_key, self.cursor_row = None, 0
            return
        if self._cursor_key in self._rows:
            self.cursor_row = self._positions()[self._cursor_key]
        else:
            self.cursor_row = min(self.cursor_row, len(self._order) - 1)
            self._cursor_key = self._order[self.cursor_row]
        self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        top = int(self.scroll_y)
        visible = max(1, self.size.height - 1)
        if not top <= self.cursor_row < top + visible:
            self.scroll_to_region(
                Region(int(self.scroll_x), self.cursor_row + 1, 1, 1),
                spacing=Spacing(top=1),
                animate=False,
                force=True,
                immediate=True,
            )

    def action_cursor(self, step: int) -> None:
        self.move_cursor(row=self.cursor_row + step)

    def action_cursor_down(self) -> None:
        self.action_cursor(1)

    def action_first(self) -> None:
        self.move_cursor(row=0)

    def action_last(self) -> None:
        self.move_cursor(row=len(self._order) - 1)

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.size.height - 2))

    def action_select(self) -> None:
        if self._cursor_key is not None:
            self.post_message(self.RowSelected(self, self._cursor_key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            x = offset.x + int(self.scroll_x)
            for key, width in zip(self._keys, self._widths, strict=True):
                x -= width + 2 * PADDING
                if x < 0:
                    self.sort_by(key)
                    return
            return
        row = offset.y - 1 + int(self.scroll_y)
        if row < len(self._order):
            again = row == self.cursor_row
            self.move_cursor(row=row)
            if again:
                self.action_select()

    # -- painting ---------------------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        """Give the last column whatever width the others leave (a vertical scrollbar's room kept free)."""
        declared = [column.width for column in self.COLUMNS]
        room = event.size.width - self.styles.scrollbar_size_vertical - sum(w + 2 * PADDING for w in declared[:-1])
        widths = [*declared[:-1], max(declared[-1], room - 2 * PADDING)]
        if widths != self._widths:
            self._widths = widths
            self._lines.clear()
            self.virtual_size = Size(self._width, len(self._order) + 1)
            self.refresh()

    def render_lines(self, crop: Region) -> list[Strip]:
        """Resolve the row styles once per paint, not once per line."""
        even, cursor = (self.get_component_rich_style(f"live-table--{name}") for name in ("even-row", "cursor"))
        base = self.rich_style
        self._row_styles = (base, base + even, base + cursor, base + even + cursor)
        self._header_style = self.get_component_rich_style("live-table--header")
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        if y == 0:
            header = self._header_style
            return _window(self._header(), scroll_x, width, header).apply_style(header)
        row = y - 1 + scroll_y
        if row >= len(self._order):
            return Strip.blank(width, self._row_styles[0])
        key = self._order[row]
        line = self._lines.get(key)
        if line is None:
            values = self._rows[key]
            line = self._lines[key] = self._line([render(v) for render, v in zip(self._renders, values, strict=True)])
        style = self._row_styles[2 * (row == self.cursor_row) + (row % 2 == 0)]
        return _window(line, scroll_x, width, style).apply_style(style)

    def _header(self) -> Strip:
        labels = []
        for column in self.COLUMNS:
            arrow = ("▼" if self.sort_reverse else "▲") if column.key == self.sort_column else ""
            labels.append(column.label + arrow)
        return self._line(labels)

    def _line(self, cells: Sequence[Cell]) -> Strip:
        """One line of cells, each cropped or padded to its column's width."""
        console = self.app.console
        segments: list[Segment] = []
        for width, cell in zip(self._widths, cells, strict=True):
            if isinstance(cell, str) or not cell.spans:  # one style: one segment, no Text machinery
                text, style = (cell, None) if isinstance(cell, str) else (cell.plain, console.get_style(cell.style))
                segments.append(Segment(f"{PAD}{_fit(text, width)}{PAD}", style or None))
                continue
            key = (width, cell.plain, tuple(cell.spans), cell.style)
            rendered = _STYLED_CELLS.get(key)
            if rendered is None:
                fitted = cell.copy()
                fitted.truncate(width, overflow="ellipsis", pad=True)
                if len(_STYLED_CELLS) > 4096:
                    _STYLED_CELLS.clear()
                styled = Segment.apply_style(fitted.render(console), console.get_style(fitted.style))
                rendered = _STYLED_CELLS[key] = [Segment(PAD), *styled, Segment(PAD)]
            segments.extend(rendered)
        return Strip(segments, self._width)


_STYLED_CELLS: dict[tuple[Any, ...], list[Segment]] = {}  # multi-style cells (workers bars) by content: few differ


def _window(line: Strip, x: int, width: int, style: Style) -> Strip:
    """The `width` cells of `line` from `x`, padded in `style`. A line that is that window already is returned as it
    is: `Strip.crop_extend` would cache it in itself, and a strip that refers to itself is freed only by a pass of the
    generation it has reached (a replaced row's line, by a pass of the middle generation: 0.1-0.2 s for a few
    thousand such lines)."""
    if x == 0 and line.cell_length == width:
        return line
    return line.crop_extend(x, x + width, style)


def _fit(text: str, width: int) -> str:
    """`text` padded to `width` cells, or cut with an ellipsis."""
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    return set_cell_size(text, width - 1) + "…"


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers as numbers, text case-folded, tuples element by element, missing values last."""
    if value is None:
        return (3, 0)
    if isinstance(value, (bool, int, float)):
        return (0, value)
    if isinstance(value, str):
        return (1, value.lower())
    return (2, tuple(_sort_key(v) for v in value))
