"""The jobs list: a tab per state, keyset pages, marks, sorting and the filter bar.

Rows are keyed by job id and updated in place, so the cursor, the scroll position and the
marks survive every refresh."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, Static, Tab, Tabs

from jobq_core import JobqError
from jobq_core.admin import AsyncAdmin, JobRow, Page
from jobq_core.filters import JobFilter, parse_filter

from ..format import first_line, lease_left, literal, relative
from ..safe import visible
from ..widgets.status import Banner, Crumbs, StatusBar
from .base import LiveScreen

PAGE_SIZE = 100
TABS = ("pending", "claimed", "failed", "completed", "all")
#: The tab that shows a filter's state.
TAB_OF = {"pending": "pending", "ready": "pending", "scheduled": "pending",
          "claimed": "claimed", "expired": "claimed", "failed": "failed",
          "completed": "completed"}

Cell = Callable[[JobRow, datetime], Text]
SortKey = Callable[[JobRow], Any]


def _mark(marked: bool) -> Text:
    return Text("●" if marked else " ", style="bold yellow")


def _attempts(row: JobRow, now: datetime) -> Text:
    return Text(str(row.attempts), justify="right", style="red" if row.attempts >= 3 else "")


def _req(row: JobRow, now: datetime) -> Text:
    return literal(row.request_id or "—", 22)


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value else 0.0


_STATE_STYLE = {"failed": "red", "claimed": "yellow", "pending": "", "completed": "green"}

# (key, label, cell, sort key) per tab, after the mark, id and type columns.
COLUMNS: dict[str, list[tuple[str, str, Cell, SortKey]]] = {
    "pending": [
        ("priority", "pri", lambda r, n: Text(str(r.priority), justify="right"),
         lambda r: r.priority or 0),
        ("run_at", "runs", lambda r, n: Text(relative(r.run_at, n)), lambda r: _ts(r.run_at)),
        ("attempts", "att", _attempts, lambda r: r.attempts),
        ("request_id", "request id", _req, lambda r: r.request_id or ""),
        ("payload", "payload", lambda r, n: literal(_payload(r.payload), 40),
         lambda r: _payload(r.payload)),
    ],
    "claimed": [
        ("lease", "lease left", lambda r, n: lease_left(r.lease_until, n),
         lambda r: _ts(r.lease_until)),
        ("worker", "worker", lambda r, n: literal(r.claimed_by or "—", 24),
         lambda r: r.claimed_by or ""),
        ("attempts", "att", _attempts, lambda r: r.attempts),
        ("request_id", "request id", _req, lambda r: r.request_id or ""),
    ],
    "failed": [
        ("failed_at", "failed", lambda r, n: Text(relative(r.failed_at, n)),
         lambda r: _ts(r.failed_at)),
        ("attempts", "att", _attempts, lambda r: r.attempts),
        ("request_id", "request id", _req, lambda r: r.request_id or ""),
        ("error", "error", lambda r, n: first_line(r.last_error, 60),
         lambda r: r.last_error or ""),
    ],
    "completed": [
        ("finished", "finished", lambda r, n: Text(relative(r.created_at, n)),
         lambda r: _ts(r.created_at)),
        ("attempts", "att", _attempts, lambda r: r.attempts),
        ("worker", "worker", lambda r, n: literal(r.claimed_by or "—", 24),
         lambda r: r.claimed_by or ""),
        ("request_id", "request id", _req, lambda r: r.request_id or ""),
    ],
    "all": [
        ("state", "state", lambda r, n: Text(r.state, style=_STATE_STYLE.get(r.state, "")),
         lambda r: r.state),
        ("when", "lease / runs", lambda r, n: lease_left(r.lease_until, n)
         if r.state == "claimed" else Text(relative(r.run_at or r.failed_at, n)),
         lambda r: _ts(r.lease_until or r.run_at)),
        ("attempts", "att", _attempts, lambda r: r.attempts),
        ("request_id", "request id", _req, lambda r: r.request_id or ""),
        ("detail", "payload / error", lambda r, n: first_line(r.last_error, 40)
         if r.last_error else literal(_payload(r.payload), 40), lambda r: r.last_error or ""),
    ],
}
_BASE_SORT: dict[str, SortKey] = {"id": lambda r: r.id, "type": lambda r: r.type}


def _payload(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class JobsScreen(LiveScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_job", "Detail"),
        Binding("t", "trace", "Trace"),
        Binding("slash", "edit_filter", "Filter"),
        Binding("m", "mark", "Mark"),
        Binding("u", "unmark_all", "Unmark", show=False),
        Binding("s", "sort", "Sort", show=False),
        Binding("S", "reverse", "Reverse sort", show=False),
        Binding("right_square_bracket", "next_page", "Next page", show=False),
        Binding("left_square_bracket", "prev_page", "Prev page", show=False),
        Binding("1", "tab('pending')", "Pending", show=False),
        Binding("2", "tab('claimed')", "Claimed", show=False),
        Binding("3", "tab('failed')", "Failed", show=False),
        Binding("4", "tab('completed')", "Completed", show=False),
        Binding("5", "tab('all')", "All live", show=False),
        Binding("R", "retry", "Retry"),
        Binding("A", "retry_all", "Retry all matching", show=False),
        Binding("e", "extend", "Extend +5m"),
        Binding("E", "extend_by", "Extend by…", show=False),
        Binding("D", "delete", "Delete…"),
        Binding("C", "clear", "Clear old…", show=False),
        Binding("escape", "escape", "Back", show=False),
    ]
    ACTION_TITLES: ClassVar[dict[str, str]] = {"retry": "Retry the selected or marked jobs",
                     "retry_all": "Retry all failed jobs matching the filter",
                     "extend": "Extend the selected leases by 5m",
                     "extend_by": "Extend the selected leases by…",
                     "delete": "Delete the selected or marked jobs…"}

    def __init__(self, flt: JobFilter | None = None, *, edit_filter: bool = False) -> None:
        super().__init__()
        flt = flt or JobFilter()
        self.state: str | None = flt.state
        self.tab = TAB_OF.get(flt.state or "", "all")
        self.filter = replace(flt, state=None)
        self.rows: dict[int, JobRow] = {}
        self.order: list[int] = []
        self.marked: set[int] = set()
        self.pages: list[str | None] = [None]
        self.next_cursor: str | None = None
        self.sort_key: str | None = None
        self.sort_reverse = False
        self._columns_of: str | None = None
        self._edit_on_mount = edit_filter

    @property
    def crumb(self) -> str:  # type: ignore[override]
        return f"{self.tab} {self.filter_text()}".strip()

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield Banner(id="banner")
        yield Tabs(*(Tab(f"{i + 1} {name}", id=name) for i, name in enumerate(TABS)),
                   active=self.tab, id="tabs")
        yield Input(placeholder="state:failed type:send-email req:abc error:Timeout age:>1h "
                    "attempts:>=3", id="filter")
        table: DataTable[Text] = DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="jobs-info")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#banner", Banner).show(None)
        self._show_info()
        self.query_one(DataTable).focus()
        if self._edit_on_mount:
            self.action_edit_filter()

    # -- data -------------------------------------------------------------------------------

    def current_filter(self) -> JobFilter:
        state = self.state if self.state else (None if self.tab == "all" else self.tab)
        return replace(self.filter, state=state)

    async def fetch(self, admin: AsyncAdmin) -> tuple[str, Page]:
        key = f"{self.current_filter()}|{self.pages[-1]}"
        return key, await admin.list_jobs(self.current_filter(), after=self.pages[-1],
                                          limit=PAGE_SIZE)

    def show(self, data: tuple[str, Page]) -> None:
        key, page = data
        if key != f"{self.current_filter()}|{self.pages[-1]}":
            self.jobq.poke()  # the view changed while this page was loading
            return
        self.next_cursor = page.next_cursor
        self.rows = {row.id: row for row in page.rows}
        self.order = [row.id for row in page.rows]
        self._redraw()

    def _sorted_ids(self) -> list[int]:
        if self.sort_key is None:
            return list(reversed(self.order)) if self.sort_reverse else list(self.order)
        key = _BASE_SORT.get(self.sort_key) or next(
            c[3] for c in COLUMNS[self.tab] if c[0] == self.sort_key)
        return sorted(self.order, key=lambda i: key(self.rows[i]), reverse=self.sort_reverse)

    def _redraw(self) -> None:
        table: DataTable[Text] = self.query_one(DataTable)
        now = self.jobq.now()
        columns = COLUMNS[self.tab]
        if self._columns_of != self.tab:
            table.clear(columns=True)
            table.add_column(" ", key="mark", width=1)
            table.add_column(Text("id", justify="right"), key="id")
            table.add_column("type", key="type")
            for key, label, _, _ in columns:
                table.add_column(label, key=key)
            self._columns_of = self.tab
        cursor_key = self._cursor_id()
        offset = table.cursor_row - round(table.scroll_y)
        ids = self._sorted_ids()
        wanted = set(ids)
        for row_key in [k for k in table.rows if int(k.value or 0) not in wanted]:
            table.remove_row(row_key)
        for job_id in ids:
            row = self.rows[job_id]
            cells = [_mark(job_id in self.marked), Text(str(job_id), justify="right"),
                     literal(row.type, 20)] + [cell(row, now) for _, _, cell, _ in columns]
            key = str(job_id)
            if key in table.rows:
                for column, cell in zip(["mark", "id", "type"] + [c[0] for c in columns],
                                        cells, strict=True):
                    if table.get_cell(key, column) != cell:
                        table.update_cell(key, column, cell)
            else:
                table.add_row(*cells, key=key)
        position = {job_id: i for i, job_id in enumerate(ids)}
        if [int(r.key.value or 0) for r in table.ordered_rows] != ids:
            table.sort("id", key=lambda cell: position[int(cell.plain)])
        if table.row_count:
            index = table.get_row_index(str(cursor_key)) if cursor_key in wanted else \
                min(table.cursor_row, table.row_count - 1)
            table.move_cursor(row=index, animate=False, scroll=False)
            table.scroll_to(y=max(0, index - offset), animate=False, immediate=True)
        self._show_info()

    def filter_text(self) -> str:
        text = self.filter.describe()
        if self.state and self.state != self.tab:
            text = f"state:{self.state} {text}".strip()
        return text

    def _show_info(self) -> None:
        info = Text(no_wrap=True, overflow="ellipsis")
        if self.filter_text():
            info.append("filter ", style="dim")
            info.append(visible(self.filter_text()), style="bold")
            info.append(" · ", style="dim")
        if not self.rows:
            info.append("no jobs here" + (" match the filter" if self.filter.describe()
                                          else "") + " · ", style="dim")
        info.append(f"page {len(self.pages)} · {len(self.rows)} rows")
        if self.next_cursor:
            info.append(" · ] next page")
        if len(self.pages) > 1:
            info.append(" · [ previous")
        if self.marked:
            info.append(f" · {len(self.marked)} marked", style="bold yellow")
        if self.sort_key or self.sort_reverse:
            info.append(f" · sorted by {self.sort_key or 'queue order'}"
                        f"{' ↓' if self.sort_reverse else ' ↑'}")
        self.query_one("#jobs-info", Static).update(info)

    def tick(self) -> None:
        """Lease bars count down between refreshes."""
        if self.tab not in ("claimed", "all") or not self.rows:
            return
        table: DataTable[Text] = self.query_one(DataTable)
        column = "lease" if self.tab == "claimed" else "when"
        cell = next(c[2] for c in COLUMNS[self.tab] if c[0] == column)
        now = self.jobq.now()
        for job_id, row in self.rows.items():
            if str(job_id) in table.rows:
                table.update_cell(str(job_id), column, cell(row, now))

    # -- the view ---------------------------------------------------------------------------

    def _reset_view(self) -> None:
        self.pages = [None]
        self.marked.clear()
        self.rows, self.order = {}, []
        self.jobq.poke()

    @on(Tabs.TabActivated)
    def _tab_changed(self, event: Tabs.TabActivated) -> None:
        name = event.tab.id or "pending"
        if name != self.tab:
            self.tab, self.state = name, None
            self.sort_key, self.sort_reverse = None, False
            self._show_info()
            self._reset_view()

    def action_tab(self, name: str) -> None:
        self.query_one(Tabs).active = name

    def action_edit_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.value = self.filter.describe()
        field.display = True
        field.focus()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        try:
            flt = parse_filter(event.value)
        except JobqError as exc:
            self.notify(str(exc), title="filter", severity="error", markup=False)
            return
        self.filter = replace(flt, state=None)
        if flt.state:
            self.state = flt.state
            self.tab = TAB_OF[flt.state]
            self.query_one(Tabs).active = self.tab
        event.input.display = False
        self.query_one(DataTable).focus()
        self._show_info()
        self._reset_view()

    def action_escape(self) -> None:
        self.hide_field_or_back(self.query_one("#filter", Input), self.query_one(DataTable))

    def _cursor_id(self) -> int | None:
        table: DataTable[Text] = self.query_one(DataTable)
        if not table.row_count:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return int(key.value or 0)

    def selected(self) -> list[int]:
        """The marked jobs, else the one under the cursor."""
        if self.marked:
            return sorted(self.marked)
        job_id = self._cursor_id()
        return [] if job_id is None else [job_id]

    def unmark(self, ids: set[int]) -> None:
        self.marked -= ids
        if self.rows:
            self._redraw()

    @on(DataTable.RowSelected)
    def action_open_job(self) -> None:
        from .detail import DetailScreen

        job_id = self._cursor_id()
        if job_id is not None:
            self.jobq.open(DetailScreen(job_id))

    def action_trace(self) -> None:
        from .trace import TraceScreen

        job_id = self._cursor_id()
        if job_id is None:
            return
        request_id = self.rows[job_id].request_id if job_id in self.rows else None
        if not request_id:
            self.notify(f"job {job_id} has no request id", severity="warning", markup=False)
            return
        self.jobq.open(TraceScreen(request_id))

    def action_mark(self) -> None:
        job_id = self._cursor_id()
        if job_id is None:
            return
        self.marked ^= {job_id}
        table: DataTable[Text] = self.query_one(DataTable)
        table.update_cell(str(job_id), "mark", _mark(job_id in self.marked))
        table.action_cursor_down()
        self._show_info()

    def action_unmark_all(self) -> None:
        self.unmark(set(self.marked))

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key == "mark":
            return
        if key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, False
        self._redraw()

    def action_sort(self) -> None:
        keys: list[str | None] = [None, "id", "type"] + [c[0] for c in COLUMNS[self.tab]]
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)]
        self._redraw()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._redraw()

    def action_next_page(self) -> None:
        if self.next_cursor:
            self.pages.append(self.next_cursor)
            self.jobq.poke()
        else:
            self.notify("this is the last page", timeout=2)

    def action_prev_page(self) -> None:
        if len(self.pages) > 1:
            self.pages.pop()
            self.jobq.poke()

    # -- actions: the same admin calls as `jobq retry`, `extend`, `delete`, `clear` --------

    def action_retry(self) -> None:
        if ids := self.selected():
            self.jobq.operator.start_retry(ids)

    def action_retry_all(self) -> None:
        self.jobq.operator.start_retry_matching(self.filter)

    def action_extend(self) -> None:
        if ids := self.selected():
            self.jobq.operator.start_extend(ids)

    def action_extend_by(self) -> None:
        if ids := self.selected():
            self.jobq.operator.start_extend_by(ids)

    def action_delete(self) -> None:
        if ids := self.selected():
            self.jobq.operator.start_delete(ids)

    def action_clear(self) -> None:
        self.jobq.operator.start_clear()
