"""Reads on a streaming replica, against a real one that these tests start: a private primary
on a loopback port, and a hot standby made from it with `pg_basebackup -R` on another.

Replay is paused on the standby (`pg_wal_replay_pause()`) to tell the two servers apart: what
the primary has and the replica has not replayed shows where a read went. Every wait here is
a bounded wait for a condition, never a timing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import psycopg.sql
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool
from textual.widgets import Static
from typer.testing import CliRunner

from jobq_cli.commands import app as cli_app
from jobq_core import (
    AsyncJobQueue,
    DatabaseUnavailableError,
    JobqError,
    JobQueue,
    ReplicaError,
    create_job_queue,
)
from jobq_core.admin import Admin, AsyncAdmin, TraceTail
from jobq_core.embedded import EmbeddedPostgres, find_binaries
from jobq_tui.app import JobqApp
from jobq_tui.screens.trace import TraceScreen

from .conftest import new_database
from .test_tui import SIZE, open_jobs, table_ids
from .tui_helpers import text_of, until

JOBQ = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"
#: A DSN nothing answers at, with a password that must never be printed.
CLOSED = "postgresql://ops:S3cr3tReplicaPw@127.0.0.1:1/nothing"
#: How long a bounded wait for replication may take before the test fails.
REPLICATION_WAIT = 60.0


def _standby_of(primary: EmbeddedPostgres) -> EmbeddedPostgres:
    """A hot standby of `primary`, streaming from it: `pg_basebackup -R` writes its
    primary_conninfo and standby.signal (initdb's pg_hba lets loopback replicate)."""
    standby = EmbeddedPostgres(binaries=primary.bin, create_user=True)
    if standby.user is not None:  # as root, the server's user owns its folder
        entry = pwd.getpwnam(standby.user)
        os.chown(standby.root, entry.pw_uid, entry.pw_gid)
    try:
        standby._cmd("pg_basebackup", "-D", str(standby.data), "-R", "-X", "stream",
                     "-c", "fast", "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                     "postgres", timeout=120)
        standby.start()
    except BaseException:
        standby.cleanup()
        raise
    return standby


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    try:
        binaries = find_binaries()
    except JobqError as exc:
        pytest.skip(f"no PostgreSQL binaries to start a primary and a standby: {exc}")
    if not (binaries / "pg_basebackup").exists():
        pytest.skip(f"no pg_basebackup in {binaries}")
    primary = EmbeddedPostgres(binaries=binaries, create_user=True)
    # Thrown away afterwards; full_page_writes stays on, which a base backup needs.
    primary.settings["fsync"] = "off"
    with primary:
        standby = _standby_of(primary)
        try:
            yield primary, standby
        finally:
            standby.cleanup()


@dataclass
class Pair:
    """One test's database on the primary, and the same database on the standby."""

    primary: str
    replica: str

    def _standby(self, sql: str) -> Any:
        with psycopg.connect(self.replica, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None

    def _caught_up(self, position: str, what: str) -> None:
        """Wait until the standby's `position` (a WAL LSN function) reaches where the
        primary's WAL ends now."""
        with psycopg.connect(self.primary, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        wait_for(lambda: self._standby(f"SELECT {position}() >= '{row[0]}'::pg_lsn"), what)

    def sync(self) -> None:
        """Wait until the standby has replayed everything the primary wrote so far."""
        self._caught_up("pg_last_wal_replay_lsn", "the standby's replay")

    def pause_replay(self) -> None:
        self._standby("SELECT pg_wal_replay_pause()")
        wait_for(lambda: self._standby("SELECT pg_get_wal_replay_pause_state()") == "paused",
                 "replay to pause")

    def resume_replay(self) -> None:
        self._standby("SELECT pg_wal_replay_resume()")

    def received_all(self) -> None:
        """Wait until the standby has received (not replayed) all the primary wrote."""
        self._caught_up("pg_last_wal_receive_lsn", "the standby's receipt")


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + REPLICATION_WAIT
    while True:
        with contextlib.suppress(psycopg.OperationalError):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def pair(servers: tuple[EmbeddedPostgres, EmbeddedPostgres]) -> Iterator[Pair]:
    primary, standby = servers
    url, drop = new_database(primary.dsn)
    create_job_queue(url).close()
    both = Pair(url, make_conninfo(standby.dsn, dbname=conninfo_to_dict(url)["dbname"]))
    both.sync()
    try:
        yield both
    finally:
        both.resume_replay()
        drop()


def failed_job(dsn: str, job_type: str = "mail", request_id: str = "req-r") -> int:
    with JobQueue(dsn) as queue:
        job_id = queue.enqueue(job_type, {"to": "a@b.c"}, request_id=request_id)
        job = queue.claim(types=[job_type])
        assert job is not None and job.id == job_id
        queue.fail(job, reason="smtp down")
    return job_id


def primary_state(dsn: str, job_id: int) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM svti_jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else str(row[0])


# -- the library --------------------------------------------------------------------------------

def test_reads_go_to_the_replica_and_actions_to_the_primary(pair: Pair) -> None:
    job_id = failed_job(pair.primary)
    pair.sync()
    with JobQueue(pair.primary, auto_migrate=False) as primary, \
            JobQueue(pair.replica, auto_migrate=False) as replica:
        admin = Admin(primary, reads=replica)
        assert [r.id for r in admin.list_jobs("state:failed").rows] == [job_id]
        caught_up = admin.replication()
        assert caught_up is not None and caught_up.streaming and caught_up.has_own_writes
        assert caught_up.lag == timedelta(0) and caught_up.caught_up
        parts = conninfo_to_dict(pair.replica)
        assert caught_up.where == f"postgres@127.0.0.1:{parts['port']}/{parts['dbname']}"

        pair.pause_replay()
        fresh = primary.enqueue("mail", request_id="req-r")
        result = admin.retry([job_id])
        assert result.changed == 1 and primary_state(pair.primary, job_id) == "pending"
        # Every read is the replica's, which has not replayed either.
        assert admin.show(job_id).state == "failed"
        assert admin.list_jobs("state:pending").rows == []
        assert [s.failed.value for s in admin.stats()] == [1]
        assert [e.event for e in admin.trace("req-r")] == ["enqueued", "claimed", "failed"]
        pair.received_all()
        behind = admin.replication()
        assert behind is not None and not behind.has_own_writes and not behind.caught_up
        assert behind.replay_pending > 0 and behind.lag is not None
        assert behind.lag > timedelta(0)
        # An action's preview reads the primary: it previews what the action will do.
        assert admin.preview("cancel", [job_id, fresh]).eligible == 2

        pair.resume_replay()
        shown = admin.catch_up(REPLICATION_WAIT)
        assert shown is not None and shown.has_own_writes
        assert admin.show(job_id).state == "pending"
        assert {r.id for r in admin.list_jobs("state:pending").rows} == {job_id, fresh}


def test_the_async_twin_reads_the_replica_and_acts_on_the_primary(pair: Pair) -> None:
    job_id = failed_job(pair.primary)
    pair.sync()
    pair.pause_replay()

    async def scenario() -> None:
        primary = AsyncJobQueue(pair.primary, auto_migrate=False)
        replica = AsyncJobQueue(pair.replica, auto_migrate=False)
        try:
            admin = AsyncAdmin(primary, reads=replica)
            await admin.pause(["mail"], reason="maintenance")
            assert (await admin.retry([job_id])).changed == 1
            assert await admin.pauses() == []  # not replayed yet
            assert (await admin.show(job_id)).state == "failed"
            assert [w.id for w in await admin.workers()] == []
            state = await admin.replication()
            assert state is not None and not state.has_own_writes
            pair.resume_replay()
            state = await admin.catch_up(REPLICATION_WAIT)
            assert state is not None and state.has_own_writes
            assert [p.type for p in await admin.pauses()] == ["mail"]
            assert [s.paused is not None for s in await admin.stats()] == [True]
        finally:
            await primary.close()
            await replica.close()

    asyncio.run(scenario())
    assert primary_state(pair.primary, job_id) == "pending"


def test_a_replica_that_does_not_stream_is_never_called_caught_up(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a WAL receiver, nothing more arrives, so received == replayed says nothing:
    the lag is the age of the last replayed transaction, and `NOT streaming` is said."""
    with psycopg.connect(pair.replica, autocommit=True) as standby:
        row = standby.execute("SHOW primary_conninfo").fetchone()
        assert row is not None and row[0]
        standby.execute("ALTER SYSTEM SET primary_conninfo = ''")
        standby.execute("SELECT pg_reload_conf()")
        try:
            wait_for(lambda: standby.execute(
                "SELECT NOT EXISTS (SELECT FROM pg_stat_wal_receiver)").fetchone()[0],
                "the WAL receiver to stop")
            with JobQueue(pair.primary, auto_migrate=False) as primary, \
                    JobQueue(pair.replica, auto_migrate=False) as replica:
                state = Admin(primary, reads=replica).replication()
            assert state is not None and not state.streaming and not state.caught_up
            assert state.lag is not None and state.lag > timedelta(0)
            monkeypatch.setenv("JOBQ_DSN", pair.primary)
            result = CliRunner().invoke(cli_app, ["status", "--read-dsn", pair.replica])
            assert result.exit_code == 0, result.output
            assert "NOT streaming (no WAL receiver runs)" in " ".join(result.stdout.split())
        finally:
            standby.execute(psycopg.sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                psycopg.sql.Literal(row[0])))
            standby.execute("SELECT pg_reload_conf()")
    pair.sync()


def test_the_trace_follower_reads_the_primary(pair: Pair) -> None:
    """Following needs the primary's order of transaction ids and its NOTIFY: with replay
    paused, the follower still gets every new event at once."""
    with JobQueue(pair.primary, auto_migrate=False) as primary, \
            JobQueue(pair.replica, auto_migrate=False) as replica:
        admin = Admin(primary, reads=replica)
        pair.pause_replay()
        job_id = primary.enqueue("mail", request_id="req-follow")
        tail = TraceTail("req-follow")
        assert [(e.job_id, e.event) for e in admin.poll_trace(tail)] == [(job_id, "enqueued")]
        assert admin.trace("req-follow") == []  # the one-shot trace reads the replica


def test_stats_work_on_a_standby_without_folding(pair: Pair) -> None:
    """A standby cannot write: its stats skip folding the rates, and say what it has."""
    failed_job(pair.primary)
    with JobQueue(pair.primary) as queue:
        queue.enqueue("mail")
    pair.sync()
    with JobQueue(pair.primary, auto_migrate=False) as primary, \
            JobQueue(pair.replica, auto_migrate=False) as replica:
        [mail] = Admin(primary, reads=replica).stats()
    assert (mail.type, mail.ready.value, mail.failed.value) == ("mail", 1, 1)
    assert len(mail.completed_per_min) == 60


def test_a_read_dsn_that_is_no_standby_of_the_database_is_refused(pair: Pair,
                                                                   dsn: str) -> None:
    """The primary itself, a standby's other database, a standby of another cluster (the
    suite's own server as primary), and an unreachable one: each a typed error that says
    which, without the password."""
    other_db = make_conninfo(pair.replica, dbname="postgres")
    cases = [(pair.primary, pair.primary, ReplicaError, "is not a standby"),
             (pair.primary, other_db, ReplicaError, "names database 'postgres'"),
             (dsn, pair.replica, ReplicaError, "a standby of another cluster"),
             (pair.primary, CLOSED, DatabaseUnavailableError, "read replica unavailable")]
    for primary_dsn, read_dsn, error, message in cases:
        # A pool of our own, which gives up on an unreachable server within a second.
        with JobQueue(primary_dsn, auto_migrate=False) as primary, \
                ConnectionPool(read_dsn, timeout=1.0, reconnect_timeout=0,
                               kwargs={"autocommit": True}) as pool, \
                JobQueue(pool, auto_migrate=False) as reads, pytest.raises(error) as raised:
            Admin(primary, reads=reads).stats()
        assert message in str(raised.value), raised.value
        assert "S3cr3tReplicaPw" not in str(raised.value)


# -- the jobq command line ---------------------------------------------------------------------

def test_the_read_only_commands_read_the_replica_and_actions_the_primary(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_DSN", pair.primary)
    monkeypatch.setenv("JOBQ_READ_DSN", pair.replica)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    runner = CliRunner()

    def jobq(*args: str) -> Any:
        result = runner.invoke(cli_app, list(args))
        assert result.exit_code == 0, result.output
        return result

    job_id = failed_job(pair.primary)
    pair.sync()
    status = " ".join(jobq("status").stdout.split())  # a pipe's 80 columns fold the line
    assert "mail" in status and "0 s behind (it has replayed all the WAL it received)" in status
    document = json.loads(jobq("status", "--json").stdout)
    assert [t["type"] for t in document["types"]] == ["mail"]
    assert document["replica"]["lag"] == 0 and document["replica"]["streaming"] is True

    pair.pause_replay()
    fresh = json.loads(jobq("enqueue", "mail", "--json").stdout)["id"]
    assert "retried 1 job" in jobq("retry", str(job_id)).stdout  # JOBQ_READ_DSN is not used
    assert primary_state(pair.primary, job_id) == "pending"
    assert primary_state(pair.primary, fresh) == "pending"
    replica_rows = json.loads(jobq("list", "state:pending", "--json").stdout)["rows"]
    assert replica_rows == []
    primary_rows = json.loads(jobq("list", "state:pending", "--json", "--read-dsn", "")
                              .stdout)["rows"]
    assert {r["id"] for r in primary_rows} == {job_id, fresh}
    assert json.loads(jobq("show", str(job_id), "--json").stdout)["state"] == "failed"
    assert [e["event"] for e in json.loads(jobq("trace", "req-r", "--json").stdout)] == [
        "enqueued", "claimed", "failed"]
    assert json.loads(jobq("workers", "--json").stdout) == []
    jobq("pause", "mail")
    assert json.loads(jobq("pause", "--json").stdout) == {"paused": []}  # not replayed yet
    pair.received_all()
    behind = " ".join(jobq("status").stdout.split())
    assert "s behind (" in behind and "bytes of WAL to replay)" in behind

    pair.resume_replay()
    pair.sync()
    assert json.loads(jobq("show", str(job_id), "--json").stdout)["state"] == "pending"
    assert [p["type"] for p in json.loads(jobq("pause", "--json").stdout)["paused"]] == ["mail"]


def _entry(*args: str, dsn: str, read_dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JOBQ, *args], capture_output=True, text=True, timeout=60,
                          check=False,
                          env={**os.environ, "JOBQ_DSN": dsn, "JOBQ_READ_DSN": read_dsn})


def test_a_wrong_read_dsn_is_one_line_with_its_exit_code(pair: Pair, dsn: str) -> None:
    """Not a standby, another database, another cluster: exit 2; unreachable: exit 5. One
    stderr line each, never the password; the same DSNs do not stop an action."""
    other_db = make_conninfo(pair.replica, dbname="postgres")
    cases = [(pair.primary, pair.primary, 2, "is not a standby"),
             (pair.primary, other_db, 2, "names database 'postgres'"),
             (dsn, pair.replica, 2, "a standby of another cluster"),
             (pair.primary, CLOSED, 5, "read replica unavailable"),
             (pair.primary, "postgresql://ops:S3cr3tReplicaPw%zz@127.0.0.1/x", 2,
              "read DSN: invalid connection string")]
    for primary_dsn, read_dsn, code, message in cases:
        result = _entry("status", dsn=primary_dsn, read_dsn=read_dsn)
        lines = result.stderr.splitlines()
        assert result.returncode == code, (read_dsn, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("jobq: ") and message in lines[0], lines
        assert "S3cr3tReplicaPw" not in result.stderr + result.stdout
    enqueued = _entry("enqueue", "mail", dsn=pair.primary, read_dsn=CLOSED)
    assert enqueued.returncode == 0, enqueued.stderr


# -- the console ----------------------------------------------------------------------------------

async def test_the_console_reads_the_replica_and_shows_its_lag(pair: Pair) -> None:
    job_id = failed_job(pair.primary)
    pair.sync()
    app = JobqApp(pair.primary, read_dsn=pair.replica, interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "0 s behind" in text_of(app, "#status"))
        assert "reads " in text_of(app, "#status", width=400)
        await open_jobs(pilot, app, "state:failed")
        await until(pilot, lambda: table_ids(app) == [job_id])

        pair.pause_replay()
        await pilot.press("R")  # retry: on the primary, at once
        await until(pilot, lambda: primary_state(pair.primary, job_id) == "pending")
        await until(pilot, lambda: "not yet showing your action" in text_of(app, "#status"),
                    timeout=REPLICATION_WAIT)
        assert table_ids(app) == [job_id]  # still failed on the replica, and said so

        pair.resume_replay()
        await until(pilot, lambda: table_ids(app) == [], timeout=REPLICATION_WAIT)
        await until(pilot, lambda: "not yet showing" not in text_of(app, "#status"))
        assert not app.screen.query_one("#banner", Static).display


async def test_the_console_trace_tail_follows_with_replay_paused(pair: Pair) -> None:
    with JobQueue(pair.primary) as queue:
        queue.enqueue("mail", request_id="req-tail")
        pair.sync()
        pair.pause_replay()
        app = JobqApp(pair.primary, read_dsn=pair.replica, interval=0.2,
                      start=lambda _: TraceScreen("req-tail"))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, TraceScreen)
                        and app.screen.shown == 1)
            queue.enqueue("mail", request_id="req-tail")
            await until(pilot, lambda: app.screen.shown == 2)  # type: ignore[attr-defined]


async def test_the_console_names_a_read_dsn_that_is_no_standby(pair: Pair) -> None:
    app = JobqApp(pair.primary, read_dsn=make_conninfo(pair.primary, password="S3cr3tPw"),
                  interval=0.2)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.screen.query_one("#banner", Static)
        await until(pilot, lambda: banner.display and "is not a standby" in text_of(
            app, "#banner", width=400))
        assert "S3cr3tPw" not in text_of(app, "#banner", width=400)

