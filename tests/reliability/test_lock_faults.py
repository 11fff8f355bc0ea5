"""Statements cancelled by statement_timeout and lock_timeout, forced deadlocks, and an
exhausted pool: workers must keep serving, and errors must say what really happened."""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

import psycopg
import pytest

import jobq_core.queue
from jobq_core import DatabaseUnavailableError, JobQueue, NewJob
from jobq_core import errors as jobq_errors

from .harness import (
    JOBQ,
    REPO,
    RowLocker,
    Run,
    TableLocker,
    WorkerSet,
    connect,
    deadlocks,
    enqueue_jobs,
    running,
    set_database,
    wait_until,
    worker_env,
)


def _locked_run(rdsn: str, workers: WorkerSet, title: str, setting: str, value: str) -> None:
    run = Run(title, rdsn, workers)
    run.expected = enqueue_jobs(rdsn, 2000, {"sleep_ms": 10})
    set_database(rdsn, setting, value)  # every worker session from now on
    workers.start(3, worker_env(rdsn, concurrency=4, lease_ms=3000))
    assert workers.wait_serving()
    locker = TableLocker(rdsn, 12, hold=3.0, pause=(0.5, 1.5))
    with running(locker):
        locker.join(17)
    run.note(locker.describe())
    run.conclude(drain_timeout=40)


def test_statement_timeout_hits_claim_ack_and_heartbeat(rdsn: str, workers: WorkerSet) -> None:
    _locked_run(rdsn, workers, "statement_timeout 1s against a table lock held 3 s",
                "statement_timeout", "1s")


def test_lock_timeout_hits_claim_ack_and_heartbeat(rdsn: str, workers: WorkerSet) -> None:
    _locked_run(rdsn, workers, "lock_timeout 500ms against a table lock held 3 s",
                "lock_timeout", "500ms")


def test_forced_deadlocks_against_heartbeats_and_acks(rdsn: str, workers: WorkerSet) -> None:
    run = Run("deadlocks: claimed rows locked in descending order", rdsn, workers)
    run.expected = enqueue_jobs(rdsn, 300, {"sleep_ms": 800})
    workers.start(3, worker_env(rdsn, concurrency=6, lease_ms=3000))
    assert workers.wait_serving()
    before = deadlocks(rdsn)
    locker = RowLocker(rdsn, 15)
    with running(locker):
        locker.join(20)
    run.note(locker.describe() + f", the antagonist was the victim {locker.deadlocked} times")
    run.fault_over()
    # The statistics are flushed about once a second.
    wait_until(lambda: deadlocks(rdsn) > before, 5, 0.2)
    happened = deadlocks(rdsn) - before
    run.note(f"deadlocks detected by the server: {happened}")
    run.wait_drained(60)
    ledger = run.finish()
    assert happened > 0, f"no deadlock was provoked\n{ledger.render()}"
    ledger.check()
    run.assert_stopped_cleanly()


def test_statements_lock_rows_in_id_order(dsn: str) -> None:
    """Two sessions heartbeating and completing the same jobs, listed in opposite orders, at
    the same time: with rows locked in id order they never deadlock."""
    errors: list[BaseException] = []
    rounds, size = 150, 8
    with JobQueue(dsn, max_connections=4) as queue, connect(dsn) as db:
        for _ in range(rounds):
            queue.enqueue_many([NewJob("pair", n) for n in range(size)])
            jobs = queue.claim_many(size, types=["pair"], lease_ms=60_000)
            assert len(jobs) == size
            barrier = threading.Barrier(2)
            done: list[list[int]] = [[], []]

            def session(n: int, order: list[Any], barrier: threading.Barrier = barrier,
                        done: list[list[int]] = done) -> None:
                try:
                    barrier.wait(10)
                    for _ in range(3):
                        queue.heartbeat(order, 60_000)
                    done[n] = queue.complete_many(order)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=session, args=(0, jobs)),
                       threading.Thread(target=session, args=(1, jobs[::-1]))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            if errors:
                break
            assert sorted(done[0] + done[1]) == sorted(j.id for j in jobs)
        doubles = db.execute("SELECT count(*) FROM (SELECT job_id FROM svti_jobs_events "
                             "WHERE event = 'completed' GROUP BY job_id HAVING count(*) > 1) d"
                             ).fetchone()
    described = [f"{type(e).__module__}.{type(e).__name__}: {e}" for e in errors[:3]]
    print(f"\nopposite-order heartbeats and acks: {rounds} rounds of {size} jobs, "
          f"errors {described or 'none'}, double completions {doubles[0] if doubles else '?'}")
    assert not errors, f"concurrent statements on the same rows failed: {described}"
    assert doubles == (0,)


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JOBQ, *args, "--dsn", dsn], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={k: v for k, v in os.environ.items() if k != "JOBQ_DSN"})


