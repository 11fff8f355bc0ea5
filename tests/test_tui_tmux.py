"""The real `jobq-tui` in a real terminal (tmux), driven with keys as a person would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobq_core import JobQueue

from .helpers import row

JOBQ_TUI = shutil.which("jobq-tui", path=os.path.dirname(sys.executable)) or "jobq-tui"
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def start(name: str, command: str) -> None:
    """A 100x30 tmux window running `command`. The window is sized before the command starts,
    and COLUMNS and LINES are dropped: the tmux server inherits this process's environment,
    where they can be set (80x24), and Textual would take them over the real window size."""
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30",
                    "sleep 600"], check=True)
    subprocess.run(["tmux", "respawn-pane", "-k", "-t", name,
                    f"env -u COLUMNS -u LINES {command}"], check=True)


class Terminal:
    def __init__(self, name: str) -> None:
        self.name = name

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, *texts: str, timeout: float = 20.0) -> str:
        """The screen once every one of `texts` is on it. A capture can land while the app
        is still drawing, so a check waits for all it will look at."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if all(text in screen for text in texts):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{texts!r} never all showed; the screen was:\n{screen}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name],
                              capture_output=True, check=False).returncode == 0


@pytest.fixture
def terminal(dsn: str) -> Iterator[Terminal]:
    name = f"jobq-tui-{uuid.uuid4().hex[:8]}"
    env = f"TERM=xterm-256color JOBQ_DSN='{dsn}'"
    start(name, f"{env} {JOBQ_TUI} --refresh 0.5")
    try:
        yield Terminal(name)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, check=False)


def test_an_operator_finds_a_failed_job_and_retries_it(
    terminal: Terminal, dsn: str, db: psycopg.Connection[Any]
) -> None:
    with JobQueue(dsn) as queue:
        for n in range(3):
            queue.enqueue("send-email", {"n": n}, request_id="req-tmux")
        job_id = queue.enqueue("charge-card", {"invoice": 7}, request_id="req-tmux")
        job = queue.claim(types=["charge-card"], worker="billing-1:99")
        assert job is not None
        queue.fail(job, reason="[red]PaymentDeclined[/red]: card \x1b[5mblinks", retry=False)

    screen = terminal.wait_for("charge-card", "send-email", "ready", "query", "updated")
    assert "send-email" in screen and "ready" in screen
    assert "query" in screen and "updated" in screen  # the freshness badge

    terminal.keys("f")  # the failed jobs of the selected type
    screen = terminal.wait_for("[red]PaymentDeclined[/red]", "\\x1b[5mblinks")
    assert "[red]PaymentDeclined[/red]" in screen  # markup is text
    assert "\\x1b[5mblinks" in screen  # the escape is shown, not obeyed

    terminal.keys("Enter")  # the job's detail
    screen = terminal.wait_for('"invoice": 7', f"job {job_id}", "billing-1:99")
    assert f"job {job_id}" in screen and "billing-1:99" in screen

    terminal.keys("R")  # one retry runs at once, with a toast
    terminal.wait_for("re-enqueued")
    assert row(db, job_id)["state"] == "pending"  # type: ignore[index]

    terminal.keys("t")  # the request's trace
    screen = terminal.wait_for("FOLLOWING", "retried")
    assert screen.count("enqueued") >= 4 and "retried" in screen

    terminal.keys("Escape", "Escape", "Escape")
    terminal.wait_for("fail/min")
    terminal.keys("q")
    deadline = time.monotonic() + 10
    while terminal.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not terminal.alive(), "q did not quit"


def test_jobq_tui_refuses_a_bad_table_name_with_one_line() -> None:
    result = subprocess.run([JOBQ_TUI, "--dsn", "postgresql://nowhere.invalid/x", "--table",
                             "x; DROP TABLE y"], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("jobq-tui: ") and len(result.stderr.splitlines()) == 1


def test_jobq_demo_opens_the_console_on_a_live_queue_and_q_stops_everything() -> None:
    """The README's first command, minus the install: no DSN, a terminal, the console."""
    jobq = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"
    name = f"jobq-demo-{uuid.uuid4().hex[:8]}"
    before = set(os.listdir("/tmp"))
    start(name, f"-u JOBQ_DSN -u DATABASE_URL TERM=xterm-256color {jobq} demo "
          "--rate 20; sleep 30")
    term = Terminal(name)
    try:
        screen = term.wait_for("fast", "overview", "done/min", timeout=90)
        assert "overview" in screen and "done/min" in screen
        term.wait_for("claimed")
        term.keys("5")  # nothing bound on the overview: harmless
        term.keys("a")  # all live jobs, moving
        term.wait_for("5 all")
        term.keys("q")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "jobq-pg-" in "".join(
                set(os.listdir("/tmp")) - before):
            time.sleep(0.2)
        leftovers = [d for d in set(os.listdir("/tmp")) - before if d.startswith("jobq-pg-")]
        assert not leftovers, f"the demo's Postgres folder was left behind: {leftovers}"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, check=False)
