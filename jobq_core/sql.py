"""Every SQL statement jobq runs, by name: the queue's and the operators' are in `queries.sql`,
read as they are; the schema's are here, on their way there, and the listings', composed here
because their filters vary.

Identifiers are composed with `psycopg.sql` from a validated `Names`; values are always bound
parameters. `Statements` renders each statement once per queue, so the hot path reuses the same
bytes and psycopg's automatic prepared statements apply.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import cached_property
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
    #: The NOTIFY channel, known once the schema is resolved (`RESOLVE`).
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

# --- schema ------------------------------------------------------------------------------

SCHEMA_STATE = """
SELECT to_regclass(%(jobs)s) IS NOT NULL,
       to_regclass(%(migrations)s) IS NOT NULL,
       (SELECT array_agg(ARRAY[attname::text, format_type(atttypid, NULL)]) FROM pg_attribute
         WHERE attrelid = to_regclass(%(jobs)s) AND attnum > 0 AND NOT attisdropped)
"""

SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM {migrations}"

ADVISORY_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))"

# The NOTIFY channel of a table, from its resolved schema and name: at most 48 bytes (a
# channel stops at 63), readable, and the same however the table was spelled.
_CHANNEL_OF = ("'jobq_' || left({t}, 30) || '_' || "
               "left(encode(sha256(convert_to({s} || '.' || {t}, 'UTF8')), 'hex'), 12)")

# The schema an unqualified table resolves to (where it is, else where it would be created)
# and its channel. NULL when the search_path names no schema that exists. (Composed of
# constants only.)
RESOLVE = ("SELECT resolved, CASE WHEN resolved IS NOT NULL THEN "  # noqa: S608
           + _CHANNEL_OF.format(s="resolved", t="%(table)s::text") + """ END
FROM (SELECT coalesce((SELECT n.nspname::text FROM pg_class AS c
                         JOIN pg_namespace AS n ON n.oid = c.relnamespace
                        WHERE c.oid = to_regclass(%(jobs)s)),
                      %(schema)s, current_schema()::text) AS resolved) AS target""")

# One NOTIFY per INSERT statement, however many rows it adds, on the table's own channel.
NOTIFY_FUNCTION = """CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(""" + _CHANNEL_OF.format(s="TG_TABLE_SCHEMA", t="TG_TABLE_NAME") + """, '');
    RETURN NULL;
