"""The console's job lists and detail (issue 11): cancel, actions that say why they cannot
apply, sorting on the server with totals, leases judged by their own length, one rule for
confirmations, times with their zone, and what a completed job ran. Pilot against a real
database, each checked in the database afterwards."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from jobq_core import InvalidInputError, JobQueue, LeaseLostError, NewJob
from jobq_core.admin import Admin
from jobq_tui.app import JobqApp
from jobq_tui.screens.detail import DetailScreen
from jobq_tui.screens.dialogs import ConfirmScreen, PromptScreen, ReasonConfirmScreen
from jobq_tui.screens.jobs import FLEX_MIN, JobsScreen

from .helpers import backdate, events, row
from .tui_helpers import text_of, until

SIZE = (110, 32)


@pytest.fixture
def queue(dsn: str) -> Any:
    with JobQueue(dsn) as q:
        yield q


def every_page(admin: Admin, flt: str, sort: str, limit: int) -> list[Any]:
    rows: list[Any] = []
    after = None
    while True:
        page = admin.list_jobs(flt, after=after, limit=limit, sort=sort)
        rows += page.rows
        if page.next_cursor is None:
            return rows
        after = page.next_cursor


# -- the listing, in jobq_core.admin -------------------------------------------------------------

@pytest.mark.parametrize("sort", ["attempts", "-attempts", "failed_at", "-failed_at",
                                  "request_id", "-request_id", "type", "-created_at"])
def test_sorted_listing_pages_through_every_row_once_in_order(
    queue: JobQueue, db: psycopg.Connection[Any], sort: str
) -> None:
    """A keyset on (column, id) pages across equal values and NULLs without a duplicate or
    a gap, in the same order one unpaged query gives."""
    ids = queue.enqueue_many([NewJob("ab"[n % 2], {"n": n}, request_id=None if n % 3 else
                                     f"req-{n % 7}") for n in range(57)])
    db.execute("UPDATE svti_jobs SET attempts = id % 4, "
               "failed_at = CASE WHEN id % 5 = 0 THEN NULL "
               "ELSE now() - (id % 6) * interval '1 minute' END")
    admin = Admin(queue)
    paged = every_page(admin, "", sort, limit=4)
    assert sorted(r.id for r in paged) == sorted(ids)  # each once
    whole = admin.list_jobs("", limit=1000, sort=sort).rows
    assert [r.id for r in paged] == [r.id for r in whole]
    column = sort.removeprefix("-")
    values = [getattr(r, column) for r in whole]
    present = [v for v in values if v is not None]
    assert present == sorted(present, reverse=sort.startswith("-"))
    if len(present) < len(values):  # NULLs last ascending, first descending
        nulls = values[:len(values) - len(present)] if sort.startswith("-") else \
            values[len(present):]
        assert nulls == [None] * (len(values) - len(present))


def test_sorted_listing_of_completed_jobs_and_its_refusals(queue: JobQueue) -> None:
    for n in range(5):
        queue.enqueue("t", {"n": n})
    for _ in range(5):
        job = queue.claim()
        assert job is not None
        queue.complete(job)
    admin = Admin(queue)
    done = every_page(admin, "state:completed", "-id", limit=2)
    assert [r.id for r in done] == sorted((r.id for r in done), reverse=True)
    assert len(done) == 5 and all(r.payload is not None for r in done)
    with pytest.raises(InvalidInputError, match="cannot sort completed jobs by 'run_at'"):
        admin.list_jobs("state:completed", sort="run_at")
    with pytest.raises(InvalidInputError, match="cannot sort live jobs by 'payload'"):
        admin.list_jobs("", sort="payload")
    first = admin.list_jobs("state:completed", limit=1, sort="id")
    with pytest.raises(InvalidInputError, match="not one of a listing sorted by -id"):
        admin.list_jobs("state:completed", after=first.next_cursor, sort="-id")


def test_listing_total_is_exact_up_to_the_cap_then_an_estimate(
    queue: JobQueue, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.enqueue_many([NewJob("t") for _ in range(30)])
    other = queue.enqueue("u", {})
    backdate(db, other, created_at="2 hours")
    admin = Admin(queue)
    page = admin.list_jobs("state:pending", limit=5, total=True)
    assert len(page.rows) == 5 and str(page.total) == "31"
    assert str(admin.list_jobs("type:u", total=True).total) == "1"
    assert str(admin.list_jobs("age:>1h", total=True).total) == "1"
    assert admin.list_jobs("", limit=5).total is None  # only when asked for
    monkeypatch.setattr("jobq_core.admin.COUNT_CAP", 10)
    db.execute("ANALYZE svti_jobs")
    estimated = admin.list_jobs("state:pending", limit=5, total=True).total
    assert estimated is not None and not estimated.exact
    assert str(estimated).startswith("~") and estimated.value >= 10


def test_a_job_listed_by_id_and_its_lease_length(queue: JobQueue) -> None:
    job_id = queue.enqueue("t", {"n": 1})
    queue.enqueue("t", {"n": 2})
    job = queue.claim(lease_ms=45_000)
    assert job is not None and job.id == job_id
    admin = Admin(queue)
    [listed] = admin.list_jobs(f"id:{job_id}").rows
    assert listed.lease_ms == 45_000
    assert admin.show(job_id).job.lease_ms == 45_000  # type: ignore[union-attr]
    queue.complete(job)
    [done] = admin.list_jobs(f"state:completed id:{job_id}").rows
    assert done.payload == {"n": 1} and done.lease_ms is None


# -- the console ------------------------------------------------------------------------------

def table_ids(app: JobqApp) -> list[int]:
    table: DataTable[Text] = app.screen.query_one("#jobs", DataTable)
    return [int(r.key.value or 0) for r in table.ordered_rows]


def cell(app: JobqApp, job_id: int, column: str) -> str:
    table: DataTable[Text] = app.screen.query_one("#jobs", DataTable)
    return table.get_cell(str(job_id), column).plain


def notifications(app: JobqApp) -> list[str]:
    return [n.message for n in app._notifications]


def state(db: psycopg.Connection[Any], job_id: int) -> str:
    found = row(db, job_id)
    assert found is not None
    return str(found["state"])


async def open_jobs(pilot: Pilot[Any], app: JobqApp, flt: str, *ids: int) -> JobsScreen:
    """The jobs screen with `flt`, once it shows exactly `ids` (when given)."""
    app.run_command(f"jobs {flt}")
    screen: JobsScreen = await until(pilot, lambda: isinstance(app.screen, JobsScreen)
                                     and app.screen)
    await until(pilot, lambda: app.refreshes and screen._columns_of is not None)
    if ids:
        await until(pilot, lambda: sorted(table_ids(app)) == sorted(ids))
    return screen


def failed_job(queue: JobQueue, job_type: str = "t") -> int:
    job_id = queue.enqueue(job_type, {"n": 1})
    job = queue.claim(types=[job_type])
    assert job is not None and job.id == job_id
    queue.fail(job, reason="boom", retry=False)
    return job_id


async def test_c_cancels_a_pending_job_after_a_confirmation_that_names_it(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    job_id = queue.enqueue("email", {"to": "a@example.com"})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:pending", job_id)
        await pilot.press("c")
        dialog = await until(pilot, lambda: isinstance(app.screen, ReasonConfirmScreen)
                             and app.screen)
        assert f"Cancel job {job_id} (email)?" in text_of(app, "#dialog-title")
        assert dialog.focused is not None and dialog.focused.id == "back"
        await pilot.press("enter")  # the default is Back: nothing happens
        await until(pilot, lambda: isinstance(app.screen, JobsScreen))
        assert state(db, job_id) == "pending"

        await pilot.press("c")
        dialog = await until(pilot, lambda: isinstance(app.screen, ReasonConfirmScreen)
                             and app.screen)
        dialog.query_one(Input).value = "wrong address"
        await pilot.press("y")
        await until(pilot, lambda: state(db, job_id) == "cancelled")
        found = row(db, job_id)
        assert found is not None and found["last_error"].endswith(": wrong address")
        assert events(db, job_id)[-1] == "cancelled"
        reason = db.execute("SELECT reason FROM svti_jobs_events WHERE job_id = %s "
                            "AND event = 'cancelled'", (job_id,)).fetchone()
        assert reason is not None and "cancelled by" in reason[0] and "wrong address" in reason[0]
        await until(pilot, lambda: table_ids(app) == [])  # it left the pending tab
        await pilot.press("6")
        await until(pilot, lambda: table_ids(app) == [job_id])  # and is in the cancelled one
        await until(pilot, lambda: "wrong address" in cell(app, job_id, "error"))


async def test_cancel_of_a_claimed_job_takes_the_lease_away_from_its_holder(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    queue.enqueue("t", {})
    job = queue.claim(lease_ms=60_000)
    assert job is not None
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        app.run_command(f"job {job.id}")
        screen = await until(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        await until(pilot, lambda: screen.detail is not None)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ReasonConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: state(db, job.id) == "cancelled")
    found = row(db, job.id)
    assert found is not None and found["lease_token"] is None
    with pytest.raises(LeaseLostError):
        queue.complete(job)  # the old holder's late result is refused
    assert state(db, job.id) == "cancelled"
    assert events(db, job.id)[-1] == "cancelled"


async def test_retry_of_a_cancelled_job_gives_it_a_fresh_start(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    queue.enqueue("t", {})
    job = queue.claim()
    assert job is not None
    Admin(queue).cancel([job.id], reason="later")
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:cancelled", job.id)
        await pilot.press("R")  # one highlighted job, not destructive: at once
        await until(pilot, lambda: state(db, job.id) == "pending")
        assert not isinstance(app.screen, ConfirmScreen)
    found = row(db, job.id)
    assert found is not None and found["attempts"] == 0


#: Per state: the actions the footer offers on it, and those it hides.
OFFERED = {
    "pending": ({"cancel", "delete"}, {"retry", "extend", "extend_by"}),
    "claimed": ({"cancel", "extend", "extend_by"}, {"retry", "delete"}),
    "failed": ({"retry", "delete"}, {"cancel", "extend", "extend_by"}),
    "cancelled": ({"retry", "delete"}, {"cancel", "extend", "extend_by"}),
}


async def test_actions_that_cannot_apply_are_hidden_and_their_keys_say_why(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    jobs = {"pending": queue.enqueue("p", {}), "failed": failed_job(queue, "f")}
    queue.enqueue("c", {})
    held = queue.claim(types=["c"])
    assert held is not None
    jobs["claimed"] = held.id
    jobs["cancelled"] = queue.enqueue("x", {})
    Admin(queue).cancel([jobs["cancelled"]])
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        for job_state, job_id in jobs.items():
            screen = await open_jobs(pilot, app, f"state:{job_state}", job_id)
            offered, hidden = OFFERED[job_state]
            for action in offered:
                assert screen.check_action(action, ()) is True, (job_state, action)
            for action in hidden:
                assert screen.check_action(action, ()) is False, (job_state, action)
            keys = {b.binding.action for b in screen.active_bindings.values()}
            assert offered <= keys and not hidden & keys, job_state
            await pilot.press("escape")

        screen = await open_jobs(pilot, app, "state:pending", jobs["pending"])
        await pilot.press("R")
        await until(pilot, lambda: any(f"job {jobs['pending']} is pending; only failed or "
                                       "cancelled jobs can be retried" in m
                                       for m in notifications(app)))
        app.run_screen_action("retry")  # the command palette's way in answers the same
        await until(pilot, lambda: any(m.startswith("Retry the selected or marked jobs: job ")
                                       for m in notifications(app)))
        await pilot.press("escape")
        await open_jobs(pilot, app, "state:claimed", held.id)
        await pilot.press("D")
        await until(pilot, lambda: any("cancel it first" in m for m in notifications(app)))
        await pilot.press("escape")
        await open_jobs(pilot, app, "state:failed", jobs["failed"])
        await pilot.press("c", "e")
        await until(pilot, lambda: any(f"job {jobs['failed']} is failed; only pending or "
                                       "claimed jobs can be cancelled" in m
                                       for m in notifications(app)))
        await pilot.pause(0.3)
        assert isinstance(app.screen, JobsScreen)  # no dialog opened
    assert [state(db, i) for i in jobs.values()] == ["pending", "failed", "claimed",
                                                     "cancelled"]
    assert events(db, jobs["pending"]) == ["enqueued"]
    assert events(db, jobs["failed"])[-1] == "failed"


async def test_marked_jobs_are_offered_what_applies_to_one_of_them_and_confirm_the_count(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    """A single marked job confirms too: marks mean "these", and the rule is by count."""
    first, second = failed_job(queue), failed_job(queue)
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_jobs(pilot, app, "state:failed", first, second)
        await pilot.press("m")
        assert screen.check_action("retry", ()) is True
        assert screen.check_action("cancel", ()) is False
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "1 failed job will change" in text_of(app, "#dialog-body")
        await pilot.press("y")
        await until(pilot, lambda: sorted([state(db, first), state(db, second)]) ==
                    ["failed", "pending"])


async def test_sort_runs_on_the_server_across_every_page_and_the_total_shows(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    ids = queue.enqueue_many([NewJob("t", {"n": n}) for n in range(250)])
    db.execute("UPDATE svti_jobs SET attempts = id % 7")
    top = min(ids)  # far from the first page, which is newest first
    db.execute("UPDATE svti_jobs SET attempts = 99 WHERE id = %s", (top,))
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_jobs(pilot, app, "")
        await until(pilot, lambda: len(table_ids(app)) == 100)
        assert top not in table_ids(app)
        assert re.search(r"rows 1-100 of 250\b", text_of(app, "#jobs-info"))
        while screen.sort != "attempts":
            await pilot.press("s")
        await pilot.press("S")
        await until(pilot, lambda: screen.sort == "-attempts" and table_ids(app)[:1] == [top])
        assert cell(app, top, "attempts") == "99"
        attempts = [screen.rows[i].attempts for i in table_ids(app)]
        assert attempts == sorted(attempts, reverse=True) and len(attempts) == 100
        info = text_of(app, "#jobs-info")
        assert "sorted by attempts ↓" in info and "of 250" in info
        await pilot.press("right_square_bracket")  # the next page continues the order
        await until(pilot, lambda: len(screen.pages) == 2 and screen.rows and
                    top not in screen.rows)
        assert max(r.attempts for r in screen.rows.values()) <= min(attempts)


async def test_lease_bars_are_judged_by_the_jobs_own_lease(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    fresh, late, extended = (queue.enqueue("t", {"n": n}) for n in range(3))
    for lease_ms in (30_000, 120_000, 30_000):
        assert queue.claim(lease_ms=lease_ms) is not None
    db.execute("UPDATE svti_jobs SET lease_until = now() + interval '50 seconds' "
               "WHERE id = %s", (late,))
    db.execute("UPDATE svti_jobs SET lease_until = now() + interval '10 minutes' "
               "WHERE id = %s", (extended,))
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:claimed", fresh, late, extended)
        assert cell(app, fresh, "lease").startswith("█" * 8 + " ")  # 30 s of 30 s: full
        assert "late" not in cell(app, fresh, "lease")
        assert cell(app, late, "lease").endswith(" late")  # 50 s of 120 s: a missed beat
        assert "░" in cell(app, late, "lease")
        assert cell(app, extended, "lease").startswith("█" * 8 + " ")  # clamped, not over


async def test_extend_by_prompt_names_the_job(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    queue.enqueue("email", {})
    job = queue.claim()
    assert job is not None
    before = row(db, job.id)["lease_until"]  # type: ignore[index]
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:claimed", job.id)
        await pilot.press("E")
        prompt = await until(pilot, lambda: isinstance(app.screen, PromptScreen) and app.screen)
        assert f"Extend job {job.id} (email) by how long?" in text_of(app, "#dialog-title")
        prompt.query_one(Input).value = "1h"
        await pilot.press("enter")  # one highlighted job: no second question
        await until(pilot, lambda: row(db, job.id)["lease_until"]  # type: ignore[index]
                    > before + timedelta(minutes=59))


async def test_completed_jobs_show_what_ran_and_times_carry_their_zone(
    dsn: str, queue: JobQueue
) -> None:
    with JobQueue(dsn, history_payload_bytes=64) as small:
        kept = small.enqueue("t", {"to": "a@example.com"})
        big = small.enqueue("t", {"blob": "x" * 500})
        for _ in range(2):
            job = small.claim()
            assert job is not None
            small.complete(job, result={"sent": True})
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await open_jobs(pilot, app, "state:completed", kept, big)
        # (once the last column has the width the others leave it)
        await until(pilot, lambda: cell(app, kept, "payload") == '{"to":"a@example.com"}')
        await until(pilot, lambda: re.fullmatch(
            r"payload of \d+ bytes not kept \(history_payload_bytes\)",
            cell(app, big, "payload")))
        app.run_command(f"job {kept}")
        detail = await until(pilot, lambda: isinstance(app.screen, DetailScreen)
                             and app.screen.detail and app.screen)
        await until(pilot, lambda: detail.completed is not None)
        payload = text_of(app, "#detail-payload")
        assert '"to": "a@example.com"' in payload and '"sent": true' in payload
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC +enqueued",
                         text_of(app, "#detail-timeline"))
        # Nothing applies to a completed job: every action is hidden.
        assert not {"retry", "extend", "cancel", "delete"} & {
            b.binding.action for b in detail.active_bindings.values()}

        queue.enqueue("t", {})
        held = queue.claim()
        assert held is not None
        app.run_command(f"job {held.id}")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen)
                    and app.screen.job_id == held.id and app.screen.detail)
        summary = text_of(app, "#detail-summary")
        assert re.search(r"created +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", summary)
        assert re.search(r"until \d\d:\d\d:\d\d UTC", text_of(app, "#detail-lease"))


async def test_the_last_column_takes_the_width_a_resize_leaves(
    dsn: str, queue: JobQueue
) -> None:
    job_id = failed_job(queue)
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=(90, 24)) as pilot:
        await open_jobs(pilot, app, "state:failed", job_id)
        table: DataTable[Text] = app.screen.query_one("#jobs", DataTable)

        def error_width() -> int:
            return table.columns[next(k for k in table.columns if k.value == "error")].width
        narrow = await until(pilot, lambda: error_width() > FLEX_MIN and error_width())
        await pilot.resize_terminal(150, 24)
        await until(pilot, lambda: error_width() == narrow + 60)
        await pilot.resize_terminal(90, 24)
        await until(pilot, lambda: error_width() == narrow)
