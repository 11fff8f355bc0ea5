"""Fleet-wide limits (issue 14) in one process: what the claim statement keeps within one
batch and across claimers, the keys enqueue gives jobs, snoozes, and how `jobq limits`,
`jobq status` and the console show them. The multi-process and fault tests are in
tests/reliability/test_limit_faults.py."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from jobq_core import (
    InvalidInputError,
    JobQueue,
    LeaseLostError,
    NewJob,
    Schedule,
    _ops,
    create_task_runner,
)
from jobq_core.admin import Admin
from jobq_core.limits import Limits, Rate, parse_rate
from jobq_tui.app import JobqApp
from jobq_tui.screens.detail import DetailScreen

from .test_cli import as_json, cli  # noqa: F401  (the fixture)
from .tui_helpers import text_of, until


def limited(queue: JobQueue, type_: str = "charge", **options: Any) -> None:
    """Register a type's limits as a runner serving it does when it starts."""
    found = Limits.of(options)
    assert found is not None
    queue.register_limits({type_: found}, by="test:1")


def claimed_keys(db: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT coalesce(payload->>'tenant', '-') AS k FROM svti_jobs WHERE state = 'claimed' "
        "ORDER BY k")]


@pytest.mark.parametrize(("spec", "rate"), [
    ("100/s", Rate(100, timedelta(seconds=1), 100)),
    ("1000/h", Rate(1000, timedelta(hours=1), 1000)),
    (" 5 / 10m ", Rate(5, timedelta(minutes=10), 5)),
    ("2/day", Rate(2, timedelta(days=1), 2)),
])
def test_rates_are_read_as_a_count_per_period(spec: str, rate: Rate) -> None:
    assert parse_rate(spec) == rate
    assert parse_rate(spec, 3).burst == 3


@pytest.mark.parametrize("options", [
    {"rate_limit": "100"}, {"rate_limit": "0/s"}, {"rate_limit": "5/fortnight"},
    {"rate_limit": "5/400d"}, {"rate_limit": 100}, {"rate_burst": 3},
    {"rate_limit": "1/s", "rate_burst": 0}, {"global_concurrency": 0},
    {"global_concurrency": True}, {"global_concurrency": 10**7}, {"key_concurrency": 2},
    {"concurrency_key": "tenant"}, {"key_concurrency": 2, "concurrency_key": 5},
    {"key_rate_limit": "5/s"}, {"key_rate_burst": 2, "concurrency_key": "tenant",
                                "key_concurrency": 1},
    {"key_concurrency": 2, "concurrency_key": "a\nb"},
])
def test_bad_limits_are_refused_when_the_task_is_registered(dsn: str,
                                                            options: dict[str, Any]) -> None:
    runner = create_task_runner(JobQueue(dsn))
    with pytest.raises(InvalidInputError):
        runner.register("charge", lambda payload, ctx: None, **options)


