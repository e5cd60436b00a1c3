"""Live tables on Textual's line API: rows are kept as raw values and drawn only while on screen.

A row's line is rendered when its values change and cached; scrolling, the cursor and zebra stripes are styles
applied when a line is painted. A table of 10,000 CVMs therefore costs what its visible lines cost, and a sync
touches only the rows whose values changed. Columns have fixed widths: nothing is ever re-measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from dittotui.rows import Row

Render = Callable[[Any], Text | str]
Column = tuple[str, str, int, Render]  # key, label, width, render

STATE_STYLE = {"fresh": "green", "stale": "bold yellow", "connecting": "red"}
SECURITY_STYLE = {"sev-snp": "bold magenta", "sev-es": "magenta", "sev": "cyan", "none": "dim"}
SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 8
PADDING = 1  # cells of space on each side of a column
PAD = " " * PADDING


class LiveTable(ScrollView, can_focus=True):
    """Rows synced from a dict of key -> raw row, a row cursor that stays on its row, sortable by any column."""

    COLUMNS: ClassVar[list[Column]] = []
    BINDINGS = [
        Binding("enter", "select", "Open", show=False),
        Binding("up", "cursor(-1)", show=False),
        Binding("down", "cursor(1)", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "cursor(-1_000_000_000)", show=False),
        Binding("end", "cursor(1_000_000_000)", show=False),
        Binding("left", "scroll_left", show=False),
        Binding("right", "scroll_right", show=False),
    ]
    COMPONENT_CLASSES = {"live-table--header", "live-table--cursor", "live-table--even-row"}
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
        self._widths = [width for _k, _l, width, _r in self.COLUMNS]  # the last one stretches to fill the table
        self._keys = [key for key, _l, _w, _r in self.COLUMNS]
        self._paint_styles: tuple[Style, ...] = ()  # base, even, cursor, even + cursor, header: set per paint

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

    def get_cell(self, key: str, column: str) -> Text | str:
        """The cell as rendered from the row's newest values."""
        at = self._keys.index(column)
        return self.COLUMNS[at][3](self._rows[key][at])

    # -- syncing ----------------------------------------------------------------------------------

    def sync(self, rows: dict[str, Row]) -> None:
        """Show exactly `rows`: add new ones, drop those that are gone, redraw those whose values changed."""
        gone = self._rows.keys() - rows.keys()
        self._apply([rows], gone)

    def sync_groups(self, groups: dict[str, dict[str, Row]]) -> None:
        """Like `sync`, for only the groups (hosts) whose rows may have changed; other groups stay as they are."""
        gone: set[str] = set()
        for group, rows in groups.items():
            gone |= self._groups.get(group, set()) - rows.keys()
            self._groups[group] = set(rows)
        self._apply(groups.values(), gone)

    def _apply(self, batches: Iterable[dict[str, Row]], gone: set[str]) -> None:
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
            for key, width in zip(self._keys, self._widths):
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
        declared = [width for _k, _l, width, _r in self.COLUMNS]
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
        self._paint_styles = (
            base,
            base + even,
            base + cursor,
            base + even + cursor,
            self.get_component_rich_style("live-table--header"),
        )
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        base, even, cursor, even_cursor, header = self._paint_styles
        if y == 0:
            return self._header().crop_extend(scroll_x, scroll_x + width, header).apply_style(header)
        row = y - 1 + scroll_y
        if row >= len(self._order):
            return Strip.blank(width, base)
        key = self._order[row]
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = self._line(
                [render(v) for (_k, _l, _w, render), v in zip(self.COLUMNS, self._rows[key])]
            )
        if row == self.cursor_row:
            style = even_cursor if row % 2 == 0 else cursor
        else:
            style = even if row % 2 == 0 else base
        return line.crop_extend(scroll_x, scroll_x + width, style).apply_style(style)

    def _header(self) -> Strip:
        labels = []
        for key, label, _width, _render in self.COLUMNS:
            arrow = ("▼" if self.sort_reverse else "▲") if key == self.sort_column else ""
            labels.append(label + arrow)
        return self._line(labels)

    def _line(self, cells: list[Text | str]) -> Strip:
        """One line of cells, each cropped or padded to its column's width."""
        console = self.app.console
        segments: list[Segment] = []
        for width, cell in zip(self._widths, cells):
            if isinstance(cell, str) or not cell.spans:  # one style: one segment, no Text machinery
                text, style = (cell, None) if isinstance(cell, str) else (cell.plain, console.get_style(cell.style))
                segments.append(Segment(f"{PAD}{_fit(text, width)}{PAD}", style or None))
                continue
            key = (width, cell.plain, tuple(cell.spans), cell.style)
            rendered = _STYLED_CELLS.get(key)
            if rendered is None:
                text = cell.copy()
                text.truncate(width, overflow="ellipsis", pad=True)
                if len(_STYLED_CELLS) > 4096:
                    _STYLED_CELLS.clear()
                styled = Segment.apply_style(text.render(console), console.get_style(text.style))
                rendered = _STYLED_CELLS[key] = [Segment(PAD), *styled, Segment(PAD)]
            segments.extend(rendered)
        return Strip(segments, self._width)


