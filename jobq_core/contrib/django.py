"""A backend for Django's tasks framework (`pip install 'jobq[django]'`): `django.tasks` in
Django 6, the `django-tasks` backport on Django 5.2.

    TASKS = {"default": {"BACKEND": "jobq_core.contrib.django.JobqBackend",
                         "OPTIONS": {"DATABASE": "default"}}}

OPTIONS, all optional:

- `DATABASE`: the Django database whose transactions enqueues join (default "default").
- `DSN`: where jobq's tables are; by default that database's own connection settings.
- `ENQUEUE`: "in_transaction" writes the job on that database's psycopg 3 connection, in the
  caller's transaction: it commits or rolls back with the caller's rows. "on_commit" writes
  it once the transaction commits (`transaction.on_commit`), on jobq's own connection: for
  jobq tables in another database. The default is "in_transaction" without a `DSN`, else
  "on_commit"; "in_transaction" with a `DSN` says that it names the same database.
- `TABLE`: jobq's table (default "svti_jobs").
- `MAX_ATTEMPTS`: attempts per task, counting the first (default 1: as in Django, a task that
  raises is FAILED; with more, it is READY again with its errors listed until the last).

A task of queue `q` becomes a job of type `django:q` whose payload names the task and its
arguments. Its result id is the job's id, or, for "on_commit", an idempotency key the job is
found by once it is enqueued. `get_result` reads the job and its history: a result is there
as long as the history keeps it (`jobq clear`), with its arguments if the payload was small
enough to be kept (`history_payload_bytes`).

Workers: `DJANGO_SETTINGS_MODULE=mysite.settings jobq worker jobq_core.contrib.django:runner`
serves the backend `JOBQ_DJANGO_BACKEND` (default "default"); `make_runner` builds one to
extend in code.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from psycopg.conninfo import make_conninfo

from ..admin import Admin, Event, JobRow
from ..errors import InvalidInputError, JobCancelledError, JobFailedError, NotFoundError
from ..filters import JobFilter
from ..models import validate_type
from ..queue import JobQueue
from ..runner import Context, TaskRunner, create_task_runner

if TYPE_CHECKING:  # checked against the backport; Django 6's module has the same API
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.utils import normalize_json
else:
    try:  # Django 6
        from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import TaskResultDoesNotExist
        from django.utils.json import normalize_json
    except ImportError:  # Django 5.2 and the backport
        from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.utils import normalize_json

IN_TRANSACTION, ON_COMMIT = "in_transaction", "on_commit"
#: The Django options of a postgresql database that are not libpq's.
_DJANGO_ONLY = {"isolation_level", "server_side_binding", "pool", "assume_role"}
#: Django's status (TaskResultStatus's value) of each state of a job.
_STATUS = {"pending": "READY", "claimed": "RUNNING", "completed": "SUCCESSFUL",
           "failed": "FAILED", "cancelled": "FAILED"}
_FINISHED = ("completed", "failed", "cancelled")
#: Events that start an attempt, and those that end one with an error.
_STARTS, _ERRORS = ("claimed", "recovered"), ("retried", "failed", "cancelled")
_CLASS_PATH = re.compile(r"[A-Za-z_][\w.]*")

#: One queue (and pool) per DSN and table: Django makes a backend per thread.
_queues: dict[tuple[str, str], JobQueue] = {}
_queues_lock = threading.Lock()


def _shared_queue(dsn: str, table: str) -> JobQueue:
    with _queues_lock:
        queue = _queues.get((dsn, table))
        if queue is None:
            queue = _queues[(dsn, table)] = JobQueue(dsn, table=table)
        return queue


def _dsn_of(alias: str) -> str:
    """A libpq DSN from a Django postgresql database's settings."""
    conn = connections[alias]
    if conn.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"database {alias!r} is {conn.vendor}, not PostgreSQL: give jobq's DSN in OPTIONS")
    s = conn.settings_dict
    params: dict[str, Any] = {"dbname": s.get("NAME"), "user": s.get("USER"),
                              "password": s.get("PASSWORD"), "host": s.get("HOST"),
                              "port": s.get("PORT")}
    params.update((k, v) for k, v in (s.get("OPTIONS") or {}).items()
                  if k not in _DJANGO_ONLY and isinstance(v, str | int))
    try:
        return make_conninfo("", **{k: v for k, v in params.items() if v not in (None, "")})
    except psycopg.ProgrammingError as exc:
        raise ImproperlyConfigured(f"database {alias!r}: {exc}; give jobq's DSN") from None


