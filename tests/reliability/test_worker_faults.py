"""Faults of the worker processes themselves: kill -9, clock skew, a process executor at high
concurrency, and a task lease shorter than the runner's."""

from __future__ import annotations

import random
import threading
import time

import pytest

from jobq_core import JobQueue

from .harness import (
    Run,
    WorkerSet,
    compute_ledger,
    connect,
    enqueue_jobs,
    faketime_env,
    live_count,
    wait_until,
    worker_env,
)
from .worker_app import WORK


def _kill_loop(run: Run, workers: WorkerSet, seconds: float, pause: tuple[float, float],
               until_live: int) -> int:
    """Kill -9 a random worker and restart it, every `pause` seconds, for `seconds` or until
    no more than `until_live` jobs are left; returns the kills."""
    deadline = time.monotonic() + seconds
    kills = 0
    while time.monotonic() < deadline and live_count(run.dsn) > until_live:
        time.sleep(random.uniform(*pause))
        victim = random.choice(workers.workers)
        victim.restart()
        kills += 1
    return kills


def _kill_9_run(rdsn: str, workers: WorkerSet, jobs: int, seconds: float) -> None:
    run = Run(f"kill -9 of workers during a {jobs}-job run", rdsn, workers)
    run.expected = enqueue_jobs(rdsn, jobs)
    workers.start(3, worker_env(rdsn, concurrency=8, lease_ms=2000))
    assert workers.wait_serving()
    kills = _kill_loop(run, workers, seconds, (1.0, 3.0), until_live=jobs // 10)
    run.note(f"{kills} kill -9 and restarts; {live_count(rdsn)} jobs still live at the last")
    run.conclude(drain_timeout=90)


def test_kill_9_of_workers_during_a_run(rdsn: str, workers: WorkerSet) -> None:
    _kill_9_run(rdsn, workers, 10_000, 20)


@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_kill_9_chaos(rdsn: str, workers: WorkerSet) -> None:
    _kill_9_run(rdsn, workers, 200_000, 480)


@pytest.mark.parametrize("offset", ["+1h", "-1h"])
def test_a_worker_with_a_skewed_clock(rdsn: str, workers: WorkerSet, offset: str) -> None:
    skew = faketime_env(offset)
    if skew is None:
        pytest.skip("libfaketime is not installed (apt-get install -y faketime)")
    run = Run(f"one worker's clock {offset} off", rdsn, workers)
    run.expected = enqueue_jobs(rdsn, 3000, {"sleep_ms": 5})
    env = worker_env(rdsn, concurrency=4, lease_ms=2000)
    skewed = workers.start(1, env, prefix="skewed", wrapper=skew)[0]
    workers.start(2, env)
    assert workers.wait_serving()
    run.fault_over()  # the skew lasts the whole run: drained counts from the start
    run.wait_drained(60)
    with connect(rdsn) as conn:
        row = conn.execute("SELECT count(*) FROM reli_exec WHERE worker = %s",
                           (skewed.label,)).fetchone()
    run.note(f"the skewed worker ran {row[0] if row else 0} jobs; its health file says "
             f"{skewed.health()}")
    ledger = run.finish()
    ledger.check()
    run.assert_stopped_cleanly()


def _claimed_by(dsn: str, prefix: str) -> int:
    with connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM svti_jobs WHERE state = 'claimed' "
                           "AND claimed_by LIKE %s", (f"reli-{prefix}%",)).fetchone()
    return int(row[0]) if row else 0


