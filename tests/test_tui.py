"""jobq-tui driven with Textual's Pilot against a real database: every screen and action,
each checked in the database afterwards."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, RichLog, Static

from jobq_core import JobQueue, NewJob
from jobq_core.admin import AsyncAdmin
from jobq_core.errors import DatabaseError
from jobq_tui.app import JobqApp
from jobq_tui.screens.detail import DetailScreen
from jobq_tui.screens.dialogs import (
    ConfirmScreen,
    HelpScreen,
    PromptScreen,
    TypeToConfirmScreen,
)
from jobq_tui.screens.jobs import JobsScreen
from jobq_tui.screens.overview import OverviewScreen
from jobq_tui.screens.trace import TraceScreen

from .helpers import backdate, events, row
from .tui_helpers import text_of, until

SIZE = (110, 32)


def table_ids(app: JobqApp) -> list[int]:
    table: DataTable[Text] = app.screen.query_one("#jobs", DataTable)
    return [int(r.key.value or 0) for r in table.ordered_rows]


def cursor_id(app: JobqApp) -> int:
    screen = app.screen
    assert isinstance(screen, JobsScreen)
    job_id = screen._cursor_id()
    assert job_id is not None
    return job_id


def notifications(app: JobqApp) -> list[str]:
    return [n.message for n in app._notifications]


async def open_jobs(pilot: Pilot[Any], app: JobqApp, flt: str) -> JobsScreen:
    app.run_command(f"jobs {flt}")
    screen = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen)
    await until(pilot, lambda: app.refreshes and screen.rows is not None and
                screen._columns_of is not None)
    return screen  # type: ignore[no-any-return]


async def clear_preview(pilot: Pilot[Any], app: JobqApp, age: str) -> TypeToConfirmScreen:
    """`C`, then the age: the clear's preview, waiting for the typed count."""
    await pilot.press("C")
    prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
    prompt.query_one(Input).value = age
    await pilot.press("enter")
    dialog: TypeToConfirmScreen = await until(
        pilot, lambda: isinstance(app.screen, TypeToConfirmScreen) and app.screen)
    return dialog


def failed_jobs(queue: JobQueue, job_type: str, n: int) -> list[int]:
    ids = [queue.enqueue(job_type, {"n": i}) for i in range(n)]
    for _ in ids:
        job = queue.claim(types=[job_type])
        assert job is not None
        queue.fail(job, reason=f"boom {job.id}", retry=False)
    return ids


@pytest.fixture
def queue(dsn: str) -> Any:
    with JobQueue(dsn) as q:
        yield q


# -- overview ---------------------------------------------------------------------------------

async def test_overview_counts_each_type_and_enter_opens_its_jobs(
    dsn: str, queue: JobQueue
) -> None:
    for n in range(3):
        queue.enqueue("email", {"n": n})
    queue.enqueue("email", {}, run_at=timedelta(hours=1))
    queue.claim(types=["email"])
    failed_jobs(queue, "report", 2)
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table: DataTable[Text] = app.screen.query_one("#overview", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        assert isinstance(app.screen, OverviewScreen)

        def cells(job_type: str) -> dict[str, str]:
            return {str(c.key.value): table.get_cell(job_type, c.key).plain
                    for c in table.columns.values()}
        email = cells("email")
        assert (email["ready"], email["scheduled"], email["claimed"], email["failed"]) == \
            ("2", "1", "1", "0")
        assert email["late"] == "0"  # a fresh 30 s lease has more than half left
        assert cells("report")["failed"] == "2"
        assert "2 types" in text_of(app, "#overview-summary")

        table.move_cursor(row=table.get_row_index("report"))
        await pilot.press("enter")
        jobs = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen)
        assert jobs.filter.type == "report"
        await until(pilot, lambda: jobs.rows)
        assert {r.type for r in jobs.rows.values()} == {"report"}


# -- jobs list ----------------------------------------------------------------------------------

