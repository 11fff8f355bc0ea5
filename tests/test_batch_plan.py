"""A runner's batch statements (acks, heartbeats, hand-backs) cost rows in proportion to the
batch, under the generic plan the queue really runs (issue 12). The generic plan guesses 10
rows for an unnest; a statement that joined its input array twice was planned as a nested
loop over it, n x n rows: 1M for a batch of 1,000 acks, which held a runner at concurrency
1,024 to a quarter of its drain. Checked with EXPLAIN ANALYZE, never with a timing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobq_core import JobQueue, NewJob

from .helpers import generic_plan

BATCH = 400


@pytest.fixture
def held(dsn: str) -> Iterator[tuple[JobQueue, list[Any]]]:
    """A batch of claimed jobs beside a backlog, statistics analyzed. (At 20,000 rows the
    old statements' plans had turned into the n x n loop; at 4,000 they still hashed.)"""
    with JobQueue(dsn) as queue:
        queue.enqueue_many([NewJob("work", {"n": i}) for i in range(50 * BATCH)])
        jobs = queue.claim_many(BATCH, types=["work"])
        assert len(jobs) == BATCH
        yield queue, jobs


def _statement(queue: JobQueue, jobs: list[Any], which: str) -> tuple[bytes, dict[str, Any]]:
    st = queue.statements
    ids = ([j.id for j in jobs], "bigint[]")
    tokens = ([str(j.lease_token) for j in jobs], "uuid[]")
    if which == "ack":
        return st.complete_many, {"ids": ids, "tokens": tokens,
                                  "results": ([None] * len(jobs), "jsonb[]")}
    if which == "heartbeat":
        return st.heartbeat, {"ids": ids, "tokens": tokens,
                              "ms": ([30_000] * len(jobs), "integer[]")}
    return st.release, {"ids": ids, "tokens": tokens, "reason": ("shutdown", "text")}


@pytest.mark.parametrize("which", ["ack", "heartbeat", "release"])
def test_a_batch_statement_reads_rows_in_proportion_to_the_batch(
    held: tuple[JobQueue, list[Any]], db: psycopg.Connection[Any], which: str
) -> None:
    queue, jobs = held
    db.execute("VACUUM ANALYZE svti_jobs")
    query, params = _statement(queue, jobs, which)
    nodes = generic_plan(db, query, params)
    # Every node handles each job of the batch a bounded number of times: no node's rows
    # over all its loops, nor the rows a join filter threw away, grow as batch x batch.
    worst = max(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Join Filter", 0)
                for n in nodes)
    assert worst <= 2 * BATCH, [(n["Node Type"], n.get("Relation Name"), n["Actual Rows"],
                                 n["Actual Loops"]) for n in nodes]
    # The statement did its work on the whole batch (then rolled back): a row per job.
    assert nodes[0]["Actual Rows"] * nodes[0]["Actual Loops"] == BATCH
