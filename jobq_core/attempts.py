"""One attempt of a job on a task runner: its state (`Attempt`), how it ended
(`AttemptEnd`), what callbacks hear of it (`RunnerEvent`), and the `ctx` its handler gets."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

from .errors import JobqError
from .logs import bound_logger
from .models import Job
from .queue_port import QueuePort
from .tasks import Task
from .tracing import AttemptSpan


@dataclass(frozen=True)
class RunnerEvent:
    """What `on_event` callbacks receive, once per transition this runner makes.

    `kind` is one of claimed, completed, retried, failed, cancelled (by an operator),
    lease_lost, released, snoozed, timed_out."""

    kind: str
    job: Job
    attempt: int
    duration: float | None = None
    error: str | None = None
    result: Any = None


@dataclass(eq=False)  # compared and hashed by identity: one object per attempt
class Attempt:
    job: Job
    task: Task
    lease_ms: int
    deadline: float
    cancel_reason: str | None = None
    #: Who cancelled the job and why, when an operator did (then its outcome is dropped).
    operator: str | None = None
    handler: asyncio.Task[Any] | None = None
    #: Finished and handed to the acker: a beat that misses it is no proof of a lost lease.
    acking: bool = False
    #: Its OpenTelemetry span, when OpenTelemetry is installed (`jobq_core.tracing`).
    span: AttemptSpan | None = None
    _cancelled: threading.Event | None = None

    @property
    def cancelled(self) -> threading.Event:
        # Made on first use: most handlers never look, and an Event per job is measurable.
        if self._cancelled is None:
            self._cancelled = threading.Event()
            if self.cancel_reason is not None:
                self._cancelled.set()
        return self._cancelled

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._cancelled is not None:
            self._cancelled.set()
        if self.handler is not None and self.task.executor == "async":
            self.handler.cancel()


class AttemptEnd:
    COMPLETED, RETRIED, FAILED, DISCARDED, SNOOZED = (
        "completed", "retried", "failed", "discarded", "snoozed")


class Snooze(BaseException):
    """Raised by `ctx.snooze`: the runner hands the job back. A BaseException, like
    asyncio.CancelledError, so that a handler's `except Exception` does not swallow it."""

    def __init__(self, delay: float | timedelta, reason: str | None) -> None:
        super().__init__(f"snoozed for {delay}")
        self.delay = delay
        self.reason = reason


class Context:
    """`ctx`, the second argument of every handler (thread and async executors)."""

    def __init__(self, attempt: Attempt, queue: Callable[[], QueuePort]) -> None:
        self.job = attempt.job
        self.attempt = attempt.job.attempts
        self.request_id = attempt.job.request_id
        self._state = attempt
        self._queue = queue
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    @property
    def cancelled(self) -> threading.Event:
        """Set when the lease is lost, an operator cancels the job, on timeout and on
        shutdown: stop, the result will be discarded."""
        return self._state.cancelled

    @functools.cached_property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger bound to this job's id, attempt and request id."""
        return bound_logger(self.job)

    def _blocking(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run `coro` on the runner's loop from a handler thread and wait for it."""
        if threading.get_ident() == self._loop_thread:
            coro.close()
            raise JobqError("in an async handler use `await ctx.aenqueue()` / `ctx.aextend()`")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def aextend(self, ms: int) -> None:
        """Make this job's lease last at least `ms` from now."""
        await self._queue().extend(self.job, ms)

    def extend(self, ms: int) -> None:
        self._blocking(self.aextend(ms))

    async def aenqueue(self, type: str, payload: Any = None, **options: Any) -> int:
        """Enqueue a follow-up job; it inherits this job's request id unless given another."""
        options.setdefault("request_id", self.request_id)
        job_id: int = await self._queue().enqueue(type, payload, **options)
        return job_id

    def snooze(self, delay: float | timedelta, reason: str | None = None) -> NoReturn:
        """Stop here and hand the job back until `delay` (seconds or a timedelta) from now, at
        no attempt cost, for example on an HTTP 429: its slot is free at once, and its
        history says `snoozed` with `reason`. Raises; code after it does not run."""
        raise Snooze(delay, reason)

    def enqueue(self, type: str, payload: Any = None, **options: Any) -> int:
        job_id: int = self._blocking(self.aenqueue(type, payload, **options))
        return job_id
