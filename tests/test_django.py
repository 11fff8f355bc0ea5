"""Django's tasks framework on jobq, in a real minimal project (tests/django_project) on real
Postgres: enqueues join the caller's transaction (or wait for its commit), a worker runs the
tasks, and `get_result` reports what happened."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import new_database

django = pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[1]
JOBQ = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"
SETTINGS = "tests.django_project.settings"


class Rollback(Exception):
    pass


@pytest.fixture(scope="module")
def project(server_dsn: str, template_db: str) -> Iterator[str]:
    """Django set up once on a database of its own (settings are per process), its tables
    migrated; yields that database's DSN."""
    url, drop = new_database(server_dsn, template_db)
    saved = {k: os.environ.get(k) for k in ("JOBQ_DJANGO_DSN", "DJANGO_SETTINGS_MODULE")}
    os.environ["JOBQ_DJANGO_DSN"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    django.setup()
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", run_syncdb=True, verbosity=0)
    yield url
    from jobq_core.contrib import django as backend

    connections.close_all()
    for queue in backend._queues.values():
        queue.close()
    backend._queues.clear()
    drop()
    for key, value in saved.items():  # Django stays set up: it cannot be undone
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def jobs(project: str) -> Iterator[psycopg.Connection[Any]]:
    """An empty queue, and a connection outside Django's to see what is committed."""
    with psycopg.connect(project, autocommit=True) as conn:
        conn.execute("DELETE FROM svti_jobs")
        yield conn


def committed(db: psycopg.Connection[Any]) -> list[tuple[str, Any]]:
    return db.execute("SELECT type, payload FROM svti_jobs ORDER BY id").fetchall()


def work(alias: str = "default") -> None:
    """A worker, in this process, until nothing is left to run."""
    from jobq_core.contrib.django import make_runner

    make_runner(alias, concurrency=2, poll_interval=0.1).serve_forever(until_idle=True)


def test_a_rolled_back_enqueue_enqueues_nothing(jobs: psycopg.Connection[Any]) -> None:
    from django.db import connection, transaction

    from jobq_core.contrib.django import TaskResultDoesNotExist
    from tests.django_project.shop.models import Order
    from tests.django_project.shop.tasks import add

    with pytest.raises(Rollback), transaction.atomic():
        Order.objects.create(item="tea")
        result = add.enqueue(2, 3)
        with connection.cursor() as cur:  # in the caller's transaction, beside its order
            cur.execute("SELECT count(*) FROM svti_jobs")
            assert cur.fetchone() == (1,)
        assert committed(jobs) == []
        raise Rollback
    assert committed(jobs) == []
    assert not Order.objects.filter(item="tea").exists()
    for unknown in (result.id, "django:nothing", "9" * 30, "١٢"):
        with pytest.raises(TaskResultDoesNotExist):
            add.get_result(unknown)


def test_a_committed_task_runs_and_its_result_is_reported(
    jobs: psycopg.Connection[Any],
) -> None:
    from django.db import transaction

    from jobq_core.contrib.django import TaskResultStatus
    from tests.django_project.shop.models import Order
    from tests.django_project.shop.tasks import add, count_orders

    with transaction.atomic():
        Order.objects.create(item="tea")
        result = add.using(priority=5).enqueue(2, b=3)
        orders = count_orders.enqueue("tea")
    assert committed(jobs) == [
        ("django:default", {"task": "tests.django_project.shop.tasks.add", "args": [2],
                            "kwargs": {"b": 3}}),
        ("django:mail", {"task": "tests.django_project.shop.tasks.count_orders",
                         "args": ["tea"], "kwargs": {}})]
    ready = add.get_result(result.id)
    assert (ready.status, ready.args, ready.kwargs, ready.attempts) == (
        TaskResultStatus.READY, [2], {"b": 3}, 0)
    assert ready.enqueued_at is not None and ready.started_at is None
    work()
    done = add.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 5
    assert done.errors == [] and done.attempts == 1 and done.worker_ids[0]
    assert done.enqueued_at <= done.started_at <= done.finished_at  # type: ignore[operator]
    assert done.last_attempted_at == done.started_at
    # The worker reads the database through Django, and sees the committed order.
    assert count_orders.get_result(orders.id).return_value == {"item": "tea", "orders": 1}
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5


def test_a_failed_task_reports_its_error(jobs: psycopg.Connection[Any]) -> None:
    from jobq_core.contrib.django import TaskResultStatus
    from tests.django_project.shop.tasks import OutOfStockError, out_of_stock

    result = out_of_stock.enqueue("tea")  # autocommit: committed at once
    work()
    failed = out_of_stock.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.finished_at is not None and failed.attempts == 1
    [error] = failed.errors
    assert error.exception_class is OutOfStockError
    assert "no tea left" in error.traceback and "raise OutOfStockError" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        failed.return_value  # noqa: B018


def test_deferred_and_context_taking_tasks(jobs: psycopg.Connection[Any]) -> None:
    from django.utils import timezone

    from jobq_core.contrib.django import TaskResultStatus
    from tests.django_project.shop.tasks import attempt

    later = attempt.using(run_after=timezone.now() + timedelta(hours=1)).enqueue()
    now = attempt.enqueue()
    work()
    assert attempt.get_result(later.id).status == TaskResultStatus.READY
    assert attempt.get_result(now.id).return_value == {"attempt": 1, "id": now.id}


def test_a_retried_task_keeps_its_errors(jobs: psycopg.Connection[Any]) -> None:
    from jobq_core.contrib.django import TaskResultStatus
    from tests.django_project.shop.tasks import flaky

    result = flaky.enqueue()
    work("retrying")  # and its retry, a second later
    done = flaky.get_result(result.id)
    assert (done.status, done.attempts) == (TaskResultStatus.SUCCESSFUL, 2)
    assert done.return_value == {"attempt": 2, "status": "RUNNING",
                                 "errors": ["builtins.ConnectionError"]}
    assert [e.exception_class for e in done.errors] == [ConnectionError]
    assert "the shipping service is down" in done.errors[0].traceback


def test_on_commit_enqueues_after_the_commit_only(jobs: psycopg.Connection[Any]) -> None:
    from django.db import connection, transaction

    from jobq_core.contrib.django import TaskResultDoesNotExist, TaskResultStatus
    from tests.django_project.shop.tasks import add

    later = add.using(backend="on_commit")
    with pytest.raises(Rollback), transaction.atomic():
        dropped = later.enqueue(1, 1)
        raise Rollback
    with transaction.atomic():
        kept = later.enqueue(20, 22)
        with connection.cursor() as cur:  # not even in the caller's own transaction yet
            cur.execute("SELECT count(*) FROM svti_jobs")
            assert cur.fetchone() == (0,)
        with pytest.raises(TaskResultDoesNotExist):
            later.get_result(kept.id)
    assert [payload["args"] for _, payload in committed(jobs)] == [[20, 22]]
    with pytest.raises(TaskResultDoesNotExist):
        later.get_result(dropped.id)
    work("on_commit")
    done = later.get_result(kept.id)
    assert (done.status, done.return_value, done.id) == (TaskResultStatus.SUCCESSFUL, 42, kept.id)


def test_jobq_worker_runs_django_tasks(jobs: psycopg.Connection[Any], project: str) -> None:
    from jobq_core import JobQueue
    from jobq_core.contrib.django import TaskResultStatus
    from tests.django_project.shop.tasks import add

    result = add.enqueue(40, 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": SETTINGS,
           "JOBQ_DJANGO_DSN": project}
    proc = subprocess.Popen([JOBQ, "worker", "jobq_core.contrib.django:runner"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with JobQueue(project) as queue:
            assert queue.wait(int(result.id), timeout=30) == 42
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "django:default" in err and "django:mail" in err  # the banner's types
    assert add.get_result(result.id).status == TaskResultStatus.SUCCESSFUL


def test_the_worker_needs_django_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([JOBQ, "worker", "jobq_core.contrib.django:runner"], check=False,
                          cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "DJANGO_SETTINGS_MODULE" in done.stderr


def test_the_core_does_not_import_django() -> None:
    code = ("import sys, jobq_core, jobq_core.runner, jobq_core.admin, jobq_cli.commands, "
            "jobq_core.contrib\nprint(any(m.partition('.')[0] in ('django', 'django_tasks') "
            "for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.usefixtures("project")
def test_a_misconfigured_backend_says_what_is_wrong() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from jobq_core.contrib.django import JobqBackend

    for params, says in (({"OPTIONS": {"ENQUEUE": "later"}}, "ENQUEUE must be"),
                         ({"OPTIONS": {"MAX_ATTEMPTS": 0}}, "MAX_ATTEMPTS must be"),
                         ({"OPTIONS": {"DNS": "x"}}, "unknown OPTIONS"),
                         ({"QUEUES": []}, "QUEUES must name"),
                         ({"QUEUES": ["no spaces"]}, "invalid queue name"),
                         ({"OPTIONS": {"DATABASE": "nope"}}, "nope")):
        with pytest.raises(ImproperlyConfigured, match=says):
            JobqBackend("broken", params)
    assert JobqBackend("fine", {"OPTIONS": {"DSN": "dbname=elsewhere"}}).enqueue_mode == \
        "on_commit"