END
$$"""

CREATE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS {migrations} (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""

RECORD_MIGRATION = (
    "INSERT INTO {migrations} (version, name) VALUES (%(version)s, %(name)s) "
    "ON CONFLICT (version) DO NOTHING"
)

CREATE_JOBS = """
CREATE TABLE {jobs} (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    type text NOT NULL,
    payload jsonb,
    state text NOT NULL DEFAULT 'pending' CONSTRAINT {state_check} CHECK (state IN ({states})),
    priority smallint NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    request_id text,
    idempotency_key text,
    lease_token uuid,
    lease_until timestamptz,
    claimed_by text,
    claimed_at timestamptz,
    last_error text,
    failed_at timestamptz,
    has_waiters boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80)"""

# The upstream JavaScript layout (svti_jobs_id, queue, claimed_at, claimed_until, ...) is
# renamed and widened in place, so that no row is copied or lost.
LEGACY_UPGRADE = (
    "ALTER TABLE {jobs} RENAME COLUMN {legacy_id} TO id",
    "ALTER TABLE {jobs} RENAME COLUMN queue TO type",
    "ALTER TABLE {jobs} RENAME COLUMN claimed_until TO lease_until",
    """ALTER TABLE {jobs}
        ADD COLUMN IF NOT EXISTS request_id text,
        ADD COLUMN IF NOT EXISTS created_at timestamptz,
        ADD COLUMN state text NOT NULL DEFAULT 'pending',
        ADD COLUMN priority smallint NOT NULL DEFAULT 0,
        ADD COLUMN run_at timestamptz,
        ADD COLUMN idempotency_key text,
        ADD COLUMN lease_token uuid,
        ADD COLUMN claimed_by text,
        ADD COLUMN last_error text,
        ADD COLUMN failed_at timestamptz,
        ADD COLUMN has_waiters boolean NOT NULL DEFAULT false""",
    """UPDATE {jobs} SET
        created_at = coalesce(created_at, now()),
        run_at = coalesce(created_at, now()),
        state = CASE WHEN claimed_at IS NULL THEN 'pending' ELSE 'claimed' END,
        lease_token = CASE WHEN claimed_at IS NULL THEN NULL ELSE gen_random_uuid() END,
        lease_until = CASE WHEN claimed_at IS NULL THEN NULL ELSE coalesce(lease_until, now()) END,
        claimed_by = CASE WHEN claimed_at IS NULL THEN NULL ELSE 'legacy' END""",
    """ALTER TABLE {jobs}
        ALTER COLUMN created_at SET NOT NULL,
        ALTER COLUMN created_at SET DEFAULT now(),
        ALTER COLUMN run_at SET NOT NULL,
        ALTER COLUMN run_at SET DEFAULT now(),
        ADD CONSTRAINT {state_check} CHECK (state IN ({states})),
        SET (fillfactor = 80)""",
    "DROP INDEX IF EXISTS {legacy_pending_idx_q}",
    "DROP INDEX IF EXISTS {legacy_visibility_idx_q}",
)

CREATE_COMMON = (
    # The claim order, exactly: priority first, then run_at, then id.
    "CREATE INDEX {ready_idx} ON {jobs} (priority DESC, run_at, id) WHERE state = 'pending'",
    "CREATE INDEX {ready_type_idx} ON {jobs} (type, priority DESC, run_at, id) "
    "WHERE state = 'pending'",
    "CREATE INDEX {lease_idx} ON {jobs} (lease_until, id) WHERE state = 'claimed'",
    "CREATE INDEX {failed_idx} ON {jobs} (failed_at, id) WHERE state = 'failed'",
    "CREATE UNIQUE INDEX {idempotency_idx} ON {jobs} (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
    # No primary-key index: history is read by job, by request id or by age, never by its own
    # id alone, and one btree fewer makes every transition cheaper.
    """CREATE TABLE {events} (
        id bigint GENERATED ALWAYS AS IDENTITY,
        occurred_at timestamptz NOT NULL DEFAULT now(),
        job_id bigint NOT NULL,
        type text NOT NULL,
        event text NOT NULL CONSTRAINT {ev_event_check} CHECK (event IN ({events_list})),
        request_id text,
        attempt integer NOT NULL DEFAULT 0,
        worker text,
        reason text,
        result jsonb,
        idempotency_key text
    )""",
    "CREATE INDEX {ev_job_idx} ON {events} (job_id, id)",
    "CREATE INDEX {ev_request_idx} ON {events} (request_id, id) WHERE request_id IS NOT NULL",
    # History is append-only, so a BRIN index serves age-based deletes at almost no write cost.
    "CREATE INDEX {ev_at_idx} ON {events} USING brin (occurred_at)",
    "CREATE INDEX {ev_idempotency_idx} ON {events} (idempotency_key, id) "
    "WHERE event = 'completed' AND idempotency_key IS NOT NULL",
    # The completed tab pages through history newest first; one entry per finished job.
    "CREATE INDEX {ev_completed_idx} ON {events} (id) WHERE event = 'completed'",
    NOTIFY_FUNCTION,
    "CREATE TRIGGER {notify_trigger} AFTER INSERT ON {jobs} "
    "FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}()",
)

# Version 2: per-minute completion counts, folded from history one finished minute at a
# time (the dashboard never aggregates history), and an index to find types with failed jobs.
CREATE_V2 = (
    """CREATE TABLE {rates} (
        minute timestamptz NOT NULL,
        type text NOT NULL,
        completed integer NOT NULL DEFAULT 0,
        failed integer NOT NULL DEFAULT 0,
        PRIMARY KEY (minute, type)
    )""",
    "CREATE INDEX {concurrently}IF NOT EXISTS {failed_type_idx} ON {jobs} (type) "
    "WHERE state = 'failed'",
)

# Version 3: an idempotency key is held by its job's `enqueued` event, in one unique index
# that a completion never empties, so an enqueue racing the completion of its key's job
# cannot insert a second job. History keeps the key until `clear` removes that event; an
# operator's delete frees it. Older duplicates (keys reused after a delete) give way to the
# newest. Keys that only a live job or a `completed` event held before (an older `clear`
# removed their `enqueued` event) get a holder event back, dated like what it stands for, so
# that no key becomes free by migrating. The index of completed events by key goes.
CREATE_V3 = (
    """UPDATE {events} AS e SET idempotency_key = NULL
    WHERE e.event = 'enqueued' AND e.idempotency_key IS NOT NULL
      AND EXISTS (SELECT 1 FROM {events} AS n
                  WHERE n.event = 'enqueued' AND n.idempotency_key = e.idempotency_key
                    AND n.id > e.id)""",
    "CREATE UNIQUE INDEX {concurrently}IF NOT EXISTS {ev_key_idx} ON {events} "
    "(idempotency_key) WHERE event = 'enqueued' AND idempotency_key IS NOT NULL",
    """INSERT INTO {events} (occurred_at, job_id, type, event, request_id, idempotency_key,
                           reason)
    SELECT j.created_at, j.id, j.type, 'enqueued', j.request_id, j.idempotency_key,
           'key holder restored by migration 3'
    FROM {jobs} AS j
    WHERE j.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {events} AS e
                      WHERE e.event = 'enqueued' AND e.idempotency_key = j.idempotency_key)""",
    """INSERT INTO {events} (occurred_at, job_id, type, event, request_id, idempotency_key,
                           reason)
    SELECT DISTINCT ON (c.idempotency_key) c.occurred_at, c.job_id, c.type, 'enqueued',
           c.request_id, c.idempotency_key, 'key holder restored by migration 3'
    FROM {events} AS c
    WHERE c.event = 'completed' AND c.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {events} AS e
                      WHERE e.event = 'enqueued' AND e.idempotency_key = c.idempotency_key)
    ORDER BY c.idempotency_key, c.id DESC""",
    "DROP INDEX IF EXISTS {ev_idempotency_idx}",
)

# Version 5: operator control.
# - A `cancelled` state: terminal like `failed`, kept and retryable, its time in failed_at (the
#   time a job ended) and who and why in last_error. The widened CHECKs are added NOT VALID:
#   every existing row already meets them (they only admit more), and validating would scan
#   the tables under an exclusive lock.
# - `lease_ms`, the length of the lease a holder keeps renewing, so a lease is judged against
#   its own length (a missed heartbeat, a bar that is full when fresh).
# - Completed jobs keep their payload in history (up to a size, see `Statements`).
# - Paused types, which claims skip, and the registry of running workers.
CREATE_V5 = (
    "ALTER TABLE {jobs} DROP CONSTRAINT IF EXISTS {state_check}, "
    "ADD CONSTRAINT {state_check} CHECK (state IN ({states})) NOT VALID",
    "ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS lease_ms integer",
    "ALTER TABLE {events} DROP CONSTRAINT IF EXISTS {ev_event_check}, "
    "ADD CONSTRAINT {ev_event_check} CHECK (event IN ({events_list})) NOT VALID",
    "ALTER TABLE {events} ADD COLUMN IF NOT EXISTS payload jsonb",
    "CREATE INDEX {concurrently}IF NOT EXISTS {cancelled_idx} ON {jobs} (failed_at, id) "
    "WHERE state = 'cancelled'",
    # Like failed_type_idx: status finds and counts each type's cancelled jobs by seeks, so a
    # mass cancel of a runaway backlog does not make every refresh read all of it.
    "CREATE INDEX {concurrently}IF NOT EXISTS {cancelled_type_idx} ON {jobs} (type) "
    "WHERE state = 'cancelled'",
    """CREATE TABLE IF NOT EXISTS {pauses} (
        type text PRIMARY KEY,
        paused_at timestamptz NOT NULL DEFAULT now(),
        -- NULL: until resumed; otherwise claims take the type again from then on, unaided
        until timestamptz,
        paused_by text NOT NULL,
        reason text
    )""",
    """CREATE TABLE IF NOT EXISTS {workers} (
        -- unique to one boot of one runner: host:pid:random
        id text PRIMARY KEY,
        -- what its claims write to claimed_by
        name text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        types text[] NOT NULL,
        concurrency integer NOT NULL,
        in_flight integer NOT NULL DEFAULT 0,
        -- seconds between its beats: it is lost once three are missed
        beat_seconds real NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        last_seen timestamptz NOT NULL DEFAULT now(),
        drain_requested_at timestamptz,
        drain_requested_by text,
        version text
    )""",
)

# Version 6: claimed jobs by type and lease end, for typed claims' expired-lease seeks. It
# replaces the index by lease end alone rather than join it: every claim and heartbeat writes
# the claimed jobs' index, and a second one cost 17% of batch claim throughput. Untyped claims
# find expired leases per type too (_EXPIRED_ANY); listings by lease end sort the claimed
# rows, which the workers' slots bound.
CREATE_V6 = (
    "CREATE INDEX {concurrently}IF NOT EXISTS {lease_type_idx} ON {jobs} "
    "(type, lease_until, id) WHERE state = 'claimed'",
    "DROP INDEX IF EXISTS {lease_idx}",
)

# Version 7: history partitioned by time, and idempotency keys held in a table of their own.
#
# History is RANGE-partitioned by occurred_at into UTC days, so that `clear` drops the days it
# removes whole instead of deleting row by row: no dead rows for vacuum, and no cost per row
# but for the rows of jobs still in the queue, which move to the DEFAULT partition. A day is
# the natural grain for a retention given in days: a `clear --older-than 7d` deletes rows from
# one day's partition at most, and drops the rest; a week of retention is about ten
# partitions, few enough that reads without a time bound (a job's events, a trace) probe each
# partition's index at little cost. Partitions are made a few days ahead (HISTORY_AHEAD_DAYS)
# by `migrate` and by every fold of the rates (a runner folds once a minute); a DEFAULT
# partition takes whatever no day covers, so no insert ever fails, and making a day moves its
# rows out of it.
#
# A unique index on a partitioned table must include the partition key, so the events can no
# longer hold keys (migration 3). {keys} does, one row per key, written by the enqueue's own
# statement, with the same rules: a key is held until `clear` removes its job's `enqueued`
# event (never while the job is live), or an operator deletes the job.
#
# The existing history becomes the first partition, {events_legacy}, covering everything up
# to a bound in the next days, without being copied. Attaching it needs that bound proved:
# an upgrade adds a CHECK constraint NOT VALID and validates it beforehand, outside the
# migration (EARLY_STEPS), while writers carry on; without it (a dry run's plan applied by
# hand, or no direct connection) the attach scans the table under the migration's lock.
HISTORY_AHEAD_DAYS = 3

_EVENT_ALL_COLUMNS = ("id, occurred_at, job_id, type, event, request_id, attempt, worker, "
                      "reason, result, idempotency_key, payload")

KEYS_TABLE = """CREATE TABLE IF NOT EXISTS {keys} (
    key text PRIMARY KEY,
    job_id bigint NOT NULL
)"""

# The history's keyed `enqueued` events, which `clear` reads to free their keys; with their
# job ids, so that a key's holder is read from the index alone.
KEYED_INDEX = ("CREATE INDEX {concurrently}IF NOT EXISTS {ev_keyed_idx} ON {events} "
               "(idempotency_key) INCLUDE (job_id) "
               "WHERE event = 'enqueued' AND idempotency_key IS NOT NULL")

# Every key the history or a live job holds: copied early, in bulk, and caught up in the
# migration, under its lock, by a merge of two index-only scans (0.44 s per 1M keys,
# benchmarks/README.md), so that no key an older jobq took meanwhile is missed.
KEYS_COPY = (
    """INSERT INTO {keys} (key, job_id)
    SELECT e.idempotency_key, e.job_id FROM {events} AS e
    WHERE e.event = 'enqueued' AND e.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {keys} AS k WHERE k.key = e.idempotency_key)
    ON CONFLICT (key) DO NOTHING""",
    """INSERT INTO {keys} (key, job_id)
    SELECT idempotency_key, id FROM {jobs} WHERE idempotency_key IS NOT NULL
    ON CONFLICT (key) DO NOTHING""",
)

# No key that neither the history nor a live job holds: an earlier copy (an upgrade that did
# not complete) may hold keys freed since. Early only: under the migration's lock it would
# cost a second scan of every key, while only a key an older jobq freed in the moment between
# it and the migration can slip through (and stays held).
KEYS_FREE_STALE = """DELETE FROM {keys} AS k
    WHERE NOT EXISTS (SELECT 1 FROM {events} AS e WHERE e.event = 'enqueued'
                      AND e.idempotency_key = k.key AND e.job_id = k.job_id)
      AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.idempotency_key = k.key)"""

# The partitions of the history with their bounds (NULL: unbounded; the DEFAULT partition has
# neither), read from the catalog. Bounds print in the session's own DateStyle and TimeZone,
# so they read back exactly.
_PARTITIONS = """SELECT c.oid AS part, n.nspname AS nsp, c.relname AS name, c.relowner AS owner,
       b.bound = 'DEFAULT' AS is_default,
       CASE WHEN m[1] <> 'MINVALUE' THEN btrim(m[1], '''')::timestamptz END AS lo,
       CASE WHEN m[2] <> 'MAXVALUE' THEN btrim(m[2], '''')::timestamptz END AS hi
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
    LEFT JOIN LATERAL pg_catalog.regexp_match(b.bound, 'FROM \\((.*)\\) TO \\((.*)\\)') AS m
        ON true
    WHERE i.inhparent = __PARENT__"""

# Make the history's daily partitions from `since` (by default, today) through `days` days
# ahead, skipping days a partition covers, moving each new day's rows out of the DEFAULT
# partition. SECURITY DEFINER, so that a worker role with no DDL rights keeps them ahead: it
# only makes empty partitions for a window fixed by the clock, and its search_path is pinned
# (AHEAD_SEARCH_PATH). One maker at a time; the others return at once. Returns how many it
# made.
AHEAD_FUNCTION = """CREATE OR REPLACE FUNCTION {ahead_fn}(days integer,
                                              since timestamptz DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
    parent regclass := {events_text}::regclass;
    upto timestamptz := date_trunc('day', now(), 'UTC') + days * interval '1 day';
    day timestamptz := date_trunc('day', coalesce(since, now()), 'UTC');
    nsp name;
    base name;
    dflt regclass;
    part text;
    made integer := 0;
BEGIN
    IF since IS NULL AND (SELECT max(p.hi) FROM (__PARTITIONS__) AS p) >= upto THEN
        RETURN 0;
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtextextended('jobq partitions ' || parent::oid, 0)) THEN
        RETURN 0;
    END IF;
    SELECT c.relnamespace::regnamespace::name, c.relname INTO nsp, base
    FROM pg_class AS c WHERE c.oid = parent;
    SELECT p.part INTO dflt FROM (__PARTITIONS__) AS p WHERE p.is_default;
    WHILE day < upto LOOP
        IF NOT EXISTS (SELECT FROM (__PARTITIONS__) AS p
                       WHERE NOT p.is_default
                         AND coalesce(p.lo, '-infinity') < day + interval '1 day'
                         AND coalesce(p.hi, 'infinity') > day) THEN
            -- Writers may be routing this day's rows to the DEFAULT partition right now, which
            -- would fail the attach: they wait while a day under way is made.
            IF day < now() + interval '1 hour' THEN
                EXECUTE format('LOCK TABLE %s IN SHARE MODE', parent);
            END IF;
            part := format('%I.%I', nsp,
                           base || '_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'));
            EXECUTE format('CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           part, parent);
            IF dflt IS NOT NULL THEN
                EXECUTE format('WITH moved AS (DELETE FROM %s WHERE occurred_at >= $1 '
                               'AND occurred_at < $2 RETURNING __ALL__) '
                               'INSERT INTO %s (__ALL__) SELECT * FROM moved', dflt, part)
                    USING day, day + interval '1 day';
            END IF;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                           parent, part, day, day + interval '1 day');
            made := made + 1;
        END IF;
        day := day + interval '1 day';
    END LOOP;
    RETURN made;
