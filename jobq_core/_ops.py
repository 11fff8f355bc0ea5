"""The operations behind both twins, written once.

Each operation is a generator: it yields `Stmt`s and is sent each statement's rows back. The
sync `JobQueue` and the async `AsyncJobQueue` only differ in how they drive it (see
`queue._run_sync` and `queue._run_async`), so their behaviour cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from . import sql, tracing
from .errors import (
    InvalidInputError,
    JobCancelledError,
    JobFailedError,
    JobqError,
    JobStateError,
    LeaseLostError,
    NotFoundError,
    WaitTimeoutError,
)
from .limits import KeyOf, Limits, describe_limits, rate_of
from .models import (
    DELAY_MAX,
    EnqueueParams,
    Job,
    NewJob,
    clean_reason,
    dump_json,
    new_job_params,
    optional_text,
    validate_id,
    validate_lease_ms,
    validate_limit,
    validate_types,
    validate_when,
    validate_worker,
)
from .schedules import Schedule, spec_of
from .sql import Statements

T = TypeVar("T")
Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Stmt:
    """A statement to run; with `copy`, a COPY FROM STDIN fed those rows."""

    query: bytes
    params: Mapping[str, Any] | None = None
    copy: Sequence[Sequence[Any]] | None = None


Op = Generator[Stmt, Rows, T]


@dataclass(frozen=True, slots=True)
class Pause:
    """A step of `Steps`: wait `seconds` at most, or until woken, holding no connection."""

    seconds: float


#: An operation over several connections, such as `wait`: each `Op` it yields runs as a call
#: of its own (on a connection of the pool) and is sent its result; a `Pause` is sent None.
Steps = Generator["Op[Any] | Pause", Any, T]

#: How many times an enqueue retries when the job holding its idempotency key vanishes
#: between the conflicting insert and the lookup (it completed in that instant).
_KEY_RACE_RETRIES = 10
#: Failed jobs, and as many cancelled ones, per statement when clearing: no statement holds
#: many row locks for long.
CLEAR_BATCH = 5000
#: History blocks per statement when clearing: 1 MB, about 8,000 rows (benchmarks/README.md),
#: shared among the partitions walked.
CLEAR_BLOCKS = 128
#: Attempts to retire a history partition whose readers and writers keep it busy, before its
#: rows are deleted by the walk instead.
RETIRE_TRIES = 3


def job_from_row(row: Sequence[Any]) -> Job:
    return Job(*row)


def _target(job: Job | int) -> tuple[int, UUID | None]:
    """A `Job` is fenced by its lease token; a bare id is an unfenced operator action."""
    if isinstance(job, Job):
        return job.id, job.lease_token
    return validate_id(job), None


def enqueue(st: Statements, item: NewJob,
            keys_of: Mapping[str, KeyOf] | None = None) -> Op[int]:
    ids = yield from enqueue_many(st, [item], keys_of, single=True)
    return ids[0]


def _params(p: EnqueueParams) -> dict[str, Any]:
    return {
        "type": p.type, "payload": p.payload, "priority": p.priority, "run_at": p.run_at,
        "delay": p.delay, "request_id": p.request_id, "idempotency_key": p.idempotency_key,
        "concurrency_key": p.concurrency_key,
    }


def enqueue_many(
    st: Statements, items: Sequence[NewJob | Mapping[str, Any]],
    keys_of: Mapping[str, KeyOf] | None = None, *, single: bool = False
) -> Op[list[int]]:
    """Enqueue; `keys_of` gives the concurrency keys of jobs enqueued without one, by type
    (the key functions of the tasks the queue knows). The jobs keep the caller's current trace
    context: this step runs in the caller's thread or task, before the first statement."""
    # Validate everything first: one bad item enqueues nothing.
    params = [new_job_params(item, keys_of) for item in items]
    if not params:
        return []
    traceparent, tracestate = tracing.capture()
    trace = {"traceparent": traceparent, "tracestate": tracestate}
    if not single and all(p.idempotency_key is None for p in params):
        return (yield from _copy_many(st, params, traceparent, tracestate))
    result: list[int | None] = [None] * len(params)
    todo = list(range(len(params)))
    for _ in range(_KEY_RACE_RETRIES):
        if single:
            if params[0].idempotency_key:
                rows = yield Stmt(st.enqueue, {**_params(params[0]), **trace,
                                               "jobs_name": st.names.regclass()})
            else:
                rows = yield Stmt(st.enqueue_plain, {**_params(params[0]), **trace})
            got = [rows[0][0] if rows else None]
        else:
            batch = [params[i] for i in todo]
            rows = yield Stmt(st.enqueue_many, {
                "jobs_name": st.names.regclass(),
                "types": [p.type for p in batch],
                "payloads": [p.payload for p in batch],
                "priorities": [p.priority for p in batch],
                "run_ats": [p.run_at for p in batch],
                "delays": [p.delay for p in batch],
                "request_ids": [p.request_id for p in batch],
                "keys": [p.idempotency_key for p in batch],
                "concurrency_keys": [p.concurrency_key for p in batch],
                **trace,
            })
            got = [row[1] for row in rows]
        for i, job_id in zip(todo, got, strict=True):
            result[i] = job_id
        todo = [i for i in todo if result[i] is None]
        if not todo:
            return [r for r in result if r is not None]
        # A key that is held (by a live job, or by one that finished within the history's
        # retention): look the holder up with a fresh snapshot, which sees a holder that
        # committed while this statement waited. If it is gone already, insert again.
        keys = sorted({k for i in todo if (k := params[i].idempotency_key) is not None})
        found: dict[str, int] = dict((yield Stmt(st.lookup_keys, {"keys": keys})))
        for i in todo:
            key = params[i].idempotency_key
            result[i] = found.get(key) if key is not None else None
        todo = [i for i in todo if result[i] is None]
        if not todo:
            return [r for r in result if r is not None]
    raise JobqError(  # pragma: no cover - needs ten completions racing one enqueue
        "an idempotency key's job kept finishing while being looked up; try again")


