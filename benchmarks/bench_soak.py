"""A soak: jobq at a steady offered load for a long while, watching for bloat and drift.

    python -m benchmarks.bench_soak [--dsn DSN | --embedded] [--minutes 20] [--rate JOBS_PER_S]
                                    [--fraction 0.5] [--sample-seconds 30] [--json FILE]

A producer process enqueues at a fixed rate (by default half of what one runner drained at
the start of the run), in one `enqueue_many` per tick; a runner process serves the jobs (a no-op
handler). Every sample interval the parent records the jobs table's size (heap and indexes),
the history's, the jobs table's dead and live tuples and its vacuum counts, the backlog, and
the enqueue-to-start latency of the jobs started in that window (p50, p99).

Verdict, per metric, over the samples from `--steady-after` minutes to the end (the second
half of a shorter run): it stays flat when the highest value of the window's second half is at
most 1.2 x the highest of its first half. Peaks rather than single samples, because dead tuples
saw-tooth between vacuums. The history only grows (by design, until retention removes it), so
it is reported by its growth per minute and not judged.

Autovacuum must be on for the figures to mean anything; the machine's CI server turns it off,
so the run says so. `--embedded` starts a private server with Postgres's defaults instead
(autovacuum on, fsync on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import _jobq
from benchmarks._common import (
    Child,
    drop_database,
    fresh_database,
    load1,
    run_together,
    server_dsn,
    server_facts,
    settle,
    versions,
)

RESULTS = Path(__file__).parent / "results"

SAMPLE = """
SELECT pg_relation_size('svti_jobs'), pg_indexes_size('svti_jobs'),
       pg_total_relation_size('svti_jobs'),
       (SELECT sum(pg_total_relation_size(relid))::bigint  -- the history is partitioned by day
        FROM pg_partition_tree('svti_jobs_events')),
       s.n_dead_tup, s.n_live_tup, s.autovacuum_count, s.autoanalyze_count, s.vacuum_count,
       (SELECT count(*) FROM svti_jobs)
