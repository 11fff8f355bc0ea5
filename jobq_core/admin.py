"""Operator operations, shared by the `jobq` CLI and the `jobq-tui` console.

Every repair can first be previewed: how many rows it would change, sample ids, and the rows
that are not eligible with the reason, without changing anything. `Admin` is sync and
`AsyncAdmin` its twin; both drive the same operations over a queue's connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql as psql

from . import _ops, sql
from ._ops import Op, Stmt
from .durations import parse_duration
from .errors import InvalidInputError, NotFoundError
from .filters import JobFilter, parse_filter
from .models import clean_reason, validate_id, validate_limit, validate_when
from .queue import AsyncJobQueue, JobQueue
from .sql import Statements

#: Rows per statement for bulk repairs.
REPAIR_BATCH = 500
#: How many ids a preview shows.
SAMPLE = 10
#: Seconds between checks when following a trace.
FOLLOW_POLL = 0.5


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as operators see it; completed jobs come from history (no payload is kept)."""

    id: int
    type: str
    state: str
    payload: Any
    priority: int | None
    run_at: datetime | None
    attempts: int
    request_id: str | None
    idempotency_key: str | None
    lease_until: datetime | None
    claimed_by: str | None
    claimed_at: datetime | None
    last_error: str | None
    failed_at: datetime | None
    created_at: datetime
    result: Any = None


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    occurred_at: datetime
    job_id: int
    type: str
    event: str
    request_id: str | None
    attempt: int
    worker: str | None
    reason: str | None
    result: Any


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[JobRow]
    #: Pass back as `after` for the next page; None on the last page.
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class JobDetail:
    job: JobRow | None  # None once the job has left the queue (completed or deleted)
    events: list[Event]

    @property
    def state(self) -> str:
        if self.job is not None:
            return self.job.state
        return self.events[-1].event if self.events else "unknown"


@dataclass(frozen=True, slots=True)
class Preview:
    """What a repair would do, computed without changing anything."""

    action: str
    eligible: int
    sample_ids: list[int]
    ineligible: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class ClearPreview:
    cutoff: datetime
    failed_jobs: int
    sample_ids: list[int]
    history_rows: int

    @property
    def total(self) -> int:
        return self.failed_jobs + self.history_rows


@dataclass(frozen=True, slots=True)
class RepairResult:
    action: str
    changed: int
    #: Ids that were asked for but not changed (their state moved on in the meantime).
    skipped: list[int]


Progress = Callable[[int, int], None]
_ROW_FIELDS = [name for name in JobRow.__dataclass_fields__ if name != "result"]

@dataclass(frozen=True, slots=True)
class Count:
    """A count that is exact up to `COUNT_CAP`; above it, the planner's estimate."""

    value: int
    exact: bool

    def __str__(self) -> str:
        return str(self.value) if self.exact else f"~{self.value}"


@dataclass(frozen=True, slots=True)
class TypeStats:
    type: str
    ready: Count
    scheduled: Count
    claimed: Count
    #: Claimed jobs whose lease runs out within 60 s.
    expiring: Count
    #: Claimed jobs whose lease has run out (the next claim takes them back).
    expired: Count
    failed: Count
    oldest_ready_age: timedelta | None
    #: Per minute over the last hour, oldest first (60 values).
    completed_per_min: list[int]
    failed_per_min: list[int]


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: str  # ok, warn or error
    detail: str
    fix: str | None = None


#: Counts above this come from the planner, so a refresh costs the same for any backlog.
COUNT_CAP = 10_000

# -- the operations ------------------------------------------------------------------------

_NEEDS = {"retry": ("failed",), "extend": ("claimed",), "delete": ("pending", "failed"),
          "delete-force": ("pending", "failed", "claimed")}


_GONE = "not in the queue (completed, deleted or never existed)"


def _row(values: Sequence[Any]) -> tuple[JobRow, int]:
    """A listed row and its keyset key (the job id, or the history row id when completed)."""
    return JobRow(**dict(zip(_ROW_FIELDS, values[:-2], strict=True)), result=values[-1]), \
        values[-2]


