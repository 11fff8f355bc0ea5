"""Keyed DataTables that refresh in place: the overview's types and the workers screen."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

#: Columns of text, here and on the workers screen; the others hold numbers and sparklines.
_LEFT = {"type", "status", "host", "started", "types", "id"}


def add_columns(table: DataTable[Text], columns: list[tuple[str, str]]) -> None:
    for key, label in columns:
        table.add_column(Text(label, justify="left" if key in _LEFT else "right"), key=key)


def sync_table(table: DataTable[Text], columns: list[tuple[str, str]],
               rows: dict[str, list[Text]]) -> None:
    """Show `rows` (keyed, in order) in `table`. The cursor stays on its row's key across
    refreshes; if that row is gone, at the same place. A row that came or went, or a change of
    columns, rebuilds the table (a few rows), so every column is measured afresh."""
    selected = None
    if table.row_count:
        selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    index = table.cursor_row
    if [c.key.value for c in table.ordered_columns] != [k for k, _ in columns] or \
            [r.key.value for r in table.ordered_rows] != list(rows):
        table.clear(columns=True)
        add_columns(table, columns)
        for key, cells in rows.items():
            table.add_row(*cells, key=key)
    else:
        for key, cells in rows.items():
            for (column, _), cell in zip(columns, cells, strict=True):
                if table.get_cell(key, column) != cell:
                    table.update_cell(key, column, cell, update_width=True)
    if rows:
        at = list(rows).index(selected) if selected in rows else min(index, len(rows) - 1)
        if at != table.cursor_row:
            table.move_cursor(row=at, animate=False)
