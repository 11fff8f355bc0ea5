"""Issue 11's exact clear, on real Postgres: the history of live jobs is never deleted, what the
preview counted is what is deleted, the history walk covers every block of the table, and the
per-minute rates are folded before the history they come from is deleted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from jobq_core import JobQueue, _ops
from jobq_core.admin import Admin

from .helpers import WRITE_ALL, as_new_role, backdate, events


@pytest.fixture
def setup(dsn: str) -> Iterator[tuple[JobQueue, Admin]]:
    queue = JobQueue(dsn)
    yield queue, Admin(queue)
    queue.close()


def _age_events(db: psycopg.Connection[Any], job_id: int, *days: float) -> None:
    """Date a job's events, oldest first, the given numbers of days ago."""
    ids = [r[0] for r in db.execute(
        "SELECT id FROM svti_jobs_events WHERE job_id = %s ORDER BY id", (job_id,))]
    assert len(ids) == len(days)
    for event_id, ago in zip(ids, days, strict=True):
        db.execute("UPDATE svti_jobs_events SET occurred_at = now() - %s * interval '1 day' "
                   "WHERE id = %s", (ago, event_id))


def test_live_jobs_keep_their_whole_timeline(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any]
) -> None:
    """Issue 11: a job scheduled 30 days out, one retrying for a week and one that failed
    after the cutoff keep every event through `clear --older-than 7d`, and stay findable by
    request id and in the trace. A naive delete of all history older than the cutoff fails
    this test. Completed and old failed jobs lose their old history; the count is the
    preview's, and a job enqueued after the preview is untouched."""
    queue, admin = setup
    scheduled = queue.enqueue("report", request_id="req-scheduled",
                              run_at=timedelta(days=30))
    _age_events(db, scheduled, 8)
    backdate(db, scheduled, created_at="8 days")

    retrying = queue.enqueue("sync", request_id="req-retrying")
    for _ in range(3):
        job = queue.claim_by_id(retrying)
        assert job is not None
        queue.fail(job, reason="upstream down", retry=True)
    _age_events(db, retrying, 8, 8, 7.9, 6, 5.9, 3, 2.9)  # enqueued, 3 x (claimed, failed)

    failed_new = queue.enqueue("sync", request_id="req-failed-new")
    job = queue.claim_by_id(failed_new)
    assert job is not None
    queue.fail(job, reason="gave up")
    _age_events(db, failed_new, 9, 9, 8.5)  # an old timeline, but it failed after the cutoff

    done = queue.enqueue("report", request_id="req-done")
    job = queue.claim_by_id(done)
    assert job is not None
    queue.complete(job, result={"ok": True})
    _age_events(db, done, 8, 8, 8)

    failed_old = queue.enqueue("sync", request_id="req-failed-old")
    job = queue.claim_by_id(failed_old)
    assert job is not None
    queue.fail(job, reason="gone")
    _age_events(db, failed_old, 10, 10, 10)
    backdate(db, failed_old, failed_at="10 days")

    live = {scheduled: ["enqueued"],
            retrying: ["enqueued"] + ["claimed", "failed"] * 3,  # a retry fails as `failed`
            failed_new: ["enqueued", "claimed", "failed"]}
    before = {job_id: events(db, job_id) for job_id in live}
    preview = admin.preview_clear("7d")
    assert (preview.failed_jobs, preview.sample_ids) == (1, [failed_old])
    assert preview.history_rows == 3 + 3  # `done`'s and `failed_old`'s timelines
    late = queue.enqueue("report", request_id="req-late")
    db.execute("UPDATE svti_jobs SET created_at = now() - interval '8 days' WHERE id = %s",
               (late,))

    assert admin.clear(preview) == preview.total

    for job_id, request_id in ((scheduled, "req-scheduled"), (retrying, "req-retrying"),
                               (failed_new, "req-failed-new")):
        assert events(db, job_id) == before[job_id]
        assert [e.event for e in admin.show(job_id).events] == before[job_id]
        assert [e.job_id for e in admin.trace(request_id)] == [job_id] * len(before[job_id])
        assert [r.id for r in admin.list_jobs(f"req:{request_id}").rows] == [job_id]
    assert [e.event for e in admin.trace("req-late")] == ["enqueued"]
    assert events(db, done) == []
    assert events(db, failed_old) == ["deleted"]  # the clear itself is recorded
    live_states = dict(db.execute("SELECT id, state FROM svti_jobs").fetchall())
    assert live_states == {scheduled: "pending", retrying: "pending", failed_new: "failed",
                           late: "pending"}


