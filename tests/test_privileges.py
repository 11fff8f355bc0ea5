"""Least privilege against real Postgres: an owner role migrates once, and worker roles that
hold only the README's grants (no DDL rights at all) run everything.

The module works in a database of its own in which PUBLIC holds nothing (not even CONNECT,
TEMPORARY or USAGE on `public`), so a worker holds exactly what the README's "Least
privilege" SQL grants it. Each test creates two LOGIN roles with unique names (roles are
cluster-wide) and drops them and everything they own afterwards, also when it fails. The
README's SQL is read from the README and run as written, so the documentation and the tests
cannot drift apart.

The negative tests state what a worker without a right should see: a typed error that names
the fix (`jobq migrate`, or the missing GRANT), never the server's bare refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from jobq_cli.commands import app
from jobq_core import (
    AsyncJobQueue,
    JobFailedError,
    JobqError,
    JobQueue,
    NewJob,
    SchemaError,
    create_job_queue,
    create_task_runner,
    schema,
)
from jobq_core.admin import Admin, TraceTail
from jobq_core.errors import DatabaseError
from jobq_tui.connection import ConsoleDB

README = Path(__file__).resolve().parent.parent / "README.md"

#: What the worker holds on the queue's relations after the README's grants, exactly.
DML = ("DELETE", "INSERT", "SELECT", "UPDATE")
WORKER_RELATION_PRIVILEGES = sorted(
    [(t, p) for t in ("svti_jobs", "svti_jobs_events", "svti_jobs_keys", "svti_jobs_rates",
                      "svti_jobs_pauses", "svti_jobs_workers", "svti_jobs_schedules",
                      "svti_jobs_limits", "svti_jobs_limit_keys",
                      "svti_jobs_limit_lanes")
     for p in DML]
    + [("svti_jobs_id_seq", "USAGE"), ("svti_jobs_migrations", "SELECT")])


def _readme_sql(first_line: str) -> str:
    """The README's ```sql block that starts with this comment line (it may be indented)."""
    for block in re.findall(r"^[ \t]*```sql\n(.*?)^[ \t]*```", README.read_text(), re.S | re.M):
        lines = [line.strip() for line in block.splitlines()]
        if lines and lines[0] == first_line:
            return "\n".join(lines)
    raise AssertionError(f"README.md has no sql block starting with {first_line!r}")


def _statements(block: str) -> list[str]:
    text = "\n".join(line.split("--", 1)[0] for line in block.splitlines())
    return [" ".join(s.split()) for s in text.split(";") if s.strip()]


ADMIN_SQL = "-- once, as a superuser"
GRANTS_SQL = "-- as jobq_owner, after every `jobq migrate`"
DEFAULTS_SQL = "-- optional, as jobq_owner, once, before the first `jobq migrate`"


