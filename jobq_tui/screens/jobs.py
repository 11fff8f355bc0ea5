"""The jobs list: a tab per state, keyset pages, marks, sorting and the filter bar.

Rows are keyed by job id and updated in place, so the cursor, the scroll position and the
marks survive every refresh."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import replace
from datetime import datetime
from typing import ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, Static, Tab, Tabs

from jobq_cli.format import first_line, lease_left, literal, payload_line, relative
from jobq_cli.safe import visible
from jobq_core import JobqError
from jobq_core.admin import AsyncAdmin, Count, JobRow, Page
from jobq_core.filters import JobFilter, parse_filter

from ..messages import Act, Open, Refresh
from ..widgets.status import Banner, Crumbs, StatusBar
from .actions import JobActionsScreen

PAGE_SIZE = 100
TABS = ("pending", "claimed", "failed", "completed", "all", "cancelled")
#: The tab that shows a filter's state.
TAB_OF = {"pending": "pending", "ready": "pending", "scheduled": "pending",
          "claimed": "claimed", "expired": "claimed", "failed": "failed",
          "completed": "completed", "cancelled": "cancelled"}

Cell = Callable[[JobRow, datetime], Text]


def _mark(marked: bool) -> Text:
    return Text("●" if marked else " ", style="bold yellow")


def _attempts(row: JobRow, now: datetime) -> Text:
    return Text(str(row.attempts), justify="right", style="red" if row.attempts >= 3 else "")


def _req(row: JobRow, now: datetime) -> Text:
    return literal(row.request_id or "—", 22)


def _lease(row: JobRow, now: datetime) -> Text:
    return lease_left(row.lease_until, now, row.lease_ms)


def _payload(row: JobRow, now: datetime) -> Text:
    return payload_line(row.payload, FLEX_LIMIT)


_STATE_STYLE = {"failed": "red", "claimed": "yellow", "pending": "", "completed": "green",
                "cancelled": "magenta"}
#: How much of a long text the last column reads; it shows what fits its width (what the
#: other columns leave it), with an ellipsis.
FLEX_LIMIT = 300
#: The narrowest the last column gets.
FLEX_MIN = 12

# (key, label, cell, server sort or None) per tab, after the mark, id and type columns. The
# last column takes the width the others leave.
COLUMNS: dict[str, list[tuple[str, str, Cell, str | None]]] = {
    "pending": [
        ("priority", "pri", lambda r, n: Text(str(r.priority), justify="right"), "priority"),
        ("run_at", "runs", lambda r, n: Text(relative(r.run_at, n)), "run_at"),
        ("attempts", "att", _attempts, "attempts"),
        ("request_id", "request id", _req, "request_id"),
        ("payload", "payload", _payload, None),
    ],
    "claimed": [
        ("lease", "lease left", _lease, "lease_until"),
        ("worker", "worker", lambda r, n: literal(r.claimed_by or "—", 24), "claimed_by"),
        ("attempts", "att", _attempts, "attempts"),
        ("request_id", "request id", _req, "request_id"),
    ],
    "failed": [
        ("failed_at", "failed", lambda r, n: Text(relative(r.failed_at, n)), "failed_at"),
        ("attempts", "att", _attempts, "attempts"),
        ("request_id", "request id", _req, "request_id"),
        ("error", "error", lambda r, n: first_line(r.last_error, FLEX_LIMIT), None),
    ],
    "cancelled": [
        ("failed_at", "cancelled", lambda r, n: Text(relative(r.failed_at, n)), "failed_at"),
        ("attempts", "att", _attempts, "attempts"),
        ("request_id", "request id", _req, "request_id"),
        ("error", "by and why", lambda r, n: first_line(r.last_error, FLEX_LIMIT), None),
    ],
    "completed": [
        ("finished", "finished", lambda r, n: Text(relative(r.created_at, n)), "created_at"),
        ("attempts", "att", _attempts, "attempts"),
        ("worker", "worker", lambda r, n: literal(r.claimed_by or "—", 24), "claimed_by"),
        ("request_id", "request id", _req, "request_id"),
        ("payload", "payload", _payload, None),
    ],
    "all": [
        ("state", "state", lambda r, n: Text(r.state, style=_STATE_STYLE.get(r.state, "")),
         None),
        ("when", "lease / runs", lambda r, n: _lease(r, n)
         if r.state == "claimed" else Text(relative(r.run_at or r.failed_at, n)), None),
        ("attempts", "att", _attempts, "attempts"),
        ("request_id", "request id", _req, "request_id"),
        ("detail", "payload / error", lambda r, n: first_line(r.last_error, FLEX_LIMIT)
         if r.last_error else _payload(r, n), None),
    ],
}
_BASE_SORTS = {"id": "id", "type": "type"}


class JobsScreen(JobActionsScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_job", "Detail"),
        Binding("t", "trace", "Trace"),
        Binding("slash", "edit_filter", "Filter"),
        Binding("m", "mark", "Mark"),
        Binding("u", "unmark_all", "Unmark", show=False),
        Binding("s", "sort", "Sort by next column", show=False),
        Binding("S", "reverse", "Reverse sort", show=False),
        Binding("right_square_bracket", "next_page", "Next page", show=False),
        Binding("left_square_bracket", "prev_page", "Prev page", show=False),
        Binding("1", "tab('pending')", "Pending", show=False),
        Binding("2", "tab('claimed')", "Claimed", show=False),
        Binding("3", "tab('failed')", "Failed", show=False),
        Binding("4", "tab('completed')", "Completed", show=False),
        Binding("5", "tab('all')", "All live", show=False),
        Binding("6", "tab('cancelled')", "Cancelled", show=False),
        Binding("R", "retry", "Retry"),
        Binding("A", "retry_all", "Retry all matching", show=False),
        Binding("e", "extend", "Extend +5m"),
        Binding("E", "extend_by", "Extend by…", show=False),
        Binding("c", "cancel", "Cancel…"),
        Binding("D", "delete", "Delete…"),
        Binding("C", "clear", "Clear old…", show=False),
        Binding("escape", "escape", "Back", show=False),
    ]
    ACTION_TITLES: ClassVar[dict[str, str]] = {"retry": "Retry the selected or marked jobs",
                     "retry_all": "Retry all failed jobs matching the filter",
                     "extend": "Extend the selected leases by 5m",
                     "extend_by": "Extend the selected leases by…",
                     "cancel": "Cancel the selected or marked jobs…",
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
        self.total: Count | None = None
        #: The server's sort (a `jobq_core.listings.SORTS` name, "-" first descending); None is
        #: the tab's own order.
        self.sort: str | None = None
        #: The tab and the last column's width the table's columns were made for.
        self._columns_of: tuple[str, int] | None = None
        #: The last column's width per tab, from the table's width at the last draw.
        self._flex: dict[str, int] = {}
        #: The other columns' widths at the last draw: their widest cell or label.
        self._widths: dict[str, int] = {}
        self._edit_on_mount = edit_filter
        #: The state each marked job had when marked, for one no longer on the page.
        self._marked_states: dict[int, str] = {}

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

    def on_resize(self, event: events.Resize) -> None:
        """The last column takes the width the others leave: worked out again once the
        table has its new size."""
        self.call_after_refresh(self._fit_last_column)

    # -- data -------------------------------------------------------------------------------

    def current_filter(self) -> JobFilter:
        state = self.state if self.state else (None if self.tab == "all" else self.tab)
        return replace(self.filter, state=state)

    def _view_key(self) -> str:
        return f"{self.current_filter()}|{self.sort}|{self.pages[-1]}"

    async def fetch(self, admin: AsyncAdmin) -> tuple[str, Page]:
        key = self._view_key()
        return key, await admin.list_jobs(self.current_filter(), after=self.pages[-1],
                                          limit=PAGE_SIZE, sort=self.sort, total=True)

    def show(self, data: tuple[str, Page]) -> None:
        key, page = data
        if key != self._view_key():
            self.post_message(Refresh())  # the view changed while this page was loading
            return
        self.next_cursor = page.next_cursor
        self.total = page.total
        self.rows = {row.id: row for row in page.rows}
        self.order = [row.id for row in page.rows]
        self._redraw()

    def _flex_width(self, table: DataTable[Text]) -> int:
        """What the other columns (as wide as their widest cell), the cell padding and the
        scrollbar leave the last one."""
        others = sum(self._widths.values()) + 2 * table.cell_padding * (len(self._widths) + 1)
        return max(FLEX_MIN, table.size.width - others - table.scrollbar_size_vertical)

    def _redraw(self) -> None:
        table: DataTable[Text] = self.query_one(DataTable)
        now = self.jobq.now()
        columns = COLUMNS[self.tab]
        flex = columns[-1][0]
        cursor_key = self._cursor_id()
        offset = table.cursor_row - round(table.scroll_y)
        width = self._flex.get(self.tab, FLEX_MIN)
        if self._columns_of != (self.tab, width):
            table.clear(columns=True)
            table.add_column(" ", key="mark", width=1)
            table.add_column(Text("id", justify="right"), key="id")
            table.add_column("type", key="type")
            for key, label, _, _ in columns:
                table.add_column(label, key=key, width=width if key == flex else None)
            self._columns_of = (self.tab, width)
        ids = self.order
        wanted = set(ids)
        names = ["mark", "id", "type"] + [c[0] for c in columns]
        self._widths = {"mark": 1, "id": 2, "type": 4} | {
            key: cell_len(label) for key, label, _, _ in columns[:-1]}
        for row_key in [k for k in table.rows if int(k.value or 0) not in wanted]:
            table.remove_row(row_key)
        for job_id in ids:
            row = self.rows[job_id]
            cells = [_mark(job_id in self.marked), Text(str(job_id), justify="right"),
                     literal(row.type, 20)] + [cell(row, now) for _, _, cell, _ in columns]
            for column, cell in zip(names, cells, strict=True):
                cell.no_wrap, cell.overflow = True, "ellipsis"
                if column in self._widths:
                    self._widths[column] = max(self._widths[column], cell.cell_len)
            cells[-1].truncate(width, overflow="ellipsis")  # what the last column shows
            key = str(job_id)
            if key in table.rows:
                for column, cell in zip(names, cells, strict=True):
                    if table.get_cell(key, column) != cell:
                        table.update_cell(key, column, cell)
            else:
                table.add_row(*cells, key=key)
        position = {job_id: i for i, job_id in enumerate(ids)}
        if [int(r.key.value or 0) for r in table.ordered_rows] != ids:
            table.sort("id", key=lambda cell: position[int(cell.plain)])
        if table.row_count:
            index = table.get_row_index(str(cursor_key)) if cursor_key in wanted else \
                min(max(table.cursor_row, 0), table.row_count - 1)
            table.move_cursor(row=index, animate=False, scroll=False)
            table.scroll_to(y=max(0, index - offset), animate=False, immediate=True)
        self._show_info()
        self.refresh_bindings()
        self._fit_last_column()

    def _fit_last_column(self) -> None:
        """Draw again when the last column's share of the width changed (a resize, a wider
        cell in another column)."""
        if not self.is_attached or not self.rows:
            return
        table: DataTable[Text] = self.query_one(DataTable)
        width = self._flex_width(table)
        if table.size.width and width != self._flex.get(self.tab, FLEX_MIN):
            self._flex[self.tab] = width
            self._redraw()

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
        first = (len(self.pages) - 1) * PAGE_SIZE
        shown = f"{first + 1}-{first + len(self.rows)}" if self.rows else "0"
        info.append(f"page {len(self.pages)} · rows {shown}")
        if self.total is not None:
            info.append(" of ")
            info.append(str(self.total), style="bold")
        if self.next_cursor:
            info.append(" · ] next page")
        if len(self.pages) > 1:
            info.append(" · [ previous")
        if self.marked:
            info.append(f" · {len(self.marked)} marked", style="bold yellow")
        if self.sort:
            info.append(f" · sorted by {self.sort.removeprefix('-')}"
                        f"{' ↓' if self.sort.startswith('-') else ' ↑'}")
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

    def _reset_view(self, *, keep_marks: bool = False) -> None:
        """A new listing (tab, filter or sort): from its first page and first row."""
        self.pages = [None]
        if not keep_marks:
            self.marked.clear()
        self.rows, self.order, self.total = {}, [], None
        self.query_one(DataTable).clear()
        self._show_info()
        self.post_message(Refresh())

    @on(Tabs.TabActivated)
    def _tab_changed(self, event: Tabs.TabActivated) -> None:
        name = event.tab.id or "pending"
        if name != self.tab:
            self.tab, self.state, self.sort = name, None, None
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
            if TAB_OF[flt.state] != self.tab:
                self.tab, self.sort = TAB_OF[flt.state], None
                self.query_one(Tabs).active = self.tab
        event.input.display = False
        self.query_one(DataTable).focus()
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

    def in_hand(self) -> dict[int, str]:
        # A marked job on another page keeps the state it was marked in: the action's
        # preview judges it again.
        return {i: self.rows[i].state if i in self.rows else self._marked_states.get(i, "?")
                for i in self.selected()}

    def job_types(self) -> dict[int, str]:
        return {i: row.type for i, row in self.rows.items()}

    def unmark(self, ids: AbstractSet[int]) -> None:
        self.marked -= ids
        if self.rows:
            self._redraw()

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self.refresh_bindings()  # what the footer offers depends on the row

    @on(DataTable.RowSelected)
    def action_open_job(self) -> None:
        from .detail import DetailScreen

        job_id = self._cursor_id()
        if job_id is not None:
            self.post_message(Open(DetailScreen(job_id)))

    def action_trace(self) -> None:
        from .trace import TraceScreen

        job_id = self._cursor_id()
        if job_id is None:
            return
        request_id = self.rows[job_id].request_id if job_id in self.rows else None
        if not request_id:
            self.notify(f"job {job_id} has no request id", severity="warning", markup=False)
            return
        self.post_message(Open(TraceScreen(request_id)))

    def action_mark(self) -> None:
        job_id = self._cursor_id()
        if job_id is None:
            return
        self.marked ^= {job_id}
        if job_id in self.rows:
            self._marked_states[job_id] = self.rows[job_id].state
        table: DataTable[Text] = self.query_one(DataTable)
        table.update_cell(str(job_id), "mark", _mark(job_id in self.marked))
        table.action_cursor_down()
        self._show_info()
        self.refresh_bindings()

    def action_unmark_all(self) -> None:
        self.unmark(set(self.marked))
        self.refresh_bindings()

    # -- sorting, on the server across every row ------------------------------------------------

    def sorts(self) -> list[str]:
        """The columns this tab can be sorted by, ascending."""
        return list(_BASE_SORTS.values()) + [c[3] for c in COLUMNS[self.tab] if c[3]]

    def _sort_by(self, sort: str | None) -> None:
        self.sort = sort
        self._reset_view(keep_marks=True)

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        column = _BASE_SORTS.get(key) or next((c[3] for c in COLUMNS[self.tab]
                                               if c[0] == key), None)
        if column is None:
            if key != "mark":
                self.notify(f"the {key} column is not sortable", timeout=2, markup=False)
            return
        self._sort_by(f"-{column}" if self.sort == column else column)

    def action_sort(self) -> None:
        """The next sortable column, ascending; after the last, the tab's own order."""
        keys: list[str | None] = [None, *self.sorts()]
        current = self.sort.removeprefix("-") if self.sort else None
        self._sort_by(keys[(keys.index(current) + 1) % len(keys)])

    def action_reverse(self) -> None:
        if self.sort is None:
            self.notify("the tab's own order has no reverse: choose a column with s first",
                        timeout=3)
            return
        self._sort_by(self.sort.removeprefix("-") if self.sort.startswith("-")
                      else f"-{self.sort}")

    def action_next_page(self) -> None:
        if self.next_cursor:
            self.pages.append(self.next_cursor)
            self.post_message(Refresh())
        else:
            self.notify("this is the last page", timeout=2)

    def action_prev_page(self) -> None:
        if len(self.pages) > 1:
            self.pages.pop()
            self.post_message(Refresh())

    # -- actions: the same admin calls as `jobq retry`, `extend`, `cancel`, `delete`, `clear` --

    def action_retry(self) -> None:
        if ids := self.selected():
            self.post_message(Act("retry", ids, marked=bool(self.marked)))

    def action_retry_all(self) -> None:
        self.post_message(Act("retry_matching", filter=self.filter))

    def action_extend(self) -> None:
        if ids := self.selected():
            self.post_message(Act("extend", ids, marked=bool(self.marked)))

    def action_extend_by(self) -> None:
        if ids := self.selected():
            self.post_message(Act("extend_by", ids, subject=self.subject(),
                                  marked=bool(self.marked)))

    def action_cancel(self) -> None:
        if ids := self.selected():
            self.post_message(Act("cancel", ids, subject=self.subject()))

    def action_delete(self) -> None:
        if ids := self.selected():
            self.post_message(Act("delete", ids))

    def action_clear(self) -> None:
        self.post_message(Act("clear"))
