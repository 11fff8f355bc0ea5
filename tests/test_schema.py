"""Creation on first use, forward migration (including upstream's layout) and name safety."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from typing import Any

import psycopg
import pytest

from jobq_core import InvalidInputError, JobQueue, SchemaError, create_job_queue, schema
from jobq_core.admin import Admin
from jobq_core.sql import Names, Statements


def test_first_use_creates_the_tables(empty_dsn: str) -> None:
    with JobQueue(empty_dsn) as queue:  # construction does no I/O
        with psycopg.connect(empty_dsn) as conn:
            assert conn.execute("SELECT to_regclass('svti_jobs')").fetchone()[0] is None
        queue.enqueue("t")
    with psycopg.connect(empty_dsn) as conn:
        versions = conn.execute("SELECT version FROM svti_jobs_migrations ORDER BY 1").fetchall()
        assert versions == [(v,) for v in range(1, schema.LATEST_VERSION + 1)]
        assert conn.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 1


def test_migration_is_idempotent(empty_dsn: str) -> None:
    with create_job_queue(empty_dsn) as queue:
        assert queue.migrate() == []
    with create_job_queue(empty_dsn) as queue:
        assert queue.migrate() == []


def _first_use(dsn: str, table: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        with create_job_queue(dsn, table=table) as queue:
            queue.enqueue("t")
        out.put("ok")
    except Exception as exc:  # reported to the parent
        out.put(repr(exc))


def test_racing_first_use_migrations_all_succeed(empty_dsn: str) -> None:
    ctx = mp.get_context("spawn")
    n = 6
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(empty_dsn, "raced", barrier, out))
             for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == ["ok"] * n
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM raced").fetchone()[0] == n
        assert conn.execute("SELECT count(*) FROM raced_migrations").fetchone()[0] == (
            schema.LATEST_VERSION)  # each version applied once


LEGACY_DDL = """
CREATE TABLE svti_jobs (
    svti_jobs_id BIGSERIAL PRIMARY KEY,
    queue TEXT NOT NULL,
    payload JSONB,
    request_id TEXT,
    claimed_at TIMESTAMPTZ,
    claimed_until TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ DEFAULT now()
);
CREATE INDEX idx_svti_jobs_queue_pending ON svti_jobs (queue, svti_jobs_id)
    WHERE claimed_at IS NULL;
CREATE INDEX idx_svti_jobs_visibility ON svti_jobs (claimed_until)
    WHERE claimed_at IS NOT NULL;
INSERT INTO svti_jobs (queue, payload, request_id, created_at) VALUES
    ('email', '{"to": "a@example.com"}', 'req-a', now() - interval '2 minutes'),
    ('email', NULL, NULL, NULL),
    ('sms', '"hi"', 'req-c', now() - interval '1 minute');
INSERT INTO svti_jobs (queue, payload, claimed_at, claimed_until, attempts)
    VALUES ('email', '{"held": true}', now() - interval '1 minute', now() - interval '1 second', 1),
           ('email', '{"live": true}', now(), now() + interval '1 hour', 2);