@dataclass
class Deployment:
    """One database, its owner role and its worker role, as the README sets them up."""

    server: str  # a superuser's DSN for this database
    database: str
    schema: str  # where the queue lives: public, or a schema of its own
    owner_role: str
    owner_password: str
    worker_role: str
    worker_password: str

    @property
    def table(self) -> str:
        return "svti_jobs" if self.schema == "public" else f"{self.schema}.svti_jobs"

    @property
    def owner(self) -> str:
        return make_conninfo(self.server, user=self.owner_role, password=self.owner_password)

    @property
    def worker(self) -> str:
        return make_conninfo(self.server, user=self.worker_role, password=self.worker_password)

    def _as_written(self, block: str) -> list[str]:
        """The README's statements with this deployment's names for its placeholders."""
        substitutions = [
            (r"'owner-secret'", f"'{self.owner_password}'"),
            (r"'worker-secret'", f"'{self.worker_password}'"),
            (r"\bjobq_owner\b", self.owner_role),
            (r"\bjobq_worker\b", self.worker_role),
            (r"\bDATABASE app\b", f'DATABASE "{self.database}"'),
            (r"\bpublic\b", self.schema),  # the schema; PUBLIC, all roles, stays
        ]
        out = []
        for written in _statements(block):
            statement = written
            for pattern, value in substitutions:
                statement = re.sub(pattern, value, statement)
            out.append(statement)
        return out

    def run(self, dsn: str, block: str, skip: str | None = None) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in self._as_written(block):
                if skip is None or skip not in statement:
                    conn.execute(statement.encode())

    def sql(self, query: str | sql.Composed, *params: Any) -> list[tuple[Any, ...]]:
        """A statement as the superuser, in this database (checks and backdating)."""
        with psycopg.connect(self.server, autocommit=True) as conn:
            cur = conn.execute(query.encode() if isinstance(query, str) else query, params)
            return cur.fetchall() if cur.description else []

    def cli(self, *args: str, dsn: str | None = None) -> Any:
        """`jobq ...` in-process, as the worker unless another DSN is given."""
        env = {"JOBQ_DSN": dsn or self.worker, "JOBQ_TABLE": self.table, "DATABASE_URL": ""}
        return CliRunner().invoke(app, list(args), env=env)

    def migrate_as_owner(self, behind: int = 0) -> None:
        """The deploy step: the owner migrates, then grants the workers their rows. `behind`
        stops that many versions short of this jobq's, as an older jobq would have left it."""
        if behind:
            latest = schema.LATEST_VERSION
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:-behind])
                patch.setattr(schema, "LATEST_VERSION", latest - behind)
                with JobQueue(self.owner, table=self.table) as owner:
                    owner.migrate()
        else:
            result = self.cli("migrate", "--yes", dsn=self.owner)
            assert result.exit_code == 0, result.output
        grants = _readme_sql(GRANTS_SQL)
        if behind:  # an older jobq's grants: only the tables its migrations created
            for name in re.findall(r"\w+\.svti_jobs_\w+", grants):
                if self.sql("SELECT to_regclass(%s)", name) == [(None,)]:
                    grants = re.sub(rf",\s*{re.escape(name)}\b", "", grants)
        self.run(self.owner, grants)

    def version(self) -> int:
        return int(self.sql(f"SELECT max(version) FROM {self.schema}.svti_jobs_migrations")[0][0])

    def worker_holds(self) -> dict[str, Any]:
        """Everything the worker role holds in this database, and what it owns."""
        role = self.worker_role
        relations = self.sql(
            "SELECT c.relname::text, a.privilege_type FROM pg_class c "
            "CROSS JOIN LATERAL aclexplode(c.relacl) a WHERE a.grantee = %s::regrole "
            "ORDER BY 1, 2", role)
        schemas = self.sql(
            "SELECT n.nspname::text, a.privilege_type FROM pg_namespace n "
            "CROSS JOIN LATERAL aclexplode(n.nspacl) a "
            "WHERE a.grantee IN (%s::regrole, 0) AND n.nspname <> 'information_schema' "
            "AND n.nspname NOT LIKE 'pg\\_%%' ORDER BY 1, 2", role)
        database = self.sql(
            "SELECT a.privilege_type FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a "
            "WHERE d.datname = current_database() AND a.grantee IN (%s::regrole, 0) ORDER BY 1",
            role)
        owned = self.sql("SELECT count(*) FROM pg_class WHERE relowner = %s::regrole", role)
        member_of = self.sql(
            "SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole", role)
        attributes = self.sql(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles "
            "WHERE rolname = %s", role)
        return {"relations": relations, "schemas": schemas, "database": database,
                "owned": owned[0][0], "member_of": member_of[0][0], "attributes": attributes[0]}


def _quietly(dsn: str, *statements: sql.Composed) -> None:
    """Cleanup: each statement on its own, whatever the ones before did."""
    for statement in statements:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)