def _cursor_for(state: str | None, row: JobRow, key: int) -> str:
    if state == "failed":
        return f"{row.failed_at.isoformat() if row.failed_at else ''}|{key}"
    if state in ("claimed", "expired"):
        return f"{row.lease_until.isoformat() if row.lease_until else ''}|{key}"
    return str(key)


def _parse_cursor(state: str | None, cursor: str) -> tuple[Any, int]:
    try:
        if state in ("failed", "claimed", "expired"):
            at, _, job_id = cursor.rpartition("|")
            return datetime.fromisoformat(at), int(job_id)
        return None, int(cursor)
    except ValueError:
        raise InvalidInputError(f"invalid cursor {cursor!r}") from None


def _where(flt: JobFilter) -> dict[str, Any]:
    where: dict[str, Any] = {}
    for name in ("type", "request_id", "error", "age", "attempts"):
        value = getattr(flt, name)
        if value is not None:
            where[name] = value
    return where


def list_jobs(st: Statements, flt: JobFilter, after: str | None, limit: int) -> Op[Page]:
    limit = validate_limit(limit, maximum=1000)
    cursor = _parse_cursor(flt.state, after) if after else None
    query, params = sql.list_jobs(st.names, _where(flt), flt.state, cursor, limit)
    keyed = [_row(r) for r in (yield Stmt(query, params))]
    next_cursor = None
    if len(keyed) == limit:
        next_cursor = _cursor_for(flt.state, *keyed[-1])
    return Page([row for row, _ in keyed], next_cursor)


def show(st: Statements, job_id: int) -> Op[JobDetail]:
    job_id = validate_id(job_id)
    live = yield Stmt(st.show_job, {"id": job_id})
    history = [Event(*r) for r in (yield Stmt(st.job_events, {"id": job_id}))]
    if not live and not history:
        raise NotFoundError(f"no job with id {job_id}, live or in history")
    job = JobRow(*live[0]) if live else None
    return JobDetail(job, history)


def trace(st: Statements, request_id: str, after: int = 0, limit: int = 1000) -> Op[list[Event]]:
    """Every event of every job under `request_id`, oldest first, after event id `after`."""
    if not isinstance(request_id, str) or not request_id:
        raise InvalidInputError("trace needs a request id")
    rows = yield Stmt(st.trace, {"request_id": request_id, "after": after,
                                 "limit": validate_limit(limit, maximum=10_000)})
    return [Event(*r) for r in rows]


def fold_rates(st: Statements) -> Op[int]:
    """Fold finished minutes of history into the rates table (one folder at a time; a
    read-only session skips this and shows what was folded before)."""
    if not (yield Stmt(sql.MAY_FOLD.encode(), {"key": st.names.lock_key}))[0][0]:
        return 0
    folded: int = (yield Stmt(st.fold_rates))[0][0]
    return folded


def _estimate(st: Statements, kind: str, job_type: str) -> Op[int]:
    plan = (yield Stmt(st.estimate(kind), {"type": job_type}))[0][0]
    return int(plan[0]["Plan"]["Plan Rows"])


def stats(st: Statements) -> Op[list[TypeStats]]:
    """Per type: ready, scheduled, claimed, expiring, expired, failed, oldest ready age and
    completed/failed per minute over the last hour. Cost grows with the number of types, not
    with the backlog or the history. Runs in one transaction (the caller's)."""
    yield from fold_rates(st)
    types = [r[0] for r in (yield Stmt(st.stats_types))]
    result = []
    for job_type in types:
        row = (yield Stmt(st.stats_type, {"type": job_type, "cap": COUNT_CAP}))[0]
        counts = []
        for kind, value in zip(("ready", "scheduled", "claimed", None, None, "failed"),
                               row[:6], strict=True):
            if value < COUNT_CAP or kind is None:
                counts.append(Count(value, value < COUNT_CAP))
            else:
                estimate = yield from _estimate(st, kind, job_type)
                counts.append(Count(max(estimate, COUNT_CAP), False))
        ready, scheduled, claimed, expiring, expired, failed = counts
        result.append(TypeStats(job_type, ready, scheduled, claimed, expiring, expired, failed,
                                row[6], list(row[7] or []), list(row[8] or [])))
    return result