END
$fn$""".replace("__PARTITIONS__", _PARTITIONS.replace("__PARENT__", "parent")).replace(
    "__ALL__", _EVENT_ALL_COLUMNS)

# Resolved in the schema of the queue's tables, wherever they are, and never in one that
# others may write to first (pg_temp last).
AHEAD_SEARCH_PATH = """DO $do$
BEGIN
    EXECUTE format('ALTER FUNCTION %s(integer, timestamptz) SET search_path = pg_catalog, %I, '
                   'pg_temp', {ahead_text}::regproc,
                   (SELECT n.nspname FROM pg_class AS c JOIN pg_namespace AS n
                      ON n.oid = c.relnamespace WHERE c.oid = {jobs_text}::regclass));
END
$do$"""

# Before a partition is retired: free the keys of its `enqueued` events whose jobs are not in
# the queue (outside the retirement's lock: an enqueue of such a key meanwhile is not held
# up), and count its rows; the ids of the live ones are handed to RETIRE_FUNCTION, which frees
# those whose jobs ended since. NULLs for a partition another clear retired meanwhile.
FREE_KEYS_FUNCTION = """CREATE OR REPLACE FUNCTION {free_keys_fn}(part text, OUT rows bigint,
                                                  OUT held bigint[])
LANGUAGE plpgsql AS $fn$
BEGIN
    -- (the lock keeps it from going before this commits)
    EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', part);
    EXECUTE format(
        'WITH keyed AS MATERIALIZED (SELECT idempotency_key, job_id FROM %1$s '
        '    WHERE event = ''enqueued'' AND idempotency_key IS NOT NULL), '
        'live AS MATERIALIZED (SELECT id FROM {jobs} '
        '    WHERE id IN (SELECT job_id FROM keyed)), '
        'freed AS (DELETE FROM {keys} AS k USING keyed '
        '    WHERE k.key = keyed.idempotency_key AND k.job_id = keyed.job_id '
        '      AND NOT EXISTS (SELECT 1 FROM live WHERE live.id = keyed.job_id)) '
        'SELECT (SELECT count(*) FROM %1$s), ARRAY(SELECT id FROM live)', part)
        INTO rows, held;