async def test_rows_update_in_place_keeping_cursor_scroll_and_marks(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    ids = [queue.enqueue("t", {"n": n}) for n in range(60)]
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=(100, 24)) as pilot:
        screen = await open_jobs(pilot, app, "state:pending")
        await until(pilot, lambda: len(table_ids(app)) == 60)
        assert table_ids(app) == sorted(ids)  # the order they will run in
        for _ in range(30):
            await pilot.press("down")
        await pilot.press("m", "m")  # marks two rows, the cursor moves on
        held = cursor_id(app)
        table: DataTable[Text] = app.screen.query_one("#jobs", DataTable)
        scroll = table.scroll_y
        assert scroll > 0
        marked = set(screen.marked)
        assert len(marked) == 2

        newcomer = queue.enqueue("t", {"n": "new"})
        gone = ids[-1]
        db.execute("DELETE FROM svti_jobs WHERE id = %s", (gone,))
        await until(pilot, lambda: newcomer in table_ids(app) and gone not in table_ids(app))
        assert cursor_id(app) == held
        assert screen.marked == marked
        for job_id in marked:
            assert table.get_cell(str(job_id), "mark").plain == "●"
        # The row under the cursor stays at the same place on screen.
        assert table.cursor_row - table.scroll_y == pytest.approx(30 + 2 - scroll, abs=1)


async def test_keyset_pages_and_sorting(dsn: str, queue: JobQueue) -> None:
    every = queue.enqueue_many([NewJob("b" if n % 2 else "a", {"n": n}) for n in range(230)])
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_jobs(pilot, app, "")
        await until(pilot, lambda: len(table_ids(app)) == 100)
        first = table_ids(app)
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: table_ids(app) and table_ids(app)[0] < min(first))
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: len(table_ids(app)) == 30)
        assert len(screen.pages) == 3
        assert screen.next_cursor is None
        await pilot.press("left_square_bracket", "left_square_bracket")
        await until(pilot, lambda: table_ids(app) == first)

        # Sorting runs on the server, across every row (tests/test_tui_jobs.py has more).
        await pilot.press("s")  # by id, ascending: the first page is the lowest ids
        await until(pilot, lambda: table_ids(app) == sorted(every)[:100])
        await pilot.press("s")  # by type: every "a" comes before any "b"
        await until(pilot, lambda: screen.sort == "type" and len(screen.rows) == 100 and
                    {screen.rows[i].type for i in table_ids(app)} == {"a"})
        await pilot.press("S")  # reversed
        await until(pilot, lambda: screen.sort == "-type" and len(screen.rows) == 100 and
                    {screen.rows[i].type for i in table_ids(app)} == {"b"})
        await pilot.pause(0.5)  # refreshes keep the chosen order
        assert {screen.rows[i].type for i in table_ids(app)} == {"b"}


async def test_filter_bar_compiles_qualifiers_and_reports_bad_ones(
    dsn: str, queue: JobQueue
) -> None:
    failed_jobs(queue, "a", 2)
    failed_jobs(queue, "b", 1)
    queue.enqueue("a", {})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_jobs(pilot, app, "")
        await pilot.press("slash")
        field = app.screen.query_one("#filter", Input)
        assert field.has_focus
        field.value = "state:failed type:a"
        await pilot.press("enter")
        assert screen.tab == "failed"
        await until(pilot, lambda: len(table_ids(app)) == 2 and
                    {screen.rows[i].type for i in table_ids(app)} == {"a"})
        assert "type:a" in text_of(app, "#jobs-info")

        await pilot.press("slash")
        field.value = "colour:blue"
        await pilot.press("enter")
        await until(pilot, lambda: any("unknown qualifier" in m for m in notifications(app)))
        assert field.display  # still editing: nothing was lost
        await pilot.press("escape")
        assert not field.display
        assert app.is_running


# -- actions --------------------------------------------------------------------------------------

