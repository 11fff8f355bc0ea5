"""Operator operations, shared by the `jobq` CLI and the `jobq-tui` console.

Every repair can first be previewed: how many rows it would change, sample ids, and the rows
that are not eligible with the reason, without changing anything. `Admin` is sync and
`AsyncAdmin` its twin; both drive the same operations over a queue's connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql as psql

from . import _ops, listings
from ._ops import Op, Stmt
from ._twins import share_docstrings
from .dsn import describe
from .durations import parse_duration
from .errors import (
    DRIVER_ERRORS,
    DatabaseUnavailableError,
    InvalidInputError,
    JobqError,
    NotFoundError,
    ReplicaError,
    TransientError,
    classify,
)
from .filters import JobFilter, parse_filter
from .limits import Rate, describe_limits, rate_of
from .models import (
    LEASE_MS_MAX,
    clean_reason,
    optional_text,
    validate_id,
    validate_limit,
    validate_type,
    validate_when,
)
from .queue import AsyncJobQueue, JobQueue
from .schedules import Schedule, spec_of
from .sql import Statements

T = TypeVar("T")

#: Rows per statement for bulk repairs.
REPAIR_BATCH = 500
#: The longest an operator may extend a lease by: the API's own cap on a lease.
LEASE_MAX = timedelta(milliseconds=LEASE_MS_MAX)
#: How many ids a preview shows.
SAMPLE = 10
#: Seconds between checks when following a trace.
FOLLOW_POLL = 0.5
#: Events per poll of a follower; a full batch is followed by another poll at once.
FOLLOW_BATCH = 1000
#: Events per page when a whole trace is read (`Admin.trace_pages`).
TRACE_PAGE = 1000


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as operators see it; completed jobs come from history, with their payload when
    it was kept (`{"jobq_payload_not_kept": <bytes>}` when it was larger than the limit)."""

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
    #: The length of the lease its holder renews (None before schema 5 and in history).
    lease_ms: int | None = None
    result: Any = None
    #: The key a key limit counts it under, when its producer gave one.
    concurrency_key: str | None = None
    #: The W3C trace context of the span that enqueued it (`jobq_core.tracing`), if any.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class Count:
    """A count that is exact up to `COUNT_CAP`; above it, the planner's estimate."""

    value: int
    exact: bool

    def __str__(self) -> str:
        return str(self.value) if self.exact else f"~{self.value}"


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
    #: Every row the listing has, over all pages (when asked for with `total=True`).
    total: Count | None = None


@dataclass(frozen=True, slots=True)
class JobDetail:
    job: JobRow | None  # None once the job has left the queue (completed or deleted)
    events: list[Event]
    #: Its type's limits, and the schedule that fires jobs of its type, if any.
    limits: LimitRow | None = None
    schedule: ScheduleRow | None = None

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
    #: Of a cancel's changed ids, those that were running: their holders stop them at their
    #: next heartbeat.
    running: list[int] = field(default_factory=list)


Progress = Callable[[int, int], None]
#: The listings' columns (listings.py): a listing shows neither results, keys nor traces.
_ROW_FIELDS = [name for name in JobRow.__dataclass_fields__
               if name not in ("result", "concurrency_key", "traceparent", "tracestate")]

@dataclass(frozen=True, slots=True)
class Pause:
    """A paused type: claims skip it until it is resumed, or until `until` when given."""

    type: str
    paused_at: datetime
    until: datetime | None
    paused_by: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class TypeStats:
    type: str
    ready: Count
    scheduled: Count
    claimed: Count
    #: Claimed jobs with less than half of their own lease left: a heartbeat was missed.
    late: Count
    #: Claimed jobs whose lease has run out (a claim of a worker serving the type takes
    #: them back).
    expired: Count
    failed: Count
    cancelled: Count
    oldest_ready_age: timedelta | None
    #: Per minute over the last hour, oldest first (60 values).
    completed_per_min: list[int]
    failed_per_min: list[int]
    #: Set while the type is paused.
    paused: Pause | None = None
    #: Whether a live worker (one that beats) serves the type.
    served: bool = False
    #: Its fleet-wide limits and their use, if it has any.
    limits: LimitRow | None = None


@dataclass(frozen=True, slots=True)
class Worker:
    """A runner in the registry, as its beats left it."""

    id: str
    name: str
    host: str
    pid: int
    types: list[str]
    concurrency: int
    in_flight: int
    started_at: datetime
    last_seen: datetime
    beat_seconds: float
    drain_requested_at: datetime | None
    drain_requested_by: str | None
    version: str | None
    #: False once three beats were missed: it died, or cannot reach the database.
    alive: bool
    silent_for: float

    @property
    def status(self) -> str:
        if not self.alive:
            return "lost"
        return "draining" if self.drain_requested_at is not None else "running"


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A periodic job's schedule, as the runners serving it registered it."""

    name: str
    #: `cron <expression> <time zone>` or `every <seconds>s`.
    spec: str
    missed: str
    #: The newest slot handled (fired, or passed over as missed).
    last_slot: datetime
    #: The job of the newest slot fired, and its state: live, or its last event.
    last_job_id: int | None
    last_state: str | None
    fired_at: datetime | None
    #: When the schedule fires next; None when this machine cannot read it (an unknown
    #: time zone, say).
    next_slot: datetime | None
    registered_at: datetime
    registered_by: str


@dataclass(frozen=True, slots=True)
class LimitRow:
    """A type's fleet-wide limits (`jobq_core.limits`), as the runners serving it registered
    them, and how much of them is in use."""

    type: str
    global_concurrency: int | None
    key_concurrency: int | None
    #: The payload field a key is read from, when the task names one.
    key_field: str | None
    #: The type's rate, and the per-key rate; None without.
    rate: Rate | None
    key_rate: Rate | None
    #: Claimed jobs of the type now (expired leases included), how many keys they are
    #: under, and the most under one key.
    in_use: int
    keys_in_use: int
    busiest_key: int
    #: Whole claims the rate allows now (its tokens).
    tokens: float | None
    registered_at: datetime
    registered_by: str
    #: How many claims of the type may run at once, each within its lane's share of every
    #: limit (the schema's `limits_lanes`).
    lanes: int

    @property
    def summary(self) -> str:
        """The limits: "global 4, per key 2 (field 'tenant'), rate 100/s burst 100"."""
        return describe_limits(self.global_concurrency, self.key_concurrency, self.key_field,
                               self.rate, self.key_rate)

    @property
    def usage(self) -> str:
        """What is in use: "slots 3/4, busiest key 2/2 of 3 keys, tokens 57/100"."""
        parts = [f"slots {self.in_use}/{self.global_concurrency}"
                 if self.global_concurrency is not None else f"claimed {self.in_use}"]
        if self.key_concurrency is not None:
            keys = f"{self.keys_in_use} key" + ("" if self.keys_in_use == 1 else "s")
            parts.append(f"busiest key {self.busiest_key}/{self.key_concurrency} of {keys}")
        if self.tokens is not None and self.rate is not None:
            parts.append(f"tokens {int(self.tokens)}/{self.rate.burst}")
        if self.lanes > 1:
            parts.append(f"{self.lanes} lanes")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: str  # ok, warn or error
    detail: str
    fix: str | None = None
    #: The finding's subject, for scripts (`jobq doctor --json`): e.g. an xmin holder's pid.
    facts: dict[str, Any] | None = None


#: Counts above this come from the planner, so a refresh costs the same for any backlog.
COUNT_CAP = 10_000
#: The same for a type's due and scheduled jobs, the counts that read a backlog: 10,000 of
#: them cost about 10 ms per type, against `Admin.stats()`'s 20 ms budget for all types.
PENDING_CAP = 1_000

# -- the operations ------------------------------------------------------------------------

