"""`clear`'s history walk at 10,000,000 history rows: the old walk (each batch a TID range
scan from the last batch's end to the end of the table, sorted by ctid for its LIMIT) against
the new one (fixed block ranges, each one statement), on identical copies of one database.

    python -m benchmarks.bench_clear [--dsn DSN] [--jobs 1000000] [--history 10000000]
                                     [--old-batches 10] [--json FILE]

The old walk reads every remaining row of the table for each batch of 5,000, so its run is
quadratic: at 10M rows it would take far longer than the benchmark may run. Its first
`--old-batches` batches are run for real and timed (all of them with 0), and one batch is
timed at several positions of the walk (run and rolled back); the estimated total is their
integral over the walk. The new walk runs in full.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from benchmarks._common import fresh_database, server_dsn, server_facts
from jobq_core import JobQueue, _ops
from jobq_core.admin import Admin, ClearPreview

#: How old the history is: evenly spread over this many days, oldest rows first.
SPAN_DAYS = 30
#: The clear's age: about three quarters of the history is older.
OLDER_THAN = "7d"

# 1M live jobs: 10% scheduled 30 days out (enqueued up to 30 days ago), 1% failed (half of
# them older than the cutoff), 0.1% claimed, the rest ready. History: each live job's
# `enqueued` event, dated by its created_at and interleaved with the rest, which are the
# enqueued/claimed/completed events of completed jobs (ids above the live ones), spread over
# 30 days in insertion order. A 200-byte payload on completed rows, as history keeps them.
SETUP = """
INSERT INTO svti_jobs (id, type, payload, priority, run_at, request_id, created_at)
SELECT g, (ARRAY['send-email', 'resize-image', 'charge-card', 'sync-crm'])[1 + g %% 4],
       jsonb_build_object('n', g), (g %% 3)::smallint,
       CASE WHEN g %% 10 = 0 THEN now() + interval '30 days' ELSE now() END,
       'req-' || g, now() - (%(jobs)s - g) * (interval '30 days' / %(jobs)s)
FROM generate_series(1, %(jobs)s) g;
SELECT setval(pg_get_serial_sequence('svti_jobs', 'id'), %(jobs)s + %(history)s);
UPDATE svti_jobs SET state = 'claimed', lease_token = gen_random_uuid(), claimed_by = 'bench',
       lease_until = now() + interval '30 seconds', lease_ms = 30000, attempts = 1
 WHERE id %% 1000 = 1;
UPDATE svti_jobs SET state = 'failed', failed_at = created_at, attempts = 5,
       last_error = 'TimeoutError: upstream took too long' WHERE id %% 100 = 2;
INSERT INTO svti_jobs_events (occurred_at, job_id, type, event, request_id, attempt, worker,
                              payload)
SELECT now() - interval '30 days' + g * (interval '30 days' / %(history)s),
       CASE WHEN g %% 10 = 0 THEN g / 10 ELSE %(jobs)s + g / 3 END,
       (ARRAY['send-email', 'resize-image', 'charge-card', 'sync-crm'])[1 + g %% 4],
       CASE WHEN g %% 10 = 0 THEN 'enqueued'
            ELSE (ARRAY['enqueued', 'claimed', 'completed'])[1 + g %% 3] END,
       'req-' || CASE WHEN g %% 10 = 0 THEN g / 10 ELSE %(jobs)s + g / 3 END, 1, 'bench',
       CASE WHEN g %% 3 = 2 AND g %% 10 <> 0
            THEN jsonb_build_object('to', 'user' || g || '@example.com',
                                    'body', repeat('x', 160)) END
FROM generate_series(1, %(history)s) g;
VACUUM ANALYZE svti_jobs;
VACUUM ANALYZE svti_jobs_events;
"""


# The walk before issue 11, kept here to measure it: each batch a TID range scan from the
# last batch's end to the end of the table, sorted by ctid for its LIMIT.
OLD_EVENTS_BATCH = """
WITH batch AS (
    SELECT ctid, job_id FROM {events}
    WHERE ctid > %(after)s::tid AND occurred_at < %(cutoff)s
    ORDER BY ctid LIMIT %(batch)s
), del AS (
    DELETE FROM {events} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM batch
        WHERE NOT EXISTS (SELECT 1 FROM {jobs} WHERE id = batch.job_id)))
    RETURNING ctid
)
SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM del),
       (SELECT max(ctid) FROM batch)::text"""


def populate(dsn: str, jobs: int, history: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SETUP.split(";\n"):
            if statement.strip():
                conn.execute(statement, {"jobs": jobs, "history": history})


def copy_of(server: str, source: str, name: str) -> str:
    """An identical copy of the populated database (a file copy: same pages, same order)."""
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    dsn = make_conninfo(server, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:  # read the table into the cache
        conn.execute("SELECT count(*) FROM svti_jobs_events")
    return dsn


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def batch_ms(conn: psycopg.Connection[Any], query: bytes, params: dict[str, Any]) -> float:
    """The median time of one statement over three runs, each rolled back."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        conn.execute(query, params)
        times.append((time.perf_counter() - started) * 1000)
        conn.rollback()
    return sorted(times)[1]


