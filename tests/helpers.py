"""Small helpers for reading the database in tests."""

from __future__ import annotations

from typing import Any

import psycopg


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
