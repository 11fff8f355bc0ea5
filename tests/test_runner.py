"""The task runner against real Postgres: retries, leases, crashes, shutdown, executors."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from jobq_core import (
    AsyncJobQueue,
    InvalidInputError,
    JobFailedError,
    JobQueue,
    NewJob,
    RunnerEvent,
    TaskRunner,
    UnknownTaskError,
    WaitTimeoutError,
    create_task_runner,
    exponential_backoff,
)

from . import runner_tasks
from .helpers import backdate, events

SPAWN = mp.get_context("spawn")


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def serving(runner: TaskRunner) -> Iterator[threading.Thread]:
    """The runner serving in a background thread, stopped gracefully on exit."""
    thread = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
    thread.start()
    wait_until(lambda: runner.serving or not thread.is_alive(), what="runner start")
    try:
        yield thread
    finally:
        runner.request_stop()
        thread.join(30)
        assert not thread.is_alive()


def count(db: psycopg.Connection[Any], where: str = "true") -> int:
    return db.execute(f"SELECT count(*) FROM svti_jobs WHERE {where}").fetchone()[0]


def completed(db: psycopg.Connection[Any]) -> Counter[int]:
    return Counter(dict(db.execute(
        "SELECT job_id, count(*) FROM svti_jobs_events WHERE event = 'completed' GROUP BY 1"
    ).fetchall()))


# -- basics ----------------------------------------------------------------------------------

def test_handlers_get_payload_and_context_and_results_are_stored(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, concurrency=4)
    seen: list[tuple[Any, int, str | None]] = []

    @runner.task("greet")
    def greet(payload: Any, ctx: Any) -> Any:
        seen.append((payload, ctx.attempt, ctx.request_id))
        ctx.logger.info("greeting %s", payload["name"])
        return {"hello": payload["name"]}

    job_id = queue.enqueue("greet", {"name": "ada"}, request_id="req-1")
    runner.serve_forever(until_idle=True)
    assert seen == [({"name": "ada"}, 1, "req-1")]
    assert queue.outcome(job_id).result == {"hello": "ada"}
    assert queue.wait(job_id, timeout=5) == {"hello": "ada"}
    assert runner.counters["completed"] == 1


def test_async_handlers_and_an_async_queue(dsn: str, db: psycopg.Connection[Any]) -> None:
    async def scenario() -> None:
        async with AsyncJobQueue(dsn) as queue:
            runner = create_task_runner(queue, concurrency=8)

            @runner.task("double")
            async def double(payload: Any, ctx: Any) -> Any:
                await asyncio.sleep(0.01)
                child = await ctx.aenqueue("noop") if payload == 1 else None
                return {"x": payload * 2, "child": child}

            runner.register("noop", runner_tasks.noop)
            ids = await queue.enqueue_many([NewJob("double", i) for i in range(20)])
            await runner.serve(until_idle=True)
            results = [await queue.wait(i, timeout=5) for i in ids]
            assert [r["x"] for r in results] == [i * 2 for i in range(20)]
            assert results[1]["child"] is not None

    asyncio.run(scenario())
    assert count(db) == 0


def test_only_registered_types_are_claimed(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    queue.enqueue("someone-elses")
    queue.enqueue("noop")
    runner_tasks.make_runner(dsn).serve_forever(until_idle=True)
    assert db.execute("SELECT type, state, attempts FROM svti_jobs").fetchall() == [
        ("someone-elses", "pending", 0)]


def test_never_more_claimed_than_free_slots(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    queue.enqueue_many([NewJob("slow", {"sleep": 0.05, "n": i}) for i in range(24)])
    in_flight, peak = 0, 0
    lock = threading.Lock()

    def track(event: RunnerEvent) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += {"claimed": 1, "completed": -1}.get(event.kind, 0)
            peak = max(peak, in_flight)

    runner = runner_tasks.make_runner(dsn, concurrency=3, on_event=track)
    claimed_rows: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(dsn) as conn:
            while not stop.is_set():
                claimed_rows.append(conn.execute(
                    "SELECT count(*) FROM svti_jobs WHERE state = 'claimed'").fetchone()[0])

    sampler = threading.Thread(target=sample)
    sampler.start()
    runner.serve_forever(until_idle=True)
    stop.set()
    sampler.join()
    assert peak == 3 and max(claimed_rows) <= 3
    assert len(completed(db)) == 24


def test_registration_is_validated(dsn: str) -> None:
    runner = create_task_runner(JobQueue(dsn))
    runner.register("a", runner_tasks.noop)
    for name, fn, options in [
        ("a", runner_tasks.noop, {}), ("bad name", runner_tasks.noop, {}),
        ("b", runner_tasks.noop, {"max_attempts": 0}), ("c", runner_tasks.noop, {"timeout": 0}),
        ("d", runner_tasks.noop, {"executor": "async"}),
        ("e", runner_tasks.async_sleepy, {"executor": "thread"}),
        ("f", runner_tasks.noop, {"executor": "fiber"}),
    ]:
        with pytest.raises(InvalidInputError):
            runner.register(name, fn, **options)
    with pytest.raises(InvalidInputError):
        create_task_runner(JobQueue(dsn), concurrency=0)
    with pytest.raises(UnknownTaskError):
        runner.run("nobody-handles-this")


# -- retries -----------------------------------------------------------------------------------

def test_failed_attempts_are_retried_with_backoff_then_fail_with_the_traceback(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    delays: list[int] = []

    def backoff(attempt: int) -> float:
        delays.append(attempt)
        return 0.05

    runner.register("poison", runner_tasks.boom, max_attempts=3, backoff=backoff)
    job_id = queue.enqueue("poison", "x", request_id="req-p")
    runner.serve_forever(until_idle=True)
    state, attempts, error = db.execute(
        "SELECT state, attempts, last_error FROM svti_jobs WHERE id = %s", (job_id,)).fetchone()
    assert (state, attempts) == ("failed", 3)
    assert error.startswith("ValueError: boom x") and "Traceback" in error
    assert "runner_tasks.py" in error
    assert delays == [1, 2]
    assert events(db, job_id) == ["enqueued", "claimed", "retried", "claimed", "retried",
                                  "claimed", "failed"]
    with pytest.raises(JobFailedError, match="boom x"):
        queue.wait(job_id, timeout=2)
    assert runner.counters["retried"] == 2 and runner.counters["failed"] == 1


def test_an_operator_retry_of_a_dead_job_runs_its_handler_again(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Issue 11: a job that used its whole attempt budget, retried once the handler is fixed,
    runs again (a fresh budget) instead of being failed unrun by the crash-loop guard."""
    from jobq_core.admin import Admin

    queue = JobQueue(dsn)
    fixed = threading.Event()
    calls: list[int] = []

    def handler(payload: Any, ctx: Any) -> str:
        calls.append(1)
        if not fixed.is_set():
            raise ValueError("bug")
        return "ok"

    runner = create_task_runner(queue)
    runner.register("t", handler, max_attempts=3, backoff=lambda attempt: 0.01)
    job_id = queue.enqueue("t")
    runner.serve_forever(until_idle=True)
    assert row_state(db, job_id) == ("failed", 3) and len(calls) == 3
    fixed.set()
    assert Admin(queue).retry([job_id]).changed == 1
    assert row_state(db, job_id) == ("pending", 0)
    runner.serve_forever(until_idle=True)
    assert queue.wait(job_id, timeout=5) == "ok" and len(calls) == 4
    retried = db.execute("SELECT attempt, reason FROM svti_jobs_events WHERE job_id = %s "
                         "AND event = 'retried' ORDER BY id DESC LIMIT 1", (job_id,)).fetchone()
    assert retried == (3, "retried by operator after 3 attempts (was failed); a fresh attempt "
                          "budget")