def doctor(st: Statements) -> Op[list[Finding]]:
    """Health checks of the queue's tables and of what affects them, each with its fix."""
    from .schema import LATEST_VERSION, current_version

    names = {"jobs": st.names.regclass(), "events": st.names.regclass("_events"),
             "rates": st.names.regclass("_rates")}
    findings: list[Finding] = []
    version = yield from current_version(st)
    findings.append(Finding(
        "schema version", "ok" if version == LATEST_VERSION else "warn",
        f"at version {version}, this jobq knows {LATEST_VERSION}",
        None if version == LATEST_VERSION else "jobq migrate (or any queue's first use)"))
    for name, total, heap, live, dead, vacuumed, analyzed in (
            yield Stmt(sql.DOCTOR_TABLES.encode(), names)):
        ratio = dead / max(live + dead, 1)
        status = "warn" if dead > 10_000 and ratio > 0.2 else "ok"
        findings.append(Finding(
            f"table {name}", status,
            f"{_size(total)} with indexes ({_size(heap)} heap); {live} live, {dead} dead rows "
            f"({ratio:.0%}); last vacuum {vacuumed or 'never'}, last analyze {analyzed or 'never'}",
            f"VACUUM (ANALYZE) {name}; and for a queue table: ALTER TABLE {name} SET "
            "(autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0)"
            if status == "warn" else None))
    for index, size, valid in (yield Stmt(sql.DOCTOR_INDEXES.encode(), names)):
        findings.append(Finding(
            f"index {index}", "ok" if valid else "error",
            f"{_size(size)}" + ("" if valid else "; INVALID (a failed concurrent build)"),
            None if valid else f"REINDEX INDEX CONCURRENTLY {index}"))
    holder = yield Stmt(sql.DOCTOR_XMIN.encode())
    if holder:
        pid, app, state, seconds, age, query = holder[0]
        bad = (seconds or 0) > 300
        findings.append(Finding(
            "xmin horizon", "warn" if bad else "ok",
            f"oldest snapshot: pid {pid} ({app or 'no application_name'}, {state}), "
            f"transaction open {int(seconds or 0)} s, xmin age {age}: {query!r}",
            f"end that transaction, or SELECT pg_terminate_backend({pid}); until then vacuum "
            "cannot remove the queue's dead rows" if bad else None))
    else:
        findings.append(Finding("xmin horizon", "ok", "no open snapshot holds it back"))
    expired = (yield Stmt(st.render(sql.DOCTOR_EXPIRED)))[0][0]
    findings.append(Finding(
        "expired leases", "warn" if expired else "ok",
        f"{expired}{'+' if expired >= 10_000 else ''} claimed jobs whose lease ran out",
        "the next claim takes them back; if none comes, no worker serves their types: start "
        "one (jobq worker module:runner)" if expired else None))
    return findings


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def migrate(st: Statements, dry_run: bool) -> Op[list[str]]:
    """The SQL that migration runs (or, with `dry_run`, would run); [] when up to date."""
    from .schema import migrate as run_migrations

    plan = yield from run_migrations(st, dry_run=dry_run)
    return [statement.decode().strip() for statement in plan]


def preview_clear(st: Statements, older_than: timedelta) -> Op[ClearPreview]:
    cutoff, failed, sample, history = (
        yield Stmt(st.clear_preview, {"older_than": older_than}))[0]
    return ClearPreview(cutoff, failed, list(sample or []), history)


def _ids(ids: Sequence[int]) -> list[int]:
    checked = sorted({validate_id(i) for i in ids})
    if not checked:
        raise InvalidInputError("no job ids given")
    return checked


def preview(st: Statements, action: str, ids: Sequence[int]) -> Op[Preview]:
    """Which of `ids` the action would change, and why the others would be left alone."""
    wanted = _ids(ids)
    states: dict[int, str] = dict((yield Stmt(st.states_of, {"ids": wanted})))
    needs = _NEEDS[action]
    eligible = [i for i in wanted if states.get(i, "") in needs]
    ineligible = [
        (i, _GONE if i not in states else f"is {states[i]}, not {' or '.join(needs)}")
        for i in wanted if states.get(i, "") not in needs
    ]
    return Preview(action, len(eligible), eligible[:SAMPLE], ineligible)