#: The states each repair changes (`preview` names the others; the console hides an
#: action that applies to none of the jobs in hand).
ELIGIBLE = {"retry": ("failed", "cancelled"), "extend": ("claimed",),
            "delete": ("pending", "failed", "cancelled"),
            "delete-force": ("pending", "failed", "cancelled", "claimed"),
            "cancel": ("pending", "claimed")}


#: Why a repair left an id alone that names no live job.
NOT_IN_QUEUE = "not in the queue (completed, deleted or never existed)"


def _row(values: Sequence[Any]) -> tuple[JobRow, int]:
    """A listed row and its keyset key (the job id, or the history row id when completed)."""
    return JobRow(**dict(zip(_ROW_FIELDS, values[:-2], strict=True)), result=values[-1]), \
        values[-2]


def _cursor_for(state: str | None, row: JobRow, key: int, sort: str | None) -> str:
    if sort is not None:
        value = _sort_value(row, sort)
        shown = value.isoformat() if isinstance(value, datetime) else value
        return json.dumps([sort, shown, key])
    if state in listings.RUN_ORDER_STATES:
        return f"{row.priority}|{row.run_at.isoformat() if row.run_at else ''}|{key}"
    if state == "failed":
        return f"{row.failed_at.isoformat() if row.failed_at else ''}|{key}"
    if state in ("claimed", "expired"):
        return f"{row.lease_until.isoformat() if row.lease_until else ''}|{key}"
    return str(key)


def _sort_value(row: JobRow, sort: str) -> Any:
    """The row's value of the sorted column (each sort is named after its JobRow field)."""
    return getattr(row, sort.removeprefix("-"))


def validate_sort(sort: object, state: str | None) -> str | None:
    """A sort name from `listings.SORTS` ("-" first for descending) that the listing has."""
    if sort is None:
        return None
    if isinstance(sort, str):
        with contextlib.suppress(KeyError):
            listings.sort_column(sort, state == "completed")
            return sort
    listing = "completed jobs" if state == "completed" else "live jobs"
    names = [n for n in listings.SORTS if listings.SORTS[n][1 if state == "completed" else 0]]
    raise InvalidInputError(f"cannot sort {listing} by {sort!r}: use one of "
                            f"{', '.join(names)} (- first for descending)")


def _parse_sorted_cursor(sort: str, cursor: str) -> tuple[Any, ...]:
    try:
        named, value, key = json.loads(cursor)
    except (ValueError, TypeError):
        raise InvalidInputError(f"invalid cursor {cursor!r}") from None
    if named != sort or not isinstance(key, int) or isinstance(key, bool):
        raise InvalidInputError(f"cursor {cursor!r} is not one of a listing sorted by {sort}")
    if sort.removeprefix("-") in listings.TIME_SORTS and value is not None:
        try:
            value = datetime.fromisoformat(value)
        except (ValueError, TypeError):
            raise InvalidInputError(f"invalid cursor {cursor!r}") from None
    return value, key


def _parse_cursor(state: str | None, cursor: str, sort: str | None) -> tuple[Any, ...]:
    if sort is not None:
        return _parse_sorted_cursor(sort, cursor)
    try:
        if state in listings.RUN_ORDER_STATES:
            priority, at, job_id = cursor.split("|")
            return int(priority), datetime.fromisoformat(at), int(job_id)
        if state in ("failed", "claimed", "expired"):
            at, _, job_id = cursor.rpartition("|")
            return datetime.fromisoformat(at), int(job_id)
        return None, int(cursor)
    except ValueError:
        raise InvalidInputError(f"invalid cursor {cursor!r}") from None


def _where(flt: JobFilter) -> dict[str, Any]:
    where: dict[str, Any] = {}
    for name in ("job_id", "type", "request_id", "error", "age", "attempts"):
        value = getattr(flt, name)
        if value is not None:
            where[name] = value
    return where


def list_jobs(st: Statements, flt: JobFilter, after: str | None, limit: int, *,
              sort: str | None = None, total: bool = False) -> Op[Page]:
    """One page of a listing: in the state's own order (by its index), or sorted by a
    column of `listings.SORTS` across every row the filter selects; with the listing's total
    (exact up to `COUNT_CAP`, the planner's estimate above) when `total`."""
    limit = validate_limit(limit, maximum=1000)
    sort = validate_sort(sort, flt.state)
    cursor = _parse_cursor(flt.state, after, sort) if after else None
    where = _where(flt)
    query, params = listings.list_jobs(st.names, where, flt.state, cursor, limit, sort=sort)
    keyed = [_row(r) for r in (yield Stmt(query, params))]
    next_cursor = None
    if len(keyed) == limit:
        next_cursor = _cursor_for(flt.state, *keyed[-1], sort)
    count = None
    if total:
        count = yield from _total(st, where, flt.state)
    return Page([row for row, _ in keyed], next_cursor, count)


def _total(st: Statements, where: dict[str, Any], state: str | None) -> Op[Count]:
    counted: int = (yield Stmt(*listings.count_jobs(st.names, where, state, COUNT_CAP)))[0][0]
    if counted < COUNT_CAP:
        return Count(counted, True)
    plan = (yield Stmt(*listings.estimate_jobs(st.names, where, state)))[0][0]
    return Count(max(int(plan[0]["Plan"]["Plan Rows"]), COUNT_CAP), False)


def show(st: Statements, job_id: int) -> Op[JobDetail]:
    job_id = validate_id(job_id)
    live = yield Stmt(st.show_job, {"id": job_id})
    history = [Event(*r) for r in (yield Stmt(st.job_events, {"id": job_id}))]
    if not live and not history:
        raise NotFoundError(f"no job with id {job_id}, live or in history")
    job = JobRow(*live[0]) if live else None
    job_type = job.type if job is not None else history[0].type
    limited = [row for row in (yield from limits(st)) if row.type == job_type]
    scheduled = [row for row in (yield from schedules(st)) if row.name == job_type]
    return JobDetail(job, history, limited[0] if limited else None,
                     scheduled[0] if scheduled else None)


def validate_trace(request_id: object, after: object) -> None:
    """The same rule as a request id given at enqueue: one that could not be stored is
    refused here, not by the driver."""
    # No length limit: a request id that another client stored long must still be traceable.
    if optional_text(request_id, "request id", maximum=sys.maxsize) is None:
        raise InvalidInputError("trace needs a request id")
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        raise InvalidInputError(f"after must be an event id (>= 0), got {after!r}")


def trace(st: Statements, request_id: str, after: int = 0, limit: int = 1000) -> Op[list[Event]]:
    """The first `limit` events of every job under `request_id`, oldest first, after event id
    `after` (the next page starts after the last one's id)."""
    validate_trace(request_id, after)
    rows = yield Stmt(st.trace, {"request_id": request_id, "after": after,
                                 "limit": validate_limit(limit, maximum=10_000)})
    return [Event(*r) for r in rows]


