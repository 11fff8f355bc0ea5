"""The names and the rendering of jobq's SQL; the statements themselves are in `queries.sql`.

`Names` validates a queue's table name and derives every object's name from it; `Statements`
renders each statement of queries.sql once per queue, identifiers composed with `psycopg.sql`
(values are always bound parameters), so the hot path reuses the same bytes and psycopg's
automatic prepared statements apply. The schema's versions are lists of statement names
(`MIGRATION_STEPS`). Only the listings are composed here, because their filters vary.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from .errors import InvalidInputError
from .queries import QUERIES

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")

STATES = ("pending", "claimed", "failed", "cancelled")
EVENTS = (
    "enqueued", "claimed", "completed", "failed", "retried", "extended", "recovered", "released",
    "deleted", "cancelled",
)


@dataclass(frozen=True, slots=True)
class Names:
    """The validated names of one queue's database objects, all derived from its table name."""

    schema: str | None
    table: str
    #: How the caller spelled it, kept for messages once the schema is resolved.
    spelled: str = ""
    #: The NOTIFY channel, known once the schema is resolved (`schema.resolve`).
    channel: str = ""

    @classmethod
    def parse(cls, name: object) -> Names:
        """Accept ``table`` or ``schema.table``; each part a plain identifier of 40 characters
        at most, not ``pg_*`` nor ``information_schema``. Checked before any SQL runs."""
        if not isinstance(name, str):
            raise InvalidInputError(f"table name must be a string, got {type(name).__name__}")
        parts = name.split(".")
        if len(parts) > 2 or not all(_IDENT.fullmatch(p) for p in parts):
            raise InvalidInputError(
                f"invalid table name {name!r}: use [schema.]table, each part letters, digits "
                "and underscores, starting with a letter or underscore, at most 40 characters"
            )
        for part in parts:
            low = part.lower()
            if low.startswith("pg_") or low == "information_schema":
                raise InvalidInputError(f"invalid table name {name!r}: {part!r} is reserved")
        return cls(parts[0], parts[1]) if len(parts) == 2 else cls(None, parts[0])

    def ident(self, suffix: str = "") -> sql.Identifier:
        """A schema-qualified identifier for the table or one of its companions."""
        name = self.table + suffix
        return sql.Identifier(self.schema, name) if self.schema else sql.Identifier(name)

    def local(self, suffix: str) -> sql.Identifier:
        """An unqualified name, for indexes, constraints and triggers."""
        return sql.Identifier(self.table + suffix)

    def regclass(self, suffix: str = "") -> str:
        """The quoted name as text, for ``to_regclass`` and ``pg_get_serial_sequence``."""
        return self.ident(suffix).as_string(None)

    @property
    def display(self) -> str:
        return self.spelled or (f"{self.schema}.{self.table}" if self.schema else self.table)

    def resolved(self, schema: str, channel: str) -> Names:
        """These names in the schema an unqualified table resolves to, so that every spelling
        of one table shares its channel and migration lock."""
        return Names(schema, self.table, self.display, channel)

    @property
    def done_channel(self) -> str:
        """Where completions and final failures of waited-on jobs are announced (payload: id)."""
        assert self.channel, "the table is resolved first"
        return self.channel + "_done"

    @property
    def lock_key(self) -> str:
        """The migration lock, by resolved name (`svti_x` and `public.svti_x` are one)."""
        return f"jobq:{self.schema}.{self.table}"

    def fmt(self, template: str, **extra: sql.Composable) -> sql.Composed:
        """Fill {jobs}, {events}, {migrations}, {channel} and index names into a template.
        {channel} exists only once resolved: a statement that notifies cannot be rendered
        before (a KeyError, not a notification nobody hears)."""
        if self.channel:
            extra = {"channel": sql.Literal(self.channel),
                     "done_channel": sql.Literal(self.done_channel), **extra}
        return sql.SQL(template).format(
            **extra,
            jobs=self.ident(),
            events=self.ident("_events"),
            migrations=self.ident("_migrations"),
            rates=self.ident("_rates"),
            pauses=self.ident("_pauses"),
            workers=self.ident("_workers"),
            keys=self.ident("_keys"),
            events_default=self.ident("_events_default"),
            events_legacy=self.ident("_events_legacy"),
            notify_fn=self.ident("_notify"),
            ahead_fn=self.ident("_events_ahead"),
            retire_fn=self.ident("_events_retire"),
            free_keys_fn=self.ident("_events_free_keys"),
            # names as text, for regclass casts inside PL/pgSQL
            jobs_text=sql.Literal(self.regclass()),
            events_text=sql.Literal(self.regclass("_events")),
            ahead_text=sql.Literal(self.regclass("_events_ahead")),
            states=sql.SQL(", ").join(sql.Literal(s) for s in STATES),
            events_list=sql.SQL(", ").join(sql.Literal(e) for e in EVENTS),
            **{name: self.local(suffix) for name, suffix in _LOCAL_NAMES.items()},
        )


