"""The job queue: `JobQueue` and its async twin `AsyncJobQueue`.

Both drive the same operations (`jobq_core._ops`) with the same SQL (`jobq_core.sql`); only the
I/O differs. Complete, fail and extend are fenced by the lease token in the `Job` a claim
returned: once a lease is lost, its holder gets `LeaseLostError` and the row is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Self, TypedDict, TypeVar, Unpack

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from . import _ops, dsn, schema
from ._ops import Op, Pause, Steps
from ._twins import share_docstrings
from .durations import parse_duration
from .errors import (
    DRIVER_ERRORS,
    DatabaseError,
    InvalidInputError,
    JobqError,
    PermissionDeniedError,
    PoolExhaustedError,
    classify,
)
from .limits import KeyOf, Limits
from .models import Job, NewJob, job_list, load_json, validate_lease_ms
from .schedules import Schedule
from .sql import PAYLOAD_BYTES, Names, Statements

T = TypeVar("T")

APPLICATION_NAME = "jobq"
#: Seconds to wait for a connection before `DatabaseUnavailableError`.
CONNECT_TIMEOUT = 10.0

SyncTarget = str | psycopg.Connection[Any] | ConnectionPool
AsyncTarget = str | psycopg.AsyncConnection[Any] | AsyncConnectionPool


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_broken(conn: Any) -> bool:
    return conn is not None and bool(conn.broken or conn.closed)


def _pool_is_full(pool: ConnectionPool | AsyncConnectionPool) -> bool:
    """Whether every connection the pool may open is open and lent out."""
    stats = pool.get_stats()
    return stats["pool_size"] >= pool.max_size and stats["pool_available"] == 0


def _why_no_connection(exc: BaseException, full: bool, probe: BaseException | None,
                       max_size: int) -> JobqError:
    """A pool timeout, told apart: a full pool on a live server, a server that refuses the
    connection's settings (PgBouncer and startup options), or a database that is down."""
    if full or probe is None:
        return PoolExhaustedError(
            f"all {max_size} connections of the queue's pool stayed busy for "
            f"{CONNECT_TIMEOUT:.0f} s while the server answered; raise max_connections or do "
            "less at once")
    text = " ".join(str(probe).split())
    if "unsupported startup parameter" in text:
        return DatabaseError(
            f"the server refused the connection: {text}; behind PgBouncer in transaction "
            "mode, build the queue with pgbouncer=True", getattr(probe, "sqlstate", None))
    if dsn.refused_option(text):
        return InvalidInputError(f"invalid connection string: {text}")
    return classify(probe) if not isinstance(probe, PoolTimeout) else classify(exc)


log = logging.getLogger("jobq.queue")
_EARLY_FAILED = "could not build the upgrade's indexes concurrently (%s); the migration builds them"


