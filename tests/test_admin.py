"""jobq_core.admin: listing, detail, trace and previewable repairs, on real Postgres."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from jobq_core import (
    AsyncJobQueue,
    InvalidInputError,
    JobQueue,
    NewJob,
    NotFoundError,
)
from jobq_core.admin import Admin, AsyncAdmin
from jobq_core.filters import JobFilter, parse_filter

from .helpers import backdate, events


@pytest.fixture
def setup(dsn: str) -> Any:
    queue = JobQueue(dsn)
    yield queue, Admin(queue)
    queue.close()


def test_filter_language_round_trips() -> None:
    flt = parse_filter("state:failed type:send-email req:abc123 error:Timeout age:>1h "
                       "attempts:>=3")
    assert flt == JobFilter("failed", "send-email", "abc123", "Timeout",
                            (">", timedelta(hours=1)), (">=", 3))
    assert parse_filter(flt.describe()) == flt
    for bad in ("state:sleeping", "colour:red", "age:1h", "age:>7x", "attempts:>=many",
                "type:bad type", "noqualifier", "state:failed state:pending"):
        with pytest.raises(InvalidInputError):
            parse_filter(bad)


def _every_page(admin: Admin, flt: str, limit: int) -> list[int]:
    """The ids of every page of a listing, following its keyset cursor."""
    ids: list[int] = []
    after = None
    while True:
        page = admin.list_jobs(flt, after=after, limit=limit)
        ids += [r.id for r in page.rows]
        if page.next_cursor is None:
            return ids
        after = page.next_cursor


def test_list_jobs_by_state_with_keyset_pages(setup: Any, db: psycopg.Connection[Any]) -> None:
    queue, admin = setup
    ids = queue.enqueue_many([NewJob("a", i) for i in range(25)])
    later = queue.enqueue("a", run_at=timedelta(hours=1))
    for _ in range(7):
        queue.fail(queue.claim(), reason="x")
    held = queue.claim()
    queue.complete(queue.claim(), result={"ok": 1})
    seen = _every_page(admin, "state:pending", limit=4)
    # 26 enqueued: 7 failed, 1 claimed, 1 completed; the scheduled one is pending too
    assert len(seen) == len(set(seen)) == 17
    assert seen == sorted(seen) and seen[-1] == later  # run order; the scheduled one last
    assert [r.id for r in admin.list_jobs("state:scheduled").rows] == [later]
    failed = admin.list_jobs("state:failed", limit=3)
    assert len(failed.rows) == 3 and failed.next_cursor
    rest = admin.list_jobs("state:failed", after=failed.next_cursor, limit=10)
    assert len({r.id for r in failed.rows + rest.rows}) == 7
    assert [r.id for r in admin.list_jobs("state:claimed").rows] == [held.id]
    done = admin.list_jobs("state:completed").rows
    assert len(done) == 1 and done[0].state == "completed" and done[0].result == {"ok": 1}
    assert done[0].id in ids
    assert len(admin.list_jobs().rows) == 25  # every live job: 17 + 7 + 1


def test_list_jobs_filters(setup: Any, db: psycopg.Connection[Any]) -> None:
    queue, admin = setup
    a = queue.enqueue("email", request_id="req-1")
    queue.enqueue("sms", request_id="req-2")
    b = queue.enqueue("email")
    queue.fail(queue.claim(types=["email"]), reason="SMTP Timeout 100% of the_time")
    backdate(db, a, created_at="2 hours")
    assert [r.id for r in admin.list_jobs("type:email").rows] == [b, a]
    assert [r.id for r in admin.list_jobs("req:req-1").rows] == [a]
    assert [r.id for r in admin.list_jobs("error:timeout").rows] == [a]
    assert [r.id for r in admin.list_jobs("error:100%").rows] == [a]  # % is literal
    assert admin.list_jobs("error:1_0").rows == []  # _ is literal too
    assert [r.id for r in admin.list_jobs("age:>1h").rows] == [a]
    assert [r.id for r in admin.list_jobs("attempts:>=1").rows] == [a]
    assert len(admin.list_jobs("attempts:=0").rows) == 2


def test_show_and_trace(setup: Any) -> None:
    queue, admin = setup
    parent = queue.enqueue("a", {"x": 1}, request_id="trace-me")
    job = queue.claim()
    queue.fail(job, reason="boom", retry=True)
    queue.complete(queue.claim())
    child = queue.enqueue("b", request_id="trace-me")
    queue.enqueue("c", request_id="someone-else")
    detail = admin.show(parent)
    assert detail.job is None and detail.state == "completed"
    assert [e.event for e in detail.events] == ["enqueued", "claimed", "retried", "claimed",
                                                "completed"]
    live = admin.show(child)
    assert live.job is not None and live.job.state == "pending"
    traced = admin.trace("trace-me")
    assert [(e.job_id, e.event) for e in traced][-1] == (child, "enqueued")
    assert {e.request_id for e in traced} == {"trace-me"} and len(traced) == 6
    assert admin.trace("trace-me", after=traced[2].id)[0].id == traced[3].id
    with pytest.raises(NotFoundError):
        admin.show(987654)


def test_trace_pages_read_the_whole_trace_in_pages(dsn: str) -> None:
    """Both twins page by event id through every event, after `after`, whatever the length:
    full pages, then the short last one (none when the last page was exactly full)."""
    with JobQueue(dsn) as queue:
        queue.enqueue_many([NewJob("a", request_id="paged")] * 10)
        queue.enqueue("b", request_id="other")
        admin = Admin(queue)
        every = admin.trace("paged")
        assert len(every) == 10
        pages = list(admin.trace_pages("paged", page=3))
        assert [len(p) for p in pages] == [3, 3, 3, 1]
        assert [e for p in pages for e in p] == every
        assert [len(p) for p in admin.trace_pages("paged", after=every[4].id, page=5)] == [5]
        assert list(admin.trace_pages("nothing-here")) == []
        with pytest.raises(InvalidInputError, match="after must be an event id"):
            list(admin.trace_pages("paged", after=-1))

    async def twin() -> list[list[Any]]:
        async with AsyncJobQueue(dsn) as aqueue:
            return [p async for p in AsyncAdmin(aqueue).trace_pages("paged", page=3)]

    assert asyncio.run(twin()) == pages


def test_retry_with_preview(setup: Any, db: psycopg.Connection[Any]) -> None:
    queue, admin = setup
    dead = []
    for i in range(3):
        queue.enqueue("a", i)
        job = queue.claim()
        queue.fail(job, reason="x")
        dead.append(job.id)
    alive = queue.enqueue("a")
    before = db.execute("SELECT * FROM svti_jobs ORDER BY id").fetchall()
    preview = admin.preview("retry", [*dead, alive, 99999])
    assert preview.eligible == 3 and preview.sample_ids == dead
    assert dict(preview.ineligible) == {
        alive: "is pending, not failed or cancelled",
        99999: "not in the queue (completed, deleted or never existed)"}
    assert db.execute("SELECT * FROM svti_jobs ORDER BY id").fetchall() == before
    progress: list[tuple[int, int]] = []
    result = admin.retry([*dead, alive], progress=lambda done, total: progress.append(
        (done, total)))
    assert result.changed == 3 and result.skipped == [alive] and progress == [(4, 4)]
    assert {j.id for j in queue.claim_many(10)} == {*dead, alive}
    assert events(db, dead[0])[-2:] == ["retried", "claimed"]


def test_retry_by_filter_and_at_a_time(setup: Any, db: psycopg.Connection[Any]) -> None:
    queue, admin = setup
    queue.enqueue_many([NewJob("a")] * 3 + [NewJob("b")])
    for job in queue.claim_many(4):
        queue.fail(job, reason="x")
    ids = admin.matching_ids("state:failed type:a")
    assert len(ids) == 3
    at = datetime.now(UTC) + timedelta(hours=1)
    assert admin.retry(ids, run_at=at).changed == 3
    assert queue.claim() is None
    assert db.execute("SELECT count(*) FROM svti_jobs WHERE run_at = %s", (at,)).fetchone() == (3,)


def test_extend_and_delete(setup: Any, db: psycopg.Connection[Any]) -> None:
    queue, admin = setup
    queue.enqueue_many([NewJob("a")] * 3)
    held = queue.claim(lease_ms=1000)
    pending = [r.id for r in admin.list_jobs("state:pending").rows]
    result = admin.extend([held.id, pending[0]], "5m")
    assert result.changed == 1 and result.skipped == [pending[0]]
    lease = db.execute("SELECT extract(epoch FROM lease_until - now()) FROM svti_jobs "
                       "WHERE id = %s", (held.id,)).fetchone()[0]
    assert 295 < lease < 302
    assert admin.preview("delete", [held.id]).ineligible == [(held.id, "is claimed, not "
                                                                      "pending or failed or "
                                                                      "cancelled")]
    assert admin.delete([held.id, pending[0]]).changed == 1  # claimed needs force
    assert admin.delete([held.id], force=True).changed == 1
    assert sorted(r[0] for r in db.execute("SELECT id FROM svti_jobs")) == [pending[1]]
    assert events(db, held.id)[-1] == "deleted"
    with pytest.raises(InvalidInputError):
        admin.extend([held.id], "7x")
    with pytest.raises(InvalidInputError):
        admin.retry([])


def test_async_twin(dsn: str) -> None:
    async def scenario() -> None:
        async with AsyncJobQueue(dsn) as queue:
            admin = AsyncAdmin(queue)
            job_id = await queue.enqueue("a", request_id="r")
            job = await queue.claim()
            await queue.fail(job, reason="x")
            assert (await admin.preview("retry", [job_id])).eligible == 1
            assert (await admin.retry([job_id])).changed == 1
            assert [r.id for r in (await admin.list_jobs("state:pending")).rows] == [job_id]
            assert len(await admin.trace("r")) == 4
            assert (await admin.show(job_id)).state == "pending"

    asyncio.run(scenario())


def test_stats_per_type(setup: Any, db: psycopg.Connection[Any]) -> None:
    queue, admin = setup
    queue.enqueue_many([NewJob("email")] * 5 + [NewJob("sms", run_at=timedelta(hours=1))]
                       + [NewJob("push")])
    held = queue.claim(types=["email"], lease_ms=30_000)
    expired = queue.claim(types=["email"], lease_ms=60_000)
    queue.fail(queue.claim(types=["push"]), reason="x")
    queue.complete(queue.claim(types=["email"]))
    queue.fail(queue.claim(types=["email"]), reason="y")
    backdate(db, expired.id, lease_until="5 seconds")  # last: a claim would take it back
    # history from two minutes ago, so that the fold (finished minutes only) counts it
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '2 minutes' "
               "WHERE event IN ('completed', 'failed')")
    backdate(db, queue.enqueue("email"), run_at="90 seconds")
    # late: less than half of its own 30 s lease left, so a heartbeat was missed
    db.execute("UPDATE svti_jobs SET lease_until = now() + interval '10 seconds' WHERE id = %s",
               (held.id,))
    stats = {s.type: s for s in admin.stats()}
    assert sorted(stats) == ["email", "push", "sms"]
    email = stats["email"]
    assert (email.ready.value, email.claimed.value, email.late.value, email.expired.value,
            email.failed.value) == (2, 2, 1, 1, 1)
    assert email.ready.exact and str(email.ready) == "2"
    assert 85 < email.oldest_ready_age.total_seconds() < 120
    assert stats["sms"].scheduled.value == 1 and stats["sms"].ready.value == 0
    assert stats["push"].failed.value == 1 and stats["push"].oldest_ready_age is None
    assert len(email.completed_per_min) == 60 and sum(email.completed_per_min) == 1
    assert sum(email.failed_per_min) == 1 and sum(stats["push"].failed_per_min) == 1
    assert held.id != expired.id
    admin.stats()  # folding again changes nothing
    assert sum(admin.stats()[0].completed_per_min) == 1


def test_stats_beyond_the_cap_are_estimates(
    setup: Any, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobq_core import admin as admin_module

    queue, admin = setup
    monkeypatch.setattr(admin_module, "COUNT_CAP", 50)
    monkeypatch.setattr(admin_module, "PENDING_CAP", 50)
    queue.enqueue_many([NewJob("bulk")] * 600)
    queue.enqueue_many([NewJob("later", run_at=timedelta(hours=1))] * 200)
    db.execute("ANALYZE svti_jobs")
    bulk, later = admin.stats()
    assert not bulk.ready.exact and str(bulk.ready).startswith("~")
    assert 300 <= bulk.ready.value <= 1200  # from the statistics, near the truth
    # Type and run_at are not independent: all of this type's jobs are scheduled, which
    # the planner's estimate (a quarter of a quarter of the rows) missed by 4x.
    assert later.ready.value == 0 and not later.scheduled.exact
    assert 100 <= later.scheduled.value <= 400


def test_stats_work_read_only(dsn: str, setup: Any) -> None:
    queue, _ = setup
    queue.enqueue("t")
    with psycopg.connect(dsn, autocommit=True,
                         options="-c default_transaction_read_only=on") as conn, \
            JobQueue(conn) as ro_queue:
        (only,) = Admin(ro_queue).stats()
    assert only.ready.value == 1


def test_doctor_reports_with_fixes(setup: Any, db: psycopg.Connection[Any]) -> None:
    queue, admin = setup
    queue.enqueue("t")
    job = queue.claim()
    backdate(db, job.id, lease_until="1 minute")
    with psycopg.connect(db.info.dsn) as holder:  # an open snapshot holding back xmin
        holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        holder.execute("SELECT count(*) FROM svti_jobs").fetchone()
        findings = {f.check: f for f in admin.doctor()}
        holder.rollback()
    assert findings["schema version"].status == "ok"
    assert findings["expired leases"].status == "warn"
    assert "jobq worker" in (findings["expired leases"].fix or "")
    assert "table svti_jobs" in findings and "table svti_jobs_events" in findings
    assert any(name.startswith("index ") for name in findings)
    assert "pid" in findings["xmin horizon"].detail


def test_migrate_dry_run_shows_sql_and_changes_nothing(empty_dsn: str) -> None:
    with JobQueue(empty_dsn) as queue:
        admin = Admin(queue)
        plan = admin.migrate(dry_run=True)
        # Named as they resolved: exactly what would run, whatever the search_path does later.
        assert any('CREATE TABLE "public"."svti_jobs"' in s for s in plan)
        with psycopg.connect(empty_dsn) as conn:
            assert conn.execute("SELECT to_regclass('svti_jobs')").fetchone()[0] is None
        assert admin.migrate(dry_run=False) == plan
        assert admin.migrate(dry_run=True) == []


async def test_follow_yields_new_events_as_they_happen(dsn: str) -> None:
    async with AsyncJobQueue(dsn) as queue:
        admin = AsyncAdmin(queue)
        await queue.enqueue("a", request_id="live")
        seen: list[str] = []

        async def consume() -> None:
            async for event in admin.follow("live"):
                seen.append(event.event)
                if len(seen) == 3:
                    return

        follower = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        job = await queue.claim()
        await queue.complete(job)
        await asyncio.wait_for(follower, 5)
    assert seen == ["enqueued", "claimed", "completed"]


def test_clear_deletes_exactly_what_its_preview_counted(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Issue 11: the cutoff is fixed when the preview is made. A row that was just younger
    than the cutoff at preview time is still kept after a slow confirmation; live jobs keep
    their history."""
    with JobQueue(dsn) as queue:
        admin = Admin(queue)
        live = queue.enqueue("t", request_id="live")
        db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '30 days'")
        db.execute("INSERT INTO svti_jobs_events (occurred_at, job_id, type, event) VALUES "
                   "(now() - interval '8 days', 9001, 't', 'completed'), "
                   "(now() - interval '7 days' + interval '1 second', 9002, 't', 'completed')")
        preview = admin.preview_clear("7d")
        assert (preview.failed_jobs, preview.history_rows) == (0, 1)
        time.sleep(1.5)  # the operator reads the prompt; 9002 is now older than "7d ago"
        assert admin.clear(preview) == preview.total == 1
        kept = {r[0] for r in db.execute("SELECT DISTINCT job_id FROM svti_jobs_events")}
        assert kept == {live, 9002}
        assert admin.clear("7d") == 1  # a new clear, with its own cutoff, takes it


def test_pending_jobs_list_in_the_order_they_will_be_claimed(dsn: str) -> None:
    """Issue 11: the pending list is the run order (priority, then run_at, then id), page
    after page across priorities, and a claim takes them in exactly that order."""
    with JobQueue(dsn) as queue:
        admin = Admin(queue)
        now = datetime.now(UTC)
        for i, priority in enumerate([0, 5, 0, 10, 5, 0, 10, 5, 0, 0, 5]):
            queue.enqueue("t", {"i": i}, priority=priority, run_at=now - timedelta(seconds=i % 3))
        listed = _every_page(admin, "state:pending", limit=3)
        assert len(listed) == 11 == len(set(listed))
        claimed = [j.id for j in queue.claim_many(11)]
        assert listed == claimed
        ready = admin.list_jobs("state:ready type:t", limit=100)
        assert [r.id for r in ready.rows] == []  # all claimed now