_LOCAL_NAMES = {
    "failed_type_idx": "_failed_type_idx",
    "state_check": "_state_check",
    "ready_idx": "_ready_idx",
    "ready_type_idx": "_ready_type_idx",
    "lease_idx": "_lease_idx",
    "failed_idx": "_failed_idx",
    "idempotency_idx": "_idempotency_idx",
    "ev_job_idx": "_events_job_idx",
    "ev_request_idx": "_events_request_idx",
    "ev_at_idx": "_events_at_idx",
    "ev_idempotency_idx": "_events_idempotency_idx",
    "ev_key_idx": "_events_key_idx",
    "ev_keyed_idx": "_events_keyed_idx",
    "ev_bound_check": "_events_bound",
    "ev_completed_idx": "_events_completed_idx",
    "notify_trigger": "_notify_insert",
    "cancelled_idx": "_cancelled_idx",
    "cancelled_type_idx": "_cancelled_type_idx",
    "lease_type_idx": "_lease_type_idx",
    "ev_event_check": "_events_event_check",
}

# --- schema: each version's statements, by their names in queries.sql, in order ---------

#: Days ahead that `migrate` and every fold of the rates keep the history's daily partitions
#: made (convert_history in queries.sql writes the same 3).
HISTORY_AHEAD_DAYS = 3

_COMMON = ("ready_index", "ready_type_index", "lease_index", "failed_index", "idempotency_index",
           "events_table", "events_job_index", "events_request_index", "events_at_index",
           "events_idempotency_index", "events_completed_index", "notify_function",
           "notify_trigger")
#: Version 1 over the upstream JavaScript layout, in place of create_jobs.
LEGACY_UPGRADE = ("legacy_rename_id", "legacy_rename_queue", "legacy_rename_lease",
                  "legacy_add_columns", "legacy_fill_columns", "legacy_constrain",
                  "legacy_drop_pending_index", "legacy_drop_visibility_index")
MIGRATION_STEPS: dict[int, tuple[str, ...]] = {
    1: ("create_jobs", *_COMMON),
    2: ("rates_table", "failed_type_index"),
    3: ("events_keys_dedupe", "events_key_index", "events_key_holders_of_jobs",
        "events_key_holders_of_completions", "drop_events_idempotency_index"),
    # the notify trigger on the resolved channel
    4: ("notify_function",),
    5: ("jobs_state_check", "jobs_lease_ms", "events_event_check", "events_payload",
        "cancelled_index", "cancelled_type_index", "pauses_table", "workers_table"),
    6: ("lease_type_index", "drop_lease_index"),
    7: ("keys_table", "keyed_index", "ahead_function", "ahead_search_path",
        "free_keys_function", "retire_function", "convert_history", "keys_copy_history",
        "keys_copy_jobs"),
    8: ("jobs_autovacuum",),
}

