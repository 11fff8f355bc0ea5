"""Shared pieces of the benchmark scripts: a fresh database and a timer."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def server_dsn(arg: str | None) -> str:
    return arg or os.environ.get("JOBQ_BENCH_DSN") or os.environ.get("DATABASE_URL") or DEFAULT_DSN


def fresh_database(dsn: str, name: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(dsn, dbname=name)


def server_facts(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        facts = {"server": conn.execute("SHOW server_version").fetchone()[0]}  # type: ignore[index]
        for name in ("synchronous_commit", "fsync", "shared_buffers"):
            facts[name] = conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
    facts["cpus"] = os.cpu_count()
    return facts


def rate(count: int, fn: Callable[[], None], repeats: int = 3,
         reset: Callable[[], None] | None = None) -> float:
    """Median operations per second over `repeats` runs of `fn`, which does `count` ops."""
    rates = []
    for _ in range(repeats):
        if reset:
            reset()
        start = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def as_url(dsn: str) -> str:
    """A postgresql:// URL for drivers that take no key=value conninfo (asyncpg)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn)
    auth = quote(str(parts.get("user", "")))
    if parts.get("password"):
        auth += ":" + quote(str(parts["password"]))
    host = parts.get("host", "localhost")
    return f"postgresql://{auth}@{host}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
