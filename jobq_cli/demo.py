"""A live demo workload: producers and a task runner with every kind of job an operator meets.

- ``fast``: done in tens of milliseconds, under a rate limit that rarely binds;
- ``slow``: seconds of work on a long lease, kept alive by the runner's heartbeat, at most
  10 at once fleet-wide (``global_concurrency``);
- ``flaky``: fails its first attempts, then succeeds after persisted retries;
- ``poison``: always fails, and ends ``failed`` after its attempts;
- ``scheduled``: enqueued to run a little later;
- ``report``: a periodic job, fired every 10 seconds by the runner's scheduler.

Every burst of jobs shares one request id, as one web request would, so `jobq trace` shows
everything that happened under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from jobq_core import JobQueue, NewJob, TaskRunner, create_task_runner

TYPES = ("fast", "slow", "flaky", "poison", "scheduled", "report")


def _fast(payload: Any, ctx: Any) -> Any:
    time.sleep(random.uniform(0.01, 0.08))
    return {"ok": True, "n": payload.get("n")}


def _slow(payload: Any, ctx: Any) -> Any:
    deadline = time.monotonic() + payload.get("seconds", 5)
    while time.monotonic() < deadline and not ctx.cancelled.is_set():
        time.sleep(0.1)
    return {"took": payload.get("seconds", 5)}


def _flaky(payload: Any, ctx: Any) -> Any:
    if ctx.attempt < payload.get("succeed_on", 2):
        raise ConnectionError(f"upstream refused (attempt {ctx.attempt})")
    return {"attempts": ctx.attempt}


def _poison(payload: Any, ctx: Any) -> Any:
    raise ValueError(f"cannot parse record {payload.get('record')!r}")


def _report(payload: Any, ctx: Any) -> Any:
    time.sleep(random.uniform(0.05, 0.2))
    return {"slot": ctx.request_id}  # cron:report:<slot>


def build_runner(queue: JobQueue, concurrency: int = 8) -> TaskRunner:
    runner = create_task_runner(queue, concurrency=concurrency, poll_interval=0.5,
                                shutdown_timeout=2.0)
    runner.register("fast", _fast, rate_limit="30/s")
    runner.register("scheduled", _fast)
    runner.register("slow", _slow, lease_ms=60_000, global_concurrency=10)
    runner.register("flaky", _flaky, max_attempts=4, backoff=lambda attempt: 1.0 * attempt)
    runner.register("poison", _poison, max_attempts=3, backoff=lambda attempt: 0.5)
    runner.periodic("report", every=datetime.timedelta(seconds=10))(_report)
    return runner


def burst(rng: random.Random) -> list[NewJob]:
    """One request's worth of jobs, under one request id."""
    request_id = f"req-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
    jobs = [NewJob("fast", {"n": n}, request_id=request_id) for n in range(rng.randint(1, 6))]
    roll = rng.random()
    if roll < 0.25:
        jobs.append(NewJob("slow", {"seconds": rng.randint(3, 12)}, request_id=request_id))
    if roll < 0.35:
        jobs.append(NewJob("flaky", {"succeed_on": rng.randint(2, 3)}, request_id=request_id))
    if roll < 0.08:
        jobs.append(NewJob("poison", {"record": rng.randint(1, 9999)}, request_id=request_id,
                           priority=1))
    if roll > 0.85:
        jobs.append(NewJob("scheduled", {"n": 0}, request_id=request_id,
                           run_at=datetime.timedelta(seconds=rng.randint(5, 30))))
    return jobs


class Demo:
    """Producers and a runner in background threads; `stop` ends both gracefully."""

    def __init__(self, dsn: str, *, table: str = "svti_jobs", rate: float = 4.0,
                 concurrency: int = 16, seed: int | None = None) -> None:
        self.queue = JobQueue(dsn, table=table, max_connections=4)
        self.runner = build_runner(self.queue, concurrency)
        self.rate = rate
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.queue.migrate()
        self._threads = [
            threading.Thread(target=self._produce, name="jobq-demo-producer", daemon=True),
            threading.Thread(target=lambda: asyncio.run(self.runner.serve()),
                             name="jobq-demo-runner", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _produce(self) -> None:
        while not self._stop.is_set():
            self.queue.enqueue_many(burst(self._rng))
            self._stop.wait(self._rng.expovariate(self.rate))

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 10
        while (not self.runner.serving and self._threads[1].is_alive()
               and time.monotonic() < deadline):
            time.sleep(0.05)  # the runner thread may still be starting
        self.runner.request_stop()
        for thread in self._threads:
            thread.join(15)
        self.queue.close()


@contextlib.contextmanager
def running_demo(dsn: str | None, *, rate: float = 4.0,
                 notice: Callable[[str], None] = print) -> Iterator[str]:
    """The demo workload on `dsn`, or on a private embedded Postgres when `dsn` is empty;
    yields the connection string, and stops the workload and the server afterwards."""
    from jobq_core.embedded import EmbeddedPostgres

    server = None
    try:
        conninfo = dsn or ""
        if not conninfo:
            notice("starting a private Postgres for the demo…")
            server = EmbeddedPostgres(create_user=True)
            conninfo = server.start()
        running = Demo(conninfo, rate=rate)
        running.start()
        try:
            yield conninfo
        finally:
            running.stop()
    finally:
        if server is not None:
            server.cleanup()
