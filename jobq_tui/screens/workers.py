"""The workers screen: every runner in the registry, as its heartbeats left it, and drain.

The same list as `jobq workers`; `d` is `jobq workers --drain <id>`."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType

from jobq_cli.format import literal, span, zoned
from jobq_core.admin import AsyncAdmin, Worker

from ..messages import Act
from .rows import RowsScreen

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


class WorkersScreen(RowsScreen[Worker]):
    crumb = "workers"
    help_note = ("in flight: running jobs / concurrency · lost: three heartbeats missed "
                 "(red); a day later it leaves the list · d = jobq workers --drain <id>")
    table_id = "workers"
    columns = COLUMNS
    empty = EMPTY
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "drain", "Drain…"),
    ]

    async def fetch(self, admin: AsyncAdmin) -> list[Worker]:
        return await admin.workers()

    def key(self, row: Worker) -> str:
        return row.id

    def cells(self, row: Worker, now: datetime) -> list[Text]:
        return _cells(row, now)

    def describe(self, row: Worker, now: datetime) -> Text:
        info = Text()
        info.append("worker ", style="dim")
        info.append(literal(row.id, 80, style="bold"))
        info.append(f" · {row.in_flight} of {row.concurrency} slots busy · "
                    f"beats every {row.beat_seconds:g}s", style="dim")
        info.append("\ntypes: ", style="dim")
        info.append(literal(", ".join(row.types) or "every type", 200))
        if row.drain_requested_at is not None:
            info.append("\ndrain asked by ", style="yellow")
            info.append(literal(row.drain_requested_by or "?", 60, style="yellow"))
            info.append(f" at {zoned(row.drain_requested_at, now)}", style="yellow")
        if not row.alive:
            info.append(f"\nlost: no heartbeat for {span(row.silent_for)} (it died or "
                        "cannot reach the database); its leases expire and are taken "
                        "back", style="bold red")
        return info

    def action_drain(self) -> None:
        worker = self.selected()
        if worker is None:
            self.notify(EMPTY, severity="warning", markup=False)
        elif not worker.alive:
            self.notify(f"worker {worker.id} is lost: it cannot drain", severity="warning",
                        markup=False)
        elif worker.drain_requested_at is not None:
            self.notify(f"worker {worker.id} is already draining", markup=False)
        else:
            self.post_message(Act("drain", worker=worker))
