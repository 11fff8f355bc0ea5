"""`jobq cancel`, `pause`, `resume` and `workers` against real Postgres: each checked on what
the database holds afterwards, not only on what the command printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from jobq_cli.commands import app
from jobq_core import JobQueue, LeaseLostError, NewJob
from jobq_core._ops import WorkerInfo

from .test_cli import JOBQ

#: A zoned time as the CLI prints it.
ZONED = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d"


@pytest.fixture
def cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("JOBQ_DSN", dsn)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("JOBQ_READ_ONLY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # whole lines, to read them back
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, list(args))

    return invoke


@pytest.fixture
def queue(dsn: str) -> Any:
    with JobQueue(dsn) as q:
        yield q


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def state_of(db: psycopg.Connection[Any], job_id: int) -> tuple[Any, ...]:
    row = db.execute("SELECT state, last_error, lease_token FROM svti_jobs WHERE id = %s",
                     (job_id,)).fetchone()
    assert row is not None
    return tuple(row)


def events(db: psycopg.Connection[Any], job_id: int, event: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT reason, worker FROM svti_jobs_events WHERE job_id = %s "
                      "AND event = %s", (job_id, event)).fetchall()


def test_cancel_a_pending_job_records_who_and_why(
    cli: Any, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    """A pending job ends as `cancelled` at once, with who and why in the job and in its
    history. Among ids that name no live job, the known one is cancelled and the others are
    listed as skipped (exit 0, as `retry` does); only unknown ids: exit 3."""
    job_id, other = queue.enqueue_many([NewJob("report"), NewJob("report")])
    result = cli("cancel", str(job_id), "424242", "--reason", "wrong customer", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "cancelled 1 job; skipped 424242"
    state, error, token = state_of(db, job_id)
    assert state == "cancelled" and token is None
    assert re.fullmatch(r"cancelled by \S+@\S+: wrong customer", error), error
    [(reason, worker)] = events(db, job_id, "cancelled")
    assert reason == f"{error} (was pending)" and worker is None
    assert state_of(db, other)[0] == "pending"
    assert queue.claim(types=["report"]).id == other  # type: ignore[union-attr]
    again = cli("cancel", str(job_id), "--yes")  # cancelled already: live, wrong state
    assert again.exit_code == 4 and again.stderr.count("\n") == 1
    unknown = cli("cancel", "424242", "--yes")
    assert unknown.exit_code == 3 and unknown.stderr == "jobq: no live job has id 424242\n"
    retried = ok(cli("retry", str(job_id), "--json"))  # kept, and retryable
    assert retried["result"]["changed"] == 1 and state_of(db, job_id)[0] == "pending"


def test_cancel_a_running_job_takes_its_lease_away(
    cli: Any, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    """A claimed job is cancelled too: the output says it was running, its holder's lease
    token is gone, and the holder's late completion is refused."""
    queue.enqueue("render")
    held = queue.claim(lease_ms=60_000, worker="w-1")
    assert held is not None
    result = ok(cli("cancel", str(held.id), "--yes", "--json"))["result"]
    assert result == {"action": "cancel", "changed": 1, "skipped": [], "running": [held.id]}
    state, _, token = state_of(db, held.id)
    assert (state, token) == ("cancelled", None)
    assert events(db, held.id, "cancelled")[0][1] == "w-1"
    with pytest.raises(LeaseLostError):
        queue.complete(held, result={"late": True})
    assert state_of(db, held.id)[0] == "cancelled"
    queue.enqueue("render")
    second = queue.claim()
    assert second is not None
    human = cli("cancel", str(second.id), "--yes")
    assert human.exit_code == 0, human.output
    assert human.stdout.strip() == ("cancelled 1 job, 1 of them running (their workers stop "
                                    "them at their next heartbeat)")


def test_cancel_dry_run_and_filter(cli: Any, queue: JobQueue,
                                   db: psycopg.Connection[Any]) -> None:
    """--dry-run previews (eligible, and the rest with the reason) and changes nothing;
    --filter without a state cancels the type's pending and claimed jobs, and asks first."""
    ids = queue.enqueue_many([NewJob("import")] * 3 + [NewJob("keep")])
    dead = queue.claim(types=["import"])
    assert dead is not None
    queue.fail(dead, reason="boom")
    running = queue.claim(types=["import"])
    assert running is not None
    before = db.execute("SELECT id, state, lease_token FROM svti_jobs ORDER BY id").fetchall()
    preview = ok(cli("cancel", *map(str, ids), "--dry-run", "--json"))
    assert preview["dry_run"] and preview["preview"]["eligible"] == 3
    assert preview["preview"]["ineligible"] == [[dead.id, "is failed, not pending or claimed"]]
    shown = cli("cancel", *map(str, ids), "--dry-run")
    assert shown.exit_code == 0 and "cancel: 3 eligible" in shown.stderr
    assert f"not {dead.id}: is failed" in shown.stderr
    assert db.execute("SELECT id, state, lease_token FROM svti_jobs ORDER BY id").fetchall() \
        == before
    assert events(db, ids[0], "cancelled") == []
    refused = cli("cancel", "--filter", "type:import")  # chosen by a filter: it asks
    assert refused.exit_code == 2 and "without --yes" in refused.stderr
    done = ok(cli("cancel", "--filter", "type:import", "--yes", "--json"))["result"]
    assert done["changed"] == 2 and done["running"] == [running.id]
    states = dict(db.execute("SELECT id, state FROM svti_jobs").fetchall())
    assert [states[i] for i in ids] == ["failed", "cancelled", "cancelled", "pending"]