# An upgrade builds the indexes of its migrations CONCURRENTLY first, outside the
# migration's transaction, so that writers (older workers, in a rolling deploy) are never
# blocked while a big table is indexed. Its own IF NOT EXISTS build then finds them done; when
# an early build failed (a unique index over keys the migration dedupes first) the migration
# drops the invalid leftover and builds the index itself.
EARLY_INDEXES: dict[int, tuple[tuple[str, str], ...]] = {
    2: (("failed_type_idx", "failed_type_index"),),
    3: (("ev_key_idx", "events_key_index"),),
    5: (("cancelled_idx", "cancelled_index"), ("cancelled_type_idx", "cancelled_type_index")),
    6: (("lease_type_idx", "lease_type_index"),),
    7: (("ev_keyed_idx", "keyed_index"),),
}
#: What an upgrade does early besides its indexes, each statement its own transaction, in
#: order: the bound that lets version 7 attach the history without reading it, and the bulk
#: of the keys' copy, vacuumed so that the migration's catch-up reads indexes only.
EARLY_STEPS: dict[int, tuple[str, ...]] = {
    7: ("keys_table", "early_bound", "early_validate_bound", "keys_copy_history",
        "keys_copy_jobs", "keys_free_stale", "keys_vacuum"),
}


# --- listings (jobq_core.admin.list_jobs): composed here, as their filters vary ------------

#: The columns of a listed job (admin.JobRow), as `show_job` in queries.sql reads them.
ADMIN_COLUMNS = (
    "id, type, state, payload, priority, run_at, attempts, request_id, idempotency_key, "
    "lease_until, claimed_by, claimed_at, last_error, failed_at, created_at, lease_ms"
)


