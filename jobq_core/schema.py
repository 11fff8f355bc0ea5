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
from .errors import LockTimeoutError, PermissionDeniedError, SchemaError
from .sql import EARLY_INDEXES, EARLY_STEPS, Names, Statements

#: (version, description, statements given the legacy id column if upgrading upstream's layout)
MIGRATIONS: list[tuple[int, str, Callable[[Statements, str | None], list[bytes]]]] = [
    (1, "initial layout: jobs, history, claim indexes, notify trigger",
     lambda st, legacy: st.migration(1, legacy)),
    (2, "per-minute rates for the dashboard; index of types with failed jobs",
     lambda st, legacy: st.migration(2)),
    (3, "idempotency keys held by their enqueued event through completion",
     lambda st, legacy: st.migration(3)),
    (4, "notify channel from the resolved schema and table, short enough for any name",
     lambda st, legacy: st.migration(4)),
    (5, "cancelled jobs, lease lengths, kept payloads, paused types and the worker registry",
     lambda st, legacy: st.migration(5)),
    (6, "claimed jobs by type and lease end, for typed claims' expired-lease seeks",
     lambda st, legacy: st.migration(6)),
    (7, "history partitioned by day; idempotency keys held in a table of their own",
     lambda st, legacy: st.migration(7)),
    (8, "the queue table vacuumed and analyzed by its dead rows, not by its size",
     lambda st, legacy: st.migration(8)),
    (9, "periodic jobs' schedules and the newest slot each has handled",
     lambda st, legacy: st.migration(9)),
    (10, "fleet-wide limits: per type, per key and by rate; snoozed jobs",
     lambda st, legacy: st.migration(10)),
    (11, "limits in lanes, so that claims of a limited type need not wait for each other",
     lambda st, legacy: st.migration(11)),
    (12, "the producer's W3C trace context on jobs and their enqueued events",
     lambda st, legacy: st.migration(12)),
]
LATEST_VERSION = MIGRATIONS[-1][0]

#: What the upgrade from upstream's layout reads, by column and type (`request_id` and
#: `created_at`, which upstream added later or left out, are added when missing).
_LEGACY_COLUMNS = {"queue": "text", "claimed_at": "timestamp with time zone",
                   "claimed_until": "timestamp with time zone", "attempts": "integer",
                   "payload": "jsonb"}
_LEGACY_OPTIONAL = {"request_id": "text", "created_at": "timestamp with time zone"}
_LEGACY_IDS = ("bigint", "integer")


def resolve(st: Statements) -> Op[None]:
    """Find the schema an unqualified table name means here (by the session's search_path),
    once: channels and the migration lock are named by it."""
    if st.names.channel:
        return
    rows = yield Stmt(st.resolve_schema, {
        "jobs": st.names.regclass(), "schema": st.names.schema, "table": st.names.table,
    })
    schema, channel = rows[0]
    if schema is None:
        raise SchemaError(
            f"the search_path names no schema that exists, so {st.names.display!r} has nowhere "
            "to be: qualify the table as schema.table, or fix the search_path")
    st.resolve(schema, channel)


def _state(st: Statements) -> Op[tuple[bool, bool, dict[str, str]]]:
    """Whether the jobs and migrations tables exist, and the jobs table's columns by type."""
    names = st.names
    rows = yield Stmt(st.schema_state, {
        "jobs": names.regclass(), "migrations": names.regclass("_migrations"),
    })
    jobs_exist, migrations_exist, columns = rows[0]
    return bool(jobs_exist), bool(migrations_exist), dict(columns or ())


def current_version(st: Statements) -> Op[int]:
    """The applied schema version; 0 when the tables do not exist yet."""
    yield from resolve(st)
    _, migrations_exist, _ = yield from _state(st)
    if not migrations_exist:
        return 0
    version: int = (yield Stmt(st.schema_version))[0][0]
    return version


