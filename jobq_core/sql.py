"""Every SQL statement jobq runs, by name: the queue's own are in `queries.sql`, read as they
are; the schema's, the operators' and the listings' are here, on their way there.

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

# The end of the last minute that `FOLD_RATES` folds now: it never folds the minute of the last
# 10 seconds, whose events may not all be committed yet.
_FOLDED_UNTIL = "date_trunc('minute', now() - interval '10 seconds')"

# A clear's cutoff: its age ago, but never later than the end of the last foldable minute,
# so that every history row it deletes lies in a minute that the fold before its deletes
# counts (a `clear --older-than 30s` keeps the current minute's completions for the rates).
_CUTOFF_OF = f"least(now() - %(older_than)s::interval, {_FOLDED_UNTIL})"
CUTOFF = "SELECT " + _CUTOFF_OF

# What clear would remove: old failed jobs, and old history except that of jobs that stay in
# the queue. Counting it costs what deleting it would (a BRIN range scan), never more.
# (Composed of constants only.)
CLEAR_PREVIEW = "WITH c AS (SELECT " + _CUTOFF_OF + """ AS cutoff)
SELECT c.cutoff,
  (SELECT count(*) FROM {jobs} WHERE state IN ('failed', 'cancelled') AND failed_at < c.cutoff),
  (SELECT array_agg(id) FROM (SELECT id FROM {jobs} WHERE state IN ('failed', 'cancelled')
      AND failed_at < c.cutoff ORDER BY failed_at LIMIT 10) s),
  (SELECT count(*) FROM {events} AS e WHERE occurred_at < c.cutoff
      AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.id = e.job_id
                      AND NOT (j.state IN ('failed', 'cancelled') AND j.failed_at < c.cutoff)))
FROM c"""  # noqa: S608

# Dead jobs are removed in batches; each removal is itself recorded as history. Each ended
# state is read from its own partial index (one IN list would scan the whole hot table for
# every batch), up to a batch of each: a statement that removes fewer than a batch found
# both exhausted.
CLEAR_FAILED_BATCH = """
WITH del AS (
    DELETE FROM {jobs} WHERE id = ANY(
        ARRAY(SELECT id FROM {jobs} WHERE state = 'failed' AND failed_at < %(cutoff)s
              ORDER BY failed_at, id LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
        || ARRAY(SELECT id FROM {jobs} WHERE state = 'cancelled' AND failed_at < %(cutoff)s
                 ORDER BY failed_at, id LIMIT %(batch)s FOR UPDATE SKIP LOCKED))
      AND state IN ('failed', 'cancelled')
    RETURNING id, type, request_id, attempts, state
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, reason)
    SELECT id, type, 'deleted', request_id, attempts, 'cleared (was ' || state || ')' FROM del
)
SELECT count(*) FROM del"""

# The history's partitions, oldest first, each with its bounds, its size in blocks, and
# whether this role may retire it (only the owner of both it and the history may).
HISTORY_PARTITIONS = """
SELECT p.part::regclass::text, p.nsp, p.name, p.is_default, p.lo, p.hi,
       pg_relation_size(p.part) / current_setting('block_size')::bigint,
       pg_has_role(p.owner, 'USAGE')
       AND pg_has_role((SELECT relowner FROM pg_class WHERE oid = %(events)s::regclass), 'USAGE')
