"""The queue as the task runner calls it: one typed, async interface over either twin.

An `AsyncJobQueue` is a `QueuePort` as it is. A sync `JobQueue` becomes one through
`InThreads`, which runs each call on a thread of a pool the runner chooses, so that neither the
event loop nor the loop's default executor (where handlers run) waits on the database."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from ._ops import LimitConflict, Orders, Outcome, Tick, WorkerInfo
from .limits import Limits
from .models import Job
from .queue import JobQueue
from .schedules import Schedule

P = ParamSpec("P")
R = TypeVar("R")


class QueuePort(Protocol):
    """What the runner asks of a queue; `JobQueue` documents each call."""

    @property
    def prepared(self) -> bool: ...
    async def prepare(self) -> None: ...
    async def enqueue(self, type: str, payload: Any = None, *,
                      run_at: datetime | timedelta | None = None, priority: int = 0,
                      idempotency_key: str | None = None,
                      request_id: str | None = None,
                      concurrency_key: str | None = None) -> int: ...
    async def claim_many(self, limit: int, *, types: Sequence[str] | None = None,
                         lease_ms: int | None = None, worker: str | None = None) -> list[Job]: ...
    async def claim_by_id(self, job_id: int, *, lease_ms: int | None = None,
                          worker: str | None = None) -> Job | None: ...
    async def complete(self, job: Job | int, *, result: Any = None) -> None: ...
    async def complete_many(self, jobs: Sequence[Job],
                            results: Sequence[Any] | None = None) -> list[int]: ...
    async def acked(self, jobs: Sequence[Job]) -> set[int]: ...
    async def fail(self, job: Job | int, *, reason: str, retry: bool = False,
                   run_at: datetime | timedelta | None = None) -> None: ...
    async def extend(self, job: Job | int, ms: int) -> datetime: ...
    async def heartbeat(self, jobs: Sequence[Job],
                        lease_ms: int | Sequence[int] | None = None) -> set[int]: ...
    async def release(self, jobs: Sequence[Job], *, reason: str = "released") -> list[int]: ...
    async def cancelled(self, ids: Sequence[int]) -> dict[int, str]: ...
    async def worker_beat(self, me: WorkerInfo, held: Sequence[int]) -> Orders: ...
    async def worker_gone(self, worker_id: str) -> None: ...
    async def fold_rates(self) -> int: ...
    async def snooze(self, job: Job, delay: float | timedelta, *,
                     reason: str | None = None) -> datetime: ...
    async def register_limits(self, limits: Mapping[str, Limits], *,
                              by: str) -> list[LimitConflict]: ...
    async def register_schedules(self, schedules: Sequence[Schedule], *, by: str,
                                 now: datetime | None = None) -> None: ...
    async def fire_schedule(self, schedule: Schedule, *,
                            now: datetime | None = None) -> Tick: ...
    async def outcome(self, job_id: int) -> Outcome: ...
    async def wait(self, job_id: int, timeout: float | None = None) -> Any: ...


class _OnThread(Generic[P, R]):
    """A `JobQueue` method, called through `InThreads` as a coroutine of the same
    signature."""

    def __init__(self, method: Callable[Concatenate[JobQueue, P], R]) -> None:
        self._method = method

    @overload
    def __get__(self, port: None, owner: type[InThreads]) -> _OnThread[P, R]: ...
    @overload
    def __get__(self, port: InThreads,
                owner: type[InThreads]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(self, port: InThreads | None,
                owner: type[InThreads]) -> _OnThread[P, R] | Callable[P, Coroutine[Any, Any, R]]:
        if port is None:
            return self
        name, queue, threads = self._method.__name__, port.queue, port.threads

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            # The queue's own method, looked up at each call: a subclass's override, or a
            # method patched on later, runs as it would on an AsyncJobQueue.
            method: Callable[P, R] = getattr(queue, name)
            # In the caller's context, as asyncio.to_thread runs a call: an enqueue from a
            # handler keeps the handler's current trace context (`jobq_core.tracing`).
            return await asyncio.get_running_loop().run_in_executor(
                threads, functools.partial(contextvars.copy_context().run, method, *args,
                                           **kwargs))

        call.__name__ = name  # what a timed-out loop call names
        return call


class InThreads:
    """A sync `JobQueue` as a `QueuePort`: each call on a thread of `threads` (None: the
    event loop's default executor)."""

    def __init__(self, queue: JobQueue, threads: Executor | None) -> None:
        self.queue = queue
        self.threads = threads

    @property
    def prepared(self) -> bool:
        return self.queue.prepared

    prepare = _OnThread(JobQueue.prepare)
    enqueue = _OnThread(JobQueue.enqueue)
    claim_many = _OnThread(JobQueue.claim_many)
    claim_by_id = _OnThread(JobQueue.claim_by_id)
    complete = _OnThread(JobQueue.complete)
    complete_many = _OnThread(JobQueue.complete_many)
    acked = _OnThread(JobQueue.acked)
    fail = _OnThread(JobQueue.fail)
    extend = _OnThread(JobQueue.extend)
    heartbeat = _OnThread(JobQueue.heartbeat)
    release = _OnThread(JobQueue.release)
    cancelled = _OnThread(JobQueue.cancelled)
    worker_beat = _OnThread(JobQueue.worker_beat)
    worker_gone = _OnThread(JobQueue.worker_gone)
    fold_rates = _OnThread(JobQueue.fold_rates)
    snooze = _OnThread(JobQueue.snooze)
    register_limits = _OnThread(JobQueue.register_limits)
    register_schedules = _OnThread(JobQueue.register_schedules)
    fire_schedule = _OnThread(JobQueue.fire_schedule)
    outcome = _OnThread(JobQueue.outcome)
    wait = _OnThread(JobQueue.wait)