"""


def test_upstream_layout_is_migrated_forward_without_losing_rows(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(LEGACY_DDL)
    with create_job_queue(empty_dsn) as queue, psycopg.connect(empty_dsn) as conn:
        rows = conn.execute(
            "SELECT id, type, payload, request_id, state, attempts, lease_token IS NOT NULL "
            "FROM svti_jobs ORDER BY id").fetchall()
        assert rows == [
            (1, "email", {"to": "a@example.com"}, "req-a", "pending", 0, False),
            (2, "email", None, None, "pending", 0, False),
            (3, "sms", "hi", "req-c", "pending", 0, False),
            (4, "email", {"held": True}, None, "claimed", 1, True),
            (5, "email", {"live": True}, None, "claimed", 2, True),
        ]
        assert queue.pending() == 4  # three ready, one expired lease
        # The expired legacy claim comes back first; the live one stays held.
        claimed = [queue.claim(types=["email"]) for _ in range(4)]
        assert [j.id if j else None for j in claimed] == [4, 1, 2, None]
        assert claimed[0].attempts == 2
        assert queue.enqueue("email") == 6  # the old sequence carries on
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'svti_jobs'")}
        assert "idx_svti_jobs_queue_pending" not in indexes
        assert "svti_jobs_ready_idx" in indexes


def test_version_1_is_migrated_forward_keeping_its_rows(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _as_version_1(conn)
        conn.execute("INSERT INTO svti_jobs (type, payload) VALUES ('old', '{\"kept\": true}')")
    with create_job_queue(dsn) as queue:
        assert queue.claim().payload == {"kept": True}
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT max(version) FROM svti_jobs_migrations").fetchone() == (
            schema.LATEST_VERSION,)
        assert conn.execute("SELECT to_regclass('svti_jobs_rates') IS NOT NULL").fetchone()[0]


def test_a_foreign_table_is_refused(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE svti_jobs (id int, name text)")
    with pytest.raises(SchemaError, match="not created by jobq"):
        create_job_queue(empty_dsn)


def test_a_newer_schema_is_refused(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO svti_jobs_migrations (version, name) VALUES (999, 'future')")
    with pytest.raises(SchemaError, match="newer"):
        create_job_queue(dsn)


def test_printed_ddl_can_be_applied_by_hand(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(schema.ddl("manual").encode())
    with create_job_queue(empty_dsn, table="manual") as queue:
        assert queue.migrate() == []
        queue.enqueue("t")
        queue.complete(queue.claim())
        keyed = queue.enqueue("t", idempotency_key="k")
        assert queue.enqueue_many([{"type": "t", "idempotency_key": "k"}]) == [keyed]
    # The same indexes as a migrated install, not just the same tables.
    with create_job_queue(empty_dsn, table="migrated"), psycopg.connect(empty_dsn) as conn:
        def indexes(table: str) -> set[str]:
            return {r[0].replace(table, "T") for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename LIKE %s", (table + "%",))}
        assert indexes("manual") == indexes("migrated")


def test_ddl_cli_prints_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    schema.main(["myapp.jobs"])
    out = capsys.readouterr().out
    assert 'CREATE TABLE "myapp"."jobs" (' in out and '"myapp"."jobs_events"' in out


def test_schema_qualified_and_custom_tables_are_independent(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
    with create_job_queue(empty_dsn, table="app.jobs") as a, \
            create_job_queue(empty_dsn, table="other_jobs") as b:
        a.enqueue("t", "in app")
        b.enqueue("t", "in other")
        assert a.claim().payload == "in app"
        assert b.claim().payload == "in other"
        assert a.claim() is None


@pytest.mark.parametrize("name", [
    "svti_jobs; DROP TABLE x", 'a"b', "pg_jobs", "PG_catalog.jobs", "information_schema.x",
    "", "a.b.c", "1jobs", "x" * 41, "jobs--", "sch.", 42, None,
])
def test_unsafe_table_names_are_rejected_before_any_sql(name: Any) -> None:
    # An unreachable DSN proves no connection was attempted.
    with pytest.raises(InvalidInputError):
        JobQueue("postgresql://nobody@127.0.0.1:1/none", table=name)
    with pytest.raises(InvalidInputError):
        Names.parse(name)


def test_default_lease_is_validated() -> None:
    for bad in (0, -5, float("nan"), "30s", True):
        with pytest.raises(InvalidInputError):
            JobQueue("postgresql://nobody@127.0.0.1:1/none", default_lease_ms=bad)


def test_version_2_keys_stay_held_through_the_migration(dsn: str) -> None:
    """Keys as version 2 held them: by a live job, or by a `completed` event whose `enqueued`
    event an older clear had removed, and a key reused after a delete (two `enqueued` events).
    After migrating, none of them is free."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _as_version_6(conn)
        conn.execute("DROP INDEX svti_jobs_events_key_idx")
        conn.execute("CREATE INDEX svti_jobs_events_idempotency_idx ON svti_jobs_events "
                     "(idempotency_key, id) WHERE event = 'completed' "
                     "AND idempotency_key IS NOT NULL")
        conn.execute("DELETE FROM svti_jobs_migrations WHERE version > 2")
        live = conn.execute("INSERT INTO svti_jobs (type, idempotency_key) "
                            "VALUES ('t', 'live-key') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO svti_jobs_events (job_id, type, event, idempotency_key) "
                     "VALUES (1000, 't', 'completed', 'done-key')")
        conn.execute("INSERT INTO svti_jobs_events (job_id, type, event, idempotency_key) "
                     "VALUES (2000, 't', 'enqueued', 'reused'), (2000, 't', 'deleted', NULL), "
                     "(3000, 't', 'enqueued', 'reused'), (3000, 't', 'completed', 'reused')")
    with create_job_queue(dsn) as queue:
        assert queue.enqueue("t", idempotency_key="live-key") == live
        assert queue.enqueue("t", idempotency_key="done-key") == 1000
        assert queue.enqueue_many([{"type": "t", "idempotency_key": "reused"}]) == [3000]
        queue.complete(live)
        assert queue.enqueue("t", idempotency_key="live-key") == live
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM svti_jobs").fetchone() == (0,)
        assert conn.execute("SELECT max(version) FROM svti_jobs_migrations").fetchone() == (
            schema.LATEST_VERSION,)


