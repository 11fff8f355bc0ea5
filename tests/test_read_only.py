"""The README's "Read-only modes", against real Postgres.

`jobq --read-only` (and JOBQ_READ_ONLY) refuses writing commands before connecting and reads
in read-only sessions: that stops accidents. A role holding only the README's SELECT grants is
refused every write by the server, whatever its session sets: that is enforced. The role's SQL
is read from the README and run as written, so the documentation cannot drift from the test.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.text import Text
from textual.widgets import DataTable
from typer.main import get_command
from typer.testing import CliRunner

from jobq_cli.commands import app, session_conninfo
from jobq_core import JobQueue, NewJob
from jobq_core.admin import Admin
from jobq_core.errors import DatabaseError
from jobq_tui.app import JobqApp

from .helpers import backdate
from .tui_helpers import until

README = Path(__file__).resolve().parent.parent / "README.md"
READER_SQL = "-- a read-only role: as a superuser, after `jobq migrate`"
CLOSED_PORT = "postgresql://postgres@127.0.0.1:1/nothing"
TABLES = ("svti_jobs", "svti_jobs_events", "svti_jobs_rates", "svti_jobs_migrations")


def _readme_statements(first_line: str) -> list[str]:
    """The statements of the README's ```sql block that starts with this comment line."""
    for block in re.findall(r"^[ \t]*```sql\n(.*?)^[ \t]*```", README.read_text(), re.S | re.M):
        lines = [line.split("--", 1)[0].strip() for line in block.splitlines()]
        if block.strip().splitlines()[0].strip() == first_line:
            return [" ".join(s.split()) for s in " ".join(lines).split(";") if s.strip()]
    raise AssertionError(f"README.md has no sql block starting with {first_line!r}")


def cli(*args: str, dsn: str, **env: str) -> Any:
    """`jobq ...` in-process."""
    return CliRunner().invoke(app, list(args),
                              env={"JOBQ_DSN": dsn, "DATABASE_URL": "", "JOBQ_TABLE": "",
                                   "JOBQ_READ_ONLY": "", **env})


def one_line(result: Any) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobq: "), result.output
    return str(lines[0])


def error_of(result: Any) -> str:
    """The error line of a repair, which prints its preview to stderr first."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("jobq: ")]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.output
    return str(errors[0])


def everything(db: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the queue's tables, to show that nothing changed."""
    return {t: db.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(
        sql.Identifier(t))).fetchall() for t in TABLES}


@pytest.fixture
def reader(dsn: str, server_dsn: str) -> Iterator[str]:
    """The DSN of a role that holds exactly what the README's read-only SQL grants in this
    test's database (PUBLIC's defaults revoked first); the role is dropped afterwards."""
    role = f"jobq_reader_{os.getpid()}_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    database = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(database)))
        admin.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        try:
            for written in _readme_statements(READER_SQL):
                statement = re.sub(r"\bjobq_reader\b", f'"{role}"', written)
                statement = statement.replace("'reader-secret'", f"'{password}'")
                statement = re.sub(r"\bDATABASE app\b", f'DATABASE "{database}"', statement)
                admin.execute(statement.encode())
            yield make_conninfo(dsn, user=role, password=password)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            with psycopg.connect(server_dsn, autocommit=True) as server:
                server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def jobs(dsn: str, db: psycopg.Connection[Any]) -> dict[str, int]:
    """As the owner: a pending, a claimed and a failed job under one request id, and old
    history that `clear` would remove."""
    with JobQueue(dsn) as owner:
        owner.enqueue_many([NewJob("t", {"n": i}, request_id="req-ro") for i in range(3)])
        failed = owner.claim()
        assert failed is not None
        owner.fail(failed, reason="boom")
        claimed = owner.claim()
        assert claimed is not None
    backdate(db, failed.id, failed_at="8 days")
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '8 days' "
               "WHERE job_id = %s", (failed.id,))
    return {"failed": failed.id, "claimed": claimed.id}


# -- jobq --read-only: refused in the client, read-only sessions ----------------------------------

#: Every writing command, as an operator would type it; each is refused before connecting.
#: `pause` without types and `workers` without --drain are reads.
WRITES = {
    "enqueue": ["enqueue", "t"],
    "retry": ["retry", "--failed", "--yes"],
    "extend": ["extend", "1", "--by", "1m", "--yes"],
    "delete": ["delete", "1", "--yes"],
    "cancel": ["cancel", "1", "--reason", "r", "--yes"],
    "pause": ["pause", "t", "--for", "30m"],
    "resume": ["resume", "t"],
    "workers": ["workers", "--drain", "w-1", "--yes"],
    "clear": ["clear", "--older-than", "7d", "--yes"],
    "migrate": ["migrate", "--yes"],
    "worker": ["worker", "tests.runner_tasks:runner"],
    "demo": ["demo", "--headless", "--seconds", "1", "--dsn", CLOSED_PORT],
}
READS = {"status", "list", "show", "trace", "doctor", "version", "schedules",
         "limits", "metrics"}