class TraceTail:
    """Where a follower of one request's trace stands; gap-free and duplicate-free although
    event ids are drawn at insert time and transactions commit in any order.

    Why it works: every jobq statement gives its transaction an id (writes the jobs table, or
    takes `pg_current_xact_id()`) before it draws an event id, and ids are handed out in
    order. So every event id at or below the highest id delivered so far (`high`) was drawn
    by a transaction whose xid is below the next-xid bound read right after a later poll's
    snapshot was taken. Once a snapshot's xmin reaches that bound, all those transactions
    have ended and the poll made with that snapshot saw every one of their committed events:
    the range up to `high` is final and `low` moves up to it. Above `low`, `seen` holds the
    delivered ids, so an event that commits after higher ones is delivered once, late, and
    nothing twice. A long open transaction anywhere in the database holds `low` back (never
    correctness); meanwhile `seen` grows with the request's new events.

    Pure state, kept in memory: the twins' `follow`, the CLI and the console's trace tail
    drive it with `follow_step`, and it carries on unchanged across reconnects. An event
    counts as delivered once a step returns it."""

    def __init__(self, request_id: str, after: int = 0) -> None:
        validate_trace(request_id, after)
        self.request_id = request_id
        #: Every event with an id up to here was delivered, or will never commit.
        self.low = after
        #: The highest id delivered.
        self.high = after
        #: Delivered ids above `low`.
        self.seen: set[int] = set()
        #: The last poll filled its batch: poll again at once.
        self.more = False
        # (id, xid): ids up to `id` are final once a snapshot's xmin >= xid. Both ascend.
        self._bounds: deque[tuple[int, int]] = deque()

    def params(self, limit: int) -> dict[str, Any]:
        return {"request_id": self.request_id, "low": self.low, "seen": sorted(self.seen),
                "limit": limit}

    def advance(self, events: Sequence[Event], xmin: int, next_xid: int | None,
                limit: int) -> list[Event]:
        """Take one poll's result (events in id order, the snapshot's xmin, the next-xid
        bound or None when unknown); returns the events not delivered before."""
        fresh = [e for e in events if e.id > self.low and e.id not in self.seen]
        self.seen.update(e.id for e in fresh)
        self.high = max([self.high, *(e.id for e in fresh)])
        self.more = len(events) >= limit
        if next_xid is not None and self.high > self.low and (
                not self._bounds or self._bounds[-1][0] < self.high):
            self._bounds.append((self.high, next_xid))
        final = None
        while self._bounds and self._bounds[0][1] <= xmin:
            final = self._bounds.popleft()[0]
        if final is None:
            return fresh
        if self.more and events and final > events[-1].id:
            # This poll read only up to its last event: final up to there now, the rest at
            # the next poll (the bound stays met, xmin never goes back).
            self._bounds.appendleft((final, xmin))
            final = events[-1].id
        if final > self.low:
            self.low = final
            self.seen = {i for i in self.seen if i > final}
        return fresh


def follow_step(st: Statements, tail: TraceTail, limit: int = FOLLOW_BATCH) -> Op[list[Event]]:
    """One poll of a follower: the events under `tail.request_id` it has not delivered yet.

    Must run as a statement of its own transaction (autocommit, as the queues run it), so
    that its snapshot and its next-xid reading are fresh; otherwise it only dedupes."""
    limit = validate_limit(limit, maximum=10_000)
    rows = yield Stmt(st.trace_follow, tail.params(limit))
    xmin, next_xid = rows[0][0], rows[0][1]
    events = [Event(*r[2:]) for r in rows if r[2] is not None]
    return tail.advance(events, xmin, next_xid, limit)


