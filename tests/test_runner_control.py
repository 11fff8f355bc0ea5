"""An operator's control over running workers, against real Postgres and a real runner: cancel
(pending, and running in each executor), drain, the worker registry and paused types."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.sql
import pytest
from psycopg.conninfo import make_conninfo

from jobq_core import JobQueue, RunnerEvent, TaskRunner, create_task_runner
from jobq_core.admin import Admin

from . import runner_tasks
from .helpers import events
from .test_runner import serving, wait_until

SPAWN = mp.get_context("spawn")
#: Long enough that only a NOTIFY, not the next scheduled beat, can bring a cancel in time.
SLOW_BEAT = {"heartbeat_interval": 60.0, "lease_ms": 300_000}


def note(payload: dict[str, Any], job_id: int, what: str) -> None:
    """A handler's trace, written where the test reads it, whatever process it runs in."""
    with psycopg.connect(payload["dsn"], autocommit=True) as conn:
        conn.execute("INSERT INTO control_log (job_id, what, pid) VALUES (%s, %s, %s)",
                     (job_id, what, os.getpid()))


def until_cancelled(payload: Any, ctx: Any) -> Any:
    note(payload, ctx.job.id, "started")
    deadline = time.monotonic() + 60
    while not ctx.cancelled.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    note(payload, ctx.job.id, "saw ctx.cancelled" if ctx.cancelled.is_set() else "timed out")
    return "a result nobody may keep"