def repair(st: Statements, action: str, ids: Sequence[int], *, run_at: object = None,
           by: timedelta | None = None, reason: str = "operator",
           progress: Progress | None = None) -> Op[RepairResult]:
    """Apply `action` (retry, extend, delete, delete-force) to `ids`, in batches."""
    wanted = _ids(ids)
    changed: list[int] = []
    when, delay = validate_when(run_at)
    if delay is not None:
        raise InvalidInputError("retry at takes a point in time; use now() + delay yourself")
    note = clean_reason(reason)
    for start in range(0, len(wanted), REPAIR_BATCH):
        batch = wanted[start:start + REPAIR_BATCH]
        if action == "retry":
            stmt = Stmt(st.retry, {"ids": batch, "run_at": when, "reason": note})
        elif action == "extend":
            if by is None:
                raise InvalidInputError("extend needs a duration")
            stmt = Stmt(st.extend_by, {"ids": batch, "by": by, "reason": note})
        elif action in ("delete", "delete-force"):
            stmt = Stmt(st.delete, {"ids": batch, "force": action == "delete-force",
                                    "reason": note})
        else:
            raise InvalidInputError(f"unknown repair {action!r}")
        changed += [r[0] for r in (yield stmt)]
        if progress is not None:
            progress(min(start + REPAIR_BATCH, len(wanted)), len(wanted))
    done = set(changed)
    return RepairResult(action, len(done), [i for i in wanted if i not in done])


def matching_ids(st: Statements, flt: JobFilter) -> Op[list[int]]:
    """Every id the filter selects, page by page (for repairs "by filter")."""
    ids: list[int] = []
    after = None
    while True:
        page = yield from list_jobs(st, flt, after, 1000)
        ids += [row.id for row in page.rows]
        if page.next_cursor is None:
            return ids
        after = page.next_cursor


def as_filter(value: JobFilter | str | None) -> JobFilter:
    if value is None:
        return JobFilter()
    return value if isinstance(value, JobFilter) else parse_filter(value)


# -- the twins -------------------------------------------------------------------------------

class Admin:
    """Operator operations over a `JobQueue`'s database."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self._st = queue.statements

    def list_jobs(self, filter: JobFilter | str | None = None, *, after: str | None = None,
                  limit: int = 50) -> Page:
        return self.queue._run(list_jobs(self._st, as_filter(filter), after, limit))

    def show(self, job_id: int) -> JobDetail:
        return self.queue._run(show(self._st, job_id))

    def trace(self, request_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        return self.queue._run(trace(self._st, request_id, after, limit))

    def select(self, filter: JobFilter | str) -> list[int]:
        return self.queue._run(matching_ids(self._st, as_filter(filter)))

    def preview(self, action: str, ids: Sequence[int]) -> Preview:
        return self.queue._run(preview(self._st, action, ids))

    def retry(self, ids: Sequence[int], *, run_at: datetime | None = None,
              progress: Progress | None = None) -> RepairResult:
        """Failed jobs back to pending, now or at `run_at`."""
        return self.queue._run(repair(self._st, "retry", ids, run_at=run_at,
                                      reason="retried by operator", progress=progress))

    def extend(self, ids: Sequence[int], by: timedelta | str,
               progress: Progress | None = None) -> RepairResult:
        """Lengthen claimed jobs' leases by `by` (from now, if a lease already lapsed)."""
        return self.queue._run(repair(self._st, "extend", ids, by=parse_duration(by),
                                      reason="extended by operator", progress=progress))

    def delete(self, ids: Sequence[int], *, force: bool = False,
               progress: Progress | None = None) -> RepairResult:
        """Delete pending or failed jobs; claimed ones only with `force`."""
        action = "delete-force" if force else "delete"
        return self.queue._run(repair(self._st, action, ids, reason="deleted by operator",
                                      progress=progress))

    def preview_clear(self, older_than: timedelta | str) -> ClearPreview:
        return self.queue._run(preview_clear(self._st, parse_duration(older_than)))

    def clear(self, older_than: timedelta | str,
              progress: Callable[[int], None] | None = None) -> int:
        """Failed jobs and history older than the cutoff, in batches; see `JobQueue.clear`."""
        return self.queue._run(_ops.clear(self._st, parse_duration(older_than), progress))

    def stats(self) -> list[TypeStats]:
        return self.queue._run(stats(self._st), atomic=True)

    def doctor(self) -> list[Finding]:
        return self.queue._run(doctor(self._st))

    def migrate(self, *, dry_run: bool = True) -> list[str]:
        """The migration SQL; applied unless `dry_run`."""
        return self.queue._run(migrate(self._st, dry_run), atomic=True, schema_op=True)


