"""Operator control in the core: paused types that claims skip without reading their backlog,
and cancels that no late result of the old holder can overwrite (issue 11)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobq_core import JobCancelledError, JobQueue, LeaseLostError, NewJob
from jobq_core.admin import Admin, AsyncAdmin
from jobq_core.queue import AsyncJobQueue

from .helpers import backdate
from .test_claim_plan import executed_plan


@pytest.fixture
def admin(dsn: str) -> Iterator[Admin]:
    with JobQueue(dsn) as queue:
        yield Admin(queue)


@pytest.mark.parametrize("types", [["big", "small"], None], ids=["typed", "untyped"])
def test_claims_skip_a_paused_type_without_reading_its_backlog(
    admin: Admin, db: psycopg.Connection[Any], types: list[str] | None
) -> None:
    queue = admin.queue
    # The paused type's backlog comes first in claim order (higher priority, older).
    db.execute("INSERT INTO svti_jobs (type, priority, run_at) SELECT 'big', 5, "
               "now() - interval '1 hour' FROM generate_series(1, 5000)")
    queue.enqueue_many([NewJob("small")] * 3)
    db.execute("ANALYZE svti_jobs")
    admin.pause(["big"], reason="deploy")
    nodes = executed_plan(db, queue, types)
    # A filter applied after reading would remove the 5,000 rows it read.
    assert sum(n.get("Rows Removed by Filter", 0) for n in nodes) < 10
    read = sum(n["Actual Rows"] * n["Actual Loops"] for n in nodes
               if n.get("Index Name", "").endswith(("ready_idx", "ready_type_idx")))
    assert read < 20, read
    claimed = queue.claim_many(10, types=types)
    assert sorted(j.type for j in claimed) == ["small"] * 3
    assert admin.resume(["big"]) == ["big"]
    assert {j.type for j in queue.claim_many(10, types=types)} == {"big"}


def test_a_paused_types_expired_leases_are_not_taken_back(admin: Admin,
                                                          db: psycopg.Connection[Any]) -> None:
    queue = admin.queue
    queue.enqueue("slow")
    held = queue.claim(types=["slow"])
    assert held is not None
    backdate(db, held.id, lease_until="1 second")
    admin.pause(["slow"])
    assert queue.claim(types=["slow"]) is None and queue.claim() is None
    admin.resume(["slow"])
    again = queue.claim(types=["slow"])
    assert again is not None and again.id == held.id and again.attempts == 2


def test_a_pause_for_a_while_ends_by_itself(admin: Admin, db: psycopg.Connection[Any]) -> None:
    queue = admin.queue
    queue.enqueue("report")
    [pause] = admin.pause(["report"], until="30m", reason="maintenance", by="alice")
    assert pause.paused_by == "alice" and pause.reason == "maintenance"
    assert pause.until is not None
    minutes = (pause.until - pause.paused_at).total_seconds() / 60
    assert 29.9 < minutes < 30.1
    assert queue.claim(types=["report"]) is None
    assert [p.type for p in admin.pauses()] == ["report"]
    db.execute("UPDATE svti_jobs_pauses SET until = now() - interval '1 second'")
    assert admin.pauses() == []
    job = queue.claim(types=["report"])
    assert job is not None
    assert [s.paused for s in admin.stats()] == [None]


def test_pausing_again_replaces_the_duration_and_reason(admin: Admin) -> None:
    admin.pause(["a"], until="5m", reason="first")
    [again] = admin.pause(["a"], reason="second")
    assert again.until is None and again.reason == "second"
    assert admin.resume(["a", "b"]) == ["a"]


def test_a_cancelled_pending_job_never_runs_and_can_be_retried(
    admin: Admin, db: psycopg.Connection[Any]
) -> None:
    queue = admin.queue
    job_id = queue.enqueue("t", {"n": 1}, request_id="req-1")
    result = admin.cancel([job_id, 999_999], reason="bad data", by="bob")
    assert result.changed == 1 and result.skipped == [999_999]
    assert queue.claim() is None
    row = db.execute("SELECT state, last_error, lease_token FROM svti_jobs WHERE id = %s",
                     (job_id,)).fetchone()
    assert row == ("cancelled", "cancelled by bob: bad data", None)
    events = [(e.event, e.reason) for e in admin.show(job_id).events]
    assert events[-1] == ("cancelled", "cancelled by bob: bad data (was pending)")
    with pytest.raises(JobCancelledError, match="cancelled by bob: bad data"):
        queue.wait(job_id, timeout=2)
    assert [r.id for r in admin.list_jobs("state:cancelled").rows] == [job_id]
    assert admin.retry([job_id]).changed == 1
    again = queue.claim()
    assert again is not None and again.id == job_id and again.attempts == 1


@pytest.mark.parametrize("late", ["complete", "fail", "extend"])
def test_a_late_result_of_the_old_holder_cannot_overwrite_a_cancel(
    admin: Admin, db: psycopg.Connection[Any], late: str
) -> None:
    queue = admin.queue
    queue.enqueue("t")
    held = queue.claim()
    assert held is not None
    assert admin.cancel([held.id]).changed == 1
    with pytest.raises(LeaseLostError, match="an operator cancelled it"):
        if late == "complete":
            queue.complete(held, result="done anyway")
        elif late == "fail":
            queue.fail(held, reason="x", retry=True)
        else:
            queue.extend(held, 60_000)
    assert queue.heartbeat([held], 30_000) == set()
    state = db.execute("SELECT state FROM svti_jobs WHERE id = %s", (held.id,)).fetchone()
    assert state == ("cancelled",)
    completed = db.execute("SELECT count(*) FROM svti_jobs_events WHERE event = 'completed'")
    assert completed.fetchone() == (0,)


def test_a_runners_beat_learns_which_held_jobs_were_cancelled(admin: Admin) -> None:
    from jobq_core._ops import WorkerInfo

    queue = admin.queue
    queue.enqueue_many([NewJob("t")] * 2)
    first, second = queue.claim_many(2)
    me = WorkerInfo("h:1:abcd", "h:1", "h", 1, ["t"], 2, 10.0, "test")
    assert queue.worker_beat(me, [first.id, second.id]).cancelled == {}
    admin.cancel([second.id], reason="stuck", by="ops")
    orders = queue.worker_beat(me, [first.id, second.id])
    assert orders.cancelled == {second.id: "cancelled by ops: stuck"}
    assert orders.drain_by is None and orders.paused == set()
    admin.pause(["t"])
    admin.drain("h:1:abcd", by="ops")
    orders = queue.worker_beat(me, [first.id])
    assert orders.drain_by == "ops" and orders.paused == {"t"}
    [worker] = admin.workers()
    assert (worker.id, worker.in_flight, worker.status) == ("h:1:abcd", 1, "draining")


def test_completed_jobs_keep_their_payload_up_to_the_limit(dsn: str) -> None:
    with JobQueue(dsn, history_payload_bytes=200) as queue:
        admin = Admin(queue)
        small = queue.enqueue("t", {"to": "a@example.com"})
        large = queue.enqueue("t", {"blob": os.urandom(1000).hex()})  # not compressible
        for job in queue.claim_many(2):
            queue.complete(job)
        rows = {r.id: r.payload for r in admin.list_jobs("state:completed").rows}
        assert rows[small] == {"to": "a@example.com"}
        assert set(rows[large]) == {"jobq_payload_not_kept"}
        assert rows[large]["jobq_payload_not_kept"] > 200


def test_the_async_twin_cancels_and_pauses_alike(dsn: str, db: psycopg.Connection[Any]) -> None:
    async def scenario() -> None:
        async with AsyncJobQueue(dsn) as queue:
            admin = AsyncAdmin(queue)
            job_id = await queue.enqueue("t")
            await admin.pause(["t"], until="1h", reason="r")
            assert await queue.claim() is None
            assert [p.type for p in await admin.pauses()] == ["t"]
            assert await admin.resume(["t"]) == ["t"]
            assert (await admin.cancel([job_id])).changed == 1
            with pytest.raises(JobCancelledError):
                await queue.wait(job_id, timeout=2)

    asyncio.run(scenario())
    event = db.execute("SELECT event FROM svti_jobs_events ORDER BY id DESC LIMIT 1")
    assert event.fetchone() == ("cancelled",)


def test_the_history_row_of_a_cancel_says_what_the_job_was(admin: Admin,
                                                            db: psycopg.Connection[Any]) -> None:
    queue = admin.queue
    queue.enqueue("t", request_id="r-9")
    held = queue.claim()
    assert held is not None
    admin.cancel([held.id], reason="")
    row = db.execute("SELECT event, worker, reason, request_id FROM svti_jobs_events "
                     "WHERE event = 'cancelled'").fetchone()
    assert row is not None
    event, worker, reason, request_id = row
    assert (event, worker, request_id) == ("cancelled", held.claimed_by, "r-9")
    assert reason.startswith("cancelled by ") and reason.endswith("(was claimed)")
    assert json.dumps(reason)  # one line of plain text
