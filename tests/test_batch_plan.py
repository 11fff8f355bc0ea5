"""A runner's batch statements (acks, heartbeats, hand-backs) cost rows in proportion to the
batch, under the generic plan the queue really runs (issue 12). The generic plan guesses 10
rows for an unnest; a statement that joined its input array twice was planned as a nested
loop over it, n x n rows: 1M for a batch of 1,000 acks, which held a runner at concurrency
1,024 to a quarter of its drain. Checked with EXPLAIN ANALYZE, never with a timing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jobq_core import JobQueue, NewJob

BATCH = 400


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def generic_plan(db: psycopg.Connection[Any], query: bytes,
                 params: dict[str, tuple[Any, str]]) -> list[dict[str, Any]]:
    """`query` prepared as the queue's connections run it (a generic plan), then executed
    under EXPLAIN ANALYZE and rolled back. `params` maps each %(name)s to its value and type."""
    text = query.decode()
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", text)))
    for n, name in enumerate(names, 1):
        text = text.replace(f"%({name})s", f"${n}")
    signature = ", ".join(params[name][1] for name in names)
    db.execute("SET plan_cache_mode = force_generic_plan")
    db.execute("DEALLOCATE ALL")
    db.execute(f"PREPARE batch ({signature}) AS {text.replace('%%', '%')}")
    values = sql.SQL(", ").join(sql.Literal(params[name][0]) for name in names)
    with db.transaction(force_rollback=True):
        row = db.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE batch ({})").format(
            values)).fetchone()
    assert row is not None
    return list(_nodes(row[0][0]["Plan"]))


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
