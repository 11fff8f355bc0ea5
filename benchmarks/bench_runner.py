"""Task runners side by side: jobq, PgQueuer and Procrastinate on one server, in one run.

Two figures for each system:
- **drain**: N no-op jobs enqueued beforehand; jobs/s from worker start until the queue is
  empty, one worker process. Several configurations each; the best is compared.
- **latency**: one idle worker; jobs enqueued 20 ms apart; enqueue-to-start is the time from
  just before the enqueue call to the handler's first line, p50 and p99.

    python -m benchmarks.bench_runner [--dsn DSN] [--jobs 20000] [--latency-jobs 250]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._common import as_url, fresh_database, server_dsn, server_facts
from jobq_core import AsyncJobQueue, NewJob, create_task_runner

SPACING = 0.020


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


#: How long each producer's enqueue call took; its commit is part of every latency figure.
ENQUEUE_CALLS: dict[str, list[float]] = {}


async def produce(name: str, enqueue: Callable[[float], Awaitable[Any]], count: int) -> None:
    calls = ENQUEUE_CALLS.setdefault(name, [])
    for _ in range(count):
        started = time.time()
        await enqueue(started)
        calls.append(time.time() - started)
        await asyncio.sleep(SPACING)


# -- jobq --------------------------------------------------------------------------------------

async def jobq_drain(dsn: str, jobs: int, concurrency: int) -> float:
    queue = AsyncJobQueue(dsn, max_connections=4)
    for start in range(0, jobs, 5000):
        await queue.enqueue_many([NewJob("noop", None)] * min(5000, jobs - start))
    runner = create_task_runner(queue, concurrency=concurrency)

    @runner.task("noop")
    async def noop(payload: Any, ctx: Any) -> None:
        return None

    started = time.perf_counter()
    await runner.serve(until_idle=True)
    elapsed = time.perf_counter() - started
    assert runner.counters["completed"] == jobs, runner.counters
    await queue.close()
    return jobs / elapsed


async def jobq_latency(dsn: str, count: int) -> list[float]:
    queue = AsyncJobQueue(dsn, max_connections=4)
    await queue.migrate()
    runner = create_task_runner(queue, concurrency=4)
    seen: list[float] = []

    @runner.task("ping")
    async def ping(payload: Any, ctx: Any) -> None:
        seen.append(time.time() - payload)

    serving = asyncio.create_task(runner.serve())
    await asyncio.sleep(1)
    await produce("jobq", lambda t: queue.enqueue("ping", t), count)
    while len(seen) < count:
        await asyncio.sleep(0.05)
    runner.request_stop()
    await serving
    await queue.close()
    return seen


# -- PgQueuer ----------------------------------------------------------------------------------

async def _pgqueuer_setup(dsn: str, driver_kind: str, install: bool = True) -> tuple[Any, Any]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, PsycopgDriver, Queries

    if driver_kind == "asyncpg":
        driver: Any = AsyncpgDriver(await asyncpg.connect(as_url(dsn)))
    else:
        driver = PsycopgDriver(await psycopg.AsyncConnection.connect(dsn, autocommit=True))
    queries = Queries(driver)
    if install:
        await queries.install()
    return driver, queries


async def pgqueuer_drain(dsn: str, jobs: int, batch_size: int, driver_kind: str) -> float:
    from pgqueuer import QueueManager
    from pgqueuer.types import QueueExecutionMode

    _, queries = await _pgqueuer_setup(dsn, driver_kind)
    for start in range(0, jobs, 5000):
        n = min(5000, jobs - start)
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
    qm = QueueManager(queries)
    done = 0

    @qm.entrypoint("noop")
    async def noop(job: Any) -> None:
        nonlocal done
        done += 1

    started = time.perf_counter()
    await qm.run(mode=QueueExecutionMode.drain, batch_size=batch_size,
                 dequeue_timeout=timedelta(seconds=1))
    elapsed = time.perf_counter() - started
    assert done == jobs, done
    return jobs / elapsed


async def pgqueuer_latency(dsn: str, count: int, driver_kind: str) -> list[float]:
    from pgqueuer import QueueManager

    _, queries = await _pgqueuer_setup(dsn, driver_kind)
    _, producer_queries = await _pgqueuer_setup(dsn, driver_kind, install=False)
    qm = QueueManager(queries)
    seen: list[float] = []

    @qm.entrypoint("ping")
    async def ping(job: Any) -> None:
        seen.append(time.time() - float(job.payload))

    serving = asyncio.create_task(qm.run())
    await asyncio.sleep(1)
    await produce("PgQueuer",
                  lambda t: producer_queries.enqueue(["ping"], [str(t).encode()], [0]), count)
    while len(seen) < count:
        await asyncio.sleep(0.05)
    qm.shutdown.set()
    await serving
    return seen


# -- Procrastinate -----------------------------------------------------------------------------

async def _procrastinate_app(dsn: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    await app.open_async()
    await app.schema_manager.apply_schema_async()
    return app


async def procrastinate_drain(dsn: str, jobs: int, concurrency: int) -> float:
    app = await _procrastinate_app(dsn)

    @app.task(name="noop", queue="bench")
    async def noop() -> None:
        return None

    for start in range(0, jobs, 5000):
        await noop.batch_defer_async(*[{}] * min(5000, jobs - start))
    started = time.perf_counter()
    await app.run_worker_async(queues=["bench"], concurrency=concurrency, wait=False,
                               install_signal_handlers=False)
    elapsed = time.perf_counter() - started
    async with app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
        left = await (await conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'")).fetchone()
    assert left[0] == 0, left
    await app.close_async()
    return jobs / elapsed


async def procrastinate_latency(dsn: str, count: int) -> list[float]:
    app = await _procrastinate_app(dsn)
    seen: list[float] = []

    @app.task(name="ping", queue="lat")
    async def ping(t: float) -> None:
        seen.append(time.time() - t)

    serving = asyncio.create_task(app.run_worker_async(
        queues=["lat"], concurrency=4, install_signal_handlers=False))
    await asyncio.sleep(1)
    await produce("Procrastinate", lambda t: ping.defer_async(t=t), count)
    while len(seen) < count:
        await asyncio.sleep(0.05)
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await app.close_async()
    return seen


# -- the run -----------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = server_dsn(args.dsn)
    n = args.jobs
    drains: dict[str, dict[str, float]] = {"jobq": {}, "PgQueuer": {}, "Procrastinate": {}}
    for concurrency in (16, 64, 256, 1024):
        drains["jobq"][f"concurrency {concurrency}"] = await jobq_drain(
            fresh_database(server, "bench_jobq"), n, concurrency)
    for driver in ("asyncpg", "psycopg"):
        for batch in (10, 50, 100, 250, 500):
            drains["PgQueuer"][f"{driver}, batch {batch}"] = await pgqueuer_drain(
                fresh_database(server, "bench_pgqueuer"), n, batch, driver)
    for concurrency in (1, 10, 50):
        drains["Procrastinate"][f"concurrency {concurrency}"] = await procrastinate_drain(
            fresh_database(server, "bench_procrastinate"), min(n, 5000), concurrency)
    latencies = {
        "jobq": await jobq_latency(fresh_database(server, "bench_jobq"), args.latency_jobs),
        "PgQueuer": await pgqueuer_latency(
            fresh_database(server, "bench_pgqueuer"), args.latency_jobs, "asyncpg"),
        "Procrastinate": await procrastinate_latency(
            fresh_database(server, "bench_procrastinate"), args.latency_jobs),
    }
    return {"server": server_facts(server), "jobs": n, "drain": drains,
            "latency_ms": {k: {"p50": percentile(v, 50) * 1000, "p99": percentile(v, 99) * 1000,
                               "enqueue_call_p50": percentile(ENQUEUE_CALLS[k], 50) * 1000}
                           for k, v in latencies.items()}}


def report(figures: dict[str, Any]) -> None:
    facts = figures["server"]
    print(f"server: PostgreSQL {facts['server']}, synchronous_commit={facts['synchronous_commit']}"
          f", {facts['cpus']} CPUs; drain of {figures['jobs']:,} no-op jobs")
    best = {name: max(configs.values()) for name, configs in figures["drain"].items()}
    for name, configs in figures["drain"].items():
        for config, value in configs.items():
            print(f"  drain  {name:<14}{config:<22}{value:>10,.0f} jobs/s")
    print(f"  drain, best against best: jobq / PgQueuer = {best['jobq'] / best['PgQueuer']:.2f}, "
          f"jobq / Procrastinate = {best['jobq'] / best['Procrastinate']:.2f}")
    for name, lat in figures["latency_ms"].items():
        print(f"  enqueue-to-start {name:<14} p50 {lat['p50']:6.2f} ms   p99 {lat['p99']:6.2f} ms"
              f"   (of which the enqueue call, p50 {lat['enqueue_call_p50']:5.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--latency-jobs", type=int, default=250)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    figures = asyncio.run(run(args))
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
