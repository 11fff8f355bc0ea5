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
import contextlib
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import (
    NOOP_CONCURRENCY,
    Child,
    Handshake,
    drain_noop,
    interleaved,
    measure_drain,
    server_dsn,
    server_facts,
    summarize,
    versions,
)

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("off", "on")
TYPE = "noop"


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
    # Both settings import the metrics before the clock starts (a first serve with metrics
    # would import them after it).
    import jobq_core.metrics  # noqa: F401

    return await drain_noop(hs, dsn, TYPE,
                            {"metrics_port": port, "metrics_addr": "127.0.0.1"}, {})


@contextlib.contextmanager
def scraping(ports: list[int], every: float) -> Iterator[dict[str, Any]]:
    """Scrape `ports` every `every` seconds in a thread while the drain runs; the figures
    get how many scrapes answered."""
    figures: dict[str, Any] = {}
    done = threading.Event()
    scrapes: list[int] = []
    scraper = threading.Thread(target=scrape_until, args=(ports, every, done, scrapes),
                               daemon=True)
    scraper.start()
    try:
        yield figures
    finally:
        done.set()
        scraper.join(10)
        figures["scrapes"] = len(scrapes)


def measure(dsn: str, setting: str, jobs: int, processes: int, *, scrape_every: float,
            prefix: str) -> dict[str, Any]:
    ports = [free_port() for _ in range(processes)] if setting == "on" else []
    return measure_drain(
        dsn, f"{prefix}_{setting}", jobs, TYPE,
        children=lambda db: [Child("benchmarks.bench_metrics:drain", dsn=db,
                          port=ports[n] if ports else None) for n in range(processes)],
        during=lambda: scraping(ports, scrape_every))


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
    runs = interleaved(list(SETTINGS), args.reps, lambda name: measure(
        dsn, name, args.jobs, args.processes, scrape_every=args.scrape_every,
        prefix=args.prefix), extra=lambda figures: f"{figures['scrapes']:3} scrapes  ")
    summary = summarize(runs, "off", f"{args.jobs} jobs, {args.processes} process(es), "
                        f"concurrency {NOOP_CONCURRENCY}, median of {args.reps}")
    args.json.write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "jobs": args.jobs,
        "processes": args.processes, "reps": args.reps, "scrape_every": args.scrape_every,
        "server": server_facts(dsn), "versions": versions(), "summary": summary,
        "runs": runs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