def _as_version_6(conn: psycopg.Connection[Any]) -> None:
    """Replace a current install by what version 6 left: the history in one table, whose
    unique index of `enqueued` events holds the idempotency keys."""
    conn.execute("DROP TABLE svti_jobs, svti_jobs_events, svti_jobs_keys, svti_jobs_rates, "
                 "svti_jobs_pauses, svti_jobs_workers, svti_jobs_schedules, svti_jobs_limits, "
                 "svti_jobs_limit_keys, svti_jobs_limit_lanes, "
                 "svti_jobs_migrations")
    conn.execute("DROP FUNCTION svti_jobs_events_ahead, svti_jobs_events_retire")
    st = Statements(Names.parse("svti_jobs"))
    conn.execute(st.create_migrations)
    for version, name, build in schema.MIGRATIONS[:6]:
        for statement in build(st, None):
            conn.execute(statement)
        conn.execute(st.record_migration, {"version": version, "name": name})


def _as_version_4(conn: psycopg.Connection[Any]) -> None:
    """Take a current install back to what version 4 left: no cancelled state, lease lengths,
    kept payloads, pauses or worker registry."""
    _as_version_6(conn)
    conn.execute("DROP TABLE svti_jobs_pauses, svti_jobs_workers")
    conn.execute("DROP INDEX svti_jobs_cancelled_idx, svti_jobs_cancelled_type_idx, "
                 "svti_jobs_lease_type_idx")
    conn.execute("CREATE INDEX svti_jobs_lease_idx ON svti_jobs (lease_until, id) "
                 "WHERE state = 'claimed'")
    conn.execute("ALTER TABLE svti_jobs DROP COLUMN lease_ms, "
                 "DROP CONSTRAINT svti_jobs_state_check, ADD CONSTRAINT svti_jobs_state_check "
                 "CHECK (state IN ('pending', 'claimed', 'failed'))")
    conn.execute("ALTER TABLE svti_jobs_events DROP COLUMN payload, "
                 "DROP CONSTRAINT svti_jobs_events_event_check, "
                 "ADD CHECK (event IN ('enqueued', 'claimed', 'completed', 'failed', 'retried', "
                 "'extended', 'recovered', 'released', 'deleted'))")
    conn.execute("DELETE FROM svti_jobs_migrations WHERE version > 4")