FROM (__PARTITIONS__) AS p
ORDER BY p.hi NULLS LAST, p.lo""".replace(
    "__PARTITIONS__", _PARTITIONS.replace("__PARENT__", "%(events)s::regclass"))

FREE_DAY_KEYS = "SELECT * FROM {free_keys_fn}(%(part)s)"
RETIRE = "SELECT {retire_fn}(%(part)s, %(held)s::bigint[])"

# What no partition could be retired for (the one the cutoff falls in, the DEFAULT partition,
# those of a clear by another role) is walked once in physical order, through the history,
# one range of blocks per statement, the same in each partition walked (the ranges add up to
# 1 MB): a TID Range Scan of just those blocks in each partition that holds rows older than
# the cutoff, with no sort and no index, so that the walk reads each page once and its cost
# grows with the size of what is walked, not with its square. (A partition is mostly in time
# order but freed space is reused, so no range can be skipped by age.) Live jobs keep their
# history: their ids are looked up in the jobs' primary key, once per job of the range.
# Written so because the generic plan (jobq's connections force it) cannot size a TID range:
# a NOT EXISTS was planned as a hash of all 1M jobs for each range (0.8 s against 10 ms), or
# with JIT compiling for 25 ms (benchmarks/README.md). The keys of the `enqueued` events
# deleted are freed with them.
CLEAR_EVENTS_BATCH = """
WITH old AS MATERIALIZED (
    SELECT DISTINCT job_id FROM {events}
    WHERE ctid >= %(lo)s::tid AND ctid < %(hi)s::tid AND occurred_at < %(cutoff)s
), live AS MATERIALIZED (
    SELECT id FROM {jobs} WHERE id = ANY(ARRAY(SELECT job_id FROM old))
), del AS (
    DELETE FROM {events}
    WHERE ctid >= %(lo)s::tid AND ctid < %(hi)s::tid AND occurred_at < %(cutoff)s
      AND job_id NOT IN (SELECT id FROM live)
    RETURNING job_id, event, idempotency_key
), freed AS (
    DELETE FROM {keys} AS k USING del
    WHERE del.event = 'enqueued' AND k.key = del.idempotency_key AND k.job_id = del.job_id
)
SELECT count(*) FROM del"""


# --- operations (jobq_core.admin) ---------------------------------------------------------

ADMIN_COLUMNS = (
    "id, type, state, payload, priority, run_at, attempts, request_id, idempotency_key, "
    "lease_until, claimed_by, claimed_at, last_error, failed_at, created_at, lease_ms"
)
EVENT_COLUMNS = (
    "id, occurred_at, job_id, type, event, request_id, attempt, worker, reason, result"
)

SHOW_JOB = "SELECT __COLUMNS__ FROM {jobs} WHERE id = %(id)s".replace(
    "__COLUMNS__", ADMIN_COLUMNS)
JOB_EVENTS = "SELECT __COLUMNS__ FROM {events} WHERE job_id = %(id)s ORDER BY id".replace(
    "__COLUMNS__", EVENT_COLUMNS)
TRACE = """SELECT __COLUMNS__ FROM {events}
WHERE request_id = %(request_id)s AND id > %(after)s ORDER BY id LIMIT %(limit)s""".replace(
    "__COLUMNS__", EVENT_COLUMNS)

# One poll of the trace follower (admin.TraceTail): the request's events above `low` it has
# not delivered, with this statement's snapshot xmin and a bound above every transaction id
# assigned before the snapshot. age() counts from the next xid to be assigned, read when it
# is first called in a transaction that has no xid of its own, i.e. after the snapshot was
# taken; a transaction with an xid (or a stale reading, below xmax) gives no bound.
# xid8 -> 32-bit xid through text; 0-2 are not normal xids, so step below them.
TRACE_FOLLOW = """
WITH snap AS (
    SELECT pg_snapshot_xmin(s)::text::bigint AS xmin, pg_snapshot_xmax(s)::text::bigint AS xmax
    FROM pg_current_snapshot() AS s
), base AS (
    SELECT xmin, xmax,
           CASE WHEN xmax %% 4294967296 < 3 THEN xmax - 3 ELSE xmax END AS b
    FROM snap
), bound AS (
    SELECT xmin, xmax, b + age((b %% 4294967296)::text::xid) AS next_xid FROM base
)
SELECT bound.xmin,
       CASE WHEN pg_current_xact_id_if_assigned() IS NULL AND bound.next_xid >= bound.xmax
            THEN bound.next_xid END,
       e.*
