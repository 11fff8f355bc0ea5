"""Regression tests for the guarantees under faults: typed errors by SQLSTATE, the idempotency
key against its own completion, atomic batches, reads that write nothing, one listener per
queue, and a runner that stops loudly instead of hanging. Real Postgres throughout."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

import jobq_core.loop_health
from jobq_core import (
    AsyncJobQueue,
    JobqError,
    JobQueue,
    NewJob,
    create_task_runner,
)
from jobq_core.errors import (
    DatabaseError,
    LockTimeoutError,
    RunnerFailedError,
    SchemaError,
    StatementTimeoutError,
    TransientError,
)

from . import runner_tasks
from .test_runner import serving, wait_until


@contextmanager
def row_locked(dsn: str, job_id: int) -> Iterator[psycopg.Connection[Any]]:
    """Another session holding the job's row lock until the block ends."""
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT 1 FROM svti_jobs WHERE id = %s FOR UPDATE", (job_id,))
        yield holder
        holder.rollback()


def test_a_statement_timeout_is_a_typed_transient_error(dsn: str) -> None:
    with JobQueue(dsn) as queue:
        job_id = queue.enqueue("t")
        with psycopg.connect(dsn, autocommit=True) as conn, row_locked(dsn, job_id):
            conn.execute("SET statement_timeout = '200ms'")
            queue_on_conn = JobQueue(conn)
            with pytest.raises(StatementTimeoutError) as caught:
                queue_on_conn.complete(job_id)
    assert isinstance(caught.value, TransientError) and caught.value.sqlstate == "57014"


def test_a_lock_timeout_is_a_typed_transient_error(dsn: str) -> None:
    with JobQueue(dsn) as queue:
        job_id = queue.enqueue("t")
        with psycopg.connect(dsn, autocommit=True) as conn, row_locked(dsn, job_id):
            conn.execute("SET lock_timeout = '100ms'")
            with pytest.raises(LockTimeoutError):
                JobQueue(conn).fail(job_id, reason="x")


def test_an_error_raised_by_a_trigger_is_a_database_error(dsn: str,
                                                          db: psycopg.Connection[Any]) -> None:
    db.execute("""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN RAISE EXCEPTION 'refused by policy'; END $$""")
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON svti_jobs FOR EACH ROW "
               "WHEN (NEW.type = 'forbidden') EXECUTE FUNCTION refuse()")
    with JobQueue(dsn) as queue, pytest.raises(DatabaseError, match="refused by policy") as caught:
        queue.enqueue("forbidden")
    assert caught.value.sqlstate == "P0001" and not isinstance(caught.value, psycopg.Error)


def test_a_missing_table_is_a_schema_error(dsn: str, db: psycopg.Connection[Any]) -> None:
    with JobQueue(dsn) as queue:
        queue.enqueue("t")
        db.execute("DROP TABLE svti_jobs_events")
        with pytest.raises(SchemaError, match="jobq migrate"):
            queue.enqueue("t")


def test_the_key_cannot_race_its_own_jobs_completion(dsn: str,
                                                     db: psycopg.Connection[Any]) -> None:
    """The reproduction from the issue: a completion of key K is open in a transaction, an
    enqueue of K runs from another session, then the completion commits. Before, the enqueue
    blocked on the key and then inserted a second job; now it returns the completed one."""
    with JobQueue(dsn) as queue:
        first = queue.enqueue("k", idempotency_key="K")
        job = queue.claim(types=["k"])
        assert job is not None and job.id == first
        with psycopg.connect(dsn) as completer:
            JobQueue(completer).complete(job, result={"done": 1})  # in an open transaction
            got: list[int] = []
            racer = threading.Thread(target=lambda: got.append(
                queue.enqueue("k", idempotency_key="K")))
            racer.start()
            # The enqueue runs while the completion is open: it returns, or it blocks on it.
            racer.join(1.0)
            completer.commit()
            racer.join(10)
        assert got == [first]
        assert queue.enqueue_many([NewJob("k", idempotency_key="K")]) == [first]
        assert queue.outcome(first).result == {"done": 1}
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone() == (0,)