EXCEPTION WHEN undefined_table THEN
    RETURN;
END
$fn$"""

# Retire one partition that lies wholly before a clear's cutoff: detach it, move the rows of
# jobs still in the queue (their whole timeline stays) to where they now belong (the DEFAULT
# partition), free the keys of `held` (live when the clear freed the others) whose jobs have
# ended since, and drop it. It runs as the caller, so only the tables' owner can. The detach
# waits at most a second for the history's readers and writers, who queue behind it; NULL
# then (or when another clear retired it meanwhile), and the caller deletes the partition's
# rows instead. Returns the rows kept. Both functions take a partition by its name as its
# regclass printed it in the caller's session: unlike an OID, a name that is gone is an
# error they can catch.
RETIRE_FUNCTION = """CREATE OR REPLACE FUNCTION {retire_fn}(part text, held bigint[])
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    parent regclass := {events_text}::regclass;
    patience text := current_setting('lock_timeout');
    low bigint;
    high bigint;
    live bigint[];
    moved bigint;
BEGIN
    PERFORM set_config('lock_timeout', '1s', true);
    BEGIN
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part);
    EXCEPTION WHEN lock_not_available OR undefined_table OR wrong_object_type THEN
        -- busy, or retired by another clear meanwhile
        PERFORM set_config('lock_timeout', patience, true);
        RETURN NULL;
    END;
    PERFORM set_config('lock_timeout', patience, true);
    -- Live jobs with events here: their ids lie within this partition's (literal bounds let
    -- the planner choose between seeking each such job and reading the partition).
    EXECUTE format('SELECT min(job_id), max(job_id) FROM %s', part) INTO low, high;
    EXECUTE format('SELECT ARRAY(SELECT j.id FROM {jobs} AS j WHERE j.id BETWEEN %L AND %L '
                   'AND EXISTS (SELECT FROM %s AS e WHERE e.job_id = j.id))', low, high, part)
        INTO live;
    EXECUTE format('DELETE FROM {keys} AS k USING %s AS e WHERE e.job_id = ANY($1) '
                   'AND e.event = ''enqueued'' AND e.idempotency_key = k.key '
                   'AND e.job_id = k.job_id', part)
        USING ARRAY(SELECT unnest(held) EXCEPT SELECT unnest(live));
    EXECUTE format('INSERT INTO %s (__ALL__) OVERRIDING SYSTEM VALUE '
                   'SELECT __ALL__ FROM %s WHERE job_id = ANY($1)', parent, part) USING live;
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('DROP TABLE %s', part);
    RETURN moved;
