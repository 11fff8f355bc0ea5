"""The overview: one row per job type, with what is waiting, running, expiring and failing."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from jobq_core.admin import AsyncAdmin, Count, TypeStats
from jobq_core.filters import JobFilter

from ..format import count, literal, span, sparkline
from ..widgets.status import Banner, Crumbs, StatusBar
from .base import LiveScreen

#: Sparkline width bounds: wide terminals get an hour's shape, 80 columns still fit.
SPARK_WIDTH = (6, 20)
COLUMNS = (("type", "type"), ("ready", "ready"), ("scheduled", "sched"),
           ("claimed", "claimed"), ("expiring", "<60s"), ("failed", "failed"),
           ("oldest", "oldest"), ("done", "done/min"), ("fails", "fail/min"))


class OverviewScreen(LiveScreen):
    crumb = "overview"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_type", "Jobs of type"),
        Binding("a", "all_jobs", "All jobs"),
        Binding("f", "failed_jobs", "Failed"),
        Binding("slash", "filter", "Filter"),
        Binding("C", "clear", "Clear old…"),
    ]

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield Banner(id="banner")
        table: DataTable[Text] = DataTable(id="overview", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="overview-summary")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in COLUMNS:
            table.add_column(Text(label, justify="left" if key == "type" else "right"), key=key)
        self.query_one("#banner", Banner).show(None)
        table.focus()

    async def fetch(self, admin: AsyncAdmin) -> list[TypeStats]:
        return await admin.stats()

    def show(self, data: list[TypeStats]) -> None:
        table: DataTable[Text] = self.query_one(DataTable)
        wanted = [s.type for s in data]
        rows = {s.type: self._cells(s) for s in data}
        present = [row.key.value for row in table.ordered_rows]
        kept = [t for t in present if t in rows]
        if kept + [t for t in wanted if t not in present] != wanted:
            # A type arrived out of order: rebuild in order (a few rows), keeping the cursor
            # on its type.
            selected = self._selected_type()
            table.clear()
            for job_type in wanted:
                table.add_row(*rows[job_type], key=job_type)
            if selected in rows:
                table.move_cursor(row=wanted.index(selected), animate=False)
        for key in [k for k in table.rows if k.value not in rows]:
            table.remove_row(key)
        for job_type, cells in rows.items():
            if job_type not in table.rows:
                table.add_row(*cells, key=job_type)
                continue
            for (column, _), cell in zip(COLUMNS, cells, strict=True):
                if table.get_cell(job_type, column) != cell:
                    table.update_cell(job_type, column, cell)
        summary = Text()
        if not data:
            summary.append("No jobs yet. Enqueue one with `jobq enqueue <type>` or from your "
                           "service, and it shows here.", style="dim")
        else:
            # A sum of counts is exact only if every count is: an estimate keeps its "~".
            totals = {name: Count(sum(getattr(s, name).value for s in data),
                                  all(getattr(s, name).exact for s in data))
                      for name in ("ready", "scheduled", "claimed", "expired", "failed")}
            summary.append(f"{len(data)} types · " + " · ".join(
                f"{value} {name}" for name, value in totals.items()))
            if totals["expired"].value:
                summary.append(f"  ⚠ {totals['expired']} leases expired: their workers are "
                               "gone; the next claim takes them back", style="bold red")
        self.query_one("#overview-summary", Static).update(summary)

    def _spark_width(self) -> int:
        return max(SPARK_WIDTH[0], min(SPARK_WIDTH[1], (self.size.width - 70) // 2))

    def _cells(self, s: TypeStats) -> list[Text]:
        width = self._spark_width()
        claimed = count(s.claimed)
        if s.expired.value:
            claimed = Text(f"{s.claimed} ({s.expired}✗)", style="bold red", justify="right")
        failed = count(s.failed)
        fails = sparkline(s.failed_per_min, width)
        if s.failed.value:
            failed.stylize("red")
        if any(s.failed_per_min[-width:]):
            fails.stylize("red")
        return [
            literal(s.type, 20), count(s.ready), count(s.scheduled), claimed,
            Text(str(s.late), style="yellow" if s.late.value else "dim",
                 justify="right"),
            failed,
            Text(span(s.oldest_ready_age) if s.ready.value and s.oldest_ready_age is not None
                 else "—", justify="right"),
            sparkline(s.completed_per_min, width),
            fails,
        ]

    def _selected_type(self) -> str | None:
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.row_count:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return key.value

    @on(DataTable.RowSelected)
    def action_open_type(self) -> None:
        from .jobs import JobsScreen

        job_type = self._selected_type()
        if job_type is not None:
            self.jobq.open(JobsScreen(JobFilter(type=job_type)))

    def action_all_jobs(self) -> None:
        from .jobs import JobsScreen

        self.jobq.open(JobsScreen(JobFilter()))

    def action_failed_jobs(self) -> None:
        from .jobs import JobsScreen

        self.jobq.open(JobsScreen(JobFilter(state="failed", type=self._selected_type())))

    def action_filter(self) -> None:
        from .jobs import JobsScreen

        self.jobq.open(JobsScreen(JobFilter(), edit_filter=True))

    def action_clear(self) -> None:
        self.jobq.operator.start_clear()
