"""Issue 12's partitioned history, on real Postgres: `clear` drops the days before its cutoff
whole and deletes exactly the older rows of the day it falls in, live jobs keep their whole
timeline and their keys, no insert fails at a day's edge, far ahead or far back, and days are
made ahead by every fold, moving rows out of the DEFAULT partition."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobq_core import JobQueue, _ops
from jobq_core.admin import Admin, ClearPreview

from .helpers import WRITE_ALL, as_new_role, backdate, events


@pytest.fixture
def setup(dsn: str) -> Iterator[tuple[JobQueue, Admin]]:
    queue = JobQueue(dsn)
    yield queue, Admin(queue)
    queue.close()


def _days(db: psycopg.Connection[Any]) -> dict[str, tuple[datetime | None, datetime | None]]:
    """The history's partitions by name, with their bounds (None: unbounded or DEFAULT)."""
    rows = db.execute(
        "SELECT c.relname, m[1], m[2] FROM pg_inherits AS i JOIN pg_class AS c "
        "ON c.oid = i.inhrelid LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, "
        "c.oid), 'FROM \\(''(.*)''\\) TO \\(''(.*)''\\)') AS m ON true "
        "WHERE i.inhparent = 'svti_jobs_events'::regclass").fetchall()
    return {name: (db.execute("SELECT %s::timestamptz", (lo,)).fetchone()[0] if lo else None,
                   db.execute("SELECT %s::timestamptz", (hi,)).fetchone()[0] if hi else None)
            for name, lo, hi in rows}


def _where(db: psycopg.Connection[Any], job_id: int) -> set[str]:
    """The partitions a job's events are in."""
    return {r[0] for r in db.execute("SELECT tableoid::regclass::text FROM svti_jobs_events "
                                     "WHERE job_id = %s", (job_id,))}


def _date(db: psycopg.Connection[Any], job_id: int, at: datetime) -> None:
    """All of a job's events at this instant (they move to the partition that covers it)."""
    db.execute("UPDATE svti_jobs_events SET occurred_at = %s WHERE job_id = %s", (at, job_id))


def _completed(queue: JobQueue, key: str | None = None) -> int:
    job = queue.claim_by_id(queue.enqueue("t", request_id=key, idempotency_key=key))
    assert job is not None
    queue.complete(job)
    return job.id


def test_clear_drops_the_days_before_its_cutoff_and_deletes_exactly_the_older_rows_of_its_day(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any]
) -> None:
    """Twelve days of partitions, and a clear at an exact cutoff: a completed job's rows a
    second older than the cutoff go, a second newer stay; the days wholly before it are gone
    from the catalog; a scheduled job and a recently failed one keep their nine-day-old
    timelines (moved to the DEFAULT partition) and their keys; the keys of the jobs whose
    `enqueued` event went are free again, the others still held."""
    queue, admin = setup
    db.execute("SELECT svti_jobs_events_ahead(3, now() - interval '12 days')")
    cutoff = db.execute("SELECT now() - interval '7 days'").fetchone()[0]
    nine_days = cutoff - timedelta(days=2)

    old_done = _completed(queue, "k-old-done")
    edge_old = _completed(queue, "k-edge-old")
    edge_new = _completed(queue, "k-edge-new")
    scheduled = queue.enqueue("t", idempotency_key="k-scheduled", request_id="req-scheduled",
                              run_at=timedelta(days=30))
    failed = queue.claim_by_id(queue.enqueue("t", idempotency_key="k-failed"))
    assert failed is not None
    queue.fail(failed, reason="gave up")  # ended now: after the cutoff, so it stays
    for job_id in (old_done, scheduled, failed.id):
        _date(db, job_id, nine_days)
    backdate(db, scheduled, created_at="9 days")
    _date(db, edge_old, cutoff - timedelta(seconds=1))
    _date(db, edge_new, cutoff + timedelta(seconds=1))
    kept = {job_id: events(db, job_id) for job_id in (scheduled, failed.id, edge_new)}
    old_days = {name for name, (_, hi) in _days(db).items() if hi is not None and hi <= cutoff}
    assert len(old_days) >= 4
    cutoff_day = next(name for name, (lo, hi) in _days(db).items()
                      if lo is not None and hi is not None and lo <= cutoff < hi)

    assert admin.clear(ClearPreview(cutoff, 0, [], 0)) == 3 + 3  # old_done, edge_old

    assert not old_days & set(_days(db))
    assert db.execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s)",
                      (list(old_days),)).fetchone() == (0,)
    assert cutoff_day in _days(db)
    assert events(db, old_done) == [] and events(db, edge_old) == []
    assert {job_id: events(db, job_id) for job_id in kept} == kept
    assert _where(db, scheduled) == _where(db, failed.id) == {"svti_jobs_events_default"}
    assert [e.event for e in admin.show(scheduled).events] == ["enqueued"]
    assert [e.job_id for e in admin.trace("req-scheduled")] == [scheduled]
    assert queue.enqueue("t", idempotency_key="k-scheduled") == scheduled
    assert queue.enqueue("t", idempotency_key="k-failed") == failed.id
    assert queue.enqueue("t", idempotency_key="k-edge-new") == edge_new
    for key, gone in (("k-old-done", old_done), ("k-edge-old", edge_old)):
        assert queue.enqueue("t", idempotency_key=key) not in (gone, None)
    assert queue.clear(older_than="7d") == 0


