"""A task runner's side loops, beside its claim loop: the listener (NOTIFY wakes claims),
the heartbeat (held leases renewed in one statement), and the registry beat (this runner
listed for operators, and their orders brought back: cancels, a drain, paused types)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

import psycopg
from psycopg import sql

from ._ops import Orders, WorkerInfo
from .attempts import Attempt
from .errors import DRIVER_ERRORS, classify
from .loop_health import LoopHealth
from .queue import APPLICATION_NAME
from .runner_state import RunnerState
from .supervisor import Supervisor

log = logging.getLogger("jobq.runner")

#: Seconds between a runner's folds of the per-minute rates from history, and the longest
#: a fold may take (it never holds up anything that matters: the next minute tries again).
FOLD_EVERY, FOLD_TIMEOUT = 60, 10.0
#: Seconds a stopping runner waits for its last beat to end and its registry entry to go.
LEAVE_GRACE = 5.0


async def wait_for(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


class SideLoops:
    def __init__(self, state: RunnerState, supervisor: Supervisor, worker_id: str) -> None:
        self.state = state
        self.supervisor = supervisor
        self.worker_id = worker_id
        #: When this runner next folds the per-minute rates (monotonic seconds).
        self._next_fold = 0.0

    # -- the listener ---------------------------------------------------------------------------

    async def listen(self) -> None:
        """LISTEN for new work; reconnects with backoff. Each wakeup triggers a claim, and
        ends a claim loop's backoff; an operator's cancel or drain triggers a beat instead,
        which tells whether it concerns this runner."""
        state = self.state
        queue = state.queue
        assert queue.conninfo is not None
        health = state.loops.setdefault("listener", LoopHealth())
        while True:
            try:
                # the resolved table names the channel
                await self.supervisor.call("listener", state.loops_queue.prepare())
                channel = sql.SQL("LISTEN {}").format(sql.Identifier(queue.names.channel))
                conn = await psycopg.AsyncConnection.connect(
                    queue.conninfo, autocommit=True,
                    application_name=f"{APPLICATION_NAME}-listener")
                async with conn:
                    await conn.execute(channel)
                    self.supervisor.ok("listener")
                    # Catch up on what came while not listening: work enqueued, and an
                    # operator's cancel or drain, whose NOTIFY was sent to nobody.
                    state.wake.set()
                    state.beat_now.set()
                    async for notice in conn.notifies():
                        if notice.payload in ("cancel", "drain"):
                            state.beat_now.set()
                            continue
                        claim = state.loops.get("claim")
                        if claim is not None:
                            claim.reset_backoff()
                        state.wake.set()
            except Exception as exc:
                # Never fatal: the claim loop polls meanwhile.
                error = classify(exc) if isinstance(exc, DRIVER_ERRORS) else exc
                pause = health.failed(error)
                log.warning("listener lost its connection (%s); polling meanwhile, "
                            "reconnecting in %.1fs", error, pause)
                await asyncio.sleep(pause)

    # -- the heartbeat --------------------------------------------------------------------------

    async def heartbeats(self) -> None:
        """One statement per beat extends every held lease; nothing else is awaited here, so
        nothing slower can make a lease run out. A lease that did not hold, or whose local
        deadline passed while the database was unreachable, ends its attempt: another worker
        may own the job by then, or an operator cancelled it."""
        pause = self.state.heartbeat_interval
        while True:
            await asyncio.sleep(pause)
            self.supervisor.report()
            pause = self.state.heartbeat_interval
            held = list(self.state.running.values())
            if not held:
                continue
            lost: list[Attempt] = []
            pause = min(pause, await self._renew(held, lost))
            await self.note_cancels(lost)
            for attempt in lost:
                if attempt.operator is None:
                    self._lose(attempt, "lease lost (reclaimed or removed)")

    async def _renew(self, held: list[Attempt], lost: list[Attempt]) -> float:
        """Renew the held leases; adds to `lost` those that did not hold. Returns the pause
        before the next beat."""
        state = self.state
        started = time.monotonic()
        pause = state.heartbeat_interval
        try:
            # A beat that hangs is given up in time to judge the leases it was renewing.
            kept: set[int] | None = await self.supervisor.call(
                "heartbeat", state.loops_queue.heartbeat([a.job for a in held],
                                                         [a.lease_ms for a in held]),
                timeout=max(1.0, 2 * state.heartbeat_interval))
            self.supervisor.ok("heartbeat")
        except Exception as exc:
            # Judge the leases now, then try again soon: they run out while we wait.
            pause = await self.supervisor.recover("heartbeat", exc, wait=None, sleep=False)
            kept = None
        for attempt in held:
            if state.running.get(attempt.job.id) is not attempt:
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

    async def stop_at_deadlines(self) -> None:
        """Stop each handler at its lease's deadline, which comes before the database lets
        another claim take its job (it is measured from before the claim or beat was sent):
        a beat that hangs, or a loop held up, never lets a handler run on with its job
        claimed elsewhere, past a limit. Wakes at least every heartbeat interval, within the
        shortest lease of any job claimed meanwhile."""
        state = self.state
        while True:
            now = time.monotonic()
            watched = [a for a in state.running.values()
                       if a.cancel_reason is None and not a.acking]
            for attempt in watched:
                if attempt.deadline <= now:
                    self._lose(attempt, "lease expired while the database was unreachable")
            await asyncio.sleep(min([state.heartbeat_interval] + [
                a.deadline - now for a in watched if a.deadline > now]))

    async def note_cancels(self, attempts: list[Attempt]) -> None:
        """Of these attempts whose job was refused to them (a lease that did not hold, an
        ack or a failure the fence turned down), mark those an operator cancelled: a cancel,
        not a lost lease, even before a registry beat brought the news."""
        if not attempts:
            return
        try:
            cancelled: dict[int, str] = await self.supervisor.call(
                "heartbeat", self.state.loops_queue.cancelled([a.job.id for a in attempts]))
        except Exception as exc:
            log.warning("could not tell cancelled jobs from lost leases: %s", exc)
            return
        for attempt in attempts:
            if attempt.job.id in cancelled:
                self._cancelled_by_operator(attempt, cancelled[attempt.job.id])

    def _lose(self, attempt: Attempt, reason: str) -> None:
        attempt.cancel(reason)
        self.state.retire(attempt)
        self.state.counters["lease_lost"] += 1
        log.warning("job %s (%s, request %s): %s", attempt.job.id, attempt.job.type,
                    attempt.job.request_id, reason)
        self.state.emit("lease_lost", attempt.job, error=reason)

    def _cancelled_by_operator(self, attempt: Attempt, reason: str) -> None:
        if attempt.operator is not None:
            return
        attempt.operator = reason
        attempt.cancel(reason)
        self.state.retire(attempt)
        log.warning("job %s (%s, request %s): %s; stopping its handler", attempt.job.id,
                    attempt.job.type, attempt.job.request_id, reason)

    # -- the registry ---------------------------------------------------------------------------

    async def registry(self) -> None:
        """This runner's entry in the worker registry, refreshed every heartbeat interval from
        the start, holding jobs or not; each beat brings back operators' orders: cancelled
        jobs, a drain, paused types. A NOTIFY 'cancel' or 'drain' makes the next beat come
        now. Once a minute it folds the per-minute rates. On leaving, the entry goes with it;
        only this loop writes it, so no beat in flight can bring the entry back afterwards."""
        state = self.state
        pause = 0.0
        while not state.leaving:
            await wait_for(state.beat_now, pause)
            state.beat_now.clear()
            if state.leaving:
                break
            pause = state.heartbeat_interval
            try:
                orders: Orders = await self.supervisor.call(
                    "registry", state.loops_queue.worker_beat(self._me(), list(state.running)),
                    timeout=max(1.0, 2 * state.heartbeat_interval))
                self.supervisor.ok("registry")
                self._obey(orders)
            except Exception as exc:
                pause = min(pause, await self.supervisor.recover("registry", exc, sleep=False))
            state.registered.set()
            if time.monotonic() >= self._next_fold:
                self._next_fold = time.monotonic() + FOLD_EVERY
                await self._fold_rates()
        try:
            await self.supervisor.call(
                "registry", state.loops_queue.worker_gone(self.worker_id), timeout=5.0)
        except Exception as exc:
            log.warning("could not leave the worker registry (the entry ages out): %s", exc)

    async def leave(self, beats: asyncio.Task[None]) -> None:
        """Stop beating and leave the registry (the registry loop does, as its last act)."""
        self.state.leaving = True
        self.state.beat_now.set()
        await asyncio.wait({beats}, timeout=LEAVE_GRACE)

    async def _fold_rates(self) -> None:
        """Fold the per-minute rates, so that they are counted while runners run and not only
        while someone watches `jobq status` or the console; a fold also keeps the history's
        daily partitions ahead. One folder at a time across the fleet (the others skip), so
        a fleet costs the same as one runner."""
        try:
            await self.supervisor.call("registry", self.state.loops_queue.fold_rates(),
                                       timeout=FOLD_TIMEOUT)
        except Exception as exc:  # never a reason to stop serving: history has a DEFAULT partition
            log.warning("could not fold the per-minute rates (nor keep the history's partitions "
                        "ahead), trying again in %d s: %s", FOLD_EVERY, exc)

    def _me(self) -> WorkerInfo:
        from . import __version__  # the package imports this module first

        state = self.state
        return WorkerInfo(self.worker_id, state.worker_name, socket.gethostname(), os.getpid(),
                          sorted(state.tasks), state.concurrency, state.heartbeat_interval,
                          __version__)

    def _obey(self, orders: Orders) -> None:
        """Carry out what a registry beat brought back."""
        state = self.state
        for job_id, reason in orders.cancelled.items():
            attempt = state.running.get(job_id)
            if attempt is not None:
                self._cancelled_by_operator(attempt, reason)
        if orders.paused != state.paused:
            if orders.paused - state.paused:
                log.warning("paused by an operator, not claimed until resumed: %s",
                            ", ".join(sorted(orders.paused - state.paused)))
            if state.paused - orders.paused:
                log.info("resumed: %s", ", ".join(sorted(state.paused - orders.paused)))
            state.paused = orders.paused
        if orders.drain_by is not None and state.draining is None:
            state.draining = orders.drain_by
            log.warning("draining at the request of %s: no more claims; exiting once the %d "
                        "running jobs finish", orders.drain_by, len(state.running))
            state.stop.set()
            state.wake_up()
