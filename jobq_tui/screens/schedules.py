"""The schedules screen: every periodic job's schedule, its last slot and job, its next slot.

The same list as `jobq schedules`; enter opens the last slot's job."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from jobq_cli.format import literal, relative, stamp
from jobq_core.admin import AsyncAdmin, ScheduleRow

from ..messages import Open
from .detail import DetailScreen
from .rows import RowsScreen

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
        literal(s.missed, 10),
    ]


class SchedulesScreen(RowsScreen[ScheduleRow]):
    crumb = "schedules"
    help_note = ("slots are fired once across all runners · missed: what a tick does with "
                 "slots no runner fired in time (skip, latest, all) · enter = the last job")
    table_id = "schedules"
    columns = COLUMNS
    empty = EMPTY
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_job", "Last job"),
    ]

    async def fetch(self, admin: AsyncAdmin) -> list[ScheduleRow]:
        return await admin.schedules()

    def key(self, row: ScheduleRow) -> str:
        return row.name

    def cells(self, row: ScheduleRow, now: datetime) -> list[Text]:
        return _cells(row, now)

    def describe(self, row: ScheduleRow, now: datetime) -> Text:
        info = Text()
        info.append("schedule ", style="dim")
        info.append(literal(row.name, 80, style="bold"))
        info.append(" · ", style="dim")
        info.append(literal(row.spec, 80))
        info.append("\nnext slot ", style="dim")
        info.append(stamp(row.next_slot) if row.next_slot else "unknown")
        info.append(" · last slot handled ", style="dim")
        info.append(stamp(row.last_slot))
        info.append(" · fired ", style="dim")
        info.append(stamp(row.fired_at))
        info.append("\nregistered by ", style="dim")
        info.append(literal(row.registered_by, 80))
        info.append(f" at {stamp(row.registered_at)}", style="dim")
        return info

    @on(DataTable.RowSelected)
    def action_open_job(self) -> None:
        schedule = self.selected()
        if schedule is None or schedule.last_job_id is None:
            self.notify("no job fired yet for this schedule" if schedule else EMPTY,
                        severity="warning", markup=False)
            return
        self.post_message(Open(DetailScreen(schedule.last_job_id)))