def _copy_many(st: Statements, params: list[EnqueueParams], traceparent: str | None,
               tracestate: str | None) -> Op[list[int]]:
    """Bulk enqueue by COPY: no key can conflict, so nothing needs ON CONFLICT. The caller
    runs this op in a transaction."""
    rows = yield Stmt(st.reserve_ids, {"jobs_name": st.names.regclass(), "n": len(params)})
    now, ids = rows[0]
    yield Stmt(st.copy_jobs, copy=[
        (job_id, p.type, p.payload, p.priority,
         p.run_at or (now + p.delay if p.delay is not None else now), p.request_id,
         p.concurrency_key, traceparent, tracestate)
        for job_id, p in zip(ids, params, strict=True)
    ])
    yield Stmt(st.copy_enqueued, copy=[
        (job_id, p.type, "enqueued", p.request_id, traceparent, tracestate)
        for job_id, p in zip(ids, params, strict=True)
    ])
    return list(ids)


def claim_many(
    st: Statements, limit: int, types: object, lease_ms: object, worker: str, *, turn: int = 0
) -> Op[list[Job]]:
    """Claim up to `limit` jobs. The given types with due work take turns to come first in
    a claim's share of the batch, by `turn`, which the caller advances from claim to claim."""
    checked_types = validate_types(types)
    params = {
        "turn": turn,
        "limit": validate_limit(limit),
        "lease_ms": validate_lease_ms(lease_ms),
        "worker": validate_worker(worker),
        "types": checked_types,
    }
    query = st.claim_any if checked_types is None else st.claim_typed
    rows = yield Stmt(query, params)
    return [job_from_row(r) for r in rows]


def _diagnose(st: Statements, job_id: int, fenced: bool, action: str) -> Op[Exception]:
    """Why a fenced or unfenced statement matched no row. Runs only on that cold path."""
    rows = yield Stmt(st.job_state, {"id": job_id})
    if fenced:
        what = ("it is gone" if not rows else "an operator cancelled it"
                if rows[0][0] == "cancelled" else f"it is now {rows[0][0]} under another lease")
        return LeaseLostError(f"cannot {action} job {job_id}: the lease was lost ({what})")
    if not rows:
        return NotFoundError(f"no live job with id {job_id}")
    return JobStateError(f"cannot {action} job {job_id}: it is {rows[0][0]}")


