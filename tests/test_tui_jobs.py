"""The console's job lists and detail (issue 11): cancel, actions that say why they cannot
apply, sorting on the server with totals, leases judged by their own length, one rule for
confirmations, times with their zone, and what a completed job ran. Pilot against a real
database, each checked in the database afterwards."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from jobq_core import InvalidInputError, JobQueue, NewJob
from jobq_core.admin import Admin

from .helpers import backdate


@pytest.fixture
def queue(dsn: str) -> Any:
    with JobQueue(dsn) as q:
        yield q


def every_page(admin: Admin, flt: str, sort: str, limit: int) -> list[Any]:
    rows: list[Any] = []
    after = None
    while True:
        page = admin.list_jobs(flt, after=after, limit=limit, sort=sort)
        rows += page.rows
        if page.next_cursor is None:
            return rows
        after = page.next_cursor


# -- the listing, in jobq_core.admin -------------------------------------------------------------

@pytest.mark.parametrize("sort", ["attempts", "-attempts", "failed_at", "-failed_at",
                                  "request_id", "-request_id", "type", "-created_at"])
def test_sorted_listing_pages_through_every_row_once_in_order(
    queue: JobQueue, db: psycopg.Connection[Any], sort: str
) -> None:
    """A keyset on (column, id) pages across equal values and NULLs without a duplicate or
    a gap, in the same order one unpaged query gives."""
    ids = queue.enqueue_many([NewJob("ab"[n % 2], {"n": n}, request_id=None if n % 3 else
                                     f"req-{n % 7}") for n in range(57)])
    db.execute("UPDATE svti_jobs SET attempts = id % 4, "
               "failed_at = CASE WHEN id % 5 = 0 THEN NULL "
               "ELSE now() - (id % 6) * interval '1 minute' END")
    admin = Admin(queue)
    paged = every_page(admin, "", sort, limit=4)
    assert sorted(r.id for r in paged) == sorted(ids)  # each once
    whole = admin.list_jobs("", limit=1000, sort=sort).rows
    assert [r.id for r in paged] == [r.id for r in whole]
    column = sort.removeprefix("-")
    values = [getattr(r, column) for r in whole]
    present = [v for v in values if v is not None]
    assert present == sorted(present, reverse=sort.startswith("-"))
    if len(present) < len(values):  # NULLs last ascending, first descending
        nulls = values[:len(values) - len(present)] if sort.startswith("-") else \
            values[len(present):]
        assert nulls == [None] * (len(values) - len(present))


def test_sorted_listing_of_completed_jobs_and_its_refusals(queue: JobQueue) -> None:
    for n in range(5):
        queue.enqueue("t", {"n": n})
    for _ in range(5):
        job = queue.claim()
        assert job is not None
        queue.complete(job)
    admin = Admin(queue)
    done = every_page(admin, "state:completed", "-id", limit=2)
    assert [r.id for r in done] == sorted((r.id for r in done), reverse=True)
    assert len(done) == 5 and all(r.payload is not None for r in done)
    with pytest.raises(InvalidInputError, match="cannot sort completed jobs by 'run_at'"):
        admin.list_jobs("state:completed", sort="run_at")
    with pytest.raises(InvalidInputError, match="cannot sort live jobs by 'payload'"):
        admin.list_jobs("", sort="payload")
    first = admin.list_jobs("state:completed", limit=1, sort="id")
    with pytest.raises(InvalidInputError, match="not one of a listing sorted by -id"):
        admin.list_jobs("state:completed", after=first.next_cursor, sort="-id")


def test_listing_total_is_exact_up_to_the_cap_then_an_estimate(
    queue: JobQueue, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.enqueue_many([NewJob("t") for _ in range(30)])
    other = queue.enqueue("u", {})
    backdate(db, other, created_at="2 hours")
    admin = Admin(queue)
    page = admin.list_jobs("state:pending", limit=5, total=True)
    assert len(page.rows) == 5 and str(page.total) == "31"
    assert str(admin.list_jobs("type:u", total=True).total) == "1"
    assert str(admin.list_jobs("age:>1h", total=True).total) == "1"
    assert admin.list_jobs("", limit=5).total is None  # only when asked for
    monkeypatch.setattr("jobq_core.admin.COUNT_CAP", 10)
    db.execute("ANALYZE svti_jobs")
    estimated = admin.list_jobs("state:pending", limit=5, total=True).total
    assert estimated is not None and not estimated.exact
    assert str(estimated).startswith("~") and estimated.value >= 10


def test_a_job_listed_by_id_and_its_lease_length(queue: JobQueue) -> None:
    job_id = queue.enqueue("t", {"n": 1})
    queue.enqueue("t", {"n": 2})
    job = queue.claim(lease_ms=45_000)
    assert job is not None and job.id == job_id
    admin = Admin(queue)
    [listed] = admin.list_jobs(f"id:{job_id}").rows
    assert listed.lease_ms == 45_000
    assert admin.show(job_id).job.lease_ms == 45_000  # type: ignore[union-attr]
    queue.complete(job)
    [done] = admin.list_jobs(f"state:completed id:{job_id}").rows
    assert done.payload == {"n": 1} and done.lease_ms is None
