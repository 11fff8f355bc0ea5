"""Operator operations, shared by the `jobq` CLI and the `jobq-tui` console.

Every repair can first be previewed: how many rows it would change, sample ids, and the rows
that are not eligible with the reason, without changing anything. `Admin` is sync and
`AsyncAdmin` its twin; both drive the same operations over a queue's connections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import sql
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
class RepairResult:
    action: str
    changed: int
    #: Ids that were asked for but not changed (their state moved on in the meantime).
    skipped: list[int]


Progress = Callable[[int, int], None]
_ROW_FIELDS = [name for name in JobRow.__dataclass_fields__ if name != "result"]

# -- the operations ------------------------------------------------------------------------

_NEEDS = {"retry": ("failed",), "extend": ("claimed",), "delete": ("pending", "failed"),
          "delete-force": ("pending", "failed", "claimed")}


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
        (i, "not found" if i not in states else f"is {states[i]}, not {' or '.join(needs)}")
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

    def clear(self, older_than: timedelta | str) -> int:
        return self.queue.clear(older_than=older_than)


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

    async def clear(self, older_than: timedelta | str) -> int:
        return await self.queue.clear(older_than=older_than)


__all__ = ["Admin", "AsyncAdmin", "Event", "JobDetail", "JobRow", "Page", "Preview",
           "RepairResult"]