def test_a_claim_keeps_a_global_limit_across_claims_and_within_a_batch(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    with JobQueue(dsn) as queue:
        limited(queue, global_concurrency=3)
        queue.enqueue_many([NewJob("charge", {"n": n}) for n in range(10)]
                           + [NewJob("other", {"n": n}) for n in range(5)])
        first = queue.claim_many(10, types=["charge", "other"])
        # The limit takes 3; the unlimited type fills the rest of the batch.
        assert sorted(j.type for j in first) == ["charge"] * 3 + ["other"] * 5
        assert queue.claim_many(10, types=["charge"]) == []
        queue.complete(next(j for j in first if j.type == "charge"))
        assert len(queue.claim_many(10, types=["charge"])) == 1
        # An expired lease keeps its slot until a claim takes it back, which keeps it.
        db.execute("UPDATE svti_jobs SET lease_until = now() - interval '1 second' "
                   "WHERE type = 'charge' AND state = 'claimed'")
        taken_back = queue.claim_many(10, types=["charge"])
        assert len(taken_back) == 3 and all(j.attempts == 2 for j in taken_back)
        assert db.execute("SELECT count(*) FROM svti_jobs WHERE type = 'charge' "
                          "AND state = 'claimed'").fetchone() == (3,)


def test_a_key_limit_counts_claimed_jobs_per_key_even_within_one_batch(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """key_concurrency=1 by the payload's tenant: a batch takes one job per tenant, passing
    over the backlog of tenants that are full; jobs without a tenant share the key ''."""
    with JobQueue(dsn) as queue:
        limited(queue, key_concurrency=1, concurrency_key="tenant")
        queue.enqueue_many([NewJob("charge", {"tenant": "a"}) for _ in range(5)]
                           + [NewJob("charge", {"tenant": "b"}), NewJob("charge", {}),
                              NewJob("charge", None)])
        assert len(queue.claim_many(10, types=["charge"])) == 3
        assert claimed_keys(db) == ["-", "a", "b"]
        assert queue.claim_many(10, types=["charge"]) == []
        row = Admin(queue).limits()[0]
        assert (row.in_use, row.keys_in_use, row.busiest_key) == (3, 3, 1)
        assert row.usage == "claimed 3, busiest key 1/1 of 3 keys"


def test_a_key_function_gives_jobs_their_key_at_enqueue(dsn: str,
                                                        db: psycopg.Connection[Any]) -> None:
    """`concurrency_key=lambda payload: ...` is applied by the queue of the runner that
    registered the task (and by its jobs' ctx.enqueue); a key given at enqueue wins; a key
    function that fails on a payload enqueues nothing."""
    queue = JobQueue(dsn)
    runner = create_task_runner(queue)
    runner.register("charge", lambda payload, ctx: None, key_concurrency=2,
                    concurrency_key=lambda payload: payload["account"]["tenant"])
    with queue:
        ids = [queue.enqueue("charge", {"account": {"tenant": "acme"}}),
               queue.enqueue("charge", {"account": {"tenant": 7}}),
               queue.enqueue("charge", {}, concurrency_key="given")]
        ids += queue.enqueue_many([NewJob("charge", {"account": {"tenant": "globex"}})])
        with pytest.raises(InvalidInputError, match=r"concurrency_key function of task "
                                                    r"'charge' failed.*KeyError"):
            queue.enqueue_many([NewJob("charge", {"account": {"tenant": "x"}}),
                                NewJob("charge", {"nothing": 1})])
        keys = dict(db.execute("SELECT id, concurrency_key FROM svti_jobs").fetchall())
        assert [keys[i] for i in ids] == ["acme", "7", "given", "globex"]
        assert len(keys) == 4


def test_an_untyped_claim_leaves_limited_types_to_typed_claims(dsn: str) -> None:
    with JobQueue(dsn) as queue:
        limited(queue, global_concurrency=5)
        queue.enqueue("charge")
        other = queue.enqueue("other")
        assert [j.id for j in queue.claim_many(10)] == [other]
        assert [j.type for j in queue.claim_many(10, types=["charge"])] == ["charge"]


def test_an_inline_claim_keeps_the_limits(dsn: str, db: psycopg.Connection[Any]) -> None:
    with JobQueue(dsn) as queue:
        limited(queue, global_concurrency=1, rate_limit="2/h")
        db.execute("UPDATE svti_jobs_limit_lanes SET tokens = 2")  # a new bucket starts empty
        first, second, third = (queue.enqueue("charge") for _ in range(3))
        assert queue.claim_by_id(first) is not None
        assert queue.claim_by_id(second) is None  # the slot is taken
        queue.complete(queue.claim_many(1, types=["charge"]) or first)
        assert queue.claim_by_id(second) is not None
        queue.complete(second)
        assert queue.claim_by_id(third) is None  # the rate's 2 tokens are spent
        assert Admin(queue).limits()[0].tokens == pytest.approx(0, abs=0.01)


@pytest.mark.parametrize(("global_limit", "key_limit", "reached"), [
    # one lane each: the limits are reached exactly
    (3, 1, (3, 1)),
    # 4 lanes of 4, and 2 lanes of 4 per key: more than one lane's share at once (the
    # threads hold too few jobs of one tenant at once to fill a lane's share of 4 often)
    (16, 8, (5, 3)),
])
def test_concurrent_claimers_never_exceed_a_limit_of_any_kind(
    dsn: str, db: psycopg.Connection[Any], global_limit: int, key_limit: int,
    reached: tuple[int, int]
) -> None:
    """Eight threads claim three types at once, in batches of 5, and complete as fast as
    they can: a global limit, a key limit per tenant (3 tenants), and a type with none.
    After every claim, the claimed jobs the database holds are within the limits."""
    with JobQueue(dsn, max_connections=10) as queue:
        limited(queue, global_concurrency=global_limit)
        limited(queue, "sync", key_concurrency=key_limit, concurrency_key="tenant")
        queue.enqueue_many([NewJob("charge", {"n": n}) for n in range(200)]
                           + [NewJob("sync", {"tenant": f"t{n % 3}"}) for n in range(200)]
                           + [NewJob("free", {"n": n}) for n in range(200)])
        seen: list[tuple[int, int, int]] = []
        lock = threading.Lock()
        types = ["charge", "free", "sync"]

        def claimer() -> None:
            with JobQueue(dsn, max_connections=1) as mine, psycopg.connect(
                    dsn, autocommit=True) as check:
                while True:
                    jobs = mine.claim_many(5, types=types)
                    if not jobs:
                        if not check.execute("SELECT count(*) FROM svti_jobs").fetchone()[0]:
                            return
                        continue
                    row = check.execute("""
                        SELECT count(*) FILTER (WHERE type = 'charge'),
                               coalesce(max(n) FILTER (WHERE type = 'sync'), 0),
                               count(*) FILTER (WHERE type = 'free')
                        FROM (SELECT type, count(*) OVER (
                                  PARTITION BY type, payload->>'tenant') AS n
                              FROM svti_jobs WHERE state = 'claimed') AS c""").fetchone()
                    with lock:
                        seen.append(row)
                    mine.complete_many(jobs)

        threads = [threading.Thread(target=claimer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert db.execute("SELECT count(*) FROM svti_jobs").fetchone() == (0,)
        assert max(r[0] for r in seen) <= global_limit
        assert max(r[1] for r in seen) <= key_limit
        assert max(r[0] for r in seen) >= reached[0] and max(r[1] for r in seen) >= reached[1]
        assert max(r[2] for r in seen) > 3  # the type with no limit is not held back


def test_a_limits_lanes_add_up_to_it_and_a_job_in_no_lane_counts_in_every_lane(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A limit of 16 has 4 lanes of 4, and a claim starts jobs from one lane: claims of 10
    take 4 each until the limit is reached. Jobs claimed before the limit existed hold no
    lane, and count against every lane's share, so the limit still holds."""
    with JobQueue(dsn) as queue:
        queue.enqueue_many([NewJob("charge", {"n": n}) for n in range(40)])
        early = queue.claim_many(3, types=["charge"])
        limited(queue, global_concurrency=16)
        assert db.execute("SELECT lanes FROM svti_jobs_limits").fetchone() == (4,)
        assert [len(queue.claim_many(10, types=["charge"])) for _ in range(5)] == [
            1, 1, 1, 1, 0]
        queue.complete_many(early)
        assert [len(queue.claim_many(10, types=["charge"])) for _ in range(5)] == [
            3, 3, 3, 3, 0]
        lanes = db.execute("SELECT limit_lane, count(*) FROM svti_jobs WHERE state = "
                           "'claimed' GROUP BY 1 ORDER BY 1").fetchall()
        assert lanes == [(0, 4), (1, 4), (2, 4), (3, 4)]
        assert Admin(queue).limits()[0].usage == "slots 16/16, 4 lanes"
        # a key whose share in one lane is used up takes the other lane's
        limited(queue, "sync", key_concurrency=8, concurrency_key="tenant")
        queue.enqueue_many([NewJob("sync", {"tenant": "a"}) for _ in range(20)])
        assert [len(queue.claim_many(10, types=["sync"])) for _ in range(3)] == [4, 4, 0]


def test_a_new_rate_starts_empty_and_a_changed_one_full(dsn: str,
                                                        db: psycopg.Connection[Any]) -> None:
    """A new row starts empty: a claim whose snapshot predates it could not spend from it.
    A changed definition is reported, and its rate starts full."""
    with JobQueue(dsn) as queue:
        limited(queue, rate_limit="10/h")
        queue.enqueue_many([NewJob("charge") for _ in range(12)])
        assert queue.claim_many(20, types=["charge"]) == []
        db.execute("UPDATE svti_jobs_limit_lanes SET refilled_at = now() - interval '1 hour'")
        # a burst of 10 has 2 lanes of 5, and a claim starts jobs from one lane
        assert [len(queue.claim_many(20, types=["charge"])) for _ in range(3)] == [5, 5, 0]
        assert queue.register_limits({"charge": Limits(rate=parse_rate("10/h"))},
                                     by="test:2") == []
        assert queue.claim_many(20, types=["charge"]) == []  # unchanged: tokens kept
        changed = queue.register_limits({"charge": Limits(rate=parse_rate("20/h"))},
                                        by="test:3")
        assert [(c.type, c.was, c.by) for c in changed] == [
            ("charge", "rate 10/h burst 10", "test:2")]
        assert queue.register_limits({"charge": Limits(rate=parse_rate("20/h"))},
                                     by="test:3") == []
        assert len(queue.claim_many(20, types=["charge"])) == 2


async def test_ctx_snooze_hands_the_job_back_at_no_attempt_cost(
    dsn: str, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An HTTP 429: the handler snoozes; the job is pending again at once-later, with the
    same attempt count, its slot free, and its history says so."""
    calls: list[int] = []
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, concurrency=2, poll_interval=0.05)

    @runner.task("api", global_concurrency=1, max_attempts=1)
    def api(payload: Any, ctx: Any) -> str:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            try:
                ctx.snooze(0.3, "HTTP 429")
            except Exception:  # a handler's own catch-all does not swallow a snooze
                return "swallowed"
        return "done"

    @runner.task("bad")
    def bad(payload: Any, ctx: Any) -> None:
        ctx.snooze(-1)

    with queue:
        job = queue.enqueue("api")
        broken = queue.enqueue("bad")
        with caplog.at_level(logging.INFO, "jobq.runner"):
            await runner.serve(until_idle=True)
        assert calls == [1, 1] and queue.outcome(job).result == "done"
        events = db.execute("SELECT event, attempt, reason FROM svti_jobs_events "
                            "WHERE job_id = %s ORDER BY id", (job,)).fetchall()
        assert [e[:2] for e in events] == [("enqueued", 0), ("claimed", 1), ("snoozed", 0),
                                           ("claimed", 1), ("completed", 1)]
        assert events[2][2].startswith("until ") and events[2][2].endswith(": HTTP 429")
        assert runner.counters["snoozed"] == 1
        assert "snoozed until" in caplog.text
        dead = db.execute("SELECT state, last_error FROM svti_jobs WHERE id = %s",
                          (broken,)).fetchone()
        assert dead is not None and dead[0] == "failed" and "snooze takes a delay" in dead[1]


def test_a_snooze_is_fenced_by_the_lease(dsn: str) -> None:
    with JobQueue(dsn) as queue:
        queue.enqueue("api")
        job = queue.claim(types=["api"])
        assert job is not None
        queue.fail(job.id, reason="operator", retry=True)
        with pytest.raises(LeaseLostError):
            queue.snooze(job, 5)


def test_jobq_limits_and_status_show_limits_and_their_use(
    dsn: str, db: psycopg.Connection[Any], cli: Any  # noqa: F811  (the fixture)
) -> None:
    with JobQueue(dsn) as queue:
        limited(queue, global_concurrency=4, rate_limit="100/h", rate_burst=20)
        db.execute("UPDATE svti_jobs_limit_lanes SET tokens = 20")  # a new bucket starts empty
        limited(queue, "mail", key_concurrency=2, concurrency_key="tenant")
        queue.enqueue_many([NewJob("charge"), NewJob("mail", {"tenant": "a"})])
        queue.claim_many(5, types=["charge", "mail"])
    shown = as_json(cli("limits", "--json"))
    assert [(r["type"], r["global_concurrency"], r["rate"], r["in_use"]) for r in shown] == [
        ("charge", 4, {"count": 100, "period": 3600.0, "burst": 20}, 1), ("mail", None, None, 1)]
    listed = cli("limits")
    assert listed.exit_code == 0, listed.output
    assert all(len(line) <= 80 for line in listed.stdout.splitlines()), listed.stdout
    assert "global 4, rate 100/h burst 20" in listed.stdout
    assert "per key 2 (key field 'tenant')" in listed.stdout
    status = cli("status")
    assert "charge: limits global 4, rate 100/h burst 20; slots 1/4, tokens 19/20" in \
        status.stdout.replace("\n", " ")
    assert as_json(cli("status", "--json"))[0]["limits"]["global_concurrency"] == 4
    assert cli("--read-only", "limits", "--remove", "mail", "--yes").exit_code == 2
    assert cli("limits", "--remove", "nothing", "--yes").exit_code == 3
    assert as_json(cli("limits", "--remove", "mail", "--yes", "--json")) == {"removed": "mail"}
    assert db.execute("SELECT type FROM svti_jobs_limits").fetchall() == [("charge",)]


async def test_the_console_overview_shows_each_types_limits(dsn: str) -> None:
    with JobQueue(dsn) as queue:
        limited(queue, global_concurrency=2, rate_limit="5/h")
        queue.enqueue_many([NewJob("charge") for _ in range(3)])
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("UPDATE svti_jobs_limit_lanes SET tokens = 5")
        queue.claim_many(5, types=["charge"])
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: "charge" in text_of(app, "#overview-limits"))
        line = text_of(app, "#overview-limits")
        assert "≤ charge global 2, rate 5/h burst 5: slots 2/2, tokens 3/5" in line


def test_a_runner_registers_its_limits_before_its_first_claim(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, poll_interval=0.05)
    runner.register("charge", lambda payload, ctx: None, global_concurrency=2,
                    rate_limit="50/s")
    with queue:
        queue.enqueue("charge")
        asyncio.run(runner.serve(until_idle=True))
    assert db.execute("SELECT type, global_concurrency, rate_count, rate_burst, "
                      "registered_by = %s FROM svti_jobs_limits",
                      (runner.worker_id,)).fetchall() == [("charge", 2, 50, 50, True)]


async def test_a_jobs_detail_shows_its_key_its_types_limits_and_schedule(
    dsn: str, cli: Any  # noqa: F811  (the fixture)
) -> None:
    with JobQueue(dsn) as queue:
        limited(queue, global_concurrency=4)
        queue.register_schedules([Schedule("charge", every=timedelta(minutes=5))], by="w:1")
        job = queue.enqueue("charge", {"tenant": "a"}, concurrency_key="acme")
        detail = Admin(queue).show(job)
    assert detail.job is not None and detail.job.concurrency_key == "acme"
    assert detail.limits is not None and detail.limits.global_concurrency == 4
    assert detail.schedule is not None and detail.schedule.spec == "every 300s"
    shown = cli("show", str(job))
    assert "concurrency key: acme" in shown.stdout
    assert "limits: global 4 (slots 0/4)" in shown.stdout
    assert "schedule: every 300s" in shown.stdout
    as_data = as_json(cli("show", str(job), "--json"))
    assert as_data["limits"]["global_concurrency"] == 4
    assert as_data["schedule"]["spec"] == "every 300s"
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=(110, 40)) as pilot:
        await until(pilot, lambda: app.refreshes)
        app.push_screen(DetailScreen(job))
        await until(pilot, lambda: "limits" in text_of(app, "#detail-summary"))
        summary = text_of(app, "#detail-summary")
        assert "global 4  (slots 0/4)" in summary and "every 300s" in summary
        assert "acme" in summary


def test_a_per_key_rate_meters_each_key_on_its_own(dsn: str,
                                                   db: psycopg.Connection[Any]) -> None:
    """key_rate_limit="2/h": each tenant starts with a full bucket of 2 (one batch takes 2
    of each, passing over the rest of a tenant's backlog); a key's row holds its bucket
    while it fills."""
    with JobQueue(dsn) as queue:
        limited(queue, key_rate_limit="2/h", concurrency_key="tenant")
        queue.enqueue_many([NewJob("charge", {"tenant": t}) for t in "aaaaabbbc"])
        taken = queue.claim_many(20, types=["charge"])
        assert sorted(j.payload["tenant"] for j in taken) == ["a", "a", "b", "b", "c"]
        queue.complete_many(taken)
        assert queue.claim_many(20, types=["charge"]) == []
        buckets = db.execute("SELECT key, tokens FROM svti_jobs_limit_keys "
                             "ORDER BY key").fetchall()
        assert [(k, round(t)) for k, t in buckets] == [("a", 0), ("b", 0), ("c", 1)]
        # Half an hour later, each key has earned one token back.
        db.execute("UPDATE svti_jobs_limit_keys SET refilled_at = refilled_at - "
                   "interval '30 minutes', full_at = full_at - interval '30 minutes'")
        again = queue.claim_many(20, types=["charge"])
        assert sorted(j.payload["tenant"] for j in again) == ["a", "b"]
        assert Admin(queue).limits()[0].summary == (
            "per key rate 2/h burst 2 (key field 'tenant')")


def test_a_runner_serving_until_idle_drains_a_type_whose_limit_binds(dsn: str) -> None:
    """A claim that counted this runner's own jobs as taken, while they finished, comes
    back empty: the runner claims again rather than take that for idle."""
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, concurrency=10)

    async def noop(payload: Any, ctx: Any) -> None:
        return None

    runner.register("charge", noop, global_concurrency=2)
    with queue:
        queue.enqueue_many([NewJob("charge") for _ in range(300)])
        asyncio.run(runner.serve(until_idle=True))
        assert runner.counters["completed"] == 300
        assert queue.pending(types=["charge"]) == 0


# -- interleavings: two connections with open transactions force the orders that matter ---------

def _lock_waits(dsn: str, n: int = 1) -> bool:
    """Whether `n` sessions of the database wait for a lock, within 5 s."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                               "current_database() AND wait_event_type = 'Lock'").fetchone()
            if row is not None and row[0] >= n:
                return True
            time.sleep(0.02)
    return False


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except Exception as exc:  # the test looks at it
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _hold_lane(dsn: str, type_: str, lane: int) -> psycopg.Connection[Any]:
    """A claim in flight, as another runner's: the lane locked until the connection commits."""
    conn = psycopg.connect(dsn)
    conn.execute("SELECT FROM svti_jobs_limit_lanes WHERE type = %s AND lane = %s FOR UPDATE",
                 (type_, lane))
    return conn


def test_a_claim_spends_the_tokens_of_lanes_made_after_its_snapshot(dsn: str) -> None:
    """A claim of two types waits for one's lane while a registration doubles the other's
    rate (2 lanes, both full): it still spends the tokens of the lane it then takes, though
    the lane's row is newer than its statement's snapshot. No more than the burst starts."""
    with JobQueue(dsn, max_connections=4) as queue:
        limited(queue, "a", global_concurrency=1)
        limited(queue, rate_limit="4/h")
        queue.enqueue_many([NewJob("a") for _ in range(3)]
                           + [NewJob("charge") for _ in range(30)])
        holder = _hold_lane(dsn, "a", 0)
        waiter, out = _in_thread(lambda: queue.claim_many(10, types=["a", "charge"]))
        assert _lock_waits(dsn)
        limited(queue, rate_limit="8/h")
        other = _hold_lane(dsn, "charge", 0)
        holder.commit()
        waiter.join(10)
        first = sum(j.type == "charge" for j in out["result"])
        second = len(queue.claim_many(10, types=["charge"]))
        other.commit()
        third = len(queue.claim_many(10, types=["charge"]))
        assert (first, second, third) == (4, 0, 4)  # 8: the burst, not 12
        holder.close()
        other.close()


def test_registrations_at_once_leave_the_lanes_their_count_says(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Two runners start at once with different limits: the second waits for the first to
    commit, then sees the lanes it made and drops those past its own count; claims then
    start no more than the limit that won."""
    with JobQueue(dsn, max_connections=4) as queue:
        limited(queue, global_concurrency=16)
        queue.enqueue_many([NewJob("charge") for _ in range(40)])
        first = psycopg.connect(dsn)
        queue._run(_ops.register_limits(
            queue.statements, {"charge": Limits(global_concurrency=32)}, "A"), conn=first)
        second, out = _in_thread(lambda: queue.register_limits(
            {"charge": Limits(global_concurrency=16)}, by="B"))
        assert _lock_waits(dsn)
        first.commit()
        first.close()
        second.join(10)
        assert [(c.was, c.by) for c in out["result"]] == [("global 32", "A")]
        assert db.execute("SELECT lanes FROM svti_jobs_limits").fetchone() == (4,)
        assert [r[0] for r in db.execute(
            "SELECT lane FROM svti_jobs_limit_lanes ORDER BY lane")] == [0, 1, 2, 3]
        assert sum(len(queue.claim_many(10, types=["charge"])) for _ in range(12)) == 16


def test_removing_limits_while_a_claim_holds_a_lane_waits_for_it(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """A removal locks the type's lanes before it deletes any key bucket: a claim that
    holds a lane while it writes that lane's buckets never waits for the removal."""
    with JobQueue(dsn, max_connections=4) as queue:
        limited(queue, key_concurrency=8, concurrency_key="tenant", key_rate_limit="8/h")
        queue.enqueue_many([NewJob("charge", {"tenant": "x"}) for _ in range(4)])
        # a bucket of lane 1 full again, which the claim deletes under that lane's lock
        db.execute("INSERT INTO svti_jobs_limit_keys (type, lane, key, tokens, refilled_at, "
                   "full_at) VALUES ('charge', 1, 'x', 1, now() - interval '1 hour', "
                   "now() - interval '1 second')")
        holder = _hold_lane(dsn, "charge", 0)
        remover, removed = _in_thread(lambda: Admin(queue).remove_limit("charge"))
        assert _lock_waits(dsn)
        claimer, claimed = _in_thread(lambda: queue.claim_many(4, types=["charge"]))
        time.sleep(0.3)
        holder.commit()
        holder.close()
        remover.join(10)
        claimer.join(10)
        assert "error" not in removed and "error" not in claimed, (removed, claimed)
        assert Admin(queue).limits() == []
