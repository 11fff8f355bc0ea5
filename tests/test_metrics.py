"""Prometheus metrics against real Postgres and a real runner, scraped over real HTTP: the
counters match the ledger (the events table), the depth gauges match the jobs table, and
`jobq metrics` prints the queue's gauges in a form Prometheus parses."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from jobq_cli.commands import app
from jobq_core import InvalidInputError, JobQueue, NewJob, create_task_runner, metrics
from jobq_core.admin import Admin

from . import runner_tasks
from .helpers import backdate
from .test_cli_worker import JOBQ
from .test_runner import serving, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels; parsing it is the format's test."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def by_type(samples: Samples, name: str) -> dict[str, float]:
    """A metric's samples labelled only by type, zeros left out."""
    return {dict(labels)["type"]: value for (n, labels), value in samples.items()
            if n == name and value and set(dict(labels)) == {"type"}}


def ledger(db: psycopg.Connection[Any]) -> dict[str, dict[str, float]]:
    """What the events table says happened, as the counters name it: a claim of an expired
    lease is a `recovered` event there, and a claim all the same."""
    found: dict[str, dict[str, float]] = {}
    for job_type, event, n in db.execute(
            "SELECT type, CASE event WHEN 'recovered' THEN 'claimed' ELSE event END, count(*) "
            "FROM svti_jobs_events GROUP BY 1, 2"):
        found.setdefault(event, {})[job_type] = n
    return found


