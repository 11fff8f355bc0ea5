"""jobq-tui on a big queue: 1,000,000 live jobs and 5,000,000 history rows (the setup of
`bench_admin`). The console runs headless under Textual's Pilot, visits every screen, holds
each for a number of refreshes and pages 50 pages deep; it reports each refresh's query time
(the wall time of the admin calls, so an upper bound on database time) and the process's peak
memory. Targets: every refresh under 100 ms, memory under 300 MB.

    python -m benchmarks.bench_tui [--dsn DSN] [--pending 1000000] [--history 5000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from benchmarks._common import fresh_database, server_dsn, server_facts
from benchmarks.bench_admin import populate
from jobq_core import JobQueue
from jobq_tui.app import JobqApp
from jobq_tui.screens.jobs import JobsScreen


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def refreshes(pilot: Pilot[Any], app: JobqApp, count: int) -> list[float]:
    """The query time of each of the next `count` refreshes."""
    times: list[float] = []
    seen = app.refreshes
    deadline = time.monotonic() + 60 + count
    while len(times) < count:
        if time.monotonic() > deadline:
            raise SystemExit("refreshes stalled")
        await pilot.pause(0.01)
        if app.refreshes > seen:
            seen = app.refreshes
            assert app._query_ms is not None
            times.append(app._query_ms)
    return times


async def drive(dsn: str, holds: int) -> dict[str, Any]:
    app = JobqApp(dsn, interval=0.05)
    figures: dict[str, Any] = {}

    def record(name: str, times: list[float]) -> None:
        figures[name] = {"median_ms": statistics.median(times), "max_ms": max(times),
                         "refreshes": len(times)}
        print(f"  {name:<34} median {statistics.median(times):6.1f} ms   "
              f"max {max(times):6.1f} ms   ({len(times)} refreshes)")

    async with app.run_test(size=(120, 40)) as pilot:
        await refreshes(pilot, app, 1)  # the first one connects and warms the caches
        record("overview (stats)", await refreshes(pilot, app, holds))
        screens: list[tuple[str, str]] = [
            ("jobs: all live", "jobs"), ("jobs: pending", "jobs state:pending"),
            ("jobs: claimed", "jobs state:claimed"), ("jobs: failed", "jobs state:failed"),
            ("jobs: completed", "jobs state:completed"),
            ("jobs: failed error:timeout", "jobs state:failed error:timeout"),
            ("jobs: req:req-4242", "jobs req:req-4242"),
            ("detail: job 424242", "job 424242"), ("trace: req-4242", "trace req-4242"),
        ]
        for name, command in screens:
            app.run_command(command)
            await refreshes(pilot, app, 1)
            record(name, await refreshes(pilot, app, holds))
            await pilot.press("escape")
        app.run_command("jobs state:pending")
        await refreshes(pilot, app, 1)
        deep: list[float] = []
        for _ in range(49):
            await pilot.press("right_square_bracket")
            deep += await refreshes(pilot, app, 2)
        screen = app.screen
        assert isinstance(screen, JobsScreen) and len(screen.pages) == 50
        record("jobs: pending, pages 2-50", deep)
        figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=5_000_000)
    parser.add_argument("--holds", type=int, default=20, help="refreshes per screen")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dsn = fresh_database(server_dsn(args.dsn), "jobq_bench_tui")
    with JobQueue(dsn) as queue:
        queue.migrate()
    started = time.perf_counter()
    populate(dsn, args.pending, args.history)
    print(f"setup: {args.pending:,} live jobs, {args.history:,} history rows in "
          f"{time.perf_counter() - started:.0f} s; memory before the console "
          f"{peak_rss_mb():.0f} MB")
    figures = asyncio.run(drive(dsn, args.holds))
    worst = max(v["max_ms"] for v in figures.values() if isinstance(v, dict))
    print(f"worst refresh {worst:.1f} ms (target < 100 ms); peak memory "
          f"{figures['peak_rss_mb']:.0f} MB (target < 300 MB)")
    if args.json:
        args.json.write_text(json.dumps({"server": server_facts(dsn), "pending": args.pending,
                                         "history": args.history, "figures": figures},
                                        indent=2))


if __name__ == "__main__":
    main()
