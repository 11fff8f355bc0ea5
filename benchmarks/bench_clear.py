"""`clear --older-than 7d` on 30 days of history, partitioned by day as a queue at schema
version 7 keeps it, against the same history in one partition (as a history upgraded from
version 6 stays until its first bound passes), at 1M and 10M history rows; and the plans of
the history's reads at the largest size.

    python -m benchmarks.bench_clear [--dsn DSN] [--sizes 1000000,10000000] [--explain]
                                     [--json FILE]

Each size has a tenth as many live jobs as history rows, so that both sizes have the same
make-up. Every clear runs on its own copy of the populated database (`CREATE DATABASE …
TEMPLATE`), as `Admin.clear(preview)`. On a further copy of the daily layout, each day is
retired statement by statement and timed, for the time the history's writers wait on it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from benchmarks._common import fresh_database, server_dsn, server_facts
from jobq_core import JobQueue, listings, sql
from jobq_core.admin import Admin, ClearPreview

#: How old the history is: evenly spread over this many days, oldest rows first.
SPAN_DAYS = 30
#: The clear's age: about three quarters of the history is older.
OLDER_THAN = "7d"
#: (name, partitioned by day, live jobs' history recent): daily partitions with a backlog of
#: live jobs enqueued over the whole 30 days, the same with the live jobs' history all from
#: the last day (a healthy queue: nothing old to keep), and one partition.
LAYOUTS = (("days", True, False), ("days, live jobs recent", True, True), ("one", False, False))

# Live jobs: 10% scheduled 30 days out (enqueued up to 30 days ago), 1% failed (half of
# them older than the cutoff), 0.1% claimed, the rest ready. History: each live job's
# `enqueued` event, dated by its created_at and interleaved with the rest (or, with `recent`,
# dated within the last day), which are the enqueued/claimed/completed events of completed
# jobs (ids above the live ones), spread over 30 days in insertion order. A 200-byte payload
# on completed rows, as history keeps them.
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
SELECT CASE WHEN %(recent)s AND g %% 10 = 0 THEN now() - (g %% 86400) * interval '1 second'
            ELSE now() - interval '30 days' + g * (interval '30 days' / %(history)s) END,
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


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def populate(server: str, name: str, days: bool, recent: bool, history: int) -> str:
    """A database at the latest schema with the history above: in daily partitions made for
    the 30 days (`days`), or all in the DEFAULT partition, one heap."""
    dsn = fresh_database(server, name)
    with JobQueue(dsn) as queue:
        queue.migrate()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if days:
            conn.execute("SELECT svti_jobs_events_ahead(%s, now() - interval '31 days')",
                         (sql.HISTORY_AHEAD_DAYS,))
        for statement in SETUP.split(";\n"):
            if statement.strip():
                conn.execute(statement, {"jobs": history // 10, "history": history,
                                         "recent": recent})
    return dsn


def copy_of(server: str, source: str, name: str) -> str:
    """An identical copy of the populated database (a file copy: same pages, same order)."""
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    dsn = make_conninfo(server, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:  # read the history into the cache
        conn.execute("SELECT count(*) FROM svti_jobs_events")
    return dsn


def drop(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def shape(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        rows, partitions, default = conn.execute(
            "SELECT (SELECT count(*) FROM svti_jobs_events), "
            "(SELECT count(*) FROM pg_inherits "
            " WHERE inhparent = 'svti_jobs_events'::regclass), "
            "(SELECT count(*) FROM svti_jobs_events_default)").fetchone()  # type: ignore[misc]
    return {"rows": rows, "partitions": partitions, "default_rows": default}


def timed_clear(dsn: str, preview: ClearPreview) -> dict[str, Any]:
    """The whole clear as `jobq clear` runs it, at the preview's cutoff."""
    before = shape(dsn)
    with JobQueue(dsn) as queue:
        ticks: list[float] = []
        started = time.perf_counter()
        removed = Admin(queue).clear(preview, progress=lambda _: ticks.append(time.perf_counter()))
        took = time.perf_counter() - started
    assert removed == preview.total, (removed, preview.total)
    after = shape(dsn)
    steps = sorted((b - a) * 1000 for a, b in itertools.pairwise([started, *ticks]))
    return {"seconds": took, "removed": removed, "progress_calls": len(ticks),
            "median_ms": steps[len(steps) // 2], "max_ms": steps[-1],
            "partitions_dropped": before["partitions"] - after["partitions"],
            "before": before, "after": after}


def retire_by_hand(dsn: str, preview: ClearPreview) -> list[dict[str, Any]]:
    """Each day wholly before the cutoff retired as `clear` does, its two statements timed:
    freeing keys and counting (no lock that writers wait on), then the retirement (the
    history's writers wait for all of it)."""
    days = []
    with JobQueue(dsn) as queue, queue.connection() as conn:
        conn.autocommit = True
        st = queue.statements
        parts = conn.execute(st.history_partitions,
                             {"events": st.names.regclass("_events")}).fetchall()
        for part, _, name, is_default, _, hi, _, _ in parts:
            if is_default or hi is None or hi > preview.cutoff:
                continue
            started = time.perf_counter()
            rows, held = conn.execute(st.free_day_keys, {"part": part}).fetchone()  # type: ignore[misc]
            counted = time.perf_counter()
            kept = conn.execute(st.retire, {"part": part, "held": held}).fetchone()[0]  # type: ignore[index]
            days.append({"partition": name, "rows": rows, "kept": kept,
                         "keys_and_count_ms": (counted - started) * 1000,
                         "retire_ms": (time.perf_counter() - counted) * 1000})
    return days


def explain(dsn: str) -> dict[str, dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the history's reads, as jobq plans them (generic plans,
    on one of its own connections): the partitions each reads (pruned ones, at planning or
    at run time, are not), and its time."""
    with JobQueue(dsn) as queue, queue.connection() as conn:
        st = queue.statements
        names = st.names
        mid = conn.execute("SELECT job_id, request_id FROM svti_jobs_events "
                           "WHERE event = 'completed' AND occurred_at > now() - interval "
                           "'15 days' LIMIT 1").fetchone()
        assert mid is not None
        page = listings.list_jobs(names, {}, "completed", None, 50)
        cursor_row = conn.execute(page[0], page[1]).fetchall()[-1]
        later = listings.list_jobs(names, {}, "completed", (None, cursor_row[-2]), 50)
        # (query, params, whether jobq runs it in a transaction of small reads)
        reads: dict[str, tuple[bytes, dict[str, Any], bool]] = {
            "trace by request id": (st.trace, {"request_id": mid[1], "after": 0,
                                               "limit": 1000}, False),
            "a job's events": (st.job_events, {"id": mid[0]}, False),
            "completed, first page": (*page, False),
            "completed, a later page": (*later, False),
            "fold of the rates": (st.fold_rates, {}, True),
            "stats: types": (st.stats_types, {}, True),
            "stats: one type": (st.stats_type, {"type": "send-email", "cap": 10_000}, True),
        }
        plans = {}
        for label, (query, params, small) in reads.items():
            with conn.transaction(force_rollback=True):  # the fold writes
                if small:
                    conn.execute(st.small_reads)
                rows = conn.execute(b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query,
                                    params).fetchone()
            assert rows is not None
            plan = rows[0][0]
            nodes = _nodes(plan["Plan"])
            scanned = sorted({n["Relation Name"] for n in nodes
                              if n.get("Relation Name", "").startswith("svti_jobs_events")
                              and n.get("Actual Loops", 0) > 0})
            plans[label] = {"ms": plan["Execution Time"], "planning_ms": plan["Planning Time"],
                            "history_partitions_read": scanned,
                            "subplans_removed": sum(n.get("Subplans Removed", 0) for n in nodes),
                            "top": [f"{n['Node Type']} {n.get('Relation Name', '')}".strip()
                                    for n in nodes[:4]],
                            "jit": "JIT" in plan}
            print(f"  {label}: {plan['Execution Time']:.2f} ms "
                  f"(planning {plan['Planning Time']:.2f} ms), reads {len(scanned)} history "
                  f"partitions: {', '.join(s.removeprefix('svti_jobs_events_') for s in scanned)}",
                  flush=True)
    return plans


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out += _nodes(child)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--explain", action="store_true",
                        help="also the plans of the history's reads at the largest size")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    server = server_dsn(args.dsn)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"runs": []}
    for history, (layout, days, recent) in itertools.product(sizes, LAYOUTS):
        source = f"jobq_bench_clear_{history}"
        started = time.perf_counter()
        dsn = populate(server, source, days, recent, history)
        print(f"{history:,} rows, {layout}: set up in {time.perf_counter() - started:.0f} s, "
              f"{shape(dsn)} (load {load()})", flush=True)
        with JobQueue(dsn) as queue:
            began = time.perf_counter()
            preview = Admin(queue).preview_clear(OLDER_THAN)
            preview_s = time.perf_counter() - began
        run: dict[str, Any] = {"history": history, "layout": layout,
                               "preview": {"failed_jobs": preview.failed_jobs,
                                           "history_rows": preview.history_rows,
                                           "seconds": preview_s}}
        copy = copy_of(server, source, "jobq_bench_clear_run")
        run["load_before"] = load()
        run["clear"] = timed_clear(copy, preview)
        run["load_after"] = load()
        drop(server, "jobq_bench_clear_run")
        c = run["clear"]
        print(f"  preview {preview_s:.1f} s; clear {c['removed']:,} rows in {c['seconds']:.1f} s "
              f"({c['seconds'] / history * 1e6:.2f} s per million history rows), "
              f"{c['partitions_dropped']} partitions dropped, rows in the DEFAULT partition "
              f"{c['before']['default_rows']:,} -> {c['after']['default_rows']:,} (load "
              f"{run['load_before']} before, {run['load_after']} after)",
              flush=True)
        if days:
            copy = copy_of(server, source, "jobq_bench_clear_run")
            run["retire_by_hand"] = retired = retire_by_hand(copy, preview)
            drop(server, "jobq_bench_clear_run")
            retire = sorted(d["retire_ms"] for d in retired)
            count = sorted(d["keys_and_count_ms"] for d in retired)
            print(f"  by hand, {len(retired)} days: retire median {retire[len(retire) // 2]:.0f} ms"
                  f", max {retire[-1]:.0f} ms; keys and count median "
                  f"{count[len(count) // 2]:.0f} ms, max {count[-1]:.0f} ms", flush=True)
            if args.explain and history == max(sizes) and not recent:
                run["plans"] = explain(dsn)
        drop(server, source)
        results["runs"].append(run)
    if args.json:
        results["server"] = server_facts(server)
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
