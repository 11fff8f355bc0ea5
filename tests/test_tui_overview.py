"""The console's overview and workers screens, driven with Pilot against a real database:
pause and resume, the workers screen and drain, failures of every type, rows and a cursor that
hold still, and widths that follow the terminal. Each action is checked in the database."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable
from textual.widgets._toast import Toast

from jobq_core import JobQueue
from jobq_core._ops import WorkerInfo
from jobq_core.admin import Admin, TypeStats, Worker, operator_name
from jobq_tui.app import JobqApp
from jobq_tui.screens.base import READ_ONLY_REASON
from jobq_tui.screens.dialogs import ConfirmScreen, PromptScreen
from jobq_tui.screens.jobs import JobsScreen
from jobq_tui.screens.overview import NARROW, SPARK_WIDTH, OverviewScreen
from jobq_tui.screens.workers import EMPTY, WorkersScreen

from .test_tui_render import FROZEN, FrozenAgeAdmin, frozen_app, goto, overview, seed
from .tui_helpers import text_of, until

SIZE = (110, 32)


@pytest.fixture
def queue(dsn: str) -> Any:
    with JobQueue(dsn) as q:
        yield q


def overview_table(app: JobqApp) -> DataTable[Text]:
    return app.screen.query_one("#overview", DataTable)


def listed_types(app: JobqApp) -> list[str]:
    return [str(r.key.value) for r in overview_table(app).ordered_rows]


def cell(table: DataTable[Text], row: str, column: str) -> str:
    return table.get_cell(row, column).plain


def cursor_key(table: DataTable[Text]) -> str | None:
    return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value


def notifications(app: JobqApp) -> list[str]:
    return [n.message for n in app._notifications]


async def refreshed(pilot: Pilot[Any], app: JobqApp, times: int = 1) -> None:
    """Wait for `times` more refreshes of the screen on top."""
    start = app.refreshes
    await until(pilot, lambda: app.refreshes >= start + times)


async def overview_with(pilot: Pilot[Any], app: JobqApp, *types: str) -> DataTable[Text]:
    await until(pilot, lambda: set(types) <= set(listed_types(app)))
    return overview_table(app)


async def answer(pilot: Pilot[Any], app: JobqApp, text: str) -> None:
    """Type `text` into the prompt on top and submit it."""
    await until(pilot, lambda: isinstance(app.screen, PromptScreen))
    prompt = app.screen
    if text:
        await pilot.press(*text)
    await pilot.press("enter")
    await until(pilot, lambda: app.screen is not prompt)


def pause_row(db: psycopg.Connection[Any], job_type: str) -> dict[str, Any] | None:
    cur = db.execute("SELECT type, paused_by, reason, until, until - now() AS left "
                     "FROM svti_jobs_pauses WHERE type = %s", (job_type,))
    values = cur.fetchone()
    if values is None:
        return None
    assert cur.description is not None
    return dict(zip([c.name for c in cur.description], values, strict=True))


def beat(queue: JobQueue, worker_id: str, types: list[str], held: int = 0) -> None:
    queue.worker_beat(WorkerInfo(worker_id, "runner", socket.gethostname(), os.getpid(),
                                 types, 4, 10.0, "test"), list(range(1, held + 1)))


# -- f: the failures of every type -----------------------------------------------------------

async def test_f_opens_the_failed_jobs_of_every_type(dsn: str, queue: JobQueue) -> None:
    failed = []
    for job_type in ("alpha", "beta"):
        failed.append(queue.enqueue(job_type, {}))
        job = queue.claim(types=[job_type])
        assert job is not None
        queue.fail(job, reason="boom", retry=False)
    queue.enqueue("aardvark", {})  # the first row, which has no failures
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_with(pilot, app, "aardvark", "alpha", "beta")
        assert cursor_key(table) == "aardvark"
        await pilot.press("f")
        jobs = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen)
        assert jobs.current_filter().state == "failed" and jobs.filter.type is None
        await until(pilot, lambda: len(jobs.rows) == 2)
        assert sorted(jobs.rows) == sorted(failed)
        assert {r.type for r in jobs.rows.values()} == {"alpha", "beta"}


async def test_x_opens_the_cancelled_jobs_of_every_type(dsn: str, queue: JobQueue) -> None:
    cancelled = [queue.enqueue(job_type, {}) for job_type in ("alpha", "beta")]
    queue.enqueue("aardvark", {})
    Admin(queue).cancel(cancelled, reason="duplicate order")
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await overview_with(pilot, app, "aardvark", "alpha", "beta")
        await pilot.press("x")
        jobs = await until(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen)
        assert jobs.current_filter().state == "cancelled"
        await until(pilot, lambda: sorted(jobs.rows) == sorted(cancelled))


# -- pause and resume ------------------------------------------------------------------------

async def test_p_pauses_a_type_until_resumed_and_p_again_resumes_it(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    job_id = queue.enqueue("email", {"to": "a@example.com"})
    queue.enqueue("report", {})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_with(pilot, app, "email", "report")
        assert cursor_key(table) == "email"
        await pilot.press("p")
        await answer(pilot, app, "")  # how long: until resumed
        await answer(pilot, app, "deploy [v2]")  # why; markup stays text
        await until(pilot, lambda: pause_row(db, "email"))
        pause = pause_row(db, "email")
        assert pause is not None
        assert pause["until"] is None and pause["reason"] == "deploy [v2]"
        assert pause["paused_by"] == operator_name()
        assert pause_row(db, "report") is None
        # Claims skip the type, typed or not; the other type still runs.
        assert queue.claim(types=["email"]) is None
        other = queue.claim()
        assert other is not None and other.type == "report"

        await until(pilot, lambda: cell(table, "email", "type").startswith("‖"))
        paused = text_of(app, "#overview-paused")
        assert f"email paused by {operator_name()} until resumed: deploy [v2]" in paused
        assert not cell(table, "report", "type").startswith("‖")

        await pilot.press("p")  # paused: resumes at once, no question
        await until(pilot, lambda: pause_row(db, "email") is None)
        assert not isinstance(app.screen, PromptScreen)
        job = queue.claim(types=["email"])
        assert job is not None and job.id == job_id
        await until(pilot, lambda: not cell(table, "email", "type").startswith("‖"))
        assert not app.screen.query_one("#overview-paused").display


async def test_a_pause_for_a_duration_runs_out_by_itself(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    job_id = queue.enqueue("email", {})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_with(pilot, app, "email")
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen))
        await pilot.press("0", "enter")  # refused: the prompt says why and stays
        await until(pilot, lambda: "invalid duration '0'" in text_of(app, "#dialog-hint"))
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("backspace", "3", "0", "m", "enter")
        await answer(pilot, app, "")  # no reason
        await until(pilot, lambda: pause_row(db, "email"))
        pause = pause_row(db, "email")
        assert pause is not None and pause["reason"] is None
        assert timedelta(minutes=29) < pause["left"] <= timedelta(minutes=30)
        assert queue.claim(types=["email"]) is None
        await until(pilot, lambda: "until" in text_of(app, "#overview-paused"))
        shown = text_of(app, "#overview-paused")
        assert "UTC (in 29m" in shown  # the time carries its zone
        assert any("paused until" in n and "UTC" in n for n in notifications(app))

        db.execute("UPDATE svti_jobs_pauses SET until = now() - interval '1 second'")
        await until(pilot, lambda: not cell(table, "email", "type").startswith("‖"))
        screen = app.screen
        assert isinstance(screen, OverviewScreen)
        assert screen.stats["email"].paused is None
        assert not screen.query_one("#overview-paused").display
        job = queue.claim(types=["email"])
        assert job is not None and job.id == job_id


async def test_pause_is_refused_in_a_read_only_console(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    queue.enqueue("email", {})
    app = JobqApp(dsn, interval=0.2, read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await overview_with(pilot, app, "email")
        await pilot.press("p")
        await until(pilot, lambda: any(READ_ONLY_REASON in n for n in notifications(app)))
        await pilot.pause(0.2)
        assert not isinstance(app.screen, PromptScreen)
        assert pause_row(db, "email") is None


# -- the workers screen ----------------------------------------------------------------------

async def test_the_workers_screen_lists_runners_shows_the_lost_and_drains(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.refreshes)
        await pilot.press("w")
        screen = await until(pilot, lambda: isinstance(app.screen, WorkersScreen) and
                             app.screen)
        await refreshed(pilot, app, 2)
        assert EMPTY in text_of(app, "#workers-info")

        beat(queue, "w-live-1", ["email", "report"], held=2)
        beat(queue, "w-gone-2", ["email"])
        db.execute("UPDATE svti_jobs_workers SET last_seen = now() - interval '5 minutes', "
                   "started_at = now() - interval '1 hour' WHERE id = 'w-gone-2'")
        table: DataTable[Text] = screen.query_one("#workers", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        assert [r.key.value for r in table.ordered_rows] == ["w-live-1", "w-gone-2"]
        assert cell(table, "w-live-1", "status") == "running"
        assert cell(table, "w-live-1", "busy") == "2/4"
        assert cell(table, "w-live-1", "types") == "email, report"
        assert cell(table, "w-live-1", "pid") == str(os.getpid())
        assert cell(table, "w-live-1", "started").endswith(" UTC")
        lost = table.get_cell("w-gone-2", "status")
        assert lost.plain == "lost" and "red" in str(lost.style)
        assert cell(table, "w-gone-2", "beat").startswith("5m")
        assert "worker w-live-1" in text_of(app, "#workers-info")

        await pilot.press("down", "d")  # a lost worker cannot drain: said, nothing asked
        await until(pilot, lambda: any("w-gone-2 is lost" in n for n in notifications(app)))
        assert not isinstance(app.screen, ConfirmScreen)

        await pilot.press("up", "d")
        confirm = await until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and
                              app.screen)
        assert f"w-live-1 on {socket.gethostname()}" in confirm._title
        await pilot.press("n")  # no: nothing changes
        await until(pilot, lambda: app.screen is screen)
        assert db.execute("SELECT drain_requested_by FROM svti_jobs_workers "
                          "WHERE id = 'w-live-1'").fetchone() == (None,)

        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: db.execute(
            "SELECT drain_requested_by FROM svti_jobs_workers WHERE id = 'w-live-1'"
        ).fetchone() == (operator_name(),))
        await until(pilot, lambda: cell(table, "w-live-1", "status") == "draining")
        assert "drain asked by" in text_of(app, "#workers-info")
        # The runner learns it at its next beat.
        orders = queue.worker_beat(WorkerInfo("w-live-1", "runner", "h", 1, ["email"], 4, 10.0,
                                              "test"), [])
        assert orders.drain_by == operator_name()


async def test_workers_command_line_and_expired_leases_no_worker_serves(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    job_id = queue.enqueue("email", {})
    assert queue.claim(types=["email"]) is not None
    db.execute("UPDATE svti_jobs SET lease_until = now() - interval '1 minute' WHERE id = %s",
               (job_id,))
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await overview_with(pilot, app, "email")
        await until(pilot, lambda: "expired" in text_of(app, "#overview-summary"))
        summary = text_of(app, "#overview-summary")
        assert "email: 1 leases expired; no live worker serves this type" in summary
        assert "next claim takes them back" not in summary

        beat(queue, "w-1", ["email"])
        await until(pilot, lambda: "next claim takes them back" in
                    text_of(app, "#overview-summary"))
        assert "no live worker" not in text_of(app, "#overview-summary")

        app.run_command("workers")
        await until(pilot, lambda: isinstance(app.screen, WorkersScreen) and
                    app.screen.query_one("#workers", DataTable).row_count == 1)


# -- rows and the cursor hold still ----------------------------------------------------------

async def test_rows_stay_listed_and_the_cursor_stays_on_its_type(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    for job_type in ("a-type", "m-type", "z-type"):
        queue.enqueue(job_type, {})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        table = await overview_with(pilot, app, "a-type", "m-type", "z-type")
        await pilot.press("down")
        assert cursor_key(table) == "m-type"

        # A type whose jobs all completed moments ago (its minute not yet folded into the
        # rates) stays listed, refresh after refresh.
        job = queue.claim(types=["m-type"])
        assert job is not None
        queue.complete(job, result={"ok": True})
        for _ in range(3):
            await refreshed(pilot, app)
            assert listed_types(app) == ["a-type", "m-type", "z-type"]
        assert cursor_key(table) == "m-type"

        # A type before the cursor goes, another arrives: the cursor stays on its type.
        db.execute("DELETE FROM svti_jobs WHERE type = 'a-type'")
        queue.enqueue("b-type", {})
        await until(pilot, lambda: listed_types(app) == ["b-type", "m-type", "z-type"])
        assert cursor_key(table) == "m-type"
        queue.enqueue("0-first", {})
        await until(pilot, lambda: listed_types(app)[0] == "0-first")
        assert cursor_key(table) == "m-type"


# -- the terminal's size ---------------------------------------------------------------------

async def test_column_widths_follow_a_resize(dsn: str, queue: JobQueue) -> None:
    for minute in range(1, 30):
        queue.enqueue("email", {"n": minute})
    app = JobqApp(dsn, interval=60)  # no refresh helps: the resize alone redraws
    async with app.run_test(size=(140, 30)) as pilot:
        table = await overview_with(pilot, app, "email")
        screen = app.screen
        # The first draw may come before the terminal's size is known: wait for the fit.
        await until(pilot, lambda: table.columns[next(
            k for k in table.columns if k.value == "done")].content_width == SPARK_WIDTH[1])
        assert "fails" in [c.key.value for c in table.ordered_columns]

        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: [c.key.value for c in table.ordered_columns][-1] == "done")
        done = table.columns[next(k for k in table.columns if k.value == "done")]
        assert done.content_width == SPARK_WIDTH[0]
        assert len(cell(table, "email", "done")) == SPARK_WIDTH[0]
        # Everything fits: no column runs past the terminal's edge.
        assert table.virtual_size.width <= 80
        assert app.screen is screen

        await pilot.resize_terminal(NARROW + 20, 30)
        await until(pilot, lambda: [c.key.value for c in table.ordered_columns][-1] == "fails")
        assert len(cell(table, "email", "fails")) == (NARROW + 20 - 74) // 2


async def test_toasts_leave_the_status_bar_readable_at_80x24(
    dsn: str, queue: JobQueue
) -> None:
    queue.enqueue("email", {})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await overview_with(pilot, app, "email")
        app.notify("a long notification that would cover the freshness badge " * 2)
        app.notify("and a second one")
        toasts = await until(pilot, lambda: list(app.screen.query(Toast)), settle=0.3)
        status = app.screen.query_one("#status").region
        assert "updated" in text_of(app, "#status")
        for toast in toasts:
            assert not toast.region.overlaps(status), (toast.region, status)
        footer = app.screen.query_one("Footer").region
        assert all(not t.region.overlaps(footer) for t in toasts)



# -- what it looks like ----------------------------------------------------------------------

class PinnedAdmin(FrozenAgeAdmin):
    """The real admin; what the server derives from its own clock for workers is pinned."""

    async def workers(self) -> list[Worker]:
        return [replace(w, silent_for=3.0 if w.alive else 300.0)
                for w in await super().workers()]

    async def stats(self) -> list[TypeStats]:
        """A pause's end as the frozen clock sees it (the server's runs on)."""
        return [replace(s, paused=replace(s.paused, until=FROZEN + timedelta(minutes=45)))
                if s.paused is not None and s.paused.until is not None else s
                for s in await super().stats()]


def pinned_app(dsn: str) -> JobqApp:
    app = frozen_app(dsn)
    app.admin = PinnedAdmin(app.admin)
    return app


def seed_control(dsn: str) -> None:
    """Two paused types (one for a while, one until resumed) and two runners, one lost."""
    seed(dsn)
    with JobQueue(dsn) as q:
        for worker_id, host, pid, types, held in (
                ("ops-1-4242-7f3a9c", "ops-1.example.net", 4242, ["send-email", "charge-card"],
                 [1, 2]),
                ("ops-2-77-1b2c3d", "ops-2.example.net", 77, ["resize-image"], [])):
            q.worker_beat(WorkerInfo(worker_id, "runner", host, pid, types, 8, 10.0, "0.5"),
                          held)
        admin = Admin(q)
        admin.pause(["send-email"], until="45m", reason="SMTP provider incident #4411",
                    by="alice@ops-1")
        admin.pause(["nightly-report"], by="bob@ops-2")
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("UPDATE svti_jobs_pauses SET paused_at = %(t)s", {"t": FROZEN})
        db.execute("UPDATE svti_jobs_workers SET started_at = %(t)s - interval '2 hours'",
                   {"t": FROZEN})
        db.execute("UPDATE svti_jobs_workers SET last_seen = now() - interval '5 minutes' "
                   "WHERE id = 'ops-2-77-1b2c3d'")


def test_snapshot_paused_types_at_80x24(dsn: str, snap_compare: Any) -> None:
    seed_control(dsn)
    assert snap_compare(pinned_app(dsn), terminal_size=(80, 24), run_before=overview)


def test_snapshot_workers_screen(dsn: str, snap_compare: Any) -> None:
    seed_control(dsn)
    assert snap_compare(pinned_app(dsn), terminal_size=(100, 24),
                        run_before=goto("workers", WorkersScreen))