def row_state(db: psycopg.Connection[Any], job_id: int) -> tuple[str, int] | None:
    found = db.execute("SELECT state, attempts FROM svti_jobs WHERE id = %s", (job_id,)).fetchone()
    return None if found is None else (found[0], found[1])


def test_retry_is_persisted_with_its_delay(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    runner.register("poison", runner_tasks.boom, max_attempts=5,
                    backoff=lambda attempt: 3600.0)
    job_id = queue.enqueue("poison")
    runner.serve_forever(until_idle=True)
    state, delay = db.execute(
        "SELECT state, extract(epoch FROM run_at - now()) FROM svti_jobs WHERE id = %s",
        (job_id,)).fetchone()
    assert state == "pending" and 3500 < delay <= 3600


def test_retry_on_limits_which_errors_retry(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    runner.register("picky", runner_tasks.boom, max_attempts=5, retry_on=(KeyError,))
    runner.register("lenient", runner_tasks.boom, max_attempts=2, backoff=lambda a: 0.01,
                    retry_on=lambda exc: isinstance(exc, ValueError))
    picky = queue.enqueue("picky")
    lenient = queue.enqueue("lenient")
    runner.serve_forever(until_idle=True)
    assert db.execute("SELECT attempts, state FROM svti_jobs WHERE id = %s",
                      (picky,)).fetchone() == (1, "failed")
    assert db.execute("SELECT attempts, state FROM svti_jobs WHERE id = %s",
                      (lenient,)).fetchone() == (2, "failed")


def test_default_backoff_is_exponential_capped_and_jittered() -> None:
    backoff = exponential_backoff(base=1.0, cap=60.0)
    samples = {attempt: [backoff(attempt) for _ in range(200)] for attempt in (1, 3, 10)}
    assert all(0.5 <= s <= 1.0 for s in samples[1])
    assert all(2.0 <= s <= 4.0 for s in samples[3])
    assert all(30.0 <= s <= 60.0 for s in samples[10])  # capped
    assert len({round(s, 6) for s in samples[3]}) > 100  # jittered


# -- leases ------------------------------------------------------------------------------------

def test_a_lease_stolen_mid_handler_discards_the_result(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, heartbeat_interval=0.2, lease_ms=60_000)
    started, noticed, release = threading.Event(), threading.Event(), threading.Event()

    @runner.task("victim")
    def victim(payload: Any, ctx: Any) -> Any:
        started.set()
        wait_until(ctx.cancelled.is_set, what="cancellation")
        noticed.set()
        release.wait(10)
        return "stale result"

    job_id = queue.enqueue("victim")
    with serving(runner):
        assert started.wait(10)

        def steal() -> Any:
            # A heartbeat between the two statements legitimately renews the lapsed lease
            # (nobody had reclaimed it yet), so try again until the reclaim lands.
            backdate(db, job_id, lease_until="1 second")
            return queue.claim(types=["victim"])

        thief = wait_until(steal, what="the reclaim")
        assert thief.id == job_id
        assert noticed.wait(10)  # the heartbeat saw the lease go and set ctx.cancelled
        release.set()
        wait_until(lambda: runner.counters["discarded"] == 1, what="discard")
        queue.complete(thief, result="thief's result")
    assert queue.outcome(job_id).result == "thief's result"
    assert completed(db) == Counter({job_id: 1})
    assert runner.counters["lease_lost"] == 1 and runner.counters["completed"] == 0


def test_long_jobs_keep_their_lease_alive(dsn: str, db: psycopg.Connection[Any]) -> None:
    """2 s of work on a 0.6 s lease, while another worker tries to take the job the whole
    time: the heartbeat keeps the lease, so the rival never gets it."""
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, lease_ms=600, heartbeat_interval=0.1)
    runner.register("sleepy", runner_tasks.sleepy)
    job_id = queue.enqueue("sleepy", {"sleep": 2.0})
    stolen: list[Any] = []
    tries = 0
    with JobQueue(dsn) as rival, serving(runner):
        wait_until(lambda: db.execute("SELECT state FROM svti_jobs WHERE id = %s",
                                      (job_id,)).fetchone() == ("claimed",), what="the claim")
        while not stolen and queue.outcome(job_id).state != "completed":
            job = rival.claim(types=["sleepy"], worker="rival")
            tries += 1
            if job is not None:
                stolen.append(job)
            time.sleep(0.05)
    assert tries > 10 and not stolen
    assert queue.outcome(job_id).result == "woke"
    assert events(db, job_id) == ["enqueued", "claimed", "completed"]


def test_the_heartbeat_follows_the_shortest_lease_in_use(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A task's own 1.5 s lease, on a runner whose lease is 6 s. Once the claim's 6 s have
    passed, each beat renews the job for 1.5 s only: a beat every 2 s (a third of the
    runner's lease) would leave it lapsed half a second in every two, and the rival would take
    it. The beat follows the shortest lease, so the rival never gets it in the 10 s run."""
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, lease_ms=6000)
    runner.register("short", runner_tasks.sleepy, lease_ms=1500)
    assert runner.heartbeat_interval == pytest.approx(0.5)
    job_id = queue.enqueue("short", {"sleep": 10.0})
    stolen = []
    with JobQueue(dsn) as rival, serving(runner):
        wait_until(lambda: db.execute("SELECT state FROM svti_jobs WHERE id = %s",
                                      (job_id,)).fetchone() == ("claimed",), what="the claim")
        while not stolen and queue.outcome(job_id).state != "completed":
            if (job := rival.claim(types=["short"], worker="rival")) is not None:
                stolen.append(job)
            time.sleep(0.05)
    assert not stolen
    assert events(db, job_id) == ["enqueued", "claimed", "completed"]


def test_a_lease_the_heartbeat_cannot_keep_alive_is_refused(dsn: str) -> None:
    queue = JobQueue(dsn)
    with pytest.raises(InvalidInputError, match="cannot be kept alive"):
        create_task_runner(queue, lease_ms=1000, heartbeat_interval=0.6)
    runner = create_task_runner(queue, lease_ms=30_000, heartbeat_interval=5)
    with pytest.raises(InvalidInputError, match="cannot be kept alive"):
        runner.register("short", runner_tasks.sleepy, lease_ms=8000)
    runner.register("long-enough", runner_tasks.sleepy, lease_ms=10_000)


def test_serving_holds_only_while_serve_runs_and_one_serve_at_a_time(dsn: str) -> None:
    runner = create_task_runner(JobQueue(dsn), poll_interval=0.05)
    runner.register("t", runner_tasks.noop)
    assert not runner.serving
    with serving(runner):
        assert runner.serving
        with pytest.raises(InvalidInputError, match="serving already"):
            asyncio.run(runner.serve())
        assert runner.serving and runner.health()["status"] == "ok"
    assert not runner.serving and runner.health()["status"] == "stopped"


def test_a_serve_that_cannot_start_leaves_the_runner_stopped(dsn: str) -> None:
    """Signal handlers can only be set on the main thread: serve_forever elsewhere fails at
    once, and leaves nothing behind that says it serves."""
    runner = create_task_runner(JobQueue(dsn), poll_interval=0.05)
    runner.register("t", runner_tasks.noop)
    failed: list[BaseException] = []

    def off_the_main_thread() -> None:
        try:
            runner.serve_forever()
        except (RuntimeError, ValueError) as exc:  # as asyncio words it, by Python version
            failed.append(exc)

    thread = threading.Thread(target=off_the_main_thread)
    thread.start()
    thread.join(20)
    assert failed and not runner.serving and runner.health()["status"] == "stopped"
    with serving(runner):  # and it serves later all the same
        assert runner.serving


def test_ctx_extend_lengthens_the_lease(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    leases: list[float] = []

    @runner.task("extender")
    def extender(payload: Any, ctx: Any) -> Any:
        ctx.extend(600_000)
        leases.append(db.execute(
            "SELECT extract(epoch FROM lease_until - now()) FROM svti_jobs").fetchone()[0])

    queue.enqueue("extender")
    runner.serve_forever(until_idle=True)
    assert leases and leases[0] > 590


def test_jobs_of_a_kill_9_worker_are_completed_by_another(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    ids = queue.enqueue_many(
        [NewJob("slow", {"sleep": 60, "n": i}, request_id=f"r{i}") for i in range(4)])
    worker = SPAWN.Process(target=runner_tasks.serve, args=(
        dsn, {"concurrency": 4, "lease_ms": 1000, "heartbeat_interval": 0.2}))
    worker.start()
    wait_until(lambda: count(db, "state = 'claimed'") == 4, what="claims")
    os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
    worker.join(10)
    wait_until(lambda: queue.pending() == 4, timeout=10, what="lease expiry")
    runner = runner_tasks.make_runner(dsn)
    runner.serve_forever(until_idle=True)
    results = [queue.wait(i, timeout=5) for i in ids]
    assert [r["attempt"] for r in results] == [2, 2, 2, 2]
    assert completed(db) == Counter(dict.fromkeys(ids, 1))
    reqs = db.execute("SELECT DISTINCT job_id, request_id FROM svti_jobs_events").fetchall()
    assert sorted(reqs) == sorted((i, f"r{n}") for n, i in enumerate(ids))
    assert all(events(db, i) == ["enqueued", "claimed", "recovered", "completed"] for i in ids)


def test_a_job_that_kills_its_worker_every_time_ends_failed(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    job_id = queue.enqueue("die")  # registered with max_attempts=2
    for _ in range(3):
        if count(db, "state = 'failed'"):
            break
        wait_until(lambda: queue.pending() == 1, timeout=10, what="claimable")
        worker = SPAWN.Process(target=runner_tasks.serve, args=(
            dsn, {"lease_ms": 300, "heartbeat_interval": 0.1, "until_idle": True}))
        worker.start()
        worker.join(30)
    state, attempts, error = db.execute(
        "SELECT state, attempts, last_error FROM svti_jobs WHERE id = %s", (job_id,)).fetchone()
    assert (state, attempts) == ("failed", 3)
    assert "gave up after 2 attempts" in error
    assert events(db, job_id) == ["enqueued", "claimed", "recovered", "recovered", "failed"]


# -- executors and timeouts --------------------------------------------------------------------

def test_timeouts_in_all_three_executors(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, concurrency=3)
    runner.register("thread", runner_tasks.slow_first_attempt, timeout=0.3, max_attempts=1)
    runner.register("async", runner_tasks.async_sleepy, timeout=0.3, max_attempts=1)
    runner.register("process", runner_tasks.sleepy, executor="process", timeout=1.0,
                    max_attempts=1)
    ids = {kind: queue.enqueue(kind, {"sleep": 30}) for kind in ("thread", "async", "process")}
    runner.serve_forever(until_idle=True)
    for job_id in ids.values():
        state, error = db.execute("SELECT state, last_error FROM svti_jobs WHERE id = %s",
                                  (job_id,)).fetchone()
        assert state == "failed" and error.startswith("TimeoutError: timed out after")
    assert runner.counters["timed_out"] == 3


def test_process_executor_passes_request_ids_and_survives_a_dying_child(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, concurrency=2, process_workers=2)
    runner.register("report", runner_tasks.report, executor="process")
    runner.register("crash", runner_tasks.die, executor="process", max_attempts=1)
    runner.register("noop", runner_tasks.noop)
    first = queue.enqueue("report", {"spawn": True}, request_id="req-proc")
    crash = queue.enqueue("crash", priority=5)
    later = [queue.enqueue("report", {}, request_id=f"req-{i}") for i in range(4)]
    runner.serve_forever(until_idle=True)
    state, error = db.execute("SELECT state, last_error FROM svti_jobs WHERE id = %s",
                              (crash,)).fetchone()
    assert state == "failed" and "ProcessCrashedError" in error and "exit code 3" in error
    result = queue.wait(first, timeout=5)
    assert result["request_id"] == "req-proc" and result["pid"] != os.getpid()
    assert [queue.wait(i, timeout=5)["request_id"] for i in later] == [
        f"req-{i}" for i in range(4)]
    child_req = db.execute("SELECT request_id FROM svti_jobs_events WHERE job_id = %s",
                           (result["child"],)).fetchone()[0]
    assert child_req == "req-proc"


def test_request_ids_flow_through_retries_recovery_and_children(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    calls = Counter[int]()

    @runner.task("flow", max_attempts=3, backoff=lambda a: 0.01)
    def flow(payload: Any, ctx: Any) -> Any:
        calls[ctx.job.id] += 1
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return ctx.enqueue("leaf", {"parent": ctx.job.id}) if payload == "root" else None

    runner.register("leaf", runner_tasks.noop)
    root = queue.enqueue("flow", "root", request_id="req-flow")
    held = queue.enqueue("flow", "recovered", request_id="req-recovered")
    job = queue.claim_by_id(held, lease_ms=60_000)
    assert job is not None
    backdate(db, held, lease_until="1 second")  # as if its worker died
    runner.serve_forever(until_idle=True)
    rows = db.execute(
        "SELECT job_id, request_id FROM svti_jobs_events WHERE job_id <> %s", (held,)).fetchall()
    assert {r for _, r in rows} == {"req-flow"} and len({j for j, _ in rows}) == 2
    assert {r[0] for r in db.execute(
        "SELECT request_id FROM svti_jobs_events WHERE job_id = %s", (held,))} == {
        "req-recovered"}
    assert calls[root] == 2


# -- idempotency, run and wait -----------------------------------------------------------------

def test_run_executes_inline_once_per_key(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    calls: list[Any] = []

    @runner.task("charge")
    def charge(payload: Any, ctx: Any) -> Any:
        calls.append(payload)
        return {"charged": payload["amount"]}

    assert runner.run("charge", {"amount": 5}, idempotency_key="order-1") == {"charged": 5}
    assert runner.run("charge", {"amount": 9}, idempotency_key="order-1") == {"charged": 5}
    job_id = queue.enqueue("charge", {"amount": 7}, idempotency_key="order-1")
    assert queue.outcome(job_id).state == "completed" and count(db) == 0
    assert runner.run("charge", {"amount": 1}) == {"charged": 1}  # no key: runs
    assert calls == [{"amount": 5}, {"amount": 1}]


def test_run_raises_the_handlers_own_error(dsn: str) -> None:
    runner = create_task_runner(JobQueue(dsn))
    runner.register("poison", runner_tasks.boom, max_attempts=1)
    with pytest.raises(ValueError, match="boom 1"):
        runner.run("poison", 1)


def test_wait_for_a_job_run_elsewhere(dsn: str) -> None:
    queue = JobQueue(dsn)
    runner = runner_tasks.make_runner(dsn, poll_interval=0.05)
    runner.register("poison", runner_tasks.boom, max_attempts=1)
    with serving(runner):
        ok = queue.enqueue("noop", {"n": 7})
        bad = queue.enqueue("poison", "x")
        assert queue.wait(ok, timeout=10) == {"n": 7}
        with pytest.raises(JobFailedError) as info:
            queue.wait(bad, timeout=10)
        assert "ValueError: boom x" in (info.value.reason or "")
    stuck = queue.enqueue("nobody-runs-this")
    with pytest.raises(WaitTimeoutError):
        queue.wait(stuck, timeout=0.5)


async def test_async_wait_is_woken_by_notify(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import jobq_core._ops

    # No fallback check within the test's bound: only the NOTIFY can end the wait.
    monkeypatch.setattr(jobq_core._ops, "WAIT_POLL", 3600.0)
    async with AsyncJobQueue(dsn) as queue:
        job_id = await queue.enqueue("t")
        job = await queue.claim()
        assert job is not None

        async def finish_soon() -> None:
            await asyncio.sleep(0.3)
            await queue.complete(job, result=[1, 2])

        finisher = asyncio.create_task(finish_soon())
        assert await asyncio.wait_for(queue.wait(job_id), 60) == [1, 2]
        await finisher


# -- wakeups -----------------------------------------------------------------------------------

@pytest.mark.parametrize("notify", [True, False])
def test_new_work_wakes_the_runner(dsn: str, notify: bool) -> None:
    queue = JobQueue(dsn)
    # With NOTIFY the poll interval is irrelevant; poll-only mode relies on a short one.
    runner = runner_tasks.make_runner(dsn, notify=notify, poll_interval=30 if notify else 0.1)
    with serving(runner):
        time.sleep(0.5)  # idle and waiting
        job_id = queue.enqueue("noop", {"n": 1})
        # With NOTIFY, done well before the 30 s poll would have claimed it.
        assert queue.wait(job_id, timeout=10) == {"n": 1}


# -- shutdown ----------------------------------------------------------------------------------

def test_sigterm_mid_batch_hands_unfinished_jobs_back(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    ids = queue.enqueue_many([NewJob("slow", {"sleep": 30, "n": i}) for i in range(6)])
    worker = SPAWN.Process(target=runner_tasks.serve, args=(
        dsn, {"concurrency": 4, "shutdown_timeout": 0.5}))
    worker.start()
    wait_until(lambda: count(db, "state = 'claimed'") == 4, what="claims")
    stopped = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)  # type: ignore[arg-type]
    worker.join(20)
    assert worker.exitcode == 0 and time.monotonic() - stopped < 10
    rows = db.execute("SELECT state, attempts FROM svti_jobs").fetchall()
    assert sorted(rows) == [("pending", 0)] * 6  # nothing stuck, no attempt spent
    released = db.execute("SELECT count(*) FROM svti_jobs_events WHERE event = 'released'"
                          ).fetchone()[0]
    assert released == 4
    runner_tasks.make_runner(dsn, fast=True).serve_forever(until_idle=True)
    assert completed(db) == Counter(dict.fromkeys(ids, 1))


def test_graceful_shutdown_lets_short_jobs_finish(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    queue.enqueue_many([NewJob("slow", {"sleep": 0.5, "n": i}) for i in range(3)])
    runner = runner_tasks.make_runner(dsn, concurrency=3, shutdown_timeout=10)
    with serving(runner):
        wait_until(lambda: count(db, "state = 'claimed'") == 3, what="claims")
    assert count(db) == 0 and len(completed(db)) == 3


def test_a_second_stop_request_hands_back_at_once(dsn: str, db: psycopg.Connection[Any]) -> None:
    queue = JobQueue(dsn)
    queue.enqueue_many([NewJob("slow", {"sleep": 30, "n": i}) for i in range(2)])
    runner = runner_tasks.make_runner(dsn, concurrency=2, shutdown_timeout=60)
    thread = threading.Thread(target=lambda: asyncio.run(runner.serve()))
    thread.start()
    wait_until(lambda: count(db, "state = 'claimed'") == 2, what="claims")
    started = time.monotonic()
    runner.request_stop()
    time.sleep(0.2)
    runner.request_stop()  # the second signal
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert db.execute("SELECT state, attempts FROM svti_jobs").fetchall() == [("pending", 0)] * 2


# -- many workers --------------------------------------------------------------------------------

def test_three_worker_processes_complete_ten_thousand_jobs_exactly_once(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    for start in range(0, 10_000, 2000):
        queue.enqueue_many([NewJob("noop", {"n": i}) for i in range(start, start + 2000)])
    workers = [SPAWN.Process(target=runner_tasks.serve, args=(
        dsn, {"concurrency": 16, "until_idle": True, "worker_name": f"w{n}"}))
        for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(180)
        assert worker.exitcode == 0
    counts = completed(db)
    assert len(counts) == 10_000 and set(counts.values()) == {1}
    assert count(db) == 0
    by_worker = dict(db.execute(
        "SELECT worker, count(*) FROM svti_jobs_events WHERE event = 'completed' GROUP BY 1"
    ).fetchall())
    assert set(by_worker) == {"w0", "w1", "w2"}


# -- observability ---------------------------------------------------------------------------

def test_on_event_and_counters(dsn: str) -> None:
    queue = JobQueue(dsn)
    seen: dict[int, list[tuple[str, int]]] = {}
    runner = create_task_runner(
        queue, on_event=lambda e: seen.setdefault(e.job.id, []).append((e.kind, e.attempt)))
    runner.register("poison", runner_tasks.boom, max_attempts=2, backoff=lambda a: 0.01)
    runner.register("noop", runner_tasks.noop)

    def explode(event: RunnerEvent) -> None:
        raise RuntimeError("a broken hook must not break the runner")

    runner.on_event(explode)
    poison = queue.enqueue("poison")
    fine = queue.enqueue("noop")
    runner.serve_forever(until_idle=True)
    assert seen == {
        fine: [("claimed", 1), ("completed", 1)],
        poison: [("claimed", 1), ("retried", 1), ("claimed", 2), ("failed", 2)],
    }
    assert dict(runner.counters) == {"claimed": 3, "completed": 1, "retried": 1, "failed": 1}


def test_a_process_child_dies_with_its_worker(dsn: str, tmp_path: Any) -> None:
    """kill -9 of a worker takes its process children with it: no orphan goes on running a
    job whose lease nobody renews."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, os, sys\n"
        "from jobq_core.executors import ChildSettings, ProcessPool\n"
        "from jobq_core.models import Job\n"
        "from tests import runner_tasks\n"
        "import threading\n"
        "async def main():\n"
        "    pool = ProcessPool(1, ChildSettings(None, 'svti_jobs'))\n"
        "    job = Job(1, 't', {}, 0, None, 1, None, None, None, None, None, None)\n"
        "    task = asyncio.ensure_future(pool.run(runner_tasks.sleepy, {'sleep': 60}, job,"
        " None, threading.Event()))\n"
        "    while not pool._busy:\n"
        "        await asyncio.sleep(0.05)\n"
        "    print(next(iter(pool._busy)).proc.pid, flush=True)\n"
        "    await task\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)

    def gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as stat:
                return stat.read().split()[2] == "Z"  # a zombie has ended
        except FileNotFoundError:
            return True

    wait_until(gone, 10, "the child to die with its parent")
