"""The console's trace tail delivers an event that commits after higher ids, once."""

from __future__ import annotations

import psycopg

from jobq_core import JobQueue
from jobq_tui.app import JobqApp
from jobq_tui.screens.trace import TraceScreen

from .tui_helpers import until


async def test_trace_tail_shows_a_late_commit_once(dsn: str) -> None:
    with JobQueue(dsn) as queue, psycopg.connect(dsn) as open_tx:
        late = queue.enqueue("late", request_id="req-late", conn=open_tx)  # the lower id
        early = queue.enqueue("early", request_id="req-late")
        app = JobqApp(dsn, interval=0.1)
        async with app.run_test(size=(110, 32)) as pilot:
            app.run_command("trace req-late")
            screen = await until(pilot, lambda: isinstance(app.screen, TraceScreen)
                                 and app.screen)
            await until(pilot, lambda: [e.job_id for e in screen.events] == [early])
            open_tx.commit()
            await until(pilot, lambda: len(screen.events) == 2)
            await pilot.pause(0.5)  # several more refreshes: nothing is repeated
            assert [e.job_id for e in screen.events] == [early, late]
            assert "2 events" in str(screen.query_one("#trace-head").render())