async def test_retry_one_failed_job_runs_at_once(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    [job_id] = failed_jobs(queue, "t", 1)
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:failed")
        await until(pilot, lambda: table_ids(app) == [job_id])
        await pilot.press("R")
        await until(pilot, lambda: row(db, job_id)["state"] == "pending")  # type: ignore[index]
        assert not isinstance(app.screen, ConfirmScreen)
        await until(pilot, lambda: f"job {job_id} re-enqueued" in notifications(app))
        assert events(db, job_id)[-1] == "retried"
        await until(pilot, lambda: table_ids(app) == [])


async def test_a_write_the_server_refuses_as_read_only_is_a_notification(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    """A console not started --read-only, on a session the DSN makes read-only: the action
    fails with a notification that says so, and the console keeps running."""
    [job_id] = failed_jobs(queue, "t", 1)
    app = JobqApp(make_conninfo(dsn, options="-c default_transaction_read_only=on"),
                  interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:failed")
        await until(pilot, lambda: table_ids(app) == [job_id])
        await pilot.press("R")
        await until(pilot, lambda: "the database refused the write: this session is read-only"
                    in notifications(app))
        assert row(db, job_id)["state"] == "failed"  # type: ignore[index]
        assert app.is_running and table_ids(app) == [job_id]


async def test_bulk_retry_of_marked_jobs_asks_with_the_count(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    ids = failed_jobs(queue, "t", 3)
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:failed")
        await until(pilot, lambda: len(table_ids(app)) == 3)
        marked = table_ids(app)[:2]
        await pilot.press("m", "m", "R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        body = text_of(app, "#dialog-body")
        assert "2 failed jobs will change" in body
        assert app.screen.focused is not None and app.screen.focused.id == "cancel"
        await pilot.press("enter")  # the default is Cancel
        await until(pilot, lambda: isinstance(app.screen, JobsScreen))
        assert {row(db, i)["state"] for i in ids} == {"failed"}  # type: ignore[index]

        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: all(row(db, i)["state"] == "pending"  # type: ignore[index]
                                       for i in marked))
        left = (set(ids) - set(marked)).pop()
        assert row(db, left)["state"] == "failed"  # type: ignore[index]
        await until(pilot, lambda: not app.screen.marked)  # type: ignore[attr-defined]


async def test_retry_all_matching_the_filter_previews_then_retries_only_those(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    a_ids = failed_jobs(queue, "a", 3)
    b_ids = failed_jobs(queue, "b", 2)
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:failed type:a")
        await until(pilot, lambda: len(table_ids(app)) == 3)
        await pilot.press("A")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen)
        body = text_of(app, "#dialog-body")
        assert "3 failed jobs will change" in body and "type:a" in body
        await pilot.press("y")
        await until(pilot, lambda: all(row(db, i)["state"] == "pending"  # type: ignore[index]
                                       for i in a_ids))
        assert {row(db, i)["state"] for i in b_ids} == {"failed"}  # type: ignore[index]


async def test_extend_moves_lease_until_by_five_minutes_or_a_typed_amount(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    queue.enqueue("t", {})
    job = queue.claim(lease_ms=30_000)
    assert job is not None
    before = row(db, job.id)["lease_until"]  # type: ignore[index]
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:claimed")
        await until(pilot, lambda: table_ids(app) == [job.id])
        await pilot.press("e")
        await until(pilot, lambda: row(db, job.id)["lease_until"] > before  # type: ignore[index]
                    + timedelta(minutes=4))
        after_e = row(db, job.id)["lease_until"]  # type: ignore[index]
        assert after_e - before == pytest.approx(timedelta(minutes=5), abs=timedelta(seconds=5))

        await pilot.press("E")
        prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
        field = prompt.query_one(Input)
        field.value = "soon"
        await pilot.press("enter")
        assert "invalid duration" in text_of(app, "#dialog-hint")
        field.value = "1h"
        await pilot.press("enter")
        await until(pilot, lambda: row(db, job.id)["lease_until"]  # type: ignore[index]
                    > after_e + timedelta(minutes=59))
        # The worker's own token still holds the job.
        queue.complete(job)
        assert events(db, job.id)[-1] == "completed"


async def test_delete_makes_you_type_the_count(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    doomed = queue.enqueue("t", {"doomed": True})  # first in run order: under the cursor
    keep = queue.enqueue("t", {"keep": True})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:pending")
        await until(pilot, lambda: table_ids(app) == [doomed, keep])
        await pilot.press("D")
        dialog = await until(pilot, lambda: isinstance(app.screen, TypeToConfirmScreen)
                             and app.screen)
        assert dialog.expected == "1"
        await pilot.press("enter")  # nothing typed: nothing happens
        assert isinstance(app.screen, TypeToConfirmScreen)
        await pilot.press("2", "enter")  # the wrong count
        assert isinstance(app.screen, TypeToConfirmScreen)
        assert row(db, doomed) is not None
        dialog.query_one(Input).value = ""
        await pilot.press("1", "enter")
        await until(pilot, lambda: row(db, doomed) is None)
        assert row(db, keep) is not None
        assert events(db, doomed)[-1] == "deleted"


async def test_escape_cancels_a_delete(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    job_id = queue.enqueue("t", {})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:pending")
        await until(pilot, lambda: table_ids(app) == [job_id])
        await pilot.press("D")
        await until(pilot, lambda: isinstance(app.screen, TypeToConfirmScreen))
        await pilot.press("1", "escape")
        await until(pilot, lambda: isinstance(app.screen, JobsScreen))
        await pilot.pause(0.3)
        assert row(db, job_id) is not None


async def test_clear_deletes_only_rows_older_than_the_cutoff(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    old, new = failed_jobs(queue, "t", 2)
    backdate(db, old, failed_at="10 days", created_at="10 days")
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '10 days' "
                "WHERE job_id = %s", (old,))
    pending = queue.enqueue("t", {})
    backdate(db, pending, created_at="30 days")
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await clear_preview(pilot, app, "7d")
        body = text_of(app, "#dialog-body")
        assert "1 failed or cancelled jobs and 3 history rows" in body
        dialog.query_one(Input).value = dialog.expected
        await pilot.press("enter")
        await until(pilot, lambda: row(db, old) is None)
        await until(pilot, lambda: any("cleared 4 rows" in m for m in notifications(app)))
    assert row(db, new) is not None and row(db, pending) is not None
    assert events(db, old) == ["deleted"]  # its history went; the clear itself is recorded
    assert events(db, new)[-1] == "failed"


async def test_read_only_disables_actions_and_the_server_refuses_writes(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    [job_id] = failed_jobs(queue, "t", 1)
    app = JobqApp(dsn, interval=0.2, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:failed")
        await until(pilot, lambda: table_ids(app) == [job_id])
        bindings = app.screen.active_bindings
        assert bindings["R"].enabled is False and bindings["D"].enabled is False
        assert bindings["t"].enabled is True
        await pilot.press("R")
        await until(pilot, lambda: any("read-only" in m for m in notifications(app)))
        await pilot.press("D")
        await pilot.pause(0.3)
        assert isinstance(app.screen, JobsScreen)  # no dialog opened
        assert "READ-ONLY" in text_of(app, "#status")
        # The palette's way in is refused too.
        app.run_screen_action("retry")
        app.operator.start_clear("1d")
        await pilot.pause(0.3)
        # And the session itself is read-only: the server refuses a write.
        with pytest.raises(DatabaseError, match="read-only transaction") as refused:
            await app.admin.retry([job_id])
        assert refused.value.sqlstate == "25006"  # read_only_sql_transaction
    assert row(db, job_id)["state"] == "failed"  # type: ignore[index]
    assert events(db, job_id)[-1] == "failed"


# -- detail and trace -----------------------------------------------------------------------------

async def test_detail_shows_payload_timeline_lease_countdown_and_opens_the_trace(
    dsn: str, queue: JobQueue
) -> None:
    now = [datetime.now(UTC)]
    job_id = queue.enqueue("t", {"user": 42, "tags": ["a", "b"]}, request_id="req-7")
    job = queue.claim(lease_ms=120_000, worker="host-a:99")
    assert job is not None
    app = JobqApp(dsn, interval=0.2, clock=lambda: now[0])
    async with app.run_test(size=SIZE) as pilot:
        app.run_command(f"job {job_id}")
        screen = await until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        await until(pilot, lambda: screen.detail is not None)
        payload = text_of(app, "#detail-payload")
        assert '"user": 42' in payload and '"tags": [' in payload
        timeline = text_of(app, "#detail-timeline")
        assert "enqueued" in timeline and "claimed" in timeline and "host-a:99" in timeline
        lease = text_of(app, "#detail-lease")
        assert "held by host-a:99" in lease
        assert re.search(r"█ (1m5\ds|2m00s)", lease)  # two minutes left, give or take
        now[0] += timedelta(seconds=125)
        await pilot.pause(1.2)
        assert "EXPIRED" in text_of(app, "#detail-lease")
        await pilot.press("t")
        trace = await until(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen)
        assert trace.request_id == "req-7"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen))


async def test_detail_of_a_missing_job_says_so(dsn: str) -> None:
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        app.run_command("job 987654")
        await until(pilot, lambda: "no longer exists" in text_of(app, "#detail-summary"))
        assert app.is_running


def log_lines(app: JobqApp) -> list[str]:
    log = app.screen.query_one(RichLog)
    return [strip.text for strip in log.lines]


async def test_trace_tail_follows_pauses_and_searches(dsn: str, queue: JobQueue) -> None:
    first = queue.enqueue("email", {}, request_id="req-tail")
    queue.enqueue("other", {}, request_id="req-elsewhere")
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("colon")
        prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
        prompt.query_one(Input).value = "trace req-tail"
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen)
        await until(pilot, lambda: any(f"job {first}" in line for line in log_lines(app)))

        second = queue.enqueue("sms", {}, request_id="req-tail")
        await until(pilot, lambda: any(f"job {second}" in line for line in log_lines(app)))
        assert not any("req-elsewhere" in line or "other" in line for line in log_lines(app))

        await pilot.press("f")  # pause
        job = queue.claim(types=["sms"])
        assert job is not None
        queue.fail(job, reason="gateway [bold]down[/bold]", retry=False)
        await until(pilot, lambda: len(screen.events) == 4)
        assert not any("failed" in line for line in log_lines(app))
        assert "2 new" in text_of(app, "#trace-head")
        await pilot.press("f")  # follow again: the held lines appear
        await until(pilot, lambda: any("gateway [bold]down[/bold]" in line
                                       for line in log_lines(app)))

        await pilot.press("slash")
        app.screen.query_one("#trace-search", Input).value = "sms"
        await pilot.press("enter")
        assert all("sms" in line for line in log_lines(app))
        assert len(log_lines(app)) == 3
        await pilot.press("n")
        assert len(log_lines(app)) == 4


async def test_trace_tail_says_when_its_log_is_full(dsn: str, db: psycopg.Connection[Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The log keeps its last MAX_LINES lines (30 here, 20,000 for real); once older ones
    scroll out of it, the head says so, while every event still counts."""
    monkeypatch.setattr("jobq_tui.screens.trace.MAX_LINES", 30)

    def add(first: int, last: int) -> None:
        db.execute("INSERT INTO svti_jobs_events (job_id, type, event, request_id) "
                   "SELECT g, 't', 'enqueued', 'req-full' "
                   "FROM generate_series(%s::int, %s::int) g", (first, last))

    add(1, 20)
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        app.run_command("trace req-full")
        screen = await until(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen)
        await until(pilot, lambda: len(log_lines(app)) == 20)
        assert "log keeps" not in text_of(app, "#trace-head")
        add(21, 45)
        await until(pilot, lambda: len(screen.events) == 45)
        await until(pilot, lambda: "45 events" in text_of(app, "#trace-head"))
        assert "(log keeps the last 30 lines)" in text_of(app, "#trace-head")
        assert len(log_lines(app)) == 30 and "job 45" in log_lines(app)[-1]


# -- behaviour ------------------------------------------------------------------------------------

class SlowAdmin(AsyncAdmin):
    """The real admin, with stats made slow, counting how many run at once."""

    def __init__(self, inner: AsyncAdmin) -> None:
        super().__init__(inner.queue)
        self.running = 0
        self.most = 0
        self.calls = 0

    async def stats(self) -> Any:
        self.running += 1
        self.calls += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.3)
            return await super().stats()
        finally:
            self.running -= 1


async def test_refresh_is_single_flight_and_space_pauses_it(dsn: str) -> None:
    app = JobqApp(dsn, interval=0.01)
    slow = SlowAdmin(app.admin)
    app.admin = slow
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(10):
            app.poke()  # refresh-now requests while a refresh is running
            await pilot.pause(0.1)
        assert slow.most == 1
        assert 2 <= slow.calls <= 5
        await pilot.press("space")
        assert app.paused
        calls = slow.calls
        await pilot.pause(1.0)
        assert slow.calls <= calls + 1  # at most the one that was running
        assert "PAUSED" in text_of(app, "#status")
        await pilot.press("space")
        await until(pilot, lambda: slow.calls > calls + 1)
        await pilot.press("minus")
        assert app.interval == 0.5
        await pilot.press("plus", "plus")
        assert app.interval == 0.5  # the fastest step


async def test_database_outage_shows_a_banner_and_the_console_reconnects(
    embedded_server: Any,
) -> None:
    dsn = embedded_server.dsn
    with JobQueue(dsn) as queue:
        queue.enqueue("outage", {})
    app = JobqApp(dsn, interval=0.2)
    try:
        async with app.run_test(size=SIZE) as pilot:
            table: DataTable[Text] = app.screen.query_one("#overview", DataTable)
            await until(pilot, lambda: "outage" in [k.value for k in table.rows])
            await asyncio.to_thread(embedded_server.stop, "immediate")
            banner = app.screen.query_one("#banner", Static)
            await until(pilot, lambda: banner.display and "database unavailable"
                        in text_of(app, "#banner"), timeout=30)
            shown = text_of(app, "#banner")
            assert "retrying in" in shown
            assert shown.count("database unavailable") == 1, shown  # the cause, said once
            await pilot.press("a")  # the console still works while the database is down
            await until(pilot, lambda: isinstance(app.screen, JobsScreen))
            await pilot.press("escape")
            await asyncio.to_thread(embedded_server.start)
            await until(pilot, lambda: not app.screen.query_one("#banner", Static).display,
                        timeout=60)
            assert app.is_running
    finally:
        with JobQueue(dsn) as queue, queue.connection() as conn:
            conn.execute("DELETE FROM svti_jobs")


async def test_help_is_generated_from_the_live_bindings(dsn: str) -> None:
    app = JobqApp(dsn, interval=0.2, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:failed")
        await pilot.press("question_mark")
        help_screen = await until(pilot, lambda: isinstance(app.screen, HelpScreen)
                                  and app.screen)
        table: DataTable[Text] = help_screen.query_one(DataTable)
        rows = {table.get_row_at(i)[1].plain: table.get_row_at(i)[2].plain
                for i in range(table.row_count)}
        assert rows["Retry"] == "disabled: read-only"
        assert rows["Trace"] == ""
        assert "Next page" in rows and "Filter" in rows
        # jobq's keys come first; Textual's generic ones (focus, copy, cursor) after them.
        order = [table.get_row_at(i)[1].plain for i in range(table.row_count)]
        generic = [order.index(name) for name in ("Cursor up", "Focus Next") if name in order]
        assert generic and order.index("Retry") < min(generic), order
        await pilot.press("escape")
        assert isinstance(app.screen, JobsScreen)


async def test_command_palette_offers_every_screen_and_action(dsn: str) -> None:
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:failed")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Overview", "Jobs: pending", "Jobs: claimed", "Jobs: failed", "Jobs: completed",
                "Jobs: all live", "Filter jobs…",
                "Trace a request id…", "Show a job…", "Clear old rows…",
                "Retry all failed jobs matching the filter", "Pause or resume refresh",
                "Help: keys of this screen"} <= titles
        helps = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert helps["Retry all failed jobs matching the filter"].startswith("Every failed job")
        assert helps["Retry the selected or marked jobs"].startswith("The highlighted job")
        assert "jobs \\[filter]" in helps["Command line (:)"]  # text, not swallowed as markup
        await pilot.press("colon")
        prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
        prompt.query_one(Input).value = "frobnicate"
        await pilot.press("enter")
        assert "unknown command" in text_of(app, "#dialog-hint")
        prompt.query_one(Input).value = "overview"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, OverviewScreen))


async def test_the_console_identifies_itself_to_the_server(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    app = JobqApp(dsn, interval=0.2, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.refreshes)
        rows = db.execute("SELECT application_name FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                          ).fetchall()
        assert ("jobq-tui",) in rows


@pytest.mark.parametrize("read_only", [True, False])
async def test_a_database_without_jobq_tables_names_the_fix_and_keeps_running(
    empty_dsn: str, read_only: bool
) -> None:
    """The console only reads: with no queue tables it creates none (read-only or not), and
    says which command makes them."""
    app = JobqApp(empty_dsn, interval=0.2, read_only=read_only)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("no jobq queue 'svti_jobs'" in m and "jobq migrate" in m
                                       for m in notifications(app)))
        await pilot.press("a")
        assert app.is_running
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone() == (0,)


async def test_completed_tab_lists_history_and_detail_shows_the_result(
    dsn: str, queue: JobQueue
) -> None:
    job_id = queue.enqueue("t", {"n": 1}, request_id="req-done")
    job = queue.claim()
    assert job is not None
    queue.complete(job, result={"sent": True})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_jobs(pilot, app, "state:completed")
        await until(pilot, lambda: table_ids(app) == [job_id])
        assert screen.tab == "completed"
        await pilot.press("enter")
        detail = await until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        await until(pilot, lambda: detail.detail is not None)
        assert "completed" in text_of(app, "#detail-summary")
        assert '"sent": true' in text_of(app, "#detail-payload")
        await pilot.press("R")  # a completed job is not failed: nothing changes, and it says so
        await until(pilot, lambda: any(f"job {job_id} is completed" in m
                                       for m in notifications(app)))


async def test_overview_keeps_types_in_order_and_the_cursor_on_its_type(
    dsn: str, queue: JobQueue
) -> None:
    queue.enqueue("m-type", {})
    queue.enqueue("z-type", {})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table: DataTable[Text] = app.screen.query_one("#overview", DataTable)

        def order() -> list[str]:
            return [str(r.key.value) for r in table.ordered_rows]
        await until(pilot, lambda: order() == ["m-type", "z-type"])
        await pilot.press("down")  # on z-type
        queue.enqueue("a-type", {})
        await until(pilot, lambda: order() == ["a-type", "m-type", "z-type"])
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        assert key.value == "z-type"


HOSTILE_FILTERS = ["attempts:²", "attempts:" + "9" * 5000, "age:>" + "1" * 5000 + "s",
                   "age:>999999999d", "age:>٣d", "type:[bold]x[/]", "req:\x1b[31mred",
                   "error:\ud800"]
HOSTILE_COMMANDS = ["job ²", "job 99999999999999999999999", "job -1", "refresh ²",
                    "clear 999999999d", "trace \ud800", "jobs attempts:²"]


async def test_hostile_filter_and_command_input_never_stops_the_console(
    dsn: str, queue: JobQueue
) -> None:
    """Each bad filter shows a notification, each bad command its reason in the prompt, and
    the console keeps running with its screen usable."""
    queue.enqueue("a", {})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "")
        for text in HOSTILE_FILTERS:
            before = notifications(app)[-1:]
            await pilot.press("slash")
            field = app.screen.query_one("#filter", Input)
            field.value = text
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert app.is_running, text
            # a new notification (the oldest may have been dropped), or the filter applied
            assert notifications(app)[-1:] != before or not field.display, text
            await pilot.press("escape")
        for line in HOSTILE_COMMANDS:
            await pilot.press("colon")
            prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen)
                                 and app.screen)
            prompt.query_one(Input).value = line
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert app.is_running, line
            if isinstance(app.screen, PromptScreen):
                hint = text_of(app, "#dialog-hint")
                assert hint and "Traceback" not in hint, line
                await pilot.press("escape")
            else:  # accepted as text (a trace of an odd request id): it opened a screen
                await pilot.press("escape")
        await open_jobs(pilot, app, "")
        assert app.is_running


async def test_the_summary_keeps_the_tilde_of_an_estimated_total(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    """Above the exact-count cap a count is the planner's estimate, and so is any total of
    it: the summary bar says "~", as the table's cells do."""
    queue.enqueue_many([NewJob("bulk") for _ in range(10_050)])
    db.execute("ANALYZE svti_jobs")
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        summary = await until(pilot, lambda: "ready" in text_of(app, "#overview-summary")
                              and text_of(app, "#overview-summary"))
        assert re.search(r"~\d+ ready", summary), summary
        assert "0 failed" in summary  # an exact zero stays exact
