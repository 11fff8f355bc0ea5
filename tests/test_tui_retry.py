"""The repair that matters most, in the console against a live runner: a job that ran out of
attempts is retried with `R` and its handler really runs again (issue 11)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobq_core import JobQueue, create_task_runner
from jobq_tui.app import JobqApp

from .helpers import events, row
from .test_tui import SIZE, open_jobs, table_ids
from .tui_helpers import until


@pytest.fixture
def broken_runner(dsn: str) -> Iterator[tuple[JobQueue, dict[str, Any]]]:
    """A runner serving 'charge' with 3 attempts, whose handler fails while `state["broken"]`."""
    state: dict[str, Any] = {"broken": True, "calls": 0}
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, concurrency=2, poll_interval=0.1)

    @runner.task("charge", max_attempts=3, backoff=lambda attempt: 0.0)
    def charge(payload: Any, ctx: Any) -> str:
        state["calls"] += 1
        if state["broken"]:
            raise RuntimeError("card processor misconfigured")
        return "charged"

    thread = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
    thread.start()
    try:
        yield queue, state
    finally:
        runner.request_stop()
        thread.join(10)
        queue.close()


async def test_retry_of_a_dead_job_runs_its_handler_again(
    dsn: str, db: psycopg.Connection[Any], broken_runner: tuple[JobQueue, dict[str, Any]]
) -> None:
    queue, state = broken_runner
    job_id = queue.enqueue("charge", {"order": 17}, request_id="order-17")
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: (row(db, job_id) or {}).get("state") == "failed", timeout=20)
        assert state["calls"] == 3 and row(db, job_id)["attempts"] == 3  # type: ignore[index]
        await open_jobs(pilot, app, "state:failed")
        await until(pilot, lambda: table_ids(app) == [job_id])
        state["broken"] = False  # the handler is fixed and deployed
        await pilot.press("R")
        await until(pilot, lambda: row(db, job_id) is None, timeout=20)
    assert state["calls"] == 4
    timeline = events(db, job_id)
    assert timeline[-3:] == ["retried", "claimed", "completed"]
    result = db.execute("SELECT result, attempt FROM svti_jobs_events WHERE job_id = %s AND "
                        "event = 'completed'", (job_id,)).fetchone()
    assert result == ("charged", 1)  # a fresh attempt budget: the rerun is attempt 1
