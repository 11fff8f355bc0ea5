"""jobq_core.admin: listing, detail, trace and previewable repairs, on real Postgres."""

from __future__ import annotations

import asyncio
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


def test_list_jobs_by_state_with_keyset_pages(setup: Any, db: psycopg.Connection[Any]) -> None:
    queue, admin = setup
    ids = queue.enqueue_many([NewJob("a", i) for i in range(25)])
    later = queue.enqueue("a", run_at=timedelta(hours=1))
    for _ in range(7):
        queue.fail(queue.claim(), reason="x")
    held = queue.claim()
    queue.complete(queue.claim(), result={"ok": 1})
    seen: list[int] = []
    after = None
    while True:
        page = admin.list_jobs("state:pending", after=after, limit=4)
        seen += [r.id for r in page.rows]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    # 26 enqueued: 7 failed, 1 claimed, 1 completed; the scheduled one is pending too
    assert len(seen) == len(set(seen)) == 17
    assert seen == sorted(seen, reverse=True)
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
    assert dict(preview.ineligible) == {alive: "is pending, not failed", 99999: "not found"}
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
    ids = admin.select("state:failed type:a")
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
                                                                      "pending or failed")]
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
