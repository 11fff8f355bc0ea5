"""A typed claim over several types shares its batch between them, and locks no row it does
not take (issue 12)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobq_core import JobQueue, NewJob
from jobq_core.admin import Admin


@pytest.fixture
def queue(dsn: str) -> Iterator[JobQueue]:
    with JobQueue(dsn, max_connections=10) as q:
        yield q


def backlog(queue: JobQueue, sizes: dict[str, int], priority: int = 0) -> None:
    queue.enqueue_many([NewJob(t, i, priority=priority)
                        for t, n in sizes.items() for i in range(n)])


def locked_by_an_open_claim(dsn: str, queue: JobQueue, limit: int, types: list[str]) -> int:
    """Run the claim in a transaction left open, and count from another session the rows
    it holds locked: the pending rows a concurrent claimer would have to skip."""
    params = {"limit": limit, "types": types, "lease_ms": 30_000, "worker": "w", "turn": 0}
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as other:
        total = other.execute("SELECT count(*) FROM svti_jobs").fetchone()
        claimed = len(holder.execute(queue.statements.claim_typed, params).fetchall())
        free = other.execute("SELECT count(*) FROM (SELECT id FROM svti_jobs "
                             "FOR UPDATE SKIP LOCKED) AS s").fetchone()
        holder.rollback()
    assert total is not None and free is not None
    assert claimed == limit
    return int(total[0]) - int(free[0])


@pytest.mark.parametrize(("types", "limit"), [(4, 5), (50, 100), (3, 2)])
def test_a_claim_over_many_types_locks_only_the_rows_it_takes(
    dsn: str, queue: JobQueue, types: int, limit: int
) -> None:
    """With a LIMIT per type, 4 types and a batch of 5 locked 20 rows, and 50 types at a
    batch of 100 locked 5,000: every concurrent claimer had to skip them all."""
    names = [f"t{n:02}" for n in range(types)]
    backlog(queue, dict.fromkeys(names, limit + 3))
    assert locked_by_an_open_claim(dsn, queue, limit, names) == limit


def test_leftover_slots_lock_only_what_fills_the_batch(dsn: str, queue: JobQueue) -> None:
    """Types short of their share leave slots to the others, still without over-locking."""
    backlog(queue, {"a": 1, "b": 40, "c": 40, "d": 0})
    assert locked_by_an_open_claim(dsn, queue, 20, ["a", "b", "c", "d"]) == 20


def test_a_batch_is_shared_equally_between_types_with_work(queue: JobQueue) -> None:
    """An older backlog of one type does not take a whole batch: each claimed type gets an
    equal share, in its own claim order."""
    backlog(queue, {"old": 50}, priority=5)
    backlog(queue, {"new": 50, "newer": 50})
    jobs = queue.claim_many(9, types=["old", "new", "newer"])
    assert Counter(j.type for j in jobs) == {"old": 3, "new": 3, "newer": 3}
    for t in ("old", "new", "newer"):
        assert [j.payload for j in jobs if j.type == t] == [0, 1, 2]


def test_slots_a_type_cannot_fill_go_to_the_others(queue: JobQueue) -> None:
    backlog(queue, {"few": 2, "many": 100})
    jobs = queue.claim_many(10, types=["few", "many"])
    assert Counter(j.type for j in jobs) == {"few": 2, "many": 8}
    assert sorted(j.payload for j in jobs if j.type == "many") == list(range(8))


def test_single_claims_take_the_types_in_turn(queue: JobQueue) -> None:
    """One job at a time, a backlog of one type would always come first in claim order; the
    turn rotates, so every type with work gets its claims."""
    backlog(queue, {"backlog": 300}, priority=9)
    backlog(queue, {"b": 20, "c": 20})
    taken = Counter(j.type for _ in range(30)
                    if (j := queue.claim(types=["backlog", "b", "c"])) is not None)
    assert taken == {"backlog": 10, "b": 10, "c": 10}


def test_priority_orders_a_types_share(queue: JobQueue) -> None:
    queue.enqueue_many([NewJob("a", "low", priority=0), NewJob("a", "high", priority=7),
                        NewJob("b", "only")])
    jobs = queue.claim_many(2, types=["a", "b"])
    assert sorted(j.payload for j in jobs) == ["high", "only"]


def test_concurrent_claims_over_uneven_types_take_each_job_once(queue: JobQueue) -> None:
    """Shares and leftovers under contention: every job claimed exactly once."""
    sizes = {"a": 5, "b": 300, "c": 40, "d": 0, "e": 120}
    backlog(queue, sizes)
    seen: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def claimer(limit: int) -> None:
        barrier.wait()
        while jobs := queue.claim_many(limit, types=list(sizes), lease_ms=60_000):
            with lock:
                seen.extend(j.id for j in jobs)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in (1, 3, 4, 7, 11, 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == sum(sizes.values()) and len(set(seen)) == len(seen)


def test_types_without_due_work_take_no_turns(queue: JobQueue) -> None:
    """Turns go round the types with due work only: with idle types named between them,
    the type after a run of idle ones won the turns of all of them (90 of 100 claims)."""
    backlog(queue, {"t00": 200, "t01": 200})
    names = [f"t{n:02}" for n in range(10)]
    taken = Counter(j.type for _ in range(100)
                    if (j := queue.claim(types=names)) is not None)
    assert taken == {"t00": 50, "t01": 50}
    batches = Counter(j.type for _ in range(10) for j in queue.claim_many(3, types=names))
    assert batches == {"t00": 15, "t01": 15}


@pytest.mark.parametrize("case", ["expired", "untyped while a type is paused"])
def test_a_claim_beside_an_open_claim_still_fills_its_batch(
    dsn: str, queue: JobQueue, db: psycopg.Connection[Any], case: str
) -> None:
    """Choosing by unlocked seeks and then locking by id left a second claimer nothing: it
    chose the same rows the first held, and a short claim tells a runner the queue is empty."""
    if case == "expired":
        db.execute("INSERT INTO svti_jobs (type, state, lease_until, lease_token, claimed_by) "
                   "SELECT 'a', 'claimed', now() - interval '1 minute', gen_random_uuid(), "
                   "'gone' FROM generate_series(1, 100)")
        query, types = queue.statements.claim_typed, ["a"]
    else:
        backlog(queue, {"a": 100})
        queue.enqueue("held")
        Admin(queue).pause(["held"])
        query, types = queue.statements.claim_any, None
    params = {"limit": 10, "types": types, "lease_ms": 30_000, "worker": "w", "turn": 0}
    with psycopg.connect(dsn) as holder:
        assert len(holder.execute(query, params).fetchall()) == 10
        second = queue.claim_many(10, types=types)
        holder.rollback()
    assert len(second) == 10 and {j.type for j in second} == {"a"}
