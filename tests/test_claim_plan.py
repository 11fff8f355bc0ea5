"""The typed claim's plan reads only the claimed types' index ranges, whatever the statistics
(issue 12): checked with EXPLAIN ANALYZE, never with a timing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobq_core import JobQueue

from .helpers import generic_plan

#: Statistics as ANALYZE leaves them, and as hostile as they get: the planner told that
#: every row has the same type, so filtering a walk of the claim-order index looks free.
STATISTICS = {
    "analyzed": "ALTER TABLE svti_jobs ALTER COLUMN type RESET (n_distinct)",
    "hostile": "ALTER TABLE svti_jobs ALTER COLUMN type SET (n_distinct = 1)",
}
OTHERS, MINE, ORPHANED = 20_000, 200, 2_000


@pytest.fixture
def backlog(dsn: str, db: psycopg.Connection[Any]) -> Iterator[JobQueue]:
    """Another type's backlog ahead of ours in claim order, and expired leases of a type
    nobody serves any more."""
    db.execute("INSERT INTO svti_jobs (type, priority, run_at) SELECT 'other', 5, "
               "now() - interval '1 hour' FROM generate_series(1, %s)", (OTHERS,))
    db.execute("INSERT INTO svti_jobs (type) SELECT 'mine' FROM generate_series(1, %s)",
               (MINE,))
    db.execute("INSERT INTO svti_jobs (type) VALUES ('scarce')")
    db.execute("INSERT INTO svti_jobs (type, state, lease_until, lease_token, claimed_by) "
               "SELECT 'orphan', 'claimed', now() - interval '1 day', gen_random_uuid(), "
               "'gone' FROM generate_series(1, %s)", (ORPHANED,))
    with JobQueue(dsn) as queue:
        queue.prepare()
        yield queue


#: The claim's parameters and their types.
PARAMETERS = {"limit": "int2", "types": "text[]", "lease_ms": "int4", "worker": "text",
              "turn": "int8"}


def executed_plan(db: psycopg.Connection[Any], queue: JobQueue, types: list[str] | None,
                  limit: int = 10) -> list[dict[str, Any]]:
    """The claim (untyped when `types` is None) as the queue runs it, a generic plan."""
    st = queue.statements
    values = {"limit": limit, "types": types, "lease_ms": 30000, "worker": "w", "turn": 0}
    return generic_plan(db, st.claim_any if types is None else st.claim_typed,
                        {name: (values[name], kind) for name, kind in PARAMETERS.items()})


def rows_read(nodes: list[dict[str, Any]], index: str) -> int:
    return sum(int(n["Actual Rows"] * n["Actual Loops"]) + int(n.get("Rows Removed by Filter", 0))
               for n in nodes if n.get("Index Name") == f"svti_jobs_{index}")


@pytest.mark.parametrize("types", [["mine"], ["mine", "scarce"]])
@pytest.mark.parametrize("statistics", STATISTICS)
def test_a_typed_claim_reads_only_the_claimed_types_index_ranges(
    backlog: JobQueue, db: psycopg.Connection[Any], statistics: str, types: list[str]
) -> None:
    """With two types, one of them short of its share, the leftover round runs too."""
    db.execute(STATISTICS[statistics])
    db.execute("VACUUM ANALYZE svti_jobs")
    nodes = executed_plan(db, backlog, types)
    # No walk of the claim-order or lease-order index, filtering other types out.
    assert rows_read(nodes, "ready_idx") == 0 and rows_read(nodes, "lease_idx") == 0
    # The leftover round skips the rows the share round took (5 of "mine"), and nothing else.
    removed = sum(int(n.get("Rows Removed by Filter", 0)) for n in nodes)
    assert removed == (0 if len(types) == 1 else 5)
    # Each row taken is read once; with two types, plus one entry per type to find that it has
    # due work, and the leftover round's re-read of the share it skips. (A claim of one type
    # needs neither: its share seek is the probe, and it has no leftovers to share out.)
    assert rows_read(nodes, "ready_type_idx") == (10 if len(types) == 1 else 10 + 2 + 5)
    assert not [n for n in nodes if n["Node Type"] in ("Seq Scan", "Bitmap Heap Scan")
                and n.get("Relation Name") == "svti_jobs"]
    claimed = backlog.claim_many(10, types=types)
    assert {j.type for j in claimed} == set(types) and len(claimed) == 10


def test_expired_leases_that_fill_the_batch_leave_ready_jobs_unlocked(
    backlog: JobQueue, db: psycopg.Connection[Any]
) -> None:
    """Expired leases come first; when they fill the batch, no ready row is locked (and so
    hidden from other claimers) for nothing."""
    nodes = executed_plan(db, backlog, ["orphan", "mine"])
    assert rows_read(nodes, "lease_type_idx") == 10
    assert rows_read(nodes, "ready_type_idx") == 0
    locked = [n for n in nodes if n["Node Type"] == "LockRows"]
    assert sum(int(n["Actual Rows"] * n["Actual Loops"]) for n in locked) == 10
