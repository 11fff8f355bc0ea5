"""A live table of named rows with the highlighted one in full under it: the workers and
the schedules screens."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Generic, TypeVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Static

from jobq_core.admin import AsyncAdmin

from ..widgets.status import Banner, Crumbs, StatusBar
from ..widgets.table import add_columns, sync_table
from .base import LiveScreen

R = TypeVar("R")


class RowsScreen(LiveScreen, Generic[R]):
    #: The table's id; the line under it is `<table_id>-info`.
    table_id: ClassVar[str]
    #: (key, header) of each column.
    columns: ClassVar[list[tuple[str, str]]]
    #: What the line under an empty table says.
    empty: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.listed: dict[str, R] = {}

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield Banner(id="banner")
        yield DataTable(id=self.table_id, cursor_type="row", zebra_stripes=True)
        yield Static(id=f"{self.table_id}-info")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Banner).show(None)
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.columns:  # a refresh may have drawn it already
            add_columns(table, self.columns)
        table.focus()
        self._show_info()

    async def fetch(self, admin: AsyncAdmin) -> list[R]:
        raise NotImplementedError

    def key(self, row: R) -> str:
        raise NotImplementedError

    def cells(self, row: R, now: datetime) -> list[Text]:
        raise NotImplementedError

    def describe(self, row: R, now: datetime) -> Text:
        """The highlighted row in full: what the table's columns cut."""
        raise NotImplementedError

    def show(self, data: list[R]) -> None:
        self.listed = {self.key(r): r for r in data}
        table: DataTable[Text] = self.query_one(DataTable)
        now = self.jobq.now()
        sync_table(table, self.columns, {self.key(r): self.cells(r, now) for r in data})
        self._show_info()

    def selected(self) -> R | None:
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.row_count:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self.listed.get(key.value or "")

    @on(DataTable.RowHighlighted)
    def _show_info(self) -> None:
        row = self.selected()
        info = (Text(self.empty, style="dim") if row is None
                else self.describe(row, self.jobq.now()))
        self.query_one(f"#{self.table_id}-info", Static).update(info)
