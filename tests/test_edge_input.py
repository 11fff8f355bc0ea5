"""Hostile input at the edge (issue 10): every bad value gets a typed `InvalidInputError` in
the library and exit 2 with one stderr line in the CLI, and nothing it leaves behind can
break a later claim or listing. Real Postgres throughout."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from jobq_core import InvalidInputError, JobQueue, NewJob, parse_duration
from jobq_core.admin import Admin
from jobq_core.filters import parse_filter

from .test_cli import cli  # noqa: F401  (the fixture)

PLUS_14 = timezone(timedelta(hours=14))


@pytest.mark.parametrize("when", [
    datetime(1, 1, 1, 5, tzinfo=PLUS_14),           # F2: before year 1 in UTC
    datetime(9999, 12, 31, 20, tzinfo=timezone(timedelta(hours=-14))),
    timedelta(days=10**6),                           # F6: beyond what now() + delay can hold
    timedelta(seconds=-5),                           # a negative delay jumps the queue
])
def test_out_of_range_times_are_refused_and_nothing_is_stored(
    q: Any, db: psycopg.Connection[Any], when: Any
) -> None:
    with pytest.raises(InvalidInputError, match="out of range"):
        q.enqueue("t", run_at=when)
    with pytest.raises(InvalidInputError, match="out of range"):
        q.enqueue_many([NewJob("t"), NewJob("t", run_at=when)])
    job_id = q.enqueue("t")
    job = q.claim()
    assert job is not None and job.id == job_id
    with pytest.raises(InvalidInputError, match="out of range"):
        q.fail(job, reason="x", retry=True, run_at=when)
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone() == (1,)


@pytest.mark.parametrize("offset", [timedelta(hours=23, minutes=59), timedelta(hours=-16)])
def test_a_time_in_any_python_time_zone_is_stored_as_its_instant(
    q: Any, db: psycopg.Connection[Any], offset: timedelta
) -> None:
    """Python allows offsets up to 24 hours, Postgres reads at most 15:59: the COPY path of
    a batch sent the offset as given and failed with a raw "time zone displacement out of
    range" (found by hypothesis)."""
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone(offset))
    q.enqueue_many([NewJob("batch", run_at=when)] * 2)
    q.enqueue("single", run_at=when)
    q.enqueue_many([NewJob("keyed", run_at=when, idempotency_key="k")])
    stored = db.execute("SELECT DISTINCT run_at FROM svti_jobs").fetchall()
    assert stored == [(when,)]


@pytest.mark.parametrize("text", ["²", "attempts:²", "٣d", "1" * 5000 + "s", "999999999d"])
def test_odd_digits_and_huge_numbers_are_bad_input(text: str) -> None:
    with pytest.raises(InvalidInputError):
        if ":" in text:
            parse_filter(text)
        else:
            parse_duration(text)
    with pytest.raises(InvalidInputError):
        parse_filter(f"age:>{text}")


def test_an_operator_extend_is_capped_like_a_lease(dsn: str) -> None:
    with JobQueue(dsn) as queue:
        queue.enqueue("t")
        job = queue.claim()
        assert job is not None
        admin = Admin(queue)
        with pytest.raises(InvalidInputError, match="too long"):
            admin.extend([job.id], "99999999d")
        with pytest.raises(InvalidInputError, match="too long"):
            admin.extend([job.id], "8d")
        assert admin.extend([job.id], "7d").changed == 1


@pytest.mark.parametrize("field", ["payload", "request_id", "idempotency_key"])
def test_lone_surrogates_are_refused(q: Any, field: str) -> None:
    value: Any = {"text": "\ud800"} if field == "payload" else "a\ud800"
    with pytest.raises(InvalidInputError, match="Unicode"):
        q.enqueue("t", **{field: value})


def test_a_reason_with_a_surrogate_is_still_recorded(q: Any, db: psycopg.Connection[Any]) -> None:
    q.enqueue("t")
    q.fail(q.claim(), reason="broke on \ud800")
    assert db.execute("SELECT last_error FROM svti_jobs").fetchone() == ("broke on \\ud800",)


