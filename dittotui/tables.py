"""DataTables synced from keyed rows of raw values: a cell is rendered and updated only when its value changed.

Columns have fixed widths, so an update never re-measures the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from dittotui.rows import Row

Render = Callable[[Any], Text | str]

STATE_STYLE = {"fresh": "green", "stale": "bold yellow", "connecting": "red"}
SECURITY_STYLE = {"sev-snp": "bold magenta", "sev-es": "magenta", "sev": "cyan", "none": "dim"}
SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 8


class LiveTable(DataTable):
    """A table whose rows are synced from a dict of key -> raw row; sortable by any column."""

    COLUMNS: ClassVar[list[tuple[str, str, int, Render]]] = []  # (key, label, width, render)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._shown: dict[str, Row] = {}  # what the cells show
        self._pending: dict[str, Row] = {}  # newer values for rows off screen
        self._groups: dict[str, set[str]] = {}  # group (host) -> its row keys, for sync_groups
        self.sort_column: str | None = None
        self.sort_reverse = False

    def on_mount(self) -> None:
        for key, label, width, _render in self.COLUMNS:
            self.add_column(label, width=width, key=key)

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def sync(self, rows: dict[str, Row]) -> None:
        """Add new rows, remove rows that are gone, and keep the newest values of the rest.

        Changed cells are updated at once for rows on screen (or for all rows while sorted); the others wait
        until they scroll into view, so a fleet of thousands of rows costs only what is visible.
        """
        for key in [k for k in self._shown if k not in rows]:
            self._remove(key)
        self.apply_visible(force=self._merge(rows))

    def sync_groups(self, groups: dict[str, dict[str, Row]]) -> None:
        """Like `sync`, for only the groups (hosts) whose rows may have changed; other groups stay as they are."""
        added = False
        for group, rows in groups.items():
            for key in self._groups.get(group, set()) - rows.keys():
                self._remove(key)
            self._groups[group] = set(rows)
            added |= self._merge(rows)
        self.apply_visible(force=added)

    def _merge(self, rows: dict[str, Row]) -> bool:
        """Add new rows, queue changed ones; True when a row was added."""
        added = False
        for key, row in rows.items():
            old = self._shown.get(key)
            if old is None:
                self.add_row(*(render(v) for (_k, _l, _w, render), v in zip(self.COLUMNS, row)), key=key)
                self._shown[key] = row
                added = True
            elif old != row:
                self._pending[key] = row
            else:
                self._pending.pop(key, None)
        return added

    def _remove(self, key: str) -> None:
        self.remove_row(key)
        del self._shown[key]
        self._pending.pop(key, None)

    def apply_visible(self, *, force: bool = False) -> None:
        """Update the cells of pending rows that are on screen (all of them while sorted)."""
        if not self._pending:
            if force and self.sort_column is not None:
                self._apply_sort()
            return
        reorder = force
        if self.sort_column is not None or len(self._pending) <= 200:
            keys = list(self._pending)
        else:
            top = int(self.scroll_y)
            rows = range(max(0, top - 2), min(self.row_count, top + self.size.height + 2))
            on_screen = (self.coordinate_to_cell_key(Coordinate(r, 0)).row_key.value for r in rows)
            keys = [k for k in on_screen if k in self._pending]
        for key in keys:
            row = self._pending.pop(key)
            for (column, _label, _width, render), before, after in zip(self.COLUMNS, self._shown[key], row):
                if before != after:
                    self.update_cell(key, column, render(after))
                    reorder |= column == self.sort_column
            self._shown[key] = row
        if reorder and self.sort_column is not None:
            self._apply_sort()

    def sort_by(self, column: str) -> None:
        """Sort by `column`; asking again reverses the order."""
        self.sort_reverse = not self.sort_reverse if self.sort_column == column else False
        self.sort_column = column
        self._apply_sort()

    def _apply_sort(self) -> None:
        assert self.sort_column is not None
        self.sort(self.sort_column, key=_sort_key, reverse=self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        self.sort_by(event.column_key.value or "")


def _sort_key(cell: Text | str) -> tuple[int, float | str]:
    """Numbers sort as numbers (a workers bar by its count, `stale 12s` by its age), the rest as text."""
    text = cell.plain if isinstance(cell, Text) else cell
    number = text.strip().split(" ")[-1].split("/")[0].rstrip("sm")
    try:
        return (0, float(number))
    except ValueError:
        return (1, text.lower())


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
    return Text("█" * filled, style="green") + Text("░" * (BAR_WIDTH - filled), style="dim") + Text(f" {active}/{maximum}")


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


def errors(value: int | None) -> Text | str:
    return "-" if value is None else Text(str(value), style="red" if value else "")


def slo(value: bool | None) -> Text | str:
    return "" if value is None else Text("!", style="bold red") if value else Text("ok", style="green")


def wrk_p99(value: tuple[float, int] | None) -> Text | str:
    return "-" if value is None else Text(f"{value[0]:.0f}ms", style="red" if value[1] else "")


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value}G"


class HostsTable(LiveTable):
    COLUMNS = [("host", "Host", 12, plain), ("state", "State", 14, state), ("cpu", "CPU%", 5, number),
               ("mem", "Mem", 5, gib), ("snp", "SNP", 3, yes_no), ("capacity", "vCPUs used/cap", 28, capacity)]


class CVMTable(LiveTable):
    COLUMNS = [("mark", " ", 1, mark), ("cvm", "CVM", 14, name), ("host", "Host", 10, host_name),
               ("workers", "Workers", 13, workers), ("cpu", "CPU%", 5, number), ("security", "Security", 8, security),
               ("state", "State", 7, run_state), ("boot", "Boot", 4, plain), ("policy", "Policy", 20, plain),
               ("elastic", "Elastic", 7, plain)]


class ServicesTable(LiveTable):
    COLUMNS = [("service", "Service", 13, plain), ("cvm", "CVM", 14, plain), ("p50", "p50", 5, number),
               ("p99", "p99", 6, p99), ("trend", "p99 trend", 10, sparkline), ("rps", "req/s", 5, number),
               ("errors", "Err", 3, errors), ("slo", "SLO", 3, slo), ("wrk", "wrk p99", 7, wrk_p99),
               ("host", "Host", 10, plain)]