def test_version_4_is_migrated_forward_keeping_its_rows(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _as_version_4(conn)
        # PostgreSQL named version 4's unnamed check as version 5 names it explicitly.
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname = "
                            "'svti_jobs_events_event_check'").fetchone() == (1,)
        conn.execute("INSERT INTO svti_jobs (type, state, failed_at, last_error) "
                     "VALUES ('old', 'failed', now(), 'x')")
        conn.execute("INSERT INTO svti_jobs (type) VALUES ('old')")
    with create_job_queue(dsn) as queue:
        job = queue.claim()
        assert job is not None and job.type == "old"
        admin = Admin(queue)
        assert admin.cancel([job.id]).changed == 1
        assert [r.state for r in admin.list_jobs("state:cancelled").rows] == ["cancelled"]
        assert [r.state for r in admin.list_jobs("state:failed").rows] == ["failed"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT max(version) FROM svti_jobs_migrations").fetchone() == (
            schema.LATEST_VERSION,)
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                            "'svti_jobs_cancelled_idx'::regclass").fetchone() == (True,)
        # migration 6: the claimed jobs' index leads with the type, in place of the old one
        assert conn.execute("SELECT to_regclass('svti_jobs_lease_idx'), "
                            "to_regclass('svti_jobs_lease_type_idx') IS NOT NULL"
                            ).fetchone() == (None, True)


def _as_version_1(conn: psycopg.Connection[Any]) -> None:
    """Take a current install back to what version 1 left (tests of the upgrade path)."""
    _as_version_4(conn)
    conn.execute("DROP TABLE svti_jobs_rates")
    conn.execute("DROP INDEX svti_jobs_failed_type_idx")
    conn.execute("DROP INDEX svti_jobs_events_key_idx")
    conn.execute("CREATE INDEX svti_jobs_events_idempotency_idx ON svti_jobs_events "
                 "(idempotency_key, id) WHERE event = 'completed' "
                 "AND idempotency_key IS NOT NULL")
    conn.execute("DELETE FROM svti_jobs_migrations WHERE version > 1")