@pytest.fixture(scope="module")
def privilege_db(server_dsn: str) -> Iterator[str]:
    """One database for this module's deployments, in which nothing is granted to PUBLIC
    (not even CONNECT, TEMPORARY or USAGE on the public schema)."""
    name = f"jobq_priv_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(make_conninfo(server_dsn, dbname=name), autocommit=True) as admin:
            admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(
                sql.Identifier(name)))
            admin.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        yield name
    finally:
        _quietly(server_dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def deployment(server_dsn: str, privilege_db: str,
               request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """The README's two roles, with unique names, set up by the README's administrator SQL;
    the queue in `public` or (param) in a schema of its own. Afterwards, even when the test
    failed: the roles' sessions are ended, everything they own or were granted is dropped
    (DROP OWNED BY), then the roles; the database is left as it was."""
    placement = getattr(request, "param", "public")
    tag = f"{os.getpid()}_{secrets.token_hex(4)}"
    d = Deployment(make_conninfo(server_dsn, dbname=privilege_db), privilege_db, placement,
                   f"jobq_owner_{tag}", secrets.token_hex(12),
                   f"jobq_worker_{tag}", secrets.token_hex(12))
    names = (d.owner_role, d.worker_role)
    roles = sql.SQL(", ").join(map(sql.Identifier, names))
    try:
        if placement != "public":  # the README's "schema of its own", owned by the owner
            d.sql(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(placement)))
        d.run(d.server, _readme_sql(ADMIN_SQL))  # creates the roles
        if placement != "public":
            d.sql(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                sql.Identifier(placement), sql.Identifier(d.owner_role)))
        yield d
    finally:
        _quietly(server_dsn, sql.SQL(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE usename IN ({}, {})").format(*map(sql.Literal, names)))
        # One role at a time: both in one DROP OWNED BY trips over a default ACL that the
        # owner holds for the worker ("could not find tuple for default ACL").
        _quietly(d.server, *(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(n))
                             for n in names))
        _quietly(server_dsn, sql.SQL("DROP ROLE IF EXISTS {}").format(roles))
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            left = admin.execute("SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s)",
                                 names).fetchall()
        leftovers = d.sql(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "UNION ALL SELECT nspname FROM pg_namespace WHERE nspname = %s "
            "AND nspname <> 'public'", placement)
        if leftovers:  # never leave them to the next test
            d.sql(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(placement)))
            for (relname,) in leftovers:
                _quietly(d.server, sql.SQL("DROP TABLE IF EXISTS public.{} CASCADE").format(
                    sql.Identifier(relname)))
        assert not left and not leftovers, f"left behind: {left} {leftovers}"


def _as_json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- a worker with DML grants only runs everything ----------------------------------------------

