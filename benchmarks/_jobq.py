"""jobq in the benchmarks: its sync and async enqueue, and its task runner (`TaskRunner`, what
`jobq worker` serves) over an `AsyncJobQueue` with a no-op async handler."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from benchmarks._common import Handshake, percentile
from jobq_core import AsyncJobQueue, JobQueue, NewJob, create_task_runner

NAME = "jobq"
PAYLOAD = json.loads('{"to": "alice@example.com", "template": "welcome"}')
#: The type every cell claims, unless it says otherwise.
TYPE = "noop"


def install(dsn: str) -> None:
    with JobQueue(dsn, max_connections=1) as queue:
        queue.migrate()


def fill(dsn: str, jobs: int, type: str = TYPE) -> None:
    """Enqueue `jobs` no-op jobs beforehand (batches of 5,000)."""
    with JobQueue(dsn, max_connections=1) as queue:
        for start in range(0, jobs, 5000):
            queue.enqueue_many([NewJob(type, None)] * min(5000, jobs - start))


def left(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM svti_jobs WHERE type = %s", (TYPE,)).fetchone()
    assert row is not None
    return int(row[0])


# -- enqueue ---------------------------------------------------------------------------------

def enqueue_one(hs: Handshake, dsn: str, jobs: int, warmup: int) -> dict[str, Any]:
    with JobQueue(dsn) as queue:
        for _ in range(warmup):
            queue.enqueue(TYPE, PAYLOAD)
        hs.ready()
        started = time.perf_counter()
        for _ in range(jobs):
            queue.enqueue(TYPE, PAYLOAD)
        return {"seconds": time.perf_counter() - started}


async def aenqueue_one(hs: Handshake, dsn: str, jobs: int, warmup: int) -> dict[str, Any]:
    async with AsyncJobQueue(dsn) as queue:
        for _ in range(warmup):
            await queue.enqueue(TYPE, PAYLOAD)
        hs.ready()
        started = time.perf_counter()
        for _ in range(jobs):
            await queue.enqueue(TYPE, PAYLOAD)
        return {"seconds": time.perf_counter() - started}


def enqueue_batch(hs: Handshake, dsn: str, batches: int, size: int) -> dict[str, Any]:
    items = [NewJob(TYPE, PAYLOAD)] * size
    with JobQueue(dsn) as queue:
        queue.enqueue_many(items)
        hs.ready()
        started = time.perf_counter()
        for _ in range(batches):
            queue.enqueue_many(items)
        return {"seconds": time.perf_counter() - started}


async def aenqueue_batch(hs: Handshake, dsn: str, batches: int, size: int) -> dict[str, Any]:
    items = [NewJob(TYPE, PAYLOAD)] * size
    async with AsyncJobQueue(dsn) as queue:
        await queue.enqueue_many(items)
        hs.ready()
        started = time.perf_counter()
        for _ in range(batches):
            await queue.enqueue_many(items)
        return {"seconds": time.perf_counter() - started}


# -- the runner ------------------------------------------------------------------------------

async def drain(hs: Handshake, dsn: str, concurrency: int, types: list[str] | None = None,
                stop_after: int | None = None) -> dict[str, Any]:
    """Serve `types` until the queue is empty (or, with `stop_after`, until that many jobs
    were handled; the jobs then running finish and are acked before `serve` returns)."""
    queue = AsyncJobQueue(dsn)
    await queue.prepare()
    runner = create_task_runner(queue, concurrency=concurrency)
    handled = 0

    async def noop(payload: Any, ctx: Any) -> None:
        nonlocal handled
        handled += 1
        if handled == stop_after:
            runner.request_stop()

    for type in types or [TYPE]:
        runner.register(type, noop)
    hs.ready()
    await runner.serve(until_idle=stop_after is None)
    end = time.monotonic()
    await queue.close()
    return {"end": end, "handled": handled, "completed": runner.counters["completed"],
            "handed_back": runner.counters["handed_back"]}


async def latency_worker(hs: Handshake, dsn: str, count: int, warmup: int) -> dict[str, Any]:
    """One idle runner at concurrency 1."""
    queue = AsyncJobQueue(dsn)
    await queue.prepare()
    runner = create_task_runner(queue, concurrency=1)
    seen: list[float] = []

    async def ping(payload: Any, ctx: Any) -> None:
        seen.append(time.time() - payload["t"])
        if len(seen) == warmup + count:
            runner.request_stop()

    runner.register("ping", ping)
    hs.ready()
    await runner.serve()
    await queue.close()
    return {"latencies": seen[warmup:]}


def produce(hs: Handshake, dsn: str, *, count: int, warmup: int, spacing: float,
            settle: float) -> dict[str, Any]:
    """Enqueue through the sync API, `spacing` seconds apart."""
    calls: list[float] = []
    with JobQueue(dsn) as queue:
        queue.prepare()
        hs.ready()
        time.sleep(settle)
        for i in range(warmup + count):
            started = time.time()
            queue.enqueue("ping", {"t": started})
            if i >= warmup:
                calls.append(time.time() - started)
            time.sleep(spacing)
    return {"calls": calls}


async def aproduce(hs: Handshake, dsn: str, *, count: int, warmup: int, spacing: float,
                   settle: float) -> dict[str, Any]:
    """Enqueue through the async API, `spacing` seconds apart."""
    calls: list[float] = []
    async with AsyncJobQueue(dsn) as queue:
        await queue.prepare()
        hs.ready()
        await asyncio.sleep(settle)
        for i in range(warmup + count):
            started = time.time()
            await queue.enqueue("ping", {"t": started})
            if i >= warmup:
                calls.append(time.time() - started)
            await asyncio.sleep(spacing)
    return {"calls": calls}


# -- the soak --------------------------------------------------------------------------------

async def soak_worker(hs: Handshake, dsn: str, concurrency: int) -> dict[str, Any]:
    """A runner that serves until the parent says stop. Asked for a "sample", it sends the
    enqueue-to-start latencies (p50, p99, in ms) of the jobs it started since the last one:
    a summary, so the pipe never holds up the event loop."""
    queue = AsyncJobQueue(dsn)
    await queue.prepare()
    runner = create_task_runner(queue, concurrency=concurrency)
    seen: list[float] = []

    async def soak(payload: Any, ctx: Any) -> None:
        seen.append(time.time() - payload["t"])

    runner.register("soak", soak)
    hs.ready()
    serving = asyncio.create_task(runner.serve())
    while not serving.done():
        await asyncio.sleep(0.2)
        for request in hs.requests():
            if request == "sample":
                hs.send({"started": len(seen),
                         "p50_ms": percentile(seen, 50) * 1000 if seen else None,
                         "p99_ms": percentile(seen, 99) * 1000 if seen else None})
                seen.clear()
            elif request == "stop":
                runner.request_stop()
    await serving
    await queue.close()
    return {"completed": runner.counters["completed"]}


def soak_producer(hs: Handshake, dsn: str, rate: float, tick: float) -> dict[str, Any]:
    """Enqueue at `rate` jobs/s until the parent says stop: every `tick` seconds one
    `enqueue_many` of the jobs due by then, each stamped just before the call."""
    with JobQueue(dsn) as queue:
        queue.prepare()
        hs.ready()
        started = time.monotonic()
        sent = ticks = 0
        calls: list[float] = []
        while not hs.stop_requested():
            ticks += 1
            time.sleep(max(0.0, started + ticks * tick - time.monotonic()))  # none if behind
            due = int((time.monotonic() - started) * rate) - sent
            if due > 0:
                stamp = time.time()
                queue.enqueue_many([NewJob("soak", {"t": stamp})] * due)
                calls.append(time.time() - stamp)
                sent += due
        elapsed = time.monotonic() - started
    return {"enqueued": sent, "seconds": elapsed,
            "call_ms_p50": statistics.median(calls) * 1000 if calls else None,
            "call_ms_p99": percentile(calls, 99) * 1000 if calls else None}