def test_an_upgrade_builds_its_indexes_without_blocking_writers(dsn: str) -> None:
    """A rolling deploy: an older worker's write transaction is open while a new one upgrades.
    A plain CREATE INDEX would queue every later write behind its SHARE lock; CONCURRENTLY
    lets them through."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _as_version_1(conn)
    older = psycopg.connect(dsn, autocommit=True)
    writer = psycopg.connect(dsn, autocommit=True)
    watcher = psycopg.connect(dsn, autocommit=True)
    errors: list[BaseException] = []

    def upgrade() -> None:
        try:
            with create_job_queue(dsn) as queue:
                queue.migrate()
        except BaseException as exc:
            errors.append(exc)

    try:
        older.execute("BEGIN")
        older.execute("INSERT INTO svti_jobs (type) VALUES ('older')")
        thread = threading.Thread(target=upgrade)
        thread.start()
        deadline = time.monotonic() + 30
        while not watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                "'CREATE INDEX CONCURRENTLY%%' AND wait_event_type = 'Lock'").fetchone()[0]:
            assert time.monotonic() < deadline and thread.is_alive(), errors
            time.sleep(0.05)
        writer.execute("SET lock_timeout = '5s'")
        writer.execute("INSERT INTO svti_jobs (type) VALUES ('during')")  # not blocked
        older.execute("COMMIT")
        thread.join(30)
        assert not thread.is_alive() and errors == []
    finally:
        for conn in (older, writer, watcher):
            conn.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT max(version) FROM svti_jobs_migrations").fetchone() == (
            schema.LATEST_VERSION,)
        assert conn.execute(
            "SELECT count(*) FILTER (WHERE NOT indisvalid), count(*) FROM pg_index "
            "WHERE indrelid IN ('svti_jobs'::regclass, 'svti_jobs_events'::regclass) "
            "AND indexrelid::regclass::text IN "
            "('svti_jobs_failed_type_idx', 'svti_jobs_events_keyed_idx', "
            "'svti_jobs_cancelled_idx', 'svti_jobs_cancelled_type_idx')").fetchone() == (0, 4)


def test_an_invalid_index_left_by_an_interrupted_build_is_rebuilt(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _as_version_1(conn)
        # What a CONCURRENTLY build that was cancelled leaves: an index marked invalid.
        conn.execute("CREATE INDEX svti_jobs_failed_type_idx ON svti_jobs (type) "
                     "WHERE state = 'failed'")
        conn.execute("UPDATE pg_index SET indisvalid = false "
                     "WHERE indexrelid = 'svti_jobs_failed_type_idx'::regclass")
    with create_job_queue(dsn) as queue:
        queue.enqueue("t")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                            "'svti_jobs_failed_type_idx'::regclass").fetchone() == (True,)


@pytest.mark.parametrize(("change", "message"), [
    ("ALTER TABLE svti_jobs DROP COLUMN claimed_until", "no claimed_until"),
    ("ALTER TABLE svti_jobs ALTER COLUMN attempts TYPE text", "attempts is text, not integer"),
    ("ALTER TABLE svti_jobs ALTER COLUMN request_id TYPE integer USING NULL",
     "request_id is integer"),
    ("ALTER TABLE svti_jobs RENAME COLUMN svti_jobs_id TO ident", "no recognisable id column"),
])
def test_the_legacy_upgrade_checks_every_column_it_relies_on(
    empty_dsn: str, change: str, message: str
) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(LEGACY_DDL)
        conn.execute(change)
    with JobQueue(empty_dsn) as queue, pytest.raises(SchemaError, match=message):
        queue.enqueue("t")
    with psycopg.connect(empty_dsn) as conn:  # refused before anything changed
        assert conn.execute("SELECT count(*) FROM svti_jobs").fetchone() == (5,)
        assert conn.execute("SELECT to_regclass('svti_jobs_events')").fetchone() == (None,)


def test_the_legacy_upgrade_adds_a_missing_created_at(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(LEGACY_DDL)
        conn.execute("ALTER TABLE svti_jobs DROP COLUMN created_at")
    with create_job_queue(empty_dsn) as queue:
        assert queue.pending() == 4
        job = queue.claim()
        assert job is not None and job.created_at is not None


def _old_history(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """A version 6 history over 30 days: completed jobs (every tenth keyed), live jobs of
    every state with their old timelines (two keyed), and a key freed by a delete. Returns
    the keys held, with their holders."""
    conn.execute("""
        INSERT INTO svti_jobs_events (occurred_at, job_id, type, event, request_id, attempt,
                                      idempotency_key, result)
        SELECT now() - interval '30 days' + g * interval '1 minute', g / 3, 't',
               (ARRAY['enqueued', 'claimed', 'completed'])[1 + g % 3], 'req-' || g / 3, 1,
               CASE WHEN g % 3 = 0 AND g / 3 % 10 = 0 THEN 'done-' || g / 3 END,
               CASE WHEN g % 3 = 2 THEN jsonb_build_object('n', g) END
        FROM generate_series(3, 3 * 14000 - 1) g""")
    conn.execute("SELECT setval(pg_get_serial_sequence('svti_jobs', 'id'), 20000)")
    for state, key in (("pending", "live-a"), ("claimed", None), ("failed", "live-b"),
                       ("cancelled", None), ("pending", None)):
        job = conn.execute(
            "INSERT INTO svti_jobs (type, state, idempotency_key, lease_token, lease_until, "
            "failed_at) VALUES ('t', %s, %s, CASE WHEN %s = 'claimed' THEN gen_random_uuid() "
            "END, CASE WHEN %s = 'claimed' THEN now() END, CASE WHEN %s IN ('failed', "
            "'cancelled') THEN now() END) RETURNING id",
            (state, key, state, state, state)).fetchone()[0]
        conn.execute("INSERT INTO svti_jobs_events (occurred_at, job_id, type, event, "
                     "idempotency_key) VALUES (now() - interval '20 days', %s, 't', 'enqueued', "
                     "%s), (now() - interval '19 days', %s, 't', 'claimed', NULL)",
                     (job, key, job))
    # `freed-key`'s job was deleted, which freed the key by clearing it from its event
    conn.execute("INSERT INTO svti_jobs_events (job_id, type, event, idempotency_key) VALUES "
                 "(30000, 't', 'enqueued', NULL), (30000, 't', 'deleted', NULL)")
    return dict(conn.execute(
        "SELECT idempotency_key, job_id FROM svti_jobs_events "
        "WHERE event = 'enqueued' AND idempotency_key IS NOT NULL").fetchall())


#: Over the columns a version 6 history has: later versions add columns (NULL in old rows).
_CHECKSUM = ("SELECT count(*), md5(string_agg((e.id, e.occurred_at, e.job_id, e.type, e.event, "
             "e.request_id, e.attempt, e.worker, e.reason, e.result, e.idempotency_key, "
             "e.payload)::text, '|' ORDER BY e.id)), max(e.id) FROM svti_jobs_events AS e")


def _partitions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return dict(conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits AS i "
        "JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'svti_jobs_events'::regclass").fetchall())


def test_version_6_history_becomes_a_partition_without_losing_a_row(dsn: str) -> None:
    """Issue 12: every row of a version 6 history, and every key it holds, survive the
    partitioning, and the rows are not copied: the old table, with its indexes, is attached
    as the first partition, up to the bound an early step validated while writers went on
    (midnight UTC after tomorrow). Event ids carry on above the old ones."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _as_version_6(conn)
        held = _old_history(conn)
        before = conn.execute(_CHECKSUM).fetchone()
        files = dict(conn.execute(
            "SELECT relname, relfilenode FROM pg_class WHERE relname IN "
            "('svti_jobs_events', 'svti_jobs_events_job_idx', 'svti_jobs_events_request_idx', "
            "'svti_jobs_events_completed_idx', 'svti_jobs_events_at_idx')").fetchall())
    assert before[0] > 40_000 and len(held) == 1399 + 2
    with create_job_queue(dsn) as queue:
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(_CHECKSUM).fetchone() == before
            parts = _partitions(conn)
            bound = conn.execute("SELECT date_trunc('day', now(), 'UTC') + interval '2 days'"
                                 ).fetchone()[0]
            assert parts.pop("svti_jobs_events_legacy") == conn.execute(
                "SELECT format('FOR VALUES FROM (MINVALUE) TO (%%L)', %s::timestamptz)",
                (bound,)).fetchone()[0]
            assert parts.pop("svti_jobs_events_default") == "DEFAULT"
            assert len(parts) >= 1  # the days from the bound on
            after = dict(conn.execute(
                "SELECT relname, relfilenode FROM pg_class WHERE relname IN "
                "('svti_jobs_events_legacy', 'svti_jobs_events_legacy_job', "
                "'svti_jobs_events_legacy_request', 'svti_jobs_events_legacy_done', "
                "'svti_jobs_events_legacy_at')").fetchall())
            assert sorted(after.values()) == sorted(files.values())  # the same files
            assert dict(conn.execute("SELECT key, job_id FROM svti_jobs_keys")) == held
        for key, holder in held.items():
            assert queue.enqueue("t", idempotency_key=key) == holder
        assert queue.enqueue("t", idempotency_key="freed-key") not in held.values()
        fresh = queue.enqueue("t")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT min(id) FROM svti_jobs_events WHERE job_id = %s",
                            (fresh,)).fetchone()[0] > before[2]
        assert conn.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 5 + 2


