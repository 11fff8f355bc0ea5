"""Typed exceptions. Every error jobq raises is a `JobqError`; no driver error leaves the API.

Driver errors are classified once, here, by SQLSTATE (`classify`). `TransientError`s may
succeed when tried again (the runner retries them with backoff); the rest are permanent.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import errors as pg
from psycopg_pool import PoolTimeout


class JobqError(Exception):
    """Base class of every error raised by jobq."""


class InvalidInputError(JobqError, ValueError):
    """An argument was rejected before any SQL ran; nothing was changed."""


class NotFoundError(JobqError, LookupError):
    """No live job has that id."""


class JobStateError(JobqError):
    """The job exists but is not in a state that allows the operation."""


class LeaseLostError(JobqError):
    """The caller's lease is gone: the job was reclaimed, completed or removed by someone else.

    The operation changed nothing.
    """


class SchemaError(JobqError):
    """The queue tables are missing, foreign, or newer than this version of jobq."""


class ReplicaError(JobqError):
    """The read DSN does not name a hot standby of the primary's database: a primary (or a
    promoted standby), a standby of another cluster, or another database. Not transient:
    the configuration needs fixing."""


class DatabaseError(JobqError):
    """The database refused the statement for a reason that retrying will not fix.

    `sqlstate` is the server's error code, when it sent one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class PermissionDeniedError(DatabaseError):
    """The role lacks a privilege (SQLSTATE 42501); the message names the grant it needs."""


class TransientError(JobqError):
    """A failure that may pass: the same call, tried again later, may succeed.

    The statement had no effect, except after a broken connection (see
    `DatabaseUnavailableError`)."""

    sqlstate: str | None = None


class DatabaseUnavailableError(TransientError):
    """The database could not be reached, or the connection broke mid-operation.

    When a connection breaks mid-statement the outcome is unknown; a claimed job that was
    never acknowledged comes back when its lease expires.
    """


class PoolExhaustedError(TransientError):
    """Every connection of the queue's pool stayed busy while the server was answering.

    Raise `max_connections`, or do less at once; the database itself is fine."""


class StatementTimeoutError(TransientError):
    """The statement was cancelled: `statement_timeout` ran out, or someone cancelled it."""


class LockTimeoutError(TransientError):
    """A row or table lock was not granted within `lock_timeout`."""


class SerializationError(TransientError):
    """The server aborted the transaction to resolve a conflict: a deadlock, or a
    serialization failure. It had no effect; running it again is safe."""


class JobFailedError(JobqError):
    """The job ended `failed`; `reason` holds its last error (and traceback, from the runner)."""

    def __init__(self, job_id: int, reason: str | None) -> None:
        super().__init__(f"job {job_id} failed: {reason or 'no reason recorded'}")
        self.job_id = job_id
        self.reason = reason


class JobCancelledError(JobFailedError):
    """The job ended `cancelled` by an operator; `reason` says who and why."""

    def __init__(self, job_id: int, reason: str | None) -> None:
        JobqError.__init__(self, f"job {job_id} was {reason or 'cancelled'}")
        self.job_id = job_id
        self.reason = reason


class WaitTimeoutError(JobqError, TimeoutError):
    """`wait` gave up before the job finished; the job itself is unaffected."""


class UnknownTaskError(JobqError, LookupError):
    """No handler is registered for that task type in this runner."""


class RunnerFailedError(JobqError):
    """A loop of the task runner could not go on, so the runner stopped (`jobq worker` exits
    with a non-zero status). Its unfinished jobs were handed back where the database allowed."""


class MissingExtraError(JobqError):
    """A feature's optional dependencies are not installed; the message names the extra."""


# SQLSTATE classes and codes that mean "try again". Class 08 is connection trouble, class 53
# a server out of resources (disk, memory, connections); 57P01-03 a server shutting down,
# crashing or starting.
_UNAVAILABLE_CLASSES = ("08", "53")
_UNAVAILABLE_CODES = {"57P01", "57P02", "57P03"}
_TRANSIENT: dict[str, type[TransientError]] = {
    "57014": StatementTimeoutError,   # query_canceled (statement_timeout, pg_cancel_backend)
    "55P03": LockTimeoutError,        # lock_not_available (lock_timeout, NOWAIT)
    "40001": SerializationError,      # serialization_failure
    "40P01": SerializationError,      # deadlock_detected
}


def _detail(exc: BaseException) -> str:
    # psycopg's messages name host and port but never the password.
    return " ".join(str(exc).split()) or type(exc).__name__


_DENIED_ON = re.compile(r"permission denied for (?P<kind>table|sequence|schema) (?P<name>\S+)")
#: The grant that fixes "permission denied for <kind> <name>", for the role that ran it.
_GRANTS = {"table": "GRANT SELECT, INSERT, UPDATE, DELETE ON {name}",
           "sequence": "GRANT USAGE ON SEQUENCE {name}", "schema": "GRANT USAGE ON SCHEMA {name}"}


def _denied(exc: BaseException) -> str:
    """What was refused, and the fix: the grant for a worker role, or the owner's migrate."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None) or _detail(exc)
    found = _DENIED_ON.search(primary)
    if found is None:  # "must be owner of ...": only the tables' owner may change them
        return (f"permission denied: {primary}; only the tables' owner can do this (see "
                "Least privilege in the README)")
    grant = _GRANTS[found["kind"]].format(name=found["name"])
    return (f"permission denied: {primary}; the role needs `{grant} TO <role>` (see Least "
            "privilege in the README)")


def classify(exc: BaseException, *, broken: bool = False) -> JobqError:
    """The `JobqError` for a driver error. `broken`: the connection it ran on is gone."""
    if isinstance(exc, JobqError):
        return exc
    if isinstance(exc, PoolTimeout):
        return DatabaseUnavailableError(f"database unavailable: {_detail(exc)}")
    state = getattr(exc, "sqlstate", None)
    if state in _TRANSIENT:
        error: TransientError = _TRANSIENT[state](_detail(exc))
        error.sqlstate = state
        return error
    unreachable = state is not None and (
        state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_CODES)
    if unreachable or broken or (
            state is None and isinstance(exc, psycopg.OperationalError | OSError)):
        unavailable = DatabaseUnavailableError(f"database unavailable: {_detail(exc)}")
        unavailable.sqlstate = state
        return unavailable
    if isinstance(exc, pg.InsufficientPrivilege):
        return PermissionDeniedError(_denied(exc), state)
    if isinstance(exc, pg.InvalidSchemaName):
        return SchemaError(f"{_detail(exc)}: create that schema first (CREATE SCHEMA), or "
                           "name another table")
    if isinstance(exc, pg.DuplicateTable | pg.DuplicateObject):
        return SchemaError(f"{_detail(exc)}: something not made by jobq already has a name "
                           "that its tables need; choose another table name")
    if isinstance(exc, pg.UndefinedTable | pg.UndefinedColumn):
        return SchemaError(f"the queue's tables are missing or incomplete ({_detail(exc)}); "
                           "run `jobq migrate`")
    return DatabaseError(f"database error: {_detail(exc)}", state)


#: What `classify` takes: driver errors, and the pool's and the socket's own.
DRIVER_ERRORS = (psycopg.Error, PoolTimeout, OSError)