END
$fn$""".replace("__ALL__", _EVENT_ALL_COLUMNS)

# The conversion, in the migration's transaction. The id sequence carries on past every
# existing event id (the trace follower relies on ids growing); the privileges on the
# history go to the new table, and to the keys as far as they read or write rows. Empty (a
# fresh install), the old table simply goes.
CONVERT_HISTORY = """DO $convert$
DECLARE
    last_id bigint;
    called boolean;
    privileges aclitem[];
    bound timestamptz;
    grant_ record;
BEGIN
    LOCK TABLE {events} IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('SELECT last_value, is_called FROM %s',
                   pg_get_serial_sequence({events_text}, 'id')) INTO last_id, called;
    SELECT c.relacl INTO privileges FROM pg_class AS c WHERE c.oid = {events_text}::regclass;
    IF EXISTS (SELECT FROM {events}) THEN
        SELECT substring(pg_get_expr(con.conbin, con.conrelid) FROM '''([^'']*)''')::timestamptz
        INTO bound FROM pg_constraint AS con
        WHERE con.conrelid = {events_text}::regclass AND con.conname = {bound_name}
          AND con.convalidated;
        IF bound IS NULL THEN  -- no early check: the attach reads the whole table
            SELECT date_trunc('day', greatest(max(occurred_at), now()), 'UTC')
                   + interval '1 day' INTO bound FROM {events};
        END IF;
        ALTER TABLE {events} ALTER COLUMN id DROP IDENTITY;
        ALTER TABLE {events} RENAME TO {legacy_local};
        ALTER INDEX IF EXISTS {old_job_idx} RENAME TO {legacy_job_idx};
        ALTER INDEX IF EXISTS {old_request_idx} RENAME TO {legacy_request_idx};
        ALTER INDEX IF EXISTS {old_at_idx} RENAME TO {legacy_at_idx};
        ALTER INDEX IF EXISTS {old_completed_idx} RENAME TO {legacy_completed_idx};
        ALTER INDEX IF EXISTS {old_keyed_idx} RENAME TO {legacy_keyed_idx};
        DROP INDEX IF EXISTS {old_key_idx};
    ELSE
        DROP TABLE {events};
    END IF;
    CREATE TABLE {events} (
        id bigint GENERATED ALWAYS AS IDENTITY,
        occurred_at timestamptz NOT NULL DEFAULT now(),
        job_id bigint NOT NULL,
        type text NOT NULL,
        event text NOT NULL,
        request_id text,
        attempt integer NOT NULL DEFAULT 0,
        worker text,
        reason text,
        result jsonb,
        idempotency_key text,
        payload jsonb
    ) PARTITION BY RANGE (occurred_at);
    -- NOT VALID as version 5 left it on the old table, which must match to be attached; new
    -- partitions get it validated.
    ALTER TABLE {events} ADD CONSTRAINT {ev_event_check} CHECK (event IN ({events_list}))
        NOT VALID;
    CREATE INDEX {ev_job_idx} ON {events} (job_id, id);
    CREATE INDEX {ev_request_idx} ON {events} (request_id, id) WHERE request_id IS NOT NULL;
    CREATE INDEX {ev_at_idx} ON {events} USING brin (occurred_at);
    CREATE INDEX {ev_completed_idx} ON {events} (id) WHERE event = 'completed';
    CREATE INDEX {ev_keyed_idx} ON {events} (idempotency_key) INCLUDE (job_id)
        WHERE event = 'enqueued' AND idempotency_key IS NOT NULL;
    IF bound IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (MINVALUE) TO (%L)',
                       {events_text}::regclass, {legacy_text}::regclass, bound);
        ALTER TABLE {events_legacy} DROP CONSTRAINT IF EXISTS {ev_bound_check};
    END IF;
    CREATE TABLE {events_default} PARTITION OF {events} DEFAULT;
    PERFORM setval(pg_get_serial_sequence({events_text}, 'id'), last_id, called);
    FOR grant_ IN SELECT a.privilege_type AS what,
                         CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                             AS who,
                         CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END AS more
                  FROM aclexplode(privileges) AS a
                  WHERE a.grantee <> (SELECT relowner FROM pg_class
                                      WHERE oid = {events_text}::regclass) LOOP
        EXECUTE format('GRANT %s ON %s TO %s%s', grant_.what, {events_text}, grant_.who,
                       grant_.more);
        IF grant_.what IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE') THEN
            EXECUTE format('GRANT %s ON {keys} TO %s%s', grant_.what, grant_.who, grant_.more);
        END IF;
    END LOOP;
    PERFORM {ahead_fn}(__AHEAD__, coalesce(bound, now()));
