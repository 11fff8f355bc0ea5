"""A task runner's scheduler: the side loop that fires its periodic jobs' slots.

Every runner that serves a schedule ticks it; there is no leader. A tick takes the
schedule's row, enqueues the jobs of the slots due (each keyed by its slot), and records the
newest slot handled, in one transaction (`_ops.fire_schedule`), so however many runners tick
at once, each slot is fired once. Between ticks the loop sleeps until the next slot of any of
its schedules, by the database's clock, which every runner shares, and then ticks only the
schedules that are due.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
        #: The other definitions warned about, by schedule: each is said once.
        self._conflicts: dict[str, str] = {}

    async def run(self) -> None:
        await self._register()
        # When each schedule is next due (monotonic s): a wake ticks only those, so a daily
        # schedule beside a one-second one costs one transaction a day, not one a second.
        due = dict.fromkeys((s.name for s in self.schedules), 0.0)
        while True:
            for schedule in self.schedules:
                if due[schedule.name] <= time.monotonic():
                    due[schedule.name] = time.monotonic() + await self._tick(schedule)
            await asyncio.sleep(max(min(due.values()) - time.monotonic(), TICK_MIN))

    async def _tick(self, schedule: Schedule) -> float:
        """Tick one schedule; returns the pause until its next slot. Each schedule fails on
        its own: one whose tick fails does not hold up the others'."""
        supervisor = self.supervisor
        try:
            tick = await supervisor.call("schedules",
                                         self.state.loops_queue.fire_schedule(schedule))
        except NotFoundError:
            # Its row went (the table was emptied by hand): registered again, it starts from
            # now, as a new schedule does.
            log.warning("schedule %s: its row is gone; registering the schedules again",
                        schedule.name)
            await self._register()
            return 0.0
        except Exception as exc:
            return min(TICK_MAX, await supervisor.recover("schedules", exc, sleep=False))
        supervisor.ok("schedules")
        if tick.conflict is not None and self._conflicts.get(schedule.name) != tick.conflict:
            self._conflicts[schedule.name] = tick.conflict
            log.warning("schedule %s: another runner registered it as %r, this one as %r; "
                        "the slots of both are fired until every runner has one definition",
                        schedule.name, tick.conflict, schedule.spec)
        if tick.fired:
            log.info("schedule %s: enqueued %d job(s), for %s%s", schedule.name,
                     len(tick.fired), ", ".join(s.isoformat() for s in tick.slots[-3:]),
                     f" and {len(tick.slots) - 3} earlier slots" if len(tick.slots) > 3
                     else "")
        if tick.next_slot is None:
            return TICK_MAX
        return min(TICK_MAX, (tick.next_slot - tick.now) / timedelta(seconds=1))

    async def _register(self) -> None:
        while True:
            try:
                await self.supervisor.call("schedules", self.state.loops_queue.register_schedules(
                    self.schedules, by=self.worker_id))
                self.supervisor.ok("schedules")
                return
            except Exception as exc:
                await self.supervisor.recover("schedules", exc)
