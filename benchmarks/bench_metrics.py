"""What Prometheus metrics cost a drain (issue 15: no measurable slowdown).

    python -m benchmarks.bench_metrics [--dsn DSN] [--jobs 20000] [--reps 3] [--processes 1]
                                       [--scrape-every 0.25] [--prefix NAME] [--json FILE]

One type of no-op jobs, drained by `--processes` runner processes (concurrency 256 each):
- `off`: no metrics;
- `on`: each runner with `metrics_port` (a port of its own, on the loopback), its depth read
  every `jobq_core.metrics.DEPTH_EVERY` seconds as in production, and this process (as
  Prometheus would, from outside the runner's) scraping every runner's `/metrics` every
  `--scrape-every` seconds, far more often than Prometheus' usual 15 s, so that the scrapes'
  cost shows if it is there.
Settings take turns within every repetition (the first one rotating), each on a fresh
database filled beforehand and settled; reported per setting: the median jobs/s and range,
and its ratio to `off`, with the load average around every run.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Child,
    Handshake,
    drop_database,
    fresh_database,
    load1,
    run_together,
    server_dsn,
    server_facts,
    settle,
    versions,
)
from jobq_core import AsyncJobQueue, JobQueue, NewJob, create_task_runner

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("off", "on")
TYPE = "noop"
#: Each runner's slots: the middle of bench_compare's drain settings.
CONCURRENCY = 256


def fill(dsn: str, jobs: int) -> None:
    with JobQueue(dsn, max_connections=1) as queue:
        queue.migrate()
        for start in range(0, jobs, 5000):
            queue.enqueue_many([NewJob(TYPE) for _ in range(start, min(jobs, start + 5000))])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape_until(ports: list[int], every: float, done: threading.Event,
                 scrapes: list[int]) -> None:
    """Scrape every port each `every` seconds until `done`; a runner not serving yet, or no
    more, refuses the connection, which counts as no scrape."""
    while not done.wait(every):
        for port in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=10) as page:
                    page.read()
            except OSError:
                continue
            scrapes.append(port)


async def drain(hs: Handshake, dsn: str, port: int | None) -> dict[str, Any]:
    queue = AsyncJobQueue(dsn)
    await queue.prepare()
    runner = create_task_runner(queue, concurrency=CONCURRENCY, metrics_port=port,
                                metrics_addr="127.0.0.1")

    async def noop(payload: Any, ctx: Any) -> None:
        return None

    runner.register(TYPE, noop)
    # Both settings import the metrics before the clock starts (a first serve with metrics
    # would import them after it).
    import jobq_core.metrics  # noqa: F401

    hs.ready()
    await runner.serve(until_idle=True)
    end = time.monotonic()
    await queue.close()
    return {"end": end, "completed": runner.counters["completed"]}


def measure(dsn: str, setting: str, jobs: int, processes: int, *, scrape_every: float,
            prefix: str) -> dict[str, Any]:
    name = f"{prefix}_{setting}"
    db = fresh_database(dsn, name)
    try:
        fill(db, jobs)
        settle(db)
        before = load1()
        ports = [free_port() for _ in range(processes)] if setting == "on" else []
        children = [Child("benchmarks.bench_metrics:drain", dsn=db,
                          port=ports[n] if ports else None) for n in range(processes)]
        done = threading.Event()
        scrapes: list[int] = []
        scraper = threading.Thread(target=scrape_until, args=(ports, scrape_every, done,
                                                              scrapes), daemon=True)
        scraper.start()
        try:
            started, results = run_together(children)
        finally:
            done.set()
            scraper.join(10)
        seconds = max(r["end"] for r in results) - started
        completed = sum(r["completed"] for r in results)
        assert completed == jobs, (setting, completed)
        return {"jobs_per_s": jobs / seconds, "seconds": seconds,
                "scrapes": len(scrapes), "load1": [before, load1()]}
    finally:
        drop_database(dsn, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--scrape-every", type=float, default=0.25,
                        help="seconds between the scrapes of each runner's /metrics")
    parser.add_argument("--prefix", default="jobq_bench_metrics",
                        help="the measurement databases' names start so")
    parser.add_argument("--json", type=Path, default=RESULTS / "metrics-1p.json")
    args = parser.parse_args(argv)
    dsn = server_dsn(args.dsn)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    for rep in range(args.reps):
        order = SETTINGS[rep % len(SETTINGS):] + SETTINGS[:rep % len(SETTINGS)]
        for name in order:
            figures = measure(dsn, name, args.jobs, args.processes,
                              scrape_every=args.scrape_every, prefix=args.prefix)
            runs[name].append(figures)
            print(f"rep {rep + 1} {name:4} {figures['jobs_per_s']:8.0f} jobs/s  "
                  f"{figures['scrapes']:3} scrapes  load {figures['load1'][0]:.2f} -> "
                  f"{figures['load1'][1]:.2f}", flush=True)
    base = statistics.median(r["jobs_per_s"] for r in runs["off"])
    summary = {}
    print(f"\n{args.jobs} jobs, {args.processes} process(es), concurrency {CONCURRENCY}, "
          f"median of {args.reps}")
    for name in SETTINGS:
        values = [r["jobs_per_s"] for r in runs[name]]
        median = statistics.median(values)
        summary[name] = {"median": median, "min": min(values), "max": max(values),
                         "ratio": median / base}
        print(f"  {name:4} {median:8.0f} jobs/s  ({min(values):.0f}-{max(values):.0f})  "
              f"x{median / base:.3f}")
    args.json.write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "jobs": args.jobs,
        "processes": args.processes, "reps": args.reps, "scrape_every": args.scrape_every,
        "server": server_facts(dsn), "versions": versions(), "summary": summary,
        "runs": runs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
