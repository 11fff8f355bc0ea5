"""`jobq worker module:runner` through the installed entry point, as an operator runs it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from jobq_core import JobFailedError, JobQueue, NewJob
from jobq_core.admin import Admin

JOBQ = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"

TASKS = textwrap.dedent('''
    import os, time
    from jobq_core import JobQueue, create_task_runner

    runner = create_task_runner(JobQueue(os.environ["APP_DSN"]), shutdown_timeout=0.5)

    @runner.task("work")
    def work(payload, ctx):
        if payload.get("sleep"):
            time.sleep(payload["sleep"])
        if payload.get("say"):
            ctx.logger.info(payload["say"])
        return {"done": payload["n"], "request_id": ctx.request_id}

    @runner.task("boom", max_attempts=1)
    def boom(payload, ctx):
        raise ValueError("boom")
''')


def _start(tmp_path: Path, dsn: str, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "myapp_tasks.py").write_text(TASKS)
    env = {**os.environ, "APP_DSN": dsn, "PYTHONPATH": str(tmp_path)}
    return subprocess.Popen([JOBQ, "worker", "myapp_tasks:runner", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_worker_serves_then_stops_on_sigterm(
    tmp_path: Path, dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    ids = queue.enqueue_many([NewJob("work", {"n": i}, request_id="req-cli") for i in range(20)])
    proc = _start(tmp_path, dsn, "--concurrency", "3")
    try:
        assert [queue.wait(i, timeout=30)["done"] for i in ids] == list(range(20))
        slow = queue.enqueue("work", {"n": 99, "sleep": 30})
        deadline = time.monotonic() + 10
        while db.execute("SELECT count(*) FROM svti_jobs WHERE state = 'claimed'"
                         ).fetchone()[0] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "serving boom, work with concurrency 3 as worker " in stderr
    # The slow job was handed back, not lost and not charged an attempt.
    assert db.execute("SELECT state, attempts FROM svti_jobs WHERE id = %s",
                      (slow,)).fetchone() == ("pending", 0)


def test_a_drained_worker_exits_with_status_0_once_its_jobs_finish(
    tmp_path: Path, dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    running = queue.enqueue("work", {"n": 1, "sleep": 2})
    proc = _start(tmp_path, dsn)
    try:
        deadline = time.monotonic() + 20
        # Claimed, and registered (the first beat and the first claim run side by side).
        while db.execute("SELECT count(*) FROM svti_jobs WHERE state = 'claimed'"
                         ).fetchone()[0] == 0 or not (
                worker := db.execute("SELECT id FROM svti_jobs_workers").fetchone()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (worker_id,) = worker
        Admin(queue).drain(worker_id, by="ops@desk")
        _, stderr = proc.communicate(timeout=30)  # no signal: the drain ends it
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert queue.wait(running, timeout=1) == {"done": 1, "request_id": None}
    assert "draining at the request of ops@desk" in stderr
    assert "completed 1," in stderr and "handed back 0" in stderr
    assert db.execute("SELECT count(*) FROM svti_jobs_workers").fetchone()[0] == 0


def test_worker_rejects_a_bad_target(tmp_path: Path, dsn: str) -> None:
    for target, message in [("nosuchmodule:runner", "cannot import"),
                            ("myapp_tasks:nothing", "no attribute"),
                            ("myapp_tasks:os", "is not a TaskRunner"),
                            ("no-colon", "expected module:attribute")]:
        (tmp_path / "myapp_tasks.py").write_text(TASKS)
        result = subprocess.run(
            [JOBQ, "worker", target], cwd=tmp_path, capture_output=True, text=True, timeout=30,
            env={**os.environ, "APP_DSN": dsn, "PYTHONPATH": str(tmp_path)}, check=False)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0]


def test_worker_logs_its_banner_each_failed_attempt_and_a_summary(
    tmp_path: Path, dsn: str, db: psycopg.Connection[Any]
) -> None:
    """An operator reads what the worker is doing from stderr alone: where it serves (no
    password) under which registry id, every failed attempt with its job and request id, what
    handlers log through ctx.logger, and what it did at exit."""
    secret_dsn = make_conninfo(dsn, password="S3cr3tPw")  # trust auth: any password passes
    queue = JobQueue(dsn)
    failing = queue.enqueue("boom", {}, request_id="req-boom")
    done = queue.enqueue("work", {"n": 1, "say": "hello from the handler"}, request_id="req-ok")
    proc = _start(tmp_path, secret_dsn, "--log-level", "INFO")
    try:
        with pytest.raises(JobFailedError):
            queue.wait(failing, timeout=30)
        queue.wait(done, timeout=30)
        deadline = time.monotonic() + 20
        while not (worker := db.execute("SELECT id FROM svti_jobs_workers").fetchone()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (worker_id,) = worker
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "S3cr3tPw" not in stderr
    lines = stderr.splitlines()
    # Every line: an ISO time with its zone, the level, the logger.
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "
                        r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.-]+: ", line)
               for line in lines if not line.startswith((" ", "Traceback", "ValueError"))), stderr
    banner = next(line for line in lines if "INFO jobq.runner: serving" in line)
    assert "serving boom, work with concurrency 10" in banner, banner
    assert f"as worker {worker_id} " in banner and "password=***" in banner, banner
    assert "table svti_jobs" in banner, banner
    assert (f"WARNING jobq.runner: job {failing} (boom, request req-boom): attempt 1 failed, "
            "failed for good: ValueError: boom") in stderr
    assert (f"INFO jobq.task.work: [job {done} req req-ok] hello from the handler") in stderr
    summary = next(line for line in lines if "jobq.runner: stopped:" in line)
    assert re.search(r"stopped: completed 1, retried 0, failed 1, cancelled 0, discarded 0, "
                     r"handed back 0.*; up \d+\.\ds$", summary), summary
    # A clean stop leaves the registry.
    assert db.execute("SELECT count(*) FROM svti_jobs_workers").fetchone()[0] == 0


def test_worker_log_level_is_checked_and_read_from_the_environment(
    tmp_path: Path, dsn: str
) -> None:
    (tmp_path / "myapp_tasks.py").write_text(TASKS)
    env = {**os.environ, "APP_DSN": dsn, "PYTHONPATH": str(tmp_path)}
    for args, extra in [(["--log-level", "LOUD"], {}), ([], {"JOBQ_LOG_LEVEL": "verbose"})]:
        result = subprocess.run([JOBQ, "worker", "myapp_tasks:runner", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=30,
                                env={**env, **extra}, check=False)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--log-level must be one of DEBUG, INFO, WARNING, ERROR" \
            in lines[0], lines
    # WARNING from the environment: no banner, no summary, but the failure still shows.
    queue = JobQueue(dsn)
    failing = queue.enqueue("boom", {}, request_id="req-quiet")
    proc = subprocess.Popen([JOBQ, "worker", "myapp_tasks:runner"], cwd=tmp_path,
                            env={**env, "JOBQ_LOG_LEVEL": "warning"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(JobFailedError):
            queue.wait(failing, timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "serving" not in stderr and "stopped:" not in stderr, stderr
    assert f"job {failing} (boom, request req-quiet): attempt 1 failed" in stderr


def test_version() -> None:
    result = subprocess.run([JOBQ, "version"], capture_output=True, text=True, check=True)
    import jobq_core

    assert result.stdout.strip() == jobq_core.__version__
