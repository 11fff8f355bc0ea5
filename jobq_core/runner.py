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
import functools
import inspect
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Unpack

from .attempt_runner import AttemptRunner
from .attempts import Context, RunnerEvent
from .dsn import redact
from .errors import InvalidInputError, JobqError, RunnerFailedError, UnknownTaskError
from .executors import FallbackHandler
from .inline import run_inline
from .limits import Limits
from .loop_health import LoopHealth
from .models import NewJob, new_job_params, validate_lease_ms, validate_type
from .queue import AsyncJobQueue, JobQueue, default_worker_name
from .runner_state import RunnerState, beat_interval
from .scheduler import Scheduler
from .schedules import Missed, Schedule
from .side_loops import SideLoops, wait_for
from .supervisor import Supervisor
from .tasks import Task, TaskOptions, exponential_backoff

if TYPE_CHECKING:
    from .metrics import RunnerMetrics

log = logging.getLogger("jobq.runner")

#: Seconds a graceful stop lets an in-flight claim finish before it is abandoned.
STOP_GRACE = 1.0

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
        metrics_port: int | None = None,
        metrics_addr: str = "0.0.0.0",
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
        #: Serve Prometheus metrics on this port (0: any free one) while serving; see
        #: `jobq_core.metrics`, which needs the [metrics] extra.
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        #: Made at the first serve with a `metrics_port`; kept, like `counters`, after.
        self.metrics: RunnerMetrics | None = None
        self.worker_name = worker_name or default_worker_name()
        #: This runner's entry in the worker registry, unique to its boot.
        self.worker_id = f"{default_worker_name()}:{secrets.token_hex(4)}"
        self.process_workers = process_workers or concurrency
        self.counters: Counter[str] = Counter()
        self._listeners: list[Callable[[RunnerEvent], None]] = [on_event] if on_event else []
        self._tasks: dict[str, Task] = {}
        self._schedules: dict[str, Schedule] = {}
        #: The last serve's shared state (the current one's while serving), for `health()`
        #: and `request_stop()`; its parts while serving, for inline runs on its loop.
        self._state: RunnerState | None = None
        self._serving: _Parts | None = None
        self._status = "stopped"
        self._retries_due: list[float] = []

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

        Limits, kept fleet-wide by every claim of the type (see `jobq_core.limits`):
        `global_concurrency` (jobs claimed at once), `key_concurrency` with `concurrency_key`
        (at once per key: a function of the payload, applied at enqueue by this runner's
        queue, or the name of a payload field, read by the claims), and `rate_limit` ("100/s",
        "1000/h") with `rate_burst` (by default the count).
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
        limits = Limits.of(options)
        if limits is not None and callable(limits.key):
            self.queue.key_functions[name] = limits.key
        self._tasks[name] = Task(
            name, fn, max_attempts, options.get("backoff") or exponential_backoff(), timeout,
            chosen, options.get("retry_on"), lease_ms, limits,
        )

    def periodic(
        self, name: str, *, cron: str | None = None, every: timedelta | None = None,
        tz: str = "UTC", missed: Missed = "latest", payload: Any = None, priority: int = 0,
        **options: Unpack[TaskOptions],
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated `fn(payload, ctx)` for jobs of type `name`, and enqueue one
        such job at every slot of a schedule: `cron`, a five-field expression read in the
        time zone `tz` (an IANA name), or `every`, an interval from the Unix epoch. Each slot
        is fired once across all the runners that serve it, with no leader; `missed` says
        what happens to slots that came while none ran: "skip", "latest" (the newest of
        them) or "all" (those of the last day). See `jobq_core.schedules`. The other options
        are those of `register`."""
        schedule = Schedule(name, cron=cron, every=every, tz=tz, missed=missed,
                            payload=payload, priority=priority)
        new_job_params(NewJob(name, payload, priority=priority))  # refuse them now, not later
        if name in self._schedules:
            raise InvalidInputError(f"schedule {name!r} is already registered")

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.register(name, fn, **options)
            self._schedules[name] = schedule
            return fn

        return decorate

    @property
    def schedules(self) -> list[Schedule]:
        return [self._schedules[name] for name in sorted(self._schedules)]

    @property
    def task_types(self) -> list[str]:
        return sorted(self._tasks)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: as given, or a third of the shortest lease in use, so
        that every lease is renewed at least twice before it could run out."""
        return beat_interval(self._heartbeat_interval, self.lease_ms, self._tasks)

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
        state = self._state
        loops = state.loops if state is not None else {}
        status = self._status
        if status == "ok" and any(h.failures for h in loops.values()):
            status = "degraded"
        fatal = state.fatal if state is not None else None
        return {
            "status": status,
            "updated": time.time(),
            "worker": self.worker_name,
            "worker_id": self.worker_id,
            "draining_for": state.draining if state is not None else None,
            "pid": os.getpid(),
            "in_flight": len(state.running) if state is not None else 0,
            "free_slots": max(state.free_slots() if state is not None else self.concurrency,
                              0),
            "error": None if fatal is None else str(fatal),
            # A copy: loops may be added on the serving thread meanwhile.
            "loops": {name: {"failures": h.failures, "last_ok": h.last_ok,
                             "last_error": h.last_error} for name, h in list(loops.items())},
        }

    @property
    def serving(self) -> bool:
        """Whether `serve()` runs: True from the moment it can hear `request_stop` until it
        has shut down."""
        return self._serving is not None

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

    # -- serving ----------------------------------------------------------------------------

    def _parts(self, *, inline: bool = False) -> _Parts:
        """The parts of one serve (or inline run), made on the loop they run on. An inline
        run's failures are its own to raise: they leave the health file alone."""
        state = RunnerState(
            self.queue, self._tasks, self.concurrency, self.lease_ms, self._heartbeat_interval,
            self.poll_interval, self.shutdown_timeout, self.worker_name, self.counters,
            self._listeners, self._retries_due)
        if self.metrics is not None:
            state.recorder = self.metrics.record
        supervisor = Supervisor(state, (lambda: None) if inline else self._write_health)
        side_loops = SideLoops(state, supervisor, self.worker_id)
        return _Parts(state, supervisor, side_loops,
                      AttemptRunner(state, supervisor, side_loops, self.process_workers))

    def serve_forever(self, *, until_idle: bool = False) -> None:
        """Serve until SIGTERM/SIGINT (graceful; a second signal stops at once)."""
        asyncio.run(self.serve(until_idle=until_idle, handle_signals=True))

    def request_stop(self, *, immediately: bool = False) -> None:
        """Stop claiming and shut down gracefully; safe from any thread or a signal handler.
        A second request (or `immediately`) hands unfinished jobs back at once. During a
        drain, the first request gives the running jobs `shutdown_timeout` from then."""
        state = self._state
        if state is None or state.loop.is_closed():
            return
        try:
            running_loop = asyncio.get_running_loop()
        except RuntimeError:
            running_loop = None
        if running_loop is state.loop:
            state.trip(immediately=immediately)
        else:
            state.loop.call_soon_threadsafe(functools.partial(state.trip,
                                                              immediately=immediately))

    async def serve(self, *, until_idle: bool = False, handle_signals: bool = False) -> None:
        """Claim and run jobs until stopped; with `until_idle`, until nothing is claimable and
        no retry this runner scheduled is due within `runner_state.IDLE_GRACE` seconds.

        Every background loop survives any error: it logs it, backs off with jitter and goes
        on. One that cannot go on stops the runner, and then this raises
        `RunnerFailedError`: a runner never hangs silently."""
        if not self._tasks:
            raise InvalidInputError("register at least one task before serving")
        if self._serving is not None:
            raise InvalidInputError("this runner is serving already: one serve() at a time")
        metrics = self._start_metrics()
        parts = self._parts()
        state = parts.state
        state.until_idle = until_idle
        state.loops = {name: LoopHealth() for name in ("claim", "heartbeat", "registry", "ack")}
        started = time.monotonic()
        self._state, self._serving = state, parts
        self._status = "ok"
        undo_logging = _log_somewhere()
        try:
            with _signals_to(self.request_stop, handle_signals):
                await self._serve(parts, metrics)
        finally:
            if metrics is not None:
                metrics.stop_server()
            parts.close()
            self._serving = None
            self._status = "failed" if state.fatal is not None else "stopped"
            self._write_health()
            log.info("stopped: %s; up %.1fs", self._summary(), time.monotonic() - started)
            undo_logging()
        if state.fatal is not None:
            log.critical("runner stopped: %s", state.fatal)
            if isinstance(state.fatal, RunnerFailedError):
                raise state.fatal
            raise RunnerFailedError(str(state.fatal)) from state.fatal

    def _start_metrics(self) -> RunnerMetrics | None:
        """With a `metrics_port`, this runner's metrics, recording from the first serve on
        (inline runs too), and served over HTTP until this serve ends."""
        if self.metrics_port is None:
            return None
        if self.metrics is None:
            from .metrics import RunnerMetrics  # the [metrics] extra, only when asked for

            self.metrics = RunnerMetrics(self)
        self.metrics.start_server(self.metrics_port, self.metrics_addr)
        return self.metrics

    async def _serve(self, parts: _Parts, metrics: RunnerMetrics | None) -> None:
        """The side loops started, the claim loop until a stop, then shutdown: the running
        jobs finished or handed back, the registry left, the side loops ended."""
        state, supervisor = parts.state, parts.supervisor
        beats = supervisor.start(parts.side_loops.registry(), "registry")
        background = [beats, supervisor.start(parts.side_loops.heartbeats(), "heartbeat"),
                      asyncio.create_task(parts.side_loops.stop_at_deadlines()),
                      supervisor.start(parts.attempts.acker(), "ack")]
        if self.notify and self.queue.listens:
            state.loops["listener"] = LoopHealth()
            background.append(supervisor.start(parts.side_loops.listen(), "listener"))
        if metrics is not None:
            background.append(asyncio.create_task(metrics.watch_depth(state)))
        if self._schedules:
            state.loops["schedules"] = LoopHealth()
            scheduler = Scheduler(state, supervisor, self.schedules, self.worker_id)
            background.append(supervisor.start(scheduler.run(), "schedules"))
        attempts: set[asyncio.Task[Any]] = set()
        try:
            conninfo = self.queue.conninfo
            log.info("serving %s with concurrency %d as worker %s (claims as %s) on %s, "
                     "table %s; heartbeat every %.1fs", ", ".join(sorted(state.tasks)),
                     state.concurrency, self.worker_id, state.worker_name,
                     redact(conninfo, conninfo) if conninfo else "the pool it was given",
                     self.queue.table, state.heartbeat_interval)
            claiming = asyncio.create_task(self._claim_loop(parts, attempts), name="jobq-claim")
            try:
                await self._until_stopped(state, claiming)
            except RunnerFailedError as exc:
                state.fatal = exc
            finally:
                await self._shutdown(parts, attempts)
                await parts.side_loops.leave(beats)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    def _summary(self) -> str:
        """The shutdown line's counts: the outcomes always, anything else that happened."""
        shown = ("completed", "retried", "failed", "cancelled", "discarded", "handed_back")
        counts = [f"{k.replace('_', ' ')} {self.counters[k]}" for k in shown]
        counts += [f"{k} {v}" for k, v in sorted(self.counters.items())
                   if v and k not in shown and k != "claimed"]
        return ", ".join(counts)

    @staticmethod
    async def _until_stopped(state: RunnerState, claiming: asyncio.Task[None]) -> None:
        """Wait for the claim loop to end. Once a stop is asked for, an in-flight claim gets
        `STOP_GRACE` seconds (none on a hard stop): a claim that hangs never holds up a stop.
        Jobs an abandoned claim took come back when their lease runs out."""
        stopped = asyncio.ensure_future(state.stop.wait())
        try:
            await asyncio.wait({claiming, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not claiming.done():
                grace = 0.0 if state.hard_stop.is_set() else STOP_GRACE
                await asyncio.wait({claiming}, timeout=grace)
        finally:
            stopped.cancel()
            if not claiming.done():
                claiming.cancel()
                await asyncio.gather(claiming, return_exceptions=True)
        if not claiming.cancelled():
            claiming.result()  # a RunnerFailedError of the loop

    async def _claim_loop(self, parts: _Parts, attempts: set[asyncio.Task[Any]]) -> None:
        state, supervisor = parts.state, parts.supervisor
        wake = state.wake
        # Listed before it holds a job (a failing first beat holds claims up no longer).
        await wait_for(state.registered, state.heartbeat_interval)
        if not await self._register_limits(parts):
            return
        limited = any(task.limits is not None for task in state.tasks.values())
        while not state.stop.is_set():
            free = state.free_slots()
            wake.clear()
            state.waiting_for_slot = free <= 0
            if state.waiting_for_slot:
                await wait_for(wake, state.poll_interval)
                continue
            sent = time.monotonic()
            try:
                jobs = await supervisor.call("claim", state.loops_queue.claim_many(
                    free, types=sorted(state.tasks), lease_ms=state.lease_ms,
                    worker=state.worker_name))
            except Exception as exc:
                # A NOTIFY or another loop's success (the database is back) ends the pause.
                await supervisor.recover("claim", exc,
                                         wait=lambda pause: wait_for(wake, pause))
                continue
            supervisor.ok("claim")
            for job in jobs:
                # Registered before the task starts, so the next claim sees the slot taken.
                attempt = asyncio.create_task(
                    parts.attempts.run(parts.attempts.begin(job, state.lease_ms, sent)))
                attempts.add(attempt)
                attempt.add_done_callback(attempts.discard)
                attempt.add_done_callback(state.slot_freed)
            if len(jobs) == free:
                continue  # there may be more: claim again as soon as a slot frees
            if jobs and limited:
                continue  # a claim starts jobs from one lane of a limit: others may have room
            # A wake during the claim (a NOTIFY, or a limited job's slot given back while the
            # claim counted it as taken) says that a claim now may find what this one did not.
            if (state.until_idle and not jobs and not state.running
                    and not state.retry_due_soon() and not wake.is_set()):
                break
            await wait_for(wake, state.poll_interval)

    async def _register_limits(self, parts: _Parts) -> bool:
        """Record the tasks' limits before the first claim, so that no claim of this runner
        goes without them; retried until it succeeds or a stop is asked for (False)."""
        limits = {name: task.limits for name, task in parts.state.tasks.items()
                  if task.limits is not None}
        state, supervisor = parts.state, parts.supervisor
        while limits and not state.stop.is_set():
            try:
                replaced = await supervisor.call("claim", state.loops_queue.register_limits(
                    limits, by=self.worker_id))
            except Exception as exc:
                await supervisor.recover("claim", exc,
                                         wait=lambda pause: wait_for(state.stop, pause))
                continue
            for old in replaced:
                log.warning("task %r's limits were %s (registered by %s), now %s: runners "
                            "that disagree overwrite each other as they start", old.type,
                            old.was, old.by, limits[old.type].describe())
            return True
        return not state.stop.is_set()

    async def _shutdown(self, parts: _Parts, attempts: set[asyncio.Task[Any]]) -> None:
        """Let running jobs finish within the deadline, then hand the rest back at no attempt
        cost; their late results are refused by the lease fence. A drain has no deadline of
        its own: its jobs run until their own timeouts, or until a stop is asked for."""
        state = parts.state
        loop = asyncio.get_running_loop()
        if state.draining is None and not state.asked.is_set():  # idle, or a loop failed
            state.asked_at = loop.time()
            state.asked.set()
        hard = asyncio.create_task(state.hard_stop.wait())
        asked = asyncio.create_task(state.asked.wait())
        waiting = set(attempts)
        while waiting and not state.hard_stop.is_set():
            wake = {hard}
            timeout: float | None = None
            if state.asked.is_set():
                timeout = state.asked_at + state.shutdown_timeout - loop.time()
                if timeout <= 0:
                    break
            else:
                wake.add(asked)  # a stop asked for during a drain sets the deadline
            _, waiting = await asyncio.wait(waiting | wake, timeout=timeout,
                                            return_when=asyncio.FIRST_COMPLETED)
            waiting -= {hard, asked}
        hard.cancel()
        asked.cancel()
        # Finished jobs are acked, never handed back. The acker retries until the leases run
        # out, so a drain waits that long at most.
        left = (state.asked_at + state.shutdown_timeout - loop.time() if state.asked.is_set()
                else state.lease_ms / 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.acks.join(), max(left, 5.0))
        unfinished = list(state.running.values())
        for attempt in unfinished:
            attempt.cancel("shutdown")
        if unfinished:
            try:
                released = await parts.supervisor.call("release", state.loops_queue.release(
                    [a.job for a in unfinished], reason="handed back at shutdown"),
                    timeout=10.0)
            except JobqError as exc:
                log.error("could not hand back %d jobs (their leases will expire): %s",
                          len(unfinished), exc)
                released = []
            state.counters["handed_back"] += len(released)
            for attempt in unfinished:
                if attempt.job.id in released:
                    state.emit("released", attempt.job)
        for task in attempts:
            task.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)

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
        serving = self._serving
        if serving is not None and serving.state.loop is asyncio.get_running_loop():
            # Inside a serving runner: its slots, heartbeat and executors.
            return await run_inline(serving.attempts, type, payload, timeout=timeout,
                                    idempotency_key=idempotency_key, request_id=request_id)
        parts = self._parts(inline=True)
        heartbeat = asyncio.create_task(parts.side_loops.heartbeats())
        heartbeat.add_done_callback(functools.partial(_heartbeat_ended, parts.state))
        try:
            return await run_inline(parts.attempts, type, payload, timeout=timeout,
                                    idempotency_key=idempotency_key, request_id=request_id)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            parts.close()

    def run(self, type: str, payload: Any = None, **options: Any) -> Any:
        """The sync form of `arun`, for code without an event loop."""
        return asyncio.run(self.arun(type, payload, **options))


@contextlib.contextmanager
def _signals_to(handler: Callable[[], None], on: bool) -> Iterator[None]:
    """SIGTERM and SIGINT call `handler` while inside, when `on`."""
    loop = asyncio.get_running_loop()
    added: list[signal.Signals] = []
    try:
        if on:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, handler)
                added.append(sig)
        yield
    finally:
        for sig in added:
            loop.remove_signal_handler(sig)


@dataclass
class _Parts:
    """One serve's (or inline run's) shared state and the parts that act on it."""

    state: RunnerState
    supervisor: Supervisor
    side_loops: SideLoops
    attempts: AttemptRunner

    def close(self) -> None:
        self.state.close_threads()
        self.attempts.close()


def _heartbeat_ended(state: RunnerState, heartbeat: asyncio.Task[None]) -> None:
    """An inline run's heartbeat gave up: its attempt can no longer keep its lease."""
    if heartbeat.cancelled():
        return
    error = heartbeat.exception()
    log.error("the heartbeat stopped (%s); abandoning the inline attempt", error)
    for attempt in list(state.running.values()):
        attempt.cancel(f"heartbeat stopped: {error}")


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
