"""The overview: one row per job type, with what is waiting, running, late and failing, and
which types are paused.

Rows are keyed by type and the cursor follows its type, not its index, across refreshes."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from jobq_cli.format import count, literal, relative, span, sparkline, zoned
from jobq_core.admin import AsyncAdmin, Count, LimitRow, Pause, TypeStats
from jobq_core.filters import JobFilter

from ..messages import Act, Open
from ..widgets.status import Banner, Crumbs, StatusBar
from ..widgets.table import add_columns, sync_table
from .base import LiveScreen

#: Sparkline width bounds: wide terminals get an hour's shape, 80 columns still fit.
SPARK_WIDTH = (8, 20)
#: Below this width the two rate columns become one: completions, red where jobs failed.
NARROW = 90
COLUMNS = (("type", "type"), ("ready", "ready"), ("scheduled", "sched"),
           ("claimed", "claimed"), ("late", "late"), ("failed", "failed"),
           ("cancelled", "cancl"), ("oldest", "oldest"), ("done", "done/min"),
           ("fails", "fail/min"))
#: What the paused lines under the table may take; more paused types are counted. The
#: same for the limits' lines.
PAUSED_LINES = 3
PAUSED = "‖ "
LIMITED = "≤ "


def pause_line(p: Pause, now: datetime) -> Text:
    """‖ email paused by alice@host until 14:30 UTC (in 25m): deploy"""
    text = Text()
    text.append(PAUSED, style="bold yellow")
    text.append(literal(p.type, 40, style="bold"))
    text.append(" paused by ")
    text.append(literal(p.paused_by, 40))
    if p.until is None:
        text.append(" until resumed")
    else:
        text.append(f" until {zoned(p.until, now)} ({relative(p.until, now)})")
    if p.reason:
        text.append(": ")
        text.append(literal(p.reason, 120))
    return text


def limit_line(limits: LimitRow) -> Text:
    """≤ charge-card global 4, rate 100/s burst 100: slots 3/4, tokens 57/100"""
    text = Text()
    text.append(LIMITED, style="bold")
    text.append(literal(limits.type, 40, style="bold"))
    text.append(" ")
    text.append(literal(limits.summary, 120))
    text.append(": ")
    text.append(limits.usage)
    return text


class OverviewScreen(LiveScreen):
    crumb = "overview"
    help_note = ("late: under half its lease left (a missed heartbeat) · n✗: leases "
                 f"expired · cancl: cancelled · {PAUSED}paused: claims skip the type · "
                 f"{LIMITED}limited: claims keep its limits fleet-wide")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_type", "Jobs of type"),
        Binding("a", "all_jobs", "All jobs"),
        Binding("f", "failed_jobs", "Failed"),
        Binding("x", "cancelled_jobs", "Cancelled", show=False),
        Binding("p", "pause_type", "Pause/resume type"),
        Binding("w", "workers", "Workers"),
        Binding("s", "schedules", "Schedules", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("C", "clear", "Clear old…"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, TypeStats] = {}
        self._data: list[TypeStats] | None = None

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield Banner(id="banner")
        table: DataTable[Text] = DataTable(id="overview", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="overview-paused")
        yield Static(id="overview-limits")
        yield Static(id="overview-summary")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Banner).show(None)
        self.query_one("#overview-paused", Static).display = False
        self.query_one("#overview-limits", Static).display = False
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.columns:  # a refresh may have drawn it already
            add_columns(table, self._columns())
        table.focus()

    async def fetch(self, admin: AsyncAdmin) -> list[TypeStats]:
        return await admin.stats()

    def _columns(self) -> list[tuple[str, str]]:
        return list(COLUMNS if self.app.size.width >= NARROW else COLUMNS[:-1])

    def show(self, data: list[TypeStats]) -> None:
        self._data = data
        self.stats = {s.type: s for s in data}
        table: DataTable[Text] = self.query_one(DataTable)
        columns = self._columns()
        rows = {s.type: self._cells(s, len(columns)) for s in data}
        sync_table(table, columns, rows)
        self._show_paused(data)
        self._show_limits(data)
        self._show_summary(data)

    def on_resize(self, event: events.Resize) -> None:
        if self._data is not None:
            self.show(self._data)

    def _show_paused(self, data: list[TypeStats]) -> None:
        paused = [s.paused for s in data if s.paused is not None]
        field = self.query_one("#overview-paused", Static)
        field.display = bool(paused)
        if not paused:
            return
        now = self.jobq.now()
        lines = [pause_line(p, now) for p in paused[:PAUSED_LINES]]
        if len(paused) > PAUSED_LINES:
            lines.append(Text(f"… and {len(paused) - PAUSED_LINES} more paused types",
                              style="dim"))
        field.update(Text("\n").join(lines))

    def _show_limits(self, data: list[TypeStats]) -> None:
        limited = [s.limits for s in data if s.limits is not None]
        field = self.query_one("#overview-limits", Static)
        field.display = bool(limited)
        if not limited:
            return
        lines = [limit_line(row) for row in limited[:PAUSED_LINES]]
        if len(limited) > PAUSED_LINES:
            lines.append(Text(f"… and {len(limited) - PAUSED_LINES} more limited types "
                              "(jobq limits)", style="dim"))
        field.update(Text("\n").join(lines))

    def _show_summary(self, data: list[TypeStats]) -> None:
        summary = Text()
        if not data:
            summary.append("No jobs yet. Enqueue one with `jobq enqueue <type>` or from your "
                           "service, and it shows here.", style="dim")
            self.query_one("#overview-summary", Static).update(summary)
            return
        # A sum of counts is exact only if every count is: an estimate keeps its "~".
        totals = {name: Count(sum(getattr(s, name).value for s in data),
                              all(getattr(s, name).exact for s in data))
                  for name in ("ready", "scheduled", "claimed", "late", "expired", "failed",
                               "cancelled")}
        summary.append(f"{len(data)} types · " + " · ".join(
            f"{value} {name}" for name, value in totals.items()))
        expired = [s for s in data if s.expired.value]
        taken_back = sum(s.expired.value for s in expired if s.served and s.paused is None)
        if taken_back:
            summary.append(f"\n⚠ {taken_back} leases expired: their workers are gone; the "
                           "next claim takes them back", style="bold red")
        for s in expired:
            if s.paused is not None:
                why = "paused: they are taken back once it is resumed"
            elif not s.served:
                why = "no live worker serves this type"
            else:
                continue
            summary.append(f"\n⚠ {s.type}: {s.expired} leases expired; {why}",
                           style="bold red")
        self.query_one("#overview-summary", Static).update(summary)

    def _spark_width(self) -> int:
        return max(SPARK_WIDTH[0], min(SPARK_WIDTH[1], (self.app.size.width - 74) // 2))

    def _cells(self, s: TypeStats, n_columns: int) -> list[Text]:
        width = self._spark_width()
        name = literal(s.type, 20)
        if s.paused is not None:
            name = Text.assemble((PAUSED, "bold yellow"), name)
        elif s.limits is not None:
            name = Text.assemble((LIMITED, "bold"), name)
        claimed = count(s.claimed)
        if s.expired.value:
            claimed = Text(f"{s.claimed} ({s.expired}✗)", style="bold red", justify="right")
        failed = count(s.failed)
        if s.failed.value:
            failed.stylize("red")
        done = sparkline(s.completed_per_min, width)
        fails = sparkline(s.failed_per_min, width)
        if any(s.failed_per_min[-width:]):
            fails.stylize("red")
        cells = [
            name, count(s.ready), count(s.scheduled), claimed,
            Text(str(s.late), style="yellow" if s.late.value else "dim", justify="right"),
            failed, count(s.cancelled),
            Text(span(s.oldest_ready_age) if s.ready.value and s.oldest_ready_age is not None
                 else "—", justify="right"),
            done, fails,
        ]
        if n_columns < len(COLUMNS):
            # One rate column: the minutes in which jobs failed are red.
            for i, failures in enumerate(s.failed_per_min[-width:]):
                if failures:
                    done.stylize("bold red", i, i + 1)
        return cells[:n_columns]

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
            self.post_message(Open(JobsScreen(JobFilter(type=job_type))))

    def action_all_jobs(self) -> None:
        from .jobs import JobsScreen

        self.post_message(Open(JobsScreen(JobFilter())))

    def action_failed_jobs(self) -> None:
        """Every failed job, of every type: a type's own are under enter."""
        from .jobs import JobsScreen

        self.post_message(Open(JobsScreen(JobFilter(state="failed"))))

    def action_cancelled_jobs(self) -> None:
        """Every cancelled job, of every type (kept, and retryable, like failed ones)."""
        from .jobs import JobsScreen

        self.post_message(Open(JobsScreen(JobFilter(state="cancelled"))))

    def action_pause_type(self) -> None:
        """Pause the highlighted type (asking for how long and why), or resume it."""
        job_type = self._selected_type()
        if job_type is None:
            return
        stats = self.stats.get(job_type)
        if stats is not None and stats.paused is not None:
            self.post_message(Act("resume", job_type=job_type))
        else:
            self.post_message(Act("pause", job_type=job_type))

    def action_workers(self) -> None:
        from .workers import WorkersScreen

        self.post_message(Open(WorkersScreen()))

    def action_schedules(self) -> None:
        from .schedules import SchedulesScreen

        self.post_message(Open(SchedulesScreen()))

    def action_filter(self) -> None:
        from .jobs import JobsScreen

        self.post_message(Open(JobsScreen(JobFilter(), edit_filter=True)))

    def action_clear(self) -> None:
        self.post_message(Act("clear"))