def test_a_role_that_does_not_own_the_history_clears_it_row_by_row(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any], dsn: str
) -> None:
    """Only the tables' owner may drop partitions: another role with the README's grants
    deletes the same rows by the walk, and frees the same keys; the owner's next clear then
    drops the days it emptied."""
    queue, _ = setup
    db.execute("SELECT svti_jobs_events_ahead(3, now() - interval '12 days')")
    done = [_completed(queue, f"k{i}") for i in range(3)]
    live = queue.enqueue("t", idempotency_key="k-live", run_at=timedelta(days=30))
    for job_id in (*done, live):
        _date(db, job_id, db.execute("SELECT now() - interval '10 days'").fetchone()[0])
    days = set(_days(db))
    with as_new_role(db, dsn, f"{WRITE_ALL}, svti_jobs_rates", "SELECT ON svti_jobs_migrations",
                     "USAGE ON SEQUENCE svti_jobs_id_seq") as conn, JobQueue(conn) as other:
        assert other.clear(older_than="7d") == 9
        assert other.enqueue("t", idempotency_key="k0") not in done
        assert other.enqueue("t", idempotency_key="k-live") == live
    assert set(_days(db)) == days
    assert events(db, live) == ["enqueued"]
    assert queue.clear(older_than="7d") == 0
    assert len(set(_days(db))) < len(days) and _where(db, live) == {"svti_jobs_events_default"}


def test_a_job_that_ends_while_its_day_is_retired_loses_its_key_with_its_event(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any]
) -> None:
    """The keys of live jobs are left held when the others are freed; if such a job ends
    before its day is dropped, the retirement frees its key along with its history."""
    queue, _ = setup
    db.execute("SELECT svti_jobs_events_ahead(3, now() - interval '12 days')")
    job_id = queue.enqueue("t", idempotency_key="k-ending")
    _date(db, job_id, db.execute("SELECT now() - interval '10 days'").fetchone()[0])
    (part,), = db.execute("SELECT tableoid::regclass::text FROM svti_jobs_events "
                          "WHERE job_id = %s", (job_id,)).fetchall()
    st = queue.statements
    rows, held = db.execute(st.free_day_keys, {"part": part}).fetchone()
    assert (rows, held) == (1, [job_id])
    job = queue.claim_by_id(job_id)
    assert job is not None
    queue.complete(job)
    assert db.execute(st.retire, {"part": part, "held": held}).fetchone() == (0,)
    assert events(db, job_id) == ["claimed", "completed"]  # today's, in today's partition
    assert queue.enqueue("t", idempotency_key="k-ending") != job_id
    # a clear that comes to a day another clear retired meanwhile passes it by
    assert db.execute(st.free_day_keys, {"part": part}).fetchone() == (None, None)
    assert db.execute(st.retire, {"part": part, "held": []}).fetchone() == (None,)


