"""The trace follower under out-of-order commits: every committed event is delivered exactly
once, although event ids are drawn at insert time and transactions commit in another order.
Each scenario prints a ledger: committed, seen, missing (must be 0), duplicates (must be 0)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from jobq_core import AsyncJobQueue, JobQueue
from jobq_core.admin import Admin, AsyncAdmin, Event, TraceTail

#: "It did not hang" bound for a follower to catch up.
CATCH_UP = 30.0


@dataclass
class TraceLedger:
    title: str
    committed: list[int]
    seen: list[int]
    aborted: set[int] = field(default_factory=set)
    late: int = 0
    naive_missed: int | None = None

    @property
    def missing(self) -> list[int]:
        return sorted(set(self.committed) - set(self.seen))

    @property
    def duplicates(self) -> list[int]:
        return sorted(i for i, n in Counter(self.seen).items() if n > 1)

    @property
    def extra(self) -> list[int]:
        return sorted(set(self.seen) - set(self.committed))

    def render(self) -> str:
        def verdict(ok: bool) -> str:
            return "ok" if ok else "VIOLATION"

        lines = [
            f"===== ledger: {self.title} =====",
            f"  committed events      {len(self.committed)}",
            f"  seen                  {len(self.seen)}",
            f"  missing               {len(self.missing)}  [{verdict(not self.missing)}]"
            + (f" ids {self.missing[:10]}" if self.missing else ""),
            f"  duplicates            {len(self.duplicates)}  [{verdict(not self.duplicates)}]"
            + (f" ids {self.duplicates[:10]}" if self.duplicates else ""),
            f"  never committed, seen {len(self.extra)}  [{verdict(not self.extra)}]",
            f"  delivered late        {self.late} (committed after a higher id was delivered)",
        ]
        if self.naive_missed is not None:
            lines.append(f"  naive follower missed {self.naive_missed} (after = last id seen)")
        lines.append("=" * (len(self.title) + 20))
        return "\n".join(lines)

    def check(self) -> None:
        print("\n" + self.render(), flush=True)
        report = self.render()
        assert not self.missing, f"events lost\n{report}"
        assert not self.duplicates, f"events delivered twice\n{report}"
        assert not self.extra, f"events delivered that never committed\n{report}"


def late_count(seen: list[int]) -> int:
    high, late = 0, 0
    for i in seen:
        if i < high:
            late += 1
        high = max(high, i)
    return late


def committed_ids(db: psycopg.Connection[Any], request_id: str) -> list[int]:
    return [r[0] for r in db.execute(
        "SELECT id FROM svti_jobs_events WHERE request_id = %s ORDER BY id", (request_id,))]


def test_an_event_committed_after_a_higher_one_is_delivered_once(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Session A enqueues inside an open transaction (the lower id); B enqueues and commits
    (the higher id). The follower delivers B, then A once A commits, and nothing twice."""
    with JobQueue(dsn) as queue:
        admin = Admin(queue)
        tail = TraceTail("req-ooo")
        seen: list[Event] = []
        naive: list[int] = []
        naive_after = 0

        def poll() -> None:
            nonlocal naive_after
            seen.extend(admin.poll_trace(tail))
            batch = admin.trace("req-ooo", after=naive_after)  # the old way: after = last id
            naive.extend(e.id for e in batch)
            if batch:
                naive_after = batch[-1].id

        with psycopg.connect(dsn) as open_tx:
            a = queue.enqueue("a", request_id="req-ooo", conn=open_tx)
            b = queue.enqueue("b", request_id="req-ooo")
            assert a < b
            for _ in range(3):
                poll()
            assert [e.job_id for e in seen] == [b]
            # Claims (asynchronous commit) and completions in between change nothing.
            job = queue.claim(types=["b"])
            assert job is not None
            queue.complete(job)
            poll()
            open_tx.commit()
        for _ in range(3):
            poll()
    events = [(e.job_id, e.event) for e in seen]
    assert events == [(b, "enqueued"), (b, "claimed"), (b, "completed"), (a, "enqueued")]
    ids = [e.id for e in seen]
    TraceLedger("trace order: one late commit", committed_ids(db, "req-ooo"), ids,
                late=late_count(ids),
                naive_missed=len(set(committed_ids(db, "req-ooo")) - set(naive))).check()
    assert tail.low == max(ids) and not tail.seen  # everything final: nothing left to dedupe


