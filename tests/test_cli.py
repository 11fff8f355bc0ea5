"""`jobq` commands against real Postgres: in-process (CliRunner) and through the installed
entry point, as cron jobs and CI scripts run it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

import jobq_core
from jobq_cli.commands import app
from jobq_core import JobQueue, NewJob
from jobq_core.admin import Admin

JOBQ = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"
#: A DSN nothing answers at.
CLOSED_PORT = "postgresql://postgres@127.0.0.1:1/nothing"


@pytest.fixture
def cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("JOBQ_DSN", dsn)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, list(args), input=input)

    return invoke


def as_json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_enqueue_in_every_form(cli: Any, tmp_path: Any, db: psycopg.Connection[Any]) -> None:
    first = as_json(cli("enqueue", "send-email", "-p", '{"to": "a@b.c"}', "--priority", "3",
                        "--request-id", "req-1", "--idempotency-key", "k1", "--json"))["id"]
    again = as_json(cli("enqueue", "send-email", "--idempotency-key", "k1", "--json"))["id"]
    assert again == first
    file = tmp_path / "payload.json"
    file.write_text('{"from": "file"}')
    from_file = as_json(cli("enqueue", "t", "-p", f"@{file}", "--delay", "1h", "--json"))["id"]
    from_stdin = as_json(cli("enqueue", "t", "-p", "-", "--json", input='{"from": "stdin"}'))
    at = as_json(cli("enqueue", "t", "--run-at", "2030-01-01T00:00:00+00:00", "--json"))["id"]
    rows = dict(db.execute("SELECT id, payload FROM svti_jobs").fetchall())
    assert rows[first] == {"to": "a@b.c"} and rows[from_file] == {"from": "file"}
    assert rows[from_stdin["id"]] == {"from": "stdin"} and at in rows
    plain = cli("enqueue", "t")
    assert plain.exit_code == 0 and plain.stdout.strip().isdigit()


@pytest.mark.parametrize("args, message", [
    (["enqueue", "t", "-p", "{bad"], "payload is not valid JSON"),
    (["enqueue", "t", "-p", "@/nonexistent/file.json"], "cannot read payload file"),
    (["enqueue", "", ], "invalid job type"),
    (["enqueue", "t", "--delay", "7x"], "invalid duration"),
    (["enqueue", "t", "--run-at", "tomorrow"], "invalid time"),
    (["enqueue", "t", "--run-at", "2030-01-01T00:00:00"], "no time zone"),
    (["enqueue", "t", "--delay", "1h", "--run-at", "2030-01-01T00:00:00Z"], "not both"),
    (["clear", "--older-than", "7x"], "invalid duration"),
    (["extend", "1", "--by", "soon"], "invalid duration"),
    (["list", "state:sleeping"], "unknown state"),
    (["list", "--table", "jobs; DROP TABLE x"], "invalid table name"),
    (["list", "--after", "not-a-cursor"], "invalid cursor"),
    (["retry"], "give job ids, or --failed"),
])
def test_bad_input_exits_2_with_one_line(cli: Any, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("jobq: ")


@pytest.mark.parametrize("args, message", [
    (["show", "abc"], "invalid value for 'job_id': invalid job id 'abc': expected a positive "
     "whole number (see jobq show --help)"),
    (["show", "1.0"], "invalid job id '1.0'"),
    (["show", "-1"], "no such option: -1 (see jobq show --help)"),
    (["show", "1e9"], "invalid job id '1e9': expected a positive whole number (see jobq show "
     "--help)"),
    (["list", "--limit", "0"], "invalid value for '--limit': Input should be greater than or "
     "equal to 1, got '0' (see jobq list --help)"),
    (["list", "--bogus"], "no such option: --bogus (see jobq list --help)"),
    (["--bogus", "status"], "no such option: --bogus (see jobq --help)"),
    (["frob"], "no such command 'frob' (see jobq --help)"),
    (["lst"], "no such command 'lst'. Did you mean 'list'?"),
    (["show"], "missing argument 'job_id' (see jobq show --help)"),
    (["status", "--dsn"], "option '--dsn' requires an argument"),
    (["retry", "1", "x"], "invalid job id 'x': expected a positive whole number (see jobq "
     "retry --help)"),
    # Shown literally: an escape in the refused value reaches no terminal.
    (["show", "\x1b[31mred"], "invalid job id '\\x1b[31mred'"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    """Typer's usage errors, through the installed entry point: one line, not a usage block
    (and before connecting: the DSN points at a closed port)."""
    result = _entry(*args, dsn=CLOSED_PORT)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobq: ") and message in lines[0], lines
    assert "\x1b" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "jobq-tui: no such option: --bogus (see jobq-tui --help)"),
    (["--refresh", "0.1"], "jobq-tui: invalid value for '--refresh': Input should be greater "
     "than or equal to 0.5, got '0.1' (see jobq-tui --help)"),
    (["--dsn"], "jobq-tui: option '--dsn' requires an argument"),
    (["extra"], "jobq-tui: got unexpected extra argument(s) (extra) (see jobq-tui --help)"),
    (["--trace", "\udcff"], "jobq-tui: request id is not valid Unicode"),  # the byte 0xff
])
def test_console_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    exe = shutil.which("jobq-tui", path=os.path.dirname(sys.executable)) or "jobq-tui"
    result = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_help_and_exits_are_unchanged(dsn: str) -> None:
    """--help still prints the help (stdout, 0); `jobq` alone prints it as a usage error
    (stderr, 2); an error a command raises keeps its own code."""
    help_text = _entry("--help", dsn=dsn)
    assert help_text.returncode == 0 and help_text.stdout.startswith("Usage: jobq [OPTIONS]")
    assert "--read-only" in help_text.stdout and help_text.stderr == ""
    show_help = _entry("show", "--help", dsn=dsn)
    assert show_help.returncode == 0 and "Usage: jobq show [OPTIONS]" in show_help.stdout
    bare = _entry(dsn=dsn)
    assert bare.returncode == 2 and bare.stdout == "" and "Commands:" in bare.stderr
    missing = _entry("show", "424242", dsn=dsn)
    assert missing.returncode == 3 and len(missing.stderr.splitlines()) == 1


def test_unknown_ids_exit_3(cli: Any, dsn: str) -> None:
    """One exit-code table: an id that names no live job is 3 for every command; a live job
    in the wrong state is 4."""
    for args in (["show", "424242"], ["retry", "--failed", "--yes"], ["retry", "424242", "-y"],
                 ["extend", "424242", "--by", "1m", "-y"], ["delete", "424242", "-y"],
                 ["cancel", "424242", "-y"], ["workers", "--drain", "no-such-worker", "-y"]):
        result = cli(*args)
        assert result.exit_code == 3, (args, result.output)
    pending = JobQueue(dsn).enqueue("t")
    result = cli("retry", str(pending), "-y")
    assert result.exit_code == 4, result.output


def test_show_prints_the_payload_on_lines_and_times_with_their_zone(cli: Any, dsn: str) -> None:
    job_id = JobQueue(dsn).enqueue("t", {"to": "a@example.com", "note": "two\nlines\x1b[2J"})
    shown = cli("show", str(job_id)).stdout
    assert '  "to": "a@example.com",\n' in shown  # indented JSON, one key per line
    assert "\\u001b" in shown or "\\x1b" in shown  # the escape inside a value stays visible
    assert re.search(r"created: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d", shown), shown


def test_status_fits_80_columns_when_piped(dsn: str, db: psycopg.Connection[Any]) -> None:
    """Issue 11: at a pipe's 80 columns every header is whole and a long type name folds onto
    further lines instead of being cut to a few letters. Under the table: a paused type with
    who, why and until when (with its zone), and expired leases that no live worker serves."""
    queue = JobQueue(dsn)
    queue.enqueue_many([NewJob("send-email-digest-weekly") for _ in range(3)] + [NewJob("sms")]
                       + [NewJob("orphan")])
    queue.claim(types=["orphan"], lease_ms=1000)
    db.execute("UPDATE svti_jobs SET lease_until = now() - interval '1 minute' "
               "WHERE type = 'orphan'")
    Admin(queue).pause(["sms"], until="30m", reason="smtp relay down", by="alice@ops")
    env = {**os.environ, "COLUMNS": "80", "JOBQ_DSN": dsn}
    shown = subprocess.run([JOBQ, "status"], capture_output=True, text=True, timeout=60,
                           env=env, check=True).stdout
    lines = shown.splitlines()
    assert all(len(line) <= 80 for line in lines), shown
    assert lines[0].split() == ["TYPE", "READY", "SCHED", "CLAIMED", "LATE", "EXPIRED",
                                "FAILED", "CANCL", "OLDEST", "DONE/M", "FAIL/M"], shown
    assert lines[0].index("READY") >= 14, shown  # room for a 13-character type name
    folded = "".join(line.split(" ", 1)[0] for line in lines[1:5]
                     if not line.startswith(("orphan", "sms")))
    assert folded == "send-email-digest-weekly" and "…" not in shown, shown
    notes = " ".join(" ".join(lines[lines.index(next(x for x in lines if x.startswith(
        "orphan: "))):]).split())
    assert re.search(r"sms: paused by alice@ops until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
                     r"[+-]\d\d:\d\d: smtp relay down", notes), shown
    assert ("orphan: no live worker serves it, so nothing takes back its 1 expired lease"
            in notes), shown


def test_version_and_a_bad_connection_option_exit_codes() -> None:
    version = subprocess.run([JOBQ, "--version"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert version.returncode == 0 and version.stdout == f"jobq {jobq_core.__version__}\n"
    bogus = subprocess.run([JOBQ, "status", "--dsn", "postgresql://u@127.0.0.1:1/d?sslmode=bogus"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert bogus.returncode == 2, bogus.stderr  # bad input, not an unreachable server
    assert bogus.stderr.startswith("jobq: invalid connection string")


def test_list_show_trace_status_and_json(cli: Any, dsn: str) -> None:
    queue = JobQueue(dsn)
    ids = queue.enqueue_many([NewJob("email", {"n": i}, request_id="r-1") for i in range(5)])
    queue.fail(queue.claim(), reason="SMTP timeout")
    queue.complete(queue.claim(), result={"sent": True})
    page = as_json(cli("list", "type:email", "--limit", "2", "--json"))
    assert len(page["rows"]) == 2 and page["next_cursor"]
    rest = as_json(cli("list", "type:email", "--after", page["next_cursor"], "--json"))
    assert len(page["rows"]) + len(rest["rows"]) == 4
    failed = as_json(cli("list", "state:failed", "error:timeout", "--json"))["rows"]
    assert [r["last_error"] for r in failed] == ["SMTP timeout"]
    done = as_json(cli("list", "state:completed", "--json"))["rows"]
    assert done[0]["result"] == {"sent": True}
    detail = as_json(cli("show", str(ids[0]), "--json"))
    assert detail["state"] == "failed" and [e["event"] for e in detail["events"]] == [
        "enqueued", "claimed", "failed"]
    assert len(as_json(cli("trace", "r-1", "--json"))) == 5 + 2 + 2
    stats = as_json(cli("status", "--json"))
    assert stats[0]["type"] == "email" and stats[0]["ready"] == {"value": 3, "exact": True}
    human = cli("list", "type:email")
    assert human.exit_code == 0 and "SMTP timeout" in human.stdout
    assert cli("show", str(ids[0])).exit_code == 0
    assert "enqueued" in cli("trace", "r-1").stdout
    assert "email" in cli("status").stdout
    findings = as_json(cli("doctor", "--json"))
    assert {f["check"] for f in findings} >= {"schema version", "expired leases"}


def test_retry_confirmation_dry_run_and_yes(cli: Any, dsn: str,
                                            db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    queue.enqueue_many([NewJob("a")] * 3)
    for job in queue.claim_many(3):
        queue.fail(job, reason="x")
    preview = as_json(cli("retry", "--failed", "--dry-run", "--json"))
    assert preview["dry_run"] and preview["preview"]["eligible"] == 3
    assert db.execute("SELECT count(*) FROM svti_jobs WHERE state = 'failed'").fetchone() == (3,)
    # No terminal and no --yes: refuse rather than hang, and change nothing.
    refused = cli("retry", "--failed")
    assert refused.exit_code == 2 and "without --yes" in refused.stderr
    assert db.execute("SELECT count(*) FROM svti_jobs WHERE state = 'failed'").fetchone() == (3,)
    done = as_json(cli("retry", "--failed", "--filter", "type:a", "--yes", "--json"))
    assert done["result"]["changed"] == 3
    assert db.execute("SELECT count(*) FROM svti_jobs WHERE state = 'pending'").fetchone() == (3,)
    conflict = cli("retry", "1", "2", "3", "--yes")  # pending now: nothing eligible
    assert conflict.exit_code in (3, 4)


def test_one_rule_for_asking_on_a_terminal(dsn: str, db: psycopg.Connection[Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The console's rule: retry and extend of given ids run at once; a destructive action
    (delete, cancel), or any action on jobs a filter chose, asks with the count, default No."""
    queue = JobQueue(dsn)
    first, second = queue.enqueue_many([NewJob("a"), NewJob("a")])
    for _ in range(2):
        queue.fail(queue.claim(), reason="x")
    monkeypatch.setenv("JOBQ_DSN", dsn)
    monkeypatch.setattr("jobq_cli.commands.stdin_is_terminal", lambda: True)
    runner = CliRunner()

    def state(job_id: int) -> str:
        return str(db.execute("SELECT state FROM svti_jobs WHERE id = %s",
                              (job_id,)).fetchone()[0])  # type: ignore[index]

    asked_by_filter = runner.invoke(app, ["retry", "--failed"], input="\n")
    assert asked_by_filter.exit_code == 1 and "retry 2 jobs?" in asked_by_filter.output
    assert state(first) == state(second) == "failed"
    at_once = runner.invoke(app, ["retry", str(first)], input="")
    assert at_once.exit_code == 0 and "?" not in at_once.output, at_once.output
    assert state(first) == "pending"
    held = queue.claim(lease_ms=1000)
    assert held is not None and held.id == first
    extended = runner.invoke(app, ["extend", str(first), "--by", "10m"], input="")
    assert extended.exit_code == 0 and "?" not in extended.output, extended.output
    for args in (["delete", str(second)], ["cancel", str(first)]):
        no = runner.invoke(app, args, input="\n")
        assert no.exit_code == 1 and f"{args[0]} 1 job?" in no.output, no.output
    assert (state(first), state(second)) == ("claimed", "failed")
    yes = runner.invoke(app, ["delete", str(second)], input="y\n")
    assert yes.exit_code == 0, yes.output
    assert db.execute("SELECT count(*) FROM svti_jobs WHERE id = %s", (second,)).fetchone() == (
        0,)


