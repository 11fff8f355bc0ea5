"""Small helpers for reading the database in tests."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql


def row(db: psycopg.Connection[Any], job_id: int) -> dict[str, Any] | None:
    cur = db.execute("SELECT * FROM svti_jobs WHERE id = %s", (job_id,))
    values = cur.fetchone()
    if values is None:
        return None
    assert cur.description is not None
    return dict(zip([c.name for c in cur.description], values, strict=True))


def events(db: psycopg.Connection[Any], job_id: int) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT event FROM svti_jobs_events WHERE job_id = %s ORDER BY id", (job_id,))]


def backdate(db: psycopg.Connection[Any], job_id: int, **columns: str) -> None:
    """Move a job's timestamps into the past, e.g. lease_until="1 second"."""
    sets = ", ".join(f"{col} = now() - interval '{ago}'" for col, ago in columns.items())
    db.execute(f"UPDATE svti_jobs SET {sets} WHERE id = %s", (job_id,))


#: The writes a worker's role is granted on the queue's tables (README, "Privileges"), less
#: the rates, which some tests leave out.
WRITE_ALL = ("SELECT, INSERT, UPDATE, DELETE ON svti_jobs, svti_jobs_events, svti_jobs_keys, "
             "svti_jobs_pauses, svti_jobs_workers, svti_jobs_schedules, svti_jobs_limits, "
             "svti_jobs_limit_keys, svti_jobs_limit_lanes")


@contextmanager
def as_new_role(db: psycopg.Connection[Any], dsn: str, *grants: str
                ) -> Iterator[psycopg.Connection[Any]]:
    """A connection acting as a new role that holds only `grants` (each "privileges ON
    objects", granted to the role); the role and what it owns are dropped afterwards."""
    role = sql.Identifier(f"jobq_role_{secrets.token_hex(4)}")
    db.execute(sql.SQL("CREATE ROLE {}").format(role))
    try:
        for grant in grants:
            db.execute(sql.SQL("GRANT " + grant + " TO {}").format(role))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(role))
            yield conn
    finally:
        db.execute(sql.SQL("DROP OWNED BY {}").format(role))
        db.execute(sql.SQL("DROP ROLE {}").format(role))


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def generic_plan(db: psycopg.Connection[Any], query: bytes,
                 params: dict[str, tuple[Any, str]]) -> list[dict[str, Any]]:
    """The nodes of `query` as the queue's connections run it, a generic plan: prepared,
    then executed under EXPLAIN ANALYZE and rolled back, so it changes nothing. `params` maps
    each %(name)s to its value and type. (Parameters sent with an EXPLAIN are planned as
    values: a custom plan.)"""
    text = query.decode()
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", text)))
    for n, name in enumerate(names, 1):
        text = text.replace(f"%({name})s", f"${n}")
    signature = ", ".join(params[name][1] for name in names)
    db.execute("SET plan_cache_mode = force_generic_plan")
    db.execute("DEALLOCATE ALL")
    db.execute(f"PREPARE planned ({signature}) AS {text.replace('%%', '%')}")
    # Values as literals: a utility statement takes no bound parameters.
    values = sql.SQL(", ").join(sql.Literal(params[name][0]) for name in names)
    with db.transaction(force_rollback=True):
        row = db.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE planned ({})").format(
            values)).fetchone()
    assert row is not None
    return list(_plan_nodes(row[0][0]["Plan"]))