@pytest.mark.parametrize("deployment", ["public", "jobq"], indirect=True)
def test_a_dml_only_worker_runs_the_whole_queue_lifecycle(deployment: Deployment) -> None:
    d = deployment
    d.migrate_as_owner()
    held = d.worker_holds()
    assert held["relations"] == WORKER_RELATION_PRIVILEGES
    assert held["schemas"] == [(d.schema, "USAGE")]  # no CREATE anywhere
    assert held["database"] == [("CONNECT",)]  # no CREATE, no TEMPORARY
    assert held["owned"] == 0 and held["member_of"] == 0
    assert held["attributes"] == (False, False, False, False)
    version = d.version()

    with JobQueue(d.worker, table=d.table) as q:  # the defaults: auto_migrate=True
        assert q.auto_migrate
        due = datetime.now(UTC) - timedelta(seconds=1)
        keyed = q.enqueue("email", {"to": "a"}, idempotency_key="welcome:a", request_id="req-1",
                          run_at=due, priority=5)
        assert q.enqueue("email", idempotency_key="welcome:a") == keyed
        later = q.enqueue("email", run_at=timedelta(hours=1), request_id="req-1")
        plain = q.enqueue_many([NewJob("email", i, request_id="req-1") for i in range(3)])
        keys = q.enqueue_many([NewJob("email", i, idempotency_key=f"batch:{i}")
                               for i in range(2)] + [{"type": "email", "idempotency_key":
                                                      "welcome:a"}])
        assert keys[2] == keyed and len(set(plain + keys[:2] + [keyed, later])) == 7
        assert q.pending() == 6 and q.pending(types=["email"]) == 6  # `later` is not due

        first = q.claim(types=["email"], worker="w1")
        assert first is not None and first.id == keyed and first.request_id == "req-1"
        assert q.extend(first, 60_000) > datetime.now(UTC)
        assert q.heartbeat([first]) == {first.id}
        q.complete(first, result={"sent": True})
        assert q.outcome(keyed).state == "completed"
        assert q.wait(keyed, timeout=5) == {"sent": True}

        batch = q.claim_many(3, types=["email"])
        assert len(batch) == 3
        assert sorted(q.complete_many(batch[:2], [1, 2])) == sorted(j.id for j in batch[:2])
        assert q.acked(batch[:2]) == {j.id for j in batch[:2]}
        q.fail(batch[2], reason="smtp down", retry=True)
        retried = q.claim_by_id(batch[2].id)
        assert retried is not None and retried.attempts == 2
        q.fail(retried, reason="gave up")
        with pytest.raises(JobFailedError, match="gave up"):
            q.wait(retried.id, timeout=5)
        held_back = q.claim()
        assert held_back is not None
        assert q.release([held_back]) == [held_back.id]

        d.sql(f"UPDATE {d.table} SET failed_at = now() - interval '8 days' WHERE state = 'failed'")
        d.sql(f"UPDATE {d.table}_events SET occurred_at = now() - interval '8 days' "
              "WHERE job_id = %s", retried.id)
        assert q.clear(older_than="7d") >= 2  # the failed job and its history
        assert q.clear(older_than=timedelta(days=7)) == 0

    async def twin() -> None:
        async with AsyncJobQueue(d.worker, table=d.table) as aq:
            ids = await aq.enqueue_many([NewJob("sms", i) for i in range(2)])
            assert await aq.enqueue("sms", idempotency_key="sms:1") not in ids
            jobs = await aq.claim_many(10, types=["sms"])
            assert len(jobs) == 3
            assert len(await aq.complete_many(jobs)) == 3
            assert await aq.pending(types=["sms"]) == 0
            assert await aq.clear(older_than="7d") == 0

    asyncio.run(twin())
    assert d.version() == version  # first use only checked the version
    assert d.worker_holds()["owned"] == 0  # and created nothing


def test_a_dml_only_worker_serves_jobs_with_a_task_runner(deployment: Deployment) -> None:
    d = deployment
    d.migrate_as_owner()
    tries: Counter[str] = Counter()
    with JobQueue(d.worker, table=d.table) as queue:
        runner = create_task_runner(queue, concurrency=4, poll_interval=0.1, lease_ms=5_000)

        @runner.task("double")
        def double(payload: Any, ctx: Any) -> Any:
            if payload == 0:
                ctx.enqueue("double", 21)  # inherits the request id
            return payload * 2

        @runner.task("flaky", backoff=lambda attempt: 0.0)
        def flaky(payload: Any, ctx: Any) -> Any:
            tries["flaky"] += 1
            if ctx.attempt == 1:
                raise RuntimeError("first attempt fails")
            return "second time lucky"

        @runner.task("poison", max_attempts=2, backoff=lambda attempt: 0.0)
        def poison(payload: Any, ctx: Any) -> Any:
            raise ValueError("always")

        ids = queue.enqueue_many([NewJob("double", i, request_id="req-run") for i in range(3)])
        flaky_id = queue.enqueue("flaky", idempotency_key="flaky:1")
        poison_id = queue.enqueue("poison")
        asyncio.run(runner.serve(until_idle=True))

        assert [queue.wait(i, timeout=5) for i in ids] == [0, 2, 4]
        assert queue.wait(flaky_id, timeout=5) == "second time lucky" and tries["flaky"] == 2
        with pytest.raises(JobFailedError, match="always"):
            queue.wait(poison_id, timeout=5)
        assert runner.counters["completed"] == 5  # three, the child, and flaky
        assert d.sql(f"SELECT count(*) FROM {d.table}_events WHERE request_id = 'req-run' "
                     "AND event = 'completed'") == [(4,)]
        # Inline, idempotent runs: claim_by_id, heartbeat and the keyed enqueue.
        assert runner.run("double", 50, idempotency_key="inline:50") == 100
        assert runner.run("double", 50, idempotency_key="inline:50") == 100
    assert d.worker_holds()["owned"] == 0


