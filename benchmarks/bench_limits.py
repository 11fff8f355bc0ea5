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
#: Each runner's slots: the middle of bench_compare's drain settings.
CONCURRENCY = 256


def fill(dsn: str, jobs: int) -> None:
    with JobQueue(dsn, max_connections=1) as queue:
        queue.migrate()
        for start in range(0, jobs, 5000):
            queue.enqueue_many([NewJob(TYPE, {"tenant": f"t{n % 10}"})
                                for n in range(start, min(jobs, start + 5000))])


async def drain(hs: Handshake, dsn: str, setting: str) -> dict[str, Any]:
    queue = AsyncJobQueue(dsn)
    await queue.prepare()
    runner = create_task_runner(queue, concurrency=CONCURRENCY)

    async def noop(payload: Any, ctx: Any) -> None:
        return None

    runner.register(TYPE, noop, **(BINDING if setting == "binding" else SETTINGS[setting]))
    hs.ready()
    await runner.serve(until_idle=True)
    end = time.monotonic()
    await queue.close()
    return {"end": end, "completed": runner.counters["completed"]}


def measure(dsn: str, setting: str, jobs: int, processes: int,
            prefix: str) -> dict[str, Any]:
    name = f"{prefix}_{setting}"
    db = fresh_database(dsn, name)
    try:
        fill(db, jobs)
        settle(db)
        before = load1()
        children = [Child("benchmarks.bench_limits:drain", dsn=db, setting=setting)
                    for _ in range(processes)]
        started, results = run_together(children)
        seconds = max(r["end"] for r in results) - started
        completed = sum(r["completed"] for r in results)
        assert completed == jobs, (setting, completed)
        return {"jobs_per_s": jobs / seconds, "seconds": seconds,
                "load1": [before, load1()]}
    finally:
        drop_database(dsn, name)


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
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            figures = measure(dsn, name, args.jobs, args.processes, args.prefix)
            runs[name].append(figures)
            print(f"rep {rep + 1} {name:8} {figures['jobs_per_s']:8.0f} jobs/s  "
                  f"load {figures['load1'][0]:.2f} -> {figures['load1'][1]:.2f}", flush=True)
    base = statistics.median(r["jobs_per_s"] for r in runs["none"])
    summary = {}
    print(f"\n{args.jobs} jobs, {args.processes} process(es), concurrency {CONCURRENCY}, "
          f"median of {args.reps}")
    for name in names:
        values = [r["jobs_per_s"] for r in runs[name]]
        median = statistics.median(values)
        summary[name] = {"median": median, "min": min(values), "max": max(values),
                         "ratio": median / base,
                         "options": BINDING if name == "binding" else SETTINGS[name]}
        print(f"  {name:8} {median:8.0f} jobs/s  ({min(values):.0f}-{max(values):.0f})  "
              f"x{median / base:.3f}")
    (args.json or RESULTS / "limits-1p.json").write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "jobs": args.jobs,
        "processes": args.processes, "reps": args.reps, "server": server_facts(dsn),
        "versions": versions(), "summary": summary, "runs": runs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