async def sleeps_until_cancelled(payload: Any, ctx: Any) -> Any:
    note(payload, ctx.job.id, "started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        note(payload, ctx.job.id, "CancelledError")
        raise
    return "a result nobody may keep"


def sleeps_in_a_child(payload: Any, ctx: Any) -> Any:
    note(payload, ctx.job.id, "started")
    time.sleep(60)
    return "a result nobody may keep"


def noted(db: psycopg.Connection[Any], job_id: int) -> list[tuple[str, int]]:
    return db.execute("SELECT what, pid FROM control_log WHERE job_id = %s ORDER BY id",
                      (job_id,)).fetchall()


@pytest.fixture
def log_table(db: psycopg.Connection[Any]) -> Iterator[None]:
    db.execute("CREATE TABLE control_log (id serial, job_id bigint, what text, pid int)")
    yield


def ended(db: psycopg.Connection[Any], job_id: int) -> tuple[str, str] | None:
    return db.execute("SELECT state, last_error FROM svti_jobs WHERE id = %s",
                      (job_id,)).fetchone()


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_handler_stopped(db: psycopg.Connection[Any], job_id: int, executor: str) -> None:
    """What each executor's cancelled handler left in control_log: the thread saw
    ctx.cancelled, the coroutine got CancelledError, the process child is gone."""
    (_, pid), *rest = noted(db, job_id)
    if executor == "thread":
        assert rest == [("saw ctx.cancelled", os.getpid())]
    elif executor == "async":
        assert rest == [("CancelledError", os.getpid())]
    else:
        assert pid != os.getpid() and not pid_exists(pid), "the process child still runs"


# -- cancel ------------------------------------------------------------------------------------

def test_a_cancelled_pending_job_never_runs(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    ran: list[int] = []
    runner.register("work", lambda payload, ctx: ran.append(ctx.job.id))
    doomed = queue.enqueue("work")
    kept = queue.enqueue("work")
    result = Admin(queue).cancel([doomed], reason="wrong customer", by="ops@desk")
    assert result.changed == 1
    runner.serve_forever(until_idle=True)
    assert ran == [kept]
    assert ended(db, doomed) == ("cancelled", "cancelled by ops@desk: wrong customer")
    assert events(db, doomed) == ["enqueued", "cancelled"]
    assert runner.counters["cancelled"] == 0  # never this runner's to stop


@pytest.mark.parametrize("executor", ["thread", "async", "process"])
def test_cancelling_a_running_job_stops_its_handler_and_frees_the_slot(
    dsn: str, db: psycopg.Connection[Any], log_table: None, executor: str
) -> None:
    queue = JobQueue(dsn)
    seen: list[RunnerEvent] = []
    # One slot: the job after the cancelled one runs only if the cancel frees it.
    runner = create_task_runner(queue, concurrency=1, process_workers=1,
                                on_event=seen.append, **SLOW_BEAT)
    handler = {"thread": until_cancelled, "async": sleeps_until_cancelled,
               "process": sleeps_in_a_child}[executor]
    runner.register("victim", handler, executor=executor)  # type: ignore[typeddict-item]
    runner.register("next", runner_tasks.noop)
    victim = queue.enqueue("victim", {"dsn": dsn}, request_id="req-victim")
    after = queue.enqueue("next", {"n": 1}, priority=-1)
    with serving(runner):
        wait_until(lambda: noted(db, victim), what="the handler to start")
        assert Admin(queue).cancel([victim], reason="stop it", by="tester").changed == 1
        assert queue.wait(after, timeout=30) == {"n": 1}
        if executor == "thread":  # the thread saw ctx.cancelled and returned a result
            wait_until(lambda: len(noted(db, victim)) == 2, what="the handler to return")
        wait_until(lambda: runner.counters["cancelled"] == 1, what="the cancel counted")
    assert ended(db, victim) == ("cancelled", "cancelled by tester: stop it")
    history = events(db, victim)
    assert history == ["enqueued", "claimed", "cancelled"], history
    assert_handler_stopped(db, victim, executor)
    assert runner.counters["lease_lost"] == 0 and runner.counters["completed"] == 1
    assert [(e.kind, e.job.id, e.error) for e in seen if e.kind == "cancelled"] == [
        ("cancelled", victim, "cancelled by tester: stop it")]


def test_a_runner_that_only_polls_learns_of_a_cancel_at_its_next_beat(
    dsn: str, db: psycopg.Connection[Any], log_table: None, caplog: pytest.LogCaptureFixture
) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, notify=False, heartbeat_interval=0.2)
    runner.register("victim", until_cancelled)
    victim = queue.enqueue("victim", {"dsn": dsn}, request_id="req-poll")
    with caplog.at_level(logging.INFO, logger="jobq"), serving(runner):
        wait_until(lambda: noted(db, victim), what="the handler to start")
        Admin(queue).cancel([victim], reason="poll", by="tester")
        wait_until(lambda: runner.counters["cancelled"] == 1, what="the cancel counted")
    assert [what for what, _ in noted(db, victim)] == ["started", "saw ctx.cancelled"]
    assert ended(db, victim) == ("cancelled", "cancelled by tester: poll")
    assert "completed" not in events(db, victim)
    assert (f"job {victim} (victim, request req-poll): cancelled by tester: poll; stopping "
            "its handler") in caplog.text
    assert "lease lost" not in caplog.text


# -- drain -------------------------------------------------------------------------------------

def test_a_drained_runner_finishes_its_jobs_and_exits_by_itself(
    dsn: str, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    queue = JobQueue(dsn)
    # A free slot: a runner that still claimed would take the job enqueued during the drain.
    runner = runner_tasks.make_runner(dsn, concurrency=4, **SLOW_BEAT)
    running = [queue.enqueue("slow", {"sleep": 3, "n": i}) for i in range(3)]
    thread = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
    with caplog.at_level(logging.INFO, logger="jobq"):
        thread.start()
        wait_until(lambda: db.execute("SELECT count(*) FROM svti_jobs WHERE state = 'claimed'"
                                      ).fetchone()[0] == 3, what="three claims")
        wait_until(Admin(queue).workers, what="registration")
        Admin(queue).drain(runner.worker_id, by="ops@desk")
        wait_until(lambda: runner.health()["draining_for"] == "ops@desk", what="the drain")
        waiting = queue.enqueue("noop", {"n": "not claimed"})
        thread.join(60)  # no request_stop: the drain alone ends serve()
        assert not thread.is_alive()
    assert [queue.wait(i, timeout=1)["attempt"] for i in running] == [1, 1, 1]
    assert db.execute("SELECT count(*) FROM svti_jobs_events WHERE event = 'released'"
                      ).fetchone()[0] == 0
    assert runner.counters["handed_back"] == 0 and runner.counters["completed"] == 3
    assert db.execute("SELECT count(*) FROM svti_jobs_workers").fetchone()[0] == 0
    # The job enqueued during the drain stays for another worker: a draining runner, with a
    # slot free, claims nothing more.
    assert db.execute("SELECT state, attempts FROM svti_jobs WHERE id = %s", (waiting,)
                      ).fetchone() == ("pending", 0)
    assert "draining at the request of ops@desk" in caplog.text
    assert runner.health()["draining_for"] == "ops@desk"


def test_a_stop_asked_for_during_a_drain_still_hands_back_at_once(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A drain waits for its jobs however long they take; an operator who then needs the
    worker gone sends the usual signals, and the second stops it at once."""
    queue = JobQueue(dsn)
    runner = runner_tasks.make_runner(dsn, concurrency=2, shutdown_timeout=60, **SLOW_BEAT)
    ids = [queue.enqueue("slow", {"sleep": 120, "n": i}) for i in range(2)]
    thread = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
    thread.start()
    wait_until(lambda: db.execute("SELECT count(*) FROM svti_jobs WHERE state = 'claimed'"
                                  ).fetchone()[0] == 2, what="two claims")
    wait_until(Admin(queue).workers, what="registration")
    Admin(queue).drain(runner.worker_id, by="ops@desk")
    wait_until(lambda: runner.health()["draining_for"], what="the drain order")
    runner.request_stop()  # graceful: the drain's jobs now have shutdown_timeout
    runner.request_stop()  # the second: at once
    thread.join(30)
    assert not thread.is_alive()
    assert db.execute("SELECT state, attempts FROM svti_jobs WHERE id = ANY(%s) ORDER BY id",
                      (ids,)).fetchall() == [("pending", 0), ("pending", 0)]
    assert runner.counters["handed_back"] == 2


def test_a_drain_ordered_while_the_listener_is_away_is_obeyed_when_it_returns(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A drain's NOTIFY sent while the runner's listener is reconnecting reaches nobody; the
    runner must not then wait for its next scheduled beat (a minute here) to learn of it."""
    queue = JobQueue(dsn)
    admin = Admin(queue)
    runner = runner_tasks.make_runner(dsn, concurrency=1, shutdown_timeout=60, **SLOW_BEAT)
    queue.enqueue("slow", {"sleep": 120})
    thread = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
    thread.start()
    listener = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'jobq-listener'")
    wait_until(lambda: db.execute(listener).fetchall(), what="the listener")
    wait_until(admin.workers, what="registration")
    # No new connection to this database meanwhile, so the listener cannot come back early.
    allow = psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}")
    database = psycopg.sql.Identifier(db.info.dbname)
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as other:
        other.execute(allow.format(database, psycopg.sql.SQL("false")))
        try:
            db.execute(f"SELECT pg_terminate_backend(pid) FROM ({listener}) AS l")
            admin.drain(runner.worker_id, by="ops@desk")  # on the admin's open connection
        finally:
            other.execute(allow.format(database, psycopg.sql.SQL("true")))
    wait_until(lambda: runner.health()["draining_for"], what="the drain order")
    runner.request_stop()
    runner.request_stop()
    thread.join(30)
    assert not thread.is_alive()


# -- the registry ------------------------------------------------------------------------------

def test_a_serving_runner_is_listed_with_what_it_runs_and_leaves_on_stop(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    admin = Admin(queue)
    runner = runner_tasks.make_runner(dsn, concurrency=2, heartbeat_interval=0.2)
    job = queue.enqueue("slow", {"sleep": 30})
    assert runner.worker_id.startswith(f"{runner.worker_name}:")
    with serving(runner):
        mine = wait_until(lambda: [w for w in admin.workers() if w.in_flight == 1],
                          what="a beat with the job in flight")
        assert runner.health()["worker_id"] == runner.worker_id
        runner.request_stop(immediately=True)
    (worker,) = mine
    assert (worker.id, worker.name, worker.pid) == (runner.worker_id, runner.worker_name,
                                                    os.getpid())
    assert worker.types == ["die", "noop", "slow"] and worker.concurrency == 2
    assert worker.alive and worker.beat_seconds == pytest.approx(0.2)
    assert admin.workers() == []
    assert db.execute("SELECT state FROM svti_jobs WHERE id = %s", (job,)).fetchone() == (
        "pending",)


def test_a_killed_runner_shows_as_not_alive_once_its_beats_stop(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    admin = Admin(JobQueue(dsn))
    worker = SPAWN.Process(target=runner_tasks.serve, args=(dsn, {"heartbeat_interval": 0.2}))
    worker.start()
    try:
        (listed,) = wait_until(admin.workers, what="registration")
        assert listed.pid == worker.pid and listed.alive and listed.in_flight == 0
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        worker.join(10)
        (dead,) = wait_until(lambda: [w for w in admin.workers() if not w.alive], timeout=30,
                             what="three missed beats")
    finally:
        worker.kill()
    assert dead.id == listed.id and dead.silent_for > 0.6


# -- paused types --------------------------------------------------------------------------------

def test_a_runner_logs_once_when_its_types_are_paused_and_once_when_resumed(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = JobQueue(dsn)
    admin = Admin(queue)
    runner: TaskRunner = runner_tasks.make_runner(dsn, heartbeat_interval=0.1)

    def beats() -> float | None:
        health = runner.health()["loops"].get("registry")
        return health["last_ok"] if health is not None else None

    def after_beats(n: int) -> None:
        for _ in range(n):
            last = beats()
            wait_until(lambda last=last: beats() != last, what="a beat")

    with caplog.at_level(logging.INFO, logger="jobq.runner"), serving(runner):
        wait_until(beats, what="the first beat")
        admin.pause(["slow", "someone-elses"], reason="db migration", by="ops")
        after_beats(3)
        admin.resume(["slow"])
        after_beats(3)
    paused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("paused")]
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed")]
    assert paused == ["paused by an operator, not claimed until resumed: slow"]
    assert resumed == ["resumed: slow"]


# -- logs without logging configured -----------------------------------------------------------

def test_without_logging_configured_handler_records_still_reach_stderr(dsn: str) -> None:
    """A program that configures no logging still sees its handlers' ctx.logger.info (Python's
    last resort would show warnings only), until it configures logging of its own."""
    script = textwrap.dedent('''
        import logging, sys
        from jobq_core import JobQueue, create_task_runner

        queue = JobQueue(sys.argv[1])
        runner = create_task_runner(queue)

        @runner.task("say")
        def say(payload, ctx):
            ctx.logger.info("said %s", payload)

        queue.enqueue("say", "first", request_id="req-unconfigured")
        runner.serve_forever(until_idle=True)
        logging.basicConfig(format="APP %(message)s", level=logging.WARNING)
        queue.enqueue("say", "second")
        runner.serve_forever(until_idle=True)
    ''')
    result = subprocess.run([sys.executable, "-c", script, dsn], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    said = [line for line in lines if "said" in line]
    assert len(said) == 1 and " INFO jobq.task.say: [job 1 req req-unconfigured] said first" \
        in said[0], result.stderr
    # Once the application configured logging, its handlers and levels decide.
    assert not [line for line in lines if "second" in line or "APP" in line], result.stderr


def test_a_runner_folds_the_rates_while_nobody_watches(dsn: str,
                                                       db: psycopg.Connection[Any]) -> None:
    """Per-minute rates come from history folded by whoever runs: a runner does it once a
    minute, so they are counted even when no console or `jobq status` ever looked."""
    queue = JobQueue(dsn)
    for _ in range(3):
        queue.enqueue("noop")
        job = queue.claim()
        assert job is not None
        queue.complete(job)
    db.execute("UPDATE svti_jobs_events SET occurred_at = now() - interval '3 minutes'")
    runner = runner_tasks.make_runner(dsn, concurrency=1, heartbeat_interval=0.2)
    with serving(runner):
        wait_until(lambda: db.execute("SELECT coalesce(sum(completed), 0) FROM svti_jobs_rates "
                                      "WHERE type = 'noop'").fetchone()[0] == 3,
                   what="the runner's fold")
    queue.close()


def test_a_claim_that_skipped_a_job_being_armed_for_a_waiter_is_woken_again(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """`wait()` marks its job with an UPDATE, which locks the row: a claim at that moment
    skips it (SKIP LOCKED) and finds nothing. The mark NOTIFYs, so the runner looks again
    instead of sleeping until its next poll (30 s here)."""
    queue = JobQueue(dsn)
    admin = Admin(queue)
    runner = runner_tasks.make_runner(dsn, poll_interval=30, heartbeat_interval=0.2)
    with serving(runner), psycopg.connect(dsn) as locker:
        wait_until(admin.workers, what="the runner's first beat")
        admin.pause(["noop"])
        job_id = queue.enqueue("noop", {"n": 7})
        locker.execute("SELECT id FROM svti_jobs WHERE id = %s FOR UPDATE", (job_id,))
        admin.resume(["noop"])  # its NOTIFY: a claim that skips the locked row
        time.sleep(1.0)
        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(queue.wait(job_id, timeout=10)))
        waiter.start()
        wait_until(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                      "wait_event_type = 'Lock'").fetchone()[0],
                   what="the waiter's mark blocked on the lock")
        locker.commit()
        waiter.join(15)
    assert result == [{"n": 7}]
    queue.close()


def test_a_job_cancelled_and_retried_while_its_old_thread_still_runs_runs_once_more(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A thread cannot be killed: after a cancel its handler may run on, ignoring
    ctx.cancelled, while the operator's retry runs the job again here. The old attempt keeps
    its slot until it ends, but must not take the new attempt's bookkeeping with it: the new
    one keeps its lease renewed, so the job is not taken back and run a third time."""
    queue = JobQueue(dsn)
    admin = Admin(queue)
    calls: list[int] = []
    runner = create_task_runner(queue, concurrency=2, lease_ms=2000, heartbeat_interval=0.5,
                                poll_interval=0.1)

    @runner.task("stubborn", max_attempts=5)
    def stubborn(payload: Any, ctx: Any) -> int:
        calls.append(len(calls) + 1)
        time.sleep(2.5 if len(calls) == 1 else 4.0)  # ignores ctx.cancelled on purpose
        return len(calls)

    job_id = queue.enqueue("stubborn")
    with serving(runner):
        wait_until(lambda: calls, what="the first run")
        admin.cancel([job_id], reason="wrong input")
        wait_until(lambda: runner.counters["claimed"] == 1 and runner.health()["in_flight"] == 0,
                   what="the cancel reaching the runner")
        assert runner.health()["free_slots"] == 1  # the old thread still holds its slot
        assert admin.retry([job_id]).changed == 1
        wait_until(lambda: len(calls) == 2, what="the rerun")
        wait_until(lambda: db.execute("SELECT count(*) FROM svti_jobs WHERE id = %s",
                                      (job_id,)).fetchone()[0] == 0, timeout=20,
                   what="the rerun's completion")
        time.sleep(1.0)  # a third run would have started by now had the lease lapsed
    assert calls == [1, 2]
    assert events(db, job_id).count("completed") == 1
    assert runner.counters["cancelled"] == 1 and runner.counters["lease_lost"] == 0
    queue.close()


def test_a_blocked_fold_never_holds_up_the_leases(dsn: str, db: psycopg.Connection[Any]) -> None:
    """The rates table locked by someone else (a VACUUM FULL, a DBA's ALTER): the runner's
    fold waits, but lease renewal goes on in its own loop, so a job is not run twice."""
    queue = JobQueue(dsn)
    calls: list[int] = []
    # A free slot: a lapsed lease would be taken back, and the job run again, right here.
    runner = create_task_runner(queue, concurrency=2, lease_ms=2000, heartbeat_interval=0.5,
                                poll_interval=0.1)

    @runner.task("steady")
    def steady(payload: Any, ctx: Any) -> str:
        calls.append(1)
        time.sleep(5)
        return "done"

    job_id = queue.enqueue("steady")
    with psycopg.connect(dsn) as dba:
        dba.execute("LOCK TABLE svti_jobs_rates IN ACCESS EXCLUSIVE MODE")
        with serving(runner):
            assert queue.wait(job_id, timeout=20) == "done"
        dba.rollback()
    assert calls == [1] and events(db, job_id).count("claimed") == 1
    queue.close()


def test_the_fallback_log_follows_stderr_as_a_console_app_swaps_it(dsn: str) -> None:
    """jobq-tui --demo runs a runner beside a Textual app, which takes sys.stderr over while
    it draws: the runner's records must go where sys.stderr points then, never straight to
    the terminal under the app's screen."""
    script = textwrap.dedent('''
        import asyncio, io, sys, threading, time
        from jobq_core import JobQueue, create_task_runner

        queue = JobQueue(sys.argv[1])
        runner = create_task_runner(queue, poll_interval=0.1)
        done = threading.Event()

        @runner.task("say")
        def say(payload, ctx):
            ctx.logger.info("drawn over? %s", payload)
            done.set()

        thread = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
        thread.start()
        time.sleep(1.0)
        terminal, sys.stderr = sys.stderr, io.StringIO()  # what a console app does
        queue.enqueue("say", "no")
        done.wait(20)
        time.sleep(0.2)
        captured, sys.stderr = sys.stderr.getvalue(), terminal
        runner.request_stop()
        thread.join(20)
        print(captured)
    ''')
    result = subprocess.run([sys.executable, "-c", script, dsn], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "drawn over? no" in result.stdout, result
    assert "drawn over?" not in result.stderr