def _pool_kwargs(conninfo: str | None, pgbouncer: bool) -> dict[str, Any]:
    """The queue's own connection settings, added to the user's and never replacing them:
    their `options` (search_path, statement_timeout, ...), application_name and
    connect_timeout, from the DSN or libpq's PGOPTIONS / PGAPPNAME, are kept."""
    given = conninfo_to_dict(conninfo) if conninfo else {}  # checked by the queue already
    kwargs: dict[str, Any] = {"autocommit": True}
    if "application_name" not in given and "PGAPPNAME" not in os.environ:
        kwargs["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in given and "PGCONNECT_TIMEOUT" not in os.environ:
        kwargs["connect_timeout"] = int(CONNECT_TIMEOUT)
    if pgbouncer:
        # Transaction pooling: no server-side prepared statements, no startup options.
        kwargs["prepare_threshold"] = None
    else:
        # Generic plans: the claim is measured ~40% cheaper than when re-planned every call.
        theirs = str(given.get("options") or os.environ.get("PGOPTIONS", ""))
        kwargs["options"] = f"{theirs} -c plan_cache_mode=force_generic_plan".strip()
    return kwargs


PoolT = TypeVar("PoolT", ConnectionPool[Any], AsyncConnectionPool[Any])
ConnT = TypeVar("ConnT", psycopg.Connection[Any], psycopg.AsyncConnection[Any])


class EnqueueOptions(TypedDict, total=False):
    """The keyword options of `JobQueue.enqueue`, for helpers that pass them through."""

    run_at: datetime | timedelta | None
    priority: int
    idempotency_key: str | None
    request_id: str | None
    concurrency_key: str | None


class QueueOptions(TypedDict, total=False):
    """The options of `JobQueue`, `AsyncJobQueue` and their `create_` functions."""

    table: str
    default_lease_ms: int
    max_connections: int
    pgbouncer: bool
    auto_migrate: bool
    history_payload_bytes: int


class _QueueCore(Generic[PoolT, ConnT]):
    """What both twins share: the constructor, names, statements, defaults and the operations
    they build. A twin names its pool and connection types and starts its own lock and
    listener (`_start`)."""

    _pool_type: type[PoolT]
    _conn_type: type[ConnT]

    def __init__(
        self, target: str | PoolT | ConnT, *, table: str = "svti_jobs",
        default_lease_ms: int = 30_000, max_connections: int = 10, pgbouncer: bool = False,
        auto_migrate: bool = True, history_payload_bytes: int = PAYLOAD_BYTES,
    ) -> None:
        conninfo = _conninfo_of(target)
        #: Whether the first writing call creates or migrates the tables (reads never do).
        self.auto_migrate = auto_migrate
        if (not isinstance(history_payload_bytes, int) or isinstance(history_payload_bytes, bool)
                or not 0 <= history_payload_bytes <= 2**30):
            raise InvalidInputError("history_payload_bytes must be an int from 0 to 2**30, got "
                                    f"{history_payload_bytes!r}")
        self.statements = Statements(Names.parse(table), history_payload_bytes)
        if conninfo:
            dsn.check(conninfo)
        self.default_lease_ms = validate_lease_ms(default_lease_ms, "default_lease_ms")
        #: Where a listener connects for LISTEN; None when built on a bare connection.
        self.conninfo = conninfo
        self._ready = False
        #: Advanced by every claim: the claimed types take turns to come first (fairness).
        self._turns = itertools.count()
        #: The concurrency-key functions of the tasks registered on runners of this queue,
        #: by type: an enqueue without a key gets its key from them.
        self.key_functions: dict[str, KeyOf] = {}
        self.pgbouncer = pgbouncer
        self._conn: ConnT | None = None
        self._pool: PoolT | None = None
        self._owns_pool = isinstance(target, str)
        self._pool_opened = False
        if isinstance(target, str):
            self._pool = self._pool_type(
                target, configure=self._configure,
                **self._pool_args(max_connections, pgbouncer))
        elif isinstance(target, self._pool_type):
            self._pool = target
        elif isinstance(target, self._conn_type):
            self._conn = target
        else:
            raise TypeError(f"target must be a DSN, a psycopg {self._conn_type.__name__} "
                            f"or a pool ({self._pool_type.__name__})")
        self._start()

    def _configure(self, conn: Any) -> Any:
        """How the queue's own pool sets up a new connection."""
        raise NotImplementedError

    def _start(self) -> None:
        """Create the twin's lock and its done listener."""
        raise NotImplementedError

    @property
    def names(self) -> Names:
        """The queue's names; schema-qualified and with channels once first use resolved them."""
        return self.statements.names

    @property
    def table(self) -> str:
        return self.names.display

    @property
    def prepared(self) -> bool:
        """Whether first use (`prepare`) is done."""
        return self._ready

    @property
    def max_connections(self) -> int:
        """How many connections the queue may use at once (1 on a bare connection)."""
        return self._pool.max_size if self._pool is not None else 1

    @property
    def listens(self) -> bool:
        """Whether LISTEN can work: a DSN to connect with, and no PgBouncer in between."""
        return self.conninfo is not None and not self.pgbouncer

    def _pool_args(self, max_connections: int, pgbouncer: bool) -> dict[str, Any]:
        """The arguments of the pool a queue builds for itself from a DSN."""
        return {"min_size": 1, "max_size": max_connections,
                "kwargs": _pool_kwargs(self.conninfo, pgbouncer),
                "open": False, "timeout": CONNECT_TIMEOUT, "name": f"jobq:{self.names.display}"}

    def _direct_kwargs(self) -> dict[str, Any] | None:
        """Settings for a connection of the queue's own outside its pool, with the user's
        options; None when it cannot have one (no DSN) or must not hold a session lock
        (PgBouncer)."""
        if self.conninfo is None or self.pgbouncer:
            return None
        return _pool_kwargs(self.conninfo, False)

    def _probe(self) -> tuple[str, dict[str, Any]] | None:
        """When the pool had no connection to give: where one direct attempt can name the
        real cause, which the pool only logs; None if the pool was full, or cannot say."""
        assert self._pool is not None
        kwargs = self._pool.kwargs
        if (_pool_is_full(self._pool) or not isinstance(self._pool.conninfo, str)
                or not isinstance(kwargs, dict)):
            return None
        return self._pool.conninfo, {**kwargs, "connect_timeout": 5}

    def _why_no_connection(self, exc: PoolTimeout, probe: BaseException | None) -> JobqError:
        assert self._pool is not None
        return _why_no_connection(exc, _pool_is_full(self._pool), probe, self._pool.max_size)

    def _claim_op(
        self, limit: int, types: object, lease_ms: int | None, worker: str | None
    ) -> Op[list[Job]]:
        return _ops.claim_many(
            self.statements, limit, types,
            self.default_lease_ms if lease_ms is None else lease_ms,
            worker or default_worker_name(), turn=next(self._turns),
        )

    def _enqueue_op(
        self, type: str, *, payload: Any, run_at: datetime | timedelta | None, priority: int,
        idempotency_key: str | None, request_id: str | None, concurrency_key: str | None,
    ) -> Op[int]:
        item = NewJob(type, payload, run_at, priority, idempotency_key, request_id,
                      concurrency_key)
        return _ops.enqueue(self.statements, item, self.key_functions)

    def _clear_op(self, older_than: timedelta | str) -> Op[int]:
        return _ops.clear(self.statements, parse_duration(older_than))

    def _heartbeat_op(
        self, jobs: Sequence[Job], lease_ms: int | Sequence[int] | None
    ) -> Op[set[int]]:
        held = job_list(jobs)
        if lease_ms is None or isinstance(lease_ms, int | float):
            lease = self.default_lease_ms if lease_ms is None else validate_lease_ms(lease_ms)
            lease_ms = [lease] * len(held)
        leases = job_list(lease_ms, "lease_ms")
        if len(leases) != len(held):
            raise InvalidInputError(f"lease_ms gives {len(leases)} leases for {len(held)} jobs")
        return _ops.heartbeat(self.statements, held, leases)

    def _claim_by_id_op(
        self, job_id: int, lease_ms: int | None, worker: str | None
    ) -> Op[Job | None]:
        return _ops.claim_by_id(
            self.statements, job_id, self.default_lease_ms if lease_ms is None else lease_ms,
            worker or default_worker_name(),
        )

    def _listen_sql(self) -> bytes:
        return self.names.fmt("LISTEN {ch}", ch=sql.Identifier(self.names.done_channel)).as_bytes(
            None
        )


def _conninfo_of(target: object) -> str | None:
    if isinstance(target, str):
        return target
    if isinstance(target, ConnectionPool | AsyncConnectionPool):
        # A pool may be given a callable conninfo; then listeners cannot connect by themselves.
        return target.conninfo if isinstance(target.conninfo, str) else None
    return None


def _own_json(conn: psycopg.Connection[Any]) -> None:
    """A connection of the queue's own pool reads json as jobq does once, not per cursor."""
    set_json_loads(load_json, conn)


def _run_sync(conn: psycopg.Connection[Any], op: Op[T], *, loaders_set: bool = False) -> T:
    """Drive `op` on `conn`. Unless the connection reads json jobq's way already
    (`loaders_set`: one of the queue's own pool), each cursor is set to, so the caller's
    own reads keep their loaders."""
    try:
        stmt = next(op)
        while True:
            if stmt.copy is not None:
                with conn.cursor() as cur, cur.copy(stmt.query) as copy:
                    for values in stmt.copy:
                        copy.write_row(values)
                stmt = op.send([])
                continue
            cur = conn.cursor()
            if not loaders_set:
                set_json_loads(load_json, cur)
            cur.execute(stmt.query, stmt.params)
            stmt = op.send(cur.fetchall() if cur.description else [])
    except StopIteration as stop:
        result: T = stop.value
        return result


async def _run_async(conn: psycopg.AsyncConnection[Any], op: Op[T], *,
                     loaders_set: bool = False) -> T:
    try:
        stmt = next(op)
        while True:
            if stmt.copy is not None:
                async with conn.cursor() as acur, acur.copy(stmt.query) as acopy:
                    for values in stmt.copy:
                        await acopy.write_row(values)
                stmt = op.send([])
                continue
            acur = conn.cursor()
            if not loaders_set:
                set_json_loads(load_json, acur)
            await acur.execute(stmt.query, stmt.params)
            stmt = op.send(await acur.fetchall() if acur.description else [])
    except StopIteration as stop:
        result: T = stop.value
        return result


def _steps_sync(steps: Steps[T], run: Callable[[Op[Any]], Any], woken: threading.Event) -> T:
    """Drive `steps`: each op by `run`, each pause on `woken`."""
    sent: Any = None
    try:
        while True:
            step = steps.send(sent)
            if isinstance(step, Pause):
                woken.wait(step.seconds)
                woken.clear()
                sent = None
            else:
                sent = run(step)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def _steps_async(steps: Steps[T], run: Callable[[Op[Any]], Awaitable[Any]],
                       woken: asyncio.Event) -> T:
    sent: Any = None
    try:
        while True:
            step = steps.send(sent)
            if isinstance(step, Pause):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), step.seconds)
                woken.clear()
                sent = None
            else:
                sent = await run(step)
    except StopIteration as stop:
        result: T = stop.value
        return result


