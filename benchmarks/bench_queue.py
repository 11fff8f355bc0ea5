"""jobq's queue primitives beside a hand-written psycopg SKIP LOCKED queue, on one server, in
one run, reported as ratios.

The hand-written queue is the floor any Postgres queue pays: one INSERT per job, and a lease
claim (UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)) followed by a DELETE. It keeps
no history, no idempotency index and no lease token; jobq does all three in the same number of
round trips.

    python -m benchmarks.bench_queue [--dsn DSN] [--ops 3000] [--embedded]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import psycopg

from benchmarks._common import fresh_database, rate, server_dsn, server_facts
from benchmarks._raw import (
    PAYLOAD,
    RAW_CLAIM,
    RAW_CLAIM_MANY,
    RAW_COMPLETE,
    RAW_COMPLETE_MANY,
    RAW_DDL,
    RAW_ENQUEUE,
    RAW_ENQUEUE_MANY,
)
from jobq_core import JobQueue, NewJob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--ops", type=int, default=3000, help="single operations per run")
    parser.add_argument("--batch", type=int, default=1000, help="jobs per enqueue_many")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--claim-batch", type=int, default=10)
    parser.add_argument("--embedded", action="store_true",
                        help="use a throwaway server with fsync off: statement CPU cost only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.embedded:
        from jobq_core.embedded import EmbeddedPostgres

        with EmbeddedPostgres(unsafe_fast=True, create_user=True) as server:
            run(args, server.dsn)
    else:
        run(args, server_dsn(args.dsn))


def run(args: argparse.Namespace, server: str) -> None:
    dsn = fresh_database(server, "jobq_bench_queue")
    raw = psycopg.connect(dsn, autocommit=True)
    raw.execute(RAW_DDL)
    queue = JobQueue(dsn, max_connections=1)
    queue.migrate()
    payload = json.loads(PAYLOAD)
    n, batch, batches = args.ops, args.batch, args.batches

    def reset() -> None:
        raw.execute("TRUNCATE raw_jobs, svti_jobs, svti_jobs_events")
        raw.execute("VACUUM ANALYZE raw_jobs")
        raw.execute("VACUUM ANALYZE svti_jobs")

    def raw_enqueue() -> None:
        for _ in range(n):
            raw.execute(RAW_ENQUEUE, ("send-email", PAYLOAD))

    def jobq_enqueue() -> None:
        for _ in range(n):
            queue.enqueue("send-email", payload)

    def raw_claim_complete() -> None:
        for _ in range(n):
            row = raw.execute(RAW_CLAIM).fetchone()
            assert row is not None
            raw.execute(RAW_COMPLETE, (row[0],))

    def jobq_claim_complete() -> None:
        for _ in range(n):
            job = queue.claim(types=["send-email"])
            assert job is not None
            queue.complete(job)

    k = args.claim_batch

    def raw_claim_many() -> None:
        for _ in range(n // k):
            ids = [r[0] for r in raw.execute(RAW_CLAIM_MANY, (k,)).fetchall()]
            raw.execute(RAW_COMPLETE_MANY, (ids,))

    def jobq_claim_many() -> None:
        for _ in range(n // k):
            queue.complete_many(queue.claim_many(k, types=["send-email"]))

    def raw_batch() -> None:
        for _ in range(batches):
            raw.execute(RAW_ENQUEUE_MANY, (["send-email"] * batch, [PAYLOAD] * batch))

    items = [NewJob("send-email", payload) for _ in range(batch)]

    def jobq_batch() -> None:
        for _ in range(batches):
            queue.enqueue_many(items)

    def fill() -> None:
        reset()
        raw_enqueue()
        jobq_enqueue()

    results: dict[str, dict[str, float]] = {}
    # Interleaved, so drift on the machine hits both sides alike.
    results["enqueue (single)"] = {
        "raw": rate(n, raw_enqueue, reset=reset), "jobq": rate(n, jobq_enqueue, reset=reset)}
    results["claim + complete (single)"] = {
        "raw": rate(n, raw_claim_complete, reset=fill),
        "jobq": rate(n, jobq_claim_complete, reset=fill)}
    results[f"claim_many + complete_many ({k})"] = {
        "raw": rate(n // k * k, raw_claim_many, reset=fill),
        "jobq": rate(n // k * k, jobq_claim_many, reset=fill)}
    total = batch * batches
    results[f"enqueue_many ({batch}/statement)"] = {
        "raw": rate(total, raw_batch, reset=reset), "jobq": rate(total, jobq_batch, reset=reset)}

    facts = server_facts(dsn)
    print(f"server: PostgreSQL {facts['server']}, synchronous_commit={facts['synchronous_commit']}"
          f", fsync={facts['fsync']}, {facts['cpus']} CPUs")
    print(f"{'operation':<36}{'raw SKIP LOCKED':>18}{'jobq':>12}{'jobq/raw':>10}")
    for name, r in results.items():
        print(f"{name:<36}{r['raw']:>14,.0f}/s{r['jobq']:>10,.0f}/s{r['jobq'] / r['raw']:>10.2f}")
    if args.json:
        args.json.write_text(json.dumps({"server": facts, "results": results}, indent=2))
    queue.close()
    raw.close()


if __name__ == "__main__":
    main()
