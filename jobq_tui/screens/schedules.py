"""The schedules screen: every periodic job's schedule, its last slot and job, its next slot.

The same list as `jobq schedules`; enter opens the last slot's job."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from jobq_cli.format import literal, relative, stamp
from jobq_core.admin import AsyncAdmin, ScheduleRow

from ..messages import Open
from ..widgets.status import Banner, Crumbs, StatusBar
from ..widgets.table import add_columns, sync_table
from .base import LiveScreen
from .detail import DetailScreen

COLUMNS = [("name", "name"), ("spec", "schedule"), ("next", "next slot"),
           ("last", "last slot"), ("job", "last job"), ("missed", "missed")]
EMPTY = "no schedule is registered (a runner registers its periodic jobs when it starts)"
_STATE_STYLE = {"failed": "bold red", "cancelled": "yellow", "completed": "green"}


def _cells(s: ScheduleRow, now: datetime) -> list[Text]:
    job = Text("—") if s.last_job_id is None else Text.assemble(
        f"{s.last_job_id} ", (s.last_state or "cleared", _STATE_STYLE.get(s.last_state or "", "")))
    return [
        literal(s.name, 30),
        literal(s.spec, 40),
        Text(relative(s.next_slot, now) if s.next_slot is not None else "unknown"),
        Text(relative(s.last_slot, now)),
        job,
        Text(s.missed),
    ]


class SchedulesScreen(LiveScreen):
    crumb = "schedules"
    help_note = ("slots are fired once across all runners · missed: what a tick does with "
                 "slots no runner fired in time (skip, latest, all) · enter = the last job")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_job", "Last job"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.listed: dict[str, ScheduleRow] = {}

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield Banner(id="banner")
        yield DataTable(id="schedules", cursor_type="row", zebra_stripes=True)
        yield Static(id="schedules-info")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Banner).show(None)
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.columns:  # a refresh may have drawn it already
            add_columns(table, COLUMNS)
        table.focus()
        self._show_info()

    async def fetch(self, admin: AsyncAdmin) -> list[ScheduleRow]:
        return await admin.schedules()

    def show(self, data: list[ScheduleRow]) -> None:
        self.listed = {s.name: s for s in data}
        table: DataTable[Text] = self.query_one(DataTable)
        now = self.jobq.now()
        sync_table(table, COLUMNS, {s.name: _cells(s, now) for s in data})
        self._show_info()

    def _selected(self) -> ScheduleRow | None:
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.row_count:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return self.listed.get(key.value or "")

    @on(DataTable.RowHighlighted)
    def _show_info(self) -> None:
        """The highlighted schedule in full, with its times and who registered it."""
        info = Text()
        schedule = self._selected()
        if schedule is None:
            info.append(EMPTY, style="dim")
        else:
            info.append("schedule ", style="dim")
            info.append(literal(schedule.name, 80, style="bold"))
            info.append(" · ", style="dim")
            info.append(literal(schedule.spec, 80))
            info.append("\nnext slot ", style="dim")
            info.append(stamp(schedule.next_slot) if schedule.next_slot else "unknown")
            info.append(" · last slot handled ", style="dim")
            info.append(stamp(schedule.last_slot))
            info.append(" · fired ", style="dim")
            info.append(stamp(schedule.fired_at))
            info.append("\nregistered by ", style="dim")
            info.append(literal(schedule.registered_by, 80))
            info.append(f" at {stamp(schedule.registered_at)}", style="dim")
        self.query_one("#schedules-info", Static).update(info)

    @on(DataTable.RowSelected)
    def action_open_job(self) -> None:
        schedule = self._selected()
        if schedule is None or schedule.last_job_id is None:
            self.notify("no job fired yet for this schedule" if schedule else EMPTY,
                        severity="warning", markup=False)
            return
        self.post_message(Open(DetailScreen(schedule.last_job_id)))