def test_read_only_refuses_every_writing_command_before_connecting() -> None:
    """The DSN points at a closed port: a refusal, not "database unavailable", shows that
    nothing connected. Every command of `jobq` is a read or in WRITES."""
    assert set(get_command(app).commands) == READS | set(WRITES)  # type: ignore[attr-defined]
    for name, args in WRITES.items():
        for how in ({"args": ["--read-only", *args]},
                    {"args": args, "env": {"JOBQ_READ_ONLY": "1"}}):
            result = cli(*how["args"], dsn=CLOSED_PORT, **how.get("env", {}))  # type: ignore[arg-type]
            assert result.exit_code == 2, (name, result.output)
            line = one_line(result)
            assert f"refusing to run `{name}" in line and "--read-only" in line, line
            assert result.stdout == ""
    previewable = one_line(cli("--read-only", "retry", "1", dsn=CLOSED_PORT))
    assert previewable.endswith("; --dry-run previews it")
    # Without --read-only the same command does try to connect.
    tried = cli("enqueue", "t", dsn=CLOSED_PORT)
    assert tried.exit_code == 5 and "database unavailable" in one_line(tried)
    assert cli("enqueue", "t", dsn=CLOSED_PORT, JOBQ_READ_ONLY="0").exit_code == 5


def test_read_only_reads_and_its_sessions_are_read_only(
    dsn: str, db: psycopg.Connection[Any], jobs: dict[str, int]
) -> None:
    """Reads and --dry-run previews work. The session is read-only, as the server sees it: a
    read-only `status` folds no rates (a read-write one does), and a crafted write on that
    same conninfo is refused by the server."""
    before = everything(db)
    for args in (["status"], ["list"], ["show", str(jobs["failed"])], ["trace", "req-ro"],
                 ["doctor"], ["retry", str(jobs["failed"]), "--dry-run"],
                 ["cancel", str(jobs["claimed"]), "--dry-run"], ["workers"], ["pause"],
                 ["clear", "--older-than", "7d", "--dry-run"], ["migrate", "--dry-run"]):
        result = cli("--read-only", *args, "--json", dsn=dsn)
        assert result.exit_code == 0, (args, result.output)
    assert cli("--read-only", "metrics", dsn=dsn).exit_code == 0
    assert '"eligible": 1' in cli("--read-only", "retry", str(jobs["failed"]), "--dry-run",
                                  "--json", dsn=dsn).stdout
    assert everything(db) == before
    assert before["svti_jobs_rates"] == []
    assert cli("status", dsn=dsn).exit_code == 0
    assert db.execute("SELECT count(*) FROM svti_jobs_rates").fetchone()[0] > 0  # type: ignore[index]

    with psycopg.connect(session_conninfo(dsn, True), autocommit=True) as session:
        assert session.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            session.execute("DELETE FROM svti_jobs")
    assert session_conninfo(dsn, False) == dsn
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone() == (3,)


