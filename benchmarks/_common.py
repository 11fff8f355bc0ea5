"""Shared pieces of the benchmark scripts: fresh databases, timers, the machine's load, the
server's settings and the versions in play, summaries, and measurements in child processes."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import inspect
import logging
import multiprocessing
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def server_dsn(arg: str | None) -> str:
    return arg or os.environ.get("JOBQ_BENCH_DSN") or os.environ.get("DATABASE_URL") or DEFAULT_DSN


def fresh_database(dsn: str, name: str, template: str | None = None) -> str:
    """An empty database (or a copy of `template`, file by file) named `name`; its DSN."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template is None:
            admin.execute(f'CREATE DATABASE "{name}"')
        else:
            # FILE_COPY copies the files after a checkpoint: a big template is copied in
            # seconds, where the default WAL_LOG strategy writes all of it to the WAL.
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    return make_conninfo(dsn, dbname=name)


def drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settle(dsn: str) -> None:
    """VACUUM ANALYZE the database, then CHECKPOINT, so that a measurement neither meets an
    autovacuum of the set-up's rows nor pays for flushing the set-up's dirty pages."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        # A role without pg_checkpoint gets noisier figures, not wrong ones.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")


SETTINGS = ("synchronous_commit", "fsync", "shared_buffers", "wal_buffers", "max_wal_size",
            "autovacuum", "autovacuum_naptime", "autovacuum_vacuum_scale_factor",
            "autovacuum_vacuum_insert_scale_factor", "jit")


def server_facts(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        facts = {"server": conn.execute("SHOW server_version").fetchone()[0]}  # type: ignore[index]
        for name in SETTINGS:
            facts[name] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
    facts["cpus"] = os.cpu_count()
    return facts


def versions() -> dict[str, str]:
    """The versions that make a figure: Python's and each driver's and peer's installed."""
    found = {"python": platform.python_version()}
    for package in ("jobq", "psycopg", "asyncpg", "pgqueuer", "procrastinate"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def load1() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile of `values` (p from 0 to 100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def spread(values: Iterable[float]) -> dict[str, Any]:
    """Median, min and max of a measurement's repetitions, and the values themselves."""
    kept = list(values)
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept),
            "values": kept}


def rate(count: int, fn: Callable[[], None], repeats: int = 3,
         reset: Callable[[], None] | None = None) -> float:
    """Median operations per second over `repeats` runs of `fn`, which does `count` ops."""
    rates = []
    for _ in range(repeats):
        if reset:
            reset()
        start = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def as_url(dsn: str) -> str:
    """A postgresql:// URL for drivers that take no key=value conninfo (asyncpg)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    auth = quote(str(parts.get("user", "")))
    if parts.get("password"):
        auth += ":" + quote(str(parts["password"]))
    host = parts.get("host", "localhost")
    return f"postgresql://{auth}@{host}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


# -- measurements in child processes -------------------------------------------------------
#
# Every measurement runs its workers (and its producer) in fresh processes, started with
# `spawn`, so no system inherits another's imports, heap or connections. A child prepares
# (imports its library, opens its connection, registers its handler), says it is ready, and
# waits for the word to go: the clock starts at that word, never during the set-up.


class Handshake:
    """The child's side of the pipe to the parent."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._stop = False

    def ready(self) -> None:
        """Say ready, then wait for the parent's go."""
        self._conn.send(("ready", None))
        if self._conn.recv() != "go":
            raise SystemExit("the parent did not say go")

    def send(self, data: Any) -> None:
        """Send the parent figures along the way (a soak's window of latencies)."""
        self._conn.send(("data", data))

    def requests(self) -> list[Any]:
        """What the parent asked since the last call, without waiting."""
        asked = []
        while self._conn.poll():
            asked.append(self._conn.recv())
        self._stop = self._stop or "stop" in asked
        return asked

    def stop_requested(self) -> bool:
        """Whether the parent asked this child to stop."""
        self.requests()
        return self._stop


