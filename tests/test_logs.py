"""Structured logs (issue 15): `jobq worker --log-format json` writes one JSON object per
line, and every record a handler logs through `ctx.logger` carries the job id, type, attempt,
request id and worker, from thread, async and process handlers alike."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg

from jobq_core import JobQueue
from jobq_core.logs import JsonFormatter, LineFormatter, bound_logger
from jobq_core.models import Job

from .test_cli_worker import JOBQ

TASKS = textwrap.dedent('''
    import os
    from jobq_core import JobQueue, create_task_runner

    runner = create_task_runner(JobQueue(os.environ["APP_DSN"]), shutdown_timeout=0.5)

    @runner.task("sync-work")
    def sync_work(payload, ctx):
        ctx.logger.info("thread says %s", payload["n"])
        return payload["n"]

    @runner.task("async-work")
    async def async_work(payload, ctx):
        ctx.logger.warning("async says %s", payload["n"])
        return payload["n"]

    @runner.task("process-work", executor="process")
    def process_work(payload, ctx):
        ctx.logger.info("process says %s", payload["n"])
        return payload["n"]

    @runner.task("boom", max_attempts=2, backoff=lambda attempt: 0)
    def boom(payload, ctx):
        try:
            raise ValueError("a \\"quoted\\"\\nline")
        except ValueError:
            ctx.logger.exception("boom on attempt %s", ctx.attempt)
        raise RuntimeError("failed")
''')


def job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": 7, "type": "send-email", "payload": None, "priority": 0, "run_at": None,
        "attempts": 2, "request_id": "req-1", "idempotency_key": None, "lease_token": None,
        "lease_until": None, "claimed_by": "web-1:42", "created_at": None}
    return Job(**(values | fields))


def test_a_json_line_carries_the_jobs_ids_and_the_message_as_written(
    caplog: Any
) -> None:
    formatter = JsonFormatter(worker_id="web-1:42:abcd")
    with caplog.at_level(logging.INFO, "jobq.task"):
        bound_logger(job()).info("sent to %s", "ann@example.com\n\x1b[31m")
    record = caplog.records[-1]
    data = json.loads(formatter.format(record))
    assert data | {"ts": None} == {
        "ts": None, "level": "INFO", "logger": "jobq.task.send-email",
        "message": "sent to ann@example.com\n\x1b[31m", "job_id": 7, "type": "send-email",
        "attempt": 2, "request_id": "req-1", "worker": "web-1:42",
        "worker_id": "web-1:42:abcd"}
    assert "\n" not in formatter.format(record)  # one line, whatever the message holds
    # The plain format keeps the ids in front of the message, as people read it.
    assert "INFO jobq.task.send-email: [job 7 req req-1] sent to" in \
        LineFormatter().format(record)


def test_jobq_worker_log_format_json_writes_one_object_per_line_with_the_ids(
    tmp_path: Path, dsn: str, db: psycopg.Connection[Any]
) -> None:
    (tmp_path / "json_tasks.py").write_text(TASKS)
    env = {**os.environ, "APP_DSN": dsn, "PYTHONPATH": str(tmp_path)}
    queue = JobQueue(dsn)
    ids = {kind: queue.enqueue(kind, {"n": n}, request_id=f"req-{kind}")
           for n, kind in enumerate(("sync-work", "async-work", "process-work"))}
    boom = queue.enqueue("boom", {}, request_id="req-boom")
    proc = subprocess.Popen([JOBQ, "worker", "json_tasks:runner", "--log-format", "json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for job_id in ids.values():
            queue.wait(job_id, timeout=30)
        deadline = time.monotonic() + 30
        while db.execute("SELECT state FROM svti_jobs WHERE id = %s", (boom,)).fetchone() != (
                "failed",):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (worker_id,) = db.execute("SELECT id FROM svti_jobs_workers").fetchone() or (None,)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        queue.close()
    assert proc.returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]  # every line parses
    assert all({"ts", "level", "logger", "message", "worker_id"} <= r.keys() for r in records)
    assert all(r["worker_id"] == worker_id for r in records)
    said = {r["type"]: r for r in records if r["logger"].startswith("jobq.task.")
            and r["type"] != "boom"}
    expected = {"sync-work": "thread says 0", "async-work": "async says 1",
                "process-work": "process says 2"}
    for kind, message in expected.items():
        assert said[kind]["message"] == message
        assert (said[kind]["job_id"], said[kind]["attempt"], said[kind]["request_id"]) == (
            ids[kind], 1, f"req-{kind}")
        assert said[kind]["worker"] is not None
    booms = [r for r in records if r.get("type") == "boom"]
    assert [r["attempt"] for r in booms] == [1, 2]
    assert 'ValueError: a "quoted"\nline' in booms[0]["exc"]
    assert any(r["logger"] == "jobq.runner" and "serving" in r["message"] for r in records)
