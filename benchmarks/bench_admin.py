"""Operator queries at scale: `stats()` and the first page of `list_jobs` with 1,000,000
live jobs and 5,000,000 history rows (the issue's target: under 100 ms each). The history
holds every live job's `enqueued` event, as real use would, and 4,000,000 more events
spread over the past week. It is written in time order, as a queue appends it: the history's
BRIN index on `occurred_at` depends on that (written in random order, a read of the last
minute walked every block of the day, 30 ms of `stats()` at 10M rows). The set-up ends with
a CHECKPOINT, so that no query is timed while the set-up's writes are flushed.

    python -m benchmarks.bench_admin [--dsn DSN] [--pending 1000000] [--history 5000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._common import fresh_database, server_dsn, server_facts
from jobq_core import JobQueue
from jobq_core.admin import Admin

SETUP = """
INSERT INTO svti_jobs (type, payload, priority, run_at, request_id, created_at)
SELECT (ARRAY['send-email', 'resize-image', 'charge-card', 'sync-crm'])[1 + g %% 4],
       jsonb_build_object('n', g), (g %% 3)::smallint,
       CASE WHEN g %% 10 = 0 THEN now() + interval '1 hour'
            ELSE now() - (g %% 3600) * interval '1 second' END,
       'req-' || (g %% 100000), now() - (g %% 86400) * interval '1 second'
FROM generate_series(1, %(pending)s) g;
UPDATE svti_jobs SET state = 'claimed', lease_token = gen_random_uuid(), claimed_by = 'bench',
       lease_until = now() + interval '30 seconds', attempts = 1 WHERE id %% 1000 = 1;
UPDATE svti_jobs SET state = 'failed', failed_at = now() - (id %% 600) * interval '1 second',
       last_error = 'TimeoutError: upstream took too long', attempts = 5 WHERE id %% 1000 = 2;
INSERT INTO svti_jobs_events (occurred_at, job_id, type, event, request_id, attempt, worker)
SELECT now() - interval '7 days' + g * (interval '7 days' / (%(history)s - %(pending)s)), g / 3,
       (ARRAY['send-email', 'resize-image', 'charge-card', 'sync-crm'])[1 + g %% 4],
       (ARRAY['enqueued', 'claimed', 'completed'])[1 + g %% 3], 'req-' || (g %% 100000),
       1, 'bench'
FROM generate_series(1, %(history)s - %(pending)s) g;
INSERT INTO svti_jobs_events (occurred_at, job_id, type, event, request_id)
SELECT created_at, id, type, 'enqueued', request_id FROM svti_jobs ORDER BY created_at;
VACUUM ANALYZE svti_jobs;
VACUUM ANALYZE svti_jobs_events;
CHECKPOINT;
"""

QUERIES: dict[str, Callable[[Admin], Any]] = {
    "stats()": lambda a: a.stats(),
    "list: all live": lambda a: a.list_jobs(limit=50),
    "list: state:pending": lambda a: a.list_jobs("state:pending", limit=50),
    "list: state:ready type:sync-crm": lambda a: a.list_jobs("state:ready type:sync-crm"),
    "list: state:scheduled": lambda a: a.list_jobs("state:scheduled", limit=50),
    "list: state:claimed": lambda a: a.list_jobs("state:claimed", limit=50),
    "list: state:failed": lambda a: a.list_jobs("state:failed", limit=50),
    "list: state:failed error:timeout": lambda a: a.list_jobs("state:failed error:timeout"),
    "list: state:completed": lambda a: a.list_jobs("state:completed", limit=50),
    "list: req:req-4242": lambda a: a.list_jobs("req:req-4242", limit=50),
    "trace req-4242": lambda a: a.trace("req-4242"),
}


def populate(dsn: str, pending: int, history: int) -> tuple[int, int]:
    """Fill a migrated database with `SETUP`'s data; returns the live and history counts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SETUP.split(";\n"):
            if "%(" in statement:
                conn.execute(statement, {"pending": pending, "history": history})
            elif statement.strip():
                conn.execute(statement.replace("%%", "%"))
        sizes = conn.execute("SELECT (SELECT count(*) FROM svti_jobs), "
                             "(SELECT count(*) FROM svti_jobs_events)").fetchone()
    assert sizes is not None
    return sizes[0], sizes[1]


def db_time(admin: Admin, run: Callable[[Admin], Any], repeats: int) -> tuple[float, float]:
    """Median wall time of the call, and median database execution time (from
    pg_stat_statements when present, otherwise the same wall time)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(admin)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dsn = fresh_database(server_dsn(args.dsn), "jobq_bench_admin")
    queue = JobQueue(dsn)
    queue.migrate()
    started = time.perf_counter()
    live, history = populate(dsn, args.pending, args.history)
    print(f"setup: {live:,} live jobs, {history:,} history rows "
          f"in {time.perf_counter() - started:.0f} s")
    admin = Admin(queue)
    admin.stats()  # the first call folds the last hour of history into the rates table
    figures = {}
    for name, run in QUERIES.items():
        median, worst = db_time(admin, run, args.repeats)
        figures[name] = {"median_ms": median, "max_ms": worst}
        print(f"  {name:<36} median {median:7.1f} ms   max {worst:7.1f} ms")
    if args.json:
        args.json.write_text(json.dumps({"server": server_facts(dsn), "pending": args.pending,
                                         "history": args.history, "queries": figures},
                                        indent=2))
    queue.close()


if __name__ == "__main__":
    main()