def _child_main(target: str, kwargs: dict[str, Any], conn: Connection) -> None:
    logging.basicConfig(level=logging.WARNING)
    module, name = target.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
        result = fn(Handshake(conn), **kwargs)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        conn.send(("done", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


class Child:
    """One measurement process running `target` ("module:function") with `kwargs`."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.target = target
        self._conn, theirs = context.Pipe()
        self.process = context.Process(target=_child_main, args=(target, kwargs, theirs),
                                       daemon=True)
        self.process.start()
        theirs.close()
        self.data: list[Any] = []
        #: The child's last word, when it came while `poll_data` read its figures.
        self._ended: tuple[str, Any] | None = None

    def _take(self) -> tuple[str, Any]:
        """One message, which the pipe holds already."""
        try:
            kind, value = self._conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"{self.target} died (exit code "
                               f"{self.process.exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"{self.target} failed:\n{value}")
        return kind, value

    def _recv(self, timeout: float) -> tuple[str, Any]:
        """The next message other than figures along the way (those are kept in `data`)."""
        if self._ended is not None:
            return self._ended
        deadline = time.monotonic() + timeout
        while True:
            if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{self.target} said nothing for {timeout:.0f} s")
            kind, value = self._take()
            if kind != "data":
                return kind, value
            self.data.append(value)

    def wait_ready(self, timeout: float = 300) -> None:
        kind, _ = self._recv(timeout)
        if kind != "ready":
            raise RuntimeError(f"{self.target} ended before it was ready")

    def go(self) -> None:
        self._conn.send("go")

    def ask(self, request: str) -> None:
        """Send the child a request ("stop", or one its function knows)."""
        self._conn.send(request)

    def next_data(self, timeout: float = 60) -> Any:
        """The next figures the child sends along the way."""
        if not self.data:
            if not self._conn.poll(timeout):
                raise TimeoutError(f"{self.target} sent nothing for {timeout:.0f} s")
            kind, value = self._take()
            if kind != "data":
                self._ended = (kind, value)
                raise RuntimeError(f"{self.target} ended without sending figures")
            return value
        return self.data.pop(0)

    def result(self, timeout: float = 1800) -> Any:
        _, value = self._recv(timeout)
        self.process.join(30)
        return value

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


def run_together(children: list[Child], timeout: float = 1800) -> tuple[float, list[Any]]:
    """Start children that each say ready, say go to all at once, and wait for their
    results; returns the monotonic time of the go (system-wide on Linux, so it compares with
    the children's own clocks) and the results in order. Any failure kills them all."""
    try:
        for child in children:
            child.wait_ready()
        started = time.monotonic()
        for child in children:
            child.go()
        return started, [child.result(timeout) for child in children]
    finally:
        for child in children:
            child.kill()


# -- settings drained side by side (bench_limits, bench_metrics) ------------------------------

def fill_noop(dsn: str, jobs: int, job_type: str) -> None:
    """`jobs` jobs of one type, payload `{"tenant": "t0"…"t9"}`, enqueued in batches."""
    from jobq_core import JobQueue, NewJob  # the harness itself runs without jobq

    with JobQueue(dsn, max_connections=1) as queue:
        queue.migrate()
        for start in range(0, jobs, 5000):
            queue.enqueue_many([NewJob(job_type, {"tenant": f"t{n % 10}"})
                                for n in range(start, min(jobs, start + 5000))])


def interleaved(names: list[str], reps: int, measure: Callable[[str], dict[str, Any]],
                extra: Callable[[dict[str, Any]], str] = lambda figures: ""
                ) -> dict[str, list[dict[str, Any]]]:
    """Each setting measured `reps` times, the settings taking turns within a repetition and
    the first one rotating, so that a drift of the machine falls on all of them alike; a line
    printed per run, with the load average around it."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            figures = measure(name)
            runs[name].append(figures)
            print(f"rep {rep + 1} {name:8} {figures['jobs_per_s']:8.0f} jobs/s  "
                  f"{extra(figures)}load {figures['load1'][0]:.2f} -> "
                  f"{figures['load1'][1]:.2f}", flush=True)
    return runs


def summarize(runs: dict[str, list[dict[str, Any]]], base: str, heading: str
              ) -> dict[str, dict[str, Any]]:
    """Per setting: the median jobs/s, its range, and its ratio to `base`'s median; printed
    under `heading`."""
    base_median = statistics.median(r["jobs_per_s"] for r in runs[base])
    print(f"\n{heading}")
    summary: dict[str, dict[str, Any]] = {}
    for name, found in runs.items():
        values = [r["jobs_per_s"] for r in found]
        median = statistics.median(values)
        summary[name] = {"median": median, "min": min(values), "max": max(values),
                         "ratio": median / base_median}
        print(f"  {name:8} {median:8.0f} jobs/s  ({min(values):.0f}-{max(values):.0f})  "
              f"x{median / base_median:.3f}")
    return summary


#: The runners' slots in bench_limits and bench_metrics: the middle of bench_compare's.
NOOP_CONCURRENCY = 256


async def drain_noop(hs: Handshake, dsn: str, job_type: str, runner_options: dict[str, Any],
                     task_options: dict[str, Any]) -> dict[str, Any]:
    """In a child: a runner of `NOOP_CONCURRENCY` slots drains `job_type`'s no-op jobs until
    idle; when it ended, and how many it completed."""
    from jobq_core import AsyncJobQueue, create_task_runner

    queue = AsyncJobQueue(dsn)
    await queue.prepare()
    runner = create_task_runner(queue, concurrency=NOOP_CONCURRENCY, **runner_options)

    async def noop(payload: Any, ctx: Any) -> None:
        return None

    runner.register(job_type, noop, **task_options)
    hs.ready()
    await runner.serve(until_idle=True)
    end = time.monotonic()
    await queue.close()
    return {"end": end, "completed": runner.counters["completed"]}


def measure_drain(dsn: str, name: str, jobs: int, job_type: str, *,
                  children: Callable[[str], list[Child]],
                  during: Callable[[], contextlib.AbstractContextManager[dict[str, Any]]]
                  = lambda: contextlib.nullcontext({})) -> dict[str, Any]:
    """One drain on a fresh database `name`, filled with `jobs` no-op jobs and settled: the
    children made for it start together and drain; jobs/s from the start to the last end,
    the load average around it, and what `during` (around the drain) adds to the figures."""
    db = fresh_database(dsn, name)
    try:
        fill_noop(db, jobs, job_type)
        settle(db)
        before = load1()
        with during() as extra:
            started, results = run_together(children(db))
        seconds = max(r["end"] for r in results) - started
        completed = sum(r["completed"] for r in results)
        assert completed == jobs, (name, completed)
        return {"jobs_per_s": jobs / seconds, "seconds": seconds, **extra,
                "load1": [before, load1()]}
    finally:
        drop_database(dsn, name)