def test_the_read_only_session_keeps_the_dsns_own_options(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-only setting is added after the DSN's `options`, or PGOPTIONS, which an
    `options` keyword would otherwise replace; an unparsable DSN is bad input."""
    def shown(conninfo: str) -> tuple[Any, ...]:
        with psycopg.connect(session_conninfo(conninfo, True)) as conn:
            return tuple(conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                         for name in ("default_transaction_read_only", "statement_timeout"))

    assert shown(make_conninfo(dsn, options="-c statement_timeout=4321")) == ("on", "4321ms")
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=1234")
    assert shown(dsn) == ("on", "1234ms")
    bad = cli("--read-only", "status", dsn="postgresql://u:hunter2%zz@h/db")
    assert bad.exit_code == 2 and "invalid connection string" in one_line(bad)
    assert "hunter2" not in bad.output


# -- a SELECT-only role: enforced by the server ---------------------------------------------------

def test_a_select_only_role_can_write_nothing_even_with_read_only_off(
    reader: str, db: psycopg.Connection[Any], jobs: dict[str, int]
) -> None:
    """The role turns its read-only default off, then tries raw SQL and every write of the
    API: each is refused by the server (a typed `DatabaseError` from the API, never a raw
    driver error), nothing changed, and the same session still reads."""
    before = everything(db)
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        conn.execute("SET default_transaction_read_only = off")
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        for statement in ("UPDATE svti_jobs SET priority = 9",
                          "INSERT INTO svti_jobs (type) VALUES ('x')",
                          "DELETE FROM svti_jobs_events",
                          "INSERT INTO svti_jobs_rates (minute, type) VALUES (now(), 'x')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())
        queue = JobQueue(conn)
        admin = Admin(queue)
        writes: dict[str, Callable[[], object]] = {
            "enqueue": lambda: queue.enqueue("t", request_id="req-ro"),
            "enqueue_many": lambda: queue.enqueue_many([NewJob("t")] * 2),
            "keyed enqueue": lambda: queue.enqueue("t", idempotency_key="k"),
            "retry": lambda: admin.retry([jobs["failed"]]),
            "extend": lambda: admin.extend([jobs["claimed"]], "1m"),
            "delete": lambda: admin.delete([jobs["failed"]]),
            "clear": lambda: admin.clear("7d"),
            "complete": lambda: queue.complete(jobs["claimed"]),
            "claim": queue.claim,
        }
        for name, write in writes.items():
            with pytest.raises(DatabaseError) as refused:
                write()
            assert refused.value.sqlstate == "42501", (name, refused.value)
            assert "permission denied" in str(refused.value), name
        assert {r.id for r in admin.list_jobs().rows} == {jobs["failed"], jobs["claimed"],
                                                          jobs["claimed"] + 1}
        assert len(admin.trace("req-ro")) == 3 + 2 + 1  # enqueued, claimed, failed
        assert admin.show(jobs["failed"]).state == "failed"
    assert everything(db) == before


def test_a_select_only_role_reads_everything_through_jobq(
    reader: str, db: psycopg.Connection[Any], jobs: dict[str, int]
) -> None:
    """As the role, every read of `jobq` works (its read-only default: `status` folds
    nothing); a write is one line, exit 1, refused by the server, and also when the role's
    DSN turns the read-only default off."""
    before = everything(db)
    for args in (["status"], ["list"], ["show", str(jobs["failed"])], ["trace", "req-ro"],
                 ["retry", str(jobs["failed"]), "--dry-run"]):
        result = cli(*args, "--json", dsn=reader)
        assert result.exit_code == 0, (args, result.output)
    assert cli("metrics", dsn=reader).exit_code == 0
    assert cli("doctor", "--json", dsn=reader).exit_code in (0, 1)  # findings, not a failure
    with_default = cli("retry", str(jobs["failed"]), "--yes", dsn=reader)
    assert with_default.exit_code == 1 and "read-only transaction" in error_of(with_default)
    writable = make_conninfo(reader, options="-c default_transaction_read_only=off")
    for args in (["retry", str(jobs["failed"]), "--yes"], ["enqueue", "t"],
                 ["clear", "--older-than", "7d", "--yes"]):
        refused = cli(*args, dsn=writable)
        assert refused.exit_code == 1, (args, refused.output)
        assert "permission denied" in error_of(refused)
    assert everything(db) == before


async def test_the_console_reads_as_a_select_only_role(
    reader: str, db: psycopg.Connection[Any], jobs: dict[str, int]
) -> None:
    """The console, not started --read-only, as the role: the overview shows the queue, and a
    write the console makes is refused by the server as a typed error."""
    before = everything(db)
    app = JobqApp(reader, interval=0.2)
    async with app.run_test(size=(110, 32)) as pilot:
        table: DataTable[Text] = app.screen.query_one("#overview", DataTable)
        await until(pilot, lambda: table.row_count == 1)
        assert table.get_cell("t", "failed").plain == "1"
        with pytest.raises(DatabaseError) as refused:
            await app.admin.retry([jobs["failed"]])
        assert refused.value.sqlstate == "25006"  # the role's read-only default
    assert everything(db) == before


def test_a_role_that_may_insert_but_not_delete_rates_still_reads_status(
    reader: str, dsn: str, jobs: dict[str, int]
) -> None:
    """Folding the rates needs INSERT and DELETE on them; a role with only one of the two
    reads status without folding, rather than failing on the other."""
    role = str(conninfo_to_dict(reader)["user"])
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT INSERT ON svti_jobs_rates TO {}").format(
            sql.Identifier(role)))
    writable = make_conninfo(reader, options="-c default_transaction_read_only=off")
    with JobQueue(writable, auto_migrate=False) as queue:
        assert {t.type for t in Admin(queue).stats()} == {"t"}