def test_a_dml_only_worker_runs_the_operator_operations(deployment: Deployment) -> None:
    """Every `jobq_core.admin` operation the CLI and the console make, as the worker; and
    the console's own connection, read-write and read-only."""
    d = deployment
    d.migrate_as_owner()
    with JobQueue(d.worker, table=d.table) as q:
        failed, claimed, pending = (q.enqueue("report", {"n": i}, request_id="req-ops")
                                    for i in range(3))
        job = q.claim_by_id(failed)
        assert job is not None
        q.fail(job, reason="boom")
        assert q.claim_by_id(claimed) is not None

        admin = Admin(q)
        stats = {s.type: s for s in admin.stats()}
        assert stats["report"].failed.value == 1 and stats["report"].claimed.value == 1
        assert [r.id for r in admin.list_jobs("state:failed").rows] == [failed]
        assert admin.list_jobs("type:report req:req-ops", limit=2).next_cursor is not None
        assert [e.event for e in admin.show(failed).events] == ["enqueued", "claimed", "failed"]
        assert len(admin.trace("req-ops")) == 6
        assert len(admin.poll_trace(TraceTail("req-ops"))) == 6
        assert admin.matching_ids("state:pending") == [pending]
        assert admin.preview("retry", [failed, pending]).eligible == 1
        assert admin.retry([failed]).changed == 1
        assert admin.extend([claimed], "5m").changed == 1
        assert admin.delete([pending]).changed == 1
        assert admin.delete([claimed], force=True).changed == 1
        d.sql(f"UPDATE {d.table}_events SET occurred_at = now() - interval '8 days' "
              "WHERE job_id IN (%s, %s)", claimed, pending)
        assert admin.preview_clear("7d").history_rows >= 4
        assert admin.clear("7d") >= 4
        findings = admin.doctor()
        assert not [f for f in findings if f.status == "error"]
        assert next(f for f in findings if f.check == "schema version").status == "ok"
        assert admin.migrate(dry_run=True) == []  # up to date: nothing to run

    async def console(read_only: bool) -> None:
        db = ConsoleDB(d.worker, d.table, read_only=read_only)
        await db.open()
        try:
            assert [s.type for s in await db.admin.stats()] == ["report"]
            rows = (await db.admin.list_jobs("state:pending")).rows
            assert [r.id for r in rows] == [failed]  # retried above
            assert (await db.admin.show(failed)).job is not None
            if not read_only:
                assert (await db.admin.delete([failed])).changed == 1
        finally:
            await db.close()

    asyncio.run(console(read_only=True))
    asyncio.run(console(read_only=False))
    assert d.sql(f"SELECT count(*) FROM {d.table}") == [(0,)]


def test_a_dml_only_worker_runs_the_jobq_commands(deployment: Deployment) -> None:
    d = deployment
    d.migrate_as_owner()
    job_id = _as_json(d.cli("enqueue", "send-email", "-p", '{"to": "a@b.c"}', "--request-id",
                            "req-cli", "--idempotency-key", "cli:1", "--json"))["id"]
    assert _as_json(d.cli("enqueue", "send-email", "--idempotency-key", "cli:1",
                          "--json"))["id"] == job_id
    scheduled = _as_json(d.cli("enqueue", "send-email", "--delay", "1h", "--json"))["id"]
    assert [s["type"] for s in _as_json(d.cli("status", "--json"))] == ["send-email"]
    assert d.cli("status").exit_code == 0
    rows = _as_json(d.cli("list", "state:pending", "--json"))["rows"]
    assert sorted(r["id"] for r in rows) == sorted([job_id, scheduled])
    assert _as_json(d.cli("show", str(job_id), "--json"))["state"] == "pending"
    assert [e["event"] for e in _as_json(d.cli("trace", "req-cli", "--json"))] == ["enqueued"]

    with JobQueue(d.worker, table=d.table) as q:
        job = q.claim_by_id(job_id)
        assert job is not None
        q.fail(job, reason="smtp down")
    retried = _as_json(d.cli("retry", "--failed", "--yes", "--json"))["result"]
    assert retried["changed"] == 1
    with JobQueue(d.worker, table=d.table) as q:
        assert q.claim_by_id(job_id) is not None
    assert _as_json(d.cli("extend", str(job_id), "--by", "10m", "--yes", "--json"))[
        "result"]["changed"] == 1
    assert _as_json(d.cli("delete", str(scheduled), "--yes", "--json"))["result"][
        "changed"] == 1
    d.sql(f"UPDATE {d.table}_events SET occurred_at = now() - interval '8 days' "
          "WHERE job_id = %s", scheduled)
    assert _as_json(d.cli("clear", "--older-than", "7d", "--dry-run", "--json"))["preview"][
        "history_rows"] == 2
    assert _as_json(d.cli("clear", "--older-than", "7d", "--yes", "--json"))["removed"] == 2
    assert not [f for f in _as_json(d.cli("doctor", "--json")) if f["status"] == "error"]
    # `jobq migrate` as the worker, on a current schema: nothing to do, and no DDL tried.
    assert _as_json(d.cli("migrate", "--json"))["statements"] == []
    assert d.worker_holds()["owned"] == 0