class Backoff:
    """Seconds to wait before the next attempt: 1, 2, 4, 8, then 10; `reset` after a
    success."""

    def __init__(self, first: float = 1.0, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self._delay = first

    def next(self) -> float:
        delay = self._delay
        self._delay = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._delay = self.first


#: Told of each change of a follower's outage state: the error when it begins, None when the
#: database answers again.
OutageHook = Callable[[JobqError | None], None]


class _Outage:
    """A follower's outage bookkeeping, for both twins: a transient failure is reported
    once to `hook` and waited out with backoff; the first success after it reports the end.
    A failure that will not pass by waiting is raised."""

    def __init__(self, hook: OutageHook | None) -> None:
        self.hook = hook
        self.down = False
        self.backoff = Backoff()

    def failed(self, exc: BaseException) -> float:
        """The pause before the next try."""
        error = classify(exc)
        if not isinstance(error, TransientError):
            raise error from None
        if not self.down and self.hook is not None:
            self.hook(error)
        self.down = True
        return self.backoff.next()

    def answered(self) -> None:
        if self.down and self.hook is not None:
            self.hook(None)
        self.down = False
        self.backoff.reset()


def _pause(values: Sequence[Any]) -> Pause:
    job_type, at, until, by, reason = values
    return Pause(job_type, at, until, by, reason)


def stats(st: Statements, *, fold: bool = True) -> Op[list[TypeStats]]:
    """Per type: ready, scheduled, claimed, late, expired, failed, cancelled, oldest ready
    age, completed/failed per minute over the last hour, whether it is paused and whether a
    live worker serves it. Cost grows with the number of types, not with the backlog or the
    history. Runs in one transaction (the caller's), of small reads (`small_reads`).
    Folds the rates first, unless not to `fold` (a standby, which cannot write, shows what
    the primary's runners folded)."""
    if fold:
        yield from _ops.fold_rates(st)  # which sets the transaction for small reads
    else:
        yield Stmt(st.small_reads)
    types = [r[0] for r in (yield Stmt(st.stats_types))]
    paused = {p.type: p for p in (yield from pauses(st))}
    limited = {row.type: row for row in (yield from limits(st))}
    served = {r[0] for r in (yield Stmt(st.stats_served))}
    done_per_minute: dict[str, list[int]] = {}
    failed_per_minute: dict[str, list[int]] = {}
    for job_type, minute, done, dead in (yield Stmt(st.stats_rates)):
        done_per_minute.setdefault(job_type, [0] * 60)[minute] = done
        failed_per_minute.setdefault(job_type, [0] * 60)[minute] = dead
    rows = []
    for job_type in types:
        rows.append((yield Stmt(st.stats_type, {"type": job_type, "cap": COUNT_CAP,
                                                "pending_cap": PENDING_CAP}))[0])
    states = ("pending", "pending", "claimed", None, None, "failed", "cancelled")
    caps = (PENDING_CAP, PENDING_CAP, COUNT_CAP, COUNT_CAP, COUNT_CAP, COUNT_CAP, COUNT_CAP)
    capped = sorted({(job_type, state) for job_type, row in zip(types, rows, strict=True)
                     for state, value, cap in zip(states, row[:7], caps, strict=True)
                     if state is not None and value >= cap})
    estimates: dict[tuple[str, str], int] = {}
    due = 0.5
    if capped:
        found = yield Stmt(st.stats_estimates, {
            "jobs_name": st.names.regclass(), "types": [t for t, _ in capped],
            "states": [s for _, s in capped]})
        estimates = {(job_type, state): n for job_type, state, n, _ in found}
        due = found[0][3] if found else due
    result = []
    for job_type, row in zip(types, rows, strict=True):
        counts = [Count(value, value < cap) for value, cap in zip(row[:7], caps, strict=True)]
        for i in (2, 5, 6):  # claimed, failed, cancelled
            if not counts[i].exact:
                counts[i] = Count(max(estimates.get((job_type, states[i] or ""), 0), COUNT_CAP),
                                  False)
        counts[0], counts[1] = _split_pending(counts[0], counts[1],
                                              estimates.get((job_type, "pending"), 0), due)
        ready, scheduled, claimed, late, expired, failed, cancelled = counts
        result.append(TypeStats(job_type, ready, scheduled, claimed, late, expired, failed,
                                cancelled, row[7], done_per_minute.get(job_type, [0] * 60),
                                failed_per_minute.get(job_type, [0] * 60), paused.get(job_type),
                                job_type in served, limited.get(job_type)))
    return result


def _split_pending(ready: Count, scheduled: Count, pending: int, due: float
                   ) -> tuple[Count, Count]:
    """Due and scheduled counts beyond the cap, from the estimate of the type's pending jobs:
    less the exact other count when there is one, else split by the share of run_at due."""
    if ready.exact and scheduled.exact:
        return ready, scheduled
    if ready.exact:
        return ready, Count(max(pending - ready.value, PENDING_CAP), False)
    if scheduled.exact:
        return Count(max(pending - scheduled.value, PENDING_CAP), False), scheduled
    return (Count(max(round(pending * due), PENDING_CAP), False),
            Count(max(round(pending * (1 - due)), PENDING_CAP), False))


def pause(st: Statements, types: Sequence[str], until: timedelta | None, by: str,
          reason: str | None) -> Op[list[Pause]]:
    """Pause `types` (for `until`, or until resumed); returns the pauses now in force."""
    checked = _type_list(types)
    if until is not None and until <= timedelta(0):
        raise InvalidInputError("a pause's duration must be positive")
    rows = yield Stmt(st.pause, {"types": checked, "for": until, "by": clean_reason(by),
                                 "reason": optional_text(reason, "reason")})
    return [_pause(r) for r in rows]


def resume(st: Statements, types: Sequence[str]) -> Op[list[str]]:
    """Resume `types`; returns those that were paused."""
    rows = yield Stmt(st.resume, {"types": _type_list(types)})
    return sorted(r[0] for r in rows)


def pauses(st: Statements) -> Op[list[Pause]]:
    return [_pause(r) for r in (yield Stmt(st.pauses))]


def workers(st: Statements) -> Op[list[Worker]]:
    return [Worker(*r) for r in (yield Stmt(st.workers))]  # text[] arrives as a list


def schedules(st: Statements) -> Op[list[ScheduleRow]]:
    found = []
    for (name, cron, tz, every, missed, last_slot, job_id, fired_at, registered_at,
         registered_by, last_state, now) in (yield Stmt(st.schedules)):
        try:
            schedule = Schedule(name, cron=cron, every=every, tz=tz or "UTC", missed=missed)
            spec, next_slot = schedule.spec, schedule.next_slot(max(now, last_slot))
        except InvalidInputError:  # a row this version cannot read: shown as it is
            spec, next_slot = spec_of(cron, tz, every), None
        found.append(ScheduleRow(name, spec, missed, last_slot, job_id, last_state, fired_at,
                                 next_slot, registered_at, registered_by))
    return found


def remove_schedule(st: Statements, name: str) -> Op[None]:
    """Forget a schedule no runner serves any more (one that still does registers it again
    at its next tick)."""
    if not (yield Stmt(st.schedule_remove, {"name": validate_type(name, "schedule name")})):
        raise NotFoundError(f"no schedule named {name!r} (see `jobq schedules`)")


def limits(st: Statements) -> Op[list[LimitRow]]:
    found = []
    for (type_, global_c, key_c, key_field, count, period, burst, key_count, key_period,
         key_burst, in_use, keys, busiest, tokens, registered_at, registered_by,
         lanes) in (yield Stmt(st.limits)):
        found.append(LimitRow(type_, global_c, key_c, key_field, rate_of(count, period, burst),
                              rate_of(key_count, key_period, key_burst), in_use, keys,
                              busiest, tokens, registered_at, registered_by, lanes))
    return found


def remove_limit(st: Statements, type_: str) -> Op[None]:
    """Forget a type's limits (a runner serving it with limits records them again when it
    starts)."""
    type_ = validate_type(type_)
    yield from _ops.lock_limits(st, [type_])
    yield Stmt(st.limit_lanes_lock, {"type": type_})
    if not (yield Stmt(st.limit_remove, {"type": type_})):
        raise NotFoundError(f"type {type_!r} has no limits (see `jobq limits`)")


def drain(st: Statements, worker_id: str, by: str) -> Op[None]:
    """Ask worker `worker_id` to stop claiming and exit once its running jobs finish."""
    if not isinstance(worker_id, str) or not worker_id:
        raise InvalidInputError("a worker id is a non-empty string (see `jobq workers`)")
    if not (yield Stmt(st.drain, {"id": worker_id, "by": clean_reason(by)})):
        raise NotFoundError(f"no worker with id {worker_id!r} (see `jobq workers`)")


# -- reads on a replica ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """Which server a session is on."""

    in_recovery: bool
    #: pg_control_system()'s identifier: a primary and its physical standbys share it.
    system: int
    database: str


@dataclass(frozen=True, slots=True)
class Replication:
    """How far a read replica is behind its primary (`Admin.replication`).

    `lag` is 0 while the replica streams (a WAL receiver runs) and has replayed all the WAL
    it received: the primary's quiet spells cost nothing, where the age of the last
    transaction replayed would grow through them. Otherwise it is that age, by the
    replica's clock: the primary's commit time of the newest transaction it has replayed,
    which overstates the lag right after a quiet spell, and is None before any was replayed
    since the replica started."""

    #: A WAL receiver runs: the replica streams from its primary.
    streaming: bool
    receive_lsn: str | None
    replay_lsn: str | None
    #: Bytes of WAL received and not yet replayed.
    replay_pending: int
    #: The primary's commit time of the last transaction replayed.
    last_replayed: datetime | None
    lag: timedelta | None
    #: The replica has replayed the last action this `Admin` took (True when it took none).
    has_own_writes: bool
    #: user@host:port/dbname of the replica, without the password.
    where: str = ""

    @property
    def caught_up(self) -> bool:
        return self.lag == timedelta(0)


def server_identity(st: Statements) -> Op[ServerIdentity]:
    return ServerIdentity(*(yield Stmt(st.server_identity))[0])


def check_replica(primary: ServerIdentity, replica: ServerIdentity, where: str) -> None:
    """Raise `ReplicaError` unless `replica` is a hot standby of `primary`'s database."""
    if not replica.in_recovery:
        raise ReplicaError(f"the read DSN ({where}) is not a standby: it is not in recovery "
                           "(a primary, or a promoted standby); give a streaming replica of "
                           "the primary, or read the primary")
    if replica.system != primary.system:
        raise ReplicaError(f"the read DSN ({where}) is a standby of another cluster (system "
                           f"identifier {replica.system}, the primary's is {primary.system})")
    if replica.database != primary.database:
        raise ReplicaError(f"the read DSN ({where}) names database {replica.database!r}, the "
                           f"primary's is {primary.database!r}")


def replication(st: Statements, written: str | None, where: str) -> Op[Replication]:
    """Where the replica stands, and whether it has replayed WAL position `written`."""
    (in_recovery, streaming, received, replayed, pending, last, age, applied) = (
        yield Stmt(st.replication, {"written": written}))[0]
    if not in_recovery:
        raise ReplicaError(f"the read replica ({where}) is no longer a standby: it was "
                           "promoted; read the primary, or give a standby of it")
    if streaming and received is not None and pending == 0:
        lag: timedelta | None = timedelta(0)
    else:
        lag = None if age is None else max(age, timedelta(0))
    return Replication(streaming, received, replayed, pending, last, lag, applied, where)


def wal_position(st: Statements) -> Op[str]:
    position: str = (yield Stmt(st.wal_position))[0][0]
    return position


def replica_unavailable(exc: DatabaseUnavailableError) -> DatabaseUnavailableError:
    """The same outage, named as the read replica's rather than the primary's."""
    error = DatabaseUnavailableError(
        "read replica unavailable: " + str(exc).removeprefix("database unavailable: "))
    error.sqlstate = exc.sqlstate
    return error


def _type_list(types: Sequence[str]) -> list[str]:
    if isinstance(types, str) or not isinstance(types, Sequence):
        raise InvalidInputError("types must be a list of job type names")
    checked = sorted({validate_type(t) for t in types})
    if not checked:
        raise InvalidInputError("no job types given")
    return checked


#: A session whose transaction began less than this many seconds ago while it runs a
#: statement is in flight (a worker's claim, say), not holding anything back for long.
IN_FLIGHT = 1.0
#: A transaction open longer than this is a warning even with no dead rows behind it yet.
LONG_TRANSACTION = 300.0


@dataclass(frozen=True, slots=True)
class Holder:
    """Something that holds back the xmin horizon: vacuum keeps every row it may still see."""

    kind: str  # session, prepared, slot or catalog slot
    pid: int | None
    name: str | None  # a prepared transaction's gid, a slot's name
    application_name: str  # for a slot: its plugin ('' when physical)
    state: str
    seconds: float | None  # how long its transaction has been open (None for a slot)
    xid_age: int
    via: str  # what it holds the horizon by: snapshot, transaction id, xmin, catalog_xmin
    query: str | None

    @property
    def label(self) -> str:
        if self.kind == "session":
            return f"pid {self.pid}"
        if self.kind == "prepared":
            return f"prepared transaction {_literal(self.name or '')}"
        catalog = "catalog " if self.kind == "catalog slot" else ""
        return f"{catalog}slot {_literal(self.name or '')}"

    @property
    def in_flight(self) -> bool:
        return (self.kind == "session" and self.state == "active" and self.seconds is not None
                and self.seconds < IN_FLIGHT)

    def pins(self, dead_rows: bool) -> bool:
        """Whether it keeps vacuum from removing the queue's dead rows now. A catalog_xmin
        holds back the system catalogs only; a statement in flight ends by itself."""
        return dead_rows and self.kind != "catalog slot" and not self.in_flight

    def status(self, dead_rows: bool) -> str:
        if self.pins(dead_rows) or self.kind in ("prepared", "slot"):
            return "warn"  # prepared transactions and slots never end by themselves
        if self.kind == "session" and (self.seconds or 0) > LONG_TRANSACTION:
            return "warn"
        if self.kind == "catalog slot" and self.state == "inactive":
            return "warn"  # an abandoned logical slot also keeps all WAL since
        return "ok"

    @property
    def fix(self) -> str:
        if self.kind == "session":
            if self.state.startswith("idle in transaction"):
                return (f"end that transaction in {self.application_name or 'its application'}"
                        f" (COMMIT or ROLLBACK), or SELECT pg_terminate_backend({self.pid})")
            return (f"let it finish, or SELECT pg_cancel_backend({self.pid}) (its statement) "
                    f"or SELECT pg_terminate_backend({self.pid}) (its session)")
        if self.kind == "prepared":
            gid = _literal(self.name or "")
            return (f"COMMIT PREPARED {gid} or ROLLBACK PREPARED {gid} (whichever its "
                    "transaction manager meant; as its owner or a superuser, in this database)")
        drop = f"SELECT pg_drop_replication_slot({_literal(self.name or '')})"
        if self.state == "active":
            return (f"its consumer (pid {self.pid}) holds it back: fix or stop that consumer "
                    f"(a standby's hot_standby_feedback and long queries); if it is no longer "
                    f"needed, stop it and {drop}")
        return f"{drop}, if nothing will consume it again"

    def describe(self) -> str:
        held = f"holds the horizon by its {self.via}, xid age {self.xid_age}"
        if self.kind == "session":
            return (f"session pid {self.pid} ({self.application_name or 'no application_name'}"
                    f", {self.state}), transaction open {_seconds(self.seconds)}, {held}"
                    + (f": {self.query!r}" if self.query else ""))
        if self.kind == "prepared":
            return (f"prepared transaction {_literal(self.name or '')} ({self.state}), "
                    f"prepared {_seconds(self.seconds)} ago, {held}")
        kind = "logical" if self.application_name else "physical"
        consumer = f", consumer pid {self.pid}" if self.pid is not None else ""
        only = "; the system catalogs only, not the queue's tables" \
            if self.kind == "catalog slot" else ""
        return f"{kind} replication slot {_literal(self.name or '')} ({self.state}" \
            f"{consumer}), {held}{only}"

    def facts(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": self.pid, "name": self.name,
                "application_name": self.application_name, "state": self.state,
                "seconds": self.seconds, "xid_age": self.xid_age, "via": self.via,
                "fix": self.fix}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _seconds(value: float | None) -> str:
    if value is None:
        return "for an unknown time"
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def doctor(st: Statements) -> Op[list[Finding]]:
    """Health checks of the queue's tables and of what affects them, each with its fix.

    Never recommends a VACUUM that cannot help: while something holds back the xmin horizon,
    the fix for dead rows is to end that holder first."""
    from .schema import LATEST_VERSION, current_version

    names = {"jobs": st.names.regclass(), "events": st.names.regclass("_events"),
             "rates": st.names.regclass("_rates"), "keys": st.names.regclass("_keys")}
    findings: list[Finding] = []
    version = yield from current_version(st)
    findings.append(Finding(
        "schema version", "ok" if version == LATEST_VERSION else "warn",
        f"at version {version}, this jobq knows {LATEST_VERSION}",
        None if version == LATEST_VERSION else "jobq migrate (or any queue's first use)"))
    # Holders first: the tables' fixes depend on them.
    holders = [Holder(*r) for r in (yield Stmt(st.doctor_holders))]
    tables = list((yield Stmt(st.doctor_tables, names)))
    dead_rows = any(row[4] for row in tables)
    pinning = [h for h in holders if h.pins(dead_rows)]
    for name, total, heap, live, dead, vacuumed, analyzed in tables:
        ratio = dead / max(live + dead, 1)
        bloated = dead > 10_000 and ratio > 0.2
        detail = (f"{_size(total)} with indexes ({_size(heap)} heap); {live} live, {dead} dead "
                  f"rows ({ratio:.0%}); last vacuum {vacuumed or 'never'}, last analyze "
                  f"{analyzed or 'never'}")
        fix = None
        if dead and pinning:
            detail += f"; vacuum cannot remove them while {_names(pinning)} hold(s) the horizon"
            fix = (f"end what holds the xmin horizon first ({_names(pinning)}; see "
                   "'xmin holder' below); until then a VACUUM removes none of these rows, "
                   f"afterwards autovacuum (or VACUUM (ANALYZE) {name}) can")
        elif bloated:
            fix = (f"VACUUM (ANALYZE) {name}; and for a queue table: ALTER TABLE {name} SET "
                   "(autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0)")
        findings.append(Finding(f"table {name}", "warn" if fix else "ok", detail, fix))
    for index, size, valid in (yield Stmt(st.doctor_indexes, names)):
        findings.append(Finding(
            f"index {index}", "ok" if valid else "error",
            f"{_size(size)}" + ("" if valid else "; INVALID (a failed concurrent build)"),
            None if valid else f"REINDEX INDEX CONCURRENTLY {index}"))
    findings += _horizon_findings(holders, dead_rows)
    if version >= 7:
        findings.append((yield from _partition_finding(st, names["events"])))
    cache = (yield Stmt(st.doctor_events_sequence, names))
    if cache and cache[0][0] > 1:
        findings.append(Finding(
            "event ids", "warn",
            f"the history's id sequence caches {cache[0][0]} values per session, so ids are "
            "not handed out in order and a trace follower (jobq trace --follow, the console's "
            "trace tail) may miss events",
            f"ALTER TABLE {names['events']} ALTER COLUMN id SET CACHE 1"))
    expired = (yield Stmt(st.doctor_expired))[0][0]
    findings.append(Finding(
        "expired leases", "warn" if expired else "ok",
        f"{expired}{'+' if expired >= 10_000 else ''} claimed jobs whose lease ran out",
        "the next claim takes them back; if none comes, no worker serves their types: start "
        "one (jobq worker module:runner)" if expired else None))
    return findings


def _partition_finding(st: Statements, events: str) -> Op[Finding]:
    """Whether the history's daily partitions reach a day ahead, as folds keep them."""
    days, until, ahead, in_default = (
        yield Stmt(st.doctor_partitions, {"events": events}))[0]
    detail = (f"{days} partitions, through {until:%Y-%m-%d %H:%M %Z}" if until else
              f"{days} partitions") + f"; about {in_default or 0} rows in the default partition"
    if ahead:
        return Finding("history partitions", "ok", detail, None)
    return Finding(
        "history partitions", "warn", detail + "; new history goes to the default partition",
        f"jobq status (a fold makes them) as a role that may execute "
        f"{st.names.regclass('_events_ahead')}, or jobq migrate")


def _names(holders: Sequence[Holder]) -> str:
    return ", ".join(h.label for h in holders)


def _horizon_findings(holders: list[Holder], dead_rows: bool) -> list[Finding]:
    """A summary, then one finding per holder, oldest first."""
    if not holders:
        return [Finding("xmin horizon", "ok",
                        "no session, prepared transaction or replication slot holds it back")]
    warned = [h for h in holders if h.status(dead_rows) == "warn"]
    pinning = [h for h in holders if h.pins(dead_rows)]
    listed = "; ".join(
        f"{h.label} ({h.application_name or h.kind}, {h.state}, {_seconds(h.seconds)})"
        if h.kind in ("session", "prepared") else f"{h.label} ({h.state})" for h in holders)
    if pinning:
        detail = (f"{len(pinning)} of {len(holders)} holder(s) keep vacuum from removing the "
                  f"queue's dead rows: {listed}")
    elif dead_rows:
        detail = f"held only by statements in flight or the catalogs: {listed}"
    else:
        detail = f"held by {listed}; no dead rows are behind it yet"
    summary = Finding("xmin horizon", "warn" if warned else "ok", detail,
                      "end each holder marked WARN below (its fix says how)" if warned else None)
    return [summary] + [
        Finding(f"xmin holder {h.label}", h.status(dead_rows), h.describe(),
                h.fix if h.status(dead_rows) == "warn" else None, h.facts())
        for h in holders]


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


def _cutoff(older_than: timedelta | str | ClearPreview) -> timedelta | datetime:
    return older_than.cutoff if isinstance(older_than, ClearPreview) else parse_duration(
        older_than)


def _ids(ids: Sequence[int]) -> list[int]:
    checked = sorted({validate_id(i) for i in ids})
    if not checked:
        raise InvalidInputError("no job ids given")
    return checked


def preview(st: Statements, action: str, ids: Sequence[int]) -> Op[Preview]:
    """Which of `ids` the action would change, and why the others would be left alone."""
    wanted = _ids(ids)
    states: dict[int, str] = dict((yield Stmt(st.states_of, {"ids": wanted})))
    needs = ELIGIBLE[action]
    eligible = [i for i in wanted if states.get(i, "") in needs]
    ineligible = [
        (i, NOT_IN_QUEUE if i not in states else f"is {states[i]}, not {' or '.join(needs)}")
        for i in wanted if states.get(i, "") not in needs
    ]
    return Preview(action, len(eligible), eligible[:SAMPLE], ineligible)


def repair(st: Statements, action: str, ids: Sequence[int], *, run_at: object = None,
           by: timedelta | None = None, reason: str = "operator",
           progress: Progress | None = None) -> Op[RepairResult]:
    """Apply `action` (retry, extend, delete, delete-force, cancel) to `ids`, in batches."""
    wanted = _ids(ids)
    changed: list[int] = []
    running: list[int] = []
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
        elif action == "cancel":
            stmt = Stmt(st.cancel, {"ids": batch, "reason": note})
        else:
            raise InvalidInputError(f"unknown repair {action!r}")
        rows = yield stmt
        changed += [r[0] for r in rows]
        if action == "cancel":
            running += [r[0] for r in rows if r[1] == "claimed"]
        if progress is not None:
            progress(min(start + REPAIR_BATCH, len(wanted)), len(wanted))
    done = set(changed)
    return RepairResult(action, len(done), [i for i in wanted if i not in done],
                        sorted(set(running)))


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


def operator_name() -> str:
    """Who an operator's action is recorded as, unless they say: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cancel_reason(by: str | None, reason: str | None) -> str:
    why = optional_text(reason, "reason")
    return f"cancelled by {by or operator_name()}" + (f": {why}" if why else "")


def _pause_for(until: timedelta | str | None) -> timedelta | None:
    return None if until is None else parse_duration(until)


def as_filter(value: JobFilter | str | None) -> JobFilter:
    if value is None:
        return JobFilter()
    return value if isinstance(value, JobFilter) else parse_filter(value)


# -- the twins -------------------------------------------------------------------------------

#: Seconds between looks at a replica that `catch_up` waits for.
CATCH_UP_POLL = 0.05


def _shown(queue: JobQueue | AsyncJobQueue) -> str:
    """Where `queue` connects, as `describe` shows it."""
    conn = queue._conn
    return describe(conn.info.dsn if conn is not None else queue.conninfo or "")


class Admin:
    """Operator operations over a `JobQueue`'s database.

    Given `reads`, a queue on a hot standby of that database, the listings read there:
    `list_jobs`, `show`, `trace` (and `trace_pages`), `stats`, `pauses`, `workers` and
    `schedules`, after a
    check, at the first of them, that it is a standby of this very database (`ReplicaError`
    otherwise); `replication` says how far behind it is. Everything else uses `queue`, the
    primary: every action, its `preview` and `matching_ids` (an action acts on what was
    previewed), `doctor` (the primary's tables and sessions), and the trace follower
    (`poll_trace`, `follow`), whose gap-free delivery rests on the order in which the primary
    hands out transaction ids, which a standby only learns from the WAL, and whose NOTIFY only
    the primary sends."""

    def __init__(self, queue: JobQueue, *, reads: JobQueue | None = None) -> None:
        self.queue = queue
        self.reads = reads
        self._st = queue.statements
        self._replica_checked = False
        #: With `reads`: a primary WAL position at or past this Admin's last action.
        self._written: str | None = None

    def _run(self, op: Op[T], *, atomic: bool = False) -> T:
        # Operator operations never create or migrate tables: a typo in --table is an
        # error that names the fix, not four new tables.
        return self.queue._run(op, atomic=atomic, may_migrate=False)

    def _write(self, op: Op[T], *, atomic: bool = False) -> T:
        """An action, on the primary; with a replica, also where the WAL now ends, for
        `replication().has_own_writes`."""
        result = self._run(op, atomic=atomic)
        if self.reads is not None:
            self._written = self._run(wal_position(self._st))
        return result

    def _read(self, op: Callable[[Statements], Op[T]], *, atomic: bool = False) -> T:
        """`op` of the replica's statements on the replica when there is one, else on the
        primary."""
        if self.reads is None:
            return self._run(op(self._st), atomic=atomic)
        if not self._replica_checked:
            # Before either schema is checked: a wrong server is named as such.
            primary = self.queue._run(server_identity(self._st), schema_op=True)
            check_replica(primary, self._on_replica(server_identity, identity=True),
                          _shown(self.reads))
            self._replica_checked = True
        return self._on_replica(op, atomic=atomic)

    def _on_replica(self, op: Callable[[Statements], Op[T]], *, atomic: bool = False,
                    identity: bool = False) -> T:
        assert self.reads is not None
        try:
            return self.reads._run(op(self.reads.statements), atomic=atomic,
                                   may_migrate=False, schema_op=identity)
        except DatabaseUnavailableError as exc:
            raise replica_unavailable(exc) from None

    def replication(self) -> Replication | None:
        """How far the read replica is behind, and whether it shows this Admin's last
        action; None without a replica."""
        if self.reads is None:
            return None
        where = _shown(self.reads)
        return self._read(lambda st: replication(st, self._written, where))

    def catch_up(self, timeout: float) -> Replication | None:
        """`replication()`, once the replica shows this Admin's last action or `timeout`
        seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.replication()
            if state is None or state.has_own_writes or time.monotonic() >= deadline:
                return state
            time.sleep(CATCH_UP_POLL)

    def list_jobs(self, filter: JobFilter | str | None = None, *, after: str | None = None,
                  limit: int = 50, sort: str | None = None, total: bool = False) -> Page:
        """A page of jobs; see `list_jobs` (the operation) for `sort` and `total`."""
        flt = as_filter(filter)
        return self._read(lambda st: list_jobs(st, flt, after, limit, sort=sort, total=total))

    def show(self, job_id: int) -> JobDetail:
        return self._read(lambda st: show(st, job_id))

    def trace(self, request_id: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        return self._read(lambda st: trace(st, request_id, after, limit))

    def trace_pages(self, request_id: str, *, after: int = 0,
                    page: int = TRACE_PAGE) -> Iterator[list[Event]]:
        """The whole trace of `request_id` after event id `after`, oldest first, in pages of
        up to `page` events, each read by its own statement (keyset on the event id), so a
        trace of any length takes the memory of one page. An event that commits meanwhile
        below the page already read is not in it (`follow` delivers those too)."""
        while True:
            batch = self.trace(request_id, after=after, limit=page)
            if batch:
                yield batch
            if len(batch) < page:
                return
            after = batch[-1].id

    def poll_trace(self, tail: TraceTail) -> list[Event]:
        """One poll of a follower: what `tail` has not delivered yet (see `TraceTail`)."""
        return self._run(follow_step(self._st, tail))

    def follow(self, request_id: str, *, after: int = 0, poll: float = FOLLOW_POLL,
               tail: TraceTail | None = None,
               on_outage: OutageHook | None = None) -> Iterator[Event]:
        """Every event under `request_id` as it commits (after event id `after`), each
        once, forever. Woken by the queue's NOTIFY channels when the queue has a DSN, else
        polling every `poll` seconds.

        A transient failure (the database restarting, a statement timeout) is waited out
        with backoff, 1 s doubling to 10 s, and reported once to `on_outage`; nothing is lost
        or repeated, as long as the queue's connections come back by themselves (a DSN or a
        pool). Pass a `tail` to carry on where another follower stopped."""
        tail = tail if tail is not None else TraceTail(request_id, after)
        outage = _Outage(on_outage)
        listener: psycopg.Connection[Any] | None = None
        try:
            while True:
                try:
                    batch = self.poll_trace(tail)
                except (JobqError, *DRIVER_ERRORS) as exc:
                    pause = outage.failed(exc)
                    _close(listener)
                    listener = None
                    time.sleep(pause)
                    continue
                outage.answered()
                yield from batch
                if tail.more:
                    continue
                if listener is None and self.queue.listens:
                    listener = self._listener()
                if listener is None:
                    time.sleep(poll)
                    continue
                try:
                    if list(listener.notifies(timeout=poll, stop_after=1)):
                        # A burst of notifications wakes one poll, not one each.
                        list(listener.notifies(timeout=0.0))
                except DRIVER_ERRORS:
                    _close(listener)
                    listener = None
        finally:
            _close(listener)

    def _listener(self) -> psycopg.Connection[Any] | None:
        assert self.queue.conninfo is not None
        conn = None
        try:
            conn = psycopg.connect(self.queue.conninfo, autocommit=True, connect_timeout=5,
                                   application_name="jobq-follow")
            for channel in (self.queue.names.channel, self.queue.names.done_channel):
                conn.execute(psql.SQL("LISTEN {}").format(psql.Identifier(channel)))
            return conn
        except DRIVER_ERRORS:
            _close(conn)
            return None  # polling meanwhile; the next quiet moment tries again

    def matching_ids(self, filter: JobFilter | str) -> list[int]:
        return self._run(matching_ids(self._st, as_filter(filter)))

    def preview(self, action: str, ids: Sequence[int]) -> Preview:
        return self._run(preview(self._st, action, ids))

    def retry(self, ids: Sequence[int], *, run_at: datetime | None = None,
              progress: Progress | None = None) -> RepairResult:
        """Failed jobs back to pending, now or at `run_at`."""
        return self._write(repair(self._st, "retry", ids, run_at=run_at,
                                  reason="retried by operator", progress=progress))

    def extend(self, ids: Sequence[int], by: timedelta | str,
               progress: Progress | None = None) -> RepairResult:
        """Lengthen claimed jobs' leases by `by` (from now, if a lease already lapsed)."""
        return self._write(repair(self._st, "extend", ids,
                                  by=parse_duration(by, maximum=LEASE_MAX),
                                  reason="extended by operator", progress=progress))

    def delete(self, ids: Sequence[int], *, force: bool = False,
               progress: Progress | None = None) -> RepairResult:
        """Delete pending or failed jobs; claimed ones only with `force`."""
        action = "delete-force" if force else "delete"
        return self._write(repair(self._st, action, ids, reason="deleted by operator",
                                  progress=progress))

    def cancel(self, ids: Sequence[int], *, reason: str | None = None, by: str | None = None,
               progress: Progress | None = None) -> RepairResult:
        """End pending and running jobs as `cancelled` (kept, retryable). A running job's
        holder learns it at its next heartbeat (at once, where it listens): `ctx.cancelled`
        is set, an async handler is cancelled, a process child is killed, and its result,
        if any, is refused."""
        return self._write(repair(self._st, "cancel", ids, reason=cancel_reason(by, reason),
                                  progress=progress))

    def pause(self, types: Sequence[str], *, until: timedelta | str | None = None,
              reason: str | None = None, by: str | None = None) -> list[Pause]:
        """Claims skip `types` until they are resumed, or for `until` when given."""
        return self._write(pause(self._st, types, _pause_for(until), by or operator_name(),
                                 reason))

    def resume(self, types: Sequence[str]) -> list[str]:
        return self._write(resume(self._st, types))

    def pauses(self) -> list[Pause]:
        return self._read(pauses)

    def workers(self) -> list[Worker]:
        return self._read(workers)

    def schedules(self) -> list[ScheduleRow]:
        """Every periodic job's schedule: last slot handled, its job, and the next slot."""
        return self._read(schedules)

    def remove_schedule(self, name: str) -> None:
        self._write(remove_schedule(self._st, name))

    def limits(self) -> list[LimitRow]:
        """Every limited type's limits, slots in use and rate tokens."""
        return self._read(limits)

    def remove_limit(self, type: str) -> None:
        self._write(remove_limit(self._st, type), atomic=True)

    def drain(self, worker_id: str, *, by: str | None = None) -> None:
        self._write(drain(self._st, worker_id, by or operator_name()))

    def preview_clear(self, older_than: timedelta | str) -> ClearPreview:
        return self._run(preview_clear(self._st, parse_duration(older_than)))

    def clear(self, older_than: timedelta | str | ClearPreview,
              progress: Callable[[int], None] | None = None) -> int:
        """Failed jobs and history older than the cutoff, in batches; see `JobQueue.clear`.
        Given a `ClearPreview`, its cutoff: exactly what the preview counted (less what
        changed since), however long the confirmation took."""
        return self._write(_ops.clear(self._st, _cutoff(older_than), progress))

    def stats(self, *, fold: bool = True) -> list[TypeStats]:
        """See `stats`; without `fold`, the rates as the runners last folded them (a
        runner's metrics read the counts, which folding does not change)."""
        # A standby cannot fold the rates: it shows what the primary's runners folded.
        return self._read(lambda st: stats(st, fold=fold and self.reads is None),
                          atomic=True)

    def doctor(self) -> list[Finding]:
        return self._run(doctor(self._st))

    def migrate(self, *, dry_run: bool = True) -> list[str]:
        """The migration SQL; applied unless `dry_run` (an upgrade's indexes built
        CONCURRENTLY first, when the queue has a DSN)."""
        if not dry_run:
            self.queue._build_indexes_early()
        return self.queue._run(migrate(self._st, dry_run), atomic=True, schema_op=True)


class AsyncAdmin:
    """The asyncio twin of `Admin`, with a read replica the same way (`reads`)."""

    def __init__(self, queue: AsyncJobQueue, *, reads: AsyncJobQueue | None = None) -> None:
        self.queue = queue
        self.reads = reads
        self._st = queue.statements
        self._replica_checked = False
        self._written: str | None = None

    async def _run(self, op: Op[T], *, atomic: bool = False) -> T:
        return await self.queue._run(op, atomic=atomic, may_migrate=False)

    async def _write(self, op: Op[T], *, atomic: bool = False) -> T:
        result = await self._run(op, atomic=atomic)
        if self.reads is not None:
            self._written = await self._run(wal_position(self._st))
        return result

    async def _read(self, op: Callable[[Statements], Op[T]], *, atomic: bool = False) -> T:
        if self.reads is None:
            return await self._run(op(self._st), atomic=atomic)
        if not self._replica_checked:
            primary = await self.queue._run(server_identity(self._st), schema_op=True)
            check_replica(primary, await self._on_replica(server_identity,
                                                          identity=True), _shown(self.reads))
            self._replica_checked = True
        return await self._on_replica(op, atomic=atomic)

    async def _on_replica(self, op: Callable[[Statements], Op[T]], *, atomic: bool = False,
                          identity: bool = False) -> T:
        assert self.reads is not None
        try:
            return await self.reads._run(op(self.reads.statements), atomic=atomic,
                                         may_migrate=False, schema_op=identity)
        except DatabaseUnavailableError as exc:
            raise replica_unavailable(exc) from None

    async def replication(self) -> Replication | None:
        if self.reads is None:
            return None
        where = _shown(self.reads)
        return await self._read(lambda st: replication(st, self._written, where))

    async def catch_up(self, timeout: float) -> Replication | None:
        deadline = time.monotonic() + timeout
        while True:
            state = await self.replication()
            if state is None or state.has_own_writes or time.monotonic() >= deadline:
                return state
            await asyncio.sleep(CATCH_UP_POLL)

    async def list_jobs(self, filter: JobFilter | str | None = None, *,
                        after: str | None = None, limit: int = 50, sort: str | None = None,
                        total: bool = False) -> Page:
        flt = as_filter(filter)
        return await self._read(lambda st: list_jobs(st, flt, after, limit, sort=sort,
                                                     total=total))

    async def show(self, job_id: int) -> JobDetail:
        return await self._read(lambda st: show(st, job_id))

    async def trace(self, request_id: str, *, after: int = 0,
                    limit: int = 1000) -> list[Event]:
        return await self._read(lambda st: trace(st, request_id, after, limit))

    async def trace_pages(self, request_id: str, *, after: int = 0,
                          page: int = TRACE_PAGE) -> AsyncIterator[list[Event]]:
        """The whole trace in pages; see `Admin.trace_pages`."""
        while True:
            batch = await self.trace(request_id, after=after, limit=page)
            if batch:
                yield batch
            if len(batch) < page:
                return
            after = batch[-1].id

    async def matching_ids(self, filter: JobFilter | str) -> list[int]:
        return await self._run(matching_ids(self._st, as_filter(filter)))

    async def preview(self, action: str, ids: Sequence[int]) -> Preview:
        return await self._run(preview(self._st, action, ids))

    async def retry(self, ids: Sequence[int], *, run_at: datetime | None = None,
                    progress: Progress | None = None) -> RepairResult:
        return await self._write(repair(self._st, "retry", ids, run_at=run_at,
                                        reason="retried by operator", progress=progress))

    async def extend(self, ids: Sequence[int], by: timedelta | str,
                     progress: Progress | None = None) -> RepairResult:
        return await self._write(repair(self._st, "extend", ids,
                                        by=parse_duration(by, maximum=LEASE_MAX),
                                        reason="extended by operator", progress=progress))

    async def delete(self, ids: Sequence[int], *, force: bool = False,
                     progress: Progress | None = None) -> RepairResult:
        action = "delete-force" if force else "delete"
        return await self._write(repair(self._st, action, ids,
                                        reason="deleted by operator", progress=progress))

    async def cancel(self, ids: Sequence[int], *, reason: str | None = None,
                     by: str | None = None, progress: Progress | None = None) -> RepairResult:
        return await self._write(repair(self._st, "cancel", ids,
                                        reason=cancel_reason(by, reason), progress=progress))

    async def pause(self, types: Sequence[str], *, until: timedelta | str | None = None,
                    reason: str | None = None, by: str | None = None) -> list[Pause]:
        return await self._write(pause(self._st, types, _pause_for(until),
                                       by or operator_name(), reason))

    async def resume(self, types: Sequence[str]) -> list[str]:
        return await self._write(resume(self._st, types))

    async def pauses(self) -> list[Pause]:
        return await self._read(pauses)

    async def workers(self) -> list[Worker]:
        return await self._read(workers)

    async def schedules(self) -> list[ScheduleRow]:
        return await self._read(schedules)

    async def remove_schedule(self, name: str) -> None:
        await self._write(remove_schedule(self._st, name))

    async def limits(self) -> list[LimitRow]:
        return await self._read(limits)

    async def remove_limit(self, type: str) -> None:
        await self._write(remove_limit(self._st, type), atomic=True)

    async def drain(self, worker_id: str, *, by: str | None = None) -> None:
        await self._write(drain(self._st, worker_id, by or operator_name()))

    async def preview_clear(self, older_than: timedelta | str) -> ClearPreview:
        return await self._run(preview_clear(self._st, parse_duration(older_than)))

    async def clear(self, older_than: timedelta | str | ClearPreview,
                    progress: Callable[[int], None] | None = None) -> int:
        return await self._write(_ops.clear(self._st, _cutoff(older_than), progress))

    async def stats(self, *, fold: bool = True) -> list[TypeStats]:
        return await self._read(lambda st: stats(st, fold=fold and self.reads is None),
                                atomic=True)

    async def doctor(self) -> list[Finding]:
        return await self._run(doctor(self._st))

    async def migrate(self, *, dry_run: bool = True) -> list[str]:
        if not dry_run:
            await self.queue._build_indexes_early()
        return await self.queue._run(migrate(self._st, dry_run), atomic=True, schema_op=True)

    async def poll_trace(self, tail: TraceTail) -> list[Event]:
        """One poll of a follower: what `tail` has not delivered yet (see `TraceTail`)."""
        return await self._run(follow_step(self._st, tail))

    async def follow(self, request_id: str, *, after: int = 0, poll: float = FOLLOW_POLL,
                     tail: TraceTail | None = None,
                     on_outage: OutageHook | None = None) -> AsyncIterator[Event]:
        """Every event under `request_id` as it commits (after event id `after`), each once,
        forever; see `Admin.follow`.

        Woken by the queue's NOTIFY channels (new and retried work, completions of waited-on
        jobs); every other transition is picked up by polling every `poll` seconds, which
        costs one index probe on the request id."""
        tail = tail if tail is not None else TraceTail(request_id, after)
        outage = _Outage(on_outage)
        wake = asyncio.Event()
        listener = asyncio.create_task(self._listen(wake)) if self.queue.listens else None
        try:
            while True:
                try:
                    batch = await self.poll_trace(tail)
                except (JobqError, *DRIVER_ERRORS) as exc:
                    await asyncio.sleep(outage.failed(exc))
                    continue
                outage.answered()
                for event in batch:
                    yield event
                if tail.more:
                    continue
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll)
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    async def _listen(self, wake: asyncio.Event) -> None:
        """LISTEN on the queue's channels and set `wake` on each notification; reconnects
        after a failure with backoff (the follower polls meanwhile)."""
        assert self.queue.conninfo is not None
        backoff = Backoff()
        while True:
            try:
                await self.queue.check_schema()  # the resolved table names the channels
                names = self.queue.names
                conn = await psycopg.AsyncConnection.connect(
                    self.queue.conninfo, autocommit=True, connect_timeout=5,
                    application_name="jobq-follow")
                async with conn:
                    for channel in (names.channel, names.done_channel):
                        await conn.execute(
                            psql.SQL("LISTEN {}").format(psql.Identifier(channel)))
                    backoff.reset()
                    wake.set()  # anything that happened while not listening
                    async for _ in conn.notifies():
                        wake.set()
            except (*DRIVER_ERRORS, JobqError):
                await asyncio.sleep(backoff.next())


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(*DRIVER_ERRORS):
            conn.close()


share_docstrings(AsyncAdmin, Admin)

__all__ = ["Admin", "AsyncAdmin", "Backoff", "ClearPreview", "Count", "Event", "Finding",
           "Holder", "JobDetail", "JobRow", "Page", "Preview", "RepairResult", "Replication",
           "TraceTail", "TypeStats"]