FROM bound LEFT JOIN LATERAL (
    SELECT __COLUMNS__ FROM {events}
    WHERE request_id = %(request_id)s AND id > %(low)s::bigint AND id <> ALL(%(seen)s::bigint[])
    ORDER BY id LIMIT %(limit)s
) AS e ON true
ORDER BY e.id""".replace("__COLUMNS__", EVENT_COLUMNS)

# Repairs by id, each in one statement with its history row. A preview runs the same
# eligibility test without changing anything.
# An operator's retry gives the job a fresh attempt budget (attempts back to 0, as Sidekiq
# resets its retry count): it runs its handler again however many attempts it spent, and a
# crash loop after it is still caught by counting from there. Its history keeps the spent
# attempts, on the `retried` event.
RETRY = """
WITH locked AS (
    SELECT id, attempts, state FROM {jobs}
    WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('failed', 'cancelled')
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE {jobs} AS j SET state = 'pending', run_at = coalesce(%(run_at)s::timestamptz, now()),
        failed_at = NULL, lease_token = NULL, lease_until = NULL, lease_ms = NULL, attempts = 0
    FROM locked WHERE j.id = locked.id AND j.state IN ('failed', 'cancelled')
    RETURNING j.id, j.type, j.request_id, locked.attempts AS spent, locked.state AS was,
              j.run_at
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, reason)
    SELECT id, type, 'retried', request_id, spent,
           %(reason)s || ' after ' || spent || ' attempts (was ' || was
           || '); a fresh attempt budget' FROM upd
)
SELECT id, CASE WHEN run_at <= now() THEN pg_notify({channel}, '')::text END FROM upd"""

EXTEND_BY = """
WITH upd AS (
    UPDATE {jobs}
    SET lease_until = greatest(lease_until, now()) + %(by)s::interval
    WHERE id IN (SELECT id FROM {jobs} WHERE id = ANY(%(ids)s::bigint[]) AND state = 'claimed'
                 ORDER BY id FOR UPDATE)
      AND state = 'claimed'
    RETURNING id, type, request_id, attempts, claimed_by, lease_until
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, reason)
    SELECT id, type, 'extended', request_id, attempts, claimed_by,
           %(reason)s || ': lease until ' || lease_until::text
    FROM upd
)
SELECT id FROM upd"""

# A deleted job gives its idempotency key back.
DELETE = """
WITH del AS (
    DELETE FROM {jobs}
    WHERE id IN (SELECT id FROM {jobs} WHERE id = ANY(%(ids)s::bigint[])
                 AND (state <> 'claimed' OR %(force)s) ORDER BY id FOR UPDATE)
      AND (state <> 'claimed' OR %(force)s)
    RETURNING id, type, request_id, attempts, state, idempotency_key
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, reason)
    SELECT id, type, 'deleted', request_id, attempts, %(reason)s || ' (was ' || state || ')'
    FROM del
), free_keys AS (
    DELETE FROM {keys} AS k USING del WHERE k.key = del.idempotency_key AND k.job_id = del.id
)
SELECT id FROM del"""

STATES_OF = "SELECT id, state FROM {jobs} WHERE id = ANY(%(ids)s::bigint[])"

# An operator's cancel: a pending job ends at once; a running one loses its lease token, so
# its holder can neither complete nor fail it any more (a late result cannot overwrite the
# cancel). The NOTIFY 'cancel' makes runners beat now, and a beat tells a runner which of its
# jobs were cancelled (WORKER_BEAT), which stops their handlers.
CANCEL = """
WITH locked AS (
    SELECT id, state FROM {jobs}
    WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('pending', 'claimed')
    ORDER BY id FOR UPDATE
), upd AS (
    UPDATE {jobs} AS j SET state = 'cancelled', failed_at = now(), last_error = %(reason)s,
        lease_token = NULL, lease_until = NULL
    FROM locked WHERE j.id = locked.id AND j.state IN ('pending', 'claimed')
    RETURNING j.id, j.type, j.request_id, j.attempts, j.claimed_by, locked.state AS was,
              j.has_waiters
), ev AS (
    INSERT INTO {events} (job_id, type, event, request_id, attempt, worker, reason)
    SELECT id, type, 'cancelled', request_id, attempts,
           CASE WHEN was = 'claimed' THEN claimed_by END, %(reason)s || ' (was ' || was || ')'
    FROM upd
)
SELECT id, was,
       CASE WHEN was = 'claimed' THEN pg_notify({channel}, 'cancel')::text END,
       CASE WHEN has_waiters THEN pg_notify({done_channel}, id::text)::text END
FROM upd"""

# Which of these jobs an operator cancelled, and why: a runner whose lease or ack was refused
# tells a cancel from a lost lease by it.
CANCELLED_OF = """
SELECT id, coalesce(last_error, 'cancelled') FROM {jobs}
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'cancelled'"""

# Paused types: claims skip them (_CLAIM). A pause for a while ends by itself; pausing a
# paused type again replaces its duration and reason.
PAUSE = """
INSERT INTO {pauses} AS p (type, until, paused_by, reason)
SELECT t, now() + %(for)s::interval, %(by)s, %(reason)s FROM unnest(%(types)s::text[]) AS t
ON CONFLICT (type) DO UPDATE SET paused_at = now(), until = excluded.until,
    paused_by = excluded.paused_by, reason = excluded.reason