def test_default_privileges_cover_the_tables_a_migration_creates(
    deployment: Deployment
) -> None:
    """The README's alternative to granting after each migration: default privileges, set
    by the owner once before it migrates, cover every table the migration creates."""
    d = deployment
    d.run(d.owner, _readme_sql(DEFAULTS_SQL))
    result = d.cli("migrate", "--yes", dsn=d.owner)  # no explicit grants afterwards
    assert result.exit_code == 0, result.output
    with JobQueue(d.worker, table=d.table) as q:
        ids = q.enqueue_many([NewJob("t", i) for i in range(2)])
        assert q.enqueue("t", idempotency_key="k") not in ids
        jobs = q.claim_many(3)
        assert sorted(q.complete_many(jobs)) == sorted(j.id for j in jobs)
        # stats folds into the rates table (covered too) and reads pauses and workers
        [stats] = Admin(q).stats()
        assert (stats.type, stats.ready.value, stats.claimed.value) == ("t", 0, 0)


# -- without a right, a typed error that names the fix ------------------------------------------

FIRST_USES: dict[str, Callable[[str, str], Any]] = {
    "enqueue": lambda dsn, table: _closing(JobQueue(dsn, table=table), lambda q: q.enqueue("t")),
    "claim": lambda dsn, table: _closing(JobQueue(dsn, table=table), lambda q: q.claim()),
    "create_job_queue": lambda dsn, table: create_job_queue(dsn, table=table).close(),
    "async enqueue": lambda dsn, table: asyncio.run(_async_enqueue(dsn, table)),
}


def _closing(queue: JobQueue, call: Callable[[JobQueue], Any]) -> Any:
    with queue:
        return call(queue)


async def _async_enqueue(dsn: str, table: str) -> int:
    async with AsyncJobQueue(dsn, table=table) as queue:
        return await queue.enqueue("t")


def _is_typed(error: BaseException) -> None:
    """A jobq error, and no driver error behind it either."""
    assert isinstance(error, JobqError)
    assert not isinstance(error, psycopg.Error)


@pytest.mark.parametrize("first_use", list(FIRST_USES))
def test_without_ddl_rights_missing_tables_are_a_schema_error_naming_jobq_migrate(
    deployment: Deployment, first_use: str
) -> None:
    """The worker's first use (auto_migrate=True, the default) finds no tables and may not
    create them: a SchemaError that names `jobq migrate`, not the server's refusal."""
    d = deployment
    with pytest.raises(JobqError) as caught:
        FIRST_USES[first_use](d.worker, d.table)
    _is_typed(caught.value)
    assert isinstance(caught.value, SchemaError), repr(caught.value)
    assert "jobq migrate" in str(caught.value)
    assert d.sql("SELECT to_regclass(%s)", d.table + "_migrations") == [(None,)]


