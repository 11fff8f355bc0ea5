"""jobq_core: a Postgres-backed job queue and task runner.

The library never imports textual, typer or rich.
"""

from .durations import format_duration, parse_duration
from .errors import (
    DatabaseUnavailableError,
    InvalidInputError,
    JobqError,
    JobStateError,
    LeaseLostError,
    NotFoundError,
    SchemaError,
)
from .models import Job, NewJob
from .queue import AsyncJobQueue, JobQueue, create_async_job_queue, create_job_queue

__all__ = [
    "AsyncJobQueue",
    "DatabaseUnavailableError",
    "InvalidInputError",
    "Job",
    "JobQueue",
    "JobStateError",
    "JobqError",
    "LeaseLostError",
    "NewJob",
    "NotFoundError",
    "SchemaError",
    "create_async_job_queue",
    "create_job_queue",
    "format_duration",
    "parse_duration",
]
__version__ = "0.1.0"
