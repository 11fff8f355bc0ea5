"""The trace follower: `TraceTail`'s bookkeeping on its own, and followers (the CLI's
`trace --follow` and `AsyncAdmin.follow`) across a restart of a private server, where no event
may be lost or repeated and an outage is one line when it begins and one when it ends."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from jobq_core import AsyncJobQueue, JobQueue, create_job_queue
from jobq_core.admin import AsyncAdmin, Backoff, Event, TraceTail
from jobq_core.embedded import EmbeddedPostgres
from jobq_core.errors import JobqError

JOBQ = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"
#: "It did not hang" bound for anything that waits on a restart.
PATIENCE = 90.0


def ev(i: int) -> Event:
    return Event(i, datetime.now(UTC), i, "t", "enqueued", "r", 0, None, None, None)


# -- TraceTail, without a database --------------------------------------------------------------

def test_a_late_event_is_delivered_once_and_the_range_closes_when_final() -> None:
    tail = TraceTail("r")
    # Poll 1: ids 1 and 3 are visible, 2 is in flight; xid 100 still runs (xmin 100).
    assert [e.id for e in tail.advance([ev(1), ev(3)], xmin=100, next_xid=105, limit=10)] \
        == [1, 3]
    assert tail.low == 0 and tail.seen == {1, 3}
    # Poll 2: 2 committed; nothing older than 105 runs any more: up to 3 is final.
    assert [e.id for e in tail.advance([ev(1), ev(2), ev(3)], 105, 106, 10)] == [2]
    assert tail.low == 3 and tail.seen == set()
    # Re-reading the same rows delivers nothing.
    assert tail.advance([ev(2), ev(3)], 106, 106, 10) == []


def test_without_a_bound_it_only_dedupes() -> None:
    tail = TraceTail("r")
    tail.advance([ev(1)], 50, None, 10)
    tail.advance([ev(1), ev(2)], 999, None, 10)
    assert tail.low == 0 and tail.seen == {1, 2}


def test_a_full_batch_makes_final_only_what_it_read() -> None:
    tail = TraceTail("r")
    tail.advance([ev(5), ev(10)], xmin=0, next_xid=20, limit=3)  # 6..9 in flight
    assert tail.low == 0 and not tail.more
    # 6, 7, 8 committed: the bound is met, but this full batch read only up to 8.
    assert [e.id for e in tail.advance([ev(6), ev(7), ev(8)], 20, 21, limit=3)] == [6, 7, 8]
    assert tail.more and tail.low == 8 and tail.seen == {10}
    assert [e.id for e in tail.advance([ev(9)], 21, 21, limit=3)] == [9]
    assert tail.low == 10 and not tail.more and tail.seen == set()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(JobqError):
        TraceTail("")
    with pytest.raises(JobqError):
        TraceTail("r", after=-1)


def test_backoff_doubles_to_ten_seconds_and_resets() -> None:
    backoff = Backoff()
    assert [backoff.next() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.next() == 1


# -- across a restart ---------------------------------------------------------------------------

@pytest.fixture
def restart_db(embedded_server: EmbeddedPostgres) -> Iterator[str]:
    with psycopg.connect(embedded_server.dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS trace_restart WITH (FORCE)")
        admin.execute("CREATE DATABASE trace_restart")
    url = make_conninfo(embedded_server.dsn, dbname="trace_restart")
    create_job_queue(url).close()
    yield url
    if not embedded_server._started:
        embedded_server.start()
    with psycopg.connect(embedded_server.dsn, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS trace_restart WITH (FORCE)")


def enqueue(dsn: str, n: int, request_id: str) -> None:
    with JobQueue(dsn, max_connections=1) as queue:
        for i in range(n):
            queue.enqueue("t", {"i": i}, request_id=request_id)


def committed(dsn: str, request_id: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT id FROM svti_jobs_events WHERE request_id = %s ORDER BY id", (request_id,))]


class Lines:
    """Collects a stream's lines in a thread, so a test can wait on them with a bound."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, count: int, what: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while len(self.lines) < count:
            assert time.monotonic() < deadline, f"{what}: only {self.lines}"
            time.sleep(0.05)


