"""Typed exceptions. Every error jobq raises on purpose is a `JobqError`."""

from __future__ import annotations


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


class DatabaseUnavailableError(JobqError):
    """The database could not be reached, or the connection broke mid-operation.

    When a connection breaks mid-statement the outcome is unknown; a claimed job that was
    never acknowledged comes back when its lease expires.
    """


class JobFailedError(JobqError):
    """The job ended `failed`; `reason` holds its last error (and traceback, from the runner)."""

    def __init__(self, job_id: int, reason: str | None) -> None:
        super().__init__(f"job {job_id} failed: {reason or 'no reason recorded'}")
        self.job_id = job_id
        self.reason = reason


class WaitTimeoutError(JobqError, TimeoutError):
    """`wait` gave up before the job finished; the job itself is unaffected."""


class UnknownTaskError(JobqError, LookupError):
    """No handler is registered for that task type in this runner."""
