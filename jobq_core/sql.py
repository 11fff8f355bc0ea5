"""The names and the rendering of jobq's SQL; the statements themselves are in `queries.sql`.

`Names` validates a queue's table name and derives every object's name from it; `Statements`
renders each statement of queries.sql once per queue, identifiers composed with `psycopg.sql`
(values are always bound parameters), so the hot path reuses the same bytes and psycopg's
automatic prepared statements apply. The schema's versions are lists of statement names
(`MIGRATION_STEPS`). Only the listings are composed per call, in `listings.py`, because
their filters vary.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from psycopg import sql

from .errors import InvalidInputError
from .queries import QUERIES

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")

STATES = ("pending", "claimed", "failed", "cancelled")
EVENTS = (
    "enqueued", "claimed", "completed", "failed", "retried", "extended", "recovered", "released",
    "deleted", "cancelled", "snoozed",
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
            schedules=self.ident("_schedules"),
            limits=self.ident("_limits"),
            limit_keys=self.ident("_limit_keys"),
            limit_lanes=self.ident("_limit_lanes"),
            keys=self.ident("_keys"),
            events_default=self.ident("_events_default"),
            events_legacy=self.ident("_events_legacy"),
            notify_fn=self.ident("_notify"),
            ahead_fn=self.ident("_events_ahead"),
            retire_fn=self.ident("_events_retire"),
            free_keys_fn=self.ident("_events_free_keys"),
            limits_fn=self.ident("_limits_free"),
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
    "limit_keys_idx": "_limit_keys_full_idx",
    "limit_keys_lane_idx": "_limit_keys_lane_full_idx",
    "limit_keys_pkey": "_limit_keys_pkey",
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
    9: ("schedules_table",),
    # the snoozed event
    10: ("limits_table", "limit_keys_table", "limit_keys_index", "jobs_concurrency_key",
         "events_event_check"),
    11: ("limit_lanes_table", "limits_lanes", "limits_lanes_fill", "limits_drop_tokens",
         "limit_keys_empty", "limit_keys_lane", "limit_keys_index_drop",
         "limit_keys_lanes_index",
         "jobs_limit_lane", "limits_function_drop", "limits_function"),
    # the history's functions again: they now move rows by the catalog's columns
    12: ("jobs_trace_context", "events_trace_context", "ahead_function", "ahead_search_path",
         "retire_function"),
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


# --- rendering ---------------------------------------------------------------------------

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
