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