def test_pool_exhaustion_is_not_an_outage(
    rdsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobq_core.queue, "CONNECT_TIMEOUT", 2.0)  # wait 2 s, not 10
    release = threading.Event()
    holding = threading.Barrier(3)
    report: list[str] = []
    with JobQueue(rdsn, max_connections=2) as queue:
        queue.migrate()

        def hold() -> None:
            with queue.connection() as conn:
                conn.execute("SELECT 1")
                holding.wait(10)
                release.wait(30)

        holders = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
        for thread in holders:
            thread.start()
        holding.wait(10)
        try:
            with pytest.raises(jobq_errors.JobqError) as caught:
                queue.enqueue("work")
            kind = type(caught.value)
            report.append(f"enqueue on an exhausted pool raised {kind.__name__}: "
                          f"{caught.value}")
            cli = _cli(rdsn, "status")
            report.append(f"`jobq status` meanwhile: exit {cli.returncode}, "
                          f"stderr {cli.stderr.strip()[-300:]!r}")
        finally:
            release.set()
            for thread in holders:
                thread.join(10)
        print("\n" + "\n".join(report))
        assert issubclass(kind, jobq_errors.PoolExhaustedError), report[0]
        assert not issubclass(kind, DatabaseUnavailableError), report[0]
        assert "database unavailable" not in str(caught.value), report[0]
        assert cli.returncode == 0 and "database unavailable" not in cli.stderr, report[1]
        job_id = queue.enqueue("work")  # after the release, everything works
        assert queue.claim(types=["work"]) is not None and job_id > 0
    assert _cli(rdsn, "status").returncode == 0


def test_cli_under_a_statement_timeout_does_not_say_unavailable(rdsn: str) -> None:
    """The server is up but the table is locked and statements time out: the CLI must say
    so in one line, not "database unavailable" and not a traceback."""
    enqueue_jobs(rdsn, 5)
    set_database(rdsn, "statement_timeout", "1s")
    with connect(rdsn) as locker, locker.transaction():
        locker.execute("LOCK TABLE svti_jobs IN ACCESS EXCLUSIVE MODE")
        results = {cmd: _cli(rdsn, cmd) for cmd in ("status", "list")}
    print()
    for cmd, result in results.items():
        print(f"`jobq {cmd}` against a locked table: exit {result.returncode}, "
              f"stderr {result.stderr.strip()[-400:]!r}")
    for cmd, result in results.items():
        assert result.returncode != 0, f"jobq {cmd} should fail while the table is locked"
        assert "database unavailable" not in result.stderr, f"jobq {cmd}: {result.stderr}"
        assert "Traceback" not in result.stderr, f"jobq {cmd}: {result.stderr}"
    assert _cli(rdsn, "status").returncode == 0


def test_a_terminated_idle_pool_connection_is_one_error_at_most(rdsn: str) -> None:
    """Every pooled connection killed while idle: the next call may fail as unavailable once,
    then works; it never surfaces a raw driver error."""
    with JobQueue(rdsn, max_connections=4) as queue:
        queue.enqueue("work")
        with connect(rdsn) as db:
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND application_name = 'jobq'")
        outcomes = []
        for _ in range(3):
            try:
                queue.pending()
                outcomes.append("ok")
            except jobq_errors.TransientError as exc:
                outcomes.append(type(exc).__name__)
            except psycopg.Error as exc:  # pragma: no cover - the failure being tested
                outcomes.append(f"raw {type(exc).__name__}")
        print(f"\ncalls after every idle connection was terminated: {outcomes}")
        assert not any(o.startswith("raw") for o in outcomes), outcomes
        assert outcomes[-1] == "ok", outcomes