def old_walk(dsn: str, cutoff: datetime, positions: list[float],
             batches: int) -> dict[str, Any]:
    """The old walk's cost per batch at several positions (each run and rolled back on the
    untouched table), its first `batches` batches run for real, and the whole walk estimated
    from the per-batch costs: the rows older than the cutoff (live jobs' too, which it reads
    and keeps) lie in the first `share` of the table, one batch per 5,000 of them."""
    with JobQueue(dsn) as queue:
        query = queue.statements.render(OLD_EVENTS_BATCH)
    with psycopg.connect(dsn) as conn:
        blocks, rows, old_rows = conn.execute(
            "SELECT pg_relation_size('svti_jobs_events') / 8192, count(*), "
            "count(*) FILTER (WHERE occurred_at < %s) FROM svti_jobs_events",
            (cutoff,)).fetchone()  # type: ignore[misc]
        share = old_rows / rows
        at = {}
        for p in positions:
            params = {"after": f"({int(p * share * blocks)},0)", "cutoff": cutoff,
                      "batch": _ops.CLEAR_BATCH}
            at[p] = batch_ms(conn, query, params)
            print(f"  old batch at {p * share:4.0%} of the table: {at[p]:8.1f} ms  "
                  f"(load {load()})", flush=True)
        conn.autocommit = True
        timed: list[float] = []
        after = "(0,0)"
        while not batches or len(timed) < batches:
            started = time.perf_counter()
            row = conn.execute(query, {"after": after, "cutoff": cutoff,
                                       "batch": _ops.CLEAR_BATCH}).fetchone()
            timed.append((time.perf_counter() - started) * 1000)
            assert row is not None
            if row[0] < _ops.CLEAR_BATCH:
                break
            after = row[2]
    points = sorted(at.items())
    mean = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in itertools.pairwise(points))
    mean /= points[-1][0] - points[0][0]
    total_batches = -(-old_rows // _ops.CLEAR_BATCH)
    return {"per_batch_ms": {f"{p * share:.0%}": ms for p, ms in points},
            "run_ms": timed, "run_s": sum(timed) / 1000, "batches": total_batches,
            "estimated_s": total_batches * mean / 1000}


def new_walk(dsn: str, preview: ClearPreview) -> dict[str, Any]:
    """The whole clear as `jobq clear` runs it, at the preview's cutoff; the time of a batch
    from one progress call to the next (every range of this data deletes rows)."""
    with JobQueue(dsn) as queue:
        ticks: list[float] = []
        started = time.perf_counter()
        removed = Admin(queue).clear(preview, progress=lambda _: ticks.append(time.perf_counter()))
        took = time.perf_counter() - started
    assert removed == preview.total, (removed, preview.total)
    steps = sorted((b - a) * 1000 for a, b in itertools.pairwise(ticks))
    return {"seconds": took, "removed": removed, "statements": len(ticks),
            "median_ms": steps[len(steps) // 2], "max_ms": steps[-1]}


def drop(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=10_000_000)
    parser.add_argument("--old-batches", type=int, default=10,
                        help="batches of the old walk to run for real; 0: all of them")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the populated database of an earlier run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    server = server_dsn(args.dsn)
    source = f"jobq_bench_clear_{args.history}"
    started = time.perf_counter()
    if args.reuse:
        dsn = make_conninfo(server, dbname=source)
    else:
        dsn = fresh_database(server, source)
        with JobQueue(dsn) as queue:
            queue.migrate()
        populate(dsn, args.jobs, args.history)
    with psycopg.connect(dsn) as conn:
        rows, blocks = conn.execute("SELECT count(*), pg_relation_size('svti_jobs_events') / 8192 "
                                    "FROM svti_jobs_events").fetchone()  # type: ignore[misc]
    print(f"setup: {rows:,} history rows in {blocks:,} blocks, "
          f"{time.perf_counter() - started:.0f} s (load {load()})", flush=True)
    with JobQueue(dsn) as queue:
        began = time.perf_counter()
        preview = Admin(queue).preview_clear(OLDER_THAN)
        preview_s = time.perf_counter() - began
    print(f"preview: {preview.failed_jobs:,} failed jobs, {preview.history_rows:,} history rows "
          f"older than {preview.cutoff:%Y-%m-%d %H:%M}, counted in {preview_s:.1f} s", flush=True)

    old_dsn = copy_of(server, source, "jobq_bench_clear_old")
    print(f"old walk (load {load()}):", flush=True)
    old = old_walk(old_dsn, preview.cutoff, [0, 0.25, 0.5, 0.75, 0.99], args.old_batches)
    drop(server, "jobq_bench_clear_old")
    run = old["run_ms"]
    print(f"  {len(run)} batches run: {old['run_s']:.1f} s, median {sorted(run)[len(run) // 2]:.0f}"
          f" ms; the whole walk, {old['batches']:,} batches: {old['estimated_s']:,.0f} s "
          "estimated", flush=True)

    new_dsn = copy_of(server, source, "jobq_bench_clear_new")
    load_before = load()
    new = new_walk(new_dsn, preview)
    drop(server, "jobq_bench_clear_new")
    print(f"new walk (load {load_before} before, {load()} after): {new['removed']:,} rows in "
          f"{new['seconds']:.1f} s, {new['statements']:,} statements, median "
          f"{new['median_ms']:.1f} ms, max {new['max_ms']:.1f} ms", flush=True)

    print()
    print("| walk | batches | time | per batch |")
    print("|---|---:|---:|---|")
    per = ", ".join(f"{k}: {v:,.0f} ms" for k, v in old["per_batch_ms"].items())
    print(f"| old: sorted TID range to the end | {old['batches']:,} | "
          f"~{old['estimated_s']:,.0f} s (estimated) | at {per} |")
    print(f"| new: fixed block ranges | {new['statements']:,} | {new['seconds']:.1f} s | "
          f"median {new['median_ms']:.1f} ms, max {new['max_ms']:.1f} ms |")
    if args.json:
        args.json.write_text(json.dumps({
            "server": server_facts(dsn), "jobs": args.jobs, "history_rows": rows,
            "blocks": blocks, "preview": {"failed_jobs": preview.failed_jobs,
                                          "history_rows": preview.history_rows,
                                          "seconds": preview_s},
            "old": old, "new": new}, indent=2))


if __name__ == "__main__":
    main()
