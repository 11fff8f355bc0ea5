"""The demo workload: every kind of job an operator meets, under shared request ids."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

import psycopg

from jobq_cli.demo import Demo

JOBQ = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"


def test_demo_produces_every_kind_of_job(dsn: str, db: psycopg.Connection[Any]) -> None:
    demo = Demo(dsn, rate=25, seed=7)
    demo.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = dict(db.execute(
                "SELECT type || ':' || event, count(*) FROM svti_jobs_events GROUP BY 1"
            ).fetchall())
            if all(k in seen for k in ("fast:completed", "flaky:retried", "flaky:completed",
                                       "poison:failed", "slow:claimed", "scheduled:enqueued",
                                       "report:completed")):
                break
            time.sleep(0.25)
    finally:
        demo.stop()
    assert seen.get("fast:completed", 0) > 10
    assert {"flaky:retried", "flaky:completed", "poison:failed", "slow:claimed",
            "report:completed"} <= set(seen)
    # Jobs of one burst share a request id, so a trace shows the whole request.
    shared = db.execute("SELECT count(DISTINCT job_id) FROM svti_jobs_events "
                        "GROUP BY request_id ORDER BY 1 DESC LIMIT 1").fetchone()[0]
    assert shared > 1
    assert db.execute("SELECT count(*) FROM svti_jobs_events WHERE request_id IS NULL"
                      ).fetchone() == (0,)
    # Stopped gracefully: nothing is left claimed.
    assert db.execute("SELECT count(*) FROM svti_jobs WHERE state = 'claimed'").fetchone() == (0,)


def test_jobq_demo_runs_on_its_own_embedded_postgres() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOBQ_DSN", "DATABASE_URL", "JOBQ_TEST_DSN")}
    result = subprocess.run([JOBQ, "demo", "--headless", "--seconds", "4", "--rate", "10"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "starting a private Postgres" in result.stderr
    assert " ready, " in result.stdout and " claimed, " in result.stdout
