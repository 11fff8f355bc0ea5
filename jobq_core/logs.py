"""How jobq's log records are written: one line a person reads, or one JSON object per line
for log pipelines (`jobq worker --log-format json`), and the logger a handler gets as
`ctx.logger`, whose records carry the job's ids."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any, Literal

from .models import Job

#: The formats `log_to_stderr` writes.
LogFormat = Literal["plain", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "json")
#: What a bound logger puts on each of its records, in the order JSON lines list them.
JOB_FIELDS = ("job_id", "type", "attempt", "request_id", "worker")


def _stamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created).astimezone().isoformat(
        timespec="milliseconds")


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with the job id and request id and puts the job's fields
    (`JOB_FIELDS`) on every record, for formatters and structured handlers."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs.setdefault("extra", {}).update(extra)
        return f"{_prefix(extra)}{msg}", kwargs


def _prefix(fields: Any) -> str:
    return f"[job {fields.get('job_id')} req {fields.get('request_id')}] "


def bound_logger(job: Job) -> JobLogger:
    """A logger whose records carry the job's id, type, attempt, request id and worker (the
    name its claim recorded)."""
    return JobLogger(logging.getLogger(f"jobq.task.{job.type}"), {
        "job_id": job.id, "type": job.type, "attempt": job.attempts,
        "request_id": job.request_id, "worker": job.claimed_by})


class LineFormatter(logging.Formatter):
    """One line per record (a traceback, if any, follows it): the time with its zone, level,
    logger and message. Bound loggers put the job and request id into the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _stamp(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the job's fields when a bound
    logger wrote the record (its message without the prefix the line format shows),
    `worker_id` (the runner's registry id, once known) and `exc`, a traceback. Line breaks and
    control characters are escaped, so a record is always one line."""

    def __init__(self, worker_id: str | None = None) -> None:
        super().__init__()
        #: The runner's id in the worker registry; `jobq worker` sets it once it is loaded.
        self.worker_id = worker_id

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = {key: getattr(record, key) for key in JOB_FIELDS if hasattr(record, key)}
        if "job_id" in fields:
            message = message.removeprefix(_prefix(fields))
        data: dict[str, Any] = {"ts": _stamp(record), "level": record.levelname,
                                "logger": record.name, "message": message, **fields}
        if self.worker_id is not None:
            data["worker_id"] = self.worker_id
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        return json.dumps(data, default=str)


def log_to_stderr(level: int | str, log_format: LogFormat = "plain",
                  worker_id: str | None = None) -> logging.Formatter:
    """Show jobq's records at `level` and above on stderr, one line each (`jobq worker`
    --log-level and --log-format; worker processes are set up alike); returns the formatter,
    for the caller to complete (`JsonFormatter.worker_id`, known once a runner is loaded)."""
    handler = logging.StreamHandler(sys.stderr)
    chosen = JsonFormatter(worker_id) if log_format == "json" else LineFormatter()
    handler.setFormatter(chosen)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return chosen


def current_format() -> tuple[LogFormat, str | None]:
    """The format the root logger writes in, and the worker id its JSON lines carry: a
    worker process writes alike."""
    for handler in logging.root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return "json", handler.formatter.worker_id
    return "plain", None
