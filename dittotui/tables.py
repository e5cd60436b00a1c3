"""DataTables fed whole keyed rows that touch only the cells that changed (fixed widths, no re-measuring)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.widgets import DataTable

from dittotui.rows import Row


def _signature(cell: Text | str) -> tuple[str, str]:
    return (cell.plain, str(cell.style) + repr(cell.spans)) if isinstance(cell, Text) else (cell, "")


class LiveTable(DataTable):
    """A table whose rows are synced from a dict of key -> row; sortable by any column."""

    COLUMNS: ClassVar[list[tuple[str, str, int]]] = []  # (key, label, width)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._shown: dict[str, tuple[tuple[str, str], ...]] = {}
        self.sort_column: str | None = None
        self.sort_reverse = False

    def on_mount(self) -> None:
        for key, label, width in self.COLUMNS:
            self.add_column(label, width=width, key=key)

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def sync(self, rows: dict[str, Row]) -> None:
        """Add new rows, update changed cells, remove rows that are gone."""
        changed = False
        for key in [k for k in self._shown if k not in rows]:
            self.remove_row(key)
            del self._shown[key]
            changed = True
        columns = [key for key, _label, _width in self.COLUMNS]
        for key, row in rows.items():
            signature = tuple(_signature(cell) for cell in row)
            old = self._shown.get(key)
            if old is None:
                self.add_row(*row, key=key)
                changed = True
            elif old != signature:
                for column, cell, before, after in zip(columns, row, old, signature):
                    if before != after:
                        self.update_cell(key, column, cell)
                        changed |= column == self.sort_column
            self._shown[key] = signature
        if changed and self.sort_column is not None:
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
    """Numbers sort as numbers (a workers bar by its count), everything else as text."""
    text = cell.plain if isinstance(cell, Text) else cell
    number = text.strip().split(" ")[-1].split("/")[0]
    try:
        return (0, float(number))
    except ValueError:
        return (1, text.lower())


class HostsTable(LiveTable):
    COLUMNS = [("host", "Host", 12), ("state", "State", 14), ("cpu", "CPU%", 5), ("mem", "Mem", 5),
               ("snp", "SNP", 3), ("capacity", "vCPUs used/cap", 28)]


class CVMTable(LiveTable):
    COLUMNS = [("mark", " ", 1), ("cvm", "CVM", 14), ("host", "Host", 10), ("workers", "Workers", 13),
               ("cpu", "CPU%", 5), ("security", "Security", 8), ("state", "State", 7), ("boot", "Boot", 4),
               ("policy", "Policy", 20), ("elastic", "Elastic", 7)]


class ServicesTable(LiveTable):
    COLUMNS = [("service", "Service", 13), ("cvm", "CVM", 14), ("p50", "p50", 5), ("p99", "p99", 6),
               ("trend", "p99 trend", 10), ("rps", "req/s", 5), ("errors", "Err", 3), ("slo", "SLO", 3),
               ("wrk", "wrk p99", 7), ("host", "Host", 10)]