# Each state is listed in the order of the index that serves it, so the first page costs the
# same however large the backlog: pending jobs in the order they will run (the claim order),
# failed by failure time, claimed by lease expiry, history and everything else newest first.
# The keyset cursor is that order's last key.
_LIST_ORDER = {
    "failed": ("failed_at DESC, id DESC", "(failed_at, id) < (%(c_at)s, %(c_id)s)"),
    "cancelled": ("failed_at DESC, id DESC", "(failed_at, id) < (%(c_at)s, %(c_id)s)"),
    "claimed": ("lease_until, id", "(lease_until, id) > (%(c_at)s, %(c_id)s)"),
    "expired": ("lease_until, id", "(lease_until, id) > (%(c_at)s, %(c_id)s)"),
}
_LIST_STATE = {
    "pending": "state = 'pending'",
    "ready": "state = 'pending' AND run_at <= now()",
    "scheduled": "state = 'pending' AND run_at > now()",
    "claimed": "state = 'claimed'",
    "expired": "state = 'claimed' AND lease_until < now()",
    "failed": "state = 'failed'",
    "cancelled": "state = 'cancelled'",
}
_ATTEMPTS_OPS = {"=": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _list_conditions(names: Names, where: dict[str, Any], state: str | None
                     ) -> tuple[list[str], dict[str, Any]]:
    """The WHERE conditions and parameters of a listing: its state and the filter's values
    (type, request_id, error substring, age (op, interval), attempts (op, n), job_id). Only
    constant fragments and bound parameters go into the text."""
    history = state == "completed"
    params: dict[str, Any] = {}
    conds: list[str] = ["event = 'completed'"] if history else []
    if state and not history:
        conds.append(_LIST_STATE[state])
    if "job_id" in where:
        conds.append(("job_id" if history else "id") + " = %(job_id)s")
        params["job_id"] = where["job_id"]
    if "type" in where:
        conds.append("type = %(type)s")
        params["type"] = where["type"]
    if "request_id" in where:
        conds.append("request_id = %(request_id)s")
        if not history:
            # Found through the history's request-id index, so the hot table needs no index
            # of its own (every claim would write to it). A live job is found as long as its
            # `enqueued` event is kept, i.e. unless it is older than a `clear` cutoff.
            conds.append("id IN (SELECT job_id FROM {events} "
                         "WHERE request_id = %(request_id)s)")
        params["request_id"] = where["request_id"]
    if "error" in where:
        column = "reason" if history else "last_error"
        conds.append(column + " ILIKE %(error)s ESCAPE '\\'")
        params["error"] = "%" + re.sub(r"([\\%_])", r"\\\1", where["error"]) + "%"
    if "age" in where:
        op, age = where["age"]
        column = "occurred_at" if history else "created_at"
        conds.append(column + (" < " if op == ">" else " > ") + "now() - %(age)s::interval")
        params["age"] = age
    if "attempts" in where:
        op, count = where["attempts"]
        column = "attempt" if history else "attempts"
        conds.append(f"{column} {_ATTEMPTS_OPS[op]} %(attempts)s")
        params["attempts"] = count
    return conds, params


def _source(names: Names, state: str | None) -> sql.Identifier:
    return names.ident("_events") if state == "completed" else names.ident()


def list_jobs(names: Names, where: dict[str, Any], state: str | None,
              cursor: tuple[Any, ...] | None, limit: int, *,
              sort: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """The statement for one page of `admin.list_jobs`, in the state's own order or, given
    `sort` (a `SORTS` name, "-" first for descending), in that column's order."""
    history = state == "completed"
    conds, params = _list_conditions(names, where, state)
    params["limit"] = limit
    if sort is not None:
        order, after = _sorted_keyset(sort, history, cursor, params)
    elif state in RUN_ORDER_STATES:
        return _list_in_run_order(names, conds, params, cursor)
    else:
        order, after = _LIST_ORDER.get(state or "", ("id DESC", "id < %(c_id)s"))
        if history:
            order, after = "id DESC", "id < %(c_id)s"
        if cursor is not None:
            params["c_at"], params["c_id"] = cursor[-2:]
    if cursor is not None:
        conds.append(after)
    query = sql.SQL("SELECT {columns} FROM {source} WHERE {conds} ORDER BY {order} "
                    "LIMIT %(limit)s").format(
        columns=sql.SQL(_HISTORY_AS_JOBS if history else _LIVE_AS_JOBS),
        source=_source(names, state),
        conds=sql.SQL(" AND ").join(names.fmt(c) for c in conds or ["true"]),
        order=sql.SQL(order),
    )
    return query.as_bytes(None), params


#: What a listing can be sorted by, across all its rows: the column of a live job and of a
#: completed job's history row (None: that listing has no such column). Only the states'
#: own orders have indexes; any other sort reads every row the filter selects (a top-N sort).
SORTS: dict[str, tuple[str, str | None]] = {
    "id": ("id", "job_id"),
    "type": ("type", "type"),
    "priority": ("priority", None),
    "run_at": ("run_at", None),
    "attempts": ("attempts", "attempt"),
    "request_id": ("request_id", "request_id"),
    "lease_until": ("lease_until", None),
    "claimed_by": ("claimed_by", "worker"),
    "failed_at": ("failed_at", None),
    "created_at": ("created_at", "occurred_at"),
}

#: The sorts on a point in time (their keyset cursor holds a timestamp).
TIME_SORTS = ("run_at", "lease_until", "failed_at", "created_at")


def sort_column(sort: str, history: bool) -> str:
    """The column behind a sort name ("-" first for descending); raises KeyError when the
    listing has none."""
    column = SORTS[sort.removeprefix("-")][1 if history else 0]
    if column is None:
        raise KeyError(sort)
    return column


def _sorted_keyset(sort: str, history: bool, cursor: tuple[Any, ...] | None,
                   params: dict[str, Any]) -> tuple[str, str]:
    """ORDER BY and the keyset condition for a sort: (column, key), both ascending or both
    descending, NULLs after every value ascending and before them descending (Postgres'
    default), so that the condition after a NULL stays simple."""
    column = sort_column(sort, history)
    key = "id"  # the history's own row id for completed jobs, as the default order
    if sort.startswith("-"):
        order = f"{column} DESC, {key} DESC"
        after = (f"({column} IS NULL AND {key} < %(c_id)s OR {column} IS NOT NULL)",
                 f"({column} < %(c_v)s OR {column} = %(c_v)s AND {key} < %(c_id)s)")
    else:
        order = f"{column}, {key}"
        after = (f"({column} IS NULL AND {key} > %(c_id)s)",
                 f"({column} > %(c_v)s OR {column} IS NULL "
                 f"OR {column} = %(c_v)s AND {key} > %(c_id)s)")
    if cursor is None:
        return order, ""
    params["c_v"], params["c_id"] = cursor
    return order, after[0] if cursor[0] is None else after[1]


def count_jobs(names: Names, where: dict[str, Any], state: str | None,
               cap: int) -> tuple[bytes, dict[str, Any]]:
    """How many rows a listing has in all, counted up to `cap`."""
    conds, params = _list_conditions(names, where, state)
    params["cap"] = cap
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {source} WHERE {conds} "
                    "LIMIT %(cap)s) AS s").format(
        source=_source(names, state),
        conds=sql.SQL(" AND ").join(names.fmt(c) for c in conds or ["true"]))
    return query.as_bytes(None), params


def estimate_jobs(names: Names, where: dict[str, Any], state: str | None
                  ) -> tuple[bytes, dict[str, Any]]:
    """The planner's estimate of a listing's rows, for totals beyond the counting cap."""
    conds, params = _list_conditions(names, where, state)
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {source} WHERE {conds}").format(
        source=_source(names, state),
        conds=sql.SQL(" AND ").join(names.fmt(c) for c in conds or ["true"]))
    return query.as_bytes(None), params