def test_a_payload_nested_too_deeply_is_refused(q: Any) -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidInputError, match="nested too deeply"):
        q.enqueue("t", deep)


@pytest.mark.parametrize("worker", ["a\x00b", "w" * 1_000_000, "\udcff"])
def test_worker_names_are_validated(q: Any, worker: str) -> None:
    q.enqueue("t")
    with pytest.raises(InvalidInputError, match="worker name"):
        q.claim(worker=worker)
    assert q.claim(worker="fine") is not None


@pytest.mark.parametrize("args", [
    ["enqueue", "t", "--run-at", "0001-01-01T00:00:00+14:00"],
    ["enqueue", "t", "--delay", "999999999d"],
    ["enqueue", "t", "--delay", ""],
    ["clear", "--older-than", "999999999d", "--yes"],
    ["list", "age:>999999999d"],
    ["list", "attempts:²"],
    ["extend", "1", "--by", "99999999d", "--yes"],
])
def test_cli_bad_input_is_one_line_and_exit_2(cli: Any, args: list[str]) -> None:  # noqa: F811
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobq: "), result.stderr
    assert "Traceback" not in result.output


def test_cli_payload_that_is_not_utf8(cli: Any, tmp_path: Any) -> None:  # noqa: F811
    file = tmp_path / "payload.json"
    file.write_bytes(b'{"x": "\xff\xfe"}')
    result = cli("enqueue", "t", "-p", f"@{file}")
    assert result.exit_code == 2 and "not UTF-8" in result.stderr
    assert "Traceback" not in result.output


def test_the_users_connection_options_are_kept(empty_dsn: str) -> None:
    """A DSN's own options (search_path, statement_timeout) and application_name survive
    the queue's plan_cache_mode: an unqualified table lands in the schema the user chose."""
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
    dsn = make_conninfo(empty_dsn, options="-c search_path=app -c statement_timeout=12345",
                        application_name="billing-worker")
    with JobQueue(dsn) as queue:
        queue.enqueue("t")
        with queue.connection() as conn:
            settings = conn.execute(
                "SELECT current_setting('search_path'), current_setting('statement_timeout'), "
                "current_setting('plan_cache_mode'), current_setting('application_name')"
            ).fetchone()
    assert settings == ("app", "12345ms", "force_generic_plan", "billing-worker")
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regclass('app.svti_jobs') IS NOT NULL, "
                            "to_regclass('public.svti_jobs') IS NULL").fetchone() == (True, True)


