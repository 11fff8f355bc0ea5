"""The whole repair, as the operator at 3 a.m. does it: a real `jobq worker` serves a task
whose handler is broken, a job dies, the operator finds it in `jobq-tui` (in tmux, by keys),
the handler is fixed, `R` retries the job, and it runs again and completes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobq_core import JobQueue

from .helpers import events, row
from .test_tui_tmux import Terminal, terminal  # noqa: F401 - the fixture: the console in tmux

JOBQ = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

# The handler fails while the flag file exists; every call leaves a line in the calls file.
TASKS = textwrap.dedent('''
    import os
    from pathlib import Path
    from jobq_core import JobQueue, create_task_runner

    runner = create_task_runner(JobQueue(os.environ["APP_DSN"]), shutdown_timeout=0.5)

    @runner.task("charge-card", max_attempts=1)
    def charge(payload, ctx):
        with open(os.environ["CALLS"], "a") as calls:
            calls.write(f"{ctx.job.id}\\n")
        if Path(os.environ["BROKEN"]).exists():
            raise RuntimeError("CardProcessorDown: gateway refused the connection")
        return {"charged": payload["invoice"]}
''')


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)
    return value


def overview_row(term: Terminal, job_type: str) -> list[str]:
    """The cells of the overview's row for `job_type`, as the operator reads them."""
    return next((line.split() for line in term.screen().splitlines()
                 if line.split()[:1] == [job_type]), [])


@pytest.fixture
def worker(tmp_path: Path, dsn: str) -> Iterator[tuple[Path, Path]]:
    """A real `jobq worker` with a broken handler: (the flag that breaks it, its calls)."""
    (tmp_path / "repair_tasks.py").write_text(TASKS)
    broken, calls = tmp_path / "broken", tmp_path / "calls"
    broken.touch()
    env = {**os.environ, "APP_DSN": dsn, "PYTHONPATH": str(tmp_path), "BROKEN": str(broken),
           "CALLS": str(calls)}
    proc = subprocess.Popen([JOBQ, "worker", "repair_tasks:runner"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield broken, calls
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_dead_job_is_found_fixed_retried_and_completes(
    worker: tuple[Path, Path], terminal: Terminal,  # noqa: F811 - that fixture
    dsn: str, db: psycopg.Connection[Any],
) -> None:
    broken, calls = worker
    with JobQueue(dsn) as queue:
        # A type listed before the broken one: the cursor starts on it, and `f` must still
        # find the failure.
        queue.enqueue("audit-log", {"n": 1}, run_at=timedelta(hours=1))
        job_id = queue.enqueue("charge-card", {"invoice": 4242}, request_id="req-repair")
    eventually(lambda: (row(db, job_id) or {}).get("state") == "failed", "the job died")
    assert calls.read_text().split() == [str(job_id)]  # one attempt, and no more
    assert events(db, job_id)[-1] == "failed"

    # The overview: the dead job's type, with its failure counted.
    terminal.wait_for("audit-log", "charge-card", "failed", "updated")
    assert eventually(lambda: overview_row(terminal, "charge-card")[:6] == [
        "charge-card", "0", "0", "0", "0", "1"], "the overview counted the failure")

    terminal.keys("f")  # every failed job, whatever type is highlighted
    screen = terminal.wait_for("CardProcessorDown", str(job_id))
    assert "/ failed" in screen and "charge-card" in screen

    broken.unlink()  # the fix is deployed

    terminal.keys("R")  # one job: retried at once, with a toast
    terminal.wait_for("re-enqueued")
    eventually(lambda: "completed" in events(db, job_id), "the retried job completed")
    assert row(db, job_id) is None  # done: it left the queue
    assert calls.read_text().split() == [str(job_id)] * 2  # the handler really ran again
    completed = db.execute(
        "SELECT payload FROM svti_jobs_events WHERE job_id = %s AND event = 'completed'",
        (job_id,)).fetchone()
    assert completed == ({"invoice": 4242},)

    # The failed list no longer shows it; back on the overview, nothing has failed.
    eventually(lambda: "CardProcessorDown" not in terminal.screen(), "the failed list emptied")
    terminal.keys("Escape")
    terminal.wait_for("fail/min", "charge-card")
    assert eventually(lambda: overview_row(terminal, "charge-card")[1:6] == ["0"] * 5,
                      "the overview shows nothing failed, waiting or running")