END
$convert$""".replace("__AHEAD__", str(HISTORY_AHEAD_DAYS))

CREATE_V7 = (KEYS_TABLE, KEYED_INDEX, AHEAD_FUNCTION, AHEAD_SEARCH_PATH, FREE_KEYS_FUNCTION,
             RETIRE_FUNCTION, CONVERT_HISTORY, *KEYS_COPY)

# The early bound: midnight (UTC) of the day after tomorrow, so that writers of older jobq
# versions (whose rows are dated now) meet it until well after the migration that follows at
# once. Adding it takes the table's lock for an instant, so a busy table is not waited on for
# long; validating reads the table while writers carry on. A table with rows dated beyond it
# keeps no constraint that later writes could trip on: the migration then attaches it by a
# scan.
EARLY_BOUND = """DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = {events_text}::regclass
                   AND conname = {bound_name}) THEN
        PERFORM set_config('lock_timeout', '2s', true);
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (occurred_at < %L) NOT VALID',
                       {events_text}::regclass, {bound_name},
                       date_trunc('day', now(), 'UTC') + interval '2 days');
    END IF;
END
$do$"""
EARLY_VALIDATE_BOUND = """DO $do$
BEGIN
    ALTER TABLE {events} VALIDATE CONSTRAINT {ev_bound_check};