def complete(st: Statements, job: Job | int, result: Any = None) -> Op[None]:
    job_id, token = _target(job)
    payload = dump_json(result, "result")
    rows = yield Stmt(st.complete, {"id": job_id, "token": token, "result": payload})
    if not rows:
        raise (yield from _diagnose(st, job_id, token is not None, "complete"))


def complete_many(
    st: Statements, jobs: Sequence[Job], results: Sequence[Any] | None = None
) -> Op[list[int]]:
    if results is not None and len(results) != len(jobs):
        raise InvalidInputError("results must have one entry per job")
    if not all(isinstance(j, Job) and j.lease_token is not None for j in jobs):
        raise InvalidInputError("complete_many takes claimed Job objects")
    dumped = [dump_json(r, "result") for r in (results or [None] * len(jobs))]
    if not jobs:
        return []
    rows = yield Stmt(st.complete_many, {
        "ids": [j.id for j in jobs],
        "tokens": [j.lease_token for j in jobs],
        "results": dumped,
    })
    return [r[0] for r in rows]


def acked(st: Statements, jobs: Sequence[Job]) -> Op[set[int]]:
    """The ids of these claimed jobs whose claim's attempt was completed."""
    if not jobs:
        return set()
    rows = yield Stmt(st.acked, {"ids": [j.id for j in jobs],
                                 "attempts": [j.attempts for j in jobs]})
    return {r[0] for r in rows}


def fail(
    st: Statements,
    job: Job | int,
    reason: object,
    retry: bool,
    run_at: datetime | timedelta | None,
) -> Op[None]:
    job_id, token = _target(job)
    when, delay = validate_when(run_at)
    if (when or delay) and not retry:
        raise InvalidInputError("run_at only applies with retry=True")
    rows = yield Stmt(st.fail, {
        "id": job_id, "token": token, "retry": bool(retry), "reason": clean_reason(reason),
        "run_at": when, "delay": delay,
    })
    if not rows:
        raise (yield from _diagnose(st, job_id, token is not None, "fail"))


def extend(st: Statements, job: Job | int, lease_ms: object) -> Op[datetime]:
    job_id, token = _target(job)
    ms = validate_lease_ms(lease_ms)
    rows = yield Stmt(st.extend, {"id": job_id, "token": token, "lease_ms": ms})
    if rows:
        until: datetime = rows[0][0]
        return until
    error = yield from _diagnose(st, job_id, token is not None, "extend")
    if isinstance(error, JobStateError) or (token is None and not isinstance(error, NotFoundError)):
        error = JobStateError(f"cannot extend job {job_id}: it is not claimed")
    raise error


def heartbeat(st: Statements, jobs: Sequence[Job], lease_ms: Sequence[int]) -> Op[set[int]]:
    """Extend every held lease in one statement; returns the ids whose lease still holds."""
    ms = [validate_lease_ms(m) for m in lease_ms]
    if not jobs:
        return set()
    rows = yield Stmt(st.heartbeat, {
        "ids": [j.id for j in jobs], "tokens": [j.lease_token for j in jobs], "ms": ms,
    })
    return {r[0] for r in rows}


def release(st: Statements, jobs: Sequence[Job], reason: str) -> Op[list[int]]:
    """Hand claimed jobs back to pending at no attempt cost (graceful shutdown)."""
    if not jobs:
        return []
    rows = yield Stmt(st.release, {
        "ids": [j.id for j in jobs], "tokens": [j.lease_token for j in jobs],
        "reason": clean_reason(reason),
    })
    return [r[0] for r in rows]


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a runner tells the registry about itself (`worker_beat`)."""

    id: str
    name: str
    host: str
    pid: int
    types: list[str]
    concurrency: int
    beat_seconds: float
    version: str


@dataclass(frozen=True, slots=True)
class Orders:
    """What a beat brings back: operators' wishes for this runner."""

    #: Who asked this runner to drain, if anyone did.
    drain_by: str | None
    #: Held jobs an operator cancelled, with the recorded reason.
    cancelled: dict[int, str]
    #: Which of the runner's types are paused.
    paused: set[str]


