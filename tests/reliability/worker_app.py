"""The task runner the fault suite runs under `jobq worker tests.reliability.worker_app:build`.

Configured by environment variables (see `WorkerConfig`), so one module serves every scenario.
Each execution of a handler is written to an execution-log table on a cheap connection of the
handler's own thread or process, before the handler does its work, so that executions are
counted even for a worker that is killed with SIGKILL a moment later.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from jobq_core import AsyncJobQueue, JobQueue, TaskRunner, create_task_runner

#: The handler's execution log; `harness.prepare_database` creates it.
EXEC_LOG = "reli_exec"
#: The kind of the log row a handler writes as it ends, with `record_end`.
END = "end"
WORK = "work"
CHILD = "child"
#: Handlers never fail by themselves: every attempt beyond the first is a fault's doing.
MAX_ATTEMPTS = 100


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def _number(value: str | None) -> int | None:
    return int(value) if value else None


@dataclass(frozen=True)
class WorkerConfig:
    dsn: str
    log_dsn: str
    table: str = "svti_jobs"
    concurrency: int = 4
    notify: bool = True
    pgbouncer: bool = False
    executor: str = "thread"
    sleep_ms: int = 0
    lease_ms: int = 2000
    task_lease_ms: int | None = None
    queue_kind: str = "sync"
    poll_interval: float = 0.5
    shutdown_timeout: float = 2.0
    worker_label: str = "w?"
    health_file: str | None = None
    durable_log: bool = False
    #: The work type's limits (`jobq_core.limits`): a key limit reads the payload's
    #: "tenant"; with `record_end`, handlers log their end too, for overlap checks.
    global_concurrency: int | None = None
    key_concurrency: int | None = None
    rate_limit: str | None = None
    rate_burst: int | None = None
    key_rate_limit: str | None = None
    key_rate_burst: int | None = None
    record_end: bool = False

    @classmethod
    def from_env(cls) -> WorkerConfig:
        env = os.environ
        dsn = env["RELI_DSN"]
        task_lease = env.get("RELI_TASK_LEASE_MS")
        return cls(
            dsn=dsn,
            log_dsn=env.get("RELI_LOG_DSN") or dsn,
            table=env.get("RELI_TABLE", "svti_jobs"),
            concurrency=int(env.get("RELI_CONCURRENCY", "4")),
            notify=_flag("RELI_NOTIFY", True),
            pgbouncer=_flag("RELI_PGBOUNCER", False),
            executor=env.get("RELI_EXECUTOR", "thread"),
            sleep_ms=int(env.get("RELI_SLEEP_MS", "0")),
            lease_ms=int(env.get("RELI_LEASE_MS", "2000")),
            task_lease_ms=int(task_lease) if task_lease else None,
            queue_kind=env.get("RELI_QUEUE", "sync"),
            poll_interval=float(env.get("RELI_POLL_INTERVAL", "0.5")),
            shutdown_timeout=float(env.get("RELI_SHUTDOWN_TIMEOUT", "2")),
            worker_label=env.get("RELI_WORKER", "w?"),
            health_file=env.get("RELI_HEALTH_FILE") or None,
            durable_log=_flag("RELI_DURABLE_LOG", False),
            global_concurrency=_number(env.get("RELI_GLOBAL_CONCURRENCY")),
            key_concurrency=_number(env.get("RELI_KEY_CONCURRENCY")),
            rate_limit=env.get("RELI_RATE_LIMIT") or None,
            rate_burst=_number(env.get("RELI_RATE_BURST")),
            key_rate_limit=env.get("RELI_KEY_RATE_LIMIT") or None,
            key_rate_burst=_number(env.get("RELI_KEY_RATE_BURST")),
            record_end=_flag("RELI_RECORD_END", False),
        )


# -- the execution log ------------------------------------------------------------------------

_local = threading.local()
#: How long a handler keeps trying to write its log row while the database is away (s).
LOG_RETRY_FOR = 60.0


def _log_connection(config: WorkerConfig) -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is not None and not conn.closed and not conn.broken:
        return conn
    sync = "on" if config.durable_log else "off"
    conn = psycopg.connect(
        config.log_dsn, autocommit=True, application_name="reli-log", connect_timeout=5,
        options=f"-c synchronous_commit={sync} -c statement_timeout=0 -c lock_timeout=0")
    _local.conn = conn
    return conn


def record_execution(config: WorkerConfig, job_id: int, attempt: int, kind: str) -> None:
    """One row per execution; retried while the database is unreachable (restarts)."""
    deadline = time.monotonic() + LOG_RETRY_FOR
    while True:
        try:
            _log_connection(config).execute(
                f"INSERT INTO {EXEC_LOG} (job_id, attempt, pid, worker, kind) "
                "VALUES (%s, %s, %s, %s, %s)",
                (job_id, attempt, os.getpid(), config.worker_label, kind))
            return
        except psycopg.Error:
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- the handlers -------------------------------------------------------------------------------

@functools.cache
def config() -> WorkerConfig:
    return WorkerConfig.from_env()


def _pause(payload: Any, ctx: Any) -> None:
    ms = payload.get("sleep_ms", config().sleep_ms) if isinstance(payload, dict) else 0
    deadline = time.monotonic() + ms / 1000
    while time.monotonic() < deadline and not ctx.cancelled.is_set():
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))


def work(payload: Any, ctx: Any) -> Any:
    """Thread and process handler: log, sleep, maybe enqueue follow-ups (`ctx.enqueue`)."""
    record_execution(config(), ctx.job.id, ctx.attempt, WORK)
    try:
        _pause(payload, ctx)
    finally:
        if config().record_end:
            record_execution(config(), ctx.job.id, ctx.attempt, END)
    spawned = [ctx.enqueue(CHILD, {"parent": ctx.job.id, "n": n})
               for n in range(payload.get("spawn", 0) if isinstance(payload, dict) else 0)]
    return {"pid": os.getpid(), "spawned": spawned}


async def work_async(payload: Any, ctx: Any) -> Any:
    """The async twin of `work`, for `executor=async`."""
    await asyncio.to_thread(record_execution, config(), ctx.job.id, ctx.attempt, WORK)
    ms = payload.get("sleep_ms", config().sleep_ms) if isinstance(payload, dict) else 0
    try:
        await asyncio.sleep(ms / 1000)
    finally:
        if config().record_end:  # cancelled too: a lost lease stops the handler here
            await asyncio.shield(asyncio.to_thread(
                record_execution, config(), ctx.job.id, ctx.attempt, END))
    spawned = [await ctx.aenqueue(CHILD, {"parent": ctx.job.id, "n": n})
               for n in range(payload.get("spawn", 0) if isinstance(payload, dict) else 0)]
    return {"pid": os.getpid(), "spawned": spawned}


def child(payload: Any, ctx: Any) -> Any:
    record_execution(config(), ctx.job.id, ctx.attempt, CHILD)
    return {"parent": payload.get("parent") if isinstance(payload, dict) else None}


# -- the factory --------------------------------------------------------------------------------

def _supports(option: str) -> bool:
    return option in inspect.signature(TaskRunner.__init__).parameters


def build() -> TaskRunner:
    """The runner `jobq worker tests.reliability.worker_app:build` serves."""
    cfg = config()
    queue: JobQueue | AsyncJobQueue
    if cfg.queue_kind == "async":
        queue = AsyncJobQueue(cfg.dsn, table=cfg.table, pgbouncer=cfg.pgbouncer,
                              default_lease_ms=cfg.lease_ms)
    else:
        queue = JobQueue(cfg.dsn, table=cfg.table, pgbouncer=cfg.pgbouncer,
                         default_lease_ms=cfg.lease_ms)
    options: dict[str, Any] = {}
    if cfg.health_file and _supports("health_file"):
        options["health_file"] = cfg.health_file
    runner = create_task_runner(
        queue, concurrency=cfg.concurrency, notify=cfg.notify, lease_ms=cfg.lease_ms,
        poll_interval=cfg.poll_interval, shutdown_timeout=cfg.shutdown_timeout,
        worker_name=f"reli-{cfg.worker_label}:{os.getpid()}", **options)
    limits: dict[str, Any] = {
        "global_concurrency": cfg.global_concurrency, "rate_limit": cfg.rate_limit,
        "rate_burst": cfg.rate_burst}
    if cfg.key_concurrency is not None or cfg.key_rate_limit is not None:
        limits |= {"key_concurrency": cfg.key_concurrency, "concurrency_key": "tenant",
                   "key_rate_limit": cfg.key_rate_limit, "key_rate_burst": cfg.key_rate_burst}
    if cfg.executor == "async":
        runner.register(WORK, work_async, max_attempts=MAX_ATTEMPTS,
                        lease_ms=cfg.task_lease_ms, **limits)
    else:
        runner.register(WORK, work, executor=cfg.executor,  # type: ignore[arg-type]
                        max_attempts=MAX_ATTEMPTS, lease_ms=cfg.task_lease_ms, **limits)
    runner.register(CHILD, child, max_attempts=MAX_ATTEMPTS)
    return runner