def follow_cli(dsn: str, request_id: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
    proc = subprocess.Popen([JOBQ, "trace", request_id, "--follow", "--json"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "JOBQ_DSN": dsn})
    assert proc.stdout is not None and proc.stderr is not None
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def test_cli_follow_survives_a_restart(embedded_server: EmbeddedPostgres,
                                       restart_db: str) -> None:
    enqueue(restart_db, 2, "req-restart")
    proc, out, err = follow_cli(restart_db, "req-restart")
    try:
        out.wait_for(2, "events before the restart")
        embedded_server.restart("fast")
        enqueue(restart_db, 2, "req-restart")
        out.wait_for(4, "events after the restart")
        err.wait_for(2, "the outage's two lines")
        time.sleep(1.0)  # anything repeated would show by now
    finally:
        proc.terminate()
        proc.wait(20)
    ids = [json.loads(line)["id"] for line in out.lines]
    assert sorted(ids) == committed(restart_db, "req-restart") and len(set(ids)) == len(ids)
    assert len(err.lines) == 2, err.lines  # one line per change of state, no pool warnings
    assert "unavailable" in err.lines[0] and "retrying" in err.lines[0]
    assert "reachable again" in err.lines[1]


def test_cli_follow_waits_for_a_dead_server_with_one_line(embedded_server: EmbeddedPostgres,
                                                          restart_db: str) -> None:
    enqueue(restart_db, 1, "req-dead")
    embedded_server.stop("fast")
    proc, out, err = follow_cli(restart_db, "req-dead")
    try:
        err.wait_for(1, "the outage line")
        time.sleep(8)  # several attempts (backing off), still a single line
        assert len(err.lines) == 1, err.lines
        assert out.lines == [] and proc.poll() is None
        embedded_server.start()
        out.wait_for(1, "the event, once the server is back")
        enqueue(restart_db, 1, "req-dead")
        out.wait_for(2, "a new event")
        err.wait_for(2, "the back-again line")
    finally:
        proc.terminate()
        proc.wait(20)
    ids = [json.loads(line)["id"] for line in out.lines]
    assert ids == committed(restart_db, "req-dead")
    assert len(err.lines) == 2 and "reachable again" in err.lines[1], err.lines


def test_async_follow_survives_a_restart(embedded_server: EmbeddedPostgres,
                                         restart_db: str) -> None:
    outages: list[JobqError | None] = []
    seen: list[int] = []

    async def scenario() -> None:
        async with AsyncJobQueue(restart_db) as queue:
            agen = AsyncAdmin(queue).follow("req-async", poll=0.1, on_outage=outages.append)

            async def take(n: int) -> None:
                for _ in range(n):
                    seen.append((await asyncio.wait_for(agen.__anext__(), PATIENCE)).id)

            await asyncio.to_thread(enqueue, restart_db, 3, "req-async")
            await take(3)
            await asyncio.to_thread(embedded_server.restart, "fast")
            await asyncio.to_thread(enqueue, restart_db, 3, "req-async")
            await take(3)
            await agen.aclose()

    asyncio.run(scenario())
    assert seen == committed(restart_db, "req-async")  # each once, none lost
    assert outages and outages[-1] is None  # an outage was noticed, and its end
    assert all(o is not None for o in outages[:-1]) and len(outages) == 2, outages


def test_tail_state_carries_over_to_a_new_follower(dsn: str) -> None:
    """The state lives in the tail, so a follower built anew (after a reconnect, in the
    console) carries on without a gap or a repeat."""
    enqueue(dsn, 2, "req-carry")

    async def scenario() -> list[int]:
        tail = TraceTail("req-carry")
        got: list[int] = []
        for round in range(2):
            async with AsyncJobQueue(dsn) as queue:
                agen = AsyncAdmin(queue).follow("req-carry", tail=tail, poll=0.05)
                for _ in range(2):
                    got.append((await asyncio.wait_for(agen.__anext__(), PATIENCE)).id)
                await agen.aclose()
            if round == 0:
                await asyncio.to_thread(enqueue, dsn, 2, "req-carry")
        return got

    got = asyncio.run(scenario())
    assert got == committed(dsn, "req-carry")


async def test_a_follower_on_a_queue_not_yet_used_still_listens(dsn: str) -> None:
    """The follower's LISTEN names the channels of the resolved table: on a queue whose
    first use has not happened yet it must wait for that, not die and leave only polling."""
    async with AsyncJobQueue(dsn) as queue:
        follow = AsyncAdmin(queue).follow("req-fresh", poll=30)
        first = asyncio.ensure_future(follow.__anext__())
        try:
            with psycopg.connect(dsn, autocommit=True) as watcher:
                deadline = time.monotonic() + 15
                while not watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                        "'jobq-follow' AND query LIKE 'LISTEN%%'").fetchone()[0]:
                    assert time.monotonic() < deadline, "the follower never listened"
                    await asyncio.sleep(0.05)
            await queue.enqueue("t", request_id="req-fresh")
            event = await asyncio.wait_for(first, 10)  # woken at once, not by the 30 s poll
            assert event.event == "enqueued"
        finally:
            first.cancel()
            await follow.aclose()  # type: ignore[attr-defined]