FROM pg_stat_user_tables s WHERE s.relid = 'svti_jobs'::regclass"""
#: The metrics judged flat, and the history's size, reported by its growth.
JUDGED = ("jobs_heap_bytes", "jobs_index_bytes", "jobs_total_bytes", "n_dead_tup", "p99_ms")
TABLE_SETTINGS = """
SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'svti_jobs'::regclass"""


def sample(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(SAMPLE).fetchone()
    assert row is not None
    names = ("jobs_heap_bytes", "jobs_index_bytes", "jobs_total_bytes", "history_total_bytes",
             "n_dead_tup", "n_live_tup", "autovacuum_count", "autoanalyze_count",
             "vacuum_count", "backlog")
    return dict(zip(names, row, strict=True))


def measure_capacity(dsn: str, concurrency: int, jobs: int) -> float:
    """What one runner drains, jobs/s, from a queue filled beforehand."""
    _jobq.fill(dsn, jobs)
    settle(dsn)
    started, (result,) = run_together([Child(
        "benchmarks._jobq:drain", dsn=dsn, concurrency=concurrency)])
    return float(jobs / (result["end"] - started))


def flatness(samples: list[dict[str, Any]], steady_after: float) -> dict[str, Any]:
    window = [s for s in samples if s["minute"] >= steady_after]
    if len(window) < 4:  # a short run: its second half
        window = samples[len(samples) // 2:]
    half = len(window) // 2
    verdicts: dict[str, Any] = {"from_minute": window[0]["minute"] if window else None,
                                "samples": len(window)}
    for name in JUDGED:
        values = [s[name] for s in window if s.get(name) is not None]
        if len(values) < 2:
            verdicts[name] = {"flat": None}
            continue
        first, second = max(values[:half] or values[:1]), max(values[half:])
        verdicts[name] = {"first_half_peak": first, "second_half_peak": second,
                          "min": min(values), "median": statistics.median(values),
                          "max": max(values),
                          "flat": second <= 1.2 * first if first else second == 0}
    history = [(s["minute"], s["history_total_bytes"]) for s in window]
    if len(history) >= 2 and history[-1][0] > history[0][0]:
        verdicts["history_growth_bytes_per_minute"] = (
            (history[-1][1] - history[0][1]) / (history[-1][0] - history[0][0]))
    return verdicts


def run(args: argparse.Namespace, server: str) -> dict[str, Any]:
    dsn = fresh_database(server, f"{args.prefix}_soak")
    _jobq.install(dsn)
    facts = server_facts(dsn)
    if facts["autovacuum"] != "on":
        print("WARNING: autovacuum is off on this server, so dead tuples can only grow; "
              "use a server with autovacuum on (or --embedded)", file=sys.stderr)
    rate = args.rate
    capacity = None
    if rate is None:
        capacity = measure_capacity(dsn, args.concurrency, args.capacity_jobs)
        rate = capacity * args.fraction
        print(f"  one runner drained {capacity:,.0f} jobs/s; offering {rate:,.0f} jobs/s",
              file=sys.stderr)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE svti_jobs")
        reloptions = conn.execute(TABLE_SETTINGS).fetchone()[0]  # type: ignore[index]
    worker = Child("benchmarks._jobq:soak_worker", dsn=dsn, concurrency=args.concurrency)
    producer = Child("benchmarks._jobq:soak_producer", dsn=dsn, rate=rate, tick=args.tick)
    samples: list[dict[str, Any]] = []
    try:
        worker.wait_ready()
        worker.go()
        producer.wait_ready()
        producer.go()
        started = time.monotonic()
        end = started + args.minutes * 60
        next_sample = started
        while next_sample < end:
            next_sample = min(next_sample + args.sample_seconds, end)
            time.sleep(max(0.0, next_sample - time.monotonic()))
            worker.ask("sample")
            latency = worker.next_data()
            got = {"minute": (time.monotonic() - started) / 60, "load": load1(),
                   **sample(dsn), **latency}
            samples.append(got)
            print(f"  minute {got['minute']:5.1f}: jobs table {got['jobs_total_bytes']:>11,} B, "
                  f"dead {got['n_dead_tup']:>8,}, backlog {got['backlog']:>7,}, "
                  f"p99 {got['p99_ms'] or 0:7.2f} ms, load {got['load']:.2f}", file=sys.stderr)
        producer.ask("stop")
        produced = producer.result(timeout=60)
        worker.ask("stop")
        served = worker.result(timeout=120)
    finally:
        producer.kill()
        worker.kill()
        if not args.keep:
            drop_database(server, f"{args.prefix}_soak")
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "command": sys.argv,
        "server": facts, "versions": versions(), "table_reloptions": reloptions,
        "config": {"minutes": args.minutes, "rate": rate, "fraction": args.fraction,
                   "capacity_jobs_per_s": capacity, "concurrency": args.concurrency,
                   "sample_seconds": args.sample_seconds, "steady_after": args.steady_after,
                   "tick": args.tick, "embedded": args.embedded},
        "producer": produced, "runner": served, "samples": samples,
        "verdicts": flatness(samples, args.steady_after),
    }


def report(figures: dict[str, Any]) -> str:
    cfg, v = figures["config"], figures["verdicts"]
    facts = figures["server"]
    produced = figures["producer"]
    lines = [f"Soak: {cfg['minutes']} min at {cfg['rate']:,.0f} jobs/s offered "
             f"({produced['enqueued'] / produced['seconds']:,.0f} achieved; runner "
             f"concurrency {cfg['concurrency']}); PostgreSQL {facts['server']}, autovacuum "
             f"{facts['autovacuum']}, table options {figures['table_reloptions'] or 'none'}.",
             "", f"From minute {v['from_minute'] or 0:.1f} ({v['samples']} samples):", "",
             "| metric | min | median | max | peak, 1st half | peak, 2nd half | flat (<= 1.2x) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name in JUDGED:
        got = v[name]
        if got["flat"] is None:
            lines.append(f"| {name} | - | - | - | - | - | not enough samples |")
            continue
        fmt = "{:,.2f}" if name.endswith("_ms") else "{:,.0f}"
        lines.append(f"| {name} | " + " | ".join(fmt.format(got[k]) for k in (
            "min", "median", "max", "first_half_peak", "second_half_peak"))
            + f" | {'yes' if got['flat'] else '**no**'} |")
    growth = v.get("history_growth_bytes_per_minute")
    if growth is not None:
        lines += ["", f"History grew {growth / 2**20:,.1f} MiB per minute (not judged: it grows "
                      "until retention removes it)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn")
    parser.add_argument("--embedded", action="store_true",
                        help="a private server with Postgres's default settings")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rate", type=float, help="offered jobs/s (default: --fraction of "
                        "one runner's measured drain)")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--capacity-jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1024)
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--steady-after", type=float, default=5.0, help="minutes")
    parser.add_argument("--tick", type=float, default=0.05, help="seconds between enqueues")
    parser.add_argument("--prefix", default="jobq_bench")
    parser.add_argument("--keep", action="store_true", help="keep the soak's database")
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    if args.embedded:
        from jobq_core.embedded import EmbeddedPostgres

        with EmbeddedPostgres(create_user=True) as server:
            figures = run(args, server.dsn)
    else:
        figures = run(args, server_dsn(args.dsn))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(report(figures))
    print(f"\nfigures: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
