"""Faults of the connection: terminated backends, server restarts, PgBouncer in transaction
mode, and the backoff after a storm of broken connections."""

from __future__ import annotations

import time

import pytest

import jobq_core.queue
from jobq_core import JobQueue
from jobq_core.embedded import EmbeddedPostgres
from jobq_core.errors import DatabaseError, TransientError

from .harness import (
    BackendTerminator,
    PgBouncer,
    Run,
    WorkerSet,
    enqueue_jobs,
    executions_by_worker,
    running,
    worker_env,
)


def _terminate_run(rdsn: str, workers: WorkerSet, seconds: float, jobs: int) -> None:
    run = Run("pg_terminate_backend of every jobq backend, in a loop", rdsn, workers)
    run.expected = enqueue_jobs(rdsn, jobs, {"sleep_ms": 5})
    workers.start(3, worker_env(rdsn, concurrency=4, lease_ms=2000))
    assert workers.wait_serving()
    terminator = BackendTerminator(rdsn, seconds, period=(0.3, 1.0))
    with running(terminator):
        terminator.join(seconds + 5)
    run.note(terminator.describe())
    run.conclude(drain_timeout=60)


def test_terminated_backends_in_a_loop(rdsn: str, workers: WorkerSet) -> None:
    _terminate_run(rdsn, workers, 12, 3000)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_mid_run(
    restart_server: EmbeddedPostgres, restart_dsn: str, workers: WorkerSet, mode: str
) -> None:
    run = Run(f"server restart -m {mode}, twice, mid-run", restart_dsn, workers)
    run.expected = enqueue_jobs(restart_dsn, 3000, {"sleep_ms": 5})
    workers.start(3, worker_env(restart_dsn, concurrency=4, lease_ms=2000, durable_log=True))
    assert workers.wait_serving()
    for _ in range(2):
        time.sleep(3)
        started = time.monotonic()
        restart_server.restart(mode)
        run.note(f"restart -m {mode} took {time.monotonic() - started:.1f} s")
    run.conclude(drain_timeout=60)


@pytest.mark.parametrize("kind", ["sync-thread-0", "async-async-1", "sync-process-2"])
def test_pgbouncer_transaction_mode_poll_only(
    rdsn: str, pgbouncer: PgBouncer, workers: WorkerSet, kind: str
) -> None:
    """Through PgBouncer in transaction mode with `pgbouncer=True` and `notify=False`; the
    handlers' `ctx.enqueue` (in child processes, for the process executor) goes through it
    too and must honour the same settings. `kind`: queue-executor-follow-ups per job."""
    queue, executor, follow_ups = kind.split("-")
    spawn = int(follow_ups)
    run = Run(f"PgBouncer transaction mode, {queue} queue, {executor} executor, "
              f"{spawn} follow-ups per job", rdsn, workers)
    run.expected = enqueue_jobs(rdsn, 300, {"sleep_ms": 5, "spawn": spawn})
    workers.start(2, worker_env(pgbouncer.dsn, log_dsn=rdsn, concurrency=3, pgbouncer=True,
                                notify=False, executor=executor, queue=queue, lease_ms=3000))
    assert workers.wait_serving()
    run.fault_over()
    run.wait_drained(40)
    ledger = run.finish()
    if "ERROR" in pgbouncer.log() or "WARNING" in pgbouncer.log():
        print("pgbouncer log:\n" + pgbouncer.log()[-1500:])
    ledger.check()
    assert ledger.enqueued == 300 * (1 + spawn), ledger.render()
    run.assert_stopped_cleanly()


def test_backoff_resets_after_a_storm_of_broken_connections(
    rdsn: str, workers: WorkerSet
) -> None:
    """After many consecutive broken connections, work enqueued once the fault ended must be
    picked up promptly by every worker, not after a backoff of tens of seconds."""
    run = Run("recovery after 15 s of terminated connections", rdsn, workers)
    workers.start(3, worker_env(rdsn, concurrency=4, lease_ms=2000))
    assert workers.wait_serving()
    terminator = BackendTerminator(rdsn, 15, period=(0.05, 0.15))
    with running(terminator):
        terminator.join(20)
    run.note(terminator.describe())
    run.fault_over()
    run.expected = enqueue_jobs(rdsn, 300, {"sleep_ms": 20})
    drained = run.wait_drained(12)  # a worker asleep in a 30 s backoff counts as hung
    share = executions_by_worker(rdsn, run.expected)
    run.note(f"jobs run per worker after the fault: {share}")
    ledger = run.finish()
    ledger.check()
    assert drained is not None
    assert len(share) == 3, f"not every worker took part after the fault\n{ledger.render()}"
    run.assert_stopped_cleanly()


def test_pgbouncer_without_the_flag_names_the_real_cause(
    rdsn: str, pgbouncer: PgBouncer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind PgBouncer without `pgbouncer=True`, the pool's connections are refused for
    their startup options. That is not an outage: the error says what PgBouncer said and how
    to fix it, and no retry will help (a permanent `DatabaseError`)."""
    monkeypatch.setattr(jobq_core.queue, "CONNECT_TIMEOUT", 2.0)
    with JobQueue(pgbouncer.dsn) as queue, pytest.raises(DatabaseError) as refused:
        queue.enqueue("t")
    assert not isinstance(refused.value, TransientError)
    assert "unsupported startup parameter" in str(refused.value)
    assert "pgbouncer=True" in str(refused.value)
    with JobQueue(pgbouncer.dsn, pgbouncer=True) as queue:
        assert queue.enqueue("t") > 0