def test_follow_twins_deliver_the_late_event_once(dsn: str, db: psycopg.Connection[Any]) -> None:
    """The same through `Admin.follow` and `AsyncAdmin.follow`, the loops the CLI and the
    library use."""
    with JobQueue(dsn) as queue, psycopg.connect(dsn) as open_tx:
        a = queue.enqueue("a", request_id="req-twins", conn=open_tx)
        b = queue.enqueue("b", request_id="req-twins")
        got: list[int] = []
        follower = Admin(queue).follow("req-twins", poll=0.05)
        got.append(next(follower).job_id)
        open_tx.commit()
        got.append(next(follower).job_id)
        follower.close()
    assert got == [b, a]

    async def scenario() -> list[int]:
        async with AsyncJobQueue(dsn) as aqueue:
            admin = AsyncAdmin(aqueue)
            with JobQueue(dsn) as squeue, psycopg.connect(dsn) as tx:
                d = squeue.enqueue("d", request_id="req-twins-2", conn=tx)  # the lower id
                c = await aqueue.enqueue("c", request_id="req-twins-2")
                assert d < c
                out: list[int] = []
                agen = admin.follow("req-twins-2", poll=0.05)
                out.append((await asyncio.wait_for(agen.__anext__(), CATCH_UP)).job_id)
                tx.commit()
                out.append((await asyncio.wait_for(agen.__anext__(), CATCH_UP)).job_id)
                await agen.aclose()
                assert out == [c, d]
                return out

    assert len(asyncio.run(scenario())) == 2
    assert len(committed_ids(db, "req-twins-2")) == 2


def test_many_concurrent_writers_under_one_request_id(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Writers enqueue under one request id in transactions of random length (some roll
    back), a worker claims and completes meanwhile; a follower polls all along. Every
    committed event is seen exactly once, no rolled-back one ever."""
    request_id = "req-random"
    rng = random.Random(20240613)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []
    naive_seen: set[int] = set()

    def writer(seed: int) -> None:
        r = random.Random(seed)
        try:
            with JobQueue(dsn) as queue, psycopg.connect(dsn) as conn:
                for _ in range(25):
                    for _ in range(r.randint(1, 3)):
                        queue.enqueue("w", {"s": seed}, request_id=request_id, conn=conn)
                    time.sleep(r.random() * 0.03)
                    if r.random() < 0.15:
                        conn.rollback()
                    else:
                        conn.commit()
        except BaseException as exc:
            errors.append(exc)

    def worker() -> None:
        try:
            with JobQueue(dsn) as queue:
                while not stop.is_set():
                    jobs = queue.claim_many(rng.randint(1, 4), types=["w"])
                    for job in jobs:
                        if job.attempts == 1 and job.id % 5 == 0:
                            queue.fail(job, reason="again", retry=True)
                        else:
                            queue.complete(job)
                    if not jobs:
                        time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)

    def follower() -> None:
        try:
            with JobQueue(dsn) as queue:
                admin = Admin(queue)
                tail = TraceTail(request_id)
                naive_after = 0
                while not stop.is_set():
                    seen.extend(e.id for e in admin.poll_trace(tail))
                    batch = admin.trace(request_id, after=naive_after)
                    naive_seen.update(e.id for e in batch)
                    if batch:
                        naive_after = batch[-1].id
                    time.sleep(0.003)
                # Quiet now: catch up until nothing committed is missing (bounded).
                deadline = time.monotonic() + CATCH_UP
                while time.monotonic() < deadline:
                    seen.extend(e.id for e in admin.poll_trace(tail))
                    if set(committed_ids(db_view, request_id)) <= set(seen):
                        break
                    time.sleep(0.05)
        except BaseException as exc:
            errors.append(exc)

    db_view = psycopg.connect(dsn, autocommit=True)
    try:
        writers = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
        others = [threading.Thread(target=worker), threading.Thread(target=follower)]
        for t in writers + others:
            t.start()
        for t in writers:
            t.join(120)
        time.sleep(0.5)  # let the worker finish what is left
        stop.set()
        for t in others:
            t.join(120)
        assert not any(t.is_alive() for t in writers + others), "a thread hung"
        assert not errors, errors
        committed = committed_ids(db, request_id)
        ledger = TraceLedger("trace order: random writers", committed, seen,
                             late=late_count(seen),
                             naive_missed=len(set(committed) - naive_seen))
        ledger.check()
        assert len(committed) > 100
        # The scenario really had commits out of id order (else it proved nothing).
        assert ledger.late > 0 or (ledger.naive_missed or 0) > 0, ledger.render()
    finally:
        db_view.close()
