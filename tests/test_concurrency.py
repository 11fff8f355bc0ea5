"""No job is lost, none is completed twice, and a lost lease changes nothing: proven with many
processes, kill -9, terminated backends and a restarted server."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobq_core import (
    DatabaseUnavailableError,
    JobQueue,
    LeaseLostError,
    NewJob,
    create_job_queue,
)
from jobq_core.embedded import EmbeddedPostgres

from .helpers import backdate

SPAWN = mp.get_context("spawn")


def _completed_counts(db: psycopg.Connection[Any]) -> Counter[int]:
    return Counter(dict(db.execute(
        "SELECT job_id, count(*) FROM svti_jobs_events WHERE event = 'completed' GROUP BY job_id"
    ).fetchall()))


def test_concurrent_claimers_get_disjoint_jobs(dsn: str) -> None:
    with JobQueue(dsn, max_connections=12) as queue:
        queue.enqueue_many([NewJob("t", i) for i in range(600)])
        barrier = threading.Barrier(8)
        seen: list[list[int]] = [[] for _ in range(8)]

        def claimer(n: int) -> None:
            barrier.wait()
            while jobs := queue.claim_many(random.randint(1, 7), lease_ms=60_000):
                seen[n].extend(j.id for j in jobs)

        threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    every = [i for ids in seen for i in ids]
    assert len(every) == 600 and len(set(every)) == 600
    assert sum(1 for ids in seen if ids) > 1  # they really ran side by side


def _stress_worker(dsn: str, n: int, jobs: int, barrier: Any, out: Any) -> None:
    done = 0
    with JobQueue(dsn, max_connections=2) as queue:
        barrier.wait()
        for start in range(0, jobs, 500):
            queue.enqueue_many(
                [NewJob("stress", {"w": n, "i": i}) for i in range(start, start + 500)])
        idle = 0
        while idle < 20:
            job = queue.claim(types=["stress"], lease_ms=30_000)
            if job is None:
                idle += 1
                time.sleep(0.02)
                continue
            idle = 0
            if job.payload["i"] % 97 == 0 and job.attempts == 1:
                queue.fail(job, reason="first try fails", retry=True)  # exercises retries
                continue
            queue.complete(job)
            done += 1
    out.put(done)


def test_four_processes_complete_twenty_thousand_jobs_exactly_once(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    procs_n, per_proc = 4, 5000
    barrier, out = SPAWN.Barrier(procs_n), SPAWN.Queue()
    procs = [SPAWN.Process(target=_stress_worker, args=(dsn, n, per_proc, barrier, out))
             for n in range(procs_n)]
    for p in procs:
        p.start()
    done = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    total = procs_n * per_proc
    assert sum(done) == total
    counts = _completed_counts(db)
    assert len(counts) == total and set(counts.values()) == {1}
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 0
    enqueued = db.execute(
        "SELECT count(DISTINCT job_id) FROM svti_jobs_events WHERE event = 'enqueued'").fetchone()
    assert enqueued == (total,)
    assert all(d > 0 for d in done)  # every process did real work


def test_concurrent_duplicate_enqueues_make_one_job_per_key(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    keys = [f"key-{i}" for i in range(50)]
    barrier = threading.Barrier(8)
    results: list[dict[str, int]] = [{} for _ in range(8)]

    def producer(n: int) -> None:
        with JobQueue(dsn, max_connections=2) as queue:
            order = keys[:]
            random.Random(n).shuffle(order)
            barrier.wait()
            for i, key in enumerate(order):
                if i % 2:
                    results[n][key] = queue.enqueue("t", idempotency_key=key)
                else:
                    results[n][key] = queue.enqueue_many([NewJob("t", idempotency_key=key)])[0]

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == results[0] for r in results)
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 50
    assert db.execute("SELECT count(*) FROM svti_jobs_events").fetchone()[0] == 50


def _hold_and_hang(dsn: str, ready: Any) -> None:
    with JobQueue(dsn) as queue:
        jobs = queue.claim_many(5, lease_ms=1500)
        ready.put([j.id for j in jobs])
        time.sleep(600)


def test_jobs_of_a_kill_9_worker_come_back_after_the_lease(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    with JobQueue(dsn) as queue:
        ids = queue.enqueue_many([NewJob("t", i, request_id=f"r{i}") for i in range(5)])
        ready = SPAWN.Queue()
        worker = SPAWN.Process(target=_hold_and_hang, args=(dsn, ready))
        worker.start()
        held = ready.get(timeout=60)
        assert sorted(held) == sorted(ids)
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        worker.join(10)
        assert queue.claim() is None  # still leased
        deadline = time.monotonic() + 10
        recovered: list[Any] = []
        while len(recovered) < 5 and time.monotonic() < deadline:
            recovered += queue.claim_many(5)
            time.sleep(0.05)
        assert sorted(j.id for j in recovered) == sorted(ids)
        assert {j.attempts for j in recovered} == {2}
        assert {j.request_id for j in recovered} == {f"r{i}" for i in range(5)}
        assert len(queue.complete_many(recovered)) == 5
    assert set(_completed_counts(db).values()) == {1}


def test_a_terminated_backend_loses_no_job(dsn: str, db: psycopg.Connection[Any]) -> None:
    with JobQueue(dsn, max_connections=1) as queue:
        queue.enqueue("t")
        job = queue.claim(lease_ms=60_000)
        killed = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'jobq' AND datname = current_database()").fetchone()[0]
        assert killed == 1
        with pytest.raises(DatabaseUnavailableError):
            queue.complete(job)
        queue.complete(job)  # a fresh connection; the lease still holds
        with pytest.raises(LeaseLostError):
            queue.complete(job)
    assert _completed_counts(db) == Counter({job.id: 1})


def test_a_backend_terminated_mid_claim_leaves_the_job_claimable(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    with JobQueue(dsn, max_connections=1) as queue:
        job_id = queue.enqueue("t")
        errors: list[BaseException] = []
        with psycopg.connect(dsn) as locker:
            locker.execute("LOCK TABLE svti_jobs IN ACCESS EXCLUSIVE MODE")

            def blocked_claim() -> None:
                try:
                    queue.claim()
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=blocked_claim)
            thread.start()
            deadline = time.monotonic() + 10
            while not db.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'jobq' AND wait_event_type = 'Lock'"
            ).fetchone()[0]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            thread.join(10)
            locker.rollback()
        assert len(errors) == 1 and isinstance(errors[0], DatabaseUnavailableError)
        job = queue.claim()
        assert job is not None and job.id == job_id and job.attempts == 1
        queue.complete(job)


def test_a_restarted_server_loses_no_job(embedded_server: EmbeddedPostgres) -> None:
    dsn = embedded_server.dsn
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS restart_test")
        admin.execute("CREATE DATABASE restart_test")
    dsn = dsn.rsplit("/", 1)[0] + "/restart_test"
    with create_job_queue(dsn) as queue:
        ids = queue.enqueue_many([NewJob("t", i) for i in range(100)])
        held = queue.claim_many(10, lease_ms=60_000)
        for mode in ("fast", "immediate"):  # a clean restart, then a crash-like one
            embedded_server.restart(mode)
            deadline = time.monotonic() + 20
            while True:
                try:
                    queue.pending()
                    break
                except DatabaseUnavailableError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        assert queue.pending() == 90
        assert len(queue.complete_many(held)) == 10  # leases survived the restarts
        while jobs := queue.claim_many(25):
            queue.complete_many(jobs)
    with psycopg.connect(dsn) as db:
        counts = _completed_counts(db)
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}


def test_notify_once_per_enqueue_statement(dsn: str, db: psycopg.Connection[Any]) -> None:
    with JobQueue(dsn) as queue, psycopg.connect(dsn, autocommit=True) as listener:
        queue.prepare()  # resolves the table, which names the channel
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(queue.names.channel)))

        def drain() -> int:
            return sum(1 for _ in listener.notifies(timeout=0.3))

        queue.enqueue("t")
        assert drain() == 1
        queue.enqueue_many([NewJob("t") for _ in range(100)])
        assert drain() == 1
        job = queue.claim()
        assert drain() == 0  # claims do not wake anybody
        queue.fail(job, reason="x", retry=True)
        assert drain() == 1  # a retry that is due now wakes workers
        queue.fail(queue.claim(), reason="x", retry=True, run_at=timedelta(hours=1))
        assert drain() == 0


def test_stale_holder_loses_to_the_reclaimer_even_when_racing(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Many rounds of a stale holder and a reclaimer acking at the same instant: exactly one
    of them wins each time, and only the current lease holder can win."""
    with JobQueue(dsn, max_connections=4) as queue:
        for _ in range(30):
            job_id = queue.enqueue("race")
            stale = queue.claim(types=["race"])
            backdate(db, job_id, lease_until="1 second")
            fresh = queue.claim(types=["race"])
            outcomes: list[str] = []
            barrier = threading.Barrier(2)

            def ack(job: Any, barrier: Any = barrier, outcomes: Any = outcomes,
                    fresh: Any = fresh) -> None:
                barrier.wait()
                try:
                    queue.complete(job)
                    outcomes.append("fresh" if job is fresh else "stale")
                except LeaseLostError:
                    outcomes.append("lost")

            threads = [threading.Thread(target=ack, args=(j,)) for j in (stale, fresh)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["fresh", "lost"]
    assert set(_completed_counts(db).values()) == {1}


def test_a_server_crash_right_after_claims_loses_no_job() -> None:
    """Claims commit asynchronously. A crash may lose an unflushed claim; the job must then
    be pending again and its stale holder's ack refused. Either way: nothing is lost and
    nothing is completed twice. A durable server (not the suite's fast one) so that enqueues
    and completions really are flushed."""
    with EmbeddedPostgres(create_user=True) as server:
        queue = create_job_queue(server.dsn, max_connections=2)
        ids = queue.enqueue_many([NewJob("t", i) for i in range(50)])
        held = queue.claim_many(50, lease_ms=60_000)
        assert len(held) == 50
        server.kill()  # SIGKILL the postmaster: no shutdown, no flush
        server.start()
        acked, lost = 0, 0
        deadline = time.monotonic() + 10
        while True:  # the pool reconnects after the crash
            try:
                queue.pending()
                break
            except DatabaseUnavailableError:
                assert time.monotonic() < deadline, "no reconnect after the crash"
                time.sleep(0.1)
        for job in held:
            try:
                queue.complete(job)
                acked += 1
            except LeaseLostError:
                lost += 1  # the claim did not survive: the job is pending again
        assert acked + lost == 50
        while jobs := queue.claim_many(25):
            assert len(queue.complete_many(jobs)) == len(jobs)
        with psycopg.connect(server.dsn) as db:
            counts = _completed_counts(db)
            assert db.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 0
        queue.close()
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}
