"""PgQueuer in the benchmarks, on the asyncpg driver (one connection per process, as its docs
and its `pgq` CLI set it up). Its only setting that moves throughput is the batch size of its
dequeue: the default is 10 (`QueueManager.run`, `pgq run`), and a sweep finds its best. Jobs
of an entrypoint run without a concurrency limit (its default)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from benchmarks._common import Handshake, as_url

NAME = "PgQueuer"
DEFAULT_BATCH = 10
PAYLOAD = b'{"to": "alice@example.com", "template": "welcome"}'


async def _connect(dsn: str) -> Any:
    import asyncpg

    return await asyncpg.connect(as_url(dsn))


async def _queries(dsn: str, connection: Any = None) -> Any:
    from pgqueuer import AsyncpgDriver, Queries

    return Queries(AsyncpgDriver(connection or await _connect(dsn)))


def install(dsn: str) -> None:
    async def go() -> None:
        connection = await _connect(dsn)
        await (await _queries(dsn, connection)).install()
        await connection.close()

    asyncio.run(go())


def fill(dsn: str, jobs: int) -> None:
    async def go() -> None:
        connection = await _connect(dsn)
        queries = await _queries(dsn, connection)
        for start in range(0, jobs, 5000):
            n = min(5000, jobs - start)
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        await connection.close()

    asyncio.run(go())


def left(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
    assert row is not None
    return int(row[0])


async def enqueue_one(hs: Handshake, dsn: str, jobs: int, warmup: int) -> dict[str, Any]:
    queries = await _queries(dsn)
    for _ in range(warmup):
        await queries.enqueue("noop", PAYLOAD)
    hs.ready()
    started = time.perf_counter()
    for _ in range(jobs):
        await queries.enqueue("noop", PAYLOAD)
    return {"seconds": time.perf_counter() - started}


async def enqueue_batch(hs: Handshake, dsn: str, batches: int, size: int) -> dict[str, Any]:
    queries = await _queries(dsn)
    names, payloads, priorities = ["noop"] * size, [PAYLOAD] * size, [0] * size
    await queries.enqueue(names, payloads, priorities)
    hs.ready()
    started = time.perf_counter()
    for _ in range(batches):
        await queries.enqueue(names, payloads, priorities)
    return {"seconds": time.perf_counter() - started}


async def drain(hs: Handshake, dsn: str, batch: int) -> dict[str, Any]:
    from pgqueuer import QueueManager
    from pgqueuer.types import QueueExecutionMode

    qm = QueueManager(await _queries(dsn))
    handled = 0

    @qm.entrypoint("noop")
    async def noop(job: Any) -> None:
        nonlocal handled
        handled += 1

    hs.ready()
    await qm.run(mode=QueueExecutionMode.drain, batch_size=batch)
    return {"end": time.monotonic(), "handled": handled, "completed": handled}


async def latency_worker(hs: Handshake, dsn: str, count: int, warmup: int) -> dict[str, Any]:
    """One idle worker taking one job per dequeue (batch size 1)."""
    from pgqueuer import QueueManager

    qm = QueueManager(await _queries(dsn))
    seen: list[float] = []

    @qm.entrypoint("ping")
    async def ping(job: Any) -> None:
        seen.append(time.time() - json.loads(job.payload)["t"])
        if len(seen) == warmup + count:
            qm.shutdown.set()

    hs.ready()
    await qm.run(batch_size=1)
    return {"latencies": seen[warmup:]}


async def produce(hs: Handshake, dsn: str, *, count: int, warmup: int, spacing: float,
                  settle: float) -> dict[str, Any]:
    queries = await _queries(dsn)
    calls: list[float] = []
    hs.ready()
    await asyncio.sleep(settle)
    for i in range(warmup + count):
        started = time.time()
        await queries.enqueue("ping", json.dumps({"t": started}).encode())
        if i >= warmup:
            calls.append(time.time() - started)
        await asyncio.sleep(spacing)
    return {"calls": calls}