RETURNING type, paused_at, until, paused_by, reason"""

# A resume also tidies away pauses that ran out; it wakes runners for the types' backlog.
RESUME = """
WITH gone AS (
    DELETE FROM {pauses}
    WHERE type = ANY(%(types)s::text[]) OR (until IS NOT NULL AND until <= now())
    RETURNING type, until IS NULL OR until > now() AS active
)
SELECT type, pg_notify({channel}, '')::text FROM gone WHERE active"""

PAUSES = """
SELECT type, paused_at, until, paused_by, reason FROM {pauses}
WHERE until IS NULL OR until > now() ORDER BY type"""

# A runner's beat in the registry: it registers on the first, and learns which of the jobs it
# holds an operator cancelled, whether it is asked to drain, and which of its types are
# paused. Workers not seen for a day are forgotten (lost ones stay listed until then).
WORKER_BEAT = """
WITH me AS (
    INSERT INTO {workers} AS w (id, name, host, pid, types, concurrency, in_flight,
                                beat_seconds, version)
    VALUES (%(id)s, %(name)s, %(host)s, %(pid)s, %(types)s::text[], %(concurrency)s,
            %(in_flight)s, %(beat_seconds)s, %(version)s)
    ON CONFLICT (id) DO UPDATE SET last_seen = now(), in_flight = excluded.in_flight,
        types = excluded.types, concurrency = excluded.concurrency,
        beat_seconds = excluded.beat_seconds
    RETURNING drain_requested_at, drain_requested_by
), forgotten AS (
    DELETE FROM {workers} WHERE last_seen < now() - interval '1 day' AND id <> %(id)s
)
SELECT (SELECT drain_requested_by FROM me WHERE drain_requested_at IS NOT NULL),
       ARRAY(SELECT ARRAY[id::text, coalesce(last_error, 'cancelled')] FROM {jobs}
             WHERE id = ANY(%(held)s::bigint[]) AND state = 'cancelled'),
       ARRAY(SELECT type FROM {pauses}
             WHERE type = ANY(%(types)s::text[]) AND (until IS NULL OR until > now()))"""

# A runner that stops cleanly leaves the registry at once.
WORKER_GONE = "DELETE FROM {workers} WHERE id = %(id)s"

# Each worker with its health: alive while it beats, lost after three missed beats.
_ALIVE = "last_seen > now() - make_interval(secs => 3 * beat_seconds + 5)"
WORKERS = """
SELECT id, name, host, pid, types, concurrency, in_flight, started_at, last_seen,
       beat_seconds, drain_requested_at, drain_requested_by, version,
       __ALIVE__ AS alive,
       extract(epoch FROM now() - last_seen)::float8 AS silent_for
FROM {workers} ORDER BY alive DESC, host, pid, id""".replace("__ALIVE__", _ALIVE)

# Ask one worker to drain: stop claiming, finish what it runs, and exit. Beats notice it.
DRAIN = """
UPDATE {workers} SET drain_requested_at = coalesce(drain_requested_at, now()),
    drain_requested_by = coalesce(drain_requested_by, %(by)s)
WHERE id = %(id)s
RETURNING id, pg_notify({channel}, 'drain')::text"""

# Every type with live jobs, a pause, or ends in the last hour, by loose index scans: the cost
# grows with the number of types, not of jobs. Claimed jobs are few (bounded by the workers'
# slots), so they are read as is.
STATS_TYPES = """
WITH RECURSIVE pending_types AS (
    (SELECT type FROM {jobs} WHERE state = 'pending' ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT type FROM {jobs} WHERE state = 'pending' AND type > p.type
            ORDER BY type LIMIT 1)
    FROM pending_types p WHERE p.type IS NOT NULL
), failed_types AS (
    (SELECT type FROM {jobs} WHERE state = 'failed' ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT type FROM {jobs} WHERE state = 'failed' AND type > f.type
            ORDER BY type LIMIT 1)
    FROM failed_types f WHERE f.type IS NOT NULL
), cancelled_types AS (
    (SELECT type FROM {jobs} WHERE state = 'cancelled' ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT type FROM {jobs} WHERE state = 'cancelled' AND type > c.type
            ORDER BY type LIMIT 1)
    FROM cancelled_types c WHERE c.type IS NOT NULL
)
SELECT type FROM pending_types WHERE type IS NOT NULL
UNION SELECT type FROM failed_types WHERE type IS NOT NULL
UNION SELECT type FROM cancelled_types WHERE type IS NOT NULL
UNION SELECT DISTINCT type FROM {jobs} WHERE state = 'claimed'
UNION SELECT type FROM {pauses} WHERE until IS NULL OR until > now()
UNION SELECT DISTINCT type FROM {rates}
      WHERE type <> '' AND minute >= date_trunc('minute', now()) - interval '1 hour'
-- ends the fold has not reached yet (it leaves the last minute or two): without them a type
-- whose jobs all finished moments ago would drop out until its minute is folded, and return
UNION SELECT DISTINCT type FROM {events}
      WHERE occurred_at >= date_trunc('minute', now() - interval '70 seconds')
        AND event IN ('completed', 'failed')
