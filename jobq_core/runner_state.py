"""What the parts of a serving task runner share: its settings as serving began, its slots,
the events the parts wake each other with, and the runner's task table, counters and
listeners (the runner's own objects, shared with it). One per `serve()`, or per inline run
outside a serving loop; made inside the event loop it serves on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .attempts import Attempt, RunnerEvent
from .executors import DaemonThreadPool
from .loop_health import LoopHealth
from .models import Job
from .queue import AsyncJobQueue, JobQueue
from .queue_port import InThreads, QueuePort
from .tasks import Task

log = logging.getLogger("jobq.runner")

#: `serve(until_idle=True)` keeps going while one of its own retries is due this soon (s).
IDLE_GRACE = 1.0
#: Threads for a sync queue's calls from the background loops (claim, heartbeat, acks), kept
#: apart from the threads that handlers' own calls (fail, ctx.enqueue) use.
LOOP_THREADS = 3


def beat_interval(given: float | None, lease_ms: int, tasks: dict[str, Task]) -> float:
    """Seconds between heartbeats: as given, or a third of the shortest lease in use, so
    that every lease is renewed at least twice before it could run out."""
    if given is not None:
        return given
    return min([lease_ms, *(t.lease_ms for t in tasks.values() if t.lease_ms)]) / 3000


@dataclass(eq=False)
class RunnerState:
    queue: JobQueue | AsyncJobQueue
    #: The runner's tasks, by type: a task registered while serving is claimed and beaten for.
    tasks: dict[str, Task]
    concurrency: int
    lease_ms: int
    #: `heartbeat_interval` as the runner was given it, if it was.
    beat_every: float | None
    poll_interval: float
    shutdown_timeout: float
    worker_name: str
    counters: Counter[str]
    listeners: list[Callable[[RunnerEvent], None]]
    #: When the retries this runner scheduled come due (monotonic s), across its serves and
    #: inline runs: `serve(until_idle=True)` waits for them.
    retries_due: list[float]
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    #: Set when claiming should end: a stop asked for, a drain ordered, a loop that failed.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when unfinished jobs are to be handed back now, not awaited.
    hard_stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the claim loop should look now: new work, a free slot, the database back.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the registry should beat now: an operator's cancel or drain was announced.
    beat_now: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set once the first registry beat was tried: a runner is listed before it claims.
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when an explicit stop (a signal, `request_stop`) comes, as opposed to a drain.
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    asked_at: float = 0.0
    leaving: bool = False
    draining: str | None = None
    paused: set[str] = field(default_factory=set)
    #: The attempts that hold their job's lease, by job id.
    running: dict[int, Attempt] = field(default_factory=dict)
    #: Attempts whose job was taken from them (an operator's cancel, a lost lease) while
    #: their handler still runs: it keeps its slot until it ends, but the job is no longer
    #: theirs, and the same job may run here again meanwhile.
    retired: set[Attempt] = field(default_factory=set)
    #: Threads of timed-out handlers that have not returned: each keeps its slot.
    stuck_threads: int = 0
    waiting_for_slot: bool = False
    until_idle: bool = False
    #: Finished attempts waiting for the acker: (attempt, result, monotonic start).
    acks: asyncio.Queue[tuple[Attempt, Any, float]] = field(default_factory=asyncio.Queue)
    loops: dict[str, LoopHealth] = field(default_factory=dict)
    #: What stopped the runner, when something other than a request did.
    fatal: BaseException | None = None
    loop_threads: DaemonThreadPool | None = None
    call_threads: DaemonThreadPool | None = None
    #: The runner's metrics' `record(kind, job, duration)`, when it has metrics.
    recorder: Callable[[str, Job, float | None], None] | None = None

    @property
    def heartbeat_interval(self) -> float:
        return beat_interval(self.beat_every, self.lease_ms, self.tasks)

    def __post_init__(self) -> None:
        if isinstance(self.queue, JobQueue):
            # Daemon threads: a call that hangs in the driver never holds up process exit.
            self.loop_threads = DaemonThreadPool(LOOP_THREADS, name="jobq-loop")
            self.call_threads = DaemonThreadPool(
                max(2, self.queue.max_connections - LOOP_THREADS), name="jobq-db")

    # -- the queue, from either twin ----------------------------------------------------------

    def _port(self, threads: DaemonThreadPool | None) -> QueuePort:
        # A sync queue's calls run on threads of the runner's own, never on the loop's
        # default executor, where process waits and user code also run.
        if isinstance(self.queue, AsyncJobQueue):
            return self.queue
        return InThreads(self.queue, threads)

    @property
    def calls(self) -> QueuePort:
        """The queue for a handler's or an attempt's calls (fail, complete, ctx.enqueue)."""
        return self._port(self.call_threads)

    @property
    def loops_queue(self) -> QueuePort:
        """The queue for the background loops' calls, on threads of their own; await each
        through `Supervisor.call`."""
        return self._port(self.loop_threads)

    def close_threads(self) -> None:
        for pool in (self.loop_threads, self.call_threads):
            if pool is not None:
                pool.shutdown(wait=False)
        self.loop_threads = self.call_threads = None

    # -- slots --------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.concurrency - len(self.running) - len(self.retired) - self.stuck_threads

    def retire(self, attempt: Attempt) -> None:
        """The job is no longer this attempt's: stop renewing it, keep its slot until the
        handler ends, and let the job run again (here too) without mixing the two up."""
        if self.running.get(attempt.job.id) is attempt:
            del self.running[attempt.job.id]
            self.retired.add(attempt)

    def release_slot(self, attempt: Attempt) -> None:
        """The attempt's slot is free, its outcome committed. A limited type's job also
        gave back a fleet-wide slot, which no NOTIFY announces: claim again now, rather than
        at the next poll (the claim that came back short may have been held by the limit)."""
        if self.running.get(attempt.job.id) is attempt:
            del self.running[attempt.job.id]
        self.retired.discard(attempt)
        if attempt.task.limits is not None:
            self.wake_up()

    def slot_freed(self, _: object = None) -> None:
        # Wake the claim loop only if it is waiting for a slot (or for the idle check): a
        # free slot alone is no reason to query when the last claim came back short.
        if self.waiting_for_slot or self.until_idle:
            self.wake_up()

    def wake_up(self, _: object = None) -> None:
        self.wake.set()

    # -- stopping -----------------------------------------------------------------------------

    def trip(self, *, immediately: bool) -> None:
        """A stop asked for, on the loop's thread: a second one (or `immediately`) is hard."""
        if immediately or self.asked.is_set():
            self.hard_stop.set()
        if not self.asked.is_set():
            self.asked_at = self.loop.time()  # a drain has no deadline; a stop asked has
            self.asked.set()
        self.stop.set()
        self.wake_up()

    # -- retries and events -------------------------------------------------------------------

    def retry_due_in(self, delay: float) -> None:
        """A retry of this runner's comes due in `delay` s: pick it up on time."""
        now = time.monotonic()
        self.retries_due[:] = [t for t in self.retries_due if t > now - IDLE_GRACE]
        self.retries_due.append(now + delay)
        self.loop.call_later(delay, self.wake_up)

    def retry_due_soon(self) -> bool:
        """Whether a retry this runner scheduled comes due within `IDLE_GRACE` seconds."""
        now = time.monotonic()
        self.retries_due[:] = [t for t in self.retries_due if t > now - IDLE_GRACE]
        return any(t < now + IDLE_GRACE for t in self.retries_due)

    def emit(self, kind: str, job: Job, **details: Any) -> None:
        if self.recorder is not None:
            # Called as is, not as a listener: building each event cost more than counting.
            self.recorder(kind, job, details.get("duration"))
        if not self.listeners:
            return
        event = RunnerEvent(kind, job, job.attempts, **details)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("on_event callback failed for %s", kind)
