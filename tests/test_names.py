"""Table names at their limits and in every spelling (issue 10, F3): a NOTIFY channel stops at
63 bytes, and `svti_x` and `public.svti_x` are one table, so they must share one channel and
one migration lock. Real Postgres throughout."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from jobq_core import JobQueue, SchemaError
from jobq_core.schema import LATEST_VERSION

LONGEST = "s" * 40 + "." + "t" * 40  # Names.parse allows 40 + 40 characters


def _listener(dsn: str, channel: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return conn


def _heard(conn: psycopg.Connection[Any]) -> list[str]:
    return [n.channel for n in conn.notifies(timeout=0.5)]


def test_the_longest_name_enqueues_and_a_waited_on_completion_is_heard(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier("s" * 40)))
    with JobQueue(dsn, table=LONGEST) as queue:
        queue.prepare()
        assert len(queue.names.done_channel.encode()) <= 63
        with _listener(dsn, queue.names.channel) as listener:
            job_id = queue.enqueue("t", payload={"n": 1})
            assert _heard(listener) == [queue.names.channel]  # the trigger's channel is ours
        other_id = queue.enqueue("t")
        results: list[Any] = []
        waiter = threading.Thread(target=lambda: results.append(queue.wait(job_id, 10)))
        waiter.start()
        # Armed first: arming locks the job's row for a moment, and a claim skips locked rows.
        deadline = time.monotonic() + 10
        while not db.execute(sql.SQL("SELECT has_waiters FROM {} WHERE id = %s").format(
                sql.Identifier("s" * 40, "t" * 40)), (job_id,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the waiter never armed"
            time.sleep(0.02)
        jobs = queue.claim_many(2)
        assert sorted(j.id for j in jobs) == [job_id, other_id]
        # Completing a job that somebody waits on notifies the done channel, in one ack batch
        # with a job nobody waits on.
        done = ["done" if j.id == job_id else None for j in jobs]
        assert sorted(queue.complete_many(jobs, done)) == [job_id, other_id]
        waiter.join(10)
        assert results == ["done"]


def test_two_spellings_of_one_table_share_channel_and_migration_lock(dsn: str) -> None:
    with JobQueue(dsn, table="svti_x") as plain, JobQueue(dsn, table="public.svti_x") as full:
        plain.prepare()
        full.prepare()
        assert plain.names.channel == full.names.channel
        assert plain.names.lock_key == full.names.lock_key == "jobq:public.svti_x"
        assert plain.table == "svti_x"  # messages keep the caller's spelling
        with _listener(dsn, plain.names.channel) as listener:
            full.enqueue("t")
            assert _heard(listener) == [plain.names.channel]
            plain.enqueue("t")
            assert _heard(listener) == [plain.names.channel]


def test_an_unqualified_name_follows_the_dsn_search_path(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    db.execute("CREATE SCHEMA tenant_a")
    db.execute("CREATE SCHEMA tenant_b")
    with JobQueue(make_conninfo(dsn, options="-c search_path=tenant_a")) as a, \
            JobQueue(make_conninfo(dsn, options="-c search_path=tenant_b")) as b:
        a.enqueue("t")
        b.enqueue("t")
        assert a.names.schema == "tenant_a" and b.names.schema == "tenant_b"
        assert a.names.channel != b.names.channel  # tenants do not wake each other
    tables = db.execute("SELECT table_schema FROM information_schema.tables "
                        "WHERE table_name = 'svti_jobs' ORDER BY 1").fetchall()
    assert ("tenant_a",) in tables and ("tenant_b",) in tables


def test_a_search_path_with_no_schema_is_a_schema_error(dsn: str) -> None:
    with JobQueue(make_conninfo(dsn, options="-c search_path=no_such_schema")) as queue, \
            pytest.raises(SchemaError, match="qualify the table"):
        queue.enqueue("t")


def test_migration_4_moves_a_v3_trigger_to_the_resolved_channel(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    with JobQueue(dsn) as queue:
        queue.prepare()
        channel = queue.names.channel
    # What a version 3 install looks like: the channel baked into the trigger's argument.
    db.execute("""CREATE OR REPLACE FUNCTION svti_jobs_notify() RETURNS trigger
                  LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify(TG_ARGV[0], ''); RETURN NULL;
                  END $$""")
    db.execute("DROP TRIGGER svti_jobs_notify_insert ON svti_jobs")
    db.execute("CREATE TRIGGER svti_jobs_notify_insert AFTER INSERT ON svti_jobs "
               "FOR EACH STATEMENT EXECUTE FUNCTION svti_jobs_notify('jobq_svti_jobs')")
    db.execute("DELETE FROM svti_jobs_migrations WHERE version >= 4")
    with JobQueue(dsn) as queue, _listener(dsn, channel) as listener:
        queue.enqueue("t")  # first use applies migration 4
        assert _heard(listener) == [channel]
    assert db.execute("SELECT max(version) FROM svti_jobs_migrations").fetchone() == (
        LATEST_VERSION,)
