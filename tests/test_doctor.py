"""`jobq doctor` names every holder of the xmin horizon with its fix, and never recommends a
VACUUM that cannot help. Real Postgres: real sessions, prepared transactions and slots."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.sql
import pytest
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from jobq_cli.commands import app
from jobq_core import JobQueue, NewJob, create_job_queue
from jobq_core.admin import Admin, Finding
from jobq_core.embedded import EmbeddedPostgres

#: Generous: statistics reach pg_stat_all_tables within about a second.
STATS_WAIT = 20.0


def make_dead_rows(queue: JobQueue, n: int = 20) -> None:
    """Dead rows in the queue's table, made by other sessions' committed transactions."""
    queue.enqueue_many([NewJob("churn", i) for i in range(n)])
    for job in queue.claim_many(n):
        queue.complete(job)


def dead_rows(db: psycopg.Connection[Any]) -> int:
    return int(db.execute("SELECT coalesce(n_dead_tup, 0) FROM pg_stat_all_tables "
                          "WHERE relid = 'svti_jobs'::regclass").fetchone()[0])


def wait_for_dead_rows(db: psycopg.Connection[Any]) -> None:
    deadline = time.monotonic() + STATS_WAIT
    while dead_rows(db) == 0:
        assert time.monotonic() < deadline, "the statistics never showed the dead rows"
        time.sleep(0.2)


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def holder_of(findings: list[Finding], label: str) -> Finding:
    matches = [f for f in findings if f.check == f"xmin holder {label}"]
    assert matches, f"doctor did not name {label}: {[f.check for f in findings]}"
    return matches[0]


def open_reader(dsn: str) -> psycopg.Connection[Any]:
    """Idle in transaction with a REPEATABLE READ snapshot: holds back by backend_xmin."""
    conn = psycopg.connect(dsn, application_name="report-reader")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.execute("SELECT count(*) FROM svti_jobs").fetchone()
    return conn


def open_writer(dsn: str, queue: JobQueue) -> psycopg.Connection[Any]:
    """Idle in a READ COMMITTED transaction that updated a row: no snapshot while idle, so
    it holds the horizon back by its backend_xid only."""
    job_id = queue.enqueue("held", None)
    conn = psycopg.connect(dsn, application_name="slow-writer")
    conn.execute("UPDATE svti_jobs SET priority = 1 WHERE id = %s", (job_id,))
    return conn


def pid_of(conn: psycopg.Connection[Any]) -> int:
    return conn.info.backend_pid


@pytest.fixture
def queue(dsn: str) -> Iterator[JobQueue]:
    with JobQueue(dsn) as q:
        yield q


def test_a_young_repeatable_read_reader_is_named_and_vacuum_is_not_advised(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    reader = open_reader(dsn)
    try:
        make_dead_rows(queue)
        wait_for_dead_rows(db)
        time.sleep(1.5)  # past "in flight"; still far below the old 300 s threshold
        findings = Admin(queue).doctor()
        found = holder_of(findings, f"pid {pid_of(reader)}")
        assert found.status == "warn"
        assert "report-reader" in found.detail and "idle in transaction" in found.detail
        assert "snapshot" in found.detail
        assert found.fix and f"pg_terminate_backend({pid_of(reader)})" in found.fix
        assert found.facts is not None and found.facts["pid"] == pid_of(reader)
        assert found.facts["application_name"] == "report-reader"
        assert found.facts["seconds"] >= 1.0
        checks = by_check(findings)
        assert checks["xmin horizon"].status == "warn"
        table = checks["table svti_jobs"]
        assert table.status == "warn" and table.fix is not None
        assert table.fix.startswith("end what holds the xmin horizon first")
        assert f"pid {pid_of(reader)}" in table.fix
        assert not any((f.fix or "").startswith("VACUUM") for f in findings)
    finally:
        reader.close()
    # Once the reader is gone, nothing holds the horizon and vacuum is the fix again.
    after = by_check(Admin(queue).doctor())
    assert after["xmin horizon"].status == "ok"
    assert not any(c.startswith("xmin holder") for c in after)
    assert after["table svti_jobs"].fix is None or \
        after["table svti_jobs"].fix.startswith("VACUUM")


def test_a_writer_holding_only_a_transaction_id_is_named(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    writer = open_writer(dsn, queue)
    try:
        state = db.execute("SELECT backend_xmin IS NULL, backend_xid IS NOT NULL "
                           "FROM pg_stat_activity WHERE pid = %s", (pid_of(writer),)).fetchone()
        assert state == (True, True)  # what the old check looked at, it does not have
        make_dead_rows(queue)
        wait_for_dead_rows(db)
        time.sleep(1.5)
        findings = Admin(queue).doctor()
        found = holder_of(findings, f"pid {pid_of(writer)}")
        assert found.status == "warn" and "transaction id" in found.detail
        assert "slow-writer" in found.detail and found.facts is not None
        assert found.facts["via"] == "transaction id"
        assert found.fix and f"pg_terminate_backend({pid_of(writer)})" in found.fix
        assert "end what holds the xmin horizon first" in (
            by_check(findings)["table svti_jobs"].fix or "")
    finally:
        writer.close()


def test_doctor_json_lists_every_holder(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = open_reader(dsn)
    writer = open_writer(dsn, queue)
    try:
        make_dead_rows(queue)
        wait_for_dead_rows(db)
        time.sleep(1.5)
        monkeypatch.setenv("JOBQ_DSN", dsn)
        monkeypatch.delenv("DATABASE_URL", raising=False)
        result = CliRunner().invoke(app, ["doctor", "--json"])
        assert result.exit_code == 0, result.output
        findings = json.loads(result.stdout)
        holders = {f["facts"]["pid"]: f for f in findings
                   if f["check"].startswith("xmin holder")}
        assert set(holders) >= {pid_of(reader), pid_of(writer)}
        for pid in (pid_of(reader), pid_of(writer)):
            entry = holders[pid]
            assert entry["status"] == "warn"
            assert f"pg_terminate_backend({pid})" in entry["fix"]
            assert {"application_name", "state", "seconds", "xid_age", "via"} <= set(
                entry["facts"])
        text = CliRunner().invoke(app, ["doctor"]).stdout
        assert f"WARN xmin holder pid {pid_of(reader)}" in text
        assert f"WARN xmin holder pid {pid_of(writer)}" in text
    finally:
        reader.close()
        writer.close()


def test_no_dead_rows_no_warning_for_a_young_reader(dsn: str, queue: JobQueue) -> None:
    queue.enqueue("t")  # an insert only: nothing dead
    reader = open_reader(dsn)
    try:
        findings = Admin(queue).doctor()
        found = holder_of(findings, f"pid {pid_of(reader)}")
        assert found.status == "ok" and found.fix is None  # listed, not blamed
        assert "no dead rows" in by_check(findings)["xmin horizon"].detail
    finally:
        reader.close()


# -- prepared transactions and slots: on a server that allows them ---------------------------

@pytest.fixture(scope="module")
def featured_server() -> Iterator[str]:
    """A private server with prepared transactions and logical decoding enabled (the shared
    test server usually has max_prepared_transactions = 0)."""
    try:
        server = EmbeddedPostgres(unsafe_fast=True, create_user=True)
    except Exception as exc:  # no server binaries on this machine
        pytest.skip(f"no embedded Postgres to enable prepared transactions on: {exc}")
    server.settings.update({"max_prepared_transactions": "4", "wal_level": "logical"})
    try:
        server.start()
    except Exception as exc:
        server.cleanup()
        pytest.skip(f"could not start a server with prepared transactions: {exc}")
    try:
        yield server.dsn
    finally:
        server.cleanup()


@pytest.fixture
def featured_dsn(featured_server: str) -> Iterator[str]:
    with psycopg.connect(featured_server, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS doctor_featured WITH (FORCE)")
        admin.execute("CREATE DATABASE doctor_featured")
    url = make_conninfo(featured_server, dbname="doctor_featured")
    create_job_queue(url).close()
    yield url
    with psycopg.connect(featured_server, autocommit=True) as admin:
        for (gid,) in admin.execute("SELECT gid FROM pg_prepared_xacts").fetchall():
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(psycopg.sql.SQL("ROLLBACK PREPARED {}").format(gid))
        admin.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
        admin.execute("DROP DATABASE IF EXISTS doctor_featured WITH (FORCE)")


def test_a_prepared_transaction_and_slots_are_named_with_their_fixes(featured_dsn: str) -> None:
    with psycopg.connect(featured_dsn, autocommit=True) as db:
        if int(db.execute("SHOW max_prepared_transactions").fetchone()[0]) == 0:
            pytest.skip("max_prepared_transactions = 0 on this server")
        with JobQueue(featured_dsn) as queue:
            # The slot first: creating one waits for every open transaction, prepared too.
            db.execute("SELECT pg_create_logical_replication_slot('cdc_gone', 'test_decoding')")
            held = queue.enqueue("held")
            with psycopg.connect(featured_dsn) as tx:
                tx.execute("UPDATE svti_jobs SET priority = 2 WHERE id = %s", (held,))
                tx.execute("PREPARE TRANSACTION 'it''s-pending'")
            make_dead_rows(queue)
            wait_for_dead_rows(db)
            findings = Admin(queue).doctor()
    prepared = holder_of(findings, "prepared transaction 'it''s-pending'")
    assert prepared.status == "warn"
    assert prepared.fix is not None
    assert "COMMIT PREPARED 'it''s-pending'" in prepared.fix
    assert "ROLLBACK PREPARED 'it''s-pending'" in prepared.fix
    assert prepared.facts is not None and prepared.facts["name"] == "it's-pending"
    assert "end what holds the xmin horizon first" in (
        by_check(findings)["table svti_jobs"].fix or "")
    slot = holder_of(findings, "catalog slot 'cdc_gone'")
    assert slot.status == "warn"  # inactive: it also keeps WAL
    assert slot.fix is not None and "pg_drop_replication_slot('cdc_gone')" in slot.fix
    assert "catalogs only" in slot.detail
    # A catalog_xmin does not pin the queue's tables, so it is not blamed for their rows.
    table_fix = by_check(findings)["table svti_jobs"].fix or ""
    assert "cdc_gone" not in table_fix
