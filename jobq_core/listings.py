"""The statements of operators' listings (`Admin.list_jobs`, and the console's and `jobq
list`'s pages), built per call: unlike every other statement, which is written out in
`queries.sql`, a listing's WHERE and ORDER BY vary with its filter, state, sort and cursor.

Built, not one static statement with `(%(type)s IS NULL OR type = %(type)s)` guards, because
each combination needs its own plan: a guard gives the planner one plan for every filter, and
at a million jobs only the filter's own index makes the first page cheap. Only constant
fragments and bound parameters go into the text; identifiers are composed by `psycopg.sql`.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql

from .sql import Names

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
