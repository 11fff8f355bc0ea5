"""Running handlers in worker processes.

`concurrent.futures.ProcessPoolExecutor` breaks for good when one child dies. Here each worker
process is long-lived and serves one job at a time over a pipe; a child that dies (``os._exit``,
a segfault, ``kill -9``) or is killed on timeout fails only its own attempt, and a fresh
process takes its place on the next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from . import tracing
from .errors import JobqError
from .logs import LineFormatter, LogFormat, bound_logger, log_to_stderr
from .models import Job

if TYPE_CHECKING:
    from .queue import JobQueue

_POLL = 0.02


class DaemonThreadPool(Executor):
    """Handler threads that never hold up process exit.

    `ThreadPoolExecutor` joins its threads when the interpreter exits, so one handler that
    ignores ``ctx.cancelled`` would keep a stopped worker alive. Abandoned handlers here are
    left to die with the process, as a second SIGTERM promises."""

    def __init__(self, size: int, name: str = "jobq-task") -> None:
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]
                                      | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
                         for n in range(size)]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._work.put((future, functools.partial(fn, **kwargs) if kwargs else fn, args))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class ProcessCrashedError(JobqError):
    """The worker process running the handler died; only this attempt fails."""


class HandlerError(Exception):
    """A handler's exception from a child process that could not be sent back as itself."""


class AttemptCancelledError(Exception):
    """The attempt was abandoned: its lease was lost, an operator cancelled it, or the runner
    is shutting down."""


@dataclass(frozen=True)
class ChildSettings:
    """What a child needs to give handlers a working `ctx.enqueue`."""

    conninfo: str | None
    table: str
    pgbouncer: bool = False
    #: The level from which the parent shows `ctx.logger` records: a spawned child starts
    #: with no logging configured, and shows them on the stderr it shares with the parent,
    #: in the parent's format.
    log_level: int = logging.WARNING
    log_format: LogFormat = "plain"
    log_worker_id: str | None = None


class ProcessContext:
    """`ctx` inside a worker process: the job, its attempt and request id, a logger bound to
    them, `cancelled`, and `enqueue` (new jobs inherit the request id)."""

    def __init__(self, job: Job, cancelled: Any, settings: ChildSettings) -> None:
        self.job = job
        self.attempt = job.attempts
        self.request_id = job.request_id
        self.cancelled = cancelled
        self.logger = bound_logger(job)
        self._settings = settings

    def enqueue(self, type: str, payload: Any = None, **options: Any) -> int:
        if self._settings.conninfo is None:
            raise JobqError("ctx.enqueue in a process needs a queue built from a DSN or pool")
        options.setdefault("request_id", self.request_id)
        return _child_queue(self._settings).enqueue(type, payload, **options)

    def extend(self, ms: int) -> None:
        raise JobqError("process handlers cannot extend: the runner keeps their lease alive")


@functools.cache
def _child_queue(settings: ChildSettings) -> JobQueue:
    """One queue per worker process, kept for its lifetime (it dies with the process)."""
    from .queue import JobQueue  # imported here: a child only needs it when asked

    assert settings.conninfo is not None
    return JobQueue(settings.conninfo, table=settings.table, max_connections=1,
                    pgbouncer=settings.pgbouncer)


class FallbackHandler(logging.Handler):
    """jobq's records on stderr for as long as the application has configured no logging of
    its own; once the root logger has a handler, that handler shows them instead, and this
    one leaves `logger` as it found it (no handler of jobq's, its level unset)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.setFormatter(LineFormatter())
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        if logging.root.handlers:
            self.step_aside()
            return
        # Whatever sys.stderr is now, as Python's last resort does: a console app (Textual,
        # curses) that captures stderr while it draws captures these records too, instead
        # of having them written over its screen.
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)

    def step_aside(self) -> None:
        if self in self._logger.handlers:
            self._logger.removeHandler(self)
            self._logger.setLevel(logging.NOTSET)


def _die_with_parent(parent: int) -> None:
    """End this child soon after its parent (pid `parent`) dies, even by kill -9, so that no
    orphan goes on running a job whose lease nobody renews (the reclaimer will run it). A
    watch thread, not PR_SET_PDEATHSIG: that does not fire in every sandbox."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_ORPHAN_CHECK)
        os._exit(1)

    threading.Thread(target=watch, name="jobq-orphan-watch", daemon=True).start()


#: Seconds between a child's checks that its parent is alive.
_ORPHAN_CHECK = 0.5