def _until_seconds(db: psycopg.Connection[Any], job_type: str) -> Any:
    return db.execute("SELECT extract(epoch FROM until - now()), paused_by, reason "
                      "FROM svti_jobs_pauses WHERE type = %s", (job_type,)).fetchone()


def test_pause_for_a_while_then_resume(cli: Any, queue: JobQueue,
                                      db: psycopg.Connection[Any]) -> None:
    """A pause for 30m: the row's `until` is now + 30m, claims of the type return nothing
    while other types are still claimed, `jobq pause` and `status` show it with who, why and
    a zoned until; `resume` lets claims take it again."""
    queue.enqueue_many([NewJob("email"), NewJob("sms")])
    paused = ok(cli("pause", "email", "--for", "30m", "--reason", "smtp relay down", "--json"))
    [pause] = paused["paused"]
    assert pause["type"] == "email" and pause["reason"] == "smtp relay down"
    seconds, by, reason = _until_seconds(db, "email")
    assert 29 * 60 < seconds <= 30 * 60 and "@" in by and reason == "smtp relay down"
    assert queue.claim(types=["email"]) is None
    other = queue.claim()  # an untyped claim skips the paused type too
    assert other is not None and other.type == "sms"
    assert queue.claim() is None
    listed = cli("pause")
    assert listed.exit_code == 0
    assert re.fullmatch(rf"email: paused by \S+ until {ZONED}: smtp relay down\n",
                        listed.stdout), listed.stdout
    stats = ok(cli("status", "--json"))
    email = next(s for s in stats if s["type"] == "email")
    assert email["paused"]["paused_by"] == by and email["paused"]["until"]
    assert email["served"] is False and "late" in email and "cancelled" in email
    assert re.search(rf"email: paused by \S+ until {ZONED}", cli("status").stdout)
    indefinitely = cli("pause", "sms")
    assert indefinitely.stdout.strip().endswith("sms: paused by " + by + " until resumed")
    assert db.execute("SELECT until FROM svti_jobs_pauses WHERE type = 'sms'").fetchone() == (
        None,)
    resumed = ok(cli("resume", "email", "nothing-paused", "--json"))
    assert resumed == {"resumed": ["email"], "not_paused": ["nothing-paused"]}
    assert _until_seconds(db, "email") is None
    job = queue.claim(types=["email"])
    assert job is not None and job.type == "email"
    [left] = ok(cli("pause", "--json"))["paused"]
    assert (left["type"], left["until"]) == ("sms", None)


def test_a_pause_that_ran_out_blocks_nothing(cli: Any, queue: JobQueue,
                                            db: psycopg.Connection[Any]) -> None:
    """A pause whose `until` passed resumes by itself: no claim is blocked, no one lists it."""
    job_id = queue.enqueue("digest")
    assert cli("pause", "digest", "--for", "1h").exit_code == 0
    assert queue.claim() is None
    db.execute("UPDATE svti_jobs_pauses SET until = now() - interval '1 second'")
    assert ok(cli("pause", "--json")) == {"paused": []}
    job = queue.claim(types=["digest"])
    assert job is not None and job.id == job_id
    assert ok(cli("status", "--json"))[0]["paused"] is None


@pytest.mark.parametrize("args", [["pause", "t", "--for", "0s"], ["pause", "t", "--for", "soon"],
                                  ["pause", "--for", "1h"], ["pause", ""], ["resume"]])
def test_bad_pause_input_exits_2(cli: Any, db: psycopg.Connection[Any], args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("jobq: ")
    assert db.execute("SELECT count(*) FROM svti_jobs_pauses").fetchone() == (0,)


def _beat(queue: JobQueue, worker_id: str, host: str, *, held: list[int] | None = None) -> None:
    """What a runner's heartbeat writes, without a runner."""
    queue.worker_beat(WorkerInfo(worker_id, f"{host}:4242", host, 4242, ["email", "sms"], 8,
                                 10.0, "test"), held or [])


def test_workers_lists_the_registry(cli: Any, queue: JobQueue,
                                    db: psycopg.Connection[Any]) -> None:
    """Each registered worker with its fields; one whose last beat is old shows as lost."""
    queue.enqueue_many([NewJob("email")] * 2)
    held = [queue.claim(), queue.claim()]
    _beat(queue, "web-1:4242:aa", "web-1", held=[j.id for j in held if j])
    _beat(queue, "web-2:4242:bb", "web-2")
    # Far enough back that the ages read the same however slow the test runs.
    db.execute("UPDATE svti_jobs_workers SET last_seen = now() - interval '2 hours', "
               "started_at = now() - interval '2 days' WHERE id = 'web-2:4242:bb'")
    listed = {w["id"]: w for w in ok(cli("workers", "--json"))}
    alive, lost = listed["web-1:4242:aa"], listed["web-2:4242:bb"]
    assert (alive["host"], alive["pid"], alive["types"], alive["concurrency"],
            alive["in_flight"], alive["status"]) == ("web-1", 4242, ["email", "sms"], 8, 2,
                                                     "running")
    assert re.fullmatch(r"\d{4}-.*[+-]\d\d:\d\d", alive["last_seen"]), alive["last_seen"]
    assert lost["status"] == "lost" and lost["alive"] is False and lost["silent_for"] >= 7200
    table = cli("workers")
    assert table.exit_code == 0
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]
            if not line.startswith(" ")}  # not a type's continuation line
    assert rows["web-1:4242:aa"][2:5] == ["4242", "email", "2/8"]  # id host pid type…
    assert rows["web-1:4242:aa"][-1] == "running"
    assert " ".join(rows["web-2:4242:bb"][-5:]) == "2d ago 2h ago lost"
    # Served: a live worker takes the type's expired leases back; the lost one counts not.
    assert {s["type"]: s["served"] for s in ok(cli("status", "--json"))} == {"email": True}