def _leases_must_hold(rdsn: str, workers: WorkerSet, title: str, *, jobs: int,
                      holder: dict[str, object], seconds: float) -> None:
    """`jobs` long jobs held by one worker while a second one, with a short lease, waits for
    any of them to come free: none may, so each job runs exactly once."""
    run = Run(title, rdsn, workers)
    run.expected = enqueue_jobs(rdsn, jobs, {"sleep_ms": int(seconds * 1000)})
    workers.start(1, worker_env(rdsn, **holder), prefix="holder")
    assert wait_until(lambda: _claimed_by(rdsn, "holder") == jobs, 30), "the holder never " \
        "claimed every job"
    workers.start(1, worker_env(rdsn, concurrency=jobs, lease_ms=2000, poll_interval=0.2),
                  prefix="thief")
    run.fault_over()
    run.wait_drained(seconds + 45)
    ledger = run.finish()
    ledger.check()
    assert ledger.duplicate_executions == 0 and ledger.recovered_events == 0, (
        f"a running job's lease lapsed and a second worker took it\n{ledger.render()}")
    run.assert_stopped_cleanly()


def test_process_executor_above_the_thread_pool_size_keeps_leases(
    rdsn: str, workers: WorkerSet
) -> None:
    """Seven process jobs at once on two cores: more than asyncio's default thread pool (six
    threads), which must not starve the sync queue's heartbeat."""
    _leases_must_hold(
        rdsn, workers, "process executor, concurrency 7, 6 s jobs, sync queue", jobs=7,
        holder={"concurrency": 7, "executor": "process", "queue": "sync", "lease_ms": 2000},
        seconds=6.0)


def test_heartbeat_follows_the_shortest_task_lease(rdsn: str, workers: WorkerSet) -> None:
    """A task's 1.5 s lease under a runner's 6 s one, on 10 s jobs. Once the claim's 6 s have
    passed, each beat renews a job for 1.5 s only: beats must come often enough for that
    (a beat every 2 s, a third of the runner's lease, would let it lapse)."""
    _leases_must_hold(
        rdsn, workers, "task lease 1.5 s under a runner lease of 6 s, 10 s jobs", jobs=2,
        holder={"concurrency": 2, "lease_ms": 6000, "task_lease_ms": 1500}, seconds=10.0)


def test_a_direct_claimer_never_gets_a_job_of_a_short_task_lease(
    rdsn: str, workers: WorkerSet
) -> None:
    """The same, with a claimer polling the queue itself every 50 ms while the jobs run."""
    run = Run("task lease 1.5 s, runner lease 6 s, 10 s jobs: a polling claimer", rdsn, workers)
    run.expected = enqueue_jobs(rdsn, 2, {"sleep_ms": 10_000})
    workers.start(1, worker_env(rdsn, concurrency=2, lease_ms=6000, task_lease_ms=1500))
    assert wait_until(lambda: _claimed_by(rdsn, "w") == 2, 30)
    stolen: list[int] = []
    stop = threading.Event()

    def claimer() -> None:
        with JobQueue(rdsn, max_connections=1) as queue:
            while not stop.wait(0.05):
                job = queue.claim(types=[WORK], lease_ms=60_000, worker="reli-claimer")
                if job is not None:
                    stolen.append(job.id)
                    queue.release([job], reason="taken back by the test")

    thread = threading.Thread(target=claimer, daemon=True)
    thread.start()
    run.fault_over()
    run.wait_drained(60)
    stop.set()
    thread.join(10)
    run.note(f"jobs the polling claimer got: {stolen}")
    ledger = run.finish()
    ledger.check()
    assert not stolen, f"a running job's lease lapsed\n{ledger.render()}"


def test_ledger_of_an_untouched_run(rdsn: str, workers: WorkerSet) -> None:
    """The baseline: no fault, every executor and queue kind; the books balance exactly."""
    run = Run("no fault (baseline)", rdsn, workers)
    run.expected = enqueue_jobs(rdsn, 600, {"sleep_ms": 2})
    for executor, kind in (("thread", "sync"), ("async", "async"), ("process", "sync")):
        workers.start(1, worker_env(rdsn, concurrency=3, executor=executor, queue=kind),
                      prefix=executor)
    run.fault_over()
    run.wait_drained(60)
    ledger = run.finish()
    ledger.check()
    assert ledger.duplicate_executions == 0, ledger.render()
    run.assert_stopped_cleanly()
    assert compute_ledger(rdsn, run.expected, title="again").completed == 600