def worker_beat(st: Statements, me: WorkerInfo, held: Sequence[int]) -> Op[Orders]:
    """Register or refresh this runner in the registry; returns its orders."""
    rows = yield Stmt(st.worker_beat, {
        "id": me.id, "name": me.name, "host": me.host, "pid": me.pid, "types": me.types,
        "concurrency": me.concurrency, "in_flight": len(held), "beat_seconds": me.beat_seconds,
        "version": me.version, "held": list(held),
    })
    drain_by, cancelled, paused = rows[0]
    return Orders(drain_by, {int(i): why for i, why in cancelled or []}, set(paused or ()))


def cancelled(st: Statements, ids: Sequence[int]) -> Op[dict[int, str]]:
    """Which of these jobs an operator cancelled, with the recorded reason."""
    if not ids:
        return {}
    rows = yield Stmt(st.cancelled_of, {"ids": [validate_id(i) for i in ids]})
    return {int(job_id): reason for job_id, reason in rows}


def worker_gone(st: Statements, worker_id: str) -> Op[None]:
    yield Stmt(st.worker_gone, {"id": worker_id})


def claim_by_id(st: Statements, job_id: int, lease_ms: object, worker: str) -> Op[Job | None]:
    rows = yield Stmt(st.claim_by_id, {
        "id": validate_id(job_id), "lease_ms": validate_lease_ms(lease_ms),
        "worker": validate_worker(worker),
    })
    return job_from_row(rows[0]) if rows else None


def snooze(st: Statements, job: Job, delay: object, reason: str | None = None) -> Op[datetime]:
    """Hand a claimed job back until `delay` from now at no attempt cost, fenced by its
    lease; returns when it is due again."""
    if (isinstance(delay, int | float) and not isinstance(delay, bool)
            and 0 <= delay <= DELAY_MAX.total_seconds()):
        delay = timedelta(seconds=delay)
    if not isinstance(delay, timedelta):
        raise InvalidInputError("snooze takes a delay: seconds (0 to "
                                f"{DELAY_MAX.days} days) or a timedelta, got {delay!r}")
    _, until = validate_when(delay, "snooze")
    rows = yield Stmt(st.snooze, {"id": job.id, "token": job.lease_token, "delay": until,
                                  "reason": clean_reason(reason) if reason else None})
    if not rows:
        raise (yield from _diagnose(st, job.id, True, "snooze"))
    when: datetime = rows[0][1]
    return when


# -- limits -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LimitConflict:
    """A type's limits as another runner had registered them, before this one replaced them."""

    type: str
    was: str
    by: str


def lock_limits(st: Statements, types: list[str]) -> Op[None]:
    """Wait for the registrations and removals of these types' limits in flight to commit:
    the op's next statement then sees all they did (run the op atomically)."""
    yield Stmt(st.limit_lock, {"types": types, "scope": f"{st.names.regclass()}:limits:"})


def register_limits(st: Statements, limits: Mapping[str, Limits], by: str
                    ) -> Op[list[LimitConflict]]:
    """Record the limits of the tasks a runner serves, which every claim of their types then
    keeps; returns the definitions replaced that differed."""
    if not limits:
        return []
    types = sorted(limits)
    rates = [limits[t].rate for t in types]
    key_rates = [limits[t].key_rate for t in types]
    yield from lock_limits(st, types)
    rows = yield Stmt(st.limit_register, {
        "types": types,
        "global": [limits[t].global_concurrency for t in types],
        "key_limit": [limits[t].key_concurrency for t in types],
        "key_field": [limits[t].key_field for t in types],
        "rate_count": [r.count if r else None for r in rates],
        "rate_period": [r.period if r else None for r in rates],
        "rate_burst": [r.burst if r else None for r in rates],
        "key_rate_count": [r.count if r else None for r in key_rates],
        "key_rate_period": [r.period if r else None for r in key_rates],
        "key_rate_burst": [r.burst if r else None for r in key_rates],
        "by": validate_worker(by),
    })
    return [LimitConflict(t, describe_limits(g, k, f, rate_of(c, p, b), rate_of(kc, kp, kb)),
                          who)
            for t, g, k, f, c, p, b, kc, kp, kb, who in rows]


# -- periodic jobs --------------------------------------------------------------------------

