"""The README's commands and quick start are real: CI runs the first, a test runs the second."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = next(b.strip() for b in _blocks("bash") if "pytest" in b)
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_quick_start_runs(dsn: str, db: psycopg.Connection[Any]) -> None:
    code = next(b for b in _blocks("python") if "create_job_queue" in b)
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "JOBQ_DSN": dsn},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "sending alice@example.com for request req-8f2c" in result.stdout
    assert db.execute("SELECT event FROM svti_jobs_events ORDER BY id").fetchall() == [
        ("enqueued",), ("claimed",), ("completed",)]


def test_runner_example_runs(tmp_path: Path, dsn: str, monkeypatch: Any) -> None:
    """The README's task-runner example, imported as a module (process handlers must be
    importable), serving one job of each kind."""
    import importlib

    code = next(b for b in _blocks("python") if "create_task_runner" in b)
    (tmp_path / "readme_tasks.py").write_text(code)
    monkeypatch.setenv("JOBQ_DSN", dsn)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("readme_tasks")
    queue, runner = module.queue, module.runner
    resize = queue.enqueue("resize-image", {"path": "/tmp/cat.png"}, request_id="req-readme")
    crunch = queue.enqueue("crunch", {"n": 1000})
    fetch = queue.enqueue("fetch")
    runner.register("notify-user", lambda payload, ctx: ctx.request_id)
    runner.serve_forever(until_idle=True)
    assert queue.wait(resize, timeout=10) == {"ok": True}
    assert queue.wait(crunch, timeout=10) == sum(range(1000))
    assert queue.wait(fetch, timeout=10) == {"status": 200}
    with psycopg.connect(dsn) as db:
        assert db.execute("SELECT result FROM svti_jobs_events WHERE type = 'notify-user' "
                          "AND event = 'completed'").fetchone() == ("req-readme",)
    queue.close()


def test_every_linked_test_exists() -> None:
    """Each promise in the README links to the test that proves it: every such link names a
    test that is really there."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\[`(test_\w+)`\]\((tests/[\w/]+\.py)\)", text)
    assert len(links) >= 20
    for name, path in links:
        source = (ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{path} has no {name}"
    for path in re.findall(r"\]\((tests/[\w/]+\.py)\)", text):
        assert (ROOT / path).exists(), path