class JobQueue(_QueueCore[ConnectionPool[Any], psycopg.Connection[Any]]):
    """A Postgres-backed job queue (sync). Thread-safe when built on a DSN or a pool.

    `target` is a DSN (the queue then owns a small pool), a `ConnectionPool`, or a
    `Connection` (used under a lock; when it is not in autocommit mode each call runs in its own
    transaction, or savepoint if the caller has one open).
    """

    _pool_type = ConnectionPool
    _conn_type = psycopg.Connection

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        _own_json(conn)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._done = _DoneListener(self)

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one operation; connection failures become
        `DatabaseUnavailableError`. One of the queue's own pool reads json as jobq does (a
        value nested too deep to decode comes back as `UndecodableJSON`)."""
        conn = None
        try:
            if self._conn is not None:
                with self._lock:
                    conn = self._conn
                    yield conn
                return
            assert self._pool is not None
            if self._owns_pool and not self._pool_opened:
                with self._lock:
                    if not self._pool_opened:
                        self._pool.open(wait=False)
                        self._pool_opened = True
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            assert self._pool is not None
            raise self._no_connection(exc) from None
        except DRIVER_ERRORS as exc:
            error = classify(exc, broken=_is_broken(conn))
            if _is_broken(conn) and self._pool is not None:
                # After a restart every idle connection is dead: replace them all now,
                # so that an outage fails one call, not one per pooled connection.
                with contextlib.suppress(*DRIVER_ERRORS):
                    self._pool.check()
            raise error from None

    def _no_connection(self, exc: PoolTimeout) -> JobqError:
        probe: BaseException | None = None
        if (direct := self._probe()) is not None:
            try:
                psycopg.connect(direct[0], **direct[1]).close()
            except DRIVER_ERRORS as failed:
                probe = failed
        return self._why_no_connection(exc, probe)

    def _run(
        self, op: Op[T], conn: psycopg.Connection[Any] | None = None, *, atomic: bool = False,
        schema_op: bool = False, may_migrate: bool = True,
    ) -> T:
        """Run `op`. Single-statement ops run in autocommit; `atomic` ones (several
        statements) and any op on a connection outside autocommit run in a transaction.
        The first op migrates the tables when the queue auto-migrates and the op `may_migrate`
        (operator operations never do); otherwise it checks them and names the fix. An op
        about the schema itself (`schema_op`) does neither: a dry run shows the plan."""
        if not self._ready and not schema_op:
            if may_migrate:
                self.prepare()
            else:
                self.check_schema()
        if conn is not None:  # the caller's connection and transaction: they commit
            try:
                if atomic and conn.autocommit:  # no transaction of theirs to be part of
                    with conn.transaction():
                        return _run_sync(conn, op)
                return _run_sync(conn, op)
            except DRIVER_ERRORS as exc:
                raise classify(exc, broken=_is_broken(conn)) from None
        with self.connection() as own:
            if own.autocommit and not atomic:
                return _run_sync(own, op, loaders_set=self._owns_pool)
            with own.transaction():
                return _run_sync(own, op, loaders_set=self._owns_pool)

    def migrate(self) -> list[bytes]:
        """Create or migrate the tables now (first use does this by itself)."""
        try:
            self._build_indexes_early()
            with self.connection() as conn, conn.transaction():
                applied = _run_sync(conn, schema.ensure(self.statements))
        except PermissionDeniedError as exc:
            raise schema.not_allowed(self.statements, exc) from None
        self._ready = True
        return applied

    def _build_indexes_early(self) -> None:
        """An upgrade's index builds, CONCURRENTLY, on a connection of their own (best
        effort: the migration builds whatever this could not)."""
        direct = self._direct_kwargs()
        if direct is None:
            return
        with self.connection() as conn:
            if not schema.upgrading(_run_sync(conn, schema.current_version(self.statements))):
                return
        try:
            with psycopg.connect(self.conninfo or "", **direct) as conn:
                built = _run_sync(conn, schema.build_early(self.statements))
            log.info("built %s concurrently", ", ".join(built) or "no index")
        except DRIVER_ERRORS as exc:
            log.warning(_EARLY_FAILED, classify(exc))

    def prepare(self) -> None:
        """Do first use now (calls do it by themselves): resolve the table's schema, then
        create or migrate the tables when the queue auto-migrates, or check them."""
        if self._ready:
            return
        if self.auto_migrate:
            self.migrate()
        else:
            self.check_schema()

    def check_schema(self) -> None:
        """Raise `SchemaError`, naming the fix, unless the tables are at this jobq's version.
        Changes nothing."""
        self._run(schema.require(self.statements), schema_op=True)
        self._ready = True

    def close(self) -> None:
        self._done.close()
        if self._owns_pool and self._pool is not None and self._pool_opened:
            self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the API ----------------------------------------------------------------------------

    def enqueue(
        self, type: str, payload: Any = None, *, run_at: datetime | timedelta | None = None,
        priority: int = 0, idempotency_key: str | None = None, request_id: str | None = None,
        concurrency_key: str | None = None, conn: psycopg.Connection[Any] | None = None,
    ) -> int:
        """Add a job; returns its id. A key already held by a live job returns that job's id.

        `run_at` is a timezone-aware datetime or a delay. `concurrency_key` is what a key limit
        counts the job under (by default, from its task's key function if this queue's
        runner registered the task). Pass `conn` to enqueue inside your own transaction,
        atomically with your writes.
        """
        op = self._enqueue_op(
            type, payload=payload, run_at=run_at, priority=priority,
            idempotency_key=idempotency_key, request_id=request_id,
            concurrency_key=concurrency_key,
        )
        return self._run(op, conn)

    def enqueue_many(
        self, jobs: Sequence[NewJob | Mapping[str, Any]], *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[int]:
        """Add many jobs in one statement; ids come back in input order. One bad item
        enqueues nothing."""
        return self._run(_ops.enqueue_many(self.statements, job_list(jobs), self.key_functions),
                         conn, atomic=True)

    def claim(
        self, *, types: Sequence[str] | None = None, lease_ms: int | None = None,
        worker: str | None = None,
    ) -> Job | None:
        """Claim the next job (highest priority, then earliest run_at, then id, within a type;
        the types given take turns), or None."""
        jobs = self._run(self._claim_op(1, types, lease_ms, worker))
        return jobs[0] if jobs else None

    def claim_many(
        self, limit: int, *, types: Sequence[str] | None = None, lease_ms: int | None = None,
        worker: str | None = None,
    ) -> list[Job]:
        return self._run(self._claim_op(limit, types, lease_ms, worker))

    def complete(self, job: Job | int, *, result: Any = None) -> None:
        """Finish a job: it leaves the queue and a `completed` event (with `result`) is kept.

        A bare id is an unfenced operator action; a `Job` is fenced by its lease.
        """
        self._run(_ops.complete(self.statements, job, result))

    def complete_many(self, jobs: Sequence[Job], results: Sequence[Any] | None = None) -> list[int]:
        """Complete many claimed jobs in one statement; returns the ids whose lease held."""
        return self._run(_ops.complete_many(self.statements, job_list(jobs), results))

    def acked(self, jobs: Sequence[Job]) -> set[int]:
        """The ids of these claimed jobs that were completed in the attempt they were claimed
        for: after a broken connection, whether an ack committed."""
        return self._run(_ops.acked(self.statements, job_list(jobs)))

    def fail(
        self, job: Job | int, *, reason: str, retry: bool = False,
        run_at: datetime | timedelta | None = None,
    ) -> None:
        """Record a failure. With `retry` the job is pending again at `run_at` (default now);
        without, it is `failed` and stays for inspection and `jobq retry`."""
        self._run(_ops.fail(self.statements, job, reason, retry, run_at))

    def extend(self, job: Job | int, ms: int) -> datetime:
        """Make the lease last at least `ms` from now; returns the new deadline."""
        return self._run(_ops.extend(self.statements, job, ms))

    def pending(self, *, types: Sequence[str] | None = None) -> int:
        """Claimable jobs now: ready ones plus claimed ones whose lease expired."""
        return self._run(_ops.pending(self.statements, types))

    def clear(self, *, older_than: timedelta | str) -> int:
        """Delete failed and cancelled jobs and history older than `older_than` ("7d", "12h",
        a timedelta), in batches; the history's days wholly older are dropped whole when
        this role owns the tables. Jobs still in the queue keep their whole history; pending,
        scheduled and claimed jobs are never touched. Returns rows deleted."""
        return self._run(self._clear_op(older_than))

    def fold_rates(self) -> int:
        """Fold finished minutes of history into the per-minute rates (`jobq status`), and keep
        the history's daily partitions a few days ahead; a task runner calls it once a
        minute. Skipped while another session folds, and by a role that may not write the
        rates. Returns the rows added."""
        return self._run(_ops.fold_rates(self.statements), atomic=True)

    def heartbeat(
        self, jobs: Sequence[Job], lease_ms: int | Sequence[int] | None = None
    ) -> set[int]:
        """Keep many leases alive in one statement (no history); returns the ids still held."""
        return self._run(self._heartbeat_op(jobs, lease_ms))

    def release(self, jobs: Sequence[Job], *, reason: str = "released") -> list[int]:
        """Hand claimed jobs back to pending at no attempt cost; returns the ids released."""
        return self._run(_ops.release(self.statements, job_list(jobs), reason))

    def worker_beat(self, me: _ops.WorkerInfo, held: Sequence[int]) -> _ops.Orders:
        """A runner's entry in the worker registry, refreshed; returns operators' orders."""
        return self._run(_ops.worker_beat(self.statements, me, held))

    def worker_gone(self, worker_id: str) -> None:
        """Leave the worker registry (a clean stop)."""
        self._run(_ops.worker_gone(self.statements, worker_id))

    def snooze(self, job: Job, delay: float | timedelta, *, reason: str | None = None
               ) -> datetime:
        """Hand a claimed job back until `delay` from now, at no attempt cost (its `snoozed`
        event says so); returns when it is due. Fenced: a `LeaseLostError` if it is no
        longer this holder's."""
        return self._run(_ops.snooze(self.statements, job, delay, reason))

    def register_limits(self, limits: Mapping[str, Limits], *, by: str
                        ) -> list[_ops.LimitConflict]:
        """Record the limits of the tasks a runner (`by`) serves, by type; every claim of
        those types then keeps them. Returns the definitions replaced that differed."""
        return self._run(_ops.register_limits(self.statements, limits, by), atomic=True)

    def register_schedules(self, schedules: Sequence[Schedule], *, by: str,
                           now: datetime | None = None) -> None:
        """Record the periodic jobs a runner (`by`) serves, for `jobq schedules`. A schedule
        seen for the first time starts at `now` (the database's clock unless given)."""
        self._run(_ops.register_schedules(self.statements, schedules, by, now))

    def fire_schedule(self, schedule: Schedule, *, now: datetime | None = None) -> _ops.Tick:
        """One tick of a registered schedule: enqueue the jobs of its slots due, each once
        across all runners, and record the newest slot handled. `now` stands in for the
        database's clock."""
        return self._run(_ops.fire_schedule(self.statements, schedule, now, self.key_functions),
                         atomic=True)

    def cancelled(self, ids: Sequence[int]) -> dict[int, str]:
        """Which of these jobs an operator cancelled, with who and why."""
        return self._run(_ops.cancelled(self.statements, ids))

    def claim_by_id(
        self, job_id: int, *, lease_ms: int | None = None, worker: str | None = None
    ) -> Job | None:
        """Claim this job if it is due (or its lease expired); None otherwise."""
        return self._run(self._claim_by_id_op(job_id, lease_ms, worker))

    def outcome(self, job_id: int) -> _ops.Outcome:
        """Where the job stands: pending, claimed, failed (with its error) or completed (with
        its result, while the history keeps it)."""
        return self._run(_ops.outcome(self.statements, job_id))

    def key_holder(self, idempotency_key: str) -> int | None:
        """The id of the job enqueued with this idempotency key, live or finished within the
        history's retention; None if no committed enqueue used it. A producer that enqueues
        later (on commit) can hand out the key now and find the job by it."""
        return self._run(_ops.key_holder(self.statements, idempotency_key))

    def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """Block until the job completes and return its result, or raise `JobFailedError`.

        Woken by NOTIFY on one listening connection per queue, whatever the number of
        waiters, with a check every second as a fallback; `WaitTimeoutError` after `timeout`
        seconds."""
        woken = self._done.register(job_id)
        try:
            return _steps_sync(_ops.wait(self.statements, job_id, timeout), self._run, woken)
        finally:
            self._done.unregister(job_id, woken)