#: States listed in the order their jobs will be claimed: priority first, then run_at, id.
RUN_ORDER_STATES = ("pending", "ready", "scheduled")


def _list_in_run_order(names: Names, conds: list[str], params: dict[str, Any],
                       cursor: tuple[Any, ...] | None) -> tuple[bytes, dict[str, Any]]:
    """A page of pending jobs in claim order, from the ready index (priority DESC, run_at,
    id). Priority descends while the rest ascends, which no row comparison expresses, so a
    later page is two index ranges, each read in index order: the rest of the cursor's
    priority, then the lower priorities."""
    order = "priority DESC, run_at, id"
    parts = [conds]
    if cursor is not None:
        params["c_pri"], params["c_at"], params["c_id"] = cursor
        parts = [[*conds, "priority = %(c_pri)s", "(run_at, id) > (%(c_at)s, %(c_id)s)"],
                 [*conds, "priority < %(c_pri)s"]]
    selects = [sql.SQL("(SELECT {columns} FROM {jobs} WHERE {conds} ORDER BY {order} "
                       "LIMIT %(limit)s)").format(
        columns=sql.SQL(_LIVE_AS_JOBS), jobs=names.ident(), order=sql.SQL(order),
        conds=sql.SQL(" AND ").join(names.fmt(c) for c in part)) for part in parts]
    query = sql.SQL("SELECT * FROM ({parts}) AS page ORDER BY priority DESC, run_at, list_key "
                    "LIMIT %(limit)s").format(parts=sql.SQL(" UNION ALL ").join(selects))
    return query.as_bytes(None), params


# A live job as listed: its columns, then the keyset key and the (absent) result.
_LIVE_AS_JOBS = ADMIN_COLUMNS + ", id AS list_key, NULL::jsonb AS list_result"


# A completed job, from its history row, in the shape of a listed job (with its payload when
# it was small enough to keep).
_HISTORY_AS_JOBS = (
    "job_id, type, 'completed', payload, NULL::smallint, NULL::timestamptz, attempt, "
    "request_id, idempotency_key, NULL::timestamptz, worker, NULL::timestamptz, NULL, "
    "NULL::timestamptz, occurred_at, NULL::integer, id, result"
)


_RESOLVING = threading.Lock()

#: The largest payload, as stored, that a completed job keeps in its history row.
PAYLOAD_BYTES = 8192