def register_schedules(st: Statements, schedules: Sequence[Schedule], by: str,
                       now: datetime | None = None) -> Op[None]:
    """Record the schedules a runner serves, for `jobq schedules` and the console. One
    seen for the first time starts at `now` (the database's clock unless given)."""
    if not schedules:
        return
    yield Stmt(st.schedule_register, {
        "names": [s.name for s in schedules],
        "crons": [s.cron for s in schedules],
        "tzs": [s.tz if s.cron is not None else None for s in schedules],
        "everys": [s.every for s in schedules],
        "missed": [s.missed for s in schedules],
        "by": validate_worker(by),
        "now": now,
    })


@dataclass(frozen=True, slots=True)
class Tick:
    """What one tick of a schedule did: the jobs it enqueued and their slots, the
    database's clock, and the schedule's next slot after it."""

    fired: list[int]
    slots: list[datetime]
    now: datetime
    #: None when the schedule has no slot left before the year 9999.
    next_slot: datetime | None
    #: How the schedule's row says it was registered, when that differs from the schedule
    #: ticked: two definitions under one name, whose slots are both fired.
    conflict: str | None = None


def fire_schedule(st: Statements, schedule: Schedule, now: datetime | None = None,
                  keys_of: Mapping[str, KeyOf] | None = None) -> Op[Tick]:
    """One tick of a schedule, in one transaction (run it atomically): take its row, enqueue
    a job for each slot to fire, due at the slot and keyed `cron:<name>:<slot>` (which is
    also its request id), and record the newest slot handled. `now`, when given, stands in
    for the database's clock."""
    yield Stmt(st.schedule_patience)
    rows = yield Stmt(st.schedule_lock, {"name": schedule.name})
    if not rows:
        raise NotFoundError(f"schedule {schedule.name!r} is not registered")
    last, db_now, cron, tz, every = rows[0]
    now = now or db_now
    registered = spec_of(cron, tz, every)
    slots, newest = schedule.to_fire(last, now)
    ids: list[int] = []
    if newest is not None:
        ids = yield from enqueue_many(st, [
            NewJob(schedule.name, schedule.payload, run_at=slot, priority=schedule.priority,
                   idempotency_key=schedule.key(slot), request_id=schedule.key(slot))
            for slot in slots], keys_of)
        yield Stmt(st.schedule_advance, {"name": schedule.name, "last_slot": newest,
                                         "job_id": ids[-1] if ids else None})
    return Tick(ids, slots, now, schedule.next_slot(max(now, newest or last)),
                registered if registered != schedule.spec else None)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a job stands: `state` is pending, claimed, failed or completed."""

    state: str
    result: Any = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("failed", "cancelled", "completed")


def outcome(st: Statements, job_id: int, arm: bool = False) -> Op[Outcome]:
    """Read a job's outcome; with `arm`, its completion will NOTIFY the done channel."""
    job_id = validate_id(job_id)
    for _ in range(2):  # a job finishing mid-statement is visible to the next snapshot
        rows = yield Stmt(st.outcome_armed if arm else st.outcome, {"id": job_id})
        if rows:
            state, result, error = rows[0]
            return Outcome(state, result, error)
    raise NotFoundError(f"no job with id {job_id}, live or in history")


def key_holder(st: Statements, key: str) -> Op[int | None]:
    """The id of the job that holds an idempotency key (a live one, or one finished within
    the history's retention), or None: nothing enqueued with it, or it rolled back."""
    checked = optional_text(key, "idempotency_key")
    if checked is None:  # "" means no key at enqueue: nothing can hold it
        return None
    rows = yield Stmt(st.lookup_keys, {"keys": [checked]})
    return int(rows[0][1]) if rows else None


#: The longest pause between two checks of a job `wait` is waiting for: its completion's
#: NOTIFY usually ends the pause long before.
WAIT_POLL = 1.0


