"""Regenerate the README's screenshots from the running demo.

    .venv/bin/python screenshots/make.py [--dsn DSN] [--warmup SECONDS]

Starts the demo workload (on a private embedded Postgres unless --dsn), lets it run so the
per-minute rates have some history, then drives jobq-tui with Textual's Pilot and saves each
screen as SVG and PNG here. PNGs are rendered by headless Chromium when it is installed
(faithful fonts), else by CairoSVG.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from jobq_cli.demo import running_demo
from jobq_core import JobQueue
from jobq_tui.app import JobqApp
from jobq_tui.screens.detail import DetailScreen
from jobq_tui.screens.dialogs import ConfirmScreen
from jobq_tui.screens.jobs import JobsScreen
from jobq_tui.screens.schedules import SchedulesScreen
from jobq_tui.screens.trace import TraceScreen
from jobq_tui.screens.workers import WorkersScreen

HERE = Path(__file__).resolve().parent
SIZE = (110, 32)


def to_png(svg: Path) -> Path:
    png = svg.with_suffix(".png")
    text = svg.read_text()
    match = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', text)
    assert match, "not a Textual screenshot"
    width, height = (round(float(v)) for v in match.groups())
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        with tempfile.TemporaryDirectory() as profile:
            html = Path(profile) / "shot.html"
            html.write_text(f"<html><body style='margin:0;background:#000'>{text}</body></html>")
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-component-update",
                            "--no-first-run", "--disable-sync", "--hide-scrollbars",
                            f"--user-data-dir={profile}/data", f"--screenshot={png}",
                            f"--window-size={width},{height}", html.as_uri()],
                           check=True, capture_output=True, timeout=60)
    else:
        import cairosvg  # type: ignore[import-untyped]

        cairosvg.svg2png(url=str(svg), write_to=str(png))
    return png


async def wait(pilot: Pilot[Any], check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {check}")
        await pilot.pause(0.1)
    await pilot.pause(0.6)
    return value


async def shoot(pilot: Pilot[Any], name: str) -> None:
    await pilot.pause(0.3)
    svg = HERE / f"{name}.svg"
    pilot.app.save_screenshot(filename=svg.name, path=str(HERE))
    print("wrote", to_png(svg).relative_to(HERE.parent))


def latest_claimed_slow_job(dsn: str) -> int:
    """The slow job claimed last: it has the most work, and lease, ahead of it."""
    from jobq_core.admin import Admin

    with JobQueue(dsn) as queue:
        rows = Admin(queue).list_jobs("state:claimed type:slow", limit=100).rows
    if not rows:
        raise SystemExit("the demo has no slow job running yet; warm up longer")
    return max(rows, key=lambda r: (r.claimed_at, r.id)).id


def pause_scheduled(dsn: str) -> None:
    """An operator paused one type for a while: the overview says who, why and until when."""
    from jobq_core.admin import Admin

    with JobQueue(dsn) as queue:
        Admin(queue).pause(["scheduled"], until="2h", reason="holiday freeze",
                           by="alice@ops-1")


async def capture(dsn: str) -> None:
    pause_scheduled(dsn)
    app = JobqApp(dsn, interval=1.0, label="demo")
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait(pilot, lambda: app.refreshes >= 2)
        await shoot(pilot, "overview")

        await pilot.press("w")
        await wait(pilot, lambda: isinstance(app.screen, WorkersScreen) and app.screen.listed)
        await shoot(pilot, "workers")
        await pilot.press("escape")

        await pilot.press("s")
        await wait(pilot, lambda: isinstance(app.screen, SchedulesScreen) and app.screen.listed)
        await shoot(pilot, "schedules")
        await pilot.press("escape")

        app.run_command("jobs state:failed")
        await wait(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.rows)
        await shoot(pilot, "jobs")

        await pilot.press("A")
        await wait(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await shoot(pilot, "confirm")
        await pilot.press("escape")

        app.run_command(f"job {latest_claimed_slow_job(dsn)}")
        await wait(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen.detail)
        await shoot(pilot, "detail")

        request_id = app.screen.request_id()  # type: ignore[attr-defined]
        app.run_command(f"trace {request_id}")
        await wait(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen.events)
        await shoot(pilot, "trace")

    app = JobqApp(dsn, interval=1.0, label="demo", read_only=True)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait(pilot, lambda: app.refreshes >= 1)
        app.run_command("jobs state:failed")
        await wait(pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.rows)
        await pilot.press("R")  # refused, with the reason
        await wait(pilot, lambda: app._notifications)
        await shoot(pilot, "read-only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--dsn", default="", help="default: a private embedded Postgres")
    parser.add_argument("--warmup", type=float, default=130,
                        help="seconds of demo traffic first, so the sparklines have history")
    args = parser.parse_args()
    with running_demo(args.dsn, rate=6, notice=lambda m: print(m, file=sys.stderr)) as dsn:
        print(f"warming up for {args.warmup:g}s…", file=sys.stderr)
        time.sleep(args.warmup)
        asyncio.run(capture(dsn))


if __name__ == "__main__":
    main()
