"""A worker-only install: `pip install jobq` with no extras brings the library and the `jobq`
command line, and neither the console's textual, the embedded server's pgserver nor the
metrics' prometheus_client."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What a build of the project reads: everything else (.venv, tests, benchmarks) stays out.
SOURCES = ("pyproject.toml", "README.md", "jobq_core", "jobq_cli", "jobq_tui")
OPTIONAL = {"textual", "pgserver", "opentelemetry", "prometheus_client"}


def test_the_library_and_the_cli_never_import_the_console_pgserver_or_prometheus() -> None:
    # Here both are installed, so nothing but the imports themselves can keep them out.
    code = (
        "import sys, jobq_core, jobq_core.runner, jobq_core.admin, jobq_cli.commands\n"
        "found = {m.partition('.')[0] for m in sys.modules} & {'textual', 'pgserver', "
        "'jobq_tui', 'prometheus_client'}\n"
        "print(' '.join(sorted(found)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == []


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with `pip install <project>` and no extras."""
    base = tmp_path_factory.mktemp("lean")
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, source / name)
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    subprocess.run([env_dir / "bin" / "pip", "install", "-q", "--disable-pip-version-check",
                    str(source)], check=True, timeout=600)
    return env_dir / "bin"


def test_a_clean_install_without_extras_has_no_console_server_or_metrics(
        lean_venv: Path) -> None:
    code = (
        "import importlib.util, sys\n"
        "import jobq_core, jobq_cli.commands\n"
        f"print(' '.join(sorted(n for n in {sorted(OPTIONAL)!r} "
        "if importlib.util.find_spec(n) is not None)))\n"
    )
    done = subprocess.run([lean_venv / "python", "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == []


def test_jobs_run_without_opentelemetry(lean_venv: Path, dsn: str) -> None:
    """Without the otel extra nothing is traced and nothing breaks: the trace context stored
    is NULL, and the runner runs the job."""
    code = (
        "import sys\n"
        "from jobq_core import JobQueue, create_task_runner, tracing\n"
        "queue = JobQueue(sys.argv[1])\n"
        "job_id = queue.enqueue('t', 21)\n"
        "runner = create_task_runner(queue)\n"
        "runner.register('t', lambda payload, ctx: payload * 2)\n"
        "runner.serve_forever(until_idle=True)\n"
        "print(tracing.ENABLED, queue.wait(job_id, timeout=5))\n"
    )
    done = subprocess.run([lean_venv / "python", "-c", code, dsn], capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "42"]
    with psycopg.connect(dsn) as db:
        assert db.execute("SELECT traceparent FROM svti_jobs_events WHERE event = 'enqueued'"
                          ).fetchall() == [(None,)]


def test_jobq_worker_runs_without_extras(lean_venv: Path) -> None:
    done = subprocess.run([lean_venv / "jobq", "worker", "--help"], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--concurrency" in done.stdout


def test_the_console_without_its_extra_says_which_to_install(lean_venv: Path) -> None:
    done = subprocess.run([lean_venv / "jobq-tui"], check=False, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "jobq-tui: the console needs the [tui] extra: pip install 'jobq[tui]'"]


def test_a_worker_asked_for_metrics_without_their_extra_says_which_to_install(
        lean_venv: Path, tmp_path: Path, dsn: str) -> None:
    (tmp_path / "lean_tasks.py").write_text(
        "from jobq_core import JobQueue, create_task_runner\n"
        f"runner = create_task_runner(JobQueue({dsn!r}))\n"
        "runner.register('work', lambda payload, ctx: None)\n")
    done = subprocess.run([lean_venv / "jobq", "worker", "lean_tasks:runner", "--metrics-port",
                           "0"], check=False, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "jobq: metrics need the [metrics] extra: pip install 'jobq[metrics]'")
