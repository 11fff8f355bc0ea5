"""Why the operators' listings are built per call (`jobq_core/listings.py`) and not written
out once with `(%(type)s IS NULL OR type = %(type)s)` guards: each filter needs a plan of its
own. Under the generic plan the queue's connections force, a guarded statement has one plan
for every filter, and a page of a rare type reads past the whole backlog ahead of it; the
built statement reads only the filter's index range. Checked with EXPLAIN ANALYZE, never
with a timing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobq_core import JobQueue, NewJob, listings

from .helpers import generic_plan

BACKLOG, RARE, PAGE = 20_000, 30, 10


@pytest.fixture
def backlog(dsn: str, db: psycopg.Connection[Any]) -> Iterator[JobQueue]:
    """A backlog of one type ahead, in claim order, of a few jobs of another."""
    with JobQueue(dsn) as queue:
        queue.enqueue_many([NewJob("bulk", {"n": i}) for i in range(BACKLOG)])
        queue.enqueue_many([NewJob("rare", {"n": i}) for i in range(RARE)])
        db.execute("VACUUM ANALYZE svti_jobs")
        yield queue


def _rows_read(nodes: list[dict[str, Any]]) -> int:
    """The most rows any node handled over all its loops, filtered-out rows included."""
    return max(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0)
               for n in nodes)


def _described(nodes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(n["Node Type"], n.get("Index Name") or n.get("Relation Name"), n["Actual Rows"],
             n.get("Rows Removed by Filter", 0)) for n in nodes]


def test_a_page_of_a_rare_type_reads_only_its_own_rows(
    backlog: JobQueue, db: psycopg.Connection[Any]
) -> None:
    query, values = listings.list_jobs(backlog.names, {"type": "rare"}, "pending", None, PAGE)
    params = {name: (value, "text" if isinstance(value, str) else "integer")
              for name, value in values.items()}
    nodes = generic_plan(db, query, params)
    page = next(n for n in nodes if n["Node Type"] == "Limit")
    assert page["Actual Rows"] == PAGE  # the page is full: the plan found the rare jobs
    assert _rows_read(nodes) <= 2 * RARE + PAGE, _described(nodes)


def test_the_same_page_behind_a_guard_reads_the_whole_backlog(
    backlog: JobQueue, db: psycopg.Connection[Any]
) -> None:
    """The control: the static statement the builder stands in for, one plan for any type."""
    guarded = (b"SELECT id FROM svti_jobs WHERE state = 'pending' "
               b"AND (%(type)s::text IS NULL OR type = %(type)s) "
               b"ORDER BY priority DESC, run_at, id LIMIT %(limit)s")
    nodes = generic_plan(db, guarded, {"type": ("rare", "text"), "limit": (PAGE, "integer")})
    assert _rows_read(nodes) >= BACKLOG, _described(nodes)