def test_with_auto_migrate_off_missing_tables_name_jobq_migrate(deployment: Deployment) -> None:
    d = deployment
    with (pytest.raises(SchemaError, match="jobq migrate"),
          JobQueue(d.worker, table=d.table, auto_migrate=False) as q):
        q.enqueue("t")
    with pytest.raises(SchemaError, match="jobq migrate"):
        create_job_queue(d.worker, table=d.table, auto_migrate=False)
    result = d.cli("status")
    assert result.exit_code == 1 and "jobq migrate" in result.stderr
    assert d.sql("SELECT to_regclass(%s)", d.table + "_migrations") == [(None,)]


def test_without_ddl_rights_an_older_schema_is_a_schema_error_naming_jobq_migrate(
    deployment: Deployment
) -> None:
    """A new jobq deployed before the owner migrated: the worker (auto_migrate=True) may not
    migrate, and says what to do instead of passing on the server's refusal. Its attempt
    changed nothing."""
    d = deployment
    d.migrate_as_owner(behind=1)
    with (pytest.raises(JobqError) as caught, JobQueue(d.worker, table=d.table) as q):
        q.enqueue("t")
    _is_typed(caught.value)
    assert isinstance(caught.value, SchemaError), repr(caught.value)
    assert "jobq migrate" in str(caught.value)
    assert d.version() == schema.LATEST_VERSION - 1
    assert d.sql(f"SELECT count(*) FROM {d.table}") == [(0,)]


@pytest.mark.parametrize("auto_migrate", [False, True])
def test_a_worker_carries_on_once_the_owner_has_migrated(
    deployment: Deployment, auto_migrate: bool
) -> None:
    """The deploy step in the wrong order, then put right: a worker on an older schema is
    refused (with auto_migrate=False, a SchemaError naming `jobq migrate`), the owner runs
    `jobq migrate` and the grants, and the same queue object then works, with no restart."""
    d = deployment
    d.migrate_as_owner(behind=1)
    with JobQueue(d.worker, table=d.table, auto_migrate=auto_migrate) as q:
        with pytest.raises(JobqError) as caught:
            q.enqueue("t")
        _is_typed(caught.value)
        if not auto_migrate:
            assert isinstance(caught.value, SchemaError)
            assert "jobq migrate" in str(caught.value)
        status = d.cli("status")
        assert status.exit_code == 1 and "jobq migrate" in status.stderr
        d.migrate_as_owner()
        assert d.version() == schema.LATEST_VERSION
        job_id = q.enqueue("t", idempotency_key="after-migrate")
        job = q.claim()
        assert job is not None and job.id == job_id
        q.complete(job)


@pytest.mark.parametrize("call", ["enqueue with a key", "enqueue_many", "enqueue_many with keys"])
def test_without_usage_on_the_sequence_enqueue_names_the_grant(
    deployment: Deployment, call: str
) -> None:
    """The worker got every grant but USAGE on the job id sequence: the enqueues that draw
    ids from it fail with a typed error that names the sequence and the grant, and enqueue
    nothing."""
    d = deployment
    result = d.cli("migrate", "--yes", dsn=d.owner)
    assert result.exit_code == 0, result.output
    d.run(d.owner, _readme_sql(GRANTS_SQL), skip="SEQUENCE")
    assert ("svti_jobs_id_seq", "USAGE") not in d.worker_holds()["relations"]
    with JobQueue(d.worker, table=d.table) as q:
        with pytest.raises(JobqError) as caught:
            if call == "enqueue with a key":
                q.enqueue("t", idempotency_key="k")
            elif call == "enqueue_many":
                q.enqueue_many([NewJob("t", 1), NewJob("t", 2)])
            else:
                q.enqueue_many([NewJob("t", 1, idempotency_key="a"), NewJob("t", 2)])
        error = caught.value
        _is_typed(error)
        assert isinstance(error, DatabaseError) and error.sqlstate == "42501"
        assert "svti_jobs_id_seq" in str(error)
        assert re.search(r"GRANT USAGE ON SEQUENCE", str(error), re.I), str(error)
    assert d.sql(f"SELECT count(*) FROM {d.table}") == [(0,)]