def test_no_insert_fails_at_a_days_edge_far_ahead_or_far_back(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any]
) -> None:
    """A row at midnight belongs to the day it starts, a microsecond before to the day
    before; rows no day covers (years ahead or back, infinity) go to the DEFAULT
    partition."""
    db.execute("INSERT INTO svti_jobs_events (occurred_at, job_id, type, event) "
               "SELECT at, g, 't', 'claimed' FROM unnest(ARRAY["
               "date_trunc('day', now(), 'UTC') + interval '1 day', "
               "date_trunc('day', now(), 'UTC') + interval '1 day' - interval '1 microsecond', "
               "'3000-01-01', '1970-01-01', 'infinity', '-infinity']::timestamptz[]) "
               "WITH ORDINALITY AS a(at, g)")
    where = dict(db.execute("SELECT job_id, tableoid::regclass::text FROM svti_jobs_events "
                            "ORDER BY job_id").fetchall())
    tomorrow, today = db.execute(
        "SELECT to_char(date_trunc('day', now(), 'UTC') AT TIME ZONE 'UTC' + interval '1 day', "
        "'YYYYMMDD'), to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')").fetchone()
    assert where == {1: f"svti_jobs_events_{tomorrow}", 2: f"svti_jobs_events_{today}",
                     3: "svti_jobs_events_default", 4: "svti_jobs_events_default",
                     5: "svti_jobs_events_default", 6: "svti_jobs_events_default"}


def test_every_fold_keeps_days_ahead_and_moves_their_rows_out_of_the_default(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any], dsn: str
) -> None:
    """Days gone missing (as if the clock had run on with nobody folding): their rows went to
    the DEFAULT partition, and the next fold, by a role with no DDL rights, makes the days
    again and moves the rows into them, whose ids and contents stay as they were."""
    days = _days(db)
    ahead = sorted((lo, name) for name, (lo, _) in days.items() if lo is not None)[1:]
    assert len(ahead) == 2
    for _, name in ahead:
        db.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    db.execute("INSERT INTO svti_jobs_events (occurred_at, job_id, type, event) "
               "VALUES (%s + interval '1 hour', 1, 't', 'claimed'), "
               "(%s + interval '1 day' - interval '1 microsecond', 2, 't', 'claimed')",
               (ahead[0][0], ahead[1][0]))
    before = db.execute("SELECT array_agg(e::text ORDER BY id) FROM svti_jobs_events AS e"
                        ).fetchone()[0]
    assert _where(db, 1) == _where(db, 2) == {"svti_jobs_events_default"}
    with as_new_role(db, dsn, f"{WRITE_ALL}, svti_jobs_rates", "SELECT ON svti_jobs_migrations"
                     ) as conn, JobQueue(conn) as worker:
        worker.fold_rates()
    assert _days(db) == days
    assert _where(db, 1) == {ahead[0][1]} and _where(db, 2) == {ahead[1][1]}
    assert db.execute("SELECT array_agg(e::text ORDER BY id) FROM svti_jobs_events AS e"
                      ).fetchone()[0] == before


def test_clear_walks_a_partition_it_could_not_retire(
    setup: tuple[JobQueue, Admin], db: psycopg.Connection[Any], dsn: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that holds the history past the retirement's patience: the day is left in
    place and its rows are deleted by the walk instead, so the clear still removes them."""
    queue, _ = setup
    monkeypatch.setattr(_ops, "RETIRE_TRIES", 1)
    db.execute("SELECT svti_jobs_events_ahead(3, now() - interval '12 days')")
    done = _completed(queue)
    _date(db, done, db.execute("SELECT now() - interval '10 days'").fetchone()[0])
    days = set(_days(db))
    with psycopg.connect(dsn) as reader:
        reader.execute("SELECT count(*) FROM svti_jobs_events").fetchone()  # holds its lock
        assert queue.clear(older_than="7d") == 3
        reader.rollback()
    assert set(_days(db)) == days and events(db, done) == []


def test_status_reads_plan_no_parallel_workers_and_no_jit(dsn: str) -> None:
    """Partitions pruned by now() are pruned when a statement runs, not when it is planned,
    so the planner costs every day of history and buys parallel workers and JIT compiling
    for reads of a minute's rows. A session costed to want both everywhere plans them for the
    status query, and plans neither once `stats` (and its fold) ran in the transaction."""
    def plan_of(conn: psycopg.Connection[Any], query: bytes) -> str:
        return str(conn.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + query).fetchone()[0])

    with psycopg.connect(dsn, options="-c parallel_setup_cost=0 -c parallel_tuple_cost=0 "
                         "-c min_parallel_table_scan_size=0 -c jit_above_cost=0") as conn:
        queue = JobQueue(conn)
        query = queue.statements.stats_types
        eager = plan_of(conn, query)
        assert "Gather" in eager and "'JIT'" in eager
        conn.rollback()
        with conn.transaction():
            Admin(queue).stats()
            quick = plan_of(conn, query)
        assert "Gather" not in quick and "'JIT'" not in quick