def test_the_walk_covers_every_block_and_only_old_rows_of_ended_jobs(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A history of many blocks, walked one block per statement, in which freed space was
    reused (physical order is not time order): exactly the old rows of jobs that are not in
    the queue go, and progress reports a growing total that ends at the count removed."""
    queue, admin = setup
    monkeypatch.setattr(_ops, "CLEAR_BLOCKS", 1)
    db.execute("INSERT INTO svti_jobs (id, type) SELECT g, 't' FROM generate_series(1, 50) g")
    insert = ("INSERT INTO svti_jobs_events (occurred_at, job_id, type, event) "
              "SELECT now() - (g %% 20) * interval '1 day', g %% 400, 't', 'claimed' "
              "FROM generate_series(1, %s) g")
    db.execute(insert, (6000,))
    db.execute("DELETE FROM svti_jobs_events WHERE job_id % 3 = 0 AND job_id > 50")
    db.execute("VACUUM svti_jobs_events")
    db.execute(insert, (2000,))  # into the freed space first
    # the days before today have no partitions here: the DEFAULT one holds them
    assert db.execute("SELECT pg_relation_size('svti_jobs_events_default') / 8192"
                      ).fetchone()[0] >= 10
    expected = {r[0] for r in db.execute(
        "SELECT tableoid::regclass || ctid::text FROM svti_jobs_events "
        "WHERE occurred_at >= now() - interval '7 days' OR job_id BETWEEN 1 AND 50")}
    old = db.execute("SELECT count(*) FROM svti_jobs_events").fetchone()[0] - len(expected)
    assert old > 3000
    preview = admin.preview_clear("7d")
    assert preview.total == old
    totals: list[int] = []
    assert admin.clear(preview, progress=totals.append) == old
    assert len(totals) > 5 and totals == sorted(totals) and totals[-1] == old
    assert {r[0] for r in db.execute(
        "SELECT tableoid::regclass || ctid::text FROM svti_jobs_events")} == expected
    assert queue.clear(older_than="7d") == 0


def _complete(queue: JobQueue, db: psycopg.Connection[Any], job_type: str,
              seconds_ago: list[int]) -> None:
    """Completions that happened these many seconds ago (their whole history moved back)."""
    for ago in seconds_ago:
        job_id = queue.enqueue(job_type)
        job = queue.claim_by_id(job_id)
        assert job is not None
        queue.complete(job)
        db.execute("UPDATE svti_jobs_events SET occurred_at = now() - %s * interval '1 second' "
                   "WHERE job_id = %s", (ago, job_id))


def test_a_short_clear_before_anyone_looked_keeps_the_rates(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any]
) -> None:
    """Issue 11: completions 3 minutes ago, then `clear --older-than 1m` before any stats
    call: their history is gone, and the overview still counts them in their minute."""
    queue, admin = setup
    _complete(queue, db, "mail", [180] * 4)
    minute = db.execute("SELECT DISTINCT date_trunc('minute', occurred_at) "
                        "FROM svti_jobs_events").fetchall()
    assert len(minute) == 1
    assert db.execute("SELECT count(*) FROM svti_jobs_rates").fetchone()[0] == 0
    assert queue.clear(older_than="1m") == 12
    assert db.execute("SELECT count(*) FROM svti_jobs_events").fetchone()[0] == 0
    assert db.execute("SELECT completed FROM svti_jobs_rates WHERE minute = %s AND type = 'mail'",
                      minute[0]).fetchone() == (4,)
    mail = next(s for s in admin.stats() if s.type == "mail")
    assert sum(mail.completed_per_min) == 4


def test_no_clear_loses_a_completion_from_the_rates(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any]
) -> None:
    """However short the age, every completion is either folded into the rates or still in
    the history for a later fold: the cutoff is never later than the last foldable minute."""
    queue, admin = setup
    _complete(queue, db, "mail", [0, 5, 15, 40, 65, 80, 100, 130, 170])
    preview = admin.preview_clear(timedelta(seconds=1))
    folded_until = db.execute(
        "SELECT date_trunc('minute', now() - interval '10 seconds')").fetchone()[0]
    assert preview.cutoff <= folded_until
    admin.clear(preview)
    folded = db.execute("SELECT coalesce(sum(completed), 0) FROM svti_jobs_rates "
                        "WHERE type = 'mail'").fetchone()[0]
    waiting = db.execute(
        "SELECT count(*) FROM svti_jobs_events e WHERE event = 'completed' AND NOT EXISTS "
        "(SELECT 1 FROM svti_jobs_rates r WHERE r.type = '' "
        " AND r.minute = date_trunc('minute', e.occurred_at))").fetchone()[0]
    assert folded + waiting == 9
    admin.stats()
    assert db.execute("SELECT count(*) FROM svti_jobs_events WHERE event = 'completed' "
                      "AND occurred_at < %s", (preview.cutoff,)).fetchone()[0] == 0


def test_fold_rates_on_both_twins(q: Any, db: psycopg.Connection[Any]) -> None:
    """What a task runner calls once a minute: finished minutes are folded once."""
    for _ in range(3):
        job = q.claim_by_id(q.enqueue("mail"))
        q.complete(job)
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '3 minutes'")
    assert q.fold_rates() > 0
    assert db.execute("SELECT sum(completed) FROM svti_jobs_rates "
                      "WHERE type = 'mail'").fetchone()[0] == 3
    assert q.fold_rates() == 0


def test_a_role_that_may_not_write_the_rates_still_clears(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Folding needs INSERT and DELETE on the rates; a role without them clears all the
    same (and the rates stay as they were)."""
    with JobQueue(dsn) as owner:
        _complete(owner, db, "mail", [180, 180])
    with as_new_role(db, dsn, WRITE_ALL, "SELECT ON svti_jobs_migrations, svti_jobs_rates"
                     ) as conn, JobQueue(conn) as queue:
        assert queue.clear(older_than="1m") == 6
        assert queue.fold_rates() == 0
    assert db.execute("SELECT count(*) FROM svti_jobs_events").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM svti_jobs_rates").fetchone()[0] == 0

def test_failed_and_cancelled_jobs_are_cleared_batch_by_batch(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ended state comes from its own index, a batch of each per statement: the clear
    goes on until both are exhausted, whichever runs out first."""
    queue, admin = setup
    monkeypatch.setattr(_ops, "CLEAR_BATCH", 2)
    failed = []
    for _ in range(3):
        job = queue.claim_by_id(queue.enqueue("t"))
        assert job is not None
        queue.fail(job, reason="x")
        failed.append(job.id)
    cancelled = [queue.enqueue("t") for _ in range(7)]
    assert admin.cancel(cancelled).changed == 7
    kept = queue.enqueue("t")
    db.execute("UPDATE svti_jobs SET failed_at = now() - interval '8 days'")
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '8 days'")
    preview = admin.preview_clear("7d")
    assert preview.failed_jobs == 10
    assert admin.clear(preview) == preview.total
    assert db.execute("SELECT array_agg(id) FROM svti_jobs").fetchone()[0] == [kept]
    deleted = db.execute("SELECT job_id FROM svti_jobs_events WHERE event = 'deleted' "
                         "ORDER BY job_id").fetchall()
    assert [r[0] for r in deleted] == sorted(failed + cancelled)


def test_a_clear_waits_for_a_fold_in_progress_rather_than_skip_it(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any], dsn: str
) -> None:
    """Another session folding holds the folders' lock; a clear does not skip its own fold
    (that session's fold may not see the history about to go): it waits, then folds."""
    queue, _ = setup
    _complete(queue, db, "mail", [180, 180])
    with psycopg.connect(dsn) as folder:
        folder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))",
                       (queue.statements.names.lock_key,))
        with ThreadPoolExecutor(1) as pool:
            clearing = pool.submit(queue.clear, older_than="1m")
            deadline = time.monotonic() + 30
            while not db.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database "
                    "                WHERE datname = current_database())").fetchone()[0]:
                assert time.monotonic() < deadline, "the clear never waited for the lock"
                time.sleep(0.05)
            assert db.execute("SELECT count(*) FROM svti_jobs_events").fetchone()[0] == 6
            folder.rollback()
            assert clearing.result(timeout=30) == 6
    assert db.execute("SELECT sum(completed) FROM svti_jobs_rates "
                      "WHERE type = 'mail'").fetchone()[0] == 2