def test_extend_delete_and_clear(cli: Any, dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    queue.enqueue_many([NewJob("a")] * 3)
    held = queue.claim(lease_ms=1000)
    as_json(cli("extend", str(held.id), "--by", "10m", "--yes", "--json"))
    lease = db.execute("SELECT extract(epoch FROM lease_until - now()) FROM svti_jobs "
                       "WHERE id = %s", (held.id,)).fetchone()[0]
    assert 590 < lease < 610
    not_claimed = cli("extend", str(held.id + 1), "--by", "5m", "--yes")
    assert not_claimed.exit_code == 4
    by_filter = as_json(cli("extend", "--filter", "type:a", "--by", "1h", "--yes", "--json"))
    assert by_filter["result"]["changed"] == 1  # only the claimed one is selected
    refused = cli("delete", str(held.id), "--yes")
    assert refused.exit_code == 4  # claimed: only with --force
    assert as_json(cli("delete", str(held.id), "--force", "--yes", "--json"))["result"][
        "changed"] == 1
    assert as_json(cli("delete", "--filter", "state:pending", "--yes", "--json"))["result"][
        "changed"] == 2
    queue.enqueue("b")
    queue.fail(queue.claim(), reason="old")
    db.execute("UPDATE svti_jobs SET failed_at = now() - interval '8 days'")
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '8 days'")
    preview = as_json(cli("clear", "--older-than", "7d", "--dry-run", "--json"))["preview"]
    assert preview["failed_jobs"] == 1 and preview["history_rows"] > 5
    removed = as_json(cli("clear", "--older-than", "7d", "--yes", "--json"))["removed"]
    assert removed == preview["failed_jobs"] + preview["history_rows"]
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone() == (0,)


def test_migrate_dry_run_prints_sql(cli: Any, empty_dsn: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_DSN", empty_dsn)
    plan = as_json(cli("migrate", "--dry-run", "--json"))
    assert plan["dry_run"] and any('CREATE TABLE "public"."svti_jobs"' in s
                                   for s in plan["statements"])
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regclass('svti_jobs')").fetchone() == (None,)
    applied = as_json(cli("migrate", "--yes", "--json"))
    assert applied["statements"] == plan["statements"]
    assert as_json(cli("migrate", "--dry-run", "--json"))["statements"] == []


def test_untrusted_text_is_printed_literally(
    cli: Any, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping, so whole cells can be checked
    queue = JobQueue(dsn)
    hostile = "[bold red]boom[/] \x1b[2J\x1b[31mred\x07"
    job_id = queue.enqueue("t", {"text": hostile}, request_id="[link=x]req[/link]")
    queue.fail(queue.claim(), reason=hostile)
    for args in (["list"], ["show", str(job_id)], ["trace", "[link=x]req[/link]"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    shown = cli("list").stdout
    assert "[bold red]boom[/]" in shown and "\\x1b[2J" in shown


def test_entry_point_exit_codes_and_no_password(dsn: str, db: psycopg.Connection[Any]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("JOBQ_DSN", "DATABASE_URL")}

    def run(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([JOBQ, *args], capture_output=True, text=True, timeout=60,
                              env={**env, **(extra or {})}, check=False)

    ok = run("enqueue", "t", "--json", extra={"JOBQ_DSN": dsn})
    assert ok.returncode == 0 and json.loads(ok.stdout)["id"] > 0
    via_database_url = run("list", "--json", extra={"DATABASE_URL": dsn})
    assert len(json.loads(via_database_url.stdout)["rows"]) == 1
    secret = "pa55-w0rd-sekrit"
    for bad_dsn in (f"postgresql://alice:{secret}@127.0.0.1:1/db",
                    f"host=127.0.0.1 port=1 user=alice password={secret} dbname=db",
                    f"postgresql://alice:{secret}@127.0.0.1:1/db?sslmode=bogus"):
        result = run("status", "--dsn", bad_dsn)
        assert result.returncode == (2 if "bogus" in bad_dsn else 5), result.stderr
        assert secret not in result.stderr + result.stdout
        assert len(result.stderr.strip().splitlines()) == 1
    assert run("status", "--dsn", f"postgresql://alice:{secret}@127.0.0.1:1/db").returncode == 5
    help_text = " ".join(run("--help").stdout.split())
    assert "5 database unreachable" in help_text and "130 interrupted" in help_text
    assert run("list", "--json", extra={"JOBQ_DSN": dsn, "NO_COLOR": "1"}).returncode == 0


def test_trace_follow_prints_json_lines(dsn: str) -> None:
    queue = JobQueue(dsn)
    queue.enqueue("t", request_id="follow-me")
    proc = subprocess.Popen([JOBQ, "trace", "follow-me", "--follow", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JOBQ_DSN": dsn})
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        queue.complete(queue.claim())
        second = json.loads(proc.stdout.readline())
        third = json.loads(proc.stdout.readline())
        assert [first["event"], second["event"], third["event"]] == [
            "enqueued", "claimed", "completed"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_trace_prints_every_event_of_a_long_trace(dsn: str, db: psycopg.Connection[Any]) -> None:
    """More events than one statement reads (10,000) and than one page (1,000): all of them,
    in order, as a table and as one JSON document; --limit says where the rest goes on."""
    count = 12_345
    db.execute("""INSERT INTO svti_jobs_events (job_id, type, event, request_id, reason)
                  SELECT g, 'bulk', 'enqueued', 'req-long', 'n' || g
                  FROM generate_series(1, %s) g""", (count,))
    ids = [r[0] for r in db.execute(
        "SELECT id FROM svti_jobs_events WHERE request_id = 'req-long' ORDER BY id")]
    assert len(ids) == count

    as_json = _entry("trace", "req-long", "--json", dsn=dsn)
    assert as_json.returncode == 0 and as_json.stderr == "", as_json.stderr
    assert [e["id"] for e in json.loads(as_json.stdout)] == ids

    # The table streams the same pages (a few of them here: Rich takes ~1 s per 1,000 rows).
    tail = count - 2_500
    table = subprocess.run([JOBQ, "trace", "req-long", "--after", str(ids[tail - 1])],
                           capture_output=True, text=True, timeout=60, check=False,
                           env={**os.environ, "JOBQ_DSN": dsn, "COLUMNS": "200"})
    assert table.returncode == 0 and table.stderr == "", table.stderr
    rows = [line.split() for line in table.stdout.splitlines() if "enqueued" in line]
    assert [int(r[3]) for r in rows] == list(range(tail + 1, count + 1))  # the JOB column
    assert table.stdout.count("REASON / RESULT") == 1  # one table: the header once

    page = _entry("trace", "req-long", "--after", str(ids[99]), "--limit", "5000", "--json",
                  dsn=dsn)
    assert [e["id"] for e in json.loads(page.stdout)] == ids[100:5100]
    assert page.stderr.splitlines() == [f"more: --after {ids[5099]}"]
    rest = _entry("trace", "req-long", "--after", str(ids[5099]), "--limit", "99999",
                  "--json", dsn=dsn)
    assert [e["id"] for e in json.loads(rest.stdout)] == ids[5100:] and rest.stderr == ""


def test_clear_million_history_rows_while_a_worker_keeps_claiming(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """`jobq clear` over 1,000,000 old history rows, with a worker claiming throughout: the
    clear takes no lock that stops claims (each batch is its own short transaction)."""
    import threading
    import time

    db.execute("""INSERT INTO svti_jobs_events (occurred_at, job_id, type, event)
                  SELECT now() - interval '30 days', g, 'old', 'completed'
                  FROM generate_series(1000000001, 1001000000) g""")
    queue = JobQueue(dsn)
    gaps: list[float] = []
    stop = threading.Event()

    def worker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            queue.enqueue("live")
            job = queue.claim(types=["live"])
            assert job is not None
            queue.complete(job)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    result = subprocess.run([JOBQ, "clear", "--older-than", "7d", "--yes", "--json"],
                            capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "JOBQ_DSN": dsn})
    took = time.monotonic() - started
    stop.set()
    thread.join(30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == 1_000_000
    # The worker kept claiming and completing all along; how long its slowest round took is
    # a figure for the benchmarks, not a pass/fail condition.
    assert len(gaps) > 100
    print(f"clear of 1M rows took {took:.1f}s; slowest claim round {max(gaps):.3f}s")
    assert db.execute("SELECT count(*) FROM svti_jobs_events WHERE type = 'old'").fetchone() == (
        0,)



def _entry(*args: str, dsn: str, **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JOBQ, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "JOBQ_DSN": dsn}, check=False, **popen)


def test_every_command_through_the_entry_point(dsn: str, db: psycopg.Connection[Any]) -> None:
    """The installed `jobq`, each command with --json, as a script would run it."""

    def ok(*args: str) -> Any:
        result = _entry(*args, "--json", dsn=dsn)
        assert result.returncode == 0, (args, result.stderr)
        return json.loads(result.stdout)

    first = ok("enqueue", "email", "-p", '{"n": 1}', "--request-id", "req-e2e")["id"]
    second = ok("enqueue", "email", "--request-id", "req-e2e")["id"]
    queue = JobQueue(dsn)
    queue.fail(queue.claim(), reason="boom")
    held = queue.claim(lease_ms=5000)
    assert ok("status")[0]["type"] == "email"
    assert {r["id"] for r in ok("list")["rows"]} == {first, second}
    assert ok("show", str(first))["state"] == "failed"
    assert len(ok("trace", "req-e2e")) == 5
    assert ok("retry", str(first), "--yes")["result"]["changed"] == 1
    assert ok("extend", str(held.id), "--by", "1m", "--yes")["result"]["changed"] == 1
    assert ok("delete", str(first), "--yes")["result"]["changed"] == 1
    assert ok("clear", "--older-than", "1d", "--yes")["removed"] == 0
    assert {f["check"] for f in ok("doctor")} >= {"schema version"}
    assert ok("migrate", "--dry-run")["statements"] == []
    version = _entry("version", dsn=dsn)
    assert version.returncode == 0 and version.stdout.strip()


def _interrupted_follower(dsn: str, db: psycopg.Connection[Any]
                          ) -> subprocess.CompletedProcess[str]:
    """`jobq trace --follow`, sent SIGINT once it follows."""
    import signal
    import time

    args = [JOBQ, "trace", "nothing-here", "--follow"]
    proc = subprocess.Popen(args, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "JOBQ_DSN": dsn})
    deadline = time.monotonic() + 60
    # Following, waiting for events: its connection is open (however slow the start was).
    while not db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                         "current_database() AND application_name = 'jobq-cli'").fetchone()[0]:
        assert time.monotonic() < deadline and proc.poll() is None, "the follower never started"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=20)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_every_exit_code_of_the_table(dsn: str, db: psycopg.Connection[Any]) -> None:
    """The README's exit-code table, walked: for each code it documents, a command that
    produces it through the installed `jobq`, with its error on exactly one stderr line."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("| Code | Meaning |"):].split("\n\n", 1)[0]
    documented = {int(code) for code in re.findall(r"^\s*\| (\d+) \|", table, re.M)}
    with JobQueue(dsn) as queue:
        failed = queue.enqueue("t")
        queue.fail(queue.claim(), reason="boom")
    produced = {
        0: _entry("status", dsn=dsn),
        1: _entry("status", "--table", "no_queue_here", dsn=dsn),
        2: _entry("pause", "t", "--for", "7x", dsn=dsn),
        3: _entry("cancel", "424242", "--yes", dsn=dsn),
        4: _entry("cancel", str(failed), "--yes", dsn=dsn),
        5: _entry("status", dsn=CLOSED_PORT),
        130: _interrupted_follower(dsn, db),
    }
    assert set(produced) == documented, documented
    for code, result in produced.items():
        assert result.returncode == code, (code, result.stderr)
        lines = result.stderr.splitlines()
        if code == 0:
            assert lines == [] and "t" in result.stdout
        else:
            assert len(lines) == 1 and lines[0].startswith("jobq: "), (code, lines)
    assert "no jobq queue 'no_queue_here'" in produced[1].stderr
    assert "invalid duration '7x'" in produced[2].stderr
    assert produced[3].stderr == "jobq: no live job has id 424242\n"
    assert f"{failed} is failed, not pending or claimed" in produced[4].stderr
    assert "database unavailable" in produced[5].stderr
    assert produced[130].stderr == "jobq: interrupted\n"
    assert db.execute("SELECT state FROM svti_jobs WHERE id = %s", (failed,)).fetchone() == (
        "failed",)


def test_shell_completion(dsn: str) -> None:
    result = subprocess.run([JOBQ], capture_output=True, text=True, timeout=30, check=False,
                            env={**os.environ, "_JOBQ_COMPLETE": "complete_bash",
                                 "COMP_WORDS": "jobq ret", "COMP_CWORD": "1"})
    assert result.returncode == 0 and result.stdout.split() == ["retry"]