def _legacy_id(st: Statements, columns: dict[str, str]) -> str:
    """The id column of a table in upstream's layout, once every column the upgrade relies
    on is there with its type; otherwise a `SchemaError` naming what is wrong."""
    where = st.names.display
    missing = sorted(set(_LEGACY_COLUMNS) - set(columns))
    if missing:
        raise SchemaError(f"table {where} exists but was not created by jobq (no "
                          f"{', '.join(missing)}); choose another table name")
    for column, wanted in {**_LEGACY_COLUMNS, **_LEGACY_OPTIONAL}.items():
        if column in columns and columns[column] != wanted:
            raise SchemaError(f"table {where} looks like upstream's layout, but its column "
                              f"{column} is {columns[column]}, not {wanted}; it cannot be "
                              "upgraded in place")
    for candidate in ("svti_jobs_id", f"{st.names.table}_id"):
        if columns.get(candidate) in _LEGACY_IDS:
            return candidate
    raise SchemaError(f"table {where} has no recognisable id column (a bigint "
                      f"svti_jobs_id or {st.names.table}_id)")


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
            f"`jobq migrate --table {where}`, or by the first use of a queue whose role may "
            "create tables")
    if version > LATEST_VERSION:
        raise SchemaError(f"queue {where!r} is at schema version {version}, newer than this "
                          f"jobq ({LATEST_VERSION}); upgrade jobq")
    raise SchemaError(f"queue {where!r} is at schema version {version}, this jobq needs "
                      f"{LATEST_VERSION}: run `jobq migrate --table {where}`")


def upgrading(version: int) -> bool:
    """Whether first use must change tables that already exist (and may be big)."""
    return 0 < version < LATEST_VERSION


def _drop_if_invalid(st: Statements, index: str, *, concurrently: bool) -> Op[bool]:
    """Whether the index exists and is valid. One that an interrupted or failed CONCURRENTLY
    build left invalid goes, so that IF NOT EXISTS builds it again instead of keeping it."""
    rows = yield Stmt(st.index_invalid, {"index": st.index_name(index)})
    if rows and rows[0][0]:
        yield Stmt(st.drop_index(index, concurrently=concurrently))
    return bool(rows) and not rows[0][0]


def build_early(st: Statements) -> Op[list[str]]:
    """An upgrade's new indexes, built CONCURRENTLY before its migration (`EARLY_INDEXES`),
    and its other early steps (`EARLY_STEPS`), one session at a time; returns the indexes
    built. Runs in autocommit on a connection of its own that is closed afterwards, which
    releases the session lock whatever failed."""
    yield from resolve(st)
    key = {"key": st.names.lock_key}
    while not (yield Stmt(st.early_lock, key))[0][0]:
        yield Stmt(st.early_wait)
    version = yield from current_version(st)
    built: list[str] = []
    for number in sorted(EARLY_INDEXES.keys() | EARLY_STEPS.keys()):
        if number <= version:
            continue
        for index, name in EARLY_INDEXES.get(number, ()):
            yield from _drop_if_invalid(st, index, concurrently=True)
            yield Stmt(st.build_index(name, concurrently=True))
            built.append(index)
        for statement in st.early_steps(number):
            yield Stmt(statement)
    yield Stmt(st.early_unlock, key)
    return built


def not_allowed(st: Statements, denied: PermissionDeniedError) -> SchemaError:
    """First use needed DDL that this role may not run: say who can."""
    where = st.names.display
    return SchemaError(
        f"queue {where!r} needs creating or migrating, and this role may not ({denied}); run "
        f"`jobq migrate --table {where}` once as the tables' owner, and give workers "
        "auto_migrate=False")


def migrate(st: Statements, *, dry_run: bool = False) -> Op[list[bytes]]:
    """Bring the tables to `LATEST_VERSION`; returns the statements applied (or, with
    `dry_run`, that would be). Must run inside a transaction."""
    yield from resolve(st)
    yield Stmt(st.advisory_lock, {"key": st.names.lock_key})
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
    early = any(number > version for number in EARLY_INDEXES)
    if early and not dry_run and not (yield Stmt(st.early_held,
                                                 {"key": st.names.lock_key}))[0][0]:
        raise LockTimeoutError(
            f"another session is building indexes of queue {st.names.display!r} "
            "concurrently; this migration can run once that build is done")
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
        built = set()  # skipped, not rebuilt IF NOT EXISTS: that would still lock the table
        for index, statement_name in EARLY_INDEXES.get(number, ()):
            if (yield from _drop_if_invalid(st, index, concurrently=False)):
                built.add(st.build_index(statement_name, concurrently=False))
        for statement in statements:
            if statement not in built:
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