EXCEPTION WHEN check_violation THEN
    ALTER TABLE {events} DROP CONSTRAINT {ev_bound_check};
END
$do$"""

# Version 8: the queue table is vacuumed by its dead rows, not by its size. Every job leaves
# dead row versions behind (each claim, heartbeat and retry writes a new one; completion
# deletes it), and by default autovacuum waits for 20% of the table to be dead: behind a
# backlog of 1M jobs that is 200,000 dead versions that every claim's index seeks step over
# before vacuum comes. A fixed threshold and no cost delay keep the table and its partial
# indexes near their live size (benchmarks/bench_soak.py); analyze follows the same way, so
# the status estimates track a backlog as it grows. SET takes a lock that no reader or
# writer waits for.
CREATE_V8 = (
    "ALTER TABLE {jobs} SET (autovacuum_vacuum_scale_factor = 0, "
    "autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000)",
)

# An upgrade builds the indexes of its migrations CONCURRENTLY first, outside the
# migration's transaction, so that writers (older workers, in a rolling deploy) are never
# blocked while a big table is indexed. Its own IF NOT EXISTS build then finds them done; when
# an early build failed (a unique index over keys the migration dedupes first) the migration
# drops the invalid leftover and builds the index itself. One early builder at a time: the
# others wait by polling, since a session blocked in a lock wait holds a snapshot that
# CONCURRENTLY would wait for in turn.
EARLY_INDEXES: dict[int, tuple[tuple[str, str], ...]] = {
    2: (("failed_type_idx", CREATE_V2[1]),),
    3: (("ev_key_idx", CREATE_V3[1]),),
    5: (("cancelled_idx", CREATE_V5[4]), ("cancelled_type_idx", CREATE_V5[5])),
    6: (("lease_type_idx", CREATE_V6[0]),),
    7: (("ev_keyed_idx", KEYED_INDEX),),
}
#: What an upgrade does early besides its indexes, each statement its own transaction, in
#: order: the bound that lets version 7 attach the history without reading it, and the bulk
#: of the keys' copy, vacuumed so that the migration's catch-up reads indexes only.
EARLY_STEPS: dict[int, tuple[str, ...]] = {
    7: (KEYS_TABLE, EARLY_BOUND, EARLY_VALIDATE_BOUND, *KEYS_COPY, KEYS_FREE_STALE,
        "VACUUM (ANALYZE) {keys}"),
}
EARLY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 2))"
EARLY_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%(key)s, 2))"
# A migration holds the early builders' lock for its transaction, so that none of them has an
# index half-built (and so invalid) while it decides what to build.
EARLY_HELD = "SELECT pg_try_advisory_xact_lock(hashtextextended(%(key)s, 2))"
EARLY_WAIT = "SELECT pg_sleep(0.2)"
INDEX_INVALID = """
SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%(index)s)"""
DROP_INDEX = "DROP INDEX {concurrently}IF EXISTS {index}"


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
                if name in QUERIES or isinstance(getattr(type(self), name, None),
                                                 cached_property):
                    del self.__dict__[name]
            self.names = self.names.resolved(schema, channel)

    def __getattr__(self, name: str) -> bytes:
        """A statement of queries.sql by its name, rendered on first use and kept."""
        query = QUERIES.get(name)
        if query is None:
            raise AttributeError(f"no statement named {name!r} in queries.sql")
        rendered = self._render(query.text)
        self.__dict__[name] = rendered
        return rendered

    def _render(self, template: str, **extra: sql.Composable) -> bytes:
        extra.setdefault("keep_bytes", sql.Literal(self.payload_bytes))
        return self.names.fmt(template, **extra).as_bytes(None)

    @cached_property
    def schema_version(self) -> bytes:
        return self._render(SCHEMA_VERSION)

    @cached_property
    def create_migrations(self) -> bytes:
        return self._render(CREATE_MIGRATIONS)

    @cached_property
    def record_migration(self) -> bytes:
        return self._render(RECORD_MIGRATION)

    def migration_1(self, legacy_id: str | None) -> list[bytes]:
        """The first layout: created fresh, or upgraded from the upstream layout in place."""
        if legacy_id is None:
            first = [self._render(CREATE_JOBS)]
        else:
            extra = {
                "legacy_id": sql.Identifier(legacy_id),
                "legacy_pending_idx_q": _sibling(self.names, "idx_", "_queue_pending"),
                "legacy_visibility_idx_q": _sibling(self.names, "idx_", "_visibility"),
            }
            first = [self._render(s, **extra) for s in LEGACY_UPGRADE]
        return first + [self._render(s) for s in CREATE_COMMON]

    def migration_2(self) -> list[bytes]:
        return [self._render(s, concurrently=sql.SQL("")) for s in CREATE_V2]

    def migration_3(self) -> list[bytes]:
        return [self._render(s, concurrently=sql.SQL("")) for s in CREATE_V3]

    def index_name(self, key: str) -> str:
        """A named index's schema-qualified name, for `to_regclass`."""
        return self.names.regclass(_LOCAL_NAMES[key])

    def build_index(self, template: str, *, concurrently: bool) -> bytes:
        return self._render(template, concurrently=sql.SQL("CONCURRENTLY " if concurrently
                                                           else ""))

    def drop_index(self, key: str, *, concurrently: bool) -> bytes:
        return self._render(DROP_INDEX, index=self.names.ident(_LOCAL_NAMES[key]),
                            concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""))

    def migration_4(self) -> list[bytes]:
        return [self._render(NOTIFY_FUNCTION)]

    def migration_5(self) -> list[bytes]:
        return [self._render(s, concurrently=sql.SQL("")) for s in CREATE_V5]

    def migration_6(self) -> list[bytes]:
        return [self._render(s, concurrently=sql.SQL("")) for s in CREATE_V6]

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

    def migration_7(self) -> list[bytes]:
        return [self._render(s, concurrently=sql.SQL(""), **self._history_names())
                for s in CREATE_V7]

    def migration_8(self) -> list[bytes]:
        return [self._render(s) for s in CREATE_V8]

    def early_steps(self, number: int) -> list[bytes]:
        """What an upgrade to `number` runs before its migration, besides its indexes."""
        return [self._render(s, **self._history_names()) for s in EARLY_STEPS.get(number, ())]

    def render(self, template: str) -> bytes:
        """A statement of this queue that is not a named property (cold paths)."""
        return self._render(template)


def _sibling(names: Names, prefix: str, suffix: str) -> sql.Identifier:
    name = prefix + names.table + suffix
    return sql.Identifier(names.schema, name) if names.schema else sql.Identifier(name)
