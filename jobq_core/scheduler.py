"""A task runner's scheduler: the side loop that fires its periodic jobs' slots.

Every runner that serves a schedule ticks it; there is no leader. A tick takes the
schedule's row, enqueues the jobs of the slots due (each keyed by its slot), and records the
newest slot handled, in one transaction (`_ops.fire_schedule`), so however many runners tick
at once, each slot is fired once. Between ticks the loop sleeps until the next slot of any of
its schedules, by the database's clock, which every runner shares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta

from .errors import NotFoundError
from .runner_state import RunnerState
from .schedules import Schedule
from .supervisor import Supervisor

log = logging.getLogger("jobq.runner")

#: The longest pause between two ticks: a schedule registered again elsewhere with an
#: earlier slot, or a tick that failed, is looked at again within this many seconds.
TICK_MAX = 30.0
#: The shortest pause, so that a runner whose clock runs ahead never spins.
TICK_MIN = 0.01


class Scheduler:
    def __init__(self, state: RunnerState, supervisor: Supervisor,
                 schedules: Sequence[Schedule], worker_id: str) -> None:
        self.state = state
        self.supervisor = supervisor
        self.schedules = list(schedules)
        self.worker_id = worker_id

    async def run(self) -> None:
        await self._register()
        supervisor, queue = self.supervisor, self.state.loops_queue
        while True:
            pause = TICK_MAX
            try:
                for schedule in self.schedules:
                    tick = await supervisor.call("schedules", queue.fire_schedule(schedule))
                    if tick.fired:
                        log.info("schedule %s: enqueued %s for %s", schedule.name,
                                 ", ".join(map(str, tick.fired)),
                                 ", ".join(s.isoformat() for s in tick.slots))
                    pause = min(pause, (tick.next_slot - tick.now) / timedelta(seconds=1))
                supervisor.ok("schedules")
            except NotFoundError:
                # Its row went (the table was emptied by hand): registered again, it starts
                # from now, as a new schedule does.
                log.warning("a schedule's row is gone; registering the schedules again")
                await self._register()
                pause = 0.0
            except Exception as exc:
                pause = min(pause, await supervisor.recover("schedules", exc, sleep=False))
            await asyncio.sleep(max(pause, TICK_MIN))

    async def _register(self) -> None:
        while True:
            try:
                await self.supervisor.call("schedules", self.state.loops_queue.register_schedules(
                    self.schedules, by=self.worker_id))
                self.supervisor.ok("schedules")
                return
            except Exception as exc:
                await self.supervisor.recover("schedules", exc)