def _exception_path(trace: str) -> str | None:
    """The class of the last exception in a formatted traceback (Python prefixes its module,
    except for builtins)."""
    block = trace.rpartition("Traceback (most recent call last):\n")[2]
    for line in block.splitlines():
        if line and not line[0].isspace():
            name = line.partition(":")[0]
            if _CLASS_PATH.fullmatch(name):
                return name if "." in name else f"builtins.{name}"
            return None
    return None


def _error_of(event: Event) -> TaskError:
    """A failure event as Django's TaskError: the runner stores "Name: message", a blank
    line, then the traceback; jobq's own reasons (given up, cancelled) have none."""
    reason = event.reason or event.event
    path = _exception_path(reason.partition("\n\n")[2])
    if path is None:
        cls = JobCancelledError if event.event == "cancelled" else JobFailedError
        path = f"{cls.__module__}.{cls.__qualname__}"
    return TaskError(exception_class_path=path, traceback=reason)


def _task_at(path: object) -> Task[Any, Any]:
    found = import_string(path) if isinstance(path, str) else None
    if not isinstance(found, Task):
        raise TypeError(f"{path!r} is not a Django task")
    return found


class JobqBackend(BaseTaskBackend):
    """Django's tasks, enqueued into jobq; see the module's docstring for OPTIONS."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options: Mapping[str, Any] = self.options
        unknown = set(options) - {"DATABASE", "DSN", "ENQUEUE", "TABLE", "MAX_ATTEMPTS"}
        if unknown:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: unknown OPTIONS {sorted(unknown)}")
        self.database: str = options.get("DATABASE", "default")
        if self.database not in connections.settings:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: DATABASE {self.database!r} is not "
                                       "in DATABASES")
        dsn = options.get("DSN")
        self.enqueue_mode: str = options.get("ENQUEUE", ON_COMMIT if dsn else IN_TRANSACTION)
        if self.enqueue_mode not in (IN_TRANSACTION, ON_COMMIT):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: ENQUEUE must be {IN_TRANSACTION!r} "
                                       f"or {ON_COMMIT!r}, got {self.enqueue_mode!r}")
        self.max_attempts: int = options.get("MAX_ATTEMPTS", 1)
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: MAX_ATTEMPTS must be a positive "
                                       f"integer, got {self.max_attempts!r}")
        if not self.queues:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: QUEUES must name the queues, so "
                                       "that a worker knows which to serve")
        try:
            #: The job type of each of the backend's queues.
            self.types = {name: validate_type(f"django:{name}", "queue name")
                          for name in self.queues}
            self.queue = _shared_queue(dsn or _dsn_of(self.database),
                                       options.get("TABLE", "svti_jobs"))
        except InvalidInputError as exc:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: {exc}") from None

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        self.validate_task(task)
        args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        job = partial(self.queue.enqueue, self.types[task.queue_name],
                      {"task": task.module_path, "args": args, "kwargs": kwargs},
                      run_at=task.run_after, priority=task.priority)
        if self.enqueue_mode == IN_TRANSACTION:
            django_conn = connections[self.database]
            django_conn.ensure_connection()
            raw = django_conn.connection
            if not isinstance(raw, psycopg.Connection):
                raise ImproperlyConfigured(
                    f"ENQUEUE {IN_TRANSACTION!r} needs database {self.database!r} on psycopg 3")
            result_id = str(job(conn=raw))
        else:
            result_id = f"django:{uuid.uuid4().hex}"
            transaction.on_commit(partial(job, idempotency_key=result_id), using=self.database)
        return TaskResult(task=task, id=result_id, status=TaskResultStatus("READY"),
                          enqueued_at=timezone.now(), started_at=None, finished_at=None,
                          last_attempted_at=None, args=args, kwargs=kwargs, backend=self.alias,
                          errors=[], worker_ids=[])

    def get_result(self, result_id: str) -> TaskResult[Any]:
        try:
            job_id = (int(result_id) if result_id.isascii() and result_id.isdigit()
                      else self.queue.key_holder(result_id))
            if job_id is None:
                raise TaskResultDoesNotExist(f"{result_id}: not enqueued (its transaction has "
                                             "not committed, or rolled back)")
            admin = Admin(self.queue)
            detail = admin.show(job_id)
        except (NotFoundError, InvalidInputError):
            raise TaskResultDoesNotExist(
                f"{result_id}: no such job (or its history was cleared)") from None
        # A completed job has left the queue: its row, payload included, is in the history.
        row = detail.job or next(iter(admin.list_jobs(
            JobFilter(state="completed", job_id=job_id), limit=1).rows), None)
        if row is None:
            raise TaskResultDoesNotExist(f"{result_id}: job {job_id} was deleted")
        return self._result(result_id, row, detail.events)

    def _result(self, result_id: str, row: JobRow, events: list[Event]) -> TaskResult[Any]:
        payload = row.payload if isinstance(row.payload, dict) else {}
        try:
            task = _task_at(payload.get("task"))
        except (ImportError, TypeError):
            raise TaskResultDoesNotExist(
                f"{result_id}: job {row.id} is not a Django task's, or its payload was too "
                "large for the history to keep") from None
        enqueued = [e for e in events if e.event == "enqueued"]
        starts = [e for e in events if e.event in _STARTS]
        ends = [e for e in events if e.event in _FINISHED]
        completed = [e for e in ends if e.event == "completed"]
        finished: datetime | None = None
        if row.state in _FINISHED and ends:
            finished = ends[-1].occurred_at
        result: TaskResult[Any] = TaskResult(
            task=task, id=result_id, status=TaskResultStatus(_STATUS.get(row.state, "READY")),
            enqueued_at=enqueued[0].occurred_at if enqueued else row.created_at,
            started_at=starts[0].occurred_at if starts else None, finished_at=finished,
            last_attempted_at=starts[-1].occurred_at if starts else None,
            args=payload.get("args", []), kwargs=payload.get("kwargs", {}), backend=self.alias,
            errors=[_error_of(e) for e in events if e.event in _ERRORS],
            worker_ids=[e.worker or "" for e in starts])
        if completed:
            object.__setattr__(result, "_return_value", completed[-1].result)
        return result


def _run_task(alias: str, payload: Any, ctx: Context) -> Any:
    """A jobq handler that runs one Django task, with Django's database connections handled
    as around a request (CONN_MAX_AGE kept)."""
    close_old_connections()
    try:
        task = _task_at(payload["task"])
        args, kwargs = payload["args"], payload["kwargs"]
        if task.takes_context:
            running = task_backends[alias].get_result(str(ctx.job.id))
            return normalize_json(task.call(TaskContext(task_result=running), *args, **kwargs))
        return normalize_json(task.call(*args, **kwargs))
    finally:
        close_old_connections()


def make_runner(alias: str = "default", **options: Any) -> TaskRunner:
    """A task runner for the Django tasks of backend `alias` (Django must be set up), with
    `TaskRunner`'s options: one job type per queue of the backend; register more tasks on it
    as you like."""
    backend = task_backends[alias]
    if not isinstance(backend, JobqBackend):
        raise InvalidInputError(f"TASKS[{alias!r}] is {type(backend).__name__}, not JobqBackend")
    runner = create_task_runner(backend.queue, **options)
    for job_type in sorted(backend.types.values()):
        runner.register(job_type, partial(_run_task, alias), max_attempts=backend.max_attempts)
    return runner


def runner() -> TaskRunner:
    """`jobq worker jobq_core.contrib.django:runner`: set Django up from
    DJANGO_SETTINGS_MODULE and serve backend JOBQ_DJANGO_BACKEND (default "default")."""
    import django

    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise InvalidInputError("set DJANGO_SETTINGS_MODULE to your project's settings")
    try:
        django.setup()
    except (ImportError, ImproperlyConfigured) as exc:
        raise InvalidInputError(f"cannot set Django up: {exc}") from None
    return make_runner(os.environ.get("JOBQ_DJANGO_BACKEND", "default"))


__all__ = ["IN_TRANSACTION", "ON_COMMIT", "JobqBackend", "TaskResultDoesNotExist",
           "TaskResultStatus", "make_runner", "runner"]