@dataclass(eq=False)
class Statements:
    """The statements of one queue, rendered once to bytes (after `resolve`)."""

    names: Names
    #: Completed jobs keep payloads of at most this many bytes in history (0: none).
    payload_bytes: int = PAYLOAD_BYTES

    def resolve(self, schema: str, channel: str) -> None:
        """Name everything by the schema the table resolved to; statements rendered before
        (only the schema checks) are rendered again."""
        with _RESOLVING:
            if self.names.channel:
                return
            for name in list(self.__dict__):
                if name in QUERIES:
                    del self.__dict__[name]
            self.names = self.names.resolved(schema, channel)

    def __getattr__(self, name: str) -> bytes:
        """A statement of queries.sql by its name, rendered on first use and kept."""
        query = QUERIES.get(name)
        if query is None:
            raise AttributeError(f"no statement named {name!r} in queries.sql")
        try:
            rendered = self._render(query.text)
        except KeyError as missing:  # a schema statement, which `migration` renders
            raise AttributeError(f"{name!r} needs {missing} filled: a schema step") from None
        self.__dict__[name] = rendered
        return rendered

    def _render(self, template: str, **extra: sql.Composable) -> bytes:
        extra.setdefault("keep_bytes", sql.Literal(self.payload_bytes))
        return self.names.fmt(template, **extra).as_bytes(None)

    def migration(self, version: int, legacy_id: str | None = None) -> list[bytes]:
        """A schema version's statements, in order (`MIGRATION_STEPS`); version 1 over the
        upstream layout, whose id column is `legacy_id`, upgrades it in place."""
        names = MIGRATION_STEPS[version]
        extra = {"concurrently": sql.SQL(""), **self._history_names()}
        if legacy_id is not None:
            assert version == 1
            names = LEGACY_UPGRADE + names[1:]
            extra |= {
                "legacy_id": sql.Identifier(legacy_id),
                "legacy_pending_idx_q": _sibling(self.names, "idx_", "_queue_pending"),
                "legacy_visibility_idx_q": _sibling(self.names, "idx_", "_visibility"),
            }
        return [self._render(QUERIES[name].text, **extra) for name in names]

    def index_name(self, key: str) -> str:
        """A named index's schema-qualified name, for `to_regclass`."""
        return self.names.regclass(_LOCAL_NAMES[key])

    def build_index(self, name: str, *, concurrently: bool) -> bytes:
        """The index statement `name` of queries.sql, CONCURRENTLY when early."""
        return self._render(QUERIES[name].text,
                            concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""))

    def drop_index(self, key: str, *, concurrently: bool) -> bytes:
        return self._render(QUERIES["index_drop"].text,
                            index=self.names.ident(_LOCAL_NAMES[key]),
                            concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""))

    def _history_names(self) -> dict[str, sql.Composable]:
        """The names version 7's conversion renames from and to."""
        n = self.names
        old = {f"old_{key}_idx": n.ident(f"_events_{key}_idx")
               for key in ("job", "request", "at", "completed", "keyed", "key")}
        legacy = {f"legacy_{key}_idx": n.local(f"_events_legacy_{short}")
                  for key, short in (("job", "job"), ("request", "request"), ("at", "at"),
                                     ("completed", "done"), ("keyed", "keyed"))}
        return {**old, **legacy, "bound_name": sql.Literal(n.table + "_events_bound"),
                "legacy_local": n.local("_events_legacy"),
                "legacy_text": sql.Literal(n.regclass("_events_legacy"))}

    def early_steps(self, number: int) -> list[bytes]:
        """What an upgrade to `number` runs before its migration, besides its indexes."""
        return [self._render(QUERIES[name].text, **self._history_names())
                for name in EARLY_STEPS.get(number, ())]


def _sibling(names: Names, prefix: str, suffix: str) -> sql.Identifier:
    name = prefix + names.table + suffix
    return sql.Identifier(names.schema, name) if names.schema else sql.Identifier(name)
