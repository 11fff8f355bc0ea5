"""What limits cost a drain where they do not bind (issue 14: within 10%).

    python -m benchmarks.bench_limits [--dsn DSN] [--jobs 20000] [--reps 3] [--processes 1]
                                      [--binding] [--prefix NAME] [--json FILE]
    python -m benchmarks.bench_limits --claims 150     # one claim's own cost, per setting

One type of no-op jobs, drained by `--processes` runner processes (concurrency 256 each) with
the task registered as each setting says:
- `none`: no limits;
- `global`: `global_concurrency` far above the runners' slots;
- `key`: `key_concurrency` by a payload field, 10 tenants, far above the slots;
- `rate`: `rate_limit` far above the drain rate;
and with `--binding`, `global_concurrency=5`, which does bind (for contrast).
Settings take turns within every repetition (the first one rotating), each on a fresh
database filled beforehand and settled; reported per setting: the median jobs/s and range,
and its ratio to `none`, with the load average around every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import (
    NOOP_CONCURRENCY,
    Child,
    Handshake,
    drain_noop,
    drop_database,
    fresh_database,
    interleaved,
    measure_drain,
    server_dsn,
    server_facts,
    settle,
    summarize,
    versions,
)
from jobq_core import JobQueue, NewJob
from jobq_core.limits import Limits

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS: dict[str, dict[str, Any]] = {
    "none": {},
    "global": {"global_concurrency": 10_000},
    "key": {"key_concurrency": 10_000, "concurrency_key": "tenant"},
    "rate": {"rate_limit": "1000000/s"},
}
BINDING = {"global_concurrency": 5}
TYPE = "noop"


async def drain(hs: Handshake, dsn: str, setting: str) -> dict[str, Any]:
    return await drain_noop(hs, dsn, TYPE, {},
                            BINDING if setting == "binding" else SETTINGS[setting])


def measure(dsn: str, setting: str, jobs: int, processes: int,
            prefix: str) -> dict[str, Any]:
    return measure_drain(dsn, f"{prefix}_{setting}", jobs, TYPE, children=lambda db: [
        Child("benchmarks.bench_limits:drain", dsn=db, setting=setting)
        for _ in range(processes)])


def claim_costs(dsn: str, prefix: str, rounds: int, held: int = 256,
                batch: int = 32) -> dict[str, dict[str, float]]:
    """One claim's own cost, apart from a runner: each setting's type has `held` jobs claimed
    (the slots a runner holds), then claims of `batch` are timed, each completed at once,
    the settings taking turns; per setting, the median and the 90th centile in ms."""
    name = f"{prefix}_claims"
    db = fresh_database(dsn, name)
    try:
        with JobQueue(db, max_connections=1) as queue:
            queue.migrate()
            for setting, options in SETTINGS.items():
                found = Limits.of(options)
                if found is not None:
                    queue.register_limits({setting: found}, by="bench")
                queue.enqueue_many([NewJob(setting, {"tenant": f"t{n % 10}"})
                                    for n in range(held + rounds * batch)])
            settle(db)
            for setting in SETTINGS:
                queue.claim_many(held, types=[setting])
            times: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
            for _ in range(rounds):
                for setting in SETTINGS:
                    start = time.perf_counter()
                    jobs = queue.claim_many(batch, types=[setting])
                    times[setting].append((time.perf_counter() - start) * 1000)
                    queue.complete_many(jobs)
        return {setting: {"median_ms": statistics.median(values),
                          "p90_ms": statistics.quantiles(values, n=10)[-1]}
                for setting, values in times.items()}
    finally:
        drop_database(dsn, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--prefix", default="jobq_bench_limits",
                        help="the measurement databases' names start so")
    parser.add_argument("--binding", action="store_true",
                        help="also measure a limit that binds (slow: 5 jobs at a time)")
    parser.add_argument("--claims", type=int, metavar="ROUNDS",
                        help="instead: time ROUNDS claims of 32 per setting, 256 jobs held")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    dsn = server_dsn(args.dsn)
    if args.claims:
        costs = claim_costs(dsn, args.prefix, args.claims)
        for setting, figures in costs.items():
            print(f"  {setting:8} claim of 32, 256 held: median {figures['median_ms']:.3f} ms, "
                  f"p90 {figures['p90_ms']:.3f} ms")
        (args.json or RESULTS / "limits-claims.json").write_text(json.dumps({
            "when": datetime.now(UTC).isoformat(timespec="seconds"), "rounds": args.claims,
            "server": server_facts(dsn), "versions": versions(), "claims": costs},
            indent=2, default=str))
        return 0
    names = list(SETTINGS) + (["binding"] if args.binding else [])
    runs = interleaved(names, args.reps, lambda name: measure(
        dsn, name, args.jobs, args.processes, args.prefix))
    summary = summarize(runs, "none", f"{args.jobs} jobs, {args.processes} process(es), "
                        f"concurrency {NOOP_CONCURRENCY}, median of {args.reps}")
    for name, entry in summary.items():
        entry["options"] = BINDING if name == "binding" else SETTINGS[name]
    (args.json or RESULTS / "limits-1p.json").write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "jobs": args.jobs,
        "processes": args.processes, "reps": args.reps, "server": server_facts(dsn),
        "versions": versions(), "summary": summary, "runs": runs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
