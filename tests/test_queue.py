"""The seed API, line by line, against real Postgres; every test runs on both twins."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from jobq_core import (
    InvalidInputError,
    Job,
    JobStateError,
    LeaseLostError,
    NewJob,
    NotFoundError,
)

from .helpers import backdate, events, row


def test_enqueue_claim_complete_round_trip(q: Any, db: psycopg.Connection[Any]) -> None:
    job_id = q.enqueue("send-email", {"to": "alice@example.com"}, request_id="req-1")
    job = q.claim(types=["send-email"])
    assert isinstance(job, Job)
    assert (job.id, job.type, job.payload) == (job_id, "send-email", {"to": "alice@example.com"})
    assert job.attempts == 1 and job.request_id == "req-1" and job.lease_token is not None
    assert job.lease_until is not None and job.lease_until > datetime.now(UTC)
    assert row(db, job_id)["state"] == "claimed"  # type: ignore[index]
    q.complete(job, result={"sent": True})
    assert row(db, job_id) is None
    assert events(db, job_id) == ["enqueued", "claimed", "completed"]
    result, req = db.execute(
        "SELECT result, request_id FROM svti_jobs_events WHERE event = 'completed'").fetchone()
    assert result == {"sent": True} and req == "req-1"


def test_claim_returns_none_when_empty(q: Any) -> None:
    assert q.claim() is None
    assert q.claim_many(5, types=["x"]) == []


def test_claim_order_priority_then_run_at_then_id(q: Any) -> None:
    now = datetime.now(UTC)
    low = q.enqueue("t", "low", priority=-1)
    old = q.enqueue("t", "old", run_at=now - timedelta(minutes=5))
    first = q.enqueue("t", "first")
    second = q.enqueue("t", "second")
    high = q.enqueue("t", "high", priority=10)
    order = [q.claim().id for _ in range(5)]
    assert order == [high, old, first, second, low]


def test_future_jobs_are_not_claimable_until_due(q: Any, db: psycopg.Connection[Any]) -> None:
    later = q.enqueue("t", run_at=datetime.now(UTC) + timedelta(hours=1))
    soon = q.enqueue("t", run_at=timedelta(hours=2))
    assert q.claim() is None and q.pending() == 0
    backdate(db, later, run_at="1 second")
    assert q.claim().id == later
    assert q.claim() is None
    assert row(db, soon)["run_at"] > datetime.now(UTC) + timedelta(minutes=119)  # type: ignore[index]


def test_types_filter(q: Any) -> None:
    a = q.enqueue("a")
    b = q.enqueue("b")
    q.enqueue("c")
    assert q.claim(types=["b"]).id == b
    assert q.claim(types=["zzz"]) is None
    assert q.claim(types=("a", "b")).id == a
    assert q.claim().type == "c"


def test_claim_many_is_one_batch_in_claim_order(q: Any) -> None:
    ids = q.enqueue_many([NewJob("t", i, priority=i % 3) for i in range(10)])
    jobs = q.claim_many(4)
    assert [j.payload for j in jobs] == [2, 5, 8, 1]
    assert {j.id for j in jobs} <= set(ids)
    assert len({j.lease_token for j in jobs}) == 4
    assert len(q.claim_many(100)) == 6


def test_expired_lease_is_reclaimed_and_attempts_count_every_claim(
    q: Any, db: psycopg.Connection[Any]
) -> None:
    job_id = q.enqueue("t", request_id="req-r")
    first = q.claim(lease_ms=60_000)
    assert q.claim() is None  # held
    backdate(db, job_id, lease_until="1 second")
    assert q.pending() == 1
    second = q.claim(worker="host-b:2")
    assert second.id == job_id and second.attempts == 2
    assert second.lease_token != first.lease_token
    assert second.request_id == "req-r"
    assert events(db, job_id) == ["enqueued", "claimed", "recovered"]
    assert row(db, job_id)["claimed_by"] == "host-b:2"  # type: ignore[index]


def test_stale_worker_cannot_complete_fail_or_extend(q: Any, db: psycopg.Connection[Any]) -> None:
    job_id = q.enqueue("t", {"n": 1})
    stale = q.claim()
    backdate(db, job_id, lease_until="1 second")
    fresh = q.claim()
    before = row(db, job_id)
    with pytest.raises(LeaseLostError):
        q.complete(stale)
    with pytest.raises(LeaseLostError):
        q.fail(stale, reason="late", retry=True)
    with pytest.raises(LeaseLostError):
        q.extend(stale, 60_000)
    assert row(db, job_id) == before
    q.complete(fresh)
    with pytest.raises(LeaseLostError, match="gone"):
        q.complete(stale)
    assert events(db, job_id) == ["enqueued", "claimed", "recovered", "completed"]


def test_fail_without_retry_keeps_a_dead_job(q: Any, db: psycopg.Connection[Any]) -> None:
    job_id = q.enqueue("t", request_id="req-f")
    job = q.claim()
    q.fail(job, reason="SMTP said 'no' — ünïcode")
    r = row(db, job_id)
    assert r is not None
    assert r["state"] == "failed" and r["last_error"] == "SMTP said 'no' — ünïcode"
    assert r["failed_at"] is not None and r["lease_token"] is None
    assert q.claim() is None and q.pending() == 0
    reason, req = db.execute(
        "SELECT reason, request_id FROM svti_jobs_events WHERE event = 'failed'").fetchone()
    assert reason == "SMTP said 'no' — ünïcode" and req == "req-f"


def test_fail_with_retry_returns_to_pending(q: Any, db: psycopg.Connection[Any]) -> None:
    job_id = q.enqueue("t", request_id="req-x")
    q.fail(q.claim(), reason="flaky", retry=True)
    again = q.claim()
    assert again.id == job_id and again.attempts == 2 and again.request_id == "req-x"
    q.fail(again, reason="later", retry=True, run_at=timedelta(minutes=10))
    assert q.claim() is None
    r = row(db, job_id)
    assert r is not None and r["state"] == "pending"
    assert r["run_at"] > datetime.now(UTC) + timedelta(minutes=9)
    at = datetime.now(UTC) + timedelta(days=1)
    backdate(db, job_id, run_at="1 second")
    q.fail(q.claim(), reason="tomorrow", retry=True, run_at=at)
    assert row(db, job_id)["run_at"] == at  # type: ignore[index]
    assert events(db, job_id) == [
        "enqueued", "claimed", "retried", "claimed", "retried", "claimed", "retried"]


def test_extend_moves_the_lease_and_never_shortens_it(q: Any, db: psycopg.Connection[Any]) -> None:
    job_id = q.enqueue("t")
    job = q.claim(lease_ms=1_000)
    until = q.extend(job, 120_000)
    assert until > datetime.now(UTC) + timedelta(seconds=110)
    assert row(db, job_id)["lease_until"] == until  # type: ignore[index]
    assert q.extend(job, 1_000) == until
    assert events(db, job_id)[-1] == "extended"
    q.complete(job)


def test_bare_ids_are_unfenced_operator_actions(q: Any, db: psycopg.Connection[Any]) -> None:
    a = q.enqueue("t")
    b = q.enqueue("t")
    q.claim()
    q.extend(a, 90_000)  # by id, whoever holds it
    q.fail(a, reason="operator")
    with pytest.raises(JobStateError):
        q.complete(a)  # dead
    with pytest.raises(JobStateError):
        q.extend(b, 1000)  # not claimed
    q.complete(b)  # pending jobs can be completed by id
    with pytest.raises(NotFoundError):
        q.complete(b)
    with pytest.raises(NotFoundError):
        q.fail(987654, reason="x")
    with pytest.raises(NotFoundError):
        q.extend(987654, 1000)


def test_pending_counts_claimable_work(q: Any, db: psycopg.Connection[Any]) -> None:
    q.enqueue_many([NewJob("a"), NewJob("a"), NewJob("b"), NewJob("b", run_at=timedelta(hours=1))])
    held = q.claim(types=["a"])
    assert q.pending() == 2 and q.pending(types=["a"]) == 1 and q.pending(types=["b"]) == 1
    backdate(db, held.id, lease_until="1 second")
    assert q.pending(types=["a"]) == 2


def test_request_id_survives_retry_and_recovery(q: Any, db: psycopg.Connection[Any]) -> None:
    job_id = q.enqueue("t", request_id="trace-42")
    q.fail(q.claim(), reason="x", retry=True)
    job = q.claim()
    backdate(db, job_id, lease_until="1 second")
    job = q.claim()
    assert job.request_id == "trace-42"
    q.complete(job)
    reqs = {r[0] for r in db.execute(
        "SELECT request_id FROM svti_jobs_events WHERE job_id = %s", (job_id,))}
    assert reqs == {"trace-42"}


def test_empty_request_id_means_none(q: Any) -> None:
    q.enqueue("t", request_id="")
    assert q.claim().request_id is None


def test_clear_removes_only_old_failed_jobs_and_history(
    q: Any, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobq_core import _ops

    monkeypatch.setattr(_ops, "CLEAR_BATCH", 3)  # exercise the batch loop
    dead_old = [q.enqueue("dead") for _ in range(5)]
    for _ in dead_old:
        q.fail(q.claim(types=["dead"]), reason="x")
    pending_old = q.enqueue("pending")
    claimed_old = q.enqueue("claimed")
    q.claim(types=["claimed"])
    done = q.enqueue("done")
    q.complete(q.claim(types=["done"]))
    # Everything so far is 8 days old: 5 dead jobs and 5*3 + 1 + 2 + 3 = 21 events.
    db.execute("UPDATE svti_jobs SET failed_at = now() - interval '8 days', "
               "created_at = now() - interval '8 days'")
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '8 days'")
    dead_new = q.enqueue("dead")
    q.fail(q.claim(types=["dead"]), reason="recent")
    removed = q.clear(older_than="7d")
    # The live jobs keep their 3 old events: a job's timeline stays while it is in the queue.
    assert removed == 5 + 21 - 3
    remaining = dict(db.execute("SELECT id, state FROM svti_jobs").fetchall())
    assert remaining == {pending_old: "pending", claimed_old: "claimed", dead_new: "failed"}
    history = db.execute("SELECT job_id, event FROM svti_jobs_events ORDER BY id").fetchall()
    assert history == [(pending_old, "enqueued"), (claimed_old, "enqueued"),
                       (claimed_old, "claimed"),
                       (dead_new, "enqueued"), (dead_new, "claimed"), (dead_new, "failed")] + [
        (i, "deleted") for i in dead_old]
    assert done not in remaining
    assert q.clear(older_than=timedelta(days=7)) == 0


def test_clear_rejects_bad_durations(q: Any) -> None:
    for bad in ("7x", "", "-1d", "0s", "d7", "1.5h", 7):
        with pytest.raises(InvalidInputError):
            q.clear(older_than=bad)


def test_idempotency_key_returns_the_live_or_completed_job(
    q: Any, db: psycopg.Connection[Any]
) -> None:
    assert q.key_holder("order-7") is None and q.key_holder("") is None
    first = q.enqueue("t", {"v": 1}, idempotency_key="order-7")
    assert q.key_holder("order-7") == first
    assert q.enqueue("t", {"v": 2}, idempotency_key="order-7") == first
    assert q.enqueue_many([NewJob("t", idempotency_key="order-7")]) == [first]
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 1
    job = q.claim()
    assert job.idempotency_key == "order-7" and job.payload == {"v": 1}
    assert q.enqueue("t", idempotency_key="order-7") == first  # claimed is still live
    q.complete(job, result={"shipped": 1})
    # Completed: the key still finds it (history keeps it), and nothing runs twice.
    assert q.enqueue("t", idempotency_key="order-7") == first
    assert q.enqueue_many([NewJob("t", idempotency_key="order-7"), NewJob("t")])[0] == first
    assert q.pending() == 1  # only the key-less one
    assert q.outcome(first).result == {"shipped": 1}
    assert q.key_holder("order-7") == first
    # Once the history is cleared, the key is free again.
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '2 days'")
    q.clear(older_than="1d")
    assert q.key_holder("order-7") is None
    assert q.enqueue("t", idempotency_key="order-7") != first


def test_enqueue_many_returns_ids_in_input_order(q: Any, db: psycopg.Connection[Any]) -> None:
    existing = q.enqueue("t", idempotency_key="k0")
    ids = q.enqueue_many([
        NewJob("a", 1), {"type": "b", "payload": 2, "idempotency_key": "k1"},
        NewJob("c", 3, idempotency_key="k0"), NewJob("d", 4, idempotency_key="k1"),
        NewJob("e", 5, priority=3, run_at=timedelta(minutes=1), request_id="r"),
    ])
    assert ids[2] == existing and ids[1] == ids[3] and len(set(ids)) == 4
    types = dict(db.execute("SELECT id, type FROM svti_jobs").fetchall())
    assert [types[i] for i in ids] == ["a", "b", "t", "b", "e"]
    assert q.enqueue_many([]) == []


def test_enqueue_many_with_a_bad_item_enqueues_nothing(q: Any, db: psycopg.Connection[Any]) -> None:
    for bad in ([NewJob("ok"), NewJob("")], [NewJob("ok"), {"type": "x", "payload": {1, 2}}],
                [NewJob("ok"), {"type": "x", "bogus": 1}], [NewJob("ok"), "not-a-job"]):
        with pytest.raises(InvalidInputError):
            q.enqueue_many(bad)
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 0


def test_caller_transaction_enqueue_is_atomic(dsn: str, db: psycopg.Connection[Any]) -> None:
    from jobq_core import JobQueue

    with JobQueue(dsn) as queue, psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE orders (id int)")
        conn.commit()
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO orders VALUES (1)")
            queue.enqueue("ship", {"order": 1}, conn=conn)
        assert queue.pending() == 0
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (2)")
            job_id = queue.enqueue("ship", {"order": 2}, conn=conn)
            queue.enqueue_many([NewJob("ship", {"order": 3})], conn=conn)
        assert queue.pending() == 2 and queue.claim().id == job_id


async def test_async_caller_transaction_enqueue(dsn: str) -> None:
    from jobq_core import AsyncJobQueue

    async with AsyncJobQueue(dsn) as queue:
        conn = await psycopg.AsyncConnection.connect(dsn)
        async with conn:
            async with conn.transaction(force_rollback=True):
                await queue.enqueue("ship", conn=conn)
            assert await queue.pending() == 0
            async with conn.transaction():
                await queue.enqueue("ship", conn=conn)
            assert await queue.pending() == 1


def test_queue_on_a_single_connection_not_in_autocommit(dsn: str) -> None:
    from jobq_core import create_job_queue

    with psycopg.connect(dsn) as conn:
        queue = create_job_queue(conn)
        job_id = queue.enqueue("t")
        with psycopg.connect(dsn) as other:  # committed: visible elsewhere
            assert other.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 1
        queue.complete(queue.claim())
        assert queue.pending() == 0 and job_id > 0


def test_lease_ms_timing_is_honoured(q: Any) -> None:
    q.enqueue("t")
    q.claim(lease_ms=200)
    assert q.claim() is None
    time.sleep(0.3)
    assert q.claim() is not None


def test_pgbouncer_mode_prepares_nothing(dsn: str) -> None:
    """PgBouncer in transaction mode cannot keep server-side prepared statements: with
    pgbouncer=True the queue's connections never create one (the default mode does)."""
    from jobq_core import JobQueue

    def prepared_after_use(**options: Any) -> int:
        with JobQueue(dsn, max_connections=1, **options) as queue:
            for _ in range(10):  # psycopg prepares after 5 uses by default
                queue.enqueue("t")
                queue.complete(queue.claim())
            with queue.connection() as conn:
                count: int = conn.execute(
                    "SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
                plan_mode = conn.execute("SHOW plan_cache_mode").fetchone()[0]
        return count if plan_mode == ("auto" if options else "force_generic_plan") else -1

    assert prepared_after_use(pgbouncer=True) == 0
    assert prepared_after_use() > 0
