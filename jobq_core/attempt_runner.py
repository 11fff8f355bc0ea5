"""Running one claimed job to its next state: its handler on the task's executor (the event
loop, a thread or a worker process), then completed (acked in batches), retried with backoff,
failed, or discarded when the job is no longer its own."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import traceback
from datetime import timedelta
from typing import Any

from . import tracing
from .attempts import Attempt, AttemptEnd, Context, Snooze
from .errors import DatabaseUnavailableError, InvalidInputError, LeaseLostError
from .executors import AttemptCancelledError, ChildSettings, DaemonThreadPool, ProcessPool
from .logs import current_format
from .models import DELAY_MAX, Job, UndecodableJSON, dump_json
from .runner_state import RunnerState
from .side_loops import SideLoops
from .supervisor import Supervisor

log = logging.getLogger("jobq.runner")

#: The most completions one ack statement writes.
ACK_BATCH = 1000


class AttemptRunner:
    def __init__(self, state: RunnerState, supervisor: Supervisor, side_loops: SideLoops,
                 process_workers: int) -> None:
        self.state = state
        self.supervisor = supervisor
        self.side_loops = side_loops
        self.process_workers = process_workers
        self._threads: DaemonThreadPool | None = None
        self._processes: ProcessPool | None = None

    def begin(self, job: Job, claim_lease_ms: int, sent: float) -> Attempt:
        """Take a slot for a job claimed with a lease of `claim_lease_ms` by a claim sent at
        `sent` (monotonic): the database's lease runs from after that, so the deadline
        measured from it comes first."""
        task = self.state.tasks[job.type]
        # A task's own lease applies from the first heartbeat, which comes well before the
        # claim's lease (a third of it) runs out: no extra round trip per job.
        attempt = Attempt(job, task, task.lease_ms or self.state.lease_ms,
                          sent + claim_lease_ms / 1000)
        self.state.running[job.id] = attempt
        return attempt

    async def run(self, attempt: Attempt, *, batch_ack: bool = True) -> tuple[str, Any]:
        """Run one claimed job to its next state; returns (outcome, result or exception)."""
        state = self.state
        job, task = attempt.job, attempt.task
        handed_over = False
        # Current from here on, in this task: the handler's, and whatever it enqueues, are
        # its children.
        span = attempt.span = (tracing.AttemptSpan(job, state.queue.table) if tracing.active()
                               else None)
        state.counters["claimed"] += 1
        state.emit("claimed", job)
        started = time.monotonic()
        try:
            if job.attempts > task.max_attempts:
                # Earlier attempts crashed their worker or lost their lease without failing:
                # recovery counts too, so a job that kills its worker ends failed.
                # The attempt before this one never reported back: had it failed, at or past
                # the budget, it would have failed the job for good.
                reason = (f"gave up after {job.attempts - 1} attempts (max_attempts "
                          f"{task.max_attempts}): attempt {job.attempts - 1} never reported "
                          "back (its worker died or lost the lease)")
                return await self._fail(attempt, reason, retry=False, started=started)
            if isinstance(job.payload, UndecodableJSON):  # no attempt could ever read it
                return await self._fail(
                    attempt, "payload cannot be decoded: JSON nested deeper than Python's "
                    "decoder reads (not written by jobq)", retry=False, started=started)
            try:
                result = await self._execute(attempt)
                dump_json(result, "result")  # not JSON: fail the attempt, never the ack
            except AttemptCancelledError:
                return self._discard(attempt, started)
            except Snooze as snooze:
                if attempt.cancel_reason is not None:
                    return self._discard(attempt, started)
                return await self._snooze(attempt, snooze, started)
            except asyncio.CancelledError:
                if attempt.cancel_reason is None:
                    raise
                return self._discard(attempt, started)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    raise
                if attempt.cancel_reason is not None:
                    return self._discard(attempt, started)
                return await self._fail(attempt, _describe(exc), exc=exc,
                                        retry=task.retryable(exc), started=started)
            if attempt.cancel_reason is not None:
                return self._discard(attempt, started)
            if batch_ack:
                attempt.acking = True
                state.acks.put_nowait((attempt, result, started))
                handed_over = True  # the acker completes it and frees the slot
                return AttemptEnd.COMPLETED, result
            attempt.acking = True
            try:
                await state.calls.complete(job, result=result)
            except LeaseLostError:
                await self.side_loops.note_cancels([attempt])
                return self._discard(attempt, started, "lease lost before the ack")
            state.counters["completed"] += 1
            state.emit("completed", job, duration=time.monotonic() - started, result=result)
            if span is not None:
                span.end(tracing.COMPLETED)
            return AttemptEnd.COMPLETED, result
        finally:
            if not handed_over:
                state.release_slot(attempt)
            if span is not None:
                span.detach()
                if not handed_over:  # the acker ends it; otherwise stopped by a shutdown
                    span.end(tracing.SHUTDOWN)

    def _discard(self, attempt: Attempt, started: float,
                 reason: str | None = None) -> tuple[str, Any]:
        state = self.state
        if attempt.span is not None:
            attempt.span.end(*_discarded(attempt, reason))
        if attempt.operator is not None:  # its lease went with the cancel: no lease lost
            state.counters["cancelled"] += 1
            state.emit("cancelled", attempt.job, error=attempt.operator,
                       duration=time.monotonic() - started)
            return AttemptEnd.DISCARDED, None
        why = reason or attempt.cancel_reason or "cancelled"
        state.counters["discarded"] += 1
        log.info("job %s: result discarded (%s)", attempt.job.id, why)
        if reason is not None:
            state.emit("lease_lost", attempt.job, error=why, duration=time.monotonic() - started)
        return AttemptEnd.DISCARDED, None

    async def _snooze(self, attempt: Attempt, snooze: Snooze, started: float
                      ) -> tuple[str, Any]:
        state, job = self.state, attempt.job
        attempt.acking = True  # the handler is done: no deadline to stop it at
        try:
            until = await state.calls.snooze(job, snooze.delay, reason=snooze.reason)
        except LeaseLostError:
            await self.side_loops.note_cancels([attempt])
            return self._discard(attempt, started, "lease lost before the snooze")
        except InvalidInputError as exc:  # a bad delay is the handler's failure
            return await self._fail(attempt, f"ctx.snooze: {exc}", retry=False,
                                    started=started)
        log.info("job %s (%s, request %s): snoozed until %s%s", job.id, job.type,
                 job.request_id, until.isoformat(timespec="seconds"),
                 f": {snooze.reason}" if snooze.reason else "")
        state.counters["snoozed"] += 1
        state.emit("snoozed", job, duration=time.monotonic() - started, error=snooze.reason)
        if attempt.span is not None:
            attempt.span.end(tracing.SNOOZED, snooze.reason)
        delay = snooze.delay
        state.retry_due_in(delay.total_seconds() if isinstance(delay, timedelta) else delay)
        return AttemptEnd.SNOOZED, until

    async def _fail(self, attempt: Attempt, reason: str, *, retry: bool, started: float,
                    exc: BaseException | None = None) -> tuple[str, Any]:
        state = self.state
        job, task = attempt.job, attempt.task
        attempt.acking = True  # the handler is done: no deadline to stop it at
        retry = retry and job.attempts < task.max_attempts
        # A backoff's answer is clamped to what a delay may be, so no backoff can break it.
        delay = min(max(float(task.backoff(job.attempts)), 0.0),
                    DELAY_MAX.total_seconds()) if retry else 0.0
        try:
            await state.calls.fail(job, reason=reason, retry=retry,
                                   run_at=timedelta(seconds=delay) if retry else None)
        except LeaseLostError:
            await self.side_loops.note_cancels([attempt])
            return self._discard(attempt, started, "lease lost before the failure was recorded")
        log.warning("job %s (%s, request %s): attempt %d failed, %s: %s", job.id, job.type,
                    job.request_id, job.attempts,
                    f"retrying in {delay:.1f}s" if retry else "failed for good",
                    reason.split("\n", 1)[0])
        duration = time.monotonic() - started
        if attempt.span is not None:
            attempt.span.end(tracing.RETRIED if retry else tracing.FAILED, reason, exc)
        if isinstance(exc, TimeoutError):
            state.counters["timed_out"] += 1
            state.emit("timed_out", job, duration=duration, error=reason)
        if retry:
            state.counters["retried"] += 1
            state.emit("retried", job, duration=duration, error=reason)
            state.retry_due_in(delay)
            return AttemptEnd.RETRIED, exc
        state.counters["failed"] += 1
        state.emit("failed", job, duration=duration, error=reason)
        return AttemptEnd.FAILED, exc

    async def _execute(self, attempt: Attempt) -> Any:
        state = self.state
        task, job = attempt.task, attempt.job
        if task.executor == "process":
            if self._processes is None:
                queue = state.queue
                self._processes = ProcessPool(self.process_workers, ChildSettings(
                    queue.conninfo, queue.table, queue.pgbouncer,
                    logging.getLogger("jobq.task").getEffectiveLevel(), *current_format()))
            return await self._processes.run(
                task.fn, job.payload, job, task.timeout, attempt.cancelled,
                carrier=attempt.span.carrier() if attempt.span is not None else None)
        ctx = Context(attempt, lambda: state.calls)
        if task.executor == "async":
            # The handler runs in this attempt's own task (no task per job); a lost lease
            # cancels that task while, and only while, the handler runs.
            attempt.handler = asyncio.current_task()
            try:
                async with asyncio.timeout(task.timeout):
                    return await task.fn(job.payload, ctx)
            except TimeoutError:
                attempt.cancelled.set()  # not cancel(): a timeout fails the attempt
                raise TimeoutError(f"timed out after {task.timeout}s") from None
            finally:
                attempt.handler = None
        if self._threads is None:
            self._threads = DaemonThreadPool(state.concurrency)
        # The handler's thread runs in this task's context when it holds the attempt's span.
        fn = (task.fn if attempt.span is None
              else functools.partial(contextvars.copy_context().run, task.fn))
        future = asyncio.get_running_loop().run_in_executor(
            self._threads, fn, job.payload, ctx)
        try:
            return await asyncio.wait_for(asyncio.shield(future), task.timeout)
        except TimeoutError:
            # Threads cannot be killed: the handler sees ctx.cancelled and its result, if it
            # ever returns, is dropped. The attempt fails now so that the job can move on, and
            # the thread keeps its slot until it really ends.
            attempt.cancelled.set()
            state.stuck_threads += 1
            future.add_done_callback(self._thread_ended)
            raise TimeoutError(f"timed out after {task.timeout}s") from None

    def _thread_ended(self, _: object) -> None:
        self.state.stuck_threads -= 1

    def close(self) -> None:
        """Let the handlers' threads and worker processes go."""
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None
        if self._processes is not None:
            self._processes.close()
            self._processes = None

    # -- acks ----------------------------------------------------------------------------------

    async def acker(self) -> None:
        """Completions are acked in batches: whatever has finished by the time the previous
        batch is written goes in the next statement. The acker, not the attempt, then frees
        the slot: a job holds its slot (and its lease, which the heartbeat keeps alive) until
        its completion is committed. A failed ack is retried while the leases last."""
        state = self.state
        while True:
            batch = [await state.acks.get()]
            while not state.acks.empty() and len(batch) < ACK_BATCH:
                batch.append(state.acks.get_nowait())
            kept = await self._ack(batch)
            await self.side_loops.note_cancels(
                [a for a, _, _ in batch if a.job.id not in kept and a.operator is None])
            for attempt, result, started in batch:
                state.release_slot(attempt)
                if attempt.job.id in kept:
                    if attempt.span is not None:
                        attempt.span.end(tracing.COMPLETED)
                    state.counters["completed"] += 1
                    state.emit("completed", attempt.job, duration=time.monotonic() - started,
                               result=result)
                else:
                    self._discard(attempt, started, "lease lost before the ack")
                state.acks.task_done()
            state.slot_freed()

    async def _ack(self, batch: list[tuple[Attempt, Any, float]]) -> set[int]:
        """Complete a batch; on failure, retry with backoff until the first lease would run
        out. Jobs not acked by then run again (at least once, never lost)."""
        queue = self.state.loops_queue
        jobs = [a.job for a, _, _ in batch]
        unknown = False  # an earlier try broke off: it may have committed
        while True:
            try:
                kept = set(await self.supervisor.call(
                    "ack", queue.complete_many(jobs, [r for _, r, _ in batch])))
                if unknown and len(kept) < len(jobs):
                    kept |= await self.supervisor.call(
                        "ack", queue.acked([j for j in jobs if j.id not in kept]))
                self.supervisor.ok("ack")
                return kept
            except Exception as exc:
                unknown = unknown or isinstance(exc, DatabaseUnavailableError)
                deadline = min(a.deadline for a, _, _ in batch)
                await self.supervisor.recover("ack", exc)
                if time.monotonic() >= deadline:
                    log.error("gave up acking %d completed jobs; their leases ran out and "
                              "they will run again", len(batch))
                    self.state.counters["ack_failed"] += len(batch)
                    return set()


def _discarded(attempt: Attempt, reason: str | None) -> tuple[str, str]:
    """How a discarded attempt's span ends, and why."""
    if attempt.operator is not None:
        return tracing.CANCELLED, attempt.operator
    why = reason or attempt.cancel_reason or "cancelled"
    return (tracing.SHUTDOWN if why == "shutdown" else tracing.LEASE_LOST), why


def _describe(exc: BaseException) -> str:
    """The stored error: the exception line, then its traceback (and a child's, if any)."""
    text = "".join(traceback.format_exception(exc))
    return f"{type(exc).__name__}: {exc}\n\n{text}".rstrip()
