"""How a task runner watches its background loops: every database call bounded in time,
every failure logged and backed off, and a loop that fails for good, or ends, stops the
runner (as Procrastinate's worker watches its side tasks). A runner never hangs silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from . import loop_health
from .errors import DRIVER_ERRORS, JobqError, RunnerFailedError, TransientError, classify
from .loop_health import LoopHealth
from .runner_state import RunnerState

log = logging.getLogger("jobq.runner")
R = TypeVar("R")

#: Seconds a loop's database call may take before it is reported as hung and retried.
CALL_TIMEOUT = 60.0


class Supervisor:
    def __init__(self, state: RunnerState, report: Callable[[], None]) -> None:
        self.state = state
        #: Rewrites the health file: called whenever a loop's health changes for the worse.
        self.report = report

    async def call(self, loop: str, call: Coroutine[Any, Any, R], *,
                   timeout: float | None = None) -> R:
        """A background loop's queue call, bounded in time, so a call that hangs is reported
        and retried, never waited on."""
        timeout = CALL_TIMEOUT if timeout is None else timeout
        try:
            # Not the first call, which may migrate: an upgrade's index build takes what it
            # takes, and cancelling it would leave the index to build again from scratch.
            async with asyncio.timeout(timeout if self.state.queue.prepared else None):
                return await call
        except TimeoutError:
            name = getattr(call, "__name__", "call")
            raise TransientError(f"the {loop} loop's {name} did not answer within "
                                 f"{timeout:.1f} s") from None

    def ok(self, loop: str) -> None:
        """A loop's call succeeded: the database answers, so a claim loop that is backing off
        may try again now."""
        health = self.state.loops.setdefault(loop, LoopHealth())
        health.ok()
        claim = self.state.loops.get("claim")
        if loop != "claim" and claim is not None and claim.failures:
            claim.reset_backoff()
            self.state.wake_up()

    async def recover(self, loop: str, exc: BaseException, *,
                      wait: Callable[[float], Awaitable[None]] | None = None,
                      sleep: bool = True) -> float:
        """One failed iteration of a background loop: log it with context, back off with
        jitter (or, without `sleep`, return the pause), and go on. Too many permanent
        failures in a row stop the runner."""
        error = classify(exc) if isinstance(exc, DRIVER_ERRORS) else exc
        health = self.state.loops.setdefault(loop, LoopHealth())
        pause = health.failed(error)
        self.state.counters[f"{loop}_errors"] += 1
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
        self.report()
        if not sleep:
            return pause
        if wait is not None:
            await wait(pause)
        else:
            await asyncio.sleep(pause)
        return pause

    def start(self, body: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A supervised background loop: if it ever ends, other than by being cancelled at
        shutdown, the runner stops."""
        task = asyncio.create_task(body, name=f"jobq-{name}")
        state = self.state

        def ended(done: asyncio.Task[None]) -> None:
            stopping = state.leaving or state.stop.is_set()
            if done.cancelled() or (stopping and state.fatal is None
                                    and done.exception() is None):
                return
            error = done.exception()
            if state.fatal is None:
                state.fatal = error if isinstance(error, RunnerFailedError) else \
                    RunnerFailedError(f"the {name} loop ended: {error!r}")
            state.trip(immediately=True)

        task.add_done_callback(ended)
        return task