def test_reads_never_create_tables(empty_dsn: str, cli: Any,  # noqa: F811
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in --table used to create four tables and report "no jobs". Now every read
    (and every operator command) says there is no such queue and how to make one, and the
    database is left as it was."""
    monkeypatch.setenv("JOBQ_DSN", empty_dsn)
    for args in (["status"], ["list"], ["show", "1"], ["trace", "r"], ["doctor"],
                 ["retry", "1", "--yes"], ["clear", "--older-than", "7d", "--yes"],
                 ["enqueue", "t"]):
        result = cli(*args, "--table", "svti_jbos")
        assert result.exit_code == 1, (args, result.output)
        assert "no jobq queue 'svti_jbos'" in result.stderr and "jobq migrate" in result.stderr
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                            ).fetchone() == (0,)
    assert cli("migrate", "--table", "svti_jbos", "--yes").exit_code == 0
    assert cli("status", "--table", "svti_jbos").exit_code == 0


def test_auto_migrate_off_checks_and_names_the_fix(empty_dsn: str) -> None:
    from jobq_core import SchemaError, create_job_queue

    with pytest.raises(SchemaError, match="jobq migrate"):
        create_job_queue(empty_dsn, auto_migrate=False)
    with JobQueue(empty_dsn, auto_migrate=False) as queue, pytest.raises(SchemaError):
        queue.enqueue("t")
    create_job_queue(empty_dsn).close()  # an owner migrates once
    with create_job_queue(empty_dsn, auto_migrate=False) as queue:
        assert queue.enqueue("t") > 0


def test_broken_schemas_are_schema_errors(empty_dsn: str) -> None:
    """F1: a schema that does not exist, and a foreign table where the history must go."""
    from jobq_core import SchemaError, create_job_queue

    with pytest.raises(SchemaError, match="create that schema first"):
        create_job_queue(empty_dsn, table="nowhere.jobs")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE svti_jobs_events (id int, note text)")
    with pytest.raises(SchemaError, match="choose another table name"):
        create_job_queue(empty_dsn)


def test_json_output_escapes_what_a_terminal_would_act_on(
    cli: Any, db: psycopg.Connection[Any]  # noqa: F811
) -> None:
    """F13: C1 controls (U+009B starts an escape sequence), a bidi override and zero-width
    characters leave `--json` as \\u escapes; the data decodes unchanged."""
    import json

    hostile = "a\u009b31mb\u202ec\u200bd\u2028e\x1bf"
    job_id = json.loads(cli("enqueue", "t", "-p", json.dumps({"x": hostile}), "--json").stdout)[
        "id"]
    shown = cli("show", str(job_id), "--json")
    assert shown.exit_code == 0, shown.output
    for ch in ("\u009b", "\u202e", "\u200b", "\u2028", "\x1b"):
        assert ch not in shown.stdout
    assert "\\u009b" in shown.stdout and "\\u202e" in shown.stdout
    assert json.loads(shown.stdout)["job"]["payload"] == {"x": hostile}
    plain = json.loads(cli("enqueue", "t", "-p", '{"x": "café"}', "--json").stdout)["id"]
    assert "café" in cli("show", str(plain), "--json").stdout  # ordinary text stays readable


@pytest.mark.parametrize("lease", [0, -1, 10**12])
def test_a_heartbeat_with_a_lease_out_of_range_is_refused(q: Any, lease: int) -> None:
    q.enqueue("t")
    job = q.claim(lease_ms=5000)
    for jobs in ([job], []):
        with pytest.raises(InvalidInputError, match="lease"):
            q.heartbeat(jobs, lease)  # 0 once meant "the default lease"
    assert q.heartbeat([job], 20_000) == {job.id}


def test_a_payload_too_deep_to_decode_written_by_another_client_poisons_nothing(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """jobq refuses such payloads; another client may still write one. The claim that has
    already committed must hand the job out, listings must show it, and a runner fails it
    for good instead of running it."""
    from jobq_core import JobFailedError
    from jobq_core.models import UndecodableJSON

    from .runner_tasks import make_runner
    from .test_runner import serving

    deep = "[" * 5000 + "]" * 5000
    huge = '{"n": 1e5000}'  # Postgres prints it as 5,001 digits; Python reads 4,300 at most
    with JobQueue(dsn) as queue:
        first, second, third = queue.enqueue("t"), queue.enqueue("noop"), queue.enqueue("h")
        db.execute("UPDATE svti_jobs SET payload = %s::jsonb WHERE id < %s", [deep, third])
        db.execute("UPDATE svti_jobs SET payload = %s::jsonb WHERE id = %s", [huge, third])
        job = queue.claim(types=["t"])
        assert job is not None and job.id == first
        assert isinstance(job.payload, UndecodableJSON) and job.payload == deep
        big = queue.claim(types=["h"])
        assert big is not None and isinstance(big.payload, UndecodableJSON)
        admin = Admin(queue)
        assert {r.id for r in admin.list_jobs().rows} == {first, second, third}
        assert admin.show(first) is not None
        with serving(make_runner(dsn)), pytest.raises(JobFailedError,
                                                      match="payload cannot be decoded"):
            queue.wait(second, timeout=20)


@pytest.mark.parametrize("jobs", [None, 5, NewJob("t"), "abc", {"type": "t"}])
def test_a_batch_that_is_not_a_list_is_refused(q: Any, jobs: Any) -> None:
    with pytest.raises(InvalidInputError, match="must be a list"):
        q.enqueue_many(jobs)
    with pytest.raises(InvalidInputError, match="must be a list"):
        q.complete_many(jobs)
    with pytest.raises(InvalidInputError, match="must be a list"):
        q.heartbeat(jobs)
