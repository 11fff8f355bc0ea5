"""The queue's tables: created on first use and migrated forward, idempotently.

Migrations run in one transaction under an advisory lock keyed by the table name, so processes
doing first use at once all succeed and exactly one applies each step. The applied versions are
recorded in ``<table>_migrations``. Run ``python -m jobq_core.schema [table]`` to print the DDL
for applying it yourself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from psycopg import sql

from ._ops import Op, Stmt
from .errors import SchemaError
from .sql import ADVISORY_LOCK, SCHEMA_STATE, Names, Statements

#: (version, description, statements given the legacy id column if upgrading upstream's layout)
MIGRATIONS: list[tuple[int, str, Callable[[Statements, str | None], list[bytes]]]] = [
    (1, "initial layout: jobs, history, claim indexes, notify trigger",
     lambda st, legacy: st.migration_1(legacy)),
    (2, "per-minute rates for the dashboard; index of types with failed jobs",
     lambda st, legacy: st.migration_2()),
    (3, "idempotency keys held by their enqueued event through completion",
     lambda st, legacy: st.migration_3()),
]
LATEST_VERSION = MIGRATIONS[-1][0]

_LEGACY_COLUMNS = {"queue", "claimed_at", "claimed_until", "attempts", "payload"}


def _state(st: Statements) -> Op[tuple[bool, bool, set[str]]]:
    names = st.names
    rows = yield Stmt(SCHEMA_STATE.encode(), {
        "jobs": names.regclass(), "migrations": names.regclass("_migrations"),
    })
    jobs_exist, migrations_exist, columns = rows[0]
    return bool(jobs_exist), bool(migrations_exist), set(columns or ())


def current_version(st: Statements) -> Op[int]:
    """The applied schema version; 0 when the tables do not exist yet."""
    _, migrations_exist, _ = yield from _state(st)
    if not migrations_exist:
        return 0
    version: int = (yield Stmt(st.schema_version))[0][0]
    return version


def _legacy_id(st: Statements, columns: set[str]) -> str | None:
    if not columns >= _LEGACY_COLUMNS:
        raise SchemaError(
            f"table {st.names.display} exists but was not created by jobq; "
            "choose another table name"
        )
    for candidate in ("svti_jobs_id", f"{st.names.table}_id"):
        if candidate in columns:
            return candidate
    raise SchemaError(f"table {st.names.display} has no recognisable id column")


def ensure(st: Statements) -> Op[list[bytes]]:
    """First use: a cheap version check, and the locked migration only when it is needed.
    Runs inside one transaction."""
    if (yield from current_version(st)) == LATEST_VERSION:
        return []
    return (yield from migrate(st))


def require(st: Statements) -> Op[None]:
    """Check, changing nothing, that the tables exist at this jobq's version; otherwise a
    `SchemaError` that names the fix."""
    version = yield from current_version(st)
    where = st.names.display
    if version == LATEST_VERSION:
        return
    if version == 0:
        raise SchemaError(
            f"there is no jobq queue {where!r} here (a typo in --table?); create it with "
            f"`jobq migrate --table {where}`, or by a worker's first use")
    if version > LATEST_VERSION:
        raise SchemaError(f"queue {where!r} is at schema version {version}, newer than this "
                          f"jobq ({LATEST_VERSION}); upgrade jobq")
    raise SchemaError(f"queue {where!r} is at schema version {version}, this jobq needs "
                      f"{LATEST_VERSION}: run `jobq migrate --table {where}`")


def migrate(st: Statements, *, dry_run: bool = False) -> Op[list[bytes]]:
    """Bring the tables to `LATEST_VERSION`; returns the statements applied (or, with
    `dry_run`, that would be). Must run inside a transaction."""
    yield Stmt(ADVISORY_LOCK.encode(), {"key": st.names.lock_key})
    jobs_exist, migrations_exist, columns = yield from _state(st)
    version = 0
    if migrations_exist:
        version = (yield Stmt(st.schema_version))[0][0]
    if version > LATEST_VERSION:
        raise SchemaError(
            f"table {st.names.display} is at schema version {version}, newer than this jobq "
            f"({LATEST_VERSION}); upgrade jobq"
        )
    legacy = _legacy_id(st, columns) if jobs_exist and not migrations_exist else None
    plan: list[bytes] = [st.create_migrations] if not migrations_exist else []
    if plan and not dry_run:
        yield Stmt(st.create_migrations)
    for number, name, build in MIGRATIONS:
        if number <= version:
            continue
        statements = build(st, legacy if number == 1 else None)
        plan.extend(statements)
        if dry_run:
            continue
        for statement in statements:
            yield Stmt(statement)
        yield Stmt(st.record_migration, {"version": number, "name": name})
    return plan


def ddl(table: str = "svti_jobs") -> str:
    """The full DDL of a fresh install, for people who run migrations themselves."""
    st = Statements(Names.parse(table))
    parts = [st.create_migrations]
    for _, _, build in MIGRATIONS:
        parts += build(st, None)
    parts += [
        st.names.fmt(
            "INSERT INTO {migrations} (version, name) VALUES ({v}, {name})",
            v=sql.Literal(v), name=sql.Literal(name),
        ).as_bytes(None)
        for v, name, _ in MIGRATIONS
    ]
    return "".join(p.decode().strip() + ";\n\n" for p in parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print jobq's DDL for a fresh install.")
    parser.add_argument("table", nargs="?", default="svti_jobs")
    print(ddl(parser.parse_args(argv).table), end="")


if __name__ == "__main__":
    main()