def test_a_history_the_early_bound_cannot_hold_is_attached_by_a_scan(dsn: str) -> None:
    """A row dated after the early bound: the early check fails to validate and is dropped
    (nothing later trips on it), and the migration attaches the table up to the day after
    that row, reading it under its lock. Without a connection of its own (here a given
    one) the migration takes that path too."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _as_version_6(conn)
        _old_history(conn)
        conn.execute("INSERT INTO svti_jobs_events (occurred_at, job_id, type, event) "
                     "VALUES (now() + interval '5 days', 1, 't', 'claimed')")
        before = conn.execute(_CHECKSUM).fetchone()
    with create_job_queue(dsn):
        pass
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(_CHECKSUM).fetchone() == before
        assert conn.execute("SELECT count(*) FROM pg_constraint "
                            "WHERE conname = 'svti_jobs_events_bound'").fetchone() == (0,)
        assert conn.execute(
            "SELECT tableoid::regclass::text FROM svti_jobs_events "
            "WHERE occurred_at > now() + interval '4 days'").fetchone() == (
                "svti_jobs_events_legacy",)
        _as_version_6(conn)
        _old_history(conn)
        before = conn.execute(_CHECKSUM).fetchone()
        with JobQueue(conn) as queue:
            queue.migrate()
        assert conn.execute(_CHECKSUM).fetchone() == before
        assert _partitions(conn)["svti_jobs_events_legacy"] == conn.execute(
            "SELECT format('FOR VALUES FROM (MINVALUE) TO (%L)', "
            "date_trunc('day', now(), 'UTC') + interval '1 day')").fetchone()[0]


def test_the_queue_table_is_vacuumed_by_its_dead_rows_not_its_size(dsn: str) -> None:
    """By default autovacuum waits for 20% of a table to be dead: behind a 1M backlog, 200,000
    dead versions that every claim's seek steps over. Migration 8 sets a fixed threshold."""
    with psycopg.connect(dsn) as conn:
        (options,) = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'svti_jobs'::regclass").fetchone()
    assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=1000",
            "autovacuum_vacuum_cost_delay=0", "fillfactor=80"} <= set(options)