_STYLED_CELLS: dict[tuple[Any, ...], list[Segment]] = {}  # multi-style cells (workers bars) by content: few differ


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


def plain(value: Any) -> str:
    return "-" if value is None else str(value)


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:5.1f}"


def state(value: tuple[str, int | None]) -> Text:
    """`live`, `stale 12s` (the age of the last data) or `connecting`."""
    name, age = value
    label = "live" if name == "fresh" else f"stale {age}s" if name == "stale" and age is not None else name
    return Text(label, style=STATE_STYLE[name])


def capacity(value: tuple[int | None, int | None, str]) -> Text:
    used, cpus, error = value
    if error:
        return Text(error[:80], style="yellow" if used is not None else "red")
    return Text(f"{used}/{cpus}", style="bold red" if used and cpus and used > cpus else "")


def yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def name(value: tuple[str, bool]) -> Text:
    text, stale = value
    return Text(text, style="dim" if stale else "bold")


def host_name(value: tuple[str, bool]) -> Text:
    text, stale = value
    return Text(text, style="dim" if stale else "")


def workers(value: tuple[int, int]) -> Text:
    """`███░░░░░ 3/8`: active workers of the CVM's maximum."""
    active, maximum = value
    filled = round(BAR_WIDTH * active / maximum) if maximum else 0
    return Text.assemble(("█" * filled, "green"), ("░" * (BAR_WIDTH - filled), "dim"), f" {active}/{maximum}")


def security(value: str) -> Text:
    return Text(value, style=SECURITY_STYLE.get(value, ""))


def run_state(value: str) -> Text:
    return Text(value, style="green" if value == "running" else "yellow")


def mark(value: bool) -> Text | str:
    return Text("●", style="bold yellow") if value else " "


def p99(value: tuple[float | None, bool]) -> Text | str:
    latency, breach = value
    return "-" if latency is None else Text(f"{latency:.1f}", style="bold red" if breach else "")


def sparkline(value: tuple[tuple[float, ...], float] | tuple[()]) -> Text:
    """The recent values as block characters, scaled to the SLO or the largest value."""
    if not value:
        return Text("")
    values, ceiling = value
    top = max([ceiling, *values]) or 1.0
    return Text("".join(SPARKS[min(len(SPARKS) - 1, int(v / top * len(SPARKS)))] for v in values), style="cyan")


def elastic(value: tuple[str, bool, bool] | None) -> Text | str:
    """`● threshold` when the policy runs, `○ threshold` when it is off; yellow when it holds for want of data."""
    if value is None:
        return "-"
    policy, enabled, alert = value
    if not enabled:
        return Text(f"○ {policy}", style="dim")
    return Text(f"● {policy}", style="bold yellow" if alert else "bold green")


def decision(value: tuple[str, str, bool] | None) -> Text | str:
    """The policy's last decision and its reason."""
    if value is None or not value[0]:
        return "-"
    label, reason, alert = value
    style = "bold yellow" if alert else {"up": "green", "down": "cyan"}.get(label.split(" ")[0], "")
    return Text.assemble((label, style), f" {reason}" if reason else "")


def errors(value: int | None) -> Text | str:
    return "-" if value is None else Text(str(value), style="red" if value else "")


def slo(value: bool | None) -> Text | str:
    return "" if value is None else Text("!", style="bold red") if value else Text("ok", style="green")


def wrk_p99(value: tuple[float, int] | None) -> Text | str:
    return "-" if value is None else Text(f"{value[0]:.0f}ms", style="red" if value[1] else "")


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value}G"


class HostsTable(LiveTable):
    COLUMNS = [
        ("host", "Host", 12, plain),
        ("state", "State", 14, state),
        ("cpu", "CPU%", 5, number),
        ("mem", "Mem", 5, gib),
        ("snp", "SNP", 3, yes_no),
        ("capacity", "vCPUs used/cap", 20, capacity),
    ]


class CVMTable(LiveTable):
    COLUMNS = [
        ("mark", " ", 1, mark),
        ("cvm", "CVM", 14, name),
        ("host", "Host", 10, host_name),
        ("workers", "Workers", 13, workers),
        ("cpu", "CPU%", 5, number),
        ("elastic", "Elastic", 15, elastic),
        ("security", "Security", 8, security),
        ("state", "State", 7, run_state),
        ("boot", "Boot", 4, plain),
        ("decision", "Last decision", 36, decision),
        ("policy", "Launch policy", 20, plain),
    ]


class ServicesTable(LiveTable):
    COLUMNS = [
        ("service", "Service", 13, plain),
        ("cvm", "CVM", 14, plain),
        ("p50", "p50", 5, number),
        ("p99", "p99", 6, p99),
        ("trend", "p99 trend", 10, sparkline),
        ("rps", "req/s", 5, number),
        ("errors", "Err", 3, errors),
        ("slo", "SLO", 3, slo),
        ("wrk", "wrk p99", 7, wrk_p99),
        ("host", "Host", 10, plain),
    ]
