"""Trace tail: every event of every job under one request id, as it happens."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Footer, Input, RichLog, Static

from jobq_cli.format import clock, first_line, literal, multiline
from jobq_cli.safe import visible
from jobq_core.admin import AsyncAdmin, Event, TraceTail

from ..messages import Refresh
from ..widgets.status import Banner, Crumbs, StatusBar
from .base import LiveScreen

#: Lines the log keeps; older ones scroll away, and the head says so once it is full (the
#: full trace stays in `jobq trace`).
MAX_LINES = 20_000
_STYLE = {"failed": "bold red", "retried": "yellow", "claimed": "cyan",
          "completed": "green", "enqueued": "bold", "released": "yellow",
          "extended": "cyan", "deleted": "red"}


def event_line(event: Event, full: bool = False) -> Text:
    """One event; with `full`, its reason's every line (a traceback), else the first."""
    line = Text.assemble(
        (clock(event.occurred_at)[11:], "dim"), "  ",
        (f"job {event.job_id:<8}", "bold"), " ",
        literal(f"{visible(event.type, 16):<16}"), " ",
        (f"{event.event:<9}", _STYLE.get(event.event, "")),
        f" #{event.attempt}",
    )
    if event.worker:
        line.append("  ")
        line.append_text(literal(event.worker, 32, style="dim"))
    if event.reason:
        line.append("  ")
        line.append_text(multiline(event.reason, indent="    ") if full
                         else first_line(event.reason, 120))
    return line


class TraceScreen(LiveScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "toggle_follow", "Follow/pause"),
        Binding("slash", "search", "Search"),
        Binding("n", "clear_search", "Clear search", show=False),
        Binding("x", "expand", "Tracebacks"),
        Binding("escape", "escape", "Back"),
    ]

    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id
        self.crumb = f"trace {request_id}"
        self.events: list[Event] = []
        # Gap- and duplicate-free across out-of-order commits and reconnects (the app's
        # poll loop retries an outage; this state stays).
        self.tail = TraceTail(request_id)
        self.following = True
        self.shown = 0  # how many of `events` the log shows (fewer while paused)
        self.search = ""
        self.full = False
        # Kept up to date as events arrive, so a refresh never rescans the whole trace.
        self.job_ids: set[int] = set()
        self.found = 0  # events matching `search`
        self._haystack: dict[int, str] = {}  # event id -> its full line, lowercased

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield Banner(id="banner")
        yield Static(id="trace-head")
        yield RichLog(id="trace-log", max_lines=MAX_LINES, wrap=False, markup=False,
                      highlight=False, auto_scroll=True)
        yield Input(placeholder="search: text in any field, e.g. failed or job 42",
                    id="trace-search")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#trace-search", Input).display = False
        self.query_one("#banner", Banner).show(None)
        self.query_one(RichLog).focus()
        self._head()

    async def fetch(self, admin: AsyncAdmin) -> list[Event]:
        return await admin.poll_trace(self.tail)

    def show(self, data: list[Event]) -> None:
        self.events.extend(data)
        self.job_ids.update(e.job_id for e in data)
        self.found += sum(1 for e in data if self._matches(e))
        if self.tail.more:
            self.post_message(Refresh())  # more are waiting: fetch them without waiting an interval
        if self.following:
            self._append(self.events[self.shown:])
        self._head()

    def _matches(self, event: Event) -> bool:
        if not self.search:
            return True
        if event.id not in self._haystack:
            self._haystack[event.id] = event_line(event, True).plain.lower()
        return self.search.lower() in self._haystack[event.id]

    def _set_search(self, text: str) -> None:
        self.search = text
        self.found = sum(1 for e in self.events if self._matches(e))
        self._rebuild()
        self._head()

    def _append(self, events: list[Event]) -> None:
        log = self.query_one(RichLog)
        for event in events:
            if self._matches(event):
                line = event_line(event, self.full)
                if self.search:
                    line.highlight_words([self.search], style="reverse", case_sensitive=False)
                log.write(line)
        self.shown += len(events)
        if self.following:
            log.scroll_end(animate=False, x_axis=False)

    def _rebuild(self) -> None:
        upto = len(self.events) if self.following else self.shown
        self.query_one(RichLog).clear()
        self.shown = 0
        self._append(self.events[:upto])

    def _head(self) -> None:
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append("request ", style="dim")
        head.append_text(literal(self.request_id, 60, style="bold"))
        head.append(f"  {len(self.events)} events · {len(self.job_ids)} jobs  ")
        log = self.query_one(RichLog)
        if log.max_lines is not None and len(log.lines) >= log.max_lines:
            head.append(f"(log keeps the last {log.max_lines:,} lines)  ", style="yellow")
        if self.following:
            head.append(" FOLLOWING ", style="bold reverse green")
        else:
            waiting = len(self.events) - self.shown
            head.append(" PAUSED ", style="bold reverse yellow")
            head.append(f" {waiting} new · f follows", style="yellow")
        if self.search:
            head.append("  search: ", style="dim")
            head.append_text(literal(self.search, 30, style="bold"))
            head.append(f" ({self.found} matching · n clears)", style="dim")
        if not self.events:
            head.append("  no events yet under this request id", style="dim")
        self.query_one("#trace-head", Static).update(head)

    def action_toggle_follow(self) -> None:
        self.following = not self.following
        log = self.query_one(RichLog)
        log.auto_scroll = self.following
        if self.following:
            self._append(self.events[self.shown:])
            log.scroll_end(animate=False, x_axis=False)
        self._head()

    def action_expand(self) -> None:
        self.full = not self.full
        self._rebuild()
        self._head()

    def action_search(self) -> None:
        field = self.query_one("#trace-search", Input)
        field.value = self.search
        field.display = True
        field.focus()

    @on(Input.Submitted, "#trace-search")
    def _searched(self, event: Input.Submitted) -> None:
        event.input.display = False
        self.query_one(RichLog).focus()
        self._set_search(event.value.strip())

    def action_clear_search(self) -> None:
        if self.search:
            self._set_search("")

    def action_escape(self) -> None:
        self.hide_field_or_back(self.query_one("#trace-search", Input), self.query_one(RichLog))
