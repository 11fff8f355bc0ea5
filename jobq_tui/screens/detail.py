"""One job: its state, lease holder and live countdown, payload (kept in history once it
completed), result and timeline."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static

from jobq_cli.format import (
    first_line,
    lease_left,
    literal,
    multiline,
    not_kept,
    pretty_json,
    relative,
    stamp,
)
from jobq_core import NotFoundError
from jobq_core.admin import AsyncAdmin, JobDetail, JobRow
from jobq_core.filters import JobFilter

from ..messages import Act, Open
from ..widgets.status import Banner, Crumbs, StatusBar
from .actions import JobActionsScreen

#: A job's detail, and its history row when it completed (which holds what it ran).
Shown = tuple[JobDetail, JobRow | None]


class DetailScreen(JobActionsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "trace", "Trace request"),
        Binding("R", "retry", "Retry"),
        Binding("e", "extend", "Extend +5m"),
        Binding("E", "extend_by", "Extend by…", show=False),
        Binding("c", "cancel", "Cancel…"),
        Binding("D", "delete", "Delete…"),
        Binding("escape", "app.back", "Back"),
    ]
    ACTION_TITLES: ClassVar[dict[str, str]] = {
        "retry": "Retry this job", "extend": "Extend this job's lease by 5m",
        "extend_by": "Extend this job's lease by…", "cancel": "Cancel this job…",
        "delete": "Delete this job…"}

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
        self.crumb = f"job {job_id}"
        self.detail: JobDetail | None = None
        self.completed: JobRow | None = None

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield Banner(id="banner")
        with VerticalScroll(id="detail"):
            yield Static(id="detail-summary")
            yield Static(id="detail-lease")
            yield Static(Text("payload", style="bold"), classes="section")
            yield Static(id="detail-payload", classes="json")
            yield Static(Text("timeline", style="bold"), classes="section")
            yield Static(id="detail-timeline")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#banner", Banner).show(None)
        self.query_one("#detail", VerticalScroll).focus()

    async def fetch(self, admin: AsyncAdmin) -> Shown | None:
        try:
            detail = await admin.show(self.job_id)
        except NotFoundError:
            return None
        completed = None
        if detail.job is None and detail.state == "completed":
            page = await admin.list_jobs(JobFilter(state="completed", job_id=self.job_id),
                                         limit=1)
            completed = page.rows[0] if page.rows else None
        return detail, completed

    def show(self, shown: Shown | None) -> None:
        self.detail, self.completed = shown or (None, None)
        self.refresh_bindings()
        summary = self.query_one("#detail-summary", Static)
        data = self.detail
        if data is None:
            summary.update(Text(f"Job {self.job_id} no longer exists: it was deleted, or "
                                "cleared from the history.", style="bold red"))
            return
        job, events = data.job, data.events
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        state = data.state
        grid.add_row("job", Text.assemble((f"{self.job_id}", "bold"), "  ",
                                          (state, _STATE_STYLE.get(state, "bold"))))
        first = events[0] if events else None
        grid.add_row("type", literal(job.type if job else first.type if first else "?"))
        request_id = job.request_id if job else first.request_id if first else None
        grid.add_row("request id", literal(request_id or "—"))
        if job is not None:
            now = self.jobq.now()
            grid.add_row("attempts", Text(str(job.attempts)))
            grid.add_row("priority", Text(str(job.priority)))
            grid.add_row("run at", Text(f"{stamp(job.run_at)} ({relative(job.run_at, now)})"))
            grid.add_row("created", Text(stamp(job.created_at)))
            if job.failed_at is not None:
                grid.add_row(f"{job.state} at", Text(
                    f"{stamp(job.failed_at)} ({relative(job.failed_at, now)})"))
            if job.idempotency_key:
                grid.add_row("idempotency key", literal(job.idempotency_key))
            if job.last_error:
                grid.add_row("last error", first_line(job.last_error, 200))
            if job.concurrency_key is not None:
                grid.add_row("concurrency key", literal(job.concurrency_key))
        if data.limits is not None:
            grid.add_row("limits", Text.assemble(literal(data.limits.summary, 120),
                                                 (f"  ({data.limits.usage})", "dim")))
        if data.schedule is not None:
            grid.add_row("schedule", literal(data.schedule.spec, 120))
        summary.update(grid)
        self.query_one("#detail-payload", Static).update(self._payload(data))
        self.query_one("#detail-timeline", Static).update(self._timeline(data))
        self.tick()

    def _payload(self, data: JobDetail) -> Text:
        """The payload; once completed, the one its history kept, and the result."""
        if data.job is not None:
            return pretty_json(data.job.payload)
        done = next((e for e in reversed(data.events) if e.event == "completed"), None)
        if done is None:
            return Text("the payload left with the job", style="dim")
        kept = self.completed.payload if self.completed else None
        note = not_kept(kept)
        shown = Text(note or "no payload kept in history", style="dim") \
            if note or kept is None else pretty_json(kept)
        return Text.assemble(shown, ("\nresult:\n", "bold"), pretty_json(done.result))

    def _timeline(self, data: JobDetail) -> Table:
        table = Table(box=None, padding=(0, 1), show_header=True, header_style="dim",
                      expand=True)
        table.add_column("at", no_wrap=True)
        table.add_column("event", no_wrap=True)
        table.add_column("att", justify="right")
        table.add_column("worker / detail", overflow="fold", ratio=1)
        for event in data.events:
            detail = Text()
            if event.worker:
                detail.append_text(literal(event.worker, 40))
            if event.reason:
                if detail:
                    detail.append("\n")
                detail.append_text(multiline(event.reason))
                detail.stylize("red" if event.event in ("failed", "retried") else "")
            table.add_row(Text(stamp(event.occurred_at, millis=True)),
                          Text(event.event, style=_STATE_STYLE.get(event.event, "")),
                          Text(str(event.attempt)), detail)
        return table

    def tick(self) -> None:
        """The lease countdown moves every second, between refreshes."""
        lease = self.query_one("#detail-lease", Static)
        job = self.detail.job if self.detail else None
        if job is None or job.state != "claimed":
            lease.display = False
            return
        lease.display = True
        now = self.jobq.now()
        lease.update(Text.assemble(
            ("lease  ", "dim"), lease_left(job.lease_until, now, job.lease_ms, width=20),
            ("  held by ", "dim"), literal(job.claimed_by or "?", 40),
            ("  claimed ", "dim"), relative(job.claimed_at, now),
            ("  until ", "dim"), stamp(job.lease_until)[11:]))

    def request_id(self) -> str | None:
        if self.detail is None:
            return None
        if self.detail.job is not None:
            return self.detail.job.request_id
        return self.detail.events[0].request_id if self.detail.events else None

    def action_trace(self) -> None:
        from .trace import TraceScreen

        request_id = self.request_id()
        if request_id:
            self.post_message(Open(TraceScreen(request_id)))
        else:
            self.notify(f"job {self.job_id} has no request id", severity="warning",
                        markup=False)

    def in_hand(self) -> dict[int, str]:
        return {} if self.detail is None else {self.job_id: self.detail.state}

    def job_types(self) -> dict[int, str]:
        job = self.detail.job if self.detail else None
        first = self.detail.events[0] if self.detail and self.detail.events else None
        job_type = job.type if job else first.type if first else None
        return {self.job_id: job_type} if job_type else {}

    def action_retry(self) -> None:
        self.post_message(Act("retry", [self.job_id]))

    def action_extend(self) -> None:
        self.post_message(Act("extend", [self.job_id]))

    def action_extend_by(self) -> None:
        self.post_message(Act("extend_by", [self.job_id], subject=self.subject()))

    def action_cancel(self) -> None:
        self.post_message(Act("cancel", [self.job_id], subject=self.subject()))

    def action_delete(self) -> None:
        self.post_message(Act("delete", [self.job_id]))


_STATE_STYLE = {"failed": "bold red", "retried": "yellow", "claimed": "bold yellow",
                "completed": "bold green", "pending": "bold", "enqueued": "",
                "extended": "cyan", "released": "yellow", "deleted": "red",
                "cancelled": "bold magenta"}