ORDER BY 1"""

# One type's figures. Counts stop at %(cap)s (due and scheduled ones at %(pending_cap)s) so
# that a huge backlog costs no more than a small one; beyond it the caller shows an estimate,
# marked as such. Due and scheduled jobs are counted per priority (few), where run_at is a
# range of ready_type_idx: counted across priorities, a type whose jobs are all due read its
# whole backlog to find no scheduled one.
STATS_TYPE = """
WITH RECURSIVE prio AS (
    (SELECT priority FROM {jobs} WHERE state = 'pending' AND type = %(type)s
     ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT priority FROM {jobs} WHERE state = 'pending' AND type = %(type)s
            AND priority < prio.priority ORDER BY priority DESC LIMIT 1)
    FROM prio WHERE prio.priority IS NOT NULL
)
SELECT
  (SELECT count(*) FROM (SELECT 1 FROM prio CROSS JOIN LATERAL (
      SELECT 1 FROM {jobs} WHERE state = 'pending' AND type = %(type)s
      AND priority = prio.priority AND run_at <= now() LIMIT %(pending_cap)s) AS j
      LIMIT %(pending_cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM prio CROSS JOIN LATERAL (
      SELECT 1 FROM {jobs} WHERE state = 'pending' AND type = %(type)s
      AND priority = prio.priority AND run_at > now() LIMIT %(pending_cap)s) AS j
      LIMIT %(pending_cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'claimed' AND type = %(type)s
      LIMIT %(cap)s) s),
  -- late: less than half of its own lease left, so at least one heartbeat was missed (a
  -- runner renews every third of a lease)
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'claimed' AND type = %(type)s
      AND lease_until >= now()
      AND lease_until < now() + coalesce(lease_ms, 30000) / 2 * interval '1 millisecond'
      LIMIT %(cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'claimed' AND type = %(type)s
      AND lease_until < now() LIMIT %(cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'failed' AND type = %(type)s
      LIMIT %(cap)s) s),
  (SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'cancelled' AND type = %(type)s
      LIMIT %(cap)s) s),
  -- the oldest due job: the first of each priority's run_at order
  (SELECT now() - min((SELECT run_at FROM {jobs} WHERE state = 'pending' AND type = %(type)s
                       AND priority = prio.priority ORDER BY run_at LIMIT 1))
   FROM prio WHERE prio.priority IS NOT NULL)"""

# Completions and failures per type and minute over the last hour (minute 0 the oldest of
# 60), for every type at once: one range of the rollup's primary key.
STATS_RATES = """
WITH h AS (SELECT date_trunc('minute', now()) - interval '60 minutes' AS start)
SELECT type, (extract(epoch FROM minute - h.start) / 60)::int, completed, failed
FROM {rates}, h
WHERE minute >= h.start AND minute < h.start + interval '60 minutes' AND type <> ''"""

# The types some live worker serves: the overview says when none serves a type, rather than
# "the next claim takes them back".
STATS_SERVED = """
SELECT DISTINCT unnest(types) FROM {workers} WHERE __ALIVE__""".replace("__ALIVE__", _ALIVE)

# Row estimates for counts beyond the cap, for many (type, state) pairs in one statement,
# worked out from the column statistics as the planner does (columns taken as independent:
# the share of rows in the state times the type's share), and the share of run_at at or
# before now, which splits a type's pending jobs into due and scheduled where neither count
# is exact. An EXPLAIN per count cost more than the counting it replaced (1.5 ms each). No
# rows when the table was never analyzed, or its statistics cannot be read.
STATS_ESTIMATES = """
WITH t AS (
    -- rows per page as last analyzed, times the pages there are now, as the planner does
    SELECT c.reltuples / greatest(c.relpages, 1)
           * greatest(pg_relation_size(c.oid) / current_setting('block_size')::int, 1)
           AS reltuples, n.nspname, c.relname
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.oid = %(jobs_name)s::regclass AND c.reltuples > 0
), col AS (
    SELECT s.attname, s.null_frac,
           CASE WHEN s.n_distinct < 0 THEN -s.n_distinct * t.reltuples
                ELSE s.n_distinct END AS distinct_values,
           coalesce(s.most_common_vals::text::text[], '{{}}') AS vals,
           coalesce(s.most_common_freqs, '{{}}') AS freqs,
           (SELECT coalesce(sum(f), 0) FROM unnest(s.most_common_freqs) AS f) AS common,
           s.histogram_bounds::text::text[] AS bounds
    FROM pg_stats AS s, t
    WHERE s.schemaname = t.nspname AND s.tablename = t.relname AND NOT s.inherited
      AND s.attname IN ('type', 'state', 'run_at')
), share AS (
    -- a value's share: its own frequency when it is a common value, otherwise an even split
    -- of what the common values leave
    SELECT q.type, q.state,
           coalesce(col.freqs[array_position(col.vals, CASE col.attname WHEN 'type' THEN q.type
                                                                        ELSE q.state END)],
                    greatest(1 - col.null_frac - col.common, 0)
                    / greatest(col.distinct_values - cardinality(col.vals), 1)) AS part
    FROM unnest(%(types)s::text[], %(states)s::text[]) AS q(type, state)
    JOIN col ON col.attname IN ('type', 'state')
), due AS (
    -- the common values at or before now, and of the rest the histogram's share
    SELECT (SELECT coalesce(sum(f), 0) FROM unnest(col.vals, col.freqs) AS m(v, f)
            WHERE v::timestamptz <= now())
           + greatest(1 - col.null_frac - col.common, 0)
             * coalesce((SELECT count(*) FILTER (WHERE b::timestamptz <= now())::float8
                                / nullif(count(*), 0) FROM unnest(col.bounds) AS b),
                        0.5) AS part
    FROM col WHERE col.attname = 'run_at'
)
SELECT s.type, s.state, round(t.reltuples * exp(sum(ln(greatest(s.part, 1e-12)))))::bigint,
       coalesce((SELECT part FROM due), 0.5)
FROM share AS s, t
GROUP BY s.type, s.state, t.reltuples
-- both factors or none: one alone would count every state, or every type
HAVING count(*) = 2"""

# Fold finished minutes of history into the rates table, at most one hour back and never
# the last 10 seconds' minute (its events may not all be committed). Idempotent: a minute is
# folded once, recorded in the table itself by a row with type '', and two folders at once
# count the same rows (the second's inserts wait for the first's, then do nothing).
# (Composed of constants only.)
FOLD_RATES = """
WITH todo AS (
    SELECT m FROM generate_series(date_trunc('minute', now()) - interval '60 minutes',
                                  """ + _FOLDED_UNTIL + """ - interval '1 minute',
                                  interval '1 minute') AS m
    WHERE NOT EXISTS (SELECT 1 FROM {rates} WHERE minute = m AND type = '')
), counted AS (
    SELECT date_trunc('minute', e.occurred_at) AS minute, e.type,
           count(*) FILTER (WHERE e.event = 'completed') AS completed,
           count(*) FILTER (WHERE e.event = 'failed') AS failed
    FROM {events} e
    WHERE e.occurred_at >= (SELECT min(m) FROM todo)
      AND e.occurred_at < (SELECT max(m) FROM todo) + interval '1 minute'
      AND e.event IN ('completed', 'failed')
      AND date_trunc('minute', e.occurred_at) IN (SELECT m FROM todo)
    GROUP BY 1, 2
), ins AS (
    INSERT INTO {rates} (minute, type, completed, failed)
    SELECT minute, type, completed, failed FROM counted
    UNION ALL SELECT m, '', 0, 0 FROM todo
    ON CONFLICT (minute, type) DO NOTHING
    RETURNING 1
), trim AS (
    DELETE FROM {rates} WHERE minute < date_trunc('minute', now()) - interval '2 hours'
)
SELECT count(*) FROM ins"""  # noqa: S608

# Whether this call folds: not in a read-only session, not by a role that may not write the
# rates (a SELECT-only role reads status all the same), and only one folder at a time. A
# folder that must not skip (`wait`: a clear, about to delete what the fold counts) waits for
# the one folding now to commit, and then folds what is left. The second column: whether it
# may also keep the history's partitions ahead (AHEAD_FUNCTION).
MAY_FOLD = """
SELECT CASE WHEN current_setting('transaction_read_only') = 'on'
              OR NOT (has_table_privilege(%(rates)s, 'INSERT')
                      AND has_table_privilege(%(rates)s, 'DELETE')) THEN false
            WHEN %(wait)s
                THEN (SELECT true FROM pg_advisory_xact_lock(hashtextextended(%(key)s, 1)))
            ELSE pg_try_advisory_xact_lock(hashtextextended(%(key)s, 1)) END,
       coalesce(has_function_privilege(
           to_regprocedure(%(ahead)s || '(integer, timestamptz)'), 'EXECUTE'), false)"""

KEEP_AHEAD = "SELECT {ahead_fn}(%(days)s)"

# For the rest of a transaction of small reads (status, a fold): no JIT, no parallel workers.
# Their history reads are bounded by now(), so partitions are pruned when they run, not when
# they are planned, and the plan is costed as if every day were read: at 10M history rows
# that bought 2 workers and JIT compiling for reads of a minute's rows (100 ms instead of 1 ms
# for STATS_TYPES, 156 ms instead of 13 ms for FOLD_RATES; benchmarks/README.md).
SMALL_READS = ("SELECT set_config('jit', 'off', true), "
               "set_config('max_parallel_workers_per_gather', '0', true)")

# doctor: sizes, bloat and vacuum of the queue's tables, what holds back the xmin horizon,
# invalid indexes. Read from the catalogs and statistics views only. A partitioned table, and
# its indexes, count with their partitions.
DOCTOR_TABLES = """
SELECT c.relname, sum(pg_total_relation_size(t.relid)), sum(pg_relation_size(t.relid)),
       coalesce(sum(s.n_live_tup), 0), coalesce(sum(s.n_dead_tup), 0),
       max(greatest(s.last_autovacuum, s.last_vacuum)),
       max(greatest(s.last_autoanalyze, s.last_analyze))
FROM pg_class c
CROSS JOIN LATERAL (SELECT c.oid AS relid UNION SELECT relid FROM pg_partition_tree(c.oid)) AS t
LEFT JOIN pg_stat_all_tables s ON s.relid = t.relid
WHERE c.oid = ANY(ARRAY[to_regclass(%(jobs)s), to_regclass(%(events)s), to_regclass(%(rates)s),
                        to_regclass(%(keys)s)])
GROUP BY c.relname
ORDER BY c.relname"""

DOCTOR_INDEXES = """
SELECT i.indexrelid::regclass::text,
       (SELECT sum(pg_relation_size(t.relid)) FROM (SELECT i.indexrelid AS relid
                                                    UNION SELECT relid
                                                    FROM pg_partition_tree(i.indexrelid)) AS t),
       i.indisvalid
FROM pg_index i
WHERE i.indrelid = ANY(ARRAY[to_regclass(%(jobs)s), to_regclass(%(events)s),
                             to_regclass(%(keys)s)])
ORDER BY 1"""

# The history's partitions: how many, how far ahead they reach, and about how many rows
# the DEFAULT partition holds (rows no day covered, and the kept history of live jobs).
DOCTOR_PARTITIONS = """
SELECT count(*) FILTER (WHERE NOT p.is_default), max(p.hi),
       coalesce(max(p.hi) > now() + interval '1 day', false),
       max(pg_stat_get_live_tuples(p.part)) FILTER (WHERE p.is_default)
FROM (__PARTITIONS__) AS p""".replace(
    "__PARTITIONS__", _PARTITIONS.replace("__PARENT__", "%(events)s::regclass"))

# Everything that keeps vacuum from removing this database's dead rows, oldest first:
# sessions by their snapshot (backend_xmin) or by their transaction id (backend_xid: a writer
# in an open transaction has no snapshot while idle), prepared transactions, and replication
# slots (xmin; catalog_xmin holds back the catalogs only). Sessions of other databases do not
# hold back this one's tables; walsenders (no database) do, through hot_standby_feedback.
DOCTOR_HOLDERS = """
SELECT kind, pid, name, app, state, seconds, xid_age, via, query FROM (
    SELECT 'session' AS kind, a.pid, NULL::text AS name, coalesce(a.application_name, '') AS app,
           coalesce(a.state, a.backend_type, 'unknown') AS state,
           extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::float8 AS seconds,
           greatest(age(a.backend_xmin), age(a.backend_xid)) AS xid_age,
           CASE WHEN a.backend_xid IS NOT NULL THEN 'transaction id' ELSE 'snapshot' END AS via,
           left(a.query, 200) AS query
    FROM pg_stat_activity AS a
    WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
      AND a.pid <> pg_backend_pid() AND a.leader_pid IS NULL
      AND a.backend_type IS DISTINCT FROM 'autovacuum worker'
      AND (a.datname = current_database() OR a.datid IS NULL)
    UNION ALL
    SELECT 'prepared', NULL, gid, '', 'prepared by ' || owner,
           extract(epoch FROM now() - prepared)::float8, age(transaction), 'transaction id', NULL
    FROM pg_prepared_xacts WHERE database = current_database()
    UNION ALL
    SELECT 'slot', active_pid, slot_name, coalesce(plugin, ''),
           CASE WHEN active THEN 'active' ELSE 'inactive' END, NULL, age(xmin), 'xmin', NULL
    FROM pg_replication_slots WHERE xmin IS NOT NULL
    UNION ALL
    SELECT 'catalog slot', active_pid, slot_name, coalesce(plugin, ''),
           CASE WHEN active THEN 'active' ELSE 'inactive' END, NULL, age(catalog_xmin),
           'catalog_xmin', NULL
    FROM pg_replication_slots
    WHERE catalog_xmin IS NOT NULL AND (database IS NULL OR database = current_database())
) AS h
ORDER BY xid_age DESC, seconds DESC NULLS LAST"""

# The trace follower relies on event ids being handed out in order (CACHE 1, the default).
DOCTOR_EVENTS_SEQUENCE = """
SELECT seqcache FROM pg_sequence
WHERE seqrelid = pg_get_serial_sequence(%(events)s, 'id')::regclass"""

DOCTOR_EXPIRED = """
SELECT count(*) FROM (SELECT 1 FROM {jobs} WHERE state = 'claimed' AND lease_until < now()
                      LIMIT 10000) s"""

# Reads on a replica (admin.Admin with `reads`). Which server a session is on: a standby still
# in recovery or not, of which cluster (a primary and all its physical standbys share
# pg_control_system's identifier) and which database.
SERVER_IDENTITY = """
SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()),
       current_database()"""

# Where a standby stands: whether a WAL receiver runs (its row shows to every role, its
# details only to pg_read_all_stats), the WAL it received and replayed, the primary's commit
# time of the last transaction replayed and its age by this server's clock, and whether it
# has replayed up to `written`, a primary's WAL position (NULL: nothing to wait for).
REPLICATION = """
SELECT pg_is_in_recovery(), EXISTS (SELECT FROM pg_stat_wal_receiver),
       pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
       greatest(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint,
       pg_last_xact_replay_timestamp(), now() - pg_last_xact_replay_timestamp(),
       %(written)s::pg_lsn IS NULL OR pg_last_wal_replay_lsn() >= %(written)s::pg_lsn"""

# On the primary, after an action: a WAL position at or past its commit, which a replica has
# replayed once the action shows there.
WAL_POSITION = "SELECT pg_current_wal_insert_lsn()::text"

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

    @cached_property
    def stats_types(self) -> bytes:
        return self._render(STATS_TYPES)

    @cached_property
    def stats_type(self) -> bytes:
        return self._render(STATS_TYPE)

    def render(self, template: str) -> bytes:
        """A statement of this queue that is not a named property (cold paths)."""
        return self._render(template)

    @cached_property
    def stats_estimates(self) -> bytes:
        return self._render(STATS_ESTIMATES)

    @cached_property
    def fold_rates(self) -> bytes:
        return self._render(FOLD_RATES)

    @cached_property
    def show_job(self) -> bytes:
        return self._render(SHOW_JOB)

    @cached_property
    def job_events(self) -> bytes:
        return self._render(JOB_EVENTS)

    @cached_property
    def trace(self) -> bytes:
        return self._render(TRACE)

    @cached_property
    def trace_follow(self) -> bytes:
        return self._render(TRACE_FOLLOW)

    @cached_property
    def retry(self) -> bytes:
        return self._render(RETRY)

    @cached_property
    def extend_by(self) -> bytes:
        return self._render(EXTEND_BY)

    @cached_property
    def delete(self) -> bytes:
        return self._render(DELETE)

    @cached_property
    def cancel(self) -> bytes:
        return self._render(CANCEL)

    @cached_property
    def cancelled_of(self) -> bytes:
        return self._render(CANCELLED_OF)

    @cached_property
    def pause(self) -> bytes:
        return self._render(PAUSE)

    @cached_property
    def resume(self) -> bytes:
        return self._render(RESUME)

    @cached_property
    def pauses(self) -> bytes:
        return self._render(PAUSES)

    @cached_property
    def worker_beat(self) -> bytes:
        return self._render(WORKER_BEAT)

    @cached_property
    def worker_gone(self) -> bytes:
        return self._render(WORKER_GONE)

    @cached_property
    def workers(self) -> bytes:
        return self._render(WORKERS)

    @cached_property
    def drain(self) -> bytes:
        return self._render(DRAIN)

    @cached_property
    def stats_rates(self) -> bytes:
        return self._render(STATS_RATES)

    @cached_property
    def stats_served(self) -> bytes:
        return self._render(STATS_SERVED)

    @cached_property
    def states_of(self) -> bytes:
        return self._render(STATES_OF)

    @cached_property
    def cutoff(self) -> bytes:
        return self._render(CUTOFF)

    @cached_property
    def clear_preview(self) -> bytes:
        return self._render(CLEAR_PREVIEW)

    @cached_property
    def clear_failed_batch(self) -> bytes:
        return self._render(CLEAR_FAILED_BATCH)

    @cached_property
    def history_partitions(self) -> bytes:
        return self._render(HISTORY_PARTITIONS)

    @cached_property
    def free_day_keys(self) -> bytes:
        return self._render(FREE_DAY_KEYS)

    @cached_property
    def retire(self) -> bytes:
        return self._render(RETIRE)

    @cached_property
    def keep_ahead(self) -> bytes:
        return self._render(KEEP_AHEAD)

    @cached_property
    def clear_events_batch(self) -> bytes:
        return self._render(CLEAR_EVENTS_BATCH)


def _sibling(names: Names, prefix: str, suffix: str) -> sql.Identifier:
    name = prefix + names.table + suffix
    return sql.Identifier(names.schema, name) if names.schema else sql.Identifier(name)