def test_version_11_gains_the_trace_context_and_the_history_moves_it(dsn: str) -> None:
    """Migration 12 adds the producer's trace context to jobs and history, and replaces the
    history's functions, which moved rows by a fixed list of columns, with ones that read the
    columns from the catalog: a row's trace context moves with it into a new day."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in ("svti_jobs", "svti_jobs_events"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN traceparent, DROP COLUMN tracestate")
        # Stand-ins for version 11's functions, which would lose the new columns.
        conn.execute("CREATE OR REPLACE FUNCTION svti_jobs_events_ahead(days integer, "
                     "since timestamptz DEFAULT NULL) RETURNS integer LANGUAGE sql "
                     "AS 'SELECT -1'")
        conn.execute("CREATE OR REPLACE FUNCTION svti_jobs_events_retire(part text, "
                     "held bigint[]) RETURNS bigint LANGUAGE sql AS 'SELECT -1::bigint'")
        conn.execute("DELETE FROM svti_jobs_migrations WHERE version > 11")
        conn.execute("INSERT INTO svti_jobs (type) VALUES ('old')")
    with create_job_queue(dsn) as queue:
        job = queue.claim()
        assert job is not None and job.type == "old"
        assert (job.traceparent, job.tracestate) == (None, None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM svti_jobs_migrations").fetchone() == (
            schema.LATEST_VERSION,)
        day = conn.execute("SELECT date_trunc('day', now(), 'UTC') + interval '30 days'"
                           ).fetchone()[0]
        conn.execute("INSERT INTO svti_jobs_events (occurred_at, job_id, type, event, "
                     "traceparent, tracestate) VALUES (%s + interval '1 hour', %s, 'old', "
                     "'enqueued', 'tp', 'ts')", (day, job.id))
        where = ("SELECT tableoid::regclass::text, traceparent, tracestate FROM svti_jobs_events "
                 "WHERE traceparent IS NOT NULL")
        assert conn.execute(where).fetchall() == [("svti_jobs_events_default", "tp", "ts")]
        assert conn.execute("SELECT svti_jobs_events_ahead(31, %s)", (day,)).fetchone() == (1,)
        assert conn.execute(where).fetchall() == [
            (f"svti_jobs_events_{day:%Y%m%d}", "tp", "ts")]
        assert conn.execute("SELECT proconfig FROM pg_proc WHERE oid = "
                            "'svti_jobs_events_ahead'::regproc").fetchone() == (
            ["search_path=pg_catalog, public, pg_temp"],)
        assert conn.execute("SELECT prosrc LIKE '%attisdropped%' FROM pg_proc WHERE oid = "
                            "'svti_jobs_events_retire'::regproc").fetchone() == (True,)