def test_workers_fit_80_columns_when_piped(queue: JobQueue, dsn: str) -> None:
    """Long ids, host names and type lists fold; headers and the other columns stay whole."""
    queue.worker_beat(WorkerInfo("worker-" + "0123456789abcdef" * 2, "w", "ip-10-0-113-42."
                                 "eu-west-1.compute.internal", 1234567, [
                                     "send-email-digest-weekly", "render-invoice-pdf"], 64,
                                 10.0, "test"), [])
    shown = subprocess.run([JOBQ, "workers"], capture_output=True, text=True, timeout=60,
                           check=True, env={**os.environ, "COLUMNS": "80", "JOBQ_DSN": dsn})
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), shown.stdout
    assert lines[0].split() == ["ID", "HOST", "PID", "TYPES", "RUNNING", "STARTED", "LAST",
                                "BEAT", "STATUS"], shown.stdout
    assert lines[1].split()[2:3] == ["1234567"] and lines[1].split()[-1] == "running"
    assert "…" not in shown.stdout
    def column(name: str, end: str) -> str:
        start, stop = lines[0].index(name), lines[0].index(end)
        return "".join(line[start:stop].strip() for line in lines[1:])

    assert column("ID", "HOST") == "worker-" + "0123456789abcdef" * 2, shown.stdout
    assert column("TYPES", "RUNNING") == "send-email-digest-weeklyrender-invoice-pdf"


def test_status_json_carries_late_cancelled_paused_and_served(
    cli: Any, queue: JobQueue, db: psycopg.Connection[Any]
) -> None:
    """late: less than half of its own lease left; cancelled; no pause, no live worker."""
    queue.enqueue_many([NewJob("t")] * 3)
    late, fresh = queue.claim(lease_ms=60_000), queue.claim(lease_ms=60_000)
    assert late is not None and fresh is not None
    db.execute("UPDATE svti_jobs SET lease_until = now() + interval '20 seconds' "
               "WHERE id = %s", (late.id,))  # 20 s of a 60 s lease left: a beat was missed
    ok(cli("cancel", str(fresh.id + 1), "--yes", "--json"))
    [t] = ok(cli("status", "--json"))
    assert (t["claimed"], t["late"], t["expired"], t["cancelled"]) == (
        {"value": 2, "exact": True}, {"value": 1, "exact": True},
        {"value": 0, "exact": True}, {"value": 1, "exact": True})
    assert t["paused"] is None and t["served"] is False


def test_workers_drain(cli: Any, queue: JobQueue, db: psycopg.Connection[Any]) -> None:
    """--drain records who asked, and the worker's next beat brings the order; it asks first
    (no terminal: refused), and an unknown id is exit 3 with one line."""
    _beat(queue, "web-1:4242:aa", "web-1")
    refused = cli("workers", "--drain", "web-1:4242:aa")
    assert refused.exit_code == 2 and "without --yes" in refused.stderr
    assert db.execute("SELECT drain_requested_by FROM svti_jobs_workers").fetchone() == (None,)
    drained = ok(cli("workers", "--drain", "web-1:4242:aa", "--yes", "--json"))["drained"]
    by = db.execute("SELECT drain_requested_by FROM svti_jobs_workers").fetchone()[0]  # type: ignore[index]
    assert by and "@" in by and drained["drain_requested_by"] == by
    assert drained["status"] == "draining"
    orders = queue.worker_beat(WorkerInfo("web-1:4242:aa", "web-1:4242", "web-1", 4242,
                                          ["email"], 8, 10.0, "test"), [])
    assert orders.drain_by == by
    assert re.search(rf"web-1:4242:aa: drain asked by \S+ at {ZONED}", cli("workers").stdout)
    unknown = cli("workers", "--drain", "nope", "--yes")
    assert unknown.exit_code == 3 and unknown.stderr == (
        "jobq: no worker with id 'nope' (see `jobq workers`)\n")
