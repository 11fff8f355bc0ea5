"""The long run: kill -9 of workers, terminated backends and server restarts, mixed at random
for about ten minutes (``JOBQ_CHAOS_SECONDS``) against a steady stream of jobs. Runs only with
``JOBQ_CHAOS=1`` (or ``--run-chaos``)."""

from __future__ import annotations

import os
import random
import time

import pytest

from jobq_core.embedded import EmbeddedPostgres

from .harness import (
    BackendTerminator,
    Run,
    WorkerSet,
    enqueue_jobs,
    live_count,
    running,
    worker_env,
)

CHAOS_SECONDS = float(os.environ.get("JOBQ_CHAOS_SECONDS", "600"))


@pytest.mark.chaos
@pytest.mark.timeout(CHAOS_SECONDS + 600)
def test_chaos_mix(restart_server: EmbeddedPostgres, restart_dsn: str,
                   workers: WorkerSet) -> None:
    run = Run(f"chaos: kill -9, terminations and restarts for {CHAOS_SECONDS:.0f} s",
              restart_dsn, workers)
    executors = ["thread", "async", "process"]
    for n, executor in enumerate(executors):
        workers.start(1, worker_env(restart_dsn, concurrency=4, lease_ms=2000,
                                    executor=executor, queue="async" if n == 1 else "sync",
                                    durable_log=True), prefix=executor)
    assert workers.wait_serving()
    counts = {"kill -9": 0, "terminate storm": 0, "restart fast": 0, "restart immediate": 0}
    deadline = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < deadline:
        if live_count(restart_dsn) < 2000:
            run.expected += enqueue_jobs(restart_dsn, 2000, {"sleep_ms": 5})
        time.sleep(random.uniform(2, 6))
        fault = random.choices(list(counts), weights=[5, 3, 1, 1])[0]
        counts[fault] += 1
        if fault == "kill -9":
            random.choice(workers.workers).restart()
        elif fault == "terminate storm":
            storm = BackendTerminator(restart_dsn, random.uniform(1, 5), period=(0.1, 0.5))
            with running(storm):
                storm.join(10)
        else:
            restart_server.restart(fault.split()[1])
    run.note(f"faults: {counts}")
    run.conclude(drain_timeout=180)
