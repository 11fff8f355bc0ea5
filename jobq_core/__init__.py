"""jobq_core: a Postgres-backed job queue and task runner.

The library never imports textual, typer or rich.
"""

from .durations import format_duration, parse_duration
from .errors import (
    DatabaseUnavailableError,
    InvalidInputError,
    JobCancelledError,
    JobFailedError,
    JobqError,
    JobStateError,
    LeaseLostError,
    MissingExtraError,
    NotFoundError,
    PermissionDeniedError,
    ReplicaError,
    SchemaError,
    UnknownTaskError,
    WaitTimeoutError,
)
from .models import Job, NewJob
from .queue import AsyncJobQueue, JobQueue, create_async_job_queue, create_job_queue
from .runner import Context, RunnerEvent, TaskRunner, create_task_runner, exponential_backoff
from .schedules import Schedule

__all__ = [
    "AsyncJobQueue",
    "Context",
    "DatabaseUnavailableError",
    "InvalidInputError",
    "Job",
    "JobCancelledError",
    "JobFailedError",
    "JobQueue",
    "JobStateError",
    "JobqError",
    "LeaseLostError",
    "MissingExtraError",
    "NewJob",
    "NotFoundError",
    "PermissionDeniedError",
    "ReplicaError",
    "RunnerEvent",
    "Schedule",
    "SchemaError",
    "TaskRunner",
    "UnknownTaskError",
    "WaitTimeoutError",
    "create_async_job_queue",
    "create_job_queue",
    "create_task_runner",
    "exponential_backoff",
    "format_duration",
    "parse_duration",
]
__version__ = "0.1.0"
