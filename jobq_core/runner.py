"""The task runner: handlers, retries, executors, leases kept alive and graceful shutdown.

asyncio inside. It claims only the types it has handlers for, never more than its free slots,
wakes on NOTIFY (polling as a fallback, or only polling with ``notify=False`` for PgBouncer in
transaction mode), keeps every held lease alive with one heartbeat statement, acks completions
in batches, and persists retries with a capped, jittered exponential backoff.

    runner = create_task_runner(queue, concurrency=8)

    @runner.task("send-email", max_attempts=5, timeout=30)
    def send_email(payload, ctx):
        ctx.logger.info("sending to %s", payload["to"])

    runner.serve_forever()   # until SIGTERM or SIGINT
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, Unpack

import psycopg
from psycopg import sql

from . import loop_health
from ._ops import Orders, WorkerInfo, finished_result
from .attempts import Attempt, AttemptEnd, Context, RunnerEvent
from .dsn import redact
from .errors import (
    DRIVER_ERRORS,
    DatabaseUnavailableError,
    InvalidInputError,
    JobqError,
    LeaseLostError,
    RunnerFailedError,
    TransientError,
    UnknownTaskError,
    WaitTimeoutError,
    classify,
)
from .executors import (
    AttemptCancelledError,
    ChildSettings,
    DaemonThreadPool,
    FallbackHandler,
    ProcessPool,
)
from .loop_health import LoopHealth
from .models import (
    DELAY_MAX,
    Job,
    UndecodableJSON,
    dump_json,
    validate_lease_ms,
    validate_type,
)
from .queue import APPLICATION_NAME, AsyncJobQueue, JobQueue, default_worker_name
from .queue_port import InThreads, QueuePort
from .tasks import Task, TaskOptions, exponential_backoff

log = logging.getLogger("jobq.runner")
R = TypeVar("R")

#: `serve(until_idle=True)` keeps going while one of its own retries is due this soon (s).
IDLE_GRACE = 1.0
#: Seconds a graceful stop lets an in-flight claim finish before it is abandoned.
STOP_GRACE = 1.0
#: Seconds between a runner's folds of the per-minute rates from history, and the longest
#: a fold may take (it never holds up anything that matters: the next minute tries again).
FOLD_EVERY, FOLD_TIMEOUT = 60, 10.0
#: Seconds a stopping runner waits for its last beat to end and its registry entry to go.
LEAVE_GRACE = 5.0
#: Seconds a loop's database call may take before it is reported as hung and retried.
CALL_TIMEOUT = 60.0
#: Threads for a sync queue's calls from the background loops (claim, heartbeat, acks), kept
#: apart from the threads that handlers' own calls (fail, ctx.enqueue) use.
LOOP_THREADS = 3

class TaskRunner:
    """Runs registered handlers for jobs of a `JobQueue` or an `AsyncJobQueue`."""

    def __init__(
        self,
        queue: JobQueue | AsyncJobQueue,
        *,
        concurrency: int = 10,
        poll_interval: float = 1.0,
        notify: bool = True,
        lease_ms: int | None = None,
        heartbeat_interval: float | None = None,
        shutdown_timeout: float = 30.0,
        worker_name: str | None = None,
        process_workers: int | None = None,
        on_event: Callable[[RunnerEvent], None] | None = None,
        health_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInputError(f"concurrency must be a positive integer, got {concurrency!r}")
        if poll_interval <= 0 or shutdown_timeout < 0:
            raise InvalidInputError("poll_interval must be positive, shutdown_timeout >= 0")
        self.queue = queue
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.notify = notify
        self.lease_ms = validate_lease_ms(lease_ms or queue.default_lease_ms)
        if heartbeat_interval is not None and not heartbeat_interval > 0:
            raise InvalidInputError(
                f"heartbeat_interval must be positive, got {heartbeat_interval!r}")
        self._heartbeat_interval = heartbeat_interval
        self._check_lease(self.lease_ms, "the runner's lease_ms")
        self.shutdown_timeout = shutdown_timeout
        self.health_file = os.fspath(health_file) if health_file is not None else None
        self.worker_name = worker_name or default_worker_name()
        #: This runner's entry in the worker registry, unique to its boot.
        self.worker_id = f"{default_worker_name()}:{secrets.token_hex(4)}"
        self.process_workers = process_workers or concurrency
        self.counters: Counter[str] = Counter()
        self._listeners: list[Callable[[RunnerEvent], None]] = [on_event] if on_event else []
        self._tasks: dict[str, Task] = {}
        #: The attempts that hold their job's lease, by job id.
        self._running: dict[int, Attempt] = {}
        #: Attempts whose job was taken from them (an operator's cancel, a lost lease) while
        #: their handler still runs: it keeps its slot until it ends, but the job is no longer
        #: theirs, and the same job may run here again meanwhile.
        self._retired: set[Attempt] = set()
        self._stuck_threads = 0
        self._retries_due: list[float] = []
        self._waiting_for_slot = False
        self._until_idle = False
        self._threads: DaemonThreadPool | None = None
        self._processes: ProcessPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._hard_stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._beat_now: asyncio.Event | None = None
        #: Set once the first registry beat was tried: a runner is listed before it claims.
        self._registered: asyncio.Event | None = None
        #: Set when an explicit stop (a signal, `request_stop`) comes, as opposed to a drain.
        self._asked: asyncio.Event | None = None
        self._asked_at = 0.0
        self._leaving = False
        self._draining: str | None = None
        self._paused: set[str] = set()
        #: When this runner next folds the per-minute rates (monotonic seconds).
        self._next_fold = 0.0
        self._acks: asyncio.Queue[tuple[Attempt, Any, float]] | None = None
        self._loops: dict[str, LoopHealth] = {}
        self._status = "stopped"
        self._fatal: BaseException | None = None
        self._loop_threads: DaemonThreadPool | None = None
        self._call_threads: DaemonThreadPool | None = None

    # -- registration -----------------------------------------------------------------------

    def task(
        self, name: str, **options: Unpack[TaskOptions]
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated `fn(payload, ctx)` for jobs of type `name`; the options are
        those of `register`."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(name, fn, **options)
            return fn

        return decorate

    def register(self, name: str, fn: Callable[..., Any], **options: Unpack[TaskOptions]) -> None:
        """Register `fn(payload, ctx)` for jobs of type `name`.

        Options: `max_attempts` (default 5, counting the first), `backoff` (seconds before retry
        n, default `exponential_backoff()`), `timeout` (seconds per attempt), `executor`
        ("async" for ``async def``, "thread" otherwise by default; "process" runs it in a
        worker process, so it must be importable by name), `retry_on` (a tuple of exception
        types or a predicate; timeouts and crashed processes always retry until
        `max_attempts`), and `lease_ms` (this task's lease, if not the runner's).
        """
        validate_type(name, "task name")
        if name in self._tasks:
            raise InvalidInputError(f"task {name!r} is already registered")
        max_attempts = options.get("max_attempts", 5)
        timeout = options.get("timeout")
        lease_ms = options.get("lease_ms")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidInputError(f"max_attempts must be >= 1, got {max_attempts!r}")
        if timeout is not None and not timeout > 0:
            raise InvalidInputError(f"timeout must be positive, got {timeout!r}")
        is_async = inspect.iscoroutinefunction(fn)
        chosen = options.get("executor") or ("async" if is_async else "thread")
        if chosen not in ("thread", "process", "async") or (chosen == "async") != is_async:
            raise InvalidInputError(
                f"executor {chosen!r} does not fit {'an async' if is_async else 'a sync'} handler")
        if lease_ms is not None:
            lease_ms = validate_lease_ms(lease_ms)
            self._check_lease(lease_ms, f"task {name!r}'s lease_ms")
        self._tasks[name] = Task(
            name, fn, max_attempts, options.get("backoff") or exponential_backoff(), timeout,
            chosen, options.get("retry_on"), lease_ms,
        )

    @property
    def task_types(self) -> list[str]:
        return sorted(self._tasks)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: as given, or a third of the shortest lease in use, so
        that every lease is renewed at least twice before it could run out."""
        if self._heartbeat_interval is not None:
            return self._heartbeat_interval
        shortest = min([self.lease_ms, *(t.lease_ms for t in self._tasks.values() if t.lease_ms)])
        return shortest / 3000

    def _check_lease(self, lease_ms: int, what: str) -> None:
        """Refuse a lease that the heartbeat cannot keep alive: it must be renewed at least
        twice before it runs out."""
        interval = self._heartbeat_interval
        if interval is not None and lease_ms < 2 * interval * 1000:
            raise InvalidInputError(
                f"{what} of {lease_ms} ms cannot be kept alive by a heartbeat every "
                f"{interval} s: use a lease of at least {int(2 * interval * 1000)} ms or a "
                "shorter heartbeat_interval")

    def health(self) -> dict[str, Any]:
        """What a supervisor needs: `status` is ok, degraded (a loop is failing and retrying),
        failed (the runner stopped on an error) or stopped; the registry id, who asked it to
        drain, if anyone; per loop, failures in a row and the last success and error.
        `health_file` holds the same, rewritten at every beat."""
        status = self._status
        if status == "ok" and any(h.failures for h in self._loops.values()):
            status = "degraded"
        return {
            "status": status,
            "updated": time.time(),
            "worker": self.worker_name,
            "worker_id": self.worker_id,
            "draining_for": self._draining,
            "pid": os.getpid(),
            "in_flight": len(self._running),
            "free_slots": max(self._free_slots(), 0),
            "error": None if self._fatal is None else str(self._fatal),
            "loops": {name: {"failures": h.failures, "last_ok": h.last_ok,
                             "last_error": h.last_error} for name, h in self._loops.items()},
        }

    def _write_health(self) -> None:
        if self.health_file is None:
            return
        temporary = f"{self.health_file}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as out:
                json.dump(self.health(), out)
            os.replace(temporary, self.health_file)
        except OSError as exc:
            log.warning("could not write the health file %s: %s", self.health_file, exc)

    def on_event(self, callback: Callable[[RunnerEvent], None]) -> None:
        self._listeners.append(callback)

    # -- queue access: either twin ------------------------------------------------------------

    def _port(self, threads: DaemonThreadPool | None) -> QueuePort:
        # A sync queue's calls run on threads of the runner's own, never on the loop's
        # default executor, where process waits and user code also run.
        if isinstance(self.queue, AsyncJobQueue):
            return self.queue
        return InThreads(self.queue, threads)

    @property
    def _calls(self) -> QueuePort:
        """The queue for a handler's or an attempt's calls (fail, complete, ctx.enqueue)."""
        return self._port(self._call_threads)

    @property
    def _loops_queue(self) -> QueuePort:
        """The queue for the background loops' calls, on threads of their own; await each
        through `_loop_call`."""
        return self._port(self._loop_threads)

    async def _loop_call(self, loop: str, call: Coroutine[Any, Any, R], *,
                         timeout: float | None = None) -> R:
        """A background loop's queue call, bounded in time, so a call that hangs is reported
        and retried, never waited on."""
        timeout = CALL_TIMEOUT if timeout is None else timeout
        try:
            # Not the first call, which may migrate: an upgrade's index build takes what it
            # takes, and cancelling it would leave the index to build again from scratch.
            async with asyncio.timeout(timeout if self.queue.prepared else None):
                return await call
        except TimeoutError:
            name = getattr(call, "__name__", "call")
            raise TransientError(f"the {loop} loop's {name} did not answer within "
                                 f"{timeout:.1f} s") from None

    def _db_ok(self, loop: str) -> None:
        """A loop's call succeeded: the database answers, so a claim loop that is backing off
        may try again now."""
        health = self._loops.setdefault(loop, LoopHealth())
        health.ok()
        claim = self._loops.get("claim")
        if loop != "claim" and claim is not None and claim.failures:
            claim.reset_backoff()
            self._wake_up()

    async def _recover(self, loop: str, exc: BaseException, *,
                       wait: Callable[[float], Awaitable[None]] | None = None,
                       sleep: bool = True) -> float:
        """One failed iteration of a background loop: log it with context, back off with
        jitter (or, without `sleep`, return the pause), and go on. Too many permanent
        failures in a row stop the runner."""
        error = classify(exc) if isinstance(exc, DRIVER_ERRORS) else exc
        health = self._loops.setdefault(loop, LoopHealth())
        pause = health.failed(error)
        self.counters[f"{loop}_errors"] += 1
        if not isinstance(error, TransientError):
            if health.hopeless:
                raise RunnerFailedError(
                    f"the {loop} loop failed {health.permanent} times in a row over "
                    f"{loop_health.PERMANENT_SECONDS:.0f} s: {type(error).__name__}: "
                    f"{error}") from exc
            log.error("%s loop failed (%d in a row), retrying in %.1fs: %s: %s", loop,
                      health.failures, pause, type(error).__name__, error,
                      exc_info=not isinstance(error, JobqError))
            wait = None  # no early wakeup: a NOTIFY does not make it fixable
        else:
            log.warning("%s loop: %s; retrying in %.1fs (%d in a row)", loop, error, pause,
                        health.failures)
        self._write_health()
        if not sleep:
            return pause
        if wait is not None:
            await wait(pause)
        else:
            await asyncio.sleep(pause)
        return pause

    # -- serving ----------------------------------------------------------------------------

    def serve_forever(self, *, until_idle: bool = False) -> None:
        """Serve until SIGTERM/SIGINT (graceful; a second signal stops at once)."""
        asyncio.run(self.serve(until_idle=until_idle, handle_signals=True))

    def request_stop(self, *, immediately: bool = False) -> None:
        """Stop claiming and shut down gracefully; safe from any thread or a signal handler.
        A second request (or `immediately`) hands unfinished jobs back at once. During a
        drain, the first request gives the running jobs `shutdown_timeout` from then."""
        loop, stop, hard = self._loop, self._stop, self._hard_stop
        if loop is None or stop is None or hard is None:
            return

        def trip() -> None:
            asked = self._asked
            if immediately or (asked is not None and asked.is_set()):
                hard.set()
            if asked is not None and not asked.is_set():
                self._asked_at = loop.time()  # a drain has no deadline; a stop asked has
                asked.set()
            stop.set()
            self._wake_up()

        if loop.is_closed():
            return
        try:
            running_loop = asyncio.get_running_loop()
        except RuntimeError:
            running_loop = None
        if running_loop is loop:
            trip()
        else:
            loop.call_soon_threadsafe(trip)

    async def serve(self, *, until_idle: bool = False, handle_signals: bool = False) -> None:
        """Claim and run jobs until stopped; with `until_idle`, until nothing is claimable and
        no retry this runner scheduled is due within `IDLE_GRACE` seconds.

        Every background loop survives any error: it logs it, backs off with jitter and goes
        on. One that cannot go on stops the runner, and then this raises
        `RunnerFailedError`: a runner never hangs silently."""
        if not self._tasks:
            raise InvalidInputError("register at least one task before serving")
        self._start_loop_state()
        self._until_idle = until_idle
        assert self._stop is not None and self._wake is not None and self._hard_stop is not None
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        self._fatal = None
        self._status = "ok"
        started = time.monotonic()
        undo_logging = _log_somewhere()
        self._loops = {name: LoopHealth() for name in ("claim", "heartbeat", "registry", "ack")}
        beats = self._side_task(self._registry(), "registry")
        background = [beats, self._side_task(self._heartbeats(), "heartbeat"),
                      self._side_task(self._acker(), "ack")]
        if self.notify and self.queue.listens:
            background.append(self._side_task(self._listen(), "listener"))
        conninfo = self.queue.conninfo
        log.info("serving %s with concurrency %d as worker %s (claims as %s) on %s, table %s; "
                 "heartbeat every %.1fs", ", ".join(self.task_types), self.concurrency,
                 self.worker_id, self.worker_name,
                 redact(conninfo, conninfo) if conninfo else "the pool it was given",
                 self.queue.table, self.heartbeat_interval)
        attempts: set[asyncio.Task[Any]] = set()
        claiming = asyncio.create_task(self._claim_loop(attempts, until_idle),
                                       name="jobq-claim")
        try:
            await self._until_stopped(claiming)
        except RunnerFailedError as exc:
            self._fatal = exc
        finally:
            await self._shutdown(attempts)
            await self._leave(beats)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._close_executors()
            self._status = "failed" if self._fatal is not None else "stopped"
            self._write_health()
            log.info("stopped: %s; up %.1fs", self._summary(), time.monotonic() - started)
            undo_logging()
        if self._fatal is not None:
            log.critical("runner stopped: %s", self._fatal)
            if isinstance(self._fatal, RunnerFailedError):
                raise self._fatal
            raise RunnerFailedError(str(self._fatal)) from self._fatal

    def _summary(self) -> str:
        """The shutdown line's counts: the outcomes always, anything else that happened."""
        shown = ("completed", "retried", "failed", "cancelled", "discarded", "handed_back")
        counts = [f"{k.replace('_', ' ')} {self.counters[k]}" for k in shown]
        counts += [f"{k} {v}" for k, v in sorted(self.counters.items())
                   if v and k not in shown and k != "claimed"]
        return ", ".join(counts)

    def _side_task(self, body: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A supervised background loop: if it ever ends, other than by being cancelled at
        shutdown, the runner stops (as Procrastinate's worker watches its side tasks)."""
        task = asyncio.create_task(body, name=f"jobq-{name}")

        def ended(done: asyncio.Task[None]) -> None:
            stopping = self._leaving or (self._stop is not None and self._stop.is_set())
            if done.cancelled() or (stopping and self._fatal is None
                                    and done.exception() is None):
                return
            error = done.exception()
            if self._fatal is None:
                self._fatal = error if isinstance(error, RunnerFailedError) else \
                    RunnerFailedError(f"the {name} loop ended: {error!r}")
            self.request_stop(immediately=True)

        task.add_done_callback(ended)
        return task

    async def _until_stopped(self, claiming: asyncio.Task[None]) -> None:
        """Wait for the claim loop to end. Once a stop is asked for, an in-flight claim gets
        `STOP_GRACE` seconds (none on a hard stop): a claim that hangs never holds up a stop.
        Jobs an abandoned claim took come back when their lease runs out."""
        assert self._stop is not None and self._hard_stop is not None
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({claiming, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not claiming.done():
                grace = 0.0 if self._hard_stop.is_set() else STOP_GRACE
                await asyncio.wait({claiming}, timeout=grace)
        finally:
            stopped.cancel()
            if not claiming.done():
                claiming.cancel()
                await asyncio.gather(claiming, return_exceptions=True)
        if not claiming.cancelled():
            claiming.result()  # a RunnerFailedError of the loop

    async def _claim_loop(self, attempts: set[asyncio.Task[Any]], until_idle: bool) -> None:
        assert self._stop is not None and self._wake is not None
        assert self._registered is not None
        wake = self._wake
        # Listed before it holds a job (a failing first beat holds claims up no longer).
        await self._wait_for(self._registered, self.heartbeat_interval)
        while not self._stop.is_set():
            free = self._free_slots()
            self._wake.clear()
            self._waiting_for_slot = free <= 0
            if self._waiting_for_slot:
                await self._wait_for(self._wake, self.poll_interval)
                continue
            try:
                jobs = await self._loop_call("claim", self._loops_queue.claim_many(
                    free, types=self.task_types, lease_ms=self.lease_ms,
                    worker=self.worker_name))
            except Exception as exc:
                # A NOTIFY or another loop's success (the database is back) ends the pause.
                await self._recover("claim", exc,
                                    wait=lambda pause: self._wait_for(wake, pause))
                continue
            self._db_ok("claim")
            for job in jobs:
                # Registered before the task starts, so the next claim sees the slot taken.
                attempt = asyncio.create_task(self._attempt(self._begin(job, self.lease_ms)))
                attempts.add(attempt)
                attempt.add_done_callback(attempts.discard)
                attempt.add_done_callback(self._slot_freed)
            if len(jobs) == free:
                continue  # there may be more: claim again as soon as a slot frees
            if until_idle and not jobs and not self._running and not self._retry_due_soon():
                break
            await self._wait_for(self._wake, self.poll_interval)

    def _slot_freed(self, _: object) -> None:
        # Wake the claim loop only if it is waiting for a slot (or for the idle check): a
        # free slot alone is no reason to query when the last claim came back short.
        if self._waiting_for_slot or self._until_idle:
            self._wake_up()

    def _retry_due_soon(self) -> bool:
        """Whether a retry this runner scheduled comes due within `IDLE_GRACE` seconds."""
        now = time.monotonic()
        self._retries_due = [t for t in self._retries_due if t > now - IDLE_GRACE]
        return any(t < now + IDLE_GRACE for t in self._retries_due)

    def _wake_up(self, _: object = None) -> None:
        if self._wake is not None:
            self._wake.set()

    def _start_loop_state(self) -> None:
        if isinstance(self.queue, JobQueue):
            # Daemon threads: a call that hangs in the driver never holds up process exit.
            self._loop_threads = DaemonThreadPool(LOOP_THREADS, name="jobq-loop")
            self._call_threads = DaemonThreadPool(
                max(2, self.queue.max_connections - LOOP_THREADS), name="jobq-db")
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._registered = asyncio.Event()
        self._asked = asyncio.Event()
        self._leaving = False
        self._draining = None
        self._paused = set()
        self._acks = asyncio.Queue()

    @staticmethod
    async def _wait_for(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _shutdown(self, attempts: set[asyncio.Task[Any]]) -> None:
        """Let running jobs finish within the deadline, then hand the rest back at no attempt
        cost; their late results are refused by the lease fence. A drain has no deadline of
        its own: its jobs run until their own timeouts, or until a stop is asked for."""
        assert self._hard_stop is not None and self._asked is not None
        loop = asyncio.get_running_loop()
        if self._draining is None and not self._asked.is_set():  # idle, or a loop failed
            self._asked_at = loop.time()
            self._asked.set()
        hard = asyncio.create_task(self._hard_stop.wait())
        asked = asyncio.create_task(self._asked.wait())
        waiting = set(attempts)
        while waiting and not self._hard_stop.is_set():
            wake = {hard}
            timeout: float | None = None
            if self._asked.is_set():
                timeout = self._asked_at + self.shutdown_timeout - loop.time()
                if timeout <= 0:
                    break
            else:
                wake.add(asked)  # a stop asked for during a drain sets the deadline
            _, waiting = await asyncio.wait(waiting | wake, timeout=timeout,
                                            return_when=asyncio.FIRST_COMPLETED)
            waiting -= {hard, asked}
        hard.cancel()
        asked.cancel()
        if self._acks is not None:  # finished jobs are acked, never handed back
            # The acker retries until the leases run out, so a drain waits that long at most.
            left = (self._asked_at + self.shutdown_timeout - loop.time() if self._asked.is_set()
                    else self.lease_ms / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acks.join(), max(left, 5.0))
        unfinished = list(self._running.values())
        for attempt in unfinished:
            attempt.cancel("shutdown")
        if unfinished:
            try:
                released = await self._loop_call("release", self._loops_queue.release(
                    [a.job for a in unfinished], reason="handed back at shutdown"),
                    timeout=10.0)
            except JobqError as exc:
                log.error("could not hand back %d jobs (their leases will expire): %s",
                          len(unfinished), exc)
                released = []
            self.counters["handed_back"] += len(released)
            for attempt in unfinished:
                if attempt.job.id in released:
                    self._emit("released", attempt.job)
        for task in attempts:
            task.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)

    def _close_executors(self) -> None:
        for pool in (self._loop_threads, self._call_threads):
            if pool is not None:
                pool.shutdown(wait=False)
        self._loop_threads = self._call_threads = None
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None
        if self._processes is not None:
            self._processes.close()
            self._processes = None

    # -- the background loops ---------------------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN for new work; reconnects with backoff. Each wakeup triggers a claim, and
        ends a claim loop's backoff; an operator's cancel or drain triggers a beat instead,
        which tells whether it concerns this runner."""
        assert self.queue.conninfo is not None and self._wake is not None
        assert self._beat_now is not None
        health = self._loops.setdefault("listener", LoopHealth())
        while True:
            try:
                # the resolved table names the channel
                await self._loop_call("listener", self._loops_queue.prepare())
                channel = sql.SQL("LISTEN {}").format(sql.Identifier(self.queue.names.channel))
                conn = await psycopg.AsyncConnection.connect(
                    self.queue.conninfo, autocommit=True,
                    application_name=f"{APPLICATION_NAME}-listener")
                async with conn:
                    await conn.execute(channel)
                    self._db_ok("listener")
                    # Catch up on what came while not listening: work enqueued, and an
                    # operator's cancel or drain, whose NOTIFY was sent to nobody.
                    self._wake.set()
                    self._beat_now.set()
                    async for notice in conn.notifies():
                        if notice.payload in ("cancel", "drain"):
                            self._beat_now.set()
                            continue
                        claim = self._loops.get("claim")
                        if claim is not None:
                            claim.reset_backoff()
                        self._wake.set()
            except Exception as exc:
                # Never fatal: the claim loop polls meanwhile.
                error = classify(exc) if isinstance(exc, DRIVER_ERRORS) else exc
                pause = health.failed(error)
                log.warning("listener lost its connection (%s); polling meanwhile, "
                            "reconnecting in %.1fs", error, pause)
                await asyncio.sleep(pause)

    async def _heartbeats(self) -> None:
        """One statement per beat extends every held lease; nothing else is awaited here, so
        nothing slower can make a lease run out. A lease that did not hold, or whose local
        deadline passed while the database was unreachable, ends its attempt: another worker
        may own the job by then, or an operator cancelled it."""
        pause = self.heartbeat_interval
        while True:
            await asyncio.sleep(pause)
            self._write_health()
            pause = self.heartbeat_interval
            held = list(self._running.values())
            if not held:
                continue
            lost: list[Attempt] = []
            pause = min(pause, await self._renew(held, lost))
            await self._note_cancels(lost)
            for attempt in lost:
                if attempt.operator is None:
                    self._lose(attempt, "lease lost (reclaimed or removed)")

    async def _note_cancels(self, attempts: list[Attempt]) -> None:
        """Of these attempts whose job was refused to them (a lease that did not hold, an
        ack or a failure the fence turned down), mark those an operator cancelled: a cancel,
        not a lost lease, even before a registry beat brought the news."""
        if not attempts:
            return
        try:
            cancelled: dict[int, str] = await self._loop_call(
                "heartbeat", self._loops_queue.cancelled([a.job.id for a in attempts]))
        except Exception as exc:
            log.warning("could not tell cancelled jobs from lost leases: %s", exc)
            return
        for attempt in attempts:
            if attempt.job.id in cancelled:
                self._cancelled_by_operator(attempt, cancelled[attempt.job.id])

    async def _registry(self) -> None:
        """This runner's entry in the worker registry, refreshed every heartbeat interval from
        the start, holding jobs or not; each beat brings back operators' orders: cancelled
        jobs, a drain, paused types. A NOTIFY 'cancel' or 'drain' makes the next beat come
        now. Once a minute it folds the per-minute rates. On leaving, the entry goes with it;
        only this loop writes it, so no beat in flight can bring the entry back afterwards."""
        assert self._beat_now is not None and self._registered is not None
        pause = 0.0
        while not self._leaving:
            await self._wait_for(self._beat_now, pause)
            self._beat_now.clear()
            if self._leaving:
                break
            pause = self.heartbeat_interval
            try:
                orders: Orders = await self._loop_call(
                    "registry", self._loops_queue.worker_beat(self._me(), list(self._running)),
                    timeout=max(1.0, 2 * self.heartbeat_interval))
                self._db_ok("registry")
                self._obey(orders)
            except Exception as exc:
                pause = min(pause, await self._recover("registry", exc, sleep=False))
            self._registered.set()
            if time.monotonic() >= self._next_fold:
                self._next_fold = time.monotonic() + FOLD_EVERY
                await self._fold_rates()
        try:
            await self._loop_call("registry", self._loops_queue.worker_gone(self.worker_id),
                                  timeout=5.0)
        except Exception as exc:
            log.warning("could not leave the worker registry (the entry ages out): %s", exc)

    async def _fold_rates(self) -> None:
        """Fold the per-minute rates, so that they are counted while runners run and not only
        while someone watches `jobq status` or the console; a fold also keeps the history's
        daily partitions ahead. One folder at a time across the fleet (the others skip), so
        a fleet costs the same as one runner."""
        try:
            await self._loop_call("registry", self._loops_queue.fold_rates(),
                                  timeout=FOLD_TIMEOUT)
        except Exception as exc:  # never a reason to stop serving: history has a DEFAULT partition
            log.warning("could not fold the per-minute rates (nor keep the history's partitions "
                        "ahead), trying again in %d s: %s", FOLD_EVERY, exc)

    async def _renew(self, held: list[Attempt], lost: list[Attempt]) -> float:
        """Renew the held leases; adds to `lost` those that did not hold. Returns the pause
        before the next beat."""
        started = time.monotonic()
        pause = self.heartbeat_interval
        try:
            # A beat that hangs is given up in time to judge the leases it was renewing.
            kept: set[int] | None = await self._loop_call(
                "heartbeat", self._loops_queue.heartbeat([a.job for a in held],
                                                         [a.lease_ms for a in held]),
                timeout=max(1.0, 2 * self.heartbeat_interval))
            self._db_ok("heartbeat")
        except Exception as exc:
            # Judge the leases now, then try again soon: they run out while we wait.
            pause = await self._recover("heartbeat", exc, wait=None, sleep=False)
            kept = None
        for attempt in held:
            if self._running.get(attempt.job.id) is not attempt:
                continue  # finished while the beat was in flight
            if kept is not None and attempt.job.id in kept:
                attempt.deadline = started + attempt.lease_ms / 1000
            elif attempt.cancel_reason is not None or attempt.acking:
                # An ack in flight may have just deleted the row; the ack itself tells.
                continue
            elif kept is not None:
                lost.append(attempt)
            elif time.monotonic() > attempt.deadline:
                self._lose(attempt, "lease expired while the database was unreachable")
        return pause

    def _me(self) -> WorkerInfo:
        from . import __version__  # the package imports this module first

        return WorkerInfo(self.worker_id, self.worker_name, socket.gethostname(), os.getpid(),
                          self.task_types, self.concurrency, self.heartbeat_interval,
                          __version__)

    def _free_slots(self) -> int:
        return (self.concurrency - len(self._running) - len(self._retired)
                - self._stuck_threads)

    def _retire(self, attempt: Attempt) -> None:
        """The job is no longer this attempt's: stop renewing it, keep its slot until the
        handler ends, and let the job run again (here too) without mixing the two up."""
        if self._running.get(attempt.job.id) is attempt:
            del self._running[attempt.job.id]
            self._retired.add(attempt)

    def _release_slot(self, attempt: Attempt) -> None:
        if self._running.get(attempt.job.id) is attempt:
            del self._running[attempt.job.id]
        self._retired.discard(attempt)

    def _cancelled_by_operator(self, attempt: Attempt, reason: str) -> None:
        if attempt.operator is not None:
            return
        attempt.operator = reason
        attempt.cancel(reason)
        self._retire(attempt)
        log.warning("job %s (%s, request %s): %s; stopping its handler", attempt.job.id,
                    attempt.job.type, attempt.job.request_id, reason)

    def _obey(self, orders: Orders) -> None:
        """Carry out what a registry beat brought back."""
        for job_id, reason in orders.cancelled.items():
            attempt = self._running.get(job_id)
            if attempt is not None:
                self._cancelled_by_operator(attempt, reason)
        if orders.paused != self._paused:
            if orders.paused - self._paused:
                log.warning("paused by an operator, not claimed until resumed: %s",
                            ", ".join(sorted(orders.paused - self._paused)))
            if self._paused - orders.paused:
                log.info("resumed: %s", ", ".join(sorted(self._paused - orders.paused)))
            self._paused = orders.paused
        if orders.drain_by is not None and self._draining is None:
            self._draining = orders.drain_by
            log.warning("draining at the request of %s: no more claims; exiting once the %d "
                        "running jobs finish", orders.drain_by, len(self._running))
            assert self._stop is not None
            self._stop.set()
            self._wake_up()

    async def _leave(self, beats: asyncio.Task[None]) -> None:
        """Stop beating and leave the registry (the registry loop does, as its last act)."""
        self._leaving = True
        if self._beat_now is not None:
            self._beat_now.set()
        await asyncio.wait({beats}, timeout=LEAVE_GRACE)

    def _lose(self, attempt: Attempt, reason: str) -> None:
        attempt.cancel(reason)
        self._retire(attempt)
        self.counters["lease_lost"] += 1
        log.warning("job %s (%s, request %s): %s", attempt.job.id, attempt.job.type,
                    attempt.job.request_id, reason)
        self._emit("lease_lost", attempt.job, error=reason)

    async def _acker(self) -> None:
        """Completions are acked in batches: whatever has finished by the time the previous
        batch is written goes in the next statement. The acker, not the attempt, then frees
        the slot: a job holds its slot (and its lease, which the heartbeat keeps alive) until
        its completion is committed. A failed ack is retried while the leases last."""
        assert self._acks is not None
        while True:
            batch = [await self._acks.get()]
            while not self._acks.empty() and len(batch) < 1000:
                batch.append(self._acks.get_nowait())
            kept = await self._ack(batch)
            await self._note_cancels(
                [a for a, _, _ in batch if a.job.id not in kept and a.operator is None])
            for attempt, result, started in batch:
                self._release_slot(attempt)
                if attempt.job.id in kept:
                    self.counters["completed"] += 1
                    self._emit("completed", attempt.job, duration=time.monotonic() - started,
                               result=result)
                else:
                    self._discard(attempt, started, "lease lost before the ack")
                self._acks.task_done()
            self._slot_freed(None)

    async def _ack(self, batch: list[tuple[Attempt, Any, float]]) -> set[int]:
        """Complete a batch; on failure, retry with backoff until the first lease would run
        out. Jobs not acked by then run again (at least once, never lost)."""
        jobs = [a.job for a, _, _ in batch]
        unknown = False  # an earlier try broke off: it may have committed
        while True:
            try:
                kept = set(await self._loop_call(
                    "ack", self._loops_queue.complete_many(jobs, [r for _, r, _ in batch])))
                if unknown and len(kept) < len(jobs):
                    kept |= await self._loop_call(
                        "ack", self._loops_queue.acked([j for j in jobs if j.id not in kept]))
                self._db_ok("ack")
                return kept
            except Exception as exc:
                unknown = unknown or isinstance(exc, DatabaseUnavailableError)
                deadline = min(a.deadline for a, _, _ in batch)
                await self._recover("ack", exc)
                if time.monotonic() >= deadline:
                    log.error("gave up acking %d completed jobs; their leases ran out and "
                              "they will run again", len(batch))
                    self.counters["ack_failed"] += len(batch)
                    return set()

    # -- one attempt ------------------------------------------------------------------------

    def _begin(self, job: Job, claim_lease_ms: int) -> Attempt:
        """Take a slot for a job claimed with a lease of `claim_lease_ms`."""
        task = self._tasks[job.type]
        # A task's own lease applies from the first heartbeat, which comes well before the
        # claim's lease (a third of it) runs out: no extra round trip per job.
        attempt = Attempt(job, task, task.lease_ms or self.lease_ms,
                           time.monotonic() + claim_lease_ms / 1000)
        self._running[job.id] = attempt
        return attempt

    async def _attempt(self, attempt: Attempt, *, batch_ack: bool = True) -> tuple[str, Any]:
        """Run one claimed job to its next state; returns (outcome, result or exception)."""
        job, task = attempt.job, attempt.task
        handed_over = False
        self.counters["claimed"] += 1
        self._emit("claimed", job)
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
            if batch_ack and self._acks is not None:
                attempt.acking = True
                self._acks.put_nowait((attempt, result, started))
                handed_over = True  # the acker completes it and frees the slot
                return AttemptEnd.COMPLETED, result
            try:
                await self._calls.complete(job, result=result)
            except LeaseLostError:
                await self._note_cancels([attempt])
                return self._discard(attempt, started, "lease lost before the ack")
            self.counters["completed"] += 1
            self._emit("completed", job, duration=time.monotonic() - started, result=result)
            return AttemptEnd.COMPLETED, result
        finally:
            if not handed_over:
                self._release_slot(attempt)

    def _discard(self, attempt: Attempt, started: float,
                 reason: str | None = None) -> tuple[str, Any]:
        if attempt.operator is not None:  # its lease went with the cancel: no lease lost
            self.counters["cancelled"] += 1
            self._emit("cancelled", attempt.job, error=attempt.operator,
                       duration=time.monotonic() - started)
            return AttemptEnd.DISCARDED, None
        why = reason or attempt.cancel_reason or "cancelled"
        self.counters["discarded"] += 1
        log.info("job %s: result discarded (%s)", attempt.job.id, why)
        if reason is not None:
            self._emit("lease_lost", attempt.job, error=why, duration=time.monotonic() - started)
        return AttemptEnd.DISCARDED, None

    async def _fail(self, attempt: Attempt, reason: str, *, retry: bool, started: float,
                    exc: BaseException | None = None) -> tuple[str, Any]:
        job, task = attempt.job, attempt.task
        retry = retry and job.attempts < task.max_attempts
        # A backoff's answer is clamped to what a delay may be, so no backoff can break it.
        delay = min(max(float(task.backoff(job.attempts)), 0.0),
                    DELAY_MAX.total_seconds()) if retry else 0.0
        try:
            await self._calls.fail(job, reason=reason, retry=retry,
                                  run_at=timedelta(seconds=delay) if retry else None)
        except LeaseLostError:
            await self._note_cancels([attempt])
            return self._discard(attempt, started, "lease lost before the failure was recorded")
        log.warning("job %s (%s, request %s): attempt %d failed, %s: %s", job.id, job.type,
                    job.request_id, job.attempts,
                    f"retrying in {delay:.1f}s" if retry else "failed for good",
                    reason.split("\n", 1)[0])
        duration = time.monotonic() - started
        if isinstance(exc, TimeoutError):
            self.counters["timed_out"] += 1
            self._emit("timed_out", job, duration=duration, error=reason)
        if retry:
            self.counters["retried"] += 1
            self._emit("retried", job, duration=duration, error=reason)
            now = time.monotonic()
            self._retries_due = [t for t in self._retries_due if t > now - IDLE_GRACE]
            self._retries_due.append(now + delay)
            if self._loop is not None:
                self._loop.call_later(delay, self._wake_up)  # pick our own retry up on time
            return AttemptEnd.RETRIED, exc
        self.counters["failed"] += 1
        self._emit("failed", job, duration=duration, error=reason)
        return AttemptEnd.FAILED, exc

    async def _execute(self, attempt: Attempt) -> Any:
        task, job = attempt.task, attempt.job
        if task.executor == "process":
            if self._processes is None:
                self._processes = ProcessPool(self.process_workers, ChildSettings(
                    self.queue.conninfo, self.queue.table, self.queue.pgbouncer,
                    logging.getLogger("jobq.task").getEffectiveLevel()))
            return await self._processes.run(task.fn, job.payload, job, task.timeout,
                                             attempt.cancelled)
        ctx = Context(attempt, lambda: self._calls)
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
            self._threads = DaemonThreadPool(self.concurrency)
        future = asyncio.get_running_loop().run_in_executor(
            self._threads, task.fn, job.payload, ctx)
        try:
            return await asyncio.wait_for(asyncio.shield(future), task.timeout)
        except TimeoutError:
            # Threads cannot be killed: the handler sees ctx.cancelled and its result, if it
            # ever returns, is dropped. The attempt fails now so that the job can move on, and
            # the thread keeps its slot until it really ends.
            attempt.cancelled.set()
            self._stuck_threads += 1
            future.add_done_callback(self._thread_ended)
            raise TimeoutError(f"timed out after {task.timeout}s") from None

    def _thread_ended(self, _: object) -> None:
        self._stuck_threads -= 1

    def _emit(self, kind: str, job: Job, **details: Any) -> None:
        if not self._listeners:
            return
        event = RunnerEvent(kind, job, job.attempts, **details)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("on_event callback failed for %s", kind)

    # -- inline execution ------------------------------------------------------------------

    async def arun(
        self, type: str, payload: Any = None, *, idempotency_key: str | None = None,
        request_id: str | None = None, timeout: float | None = None,
    ) -> Any:
        """Enqueue and execute here, returning the handler's result.

        With an idempotency key, a job that already completed returns its stored result
        without running, and one that runs elsewhere is waited for. A final failure here
        raises the handler's own exception; one that happened elsewhere, `JobFailedError`.
        """
        if type not in self._tasks:
            raise UnknownTaskError(f"no handler registered for {type!r}")
        own_loop = self._loop is None or self._loop is not asyncio.get_running_loop()
        if own_loop:
            self._start_loop_state()
        heartbeat = asyncio.create_task(self._heartbeats()) if own_loop else None
        if heartbeat is not None:
            heartbeat.add_done_callback(self._heartbeat_ended)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            job_id: int = await self._calls.enqueue(
                type, payload, idempotency_key=idempotency_key, request_id=request_id)
            while True:
                done = await self._calls.outcome(job_id)
                if done.finished:
                    return finished_result(job_id, done)
                lease_ms = self._tasks[type].lease_ms or self.lease_ms
                job = await self._calls.claim_by_id(
                    job_id, lease_ms=lease_ms, worker=self.worker_name)
                if job is not None:
                    outcome, value = await self._attempt(self._begin(job, lease_ms),
                                                         batch_ack=False)
                    if outcome == AttemptEnd.COMPLETED:
                        return value
                    if outcome == AttemptEnd.FAILED and isinstance(value, BaseException):
                        raise value
                    continue
                wait = 1.0 if deadline is None else deadline - time.monotonic()
                if wait <= 0:
                    raise WaitTimeoutError(f"job {job_id} did not finish in time")
                with contextlib.suppress(WaitTimeoutError):
                    return await self._calls.wait(job_id, timeout=min(wait, 1.0))
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
                self._close_executors()
                self._loop = None

    def _heartbeat_ended(self, heartbeat: asyncio.Task[None]) -> None:
        """An inline run's heartbeat gave up: its attempt can no longer keep its lease."""
        if heartbeat.cancelled():
            return
        error = heartbeat.exception()
        log.error("the heartbeat stopped (%s); abandoning the inline attempt", error)
        for attempt in list(self._running.values()):
            attempt.cancel(f"heartbeat stopped: {error}")

    def run(self, type: str, payload: Any = None, **options: Any) -> Any:
        """The sync form of `arun`, for code without an event loop."""
        return asyncio.run(self.arun(type, payload, **options))


@dataclass
class _Fallback:
    """The fallback handler runners in one process share while no logging is configured,
    and how many of them use it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    handler: FallbackHandler | None = None
    users: int = 0


_FALLBACK = _Fallback()


def _log_somewhere() -> Callable[[], None]:
    """With no logging configured at all, show jobq's records (the runner's and
    `ctx.logger`'s) from INFO on stderr while serving: Python's last resort shows warnings
    only, so a handler's `ctx.logger.info` would vanish. As soon as the application
    configures logging the handler steps aside for good, and gives the `jobq` logger's level
    back, so the application's own configuration decides. Runners in one process share it;
    the last to stop removes it. Returns how to undo it."""
    jobq = logging.getLogger("jobq")
    with _FALLBACK.lock:
        if _FALLBACK.handler is None:
            if logging.root.handlers or jobq.handlers or jobq.level != logging.NOTSET:
                return lambda: None
            _FALLBACK.handler = FallbackHandler(jobq)
            jobq.addHandler(_FALLBACK.handler)
            jobq.setLevel(logging.INFO)
        _FALLBACK.users += 1

    def undo() -> None:
        with _FALLBACK.lock:
            _FALLBACK.users -= 1
            if _FALLBACK.users == 0 and _FALLBACK.handler is not None:
                _FALLBACK.handler.step_aside()
                _FALLBACK.handler = None

    return undo


def _describe(exc: BaseException) -> str:
    """The stored error: the exception line, then its traceback (and a child's, if any)."""
    text = "".join(traceback.format_exception(exc))
    return f"{type(exc).__name__}: {exc}\n\n{text}".rstrip()


def create_task_runner(
    queue: JobQueue | AsyncJobQueue, *, concurrency: int = 10, **options: Any
) -> TaskRunner:
    """A `TaskRunner` over a sync or an async queue; see `TaskRunner` for the options."""
    return TaskRunner(queue, concurrency=concurrency, **options)


__all__: Sequence[str] = [
    "Context",
    "RunnerEvent",
    "Task",
    "TaskRunner",
    "create_task_runner",
    "exponential_backoff",
]