def depth(db: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    """Jobs by type and state, pending ones split into ready and scheduled, zeros left out."""
    return {(t, s): n for t, s, n in db.execute(
        "SELECT type, CASE WHEN state <> 'pending' THEN state::text "
        "WHEN run_at <= now() THEN 'ready' ELSE 'scheduled' END, count(*) "
        "FROM svti_jobs GROUP BY 1, 2")}


def depth_of(samples: Samples) -> dict[tuple[str, str], int]:
    return {(dict(labels)["type"], dict(labels)["state"]): int(value)
            for (name, labels), value in samples.items()
            if name == "jobq_queue_jobs" and value}


def flaky(payload: Any, ctx: Any) -> Any:
    if ctx.attempt == 1:
        raise RuntimeError("first attempts fail")
    return "second time lucky"


def until_cancelled(payload: Any, ctx: Any) -> Any:
    ctx.cancelled.wait(30)


def test_a_serving_runner_exports_what_the_ledger_shows(
    dsn: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "DEPTH_EVERY", 0.2)
    queue = JobQueue(dsn)
    runner = create_task_runner(queue, concurrency=4, metrics_port=0,
                                metrics_addr="127.0.0.1", heartbeat_interval=0.5)
    runner.register("fine", runner_tasks.noop)
    runner.register("flaky", flaky, max_attempts=3, backoff=lambda n: 0.0)
    runner.register("doomed", runner_tasks.boom, max_attempts=2, backoff=lambda n: 0.0)
    # Counted in the runner's process, not in the child that runs the handler.
    runner.register("in-a-child", runner_tasks.noop, executor="process")
    runner.register("victim", until_cancelled)
    victim = queue.enqueue("victim", priority=10)
    queue.enqueue_many([NewJob("fine", {"n": n}) for n in range(5)]
                       + [NewJob("flaky") for _ in range(3)]
                       + [NewJob("doomed") for _ in range(2)]
                       + [NewJob("in-a-child", {"n": n}) for n in range(2)])
    queue.enqueue("fine", run_at=timedelta(hours=1))  # scheduled: in the depth only
    overdue = queue.enqueue("fine", {"n": 5})  # due two hours ago: past the last bucket
    db.execute("UPDATE svti_jobs SET run_at = now() - interval '2 hours' WHERE id = %s",
               (overdue,))

    with serving(runner):
        assert runner.metrics is not None and runner.metrics.port
        port = runner.metrics.port
        wait_until(lambda: runner.counters["completed"] == 11 and runner.counters["failed"] == 2,
                   what="the jobs done")
        busy = scrape(port)
        assert busy[("jobq_runner_in_flight", ())] == 1  # the victim, still running
        assert busy[("jobq_runner_free_slots", ())] == 3
        Admin(queue).cancel([victim], reason="enough", by="tester")
        wait_until(lambda: runner.counters["cancelled"] == 1, what="the cancel counted")
        # The depth as read after everything happened (it is read every DEPTH_EVERY s).
        wait_until(lambda: depth_of(scrape(port)) == depth(db), what="the depth read")
        samples = scrape(port)

    happened = ledger(db)
    expected = {"claimed": {"fine": 6, "flaky": 6, "doomed": 4, "in-a-child": 2, "victim": 1},
                "completed": {"fine": 6, "flaky": 3, "in-a-child": 2},
                "retried": {"flaky": 3, "doomed": 2},
                "failed": {"doomed": 2},
                "cancelled": {"victim": 1}}
    for kind, counts in expected.items():
        assert happened[kind] == counts, kind  # the scenario went as planned
        assert by_type(samples, f"jobq_jobs_{kind}_total") == counts, kind
    for kind in ("lease_lost", "snoozed", "released", "timed_out"):
        assert by_type(samples, f"jobq_jobs_{kind}_total") == {}, kind
    # One wait per claim; one run time per completed, retried or failed attempt.
    assert by_type(samples, "jobq_job_wait_seconds_count") == expected["claimed"]
    runs: Counter[str] = Counter()
    for kind in ("completed", "retried", "failed"):
        runs.update(expected[kind])
    assert by_type(samples, "jobq_job_run_seconds_count") == dict(runs)
    waits = {dict(labels)["le"]: n for (name, labels), n in samples.items()
             if name == "jobq_job_wait_seconds_bucket" and ("type", "fine") in labels}
    assert waits["3600.0"] == 5 and waits["+Inf"] == 6
    assert 2 * 3600 <= samples[("jobq_job_wait_seconds_sum", (("type", "fine"),))] < 2.1 * 3600
    assert depth_of(samples) == {("fine", "scheduled"): 1, ("doomed", "failed"): 2,
                                 ("victim", "cancelled"): 1}
    assert samples[("jobq_runner_in_flight", ())] == 0
    assert samples[("jobq_runner_free_slots", ())] == 4
    with pytest.raises(OSError):  # served only while the runner serves
        scrape(port)
    queue.close()


def test_a_lease_taken_by_another_claimer_counts_as_lease_lost(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    queue = JobQueue(dsn)
    # One slot, which the victim holds: only the thief can take the expired lease back.
    runner = create_task_runner(queue, concurrency=1, heartbeat_interval=0.2, lease_ms=60_000,
                                metrics_port=0, metrics_addr="127.0.0.1")
    started = threading.Event()

    @runner.task("victim")
    def victim(payload: Any, ctx: Any) -> Any:
        started.set()
        ctx.cancelled.wait(30)

    job_id = queue.enqueue("victim")
    with serving(runner):
        assert started.wait(10) and runner.metrics is not None and runner.metrics.port

        def steal() -> Any:
            backdate(db, job_id, lease_until="1 second")  # a beat may renew it: try again
            return queue.claim(types=["victim"])

        thief = wait_until(steal, what="the reclaim")
        wait_until(lambda: runner.counters["discarded"] == 1, what="the result discarded")
        samples = scrape(runner.metrics.port)
        queue.complete(thief)
    assert by_type(samples, "jobq_jobs_lease_lost_total") == {"victim": 1}
    assert by_type(samples, "jobq_jobs_claimed_total") == {"victim": 1}  # the thief's is not
    for kind in ("completed", "retried", "failed", "cancelled"):
        assert by_type(samples, f"jobq_jobs_{kind}_total") == {}, kind
    queue.close()


def test_a_metrics_port_in_use_is_refused_before_serving(dsn: str) -> None:
    queue = JobQueue(dsn)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runner = create_task_runner(queue, metrics_port=port, metrics_addr="127.0.0.1")
        runner.register("work", runner_tasks.noop)
        job_id = queue.enqueue("work")
        with pytest.raises(InvalidInputError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            asyncio.run(runner.serve(until_idle=True))
    assert not runner.serving and runner.health()["status"] == "stopped"
    assert queue.outcome(job_id).state == "pending"  # nothing was claimed
    runner.metrics_port = 70_000
    with pytest.raises(InvalidInputError, match="metrics_port must be a port number"):
        asyncio.run(runner.serve(until_idle=True))
    queue.close()


def test_jobq_worker_serves_metrics_on_the_port_of_its_option_or_environment(
    tmp_path: Path, dsn: str, db: psycopg.Connection[Any]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "metrics_tasks.py").write_text(textwrap.dedent('''
        import os
        from jobq_core import JobQueue, create_task_runner

        runner = create_task_runner(JobQueue(os.environ["APP_DSN"]))
        runner.register("work", lambda payload, ctx: payload)
    '''))
    queue = JobQueue(dsn)
    ids = queue.enqueue_many([NewJob("work", n) for n in range(7)])
    env = {**os.environ, "APP_DSN": dsn, "PYTHONPATH": str(tmp_path),
           "JOBQ_METRICS_PORT": str(port), "JOBQ_METRICS_ADDR": "127.0.0.1"}
    proc = subprocess.Popen([JOBQ, "worker", "metrics_tasks:runner"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert [queue.wait(i, timeout=30) for i in ids] == list(range(7))
        # The runner counts a completion once its ack has committed: a moment after wait().
        samples = wait_until(lambda: _scrape_once_completed(port, 7),
                             what="the completions counted")
        assert by_type(samples, "jobq_jobs_completed_total") == ledger(db)["completed"] == {
            "work": 7}
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert f"serving metrics on http://127.0.0.1:{port}/metrics" in stderr
    queue.close()


def _scrape_once_completed(port: int, jobs: int) -> Samples | None:
    """A scrape that counts at least `jobs` completions, or None (nor one served yet)."""
    try:
        samples = scrape(port)
    except OSError:
        return None
    completed = sum(by_type(samples, "jobq_jobs_completed_total").values())
    return samples if completed >= jobs else None


def test_jobq_metrics_prints_the_queues_depth_in_the_exposition_format(
    dsn: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = JobQueue(dsn)
    queue.enqueue_many([NewJob("email") for _ in range(4)]
                       + [NewJob("email", run_at=timedelta(minutes=10)) for _ in range(2)]
                       + [NewJob("report") for _ in range(3)])
    claimed = queue.claim(types=["report"])
    dead = queue.claim(types=["report"])
    assert claimed is not None and dead is not None
    queue.fail(dead, reason="no")
    db.execute("UPDATE svti_jobs SET run_at = now() - interval '90 seconds' "
               "WHERE type = 'email' AND run_at <= now()")
    monkeypatch.delenv("JOBQ_DSN", raising=False)
    result = CliRunner().invoke(app, ["metrics", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    samples = parse(result.stdout)
    assert depth_of(samples) == depth(db) == {
        ("email", "ready"): 4, ("email", "scheduled"): 2, ("report", "ready"): 1,
        ("report", "claimed"): 1, ("report", "failed"): 1}
    assert 89 < samples[("jobq_queue_oldest_ready_age_seconds", (("type", "email"),))] < 150
    assert {name for name, _ in samples} == {"jobq_queue_jobs",
                                             "jobq_queue_oldest_ready_age_seconds"}
    queue.close()


def test_jobq_metrics_errors_are_one_line_with_their_exit_code() -> None:
    unreachable = subprocess.run([JOBQ, "metrics", "--dsn", "postgresql://u:secret@127.0.0.1:1/x"],
                                 capture_output=True, text=True, timeout=60, check=False)
    assert unreachable.returncode == 5
    assert len(unreachable.stderr.splitlines()) == 1 and "secret" not in unreachable.stderr
    # Without the extra: prometheus_client made unimportable, as in a lean install.
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from jobq_cli.commands import main; sys.argv = ['jobq', 'metrics']; main()")
    lean = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert lean.returncode == 1
    assert lean.stderr.splitlines() == [
        "jobq: metrics need the [metrics] extra: pip install 'jobq[metrics]'"]
