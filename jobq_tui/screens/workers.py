"""The workers screen: every runner in the registry, as its heartbeats left it, and drain.

The same list as `jobq workers`; `d` is `jobq workers --drain <id>`."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from jobq_cli.format import literal, span, zoned
from jobq_core.admin import AsyncAdmin, Worker

from ..messages import Act
from ..widgets.status import Banner, Crumbs, StatusBar
from ..widgets.table import add_columns, sync_table
from .base import LiveScreen

#: The most useful first: an 80-column terminal cuts the id and types, which the line under
#: the table shows in full for the highlighted worker.
COLUMNS = [("status", "status"), ("host", "host"), ("pid", "pid"), ("busy", "in flight"),
           ("beat", "last beat"), ("started", "started"), ("id", "id"), ("types", "types")]
EMPTY = "no runner has registered (runners register when they start)"
_STATUS_STYLE = {"running": "green", "draining": "yellow", "lost": "bold red"}


def _cells(w: Worker, now: datetime) -> list[Text]:
    return [
        Text(w.status, style=_STATUS_STYLE[w.status]),
        literal(w.host, 24),
        Text(str(w.pid), justify="right"),
        Text(f"{w.in_flight}/{w.concurrency}", justify="right"),
        Text(f"{span(w.silent_for)} ago", justify="right",
             style="bold red" if not w.alive else ""),
        Text(zoned(w.started_at, now)),
        literal(w.id, 40),
        literal(", ".join(w.types) or "every type", 30),
    ]


class WorkersScreen(LiveScreen):
    crumb = "workers"
    help_note = ("in flight: running jobs / concurrency · lost: three heartbeats missed "
                 "(red); a day later it leaves the list · d = jobq workers --drain <id>")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "drain", "Drain…"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.listed: dict[str, Worker] = {}

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield Banner(id="banner")
        yield DataTable(id="workers", cursor_type="row", zebra_stripes=True)
        yield Static(id="workers-info")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Banner).show(None)
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.columns:  # a refresh may have drawn it already
            add_columns(table, COLUMNS)
        table.focus()
        self._show_info()

    async def fetch(self, admin: AsyncAdmin) -> list[Worker]:
        return await admin.workers()

    def show(self, data: list[Worker]) -> None:
        self.listed = {w.id: w for w in data}
        table: DataTable[Text] = self.query_one(DataTable)
        now = self.jobq.now()
        sync_table(table, COLUMNS, {w.id: _cells(w, now) for w in data})
        self._show_info()

    def _selected(self) -> Worker | None:
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.row_count:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self.listed.get(key.value or "")

    @on(DataTable.RowHighlighted)
    def _show_info(self) -> None:
        """The highlighted worker in full: what an 80-column row cuts."""
        info = Text()
        worker = self._selected()
        if worker is None:
            info.append(EMPTY, style="dim")
        else:
            now = self.jobq.now()
            info.append("worker ", style="dim")
            info.append(literal(worker.id, 80, style="bold"))
            info.append(f" · {worker.in_flight} of {worker.concurrency} slots busy · "
                        f"beats every {worker.beat_seconds:g}s", style="dim")
            info.append("\ntypes: ", style="dim")
            info.append(literal(", ".join(worker.types) or "every type", 200))
            if worker.drain_requested_at is not None:
                info.append("\ndrain asked by ", style="yellow")
                info.append(literal(worker.drain_requested_by or "?", 60, style="yellow"))
                info.append(f" at {zoned(worker.drain_requested_at, now)}", style="yellow")
            if not worker.alive:
                info.append(f"\nlost: no heartbeat for {span(worker.silent_for)} (it died or "
                            "cannot reach the database); its leases expire and are taken "
                            "back", style="bold red")
        self.query_one("#workers-info", Static).update(info)

    def action_drain(self) -> None:
        worker = self._selected()
        if worker is None:
            self.notify(EMPTY, severity="warning", markup=False)
        elif not worker.alive:
            self.notify(f"worker {worker.id} is lost: it cannot drain", severity="warning",
                        markup=False)
        elif worker.drain_requested_at is not None:
            self.notify(f"worker {worker.id} is already draining", markup=False)
        else:
            self.post_message(Act("drain", worker=worker))