def test_keys_hold_under_concurrent_enqueues_and_completions(dsn: str,
                                                             db: psycopg.Connection[Any]) -> None:
    """Eight threads enqueue the same 50 keys, singly and in batches in random orders, while
    a worker completes them as fast as it can: every call for a key returns the same id,
    however the commits interleave, and no call fails (batches sharing keys in different
    orders must not deadlock)."""
    keys = [f"key-{i}" for i in range(50)]
    stop = threading.Event()
    returned: dict[str, set[int]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def producer(queue: JobQueue, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3):
                order = rng.sample(keys, len(keys))
                for start in range(0, len(order), 10):
                    chunk = order[start:start + 10]
                    if rng.random() < 0.5:
                        ids = queue.enqueue_many([NewJob("k", idempotency_key=k) for k in chunk])
                    else:
                        ids = [queue.enqueue("k", idempotency_key=k) for k in chunk]
                    with lock:
                        for key, job_id in zip(chunk, ids, strict=True):
                            returned.setdefault(key, set()).add(job_id)
        except BaseException as exc:
            errors.append(exc)

    def consumer(queue: JobQueue) -> None:
        while not stop.is_set():
            for job in queue.claim_many(10, types=["k"]):
                queue.complete(job)

    with JobQueue(dsn, max_connections=12) as queue:
        worker = threading.Thread(target=consumer, args=(queue,))
        worker.start()
        producers = [threading.Thread(target=producer, args=(queue, i)) for i in range(8)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join(120)
        stop.set()
        worker.join(30)
    assert errors == []
    assert sorted(returned) == sorted(keys)
    assert all(len(ids) == 1 for ids in returned.values()), returned
    jobs_made = db.execute("SELECT count(DISTINCT job_id) FROM svti_jobs_events "
                           "WHERE event = 'enqueued'").fetchone()
    assert jobs_made == (50,)


def test_enqueue_many_on_an_autocommit_connection_is_atomic(dsn: str,
                                                            db: psycopg.Connection[Any]) -> None:
    """The COPY path is three statements: a fault in the last must leave nothing behind."""
    db.execute("""CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN RAISE EXCEPTION 'injected fault'; END $$""")
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON svti_jobs_events FOR EACH ROW "
               "WHEN (NEW.type = 'boom') EXECUTE FUNCTION boom()")
    with psycopg.connect(dsn, autocommit=True) as conn:
        queue = JobQueue(conn)
        with pytest.raises(DatabaseError, match="injected fault"):
            queue.enqueue_many([NewJob("ok"), NewJob("ok"), NewJob("boom")], conn=conn)
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone() == (0,)


def test_outcome_writes_nothing(dsn: str, db: psycopg.Connection[Any]) -> None:
    with JobQueue(dsn) as queue:
        job_id = queue.enqueue("t")
        before = db.execute("SELECT xmin::text, ctid::text FROM svti_jobs WHERE id = %s",
                            (job_id,)).fetchone()
        for _ in range(5):
            assert queue.outcome(job_id).state == "pending"
        after = db.execute("SELECT xmin::text, ctid::text FROM svti_jobs WHERE id = %s",
                           (job_id,)).fetchone()
    assert before == after


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_waiters_share_one_listening_connection(kind: str, dsn: str,
                                                db: psycopg.Connection[Any]) -> None:
    """Ten waiters at once: one LISTEN connection for the queue, and each waiter is woken."""
    def listeners() -> int:
        count: int = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%%' "
            "AND datname = current_database()").fetchone()[0]
        return count

    with JobQueue(dsn) as producer:
        ids = [producer.enqueue("w") for _ in range(10)]

        def finish_all() -> None:
            wait_until(lambda: listeners() >= 1, what="a listener")
            time.sleep(0.2)
            assert listeners() == 1
            for job in producer.claim_many(10, types=["w"]):
                producer.complete(job, result=job.id)

        finisher = threading.Thread(target=finish_all)
        finisher.start()
        if kind == "sync":
            with JobQueue(dsn) as queue:
                results: list[Any] = [None] * 10
                threads = [threading.Thread(target=lambda i=i: results.__setitem__(
                    i, queue.wait(ids[i], timeout=20))) for i in range(10)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
        else:
            async def main() -> list[Any]:
                async with AsyncJobQueue(dsn) as queue:
                    return list(await asyncio.gather(
                        *(queue.wait(i, timeout=20) for i in ids)))
            results = asyncio.run(main())
        finisher.join(30)
    assert results == ids


def test_a_loop_that_cannot_go_on_stops_the_runner_loudly(
    dsn: str, db: psycopg.Connection[Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tables vanish under a serving runner: every claim fails with a permanent error.
    The runner must not spin or hang: after PERMANENT_FAILURES in a row over
    PERMANENT_SECONDS (shortened here) it stops, serve() raises RunnerFailedError, and the
    health file says so."""
    monkeypatch.setattr(jobq_core.loop_health, "PERMANENT_SECONDS", 1.0)
    health = tmp_path / "health.json"
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, poll_interval=0.05, health_file=health)
    runner.register("t", runner_tasks.noop)
    queue.enqueue("t", {"x": 1})
    outcome: list[BaseException | None] = []

    def serve() -> None:
        try:
            asyncio.run(runner.serve())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    wait_until(lambda: runner.counters["completed"] == 1, what="the first job")
    db.execute("DROP TABLE svti_jobs CASCADE")
    thread.join(60)
    assert not thread.is_alive(), "the runner hung"
    assert len(outcome) == 1 and isinstance(outcome[0], RunnerFailedError)
    # The claim loop and the registry beat both fail for good, at the same pace: whichever
    # reaches the limit first stops the runner, and is named.
    message = str(outcome[0])
    stopped_by = [loop for loop in ("claim", "registry") if f"the {loop} loop" in message]
    assert len(stopped_by) == 1 and "SchemaError" in message, message
    report = json.loads(health.read_text())
    assert report["status"] == "failed"
    assert report["loops"][stopped_by[0]]["failures"] >= 5


def test_a_transient_fault_degrades_then_recovers(dsn: str, db: psycopg.Connection[Any],
                                                  tmp_path: Any) -> None:
    """A claim that times out (a table lock held for 1.5 s, statement_timeout 300 ms) is
    retried, health shows it degraded, and the runner goes on serving afterwards."""
    db.execute("ALTER DATABASE " + psycopg.sql.Identifier(
        db.info.dbname).as_string(db) + " SET statement_timeout = '300ms'")
    health = tmp_path / "health.json"
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, poll_interval=0.05, health_file=health)
    runner.register("t", runner_tasks.noop)
    seen: list[str] = []
    with serving(runner):
        with psycopg.connect(dsn) as locker:
            locker.execute("SET statement_timeout = 0")
            locker.execute("LOCK TABLE svti_jobs IN ACCESS EXCLUSIVE MODE")
            wait_until(lambda: runner.counters["claim_errors"] > 0, what="a failed claim")
            seen.append(runner.health()["status"])
            locker.rollback()
        ids = [queue.enqueue("t", {"x": i}) for i in range(20)]
        wait_until(lambda: runner.counters["completed"] == 20, what="the jobs after the fault")
        wait_until(lambda: runner.health()["status"] == "ok", what="health back to ok")
    assert seen == ["degraded"]
    assert all(queue.outcome(i).state == "completed" for i in ids)


def test_no_spurious_lease_lost_while_acks_and_beats_overlap(dsn: str) -> None:
    """Fast jobs and a beat every 20 ms: a beat often misses jobs that an ack just deleted.
    Those are not lost leases."""
    queue = JobQueue(dsn)
    lost: list[Any] = []
    runner = create_task_runner(queue, concurrency=20, heartbeat_interval=0.02, lease_ms=5000,
                                on_event=lambda e: lost.append(e) if e.kind == "lease_lost"
                                else None)
    runner.register("t", runner_tasks.noop)
    queue.enqueue_many([NewJob("t", {"x": i}) for i in range(3000)])
    runner.serve_forever(until_idle=True)
    assert runner.counters["completed"] == 3000
    assert lost == []


def test_no_raw_driver_error_escapes_the_async_twin(dsn: str,
                                                    db: psycopg.Connection[Any]) -> None:
    async def main() -> None:
        async with AsyncJobQueue(dsn) as queue:
            await queue.enqueue("t")
            db.execute("DROP TABLE svti_jobs_events")
            with pytest.raises(JobqError) as caught:
                await queue.enqueue("t")
            assert not isinstance(caught.value, psycopg.Error)

    asyncio.run(main())


def test_batches_sharing_keys_in_opposite_orders_do_not_deadlock(dsn: str) -> None:
    """One session holds key Z in an open transaction; two batches [A, Z, B] and [B, Z, A]
    wait on it; then it rolls back. Keys are taken in key order, so neither batch can wait
    for the other: both succeed, with the same ids."""
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    with JobQueue(dsn, max_connections=4) as queue, psycopg.connect(dsn) as holder:
        queue.enqueue("k", idempotency_key="Z", conn=holder)  # uncommitted

        def batch(name: str, keys: list[str]) -> None:
            try:
                results[name] = queue.enqueue_many([NewJob("k", idempotency_key=k)
                                                    for k in keys])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=batch, args=("forward", ["A", "Z", "B"])),
                   threading.Thread(target=batch, args=("backward", ["B", "Z", "A"]))]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # both are waiting on Z by now, or about to
        holder.rollback()
        for thread in threads:
            thread.join(30)
    assert errors == []
    forward, backward = results["forward"], results["backward"]
    assert forward == list(reversed(backward))


def test_a_stop_is_not_held_up_by_a_claim_that_hangs(dsn: str) -> None:
    """A table lock holds every claim; a stop asked for meanwhile ends serve() within the
    stop grace, not when the lock goes (and the hung call's thread never blocks exit)."""
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, poll_interval=0.05)
    runner.register("t", runner_tasks.noop)
    with psycopg.connect(dsn) as locker:
        thread = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
        thread.start()
        wait_until(lambda: runner.serving or not thread.is_alive(), what="runner start")
        locker.execute("LOCK TABLE svti_jobs IN ACCESS EXCLUSIVE MODE")
        time.sleep(0.5)  # the next claim is stuck behind the lock
        runner.request_stop()
        thread.join(20)
        stopped = not thread.is_alive()
        locker.rollback()
    assert stopped, "serve() waited for the hung claim"