def _child_main(conn: Connection, cancelled: Any, settings: ChildSettings,
                parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides about shutdown
    _die_with_parent(parent)
    log_to_stderr(settings.log_level, settings.log_format, settings.log_worker_id)
    while True:
        try:
            fn, payload, job, carrier = conn.recv()
        except (EOFError, OSError):
            return
        ctx = ProcessContext(job, cancelled, settings)
        try:
            with tracing.attached(carrier):  # the attempt's span, from the runner
                reply: tuple[Any, ...] = ("ok", fn(payload, ctx))
        except BaseException as exc:
            reply = _error_reply(exc)
        try:
            try:
                conn.send(reply)
            except OSError:
                raise
            except Exception as exc:  # the result itself cannot be sent
                conn.send(_error_reply(exc))
        except OSError:  # the parent is gone: nobody to answer
            return


def _error_reply(exc: BaseException) -> tuple[Any, ...]:
    text = "".join(traceback.format_exception(exc))
    try:
        blob: bytes | None = pickle.dumps(exc)
    except Exception:
        blob = None
    return ("error", blob, f"{type(exc).__name__}: {exc}", text)


class _Worker:
    def __init__(self, context: Any, settings: ChildSettings) -> None:
        self.cancelled = context.Event()
        self.conn, child = context.Pipe()
        self.proc = context.Process(
            target=_child_main, args=(child, self.cancelled, settings, os.getpid()),
            daemon=True, name="jobq-process-worker")
        self.proc.start()
        child.close()

    def call(self, fn: Callable[..., Any], payload: Any, job: Job, timeout: float | None,
             abandon: threading.Event, *, carrier: dict[str, str] | None) -> Any:
        """Run one job; blocks (call it in a thread). Raises on crash, timeout or abandon."""
        if abandon.is_set():  # cancelled while it waited for a free process
            raise AttemptCancelledError("abandoned before it started")
        self.cancelled.clear()
        self.conn.send((fn, payload, job, carrier))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.conn.poll(_POLL):
            if not self.proc.is_alive():
                raise self._crashed()
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"timed out after {timeout}s; worker process killed")
            if abandon.is_set():
                self.cancelled.set()
                self.kill()
                raise AttemptCancelledError("abandoned; worker process killed")
        try:
            message = self.conn.recv()
        except (EOFError, OSError):  # the pipe closes when the child dies
            raise self._crashed() from None
        if message[0] == "ok":
            return message[1]
        _, blob, summary, text = message
        exc: BaseException = HandlerError(f"{summary}\n{text}")
        if blob is not None:
            with contextlib.suppress(Exception):
                exc = pickle.loads(blob)  # our own child process sent it
        exc.__notes__ = [f"in worker process:\n{text}"]
        raise exc

    def _crashed(self) -> ProcessCrashedError:
        self.proc.join(5)
        return ProcessCrashedError(
            f"worker process {self.proc.pid} died (exit code {self.proc.exitcode})")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    @property
    def healthy(self) -> bool:
        return bool(self.proc.is_alive())


class ProcessPool:
    """Up to `size` long-lived worker processes (spawned on demand, replaced when they die)."""

    def __init__(self, size: int, settings: ChildSettings) -> None:
        self.size = size
        self._settings = settings
        self._context = mp.get_context("spawn")
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        # One waiting thread per worker process, of its own: waits for children never take
        # the threads that database calls (or anything else on the default executor) need.
        self._waiters = DaemonThreadPool(size, name="jobq-process-wait")

    async def run(self, fn: Callable[..., Any], payload: Any, job: Job, timeout: float | None,
                  abandon: threading.Event, *, carrier: dict[str, str] | None = None
                  ) -> Any:
        """Run `fn(payload, ctx)` in a worker process; `carrier`, a trace context to make
        current there (`tracing.AttemptSpan.carrier`)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        async with self._slots:
            worker = self._idle.pop() if self._idle else None
            loop = asyncio.get_running_loop()
            if worker is None or not worker.healthy:
                worker = await loop.run_in_executor(
                    self._waiters, _Worker, self._context, self._settings)
            self._busy.add(worker)
            try:
                return await loop.run_in_executor(
                    self._waiters, functools.partial(worker.call, carrier=carrier), fn,
                    payload, job, timeout, abandon)
            finally:
                self._busy.discard(worker)
                if worker.healthy:
                    self._idle.append(worker)

    def close(self) -> None:
        for worker in [*self._idle, *self._busy]:
            worker.kill()
        self._idle.clear()
        self._busy.clear()
        self._waiters.shutdown(wait=False)