def wait(st: Statements, job_id: int, timeout: float | None) -> Steps[Any]:
    """Until the job finishes: its result, or `JobFailedError` (`JobCancelledError` for a
    cancelled one); `WaitTimeoutError` after `timeout` seconds. The job itself is unaffected."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done = yield outcome(st, job_id, arm=True)
        if done.finished:
            return finished_result(job_id, done)
        left = WAIT_POLL if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeoutError(f"job {job_id} did not finish in time")
        yield Pause(min(left, WAIT_POLL))


def finished_result(job_id: int, done: Outcome) -> Any:
    """The result of a completed job; `JobFailedError` for a failed one, and its subclass
    `JobCancelledError` for a cancelled one."""
    if done.state == "cancelled":
        raise JobCancelledError(job_id, done.error)
    if done.state == "failed":
        raise JobFailedError(job_id, done.error)
    return done.result


def pending(st: Statements, types: object) -> Op[int]:
    checked = validate_types(types)
    query = st.pending_any if checked is None else st.pending_typed
    rows = yield Stmt(query, {"types": checked})
    count: int = rows[0][0]
    return count


def fold_rates(st: Statements, *, wait: bool = False) -> Op[int]:
    """Fold finished minutes of history into the rates table; returns the rows added. One
    folder at a time: others skip, or with `wait` wait their turn. A session that may not
    write the rates (read-only, or a role without INSERT and DELETE on them) skips it. A
    folder also keeps the history's daily partitions ahead (`ahead_function` in queries.sql).
    The rest of the caller's transaction is one of small reads (`small_reads`)."""
    yield Stmt(st.small_reads)
    may_fold, may_keep_ahead = (yield Stmt(st.may_fold, {
        "key": st.names.lock_key, "rates": st.names.regclass("_rates"), "wait": wait,
        "ahead": st.names.regclass("_events_ahead")}))[0]
    if not may_fold:
        return 0
    folded: int = (yield Stmt(st.fold_rates))[0][0]
    if may_keep_ahead:
        yield Stmt(st.keep_ahead, {"days": sql.HISTORY_AHEAD_DAYS})
    return folded


def clear(st: Statements, older_than: timedelta | datetime,
          progress: Callable[[int], None] | None = None) -> Op[int]:
    """Statement by statement, each its own transaction: no lock is held between them, so
    claims go on while a large history is cleared. `progress` gets the running total. A
    datetime is the cutoff itself: the one a preview fixed, so that what was confirmed is
    cleared. The rates are folded first, so the history deleted is counted in them.

    History partitions that lie wholly before the cutoff are retired whole, when this role
    owns them; the rest of what is older (the partition the cutoff falls in, the DEFAULT
    partition, or everything, for another role) is deleted by a walk of its blocks."""
    if isinstance(older_than, datetime):
        if older_than.tzinfo is None:
            raise InvalidInputError("a clear's cutoff must be timezone-aware")
        cutoff = older_than
    elif not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise InvalidInputError("older_than must be a positive duration")
    else:
        cutoff = (yield Stmt(st.cutoff, {"older_than": older_than}))[0][0]
    yield from fold_rates(st, wait=True)
    removed = 0

    def report(count: int) -> None:
        nonlocal removed
        removed += count
        if progress is not None and count:
            progress(removed)

    while True:
        count: int = (yield Stmt(st.clear_failed_batch,
                                 {"cutoff": cutoff, "batch": CLEAR_BATCH}))[0][0]
        report(count)
        if count < CLEAR_BATCH:
            break
    events = {"events": st.names.regclass("_events")}
    for part, _, _, is_default, _, hi, _, mine in (yield Stmt(st.history_partitions, events)):
        if is_default or hi is None or hi > cutoff or not mine:
            continue
        rows, held = (yield Stmt(st.free_day_keys, {"part": part}))[0]
        if rows is None:  # another clear retired it meanwhile
            continue
        for _ in range(RETIRE_TRIES):
            kept = (yield Stmt(st.retire, {"part": part, "held": held}))[0][0]
            if kept is not None:
                report(rows - kept)
                break
    walked = [size for _, _, _, is_default, lo, _, size, _ in
              (yield Stmt(st.history_partitions, events))
              if is_default or lo is None or lo < cutoff]
    step = max(1, CLEAR_BLOCKS // max(len(walked), 1))
    for lo in range(0, max(walked, default=0), step):
        report((yield Stmt(st.clear_events_batch, {
            "cutoff": cutoff, "lo": f"({lo},0)", "hi": f"({lo + step},0)"}))[0][0])
    return removed
