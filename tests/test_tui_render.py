"""What jobq-tui draws: SVG snapshots of the main screens, and hostile text shown literally.

Snapshots need the same picture on every run, so the data is seeded with timestamps fixed
relative to a frozen clock, and the only value the database derives from its own clock (the
oldest ready job's age) is pinned by `FrozenAgeAdmin`. Everything else comes from the real
database. Update them with ``pytest tests/test_tui_render.py --snapshot-update`` and look
at the result (``tests/__snapshots__``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, RichLog

from jobq_core import JobQueue
from jobq_core.admin import AsyncAdmin, TypeStats
from jobq_tui.app import JobqApp
from jobq_tui.screens.detail import DetailScreen
from jobq_tui.screens.dialogs import ConfirmScreen
from jobq_tui.screens.jobs import JobsScreen
from jobq_tui.screens.trace import TraceScreen

from .tui_helpers import text_of, until

FROZEN = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


class FrozenAgeAdmin(AsyncAdmin):
    """The real admin; only the age the server computes from its own clock is pinned."""

    def __init__(self, inner: AsyncAdmin) -> None:
        super().__init__(inner.queue)

    async def stats(self) -> list[TypeStats]:
        return [replace(s, oldest_ready_age=timedelta(minutes=7, seconds=12)
                        if s.oldest_ready_age is not None else None)
                for s in await super().stats()]


def seed(dsn: str) -> None:
    """A small, fixed queue: ready, scheduled, claimed (one lease lapsed) and failed jobs."""
    with JobQueue(dsn) as q:
        for n in range(4):
            q.enqueue("send-email", {"to": f"user{n}@example.com", "template": "welcome"},
                      request_id=f"req-{100 + n}")
        q.enqueue("nightly-report", {"day": "2026-03-13"}, run_at=timedelta(days=30),
                  request_id="req-200")
        for n in range(2):
            q.enqueue("resize-image", {"path": f"/img/{n}.png"}, request_id="req-101")
        for n in range(3):
            q.enqueue("charge-card", {"invoice": 9000 + n}, request_id="req-102")
        for _ in range(2):
            job = q.claim(types=["resize-image"], worker="worker-a:4242")
            assert job is not None
        for n in range(3):
            job = q.claim(types=["charge-card"], worker="worker-b:77")
            assert job is not None
            q.fail(job, reason=f"PaymentDeclined: card ending 42{n} was declined\n"
                   "Traceback (most recent call last):\n  File \"billing.py\", line 12, in "
                   "charge\nPaymentDeclined: card ending 42{n} was declined", retry=False)
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("""
            UPDATE svti_jobs SET
              created_at = %(t)s - interval '10 minutes' + id * interval '7 seconds',
              run_at = CASE WHEN run_at > now() THEN %(t)s + interval '30 days'
                            ELSE %(t)s - interval '9 minutes' + id * interval '7 seconds' END,
              claimed_at = CASE WHEN state = 'claimed' THEN %(t)s - interval '20 seconds' END,
              lease_until = CASE WHEN state <> 'claimed' THEN NULL
                                 WHEN id = 6 THEN %(t)s + interval '25 seconds'
                                 ELSE %(t)s - interval '3 seconds' END,
              failed_at = CASE WHEN state = 'failed'
                               THEN %(t)s - interval '2 minutes' + id * interval '1 second' END
            """, {"t": FROZEN})
        db.execute("UPDATE svti_jobs_events SET occurred_at = %(t)s - interval '10 minutes' "
                   "+ id * interval '1.5 seconds'", {"t": FROZEN})


def frozen_app(dsn: str, **kwargs: Any) -> JobqApp:
    app = JobqApp(dsn, interval=60, clock=lambda: FROZEN, perf=lambda: 0.0,
                  label="snapshot-db", **kwargs)
    app.admin = FrozenAgeAdmin(app.admin)
    return app


async def settled(pilot: Pilot[Any], check: Callable[[], Any]) -> Any:
    """Wait for `check`, then let the app draw: snapshots compare what is on screen."""
    return await until(pilot, check, timeout=15.0, settle=0.2)


def refreshed(app: JobqApp, screen_type: type) -> Callable[[], bool]:
    start = app.refreshes

    def check() -> bool:
        return isinstance(app.screen, screen_type) and app.refreshes > start
    return check


async def overview(pilot: Pilot[Any]) -> None:
    await settled(pilot, lambda: pilot.app.refreshes)  # type: ignore[attr-defined]


def goto(command: str, screen_type: type) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        app: JobqApp = pilot.app  # type: ignore[assignment]
        await settled(pilot, lambda: app.refreshes)
        check = refreshed(app, screen_type)
        app.run_command(command)
        await settled(pilot, check)
    return run_before


def test_snapshot_overview(dsn: str, snap_compare: Any) -> None:
    seed(dsn)
    assert snap_compare(frozen_app(dsn), terminal_size=(100, 24), run_before=overview)


def test_snapshot_overview_at_80x24(dsn: str, snap_compare: Any) -> None:
    seed(dsn)
    assert snap_compare(frozen_app(dsn), terminal_size=(80, 24), run_before=overview)


def test_snapshot_failed_jobs(dsn: str, snap_compare: Any) -> None:
    seed(dsn)
    assert snap_compare(frozen_app(dsn), terminal_size=(100, 24),
                        run_before=goto("jobs state:failed", JobsScreen))


def test_snapshot_failed_jobs_at_80x24(dsn: str, snap_compare: Any) -> None:
    seed(dsn)
    assert snap_compare(frozen_app(dsn), terminal_size=(80, 24),
                        run_before=goto("jobs state:failed", JobsScreen))


def test_snapshot_claimed_jobs_with_lease_bars(dsn: str, snap_compare: Any) -> None:
    seed(dsn)
    assert snap_compare(frozen_app(dsn), terminal_size=(100, 24),
                        run_before=goto("jobs state:claimed", JobsScreen))


def test_snapshot_job_detail(dsn: str, snap_compare: Any) -> None:
    seed(dsn)
    assert snap_compare(frozen_app(dsn), terminal_size=(100, 32),
                        run_before=goto("job 6", DetailScreen))


def test_snapshot_trace_tail(dsn: str, snap_compare: Any) -> None:
    seed(dsn)
    assert snap_compare(frozen_app(dsn), terminal_size=(100, 24),
                        run_before=goto("trace req-102", TraceScreen))


def test_snapshot_bulk_retry_confirmation(dsn: str, snap_compare: Any) -> None:
    seed(dsn)

    async def run_before(pilot: Pilot[Any]) -> None:
        await goto("jobs state:failed", JobsScreen)(pilot)
        await pilot.press("A")
        await settled(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
    assert snap_compare(frozen_app(dsn), terminal_size=(100, 24), run_before=run_before)


def test_snapshot_read_only(dsn: str, snap_compare: Any) -> None:
    seed(dsn)
    assert snap_compare(frozen_app(dsn, read_only=True), terminal_size=(100, 24),
                        run_before=goto("jobs state:failed", JobsScreen))


# -- hostile input ----------------------------------------------------------------------------

MARKUP = "[bold red]pwned[/bold red] [link=https://evil.example]click[/link]"
ANSI = "\x1b[31mred\x1b[0m\x1b]0;owned title\x07\x1b[2J"
LONG = "x" * 5000


async def test_hostile_text_is_shown_literally_and_the_layout_holds(dsn: str) -> None:
    long_type = "t" + "y" * 127
    request_id = MARKUP + ANSI
    with JobQueue(dsn) as q:
        job_id = q.enqueue(long_type, {"markup": MARKUP, "ansi": ANSI, "long": LONG,
                                       "bidi": "abc\u202edef"}, request_id=request_id)
        job = q.claim(worker=MARKUP + ANSI)
        assert job is not None
        q.fail(job, reason=f"{ANSI} {MARKUP} {LONG}\nline two {MARKUP}", retry=False)
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(pilot, lambda: app.refreshes)
        app.run_command("jobs state:failed")
        await settled(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.rows)
        table: DataTable[Text] = app.screen.query_one("#jobs", DataTable)
        cells = [c.plain for c in table.get_row(str(job_id))]
        shown = " ".join(cells)
        assert "[bold red]pwned" in shown
        assert "\x1b" not in shown and "\\x1b[31m" in shown
        assert all(len(c) <= 60 for c in cells)  # long values are cut, not wrapping rows
        assert table.size.width <= 100
        svg = app.export_screenshot()
        assert "\x1b" not in svg and "\x07" not in svg

        app.run_command(f"job {job_id}")
        await settled(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.detail)
        payload = text_of(app, "#detail-payload", width=300)
        assert "[bold red]pwned[/bold red]" in payload
        assert "\\u001b[31m" in payload and "\x1b" not in payload
        assert "\\u202e" in payload  # an invisible direction override is made visible
        timeline = text_of(app, "#detail-timeline", width=300)
        assert "line two [bold red]pwned" in timeline and "\x1b" not in timeline
        summary = text_of(app, "#detail-summary", width=300)
        assert "[link=https://evil.example]click[/link]" in summary

        app.run_command(f"trace {request_id}")
        await settled(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen.events)
        log = app.screen.query_one(RichLog)
        await settled(pilot, lambda: log.lines)
        lines = [strip.text for strip in log.lines]
        assert any("[bold red]pwned" in line for line in lines)
        assert not any("\x1b" in line for line in lines)
        head = text_of(app, "#trace-head", width=300)
        assert "[bold red]pwned" in head and "\x1b" not in head
        await asyncio.sleep(0)
        assert app.is_running