class AsyncAdmin:
    """The asyncio twin of `Admin`."""

    def __init__(self, queue: AsyncJobQueue) -> None:
        self.queue = queue
        self._st = queue.statements

    async def list_jobs(self, filter: JobFilter | str | None = None, *,
                        after: str | None = None, limit: int = 50) -> Page:
        return await self.queue._run(list_jobs(self._st, as_filter(filter), after, limit))

    async def show(self, job_id: int) -> JobDetail:
        return await self.queue._run(show(self._st, job_id))

    async def trace(self, request_id: str, *, after: int = 0,
                    limit: int = 1000) -> list[Event]:
        return await self.queue._run(trace(self._st, request_id, after, limit))

    async def select(self, filter: JobFilter | str) -> list[int]:
        return await self.queue._run(matching_ids(self._st, as_filter(filter)))

    async def preview(self, action: str, ids: Sequence[int]) -> Preview:
        return await self.queue._run(preview(self._st, action, ids))

    async def retry(self, ids: Sequence[int], *, run_at: datetime | None = None,
                    progress: Progress | None = None) -> RepairResult:
        return await self.queue._run(repair(self._st, "retry", ids, run_at=run_at,
                                            reason="retried by operator", progress=progress))

    async def extend(self, ids: Sequence[int], by: timedelta | str,
                     progress: Progress | None = None) -> RepairResult:
        return await self.queue._run(repair(self._st, "extend", ids, by=parse_duration(by),
                                            reason="extended by operator", progress=progress))

    async def delete(self, ids: Sequence[int], *, force: bool = False,
                     progress: Progress | None = None) -> RepairResult:
        action = "delete-force" if force else "delete"
        return await self.queue._run(repair(self._st, action, ids,
                                            reason="deleted by operator", progress=progress))

    async def preview_clear(self, older_than: timedelta | str) -> ClearPreview:
        return await self.queue._run(preview_clear(self._st, parse_duration(older_than)))

    async def clear(self, older_than: timedelta | str,
                    progress: Callable[[int], None] | None = None) -> int:
        return await self.queue._run(
            _ops.clear(self._st, parse_duration(older_than), progress))

    async def stats(self) -> list[TypeStats]:
        return await self.queue._run(stats(self._st), atomic=True)

    async def doctor(self) -> list[Finding]:
        return await self.queue._run(doctor(self._st))

    async def migrate(self, *, dry_run: bool = True) -> list[str]:
        return await self.queue._run(migrate(self._st, dry_run), atomic=True, schema_op=True)

    async def follow(self, request_id: str, *, after: int = 0,
                     poll: float = FOLLOW_POLL) -> AsyncIterator[Event]:
        """Every event under `request_id` as it happens (after event id `after`), forever.

        Woken by the queue's NOTIFY channels (new and retried work, completions of waited-on
        jobs); every other transition is picked up by polling every `poll` seconds, which
        costs one index probe on the request id."""
        wake = asyncio.Event()
        listener = asyncio.create_task(self._listen(wake)) if self.queue.conninfo else None
        try:
            while True:
                batch = await self.trace(request_id, after=after)
                for event in batch:
                    after = event.id
                    yield event
                if len(batch) == 1000:
                    continue
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll)
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    async def _listen(self, wake: asyncio.Event) -> None:
        assert self.queue.conninfo is not None
        names = self.queue.names
        conn = await psycopg.AsyncConnection.connect(
            self.queue.conninfo, autocommit=True, application_name="jobq-follow")
        async with conn:
            for channel in (names.channel, names.done_channel):
                await conn.execute(psql.SQL("LISTEN {}").format(psql.Identifier(channel)))
            async for _ in conn.notifies():
                wake.set()


__all__ = ["Admin", "AsyncAdmin", "ClearPreview", "Count", "Event", "Finding", "JobDetail",
           "JobRow", "Page", "Preview", "RepairResult", "TypeStats"]
