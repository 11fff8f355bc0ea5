"""No password is ever shown (issue 10, F5), malformed connection strings included: libpq
quotes what it could not parse, and an unencoded '@' turns the password's tail into the
host name. Library, CLI and console; real Postgres where a server is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from psycopg.conninfo import conninfo_to_dict

from jobq_core import AsyncJobQueue, InvalidInputError, JobqError, JobQueue
from jobq_core.dsn import check, redact
from jobq_tui.app import JobqApp

from .tui_helpers import until

SECRET = "S3cr3tPw"
BIN = os.path.dirname(sys.executable)
MALFORMED = [
    f"postgresql://app:{SECRET}%zz@127.0.0.1/db",          # invalid percent-encoding
    f"host=127.0.0.1 password=ab {SECRET} dbname=db",      # an unquoted space
    f"host=127.0.0.1 password=ab {SECRET}",
    f"postgresql://app:pa@{SECRET}@127.0.0.1:1/db",        # an unencoded '@'
    f"postgresql://app:{SECRET}@pa@127.0.0.1:1/db",
    f"host=127.0.0.1 password='{SECRET} unterminated",
    f"postgresql://app:Base64/{SECRET}@127.0.0.1:1/db",     # an unencoded '/'
    f"postgresql://app:a?{SECRET}@127.0.0.1:1/db",          # an unencoded '?'
]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("JOBQ_DSN", "DATABASE_URL")}


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_dsn_is_refused_without_its_password(bad: str) -> None:
    for build in (check, JobQueue, AsyncJobQueue):
        with pytest.raises(InvalidInputError, match="invalid connection string") as caught:
            build(bad)
        assert SECRET not in str(caught.value) and "pa@" not in str(caught.value)


@pytest.mark.parametrize(("bad", "command"), [
    *((bad, ["jobq", "status", "--json"]) for bad in MALFORMED),
    *((bad, ["jobq-tui"]) for bad in MALFORMED),
    (MALFORMED[0], ["jobq", "list"]),
    (MALFORMED[1], ["jobq", "trace", "r", "--follow"]),
])
def test_cli_and_console_refuse_it_in_one_line_without_the_password(
    bad: str, command: list[str]
) -> None:
    exe = shutil.which(command[0], path=BIN) or command[0]
    result = subprocess.run([exe, *command[1:], "--dsn", bad], capture_output=True, text=True,
                            timeout=60, env=_env(), check=False)
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "invalid connection string" in result.stderr


@pytest.mark.parametrize("refused", [
    f"postgresql://app:{SECRET}@127.0.0.1:1/db?sslmode=bogus&password={SECRET}x",
    f"host=127.0.0.1 port=1 user=app password='{SECRET} with spaces' dbname=db",
    f"postgresql://app:{SECRET}%40x@127.0.0.1:1/db",
    f"postgresql://app:{SECRET}@127.0.0.1:notaport/db",
])
def test_a_dsn_the_connection_refuses_is_reported_without_its_password(refused: str) -> None:
    if "bogus" in refused:  # the library's pool waits out its timeout: once is enough
        with JobQueue(refused) as queue, pytest.raises(JobqError) as caught:
            queue.pending()
        assert SECRET not in str(caught.value)
    exe = shutil.which("jobq", path=BIN) or "jobq"
    result = subprocess.run([exe, "status", "--json", "--dsn", refused], capture_output=True,
                            text=True, timeout=60, env=_env(), check=False)
    assert result.returncode in (2, 5), result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_redact_knows_every_piece_a_parser_could_split_off() -> None:
    url = f"postgresql://app:pa@{SECRET}/x@db.internal/app"
    assert redact(f"failed to resolve host '{SECRET}/x@db.internal'", url) == (
        "failed to resolve host '***/***@db.internal'")
    kv = f"host=h password=ab {SECRET} dbname=d"
    assert redact(f'missing "=" after "{SECRET}" in connection info string', kv) == (
        'missing "=" after "***" in connection info string')
    # A short piece is redacted as a whole word only, so the message stays readable.
    assert redact("ab: the table is ready", kv) == "***: the table is ready"
    # DSNs quoted inside a message lose their password even when none was given.
    assert redact(f"see postgresql://u:{SECRET}@h/d and password='{SECRET} x' port=5") == (
        "see postgresql://u:***@h/d and password=*** port=5")


def test_a_percent_encoded_password_connects(dsn: str) -> None:
    parts = conninfo_to_dict(dsn)
    good = (f"postgresql://{parts.get('user') or 'postgres'}:{SECRET}%40x@"
            f"{parts.get('host') or '127.0.0.1'}:{parts.get('port') or 5432}/"
            f"{parts['dbname']}")
    with JobQueue(good) as queue:  # trust auth ignores the password; the DSN must parse
        queue.enqueue("t")
        assert queue.pending() == 1


async def test_the_console_status_bar_and_notifications_never_show_it() -> None:
    app = JobqApp(f"postgresql://app:{SECRET}@127.0.0.1:1/db", interval=0.2)
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app._down)
        shown = [app.target, app._down or "", app.sub_title,
                 *(n.message for n in app._notifications)]
        assert all(SECRET not in text for text in shown), shown
        assert "app@127.0.0.1:1/db" in app.target


def test_read_only_redacts_against_the_dsn_as_given(dsn: str) -> None:
    """--read-only rewrites the DSN into key=value form; what an error shows is still redacted
    by the pieces of the DSN as the operator gave it."""
    parts = conninfo_to_dict(dsn)
    odd = f"postgresql://{parts.get('host') or '127.0.0.1'}:{parts.get('port') or 5432}/{SECRET}@db"
    exe = shutil.which("jobq", path=BIN) or "jobq"
    for flags in ([], ["--read-only"]):
        result = subprocess.run([exe, *flags, "status", "--dsn", odd], capture_output=True,
                                text=True, timeout=60, env=_env(), check=False)
        assert result.returncode != 0 and "does not exist" in result.stderr, result.stderr
        assert SECRET not in result.stdout + result.stderr
