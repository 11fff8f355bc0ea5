"""The hand-written psycopg `SKIP LOCKED` queue: the floor any Postgres queue pays.

One INSERT per job; a lease claim, `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
LOCKED)`; a DELETE. No history, no lease token, no idempotency index, no priority or `run_at`
order. `bench_queue` uses the table and statements; `bench_compare` also adds a NOTIFY trigger
(one per statement, as jobq's), so that its idle worker can wake as the others do.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from benchmarks._common import Handshake

RAW_DDL = """
CREATE TABLE raw_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type text NOT NULL,
    payload jsonb,
    state text NOT NULL DEFAULT 'pending',
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX raw_jobs_ready ON raw_jobs (id) WHERE state = 'pending';
"""
RAW_NOTIFY_DDL = """
CREATE FUNCTION raw_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('raw_jobs', ''); RETURN NULL; END $$;
CREATE TRIGGER raw_jobs_notify AFTER INSERT ON raw_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION raw_jobs_notify();
"""
RAW_ENQUEUE = "INSERT INTO raw_jobs (type, payload) VALUES (%s, %s::jsonb) RETURNING id"
RAW_ENQUEUE_MANY = (
    "INSERT INTO raw_jobs (type, payload) "
    "SELECT * FROM unnest(%s::text[], %s::jsonb[]) RETURNING id"
)
RAW_CLAIM = """
UPDATE raw_jobs SET state = 'claimed', lease_until = now() + interval '30 seconds'
WHERE id = (SELECT id FROM raw_jobs WHERE state = 'pending' ORDER BY id LIMIT 1
            FOR UPDATE SKIP LOCKED)
RETURNING id, type, payload"""
RAW_COMPLETE = "DELETE FROM raw_jobs WHERE id = %s"
RAW_CLAIM_MANY = """
UPDATE raw_jobs SET state = 'claimed', lease_until = now() + interval '30 seconds'
WHERE id = ANY(ARRAY(SELECT id FROM raw_jobs WHERE state = 'pending' ORDER BY id LIMIT %s
                     FOR UPDATE SKIP LOCKED))
RETURNING id, type, payload"""
RAW_COMPLETE_MANY = "DELETE FROM raw_jobs WHERE id = ANY(%s)"
PAYLOAD = '{"to": "alice@example.com", "template": "welcome"}'

NAME = "hand-written loop"


def install(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RAW_DDL)
        conn.execute(RAW_NOTIFY_DDL)


def left(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM raw_jobs").fetchone()
    assert row is not None
    return int(row[0])


def enqueue_one(hs: Handshake, dsn: str, jobs: int, warmup: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(warmup):
            conn.execute(RAW_ENQUEUE, ("noop", PAYLOAD))
        hs.ready()
        started = time.perf_counter()
        for _ in range(jobs):
            conn.execute(RAW_ENQUEUE, ("noop", PAYLOAD))
        return {"seconds": time.perf_counter() - started}


def enqueue_batch(hs: Handshake, dsn: str, batches: int, size: int) -> dict[str, Any]:
    types, payloads = ["noop"] * size, [PAYLOAD] * size
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RAW_ENQUEUE_MANY, (types, payloads))
        hs.ready()
        started = time.perf_counter()
        for _ in range(batches):
            conn.execute(RAW_ENQUEUE_MANY, (types, payloads))
        return {"seconds": time.perf_counter() - started}


def latency_worker(hs: Handshake, dsn: str, count: int, warmup: int) -> dict[str, Any]:
    """One idle worker: claim one job at a time, wait on LISTEN when there is none."""
    seen: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN raw_jobs")
        hs.ready()
        while len(seen) < warmup + count:
            row = conn.execute(RAW_CLAIM).fetchone()
            if row is None:
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    pass
                continue
            seen.append(time.time() - row[2]["t"])  # the handler's first line
            conn.execute(RAW_COMPLETE, (row[0],))
    return {"latencies": seen[warmup:]}


def produce(hs: Handshake, dsn: str, *, count: int, warmup: int, spacing: float,
            settle: float) -> dict[str, Any]:
    calls: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        hs.ready()
        time.sleep(settle)
        for i in range(warmup + count):
            started = time.time()
            conn.execute(RAW_ENQUEUE, ("ping", Jsonb({"t": started})))
            if i >= warmup:
                calls.append(time.time() - started)
            time.sleep(spacing)
    return {"calls": calls}
