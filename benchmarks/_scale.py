"""The backgrounds of jobq's scale cells, built with set-based SQL straight into the tables
jobq creates, once per run, in a template database that each repetition copies.

Every background job also gets the `enqueued` event jobq would have written for it. The rows
name only the columns of today's layout that a job or an event needs (`JOB_COLUMNS`,
`EVENT_COLUMNS`), so a change of layout (a history partitioned by time, idempotency keys kept
elsewhere) means editing those lists and nothing else: an INSERT into a partitioned parent is
routed to its partitions like any other, provided partitions exist for the dates below
(history rows span `HISTORY_DAYS` days up to now; jobs were enqueued up to 2 hours ago).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from benchmarks import _jobq

#: The scale cells, in the order they are reported.
CELLS = ("empty", "other", "same", "types50", "orphans", "history")
LABELS = {
    "empty": "empty table",
    "other": "{backlog:,} pending jobs of other types",
    "same": "{backlog:,} pending jobs of the same type",
    "types50": "50 types x {per_type:,} pending (the runner serves all 50)",
    "orphans": "{orphans:,} orphaned expired leases",
    "history": "{history:,} history rows",
}
TYPES50 = [f"t{i:02d}" for i in range(50)]
HISTORY_DAYS = 30

JOB_COLUMNS = ("type", "payload", "priority", "run_at", "created_at")
EVENT_COLUMNS = ("occurred_at", "job_id", "type", "event", "request_id", "attempt", "worker",
                 "reason", "result", "idempotency_key", "payload")


@dataclass(frozen=True)
class Sizes:
    backlog: int = 1_000_000
    per_type: int = 20_000
    orphans: int = 50_000
    history: int = 10_000_000
    #: Jobs handled per measurement (the claimed type's, or the 50 types' in `types50`).
    jobs: int = 20_000

    def label(self, cell: str) -> str:
        return LABELS[cell].format(**self.__dict__)


# Pending jobs, oldest first so that they come before the measured jobs in the claim order
# (priority, run_at, id): a claim that walked the whole ready index would read all of them.
_PENDING = f"""
INSERT INTO svti_jobs ({", ".join(JOB_COLUMNS)})
SELECT {{type}}, '{{{{"n": 1}}}}'::jsonb, 0,
       now() - interval '2 hours' + g * interval '1 ms', now() - interval '2 hours'
FROM generate_series(1, %(n)s) g"""
# Claimed jobs of a type nobody serves any more, their leases an hour past.
_ORPHANS = """
INSERT INTO svti_jobs (type, payload, state, run_at, attempts, lease_token, lease_until,
                       lease_ms, claimed_by, claimed_at, created_at)
SELECT 'orphan', '{}'::jsonb, 'claimed', now() - interval '2 hours', 1, gen_random_uuid(),
       now() - interval '1 hour', 30000, 'gone:1', now() - interval '2 hours',
       now() - interval '2 hours'
FROM generate_series(1, %(n)s) g"""
_ENQUEUED_EVENTS = """
INSERT INTO svti_jobs_events (occurred_at, job_id, type, event)
SELECT created_at, id, type, 'enqueued' FROM svti_jobs"""
# Finished jobs' history: enqueued, claimed and completed in turn, spread evenly over
# HISTORY_DAYS up to now, oldest first; job ids far above the live ones.
_HISTORY = f"""
INSERT INTO svti_jobs_events ({", ".join(EVENT_COLUMNS)})
SELECT now() - interval '{HISTORY_DAYS} days' + g * (interval '{HISTORY_DAYS} days' / %(n)s),
       1000000000 + g / 3,
       (ARRAY['send-email', 'resize-image', 'charge-card', 'sync-crm'])[1 + (g / 3) %% 4],
       (ARRAY['enqueued', 'claimed', 'completed'])[1 + g %% 3],
       'req-' || (g / 3), CASE WHEN g %% 3 = 0 THEN 0 ELSE 1 END,
       CASE WHEN g %% 3 = 0 THEN NULL ELSE 'bench:1' END, NULL,
       CASE WHEN g %% 3 = 2 THEN '{{"ok": true}}'::jsonb END, NULL,
       CASE WHEN g %% 3 = 2 THEN '{{"to": "alice@example.com"}}'::jsonb END
FROM generate_series(0, %(n)s - 1) g"""


def background(cell: str, sizes: Sizes) -> list[tuple[str, dict[str, int]]]:
    """The statements that build `cell`'s background in a migrated database."""
    if cell == "empty":
        return []
    if cell == "other":
        return [(_PENDING.format(type="'backlog-' || g %% 4"), {"n": sizes.backlog}),
                (_ENQUEUED_EVENTS, {})]
    if cell == "same":
        return [(_PENDING.format(type=f"'{_jobq.TYPE}'"), {"n": sizes.backlog}),
                (_ENQUEUED_EVENTS, {})]
    if cell == "types50":
        return [(_PENDING.format(type="'t' || lpad((g %% 50)::text, 2, '0')"),
                 {"n": 50 * sizes.per_type}), (_ENQUEUED_EVENTS, {})]
    if cell == "orphans":
        return [(_ORPHANS, {"n": sizes.orphans}), (_ENQUEUED_EVENTS, {})]
    if cell == "history":
        return [(_HISTORY, {"n": sizes.history})]
    raise ValueError(f"no scale cell {cell!r}")


def build(dsn: str, cell: str, sizes: Sizes) -> None:
    """Migrate an empty database and fill in `cell`'s background."""
    _jobq.install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement, params in background(cell, sizes):
            conn.execute(statement, params)


def served_types(cell: str) -> list[str]:
    return TYPES50 if cell == "types50" else [_jobq.TYPE]


def enqueues_its_jobs(cell: str) -> bool:
    """Whether a round enqueues the jobs it handles (`types50` handles its background)."""
    return cell != "types50"
