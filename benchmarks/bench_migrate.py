"""Migration 7 on a big version 6 history: how long its steps take, and how long a writer of
an older jobq, inserting history all the while, waits on it: with the early steps (a queue
with a DSN of its own, as `jobq migrate` runs it) and without them (a queue given a bare
connection, whose migration attaches the history by reading it under its lock).

    python -m benchmarks.bench_migrate [--dsn DSN] [--history 10000000] [--json FILE]

The history is bench_clear's (30 days, a tenth as many live jobs), plus one keyed
`enqueued` event per ten rows, whose keys the migration copies.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._common import fresh_database, server_dsn, server_facts
from benchmarks.bench_clear import SETUP, copy_of, drop, load
from jobq_core import JobQueue, schema
from jobq_core.sql import Names, Statements

# Every row up to an id, as text: the same before and after, column for column.
CHECKSUM = ("SELECT count(*), sum(hashtext(e::text)::numeric), max(id) FROM svti_jobs_events "
            "AS e WHERE id <= %s")


def populate(server: str, name: str, history: int) -> str:
    """A version 6 queue (migrations 1 to 6, as jobq before this one left it) and its data."""
    dsn = fresh_database(server, name)
    st = Statements(Names.parse("svti_jobs"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(st.create_migrations)
        for version, title, build in schema.MIGRATIONS[:6]:
            for statement in build(st, None):
                conn.execute(statement)
            conn.execute(st.record_migration, {"version": version, "name": title})
        for step in SETUP.split(";\n"):
            if step.strip():
                conn.execute(step, {"jobs": history // 10, "history": history,
                                         "recent": False})
        conn.execute("""
            INSERT INTO svti_jobs_events (occurred_at, job_id, type, event, idempotency_key)
            SELECT now() - interval '30 days' + g * (interval '30 days' / %(keys)s),
                   %(history)s + g, 'send-email', 'enqueued', 'key-' || g
            FROM generate_series(1, %(keys)s) g""", {"history": history, "keys": history // 10})
        conn.execute("VACUUM ANALYZE svti_jobs_events")
    return dsn


class Writer(threading.Thread):
    """An older jobq's transitions: one history row every 5 ms, each insert timed."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.waits: list[tuple[float, float]] = []  # (started, seconds)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                conn.execute("INSERT INTO svti_jobs_events (job_id, type, event) "
                             "VALUES (1, 'send-email', 'claimed')")
                self.waits.append((started, time.perf_counter() - started))
                time.sleep(0.005)


def migrate(dsn: str, *, early: bool) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        before = conn.execute(CHECKSUM, (2**62,)).fetchone()
    assert before is not None
    writer = Writer(dsn)
    writer.start()
    time.sleep(1)
    phases: dict[str, float] = {}
    started = time.perf_counter()
    if early:
        with JobQueue(dsn, auto_migrate=False) as queue:
            real = queue._build_indexes_early

            def timed() -> None:
                began = time.perf_counter()
                real()
                phases["early_s"] = time.perf_counter() - began

            queue._build_indexes_early = timed  # type: ignore[method-assign]
            queue.migrate()
    else:
        with psycopg.connect(dsn, autocommit=True) as conn, JobQueue(conn) as queue:
            queue.migrate()
    phases["total_s"] = time.perf_counter() - started
    phases["migration_s"] = phases["total_s"] - phases.get("early_s", 0)
    time.sleep(1)
    writer.stop.set()
    writer.join()
    with psycopg.connect(dsn) as conn:
        after = conn.execute(CHECKSUM, (before[2],)).fetchone()
        written = conn.execute("SELECT count(*) FROM svti_jobs_events WHERE id > %s",
                               (before[2],)).fetchone()
        keys = conn.execute("SELECT count(*) FROM svti_jobs_keys").fetchone()
    assert after is not None and written is not None and keys is not None
    waits = sorted(w for _, w in writer.waits)
    return {**phases, "writes": len(waits), "longest_wait_ms": waits[-1] * 1000,
            "p99_wait_ms": waits[int(len(waits) * 0.99)] * 1000,
            "rows": before[0], "same_rows": after[:2] == before[:2],
            "writes_kept": written[0] == len(waits), "keys": keys[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--history", type=int, default=10_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    server = server_dsn(args.dsn)
    source = f"jobq_bench_migrate_{args.history}"
    started = time.perf_counter()
    populate(server, source, args.history)
    print(f"version 6 with {args.history:,} history rows (+{args.history // 10:,} keyed): "
          f"{time.perf_counter() - started:.0f} s (load {load()})", flush=True)
    results: dict[str, Any] = {"history": args.history}
    for early in (True, False):
        label = "with early steps" if early else "without (a given connection)"
        dsn = copy_of(server, source, "jobq_bench_migrate_run")
        results[label] = run = migrate(dsn, early=early)
        drop(server, "jobq_bench_migrate_run")
        print(f"{label}: early {run.get('early_s', 0):.1f} s, migration {run['migration_s']:.1f}"
              f" s; a writer's longest wait {run['longest_wait_ms']:.0f} ms (p99 "
              f"{run['p99_wait_ms']:.1f} ms, {run['writes']:,} writes); {run['rows']:,} rows, "
              f"the same: {run['same_rows']}, every write kept: {run['writes_kept']}; "
              f"{run['keys']:,} keys (load {load()})", flush=True)
    drop(server, source)
    if args.json:
        results["server"] = server_facts(server)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
