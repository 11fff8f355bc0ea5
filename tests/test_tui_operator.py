"""The console's operator repairs against live runners and real history (issue 11): `c` stops
a running job in each executor, and `C` deletes exactly what its preview counted."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from textual.widgets import Input

from jobq_core import JobQueue, create_task_runner
from jobq_core.admin import Admin
from jobq_tui.app import JobqApp
from jobq_tui.screens.dialogs import ReasonConfirmScreen

from .helpers import backdate, events, row
from .test_runner import serving
from .test_runner_control import (
    SLOW_BEAT,
    assert_handler_stopped,
    ended,
    log_table,  # noqa: F401 (a fixture)
    noted,
    sleeps_in_a_child,
    sleeps_until_cancelled,
    until_cancelled,
)
from .test_tui import SIZE, clear_preview, notifications, open_jobs, table_ids
from .tui_helpers import text_of, until


@pytest.mark.parametrize("executor", ["thread", "async", "process"])
async def test_c_stops_a_running_job_in_every_executor(
    dsn: str, db: psycopg.Connection[Any], log_table: None, executor: str  # noqa: F811
) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, concurrency=1, process_workers=1, **SLOW_BEAT)
    handler = {"thread": until_cancelled, "async": sleeps_until_cancelled,
               "process": sleeps_in_a_child}[executor]
    runner.register("victim", handler, executor=executor)  # type: ignore[typeddict-item]
    victim = queue.enqueue("victim", {"dsn": dsn}, request_id="req-victim")
    app = JobqApp(dsn, interval=0.2)
    with serving(runner):
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: noted(db, victim), timeout=30)
            await open_jobs(pilot, app, "state:claimed")
            await until(pilot, lambda: table_ids(app) == [victim])
            await pilot.press("c")
            dialog = await until(pilot, lambda: isinstance(app.screen, ReasonConfirmScreen)
                                 and app.screen)
            assert f"ids: {victim}" in text_of(app, "#dialog-body")
            dialog.query_one(Input).value = "runaway import"
            await pilot.press("y")
            await until(pilot, lambda: (ended(db, victim) or ("",))[0] == "cancelled")
            # The runner stops the handler and frees its one slot.
            await until(pilot, lambda: runner.counters["cancelled"] == 1, timeout=30)
            await until(pilot, lambda: runner.health()["free_slots"] == 1, timeout=30)
    state, reason = ended(db, victim) or ("", "")
    assert state == "cancelled" and reason.endswith(": runaway import")
    assert events(db, victim) == ["enqueued", "claimed", "cancelled"]
    assert_handler_stopped(db, victim, executor)
    queue.close()


async def test_clear_deletes_what_its_preview_counted_and_keeps_live_history(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """The cutoff is fixed when the preview is made: history that crosses it while the
    operator reads the confirmation stays. A live job's old history stays too."""
    with JobQueue(dsn) as queue:
        dead = queue.enqueue("t", {})
        job = queue.claim()
        assert job is not None
        queue.fail(job, reason="boom", retry=False)
        backdate(db, dead, failed_at="10 days", created_at="10 days")
        done = queue.enqueue("t", {})
        job = queue.claim()
        assert job is not None
        queue.complete(job)
        crossing = queue.enqueue("t", {})
        job = queue.claim()
        assert job is not None
        queue.complete(job)
        waiting = queue.enqueue("t", {}, run_at=None)
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '10 days' "
               "WHERE job_id = ANY(%s)", ([dead, done, waiting],))
    # Newer than the cutoff when previewed, older by the time the operator confirms.
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '7 days' "
               "+ interval '2 seconds' WHERE job_id = %s", (crossing,))
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        dialog = await clear_preview(pilot, app, "7d")
        # dead: its job and 3 events; done: 3 events; the waiting job's enqueued event stays
        assert "1 failed or cancelled jobs and 6 history rows" in text_of(app, "#dialog-body")
        time.sleep(3)  # the operator reads; `crossing` is now older than 7 days
        dialog.query_one(Input).value = dialog.expected
        await pilot.press("enter")
        await until(pilot, lambda: any("cleared 7 rows" in m for m in notifications(app)))
    assert row(db, dead) is None and events(db, dead) == ["deleted"]
    assert events(db, done) == []
    assert events(db, crossing) == ["enqueued", "claimed", "completed"]
    assert events(db, waiting) == ["enqueued"] and row(db, waiting) is not None
    with JobQueue(dsn) as queue:
        assert [e.event for e in Admin(queue).show(waiting).events] == ["enqueued"]
