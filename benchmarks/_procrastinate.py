"""Procrastinate in the benchmarks: its psycopg connector, async tasks, and its worker, whose
setting is its concurrency (the default is 1; a sweep finds its best). Completed jobs stay in
its table with status `succeeded` (its default)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks._common import Handshake

NAME = "Procrastinate"
PAYLOAD = {"to": "alice@example.com", "template": "welcome"}


def _app(dsn: str, on_job: Any = None) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop", queue="bench")
    async def noop(**payload: Any) -> None:
        if on_job is not None:
            on_job(payload)

    @app.task(name="ping", queue="ping")
    async def ping(t: float) -> None:
        if on_job is not None:
            on_job(t)

    return app


def install(dsn: str) -> None:
    async def go() -> None:
        async with _app(dsn).open_async() as app:
            await app.schema_manager.apply_schema_async()

    asyncio.run(go())


def fill(dsn: str, jobs: int) -> None:
    async def go() -> None:
        async with _app(dsn).open_async() as app:
            task = app.tasks["noop"]
            for start in range(0, jobs, 5000):
                await task.batch_defer_async(*[{}] * min(5000, jobs - start))

    asyncio.run(go())


def left(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'").fetchone()
    assert row is not None
    return int(row[0])


async def enqueue_one(hs: Handshake, dsn: str, jobs: int, warmup: int) -> dict[str, Any]:
    async with _app(dsn).open_async() as app:
        task = app.tasks["noop"]
        for _ in range(warmup):
            await task.defer_async(**PAYLOAD)
        hs.ready()
        started = time.perf_counter()
        for _ in range(jobs):
            await task.defer_async(**PAYLOAD)
        return {"seconds": time.perf_counter() - started}


async def enqueue_batch(hs: Handshake, dsn: str, batches: int, size: int) -> dict[str, Any]:
    async with _app(dsn).open_async() as app:
        task = app.tasks["noop"]
        items = [PAYLOAD] * size
        await task.batch_defer_async(*items)
        hs.ready()
        started = time.perf_counter()
        for _ in range(batches):
            await task.batch_defer_async(*items)
        return {"seconds": time.perf_counter() - started}


async def drain(hs: Handshake, dsn: str, concurrency: int) -> dict[str, Any]:
    handled = 0

    def count(_: Any) -> None:
        nonlocal handled
        handled += 1

    async with _app(dsn, count).open_async() as app:
        hs.ready()
        await app.run_worker_async(queues=["bench"], concurrency=concurrency, wait=False,
                                   install_signal_handlers=False)
        return {"end": time.monotonic(), "handled": handled, "completed": handled}


async def latency_worker(hs: Handshake, dsn: str, count: int, warmup: int) -> dict[str, Any]:
    """One idle worker at concurrency 1, woken by its LISTEN."""
    seen: list[float] = []
    enough = asyncio.Event()

    def note(t: float) -> None:
        seen.append(time.time() - t)
        if len(seen) == warmup + count:
            enough.set()

    async with _app(dsn, note).open_async() as app:
        hs.ready()
        worker = asyncio.create_task(app.run_worker_async(
            queues=["ping"], concurrency=1, install_signal_handlers=False))
        await enough.wait()
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    return {"latencies": seen[warmup:]}


async def produce(hs: Handshake, dsn: str, *, count: int, warmup: int, spacing: float,
                  settle: float) -> dict[str, Any]:
    calls: list[float] = []
    async with _app(dsn).open_async() as app:
        task = app.tasks["ping"]
        hs.ready()
        await asyncio.sleep(settle)
        for i in range(warmup + count):
            started = time.time()
            await task.defer_async(t=started)
            if i >= warmup:
                calls.append(time.time() - started)
            await asyncio.sleep(spacing)
    return {"calls": calls}