EventT = TypeVar("EventT", threading.Event, asyncio.Event)


class _Waiters(Generic[EventT]):
    """Who waits for which job: the events a job's done NOTIFY sets (all, with no payload)."""

    def __init__(self) -> None:
        self._by_job: dict[int, list[EventT]] = {}

    def add(self, job_id: int, woken: EventT) -> None:
        self._by_job.setdefault(job_id, []).append(woken)

    def remove(self, job_id: int, woken: EventT) -> None:
        left = [w for w in self._by_job.get(job_id, []) if w is not woken]
        if left:
            self._by_job[job_id] = left
        else:
            self._by_job.pop(job_id, None)

    def wake(self, payload: str | None) -> None:
        for job_id, events in self._by_job.items():
            if payload is None or str(job_id) == payload:
                for woken in events:
                    woken.set()


class _DoneListener:
    """One LISTEN connection per sync queue, in a daemon thread, that wakes the waiters of
    each finished job. Started by the first `wait`; without a DSN, waiters simply poll."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue
        self._lock = threading.Lock()
        self._waiters = _Waiters[threading.Event]()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def register(self, job_id: int) -> threading.Event:
        woken = threading.Event()
        with self._lock:
            self._waiters.add(job_id, woken)
            if self._thread is None and self._queue.listens:
                self._thread = threading.Thread(target=self._serve, daemon=True,
                                                name="jobq-wait-listener")
                self._thread.start()
        return woken

    def unregister(self, job_id: int, woken: threading.Event) -> None:
        with self._lock:
            self._waiters.remove(job_id, woken)

    def _wake(self, payload: str | None) -> None:
        with self._lock:
            self._waiters.wake(payload)

    def _serve(self) -> None:
        assert self._queue.conninfo is not None
        delay = 0.2
        while not self._closed.is_set():
            try:
                self._queue.prepare()  # the resolved table names the channel
                with psycopg.connect(self._queue.conninfo, autocommit=True,
                                     application_name=APPLICATION_NAME) as conn:
                    conn.execute(self._queue._listen_sql())
                    delay = 0.2
                    self._wake(None)  # anything that finished while we were not listening
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=_ops.WAIT_POLL):
                            self._wake(note.payload)
            except (*DRIVER_ERRORS, JobqError):
                # Waiters fall back to their one-second check meanwhile.
                self._closed.wait(delay)
                delay = min(delay * 2, 10.0)

    def close(self) -> None:
        self._closed.set()


class AsyncJobQueue(_QueueCore[AsyncConnectionPool[Any], psycopg.AsyncConnection[Any]]):
    """The asyncio twin of `JobQueue`: same methods, same SQL, same behaviour."""

    _pool_type = AsyncConnectionPool
    _conn_type = psycopg.AsyncConnection

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        set_json_loads(load_json, conn)

    def _start(self) -> None:
        self._lock = asyncio.Lock()
        self._done = _AsyncDoneListener(self)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = None
        try:
            if self._conn is not None:
                async with self._lock:
                    conn = self._conn
                    yield conn
                return
            assert self._pool is not None
            if self._owns_pool and not self._pool_opened:
                async with self._lock:
                    if not self._pool_opened:
                        await self._pool.open(wait=False)
                        self._pool_opened = True
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise (await self._no_connection(exc)) from None
        except DRIVER_ERRORS as exc:
            error = classify(exc, broken=_is_broken(conn))
            if _is_broken(conn) and self._pool is not None:
                with contextlib.suppress(*DRIVER_ERRORS):
                    await self._pool.check()
            raise error from None

    async def _no_connection(self, exc: PoolTimeout) -> JobqError:
        probe: BaseException | None = None
        if (direct := self._probe()) is not None:
            try:
                await (await psycopg.AsyncConnection.connect(direct[0], **direct[1])).close()
            except DRIVER_ERRORS as failed:
                probe = failed
        return self._why_no_connection(exc, probe)

    async def _run(
        self, op: Op[T], conn: psycopg.AsyncConnection[Any] | None = None, *,
        atomic: bool = False, schema_op: bool = False, may_migrate: bool = True,
    ) -> T:
        if not self._ready and not schema_op:
            if may_migrate:
                await self.prepare()
            else:
                await self.check_schema()
        if conn is not None:
            try:
                if atomic and conn.autocommit:
                    async with conn.transaction():
                        return await _run_async(conn, op)
                return await _run_async(conn, op)
            except DRIVER_ERRORS as exc:
                raise classify(exc, broken=_is_broken(conn)) from None
        async with self.connection() as own:
            if own.autocommit and not atomic:
                return await _run_async(own, op, loaders_set=self._owns_pool)
            async with own.transaction():
                return await _run_async(own, op, loaders_set=self._owns_pool)

    async def migrate(self) -> list[bytes]:
        try:
            await self._build_indexes_early()
            async with self.connection() as conn, conn.transaction():
                applied = await _run_async(conn, schema.ensure(self.statements))
        except PermissionDeniedError as exc:
            raise schema.not_allowed(self.statements, exc) from None
        self._ready = True
        return applied

    async def _build_indexes_early(self) -> None:
        direct = self._direct_kwargs()
        if direct is None:
            return
        async with self.connection() as conn:
            version = await _run_async(conn, schema.current_version(self.statements))
            if not schema.upgrading(version):
                return
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo or "",
                                                             **direct) as aconn:
                built = await _run_async(aconn, schema.build_early(self.statements))
            log.info("built %s concurrently", ", ".join(built) or "no index")
        except DRIVER_ERRORS as exc:
            log.warning(_EARLY_FAILED, classify(exc))

    async def prepare(self) -> None:
        if self._ready:
            return
        if self.auto_migrate:
            await self.migrate()
        else:
            await self.check_schema()

    async def check_schema(self) -> None:
        await self._run(schema.require(self.statements), schema_op=True)
        self._ready = True

    async def close(self) -> None:
        await self._done.close()
        if self._owns_pool and self._pool is not None and self._pool_opened:
            await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def enqueue(
        self, type: str, payload: Any = None, *, run_at: datetime | timedelta | None = None,
        priority: int = 0, idempotency_key: str | None = None, request_id: str | None = None,
        concurrency_key: str | None = None, conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> int:
        op = self._enqueue_op(
            type, payload=payload, run_at=run_at, priority=priority,
            idempotency_key=idempotency_key, request_id=request_id,
            concurrency_key=concurrency_key,
        )
        return await self._run(op, conn)

    async def enqueue_many(
        self, jobs: Sequence[NewJob | Mapping[str, Any]], *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[int]:
        return await self._run(
            _ops.enqueue_many(self.statements, job_list(jobs), self.key_functions), conn,
            atomic=True)

    async def claim(
        self, *, types: Sequence[str] | None = None, lease_ms: int | None = None,
        worker: str | None = None,
    ) -> Job | None:
        jobs = await self._run(self._claim_op(1, types, lease_ms, worker))
        return jobs[0] if jobs else None

    async def claim_many(
        self, limit: int, *, types: Sequence[str] | None = None, lease_ms: int | None = None,
        worker: str | None = None,
    ) -> list[Job]:
        return await self._run(self._claim_op(limit, types, lease_ms, worker))

    async def complete(self, job: Job | int, *, result: Any = None) -> None:
        await self._run(_ops.complete(self.statements, job, result))

    async def complete_many(
        self, jobs: Sequence[Job], results: Sequence[Any] | None = None
    ) -> list[int]:
        return await self._run(_ops.complete_many(self.statements, job_list(jobs), results))

    async def acked(self, jobs: Sequence[Job]) -> set[int]:
        return await self._run(_ops.acked(self.statements, job_list(jobs)))

    async def fail(
        self, job: Job | int, *, reason: str, retry: bool = False,
        run_at: datetime | timedelta | None = None,
    ) -> None:
        await self._run(_ops.fail(self.statements, job, reason, retry, run_at))

    async def extend(self, job: Job | int, ms: int) -> datetime:
        return await self._run(_ops.extend(self.statements, job, ms))

    async def pending(self, *, types: Sequence[str] | None = None) -> int:
        return await self._run(_ops.pending(self.statements, types))

    async def clear(self, *, older_than: timedelta | str) -> int:
        return await self._run(self._clear_op(older_than))

    async def fold_rates(self) -> int:
        return await self._run(_ops.fold_rates(self.statements), atomic=True)

    async def heartbeat(
        self, jobs: Sequence[Job], lease_ms: int | Sequence[int] | None = None
    ) -> set[int]:
        return await self._run(self._heartbeat_op(jobs, lease_ms))

    async def release(self, jobs: Sequence[Job], *, reason: str = "released") -> list[int]:
        return await self._run(_ops.release(self.statements, job_list(jobs), reason))

    async def worker_beat(self, me: _ops.WorkerInfo, held: Sequence[int]) -> _ops.Orders:
        return await self._run(_ops.worker_beat(self.statements, me, held))

    async def worker_gone(self, worker_id: str) -> None:
        await self._run(_ops.worker_gone(self.statements, worker_id))

    async def snooze(self, job: Job, delay: float | timedelta, *, reason: str | None = None
                     ) -> datetime:
        return await self._run(_ops.snooze(self.statements, job, delay, reason))

    async def register_limits(self, limits: Mapping[str, Limits], *, by: str
                              ) -> list[_ops.LimitConflict]:
        return await self._run(_ops.register_limits(self.statements, limits, by),
                               atomic=True)

    async def register_schedules(self, schedules: Sequence[Schedule], *, by: str,
                                 now: datetime | None = None) -> None:
        await self._run(_ops.register_schedules(self.statements, schedules, by, now))

    async def fire_schedule(self, schedule: Schedule, *,
                            now: datetime | None = None) -> _ops.Tick:
        return await self._run(
            _ops.fire_schedule(self.statements, schedule, now, self.key_functions), atomic=True)

    async def cancelled(self, ids: Sequence[int]) -> dict[int, str]:
        return await self._run(_ops.cancelled(self.statements, ids))

    async def claim_by_id(
        self, job_id: int, *, lease_ms: int | None = None, worker: str | None = None
    ) -> Job | None:
        return await self._run(self._claim_by_id_op(job_id, lease_ms, worker))

    async def outcome(self, job_id: int) -> _ops.Outcome:
        return await self._run(_ops.outcome(self.statements, job_id))

    async def key_holder(self, idempotency_key: str) -> int | None:
        return await self._run(_ops.key_holder(self.statements, idempotency_key))

    async def wait(self, job_id: int, timeout: float | None = None) -> Any:
        woken = self._done.register(job_id)
        try:
            return await _steps_async(_ops.wait(self.statements, job_id, timeout), self._run,
                                      woken)
        finally:
            self._done.unregister(job_id, woken)


class _AsyncDoneListener:
    """The asyncio twin of `_DoneListener`: one task and one connection per queue and loop."""

    def __init__(self, queue: AsyncJobQueue) -> None:
        self._queue = queue
        self._waiters = _Waiters[asyncio.Event]()
        self._task: asyncio.Task[None] | None = None

    def register(self, job_id: int) -> asyncio.Event:
        woken = asyncio.Event()
        self._waiters.add(job_id, woken)
        loop = asyncio.get_running_loop()
        if self._queue.listens and (
                self._task is None or self._task.done() or self._task.get_loop() is not loop):
            self._task = loop.create_task(self._serve(), name="jobq-wait-listener")
        return woken

    def unregister(self, job_id: int, woken: asyncio.Event) -> None:
        self._waiters.remove(job_id, woken)

    def _wake(self, payload: str | None) -> None:
        self._waiters.wake(payload)

    async def _serve(self) -> None:
        assert self._queue.conninfo is not None
        delay = 0.2
        while True:
            try:
                await self._queue.prepare()  # the resolved table names the channel
                async with await psycopg.AsyncConnection.connect(
                        self._queue.conninfo, autocommit=True,
                        application_name=APPLICATION_NAME) as conn:
                    await conn.execute(self._queue._listen_sql())
                    delay = 0.2
                    self._wake(None)
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except (*DRIVER_ERRORS, JobqError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        self._task = None


share_docstrings(AsyncJobQueue, JobQueue)


def create_job_queue(target: SyncTarget, **options: Unpack[QueueOptions]) -> JobQueue:
    """Build a `JobQueue` and create or migrate its tables now, so errors surface early.

    Options, as `JobQueue` takes them (defaults in brackets):
    - `table` ["svti_jobs"], optionally schema-qualified; `default_lease_ms` [30,000];
      `max_connections` [10] of the pool a DSN gets.
    - `pgbouncer=True` suits PgBouncer in transaction mode: no prepared statements and no
      startup options on the queue's own connections (pair it with a poll-only runner).
    - `auto_migrate=False` only checks the tables (a role without DDL rights, migrated by an
      owner with `jobq migrate`): a missing or older schema is a `SchemaError` naming the fix.
    - A completed job keeps its payload in history when it is at most
      `history_payload_bytes` [PAYLOAD_BYTES] bytes as stored (0 keeps none); a larger one
      leaves a note of its size."""
    queue = JobQueue(target, **options)
    try:
        queue.migrate() if queue.auto_migrate else queue.check_schema()
    except BaseException:
        queue.close()
        raise
    return queue


async def create_async_job_queue(target: AsyncTarget,
                                 **options: Unpack[QueueOptions]) -> AsyncJobQueue:
    """The async twin of `create_job_queue`."""
    queue = AsyncJobQueue(target, **options)
    try:
        await (queue.migrate() if queue.auto_migrate else queue.check_schema())
    except BaseException:
        await queue.close()
        raise
    return queue
