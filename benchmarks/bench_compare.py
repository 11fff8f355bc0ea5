"""jobq beside PgQueuer, Procrastinate and a hand-written psycopg `SKIP LOCKED` loop, on one
server, in one invocation; plus jobq's scale cells. See benchmarks/README.md for the method.

    python -m benchmarks.bench_compare [--dsn DSN] [--reps 3] [--quick] [--only CELLS]
                                       [--systems SYSTEMS] [--json FILE]

Cells: enqueue_one, enqueue_batch, drain_1p, drain_2p, latency, and the scale cells
scale_empty, scale_other, scale_same, scale_types50, scale_orphans, scale_history (`scale`
names them all). Systems: raw, jobq, pgqueuer, procrastinate (the scale cells are jobq's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import _jobq, _pgqueuer, _procrastinate, _raw, _scale
from benchmarks._common import (
    Child,
    drop_database,
    fresh_database,
    load1,
    percentile,
    run_together,
    server_dsn,
    server_facts,
    settle,
    spread,
    versions,
)

SYSTEMS: dict[str, Any] = {"raw": _raw, "jobq": _jobq, "pgqueuer": _pgqueuer,
                           "procrastinate": _procrastinate}
PEER_CELLS = ("enqueue_one", "enqueue_batch", "drain_1p", "drain_2p", "latency")
SCALE_CELLS = tuple(f"scale_{cell}" for cell in _scale.CELLS)
CELLS = PEER_CELLS + SCALE_CELLS
RESULTS = Path(__file__).parent / "results"


@dataclass
class Config:
    server: str
    prefix: str
    reps: int
    quick: bool
    cells: list[str]
    systems: list[str]
    enqueue_jobs: int
    batches: int
    batch_size: int
    drain_jobs: int
    procrastinate_jobs: int
    jobq_concurrency: list[int]
    pgqueuer_batch: list[int]
    procrastinate_concurrency: list[int]
    latency_jobs: int
    latency_warmup: int
    spacing: float
    scale_concurrency: int
    sizes: _scale.Sizes
    keep_templates: bool
    json: Path


@dataclass
class Unit:
    """One measurement of one repetition: a cell, a system and its setting."""

    cell: str
    system: str
    setting: str
    run: Callable[[], list[dict[str, Any]]] = field(repr=False)


def record(unit: Unit, figures: dict[str, float], load_before: float,
           **extra: Any) -> dict[str, Any]:
    return {"cell": unit.cell, "system": unit.system, "setting": unit.setting,
            "figures": figures, "load_before": load_before, "load_after": load1(), **extra}


def _fresh(cfg: Config, key: str) -> str:
    dsn = fresh_database(cfg.server, f"{cfg.prefix}_{key}")
    SYSTEMS[key].install(dsn)
    return dsn


# -- the peer cells ----------------------------------------------------------------------------

def enqueue_unit(cfg: Config, cell: str, key: str, system: str, function: str) -> Unit:
    batch = cell == "enqueue_batch"
    jobs = cfg.batches * cfg.batch_size if batch else cfg.enqueue_jobs
    args = ({"batches": cfg.batches, "size": cfg.batch_size} if batch
            else {"jobs": cfg.enqueue_jobs, "warmup": 10})

    def run() -> list[dict[str, Any]]:
        dsn = _fresh(cfg, key)
        settle(dsn)
        before = load1()
        _, (result,) = run_together([Child(f"benchmarks._{key}:{function}", dsn=dsn, **args)])
        return [record(unit, {"jobs_per_s": jobs / result["seconds"]}, before, jobs=jobs,
                       seconds=result["seconds"])]

    unit = Unit(cell, system, "", run)
    return unit


def drain_unit(cfg: Config, cell: str, key: str, setting: str, args: dict[str, Any]) -> Unit:
    processes = 2 if cell == "drain_2p" else 1
    jobs = cfg.procrastinate_jobs if key == "procrastinate" else cfg.drain_jobs
    module = SYSTEMS[key]

    def run() -> list[dict[str, Any]]:
        dsn = _fresh(cfg, key)
        module.fill(dsn, jobs)
        settle(dsn)
        before = load1()
        started, results = run_together(
            [Child(f"benchmarks._{key}:drain", dsn=dsn, **args) for _ in range(processes)])
        seconds = max(r["end"] for r in results) - started
        left = module.left(dsn)
        return [record(unit, {"jobs_per_s": jobs / seconds}, before, jobs=jobs, seconds=seconds,
                       handled=[r["handled"] for r in results], left=left,
                       **({"error": f"{left} jobs left in the queue"} if left else {}))]

    unit = Unit(cell, module.NAME, setting, run)
    return unit


def latency_unit(cfg: Config, key: str, system: str, producer: str) -> Unit:
    args = {"count": cfg.latency_jobs, "warmup": cfg.latency_warmup}

    def run() -> list[dict[str, Any]]:
        dsn = _fresh(cfg, key)
        settle(dsn)
        before = load1()
        worker = Child(f"benchmarks._{key}:latency_worker", dsn=dsn, **args)
        try:
            worker.wait_ready()
            worker.go()
            _, (produced,) = run_together([Child(
                f"benchmarks._{key}:{producer}", dsn=dsn, spacing=cfg.spacing, settle=1.0,
                **args)])
            latencies = worker.result(timeout=60 + cfg.latency_jobs * cfg.spacing * 5)[
                "latencies"]
        finally:
            worker.kill()
        ms = [x * 1000 for x in latencies]
        calls = [x * 1000 for x in produced["calls"]]
        return [record(unit, {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                              "call_p50_ms": percentile(calls, 50)}, before, samples=len(ms))]

    unit = Unit("latency", system, "concurrency 1", run)
    return unit


def peer_units(cfg: Config, cell: str) -> list[Unit]:
    chosen = set(cfg.systems)
    units: list[Unit] = []
    if cell in ("enqueue_one", "enqueue_batch"):
        name = cell.removeprefix("enqueue_")
        sync = f"enqueue_{name}"
        for key, system, function in (
                ("raw", _raw.NAME, sync), ("jobq", "jobq", sync),
                ("jobq", "jobq async", f"aenqueue_{name}"),
                ("pgqueuer", _pgqueuer.NAME, sync), ("procrastinate", _procrastinate.NAME, sync)):
            if key in chosen:
                units.append(enqueue_unit(cfg, cell, key, system, function))
    elif cell in ("drain_1p", "drain_2p"):
        if "jobq" in chosen:
            units += [drain_unit(cfg, cell, "jobq", f"concurrency {c}", {"concurrency": c})
                      for c in cfg.jobq_concurrency]
        if "pgqueuer" in chosen:
            units += [drain_unit(cfg, cell, "pgqueuer", f"asyncpg, batch {b}", {"batch": b})
                      for b in cfg.pgqueuer_batch]
        if "procrastinate" in chosen:
            units += [drain_unit(cfg, cell, "procrastinate", f"concurrency {c}",
                                 {"concurrency": c}) for c in cfg.procrastinate_concurrency]
    elif cell == "latency":
        for key, system, producer in (
                ("raw", _raw.NAME, "produce"), ("jobq", "jobq", "produce"),
                ("jobq", "jobq async", "aproduce"), ("pgqueuer", _pgqueuer.NAME, "produce"),
                ("procrastinate", _procrastinate.NAME, "produce")):
            if key in chosen:
                units.append(latency_unit(cfg, key, system, producer))
    return units


# -- the scale cells -------------------------------------------------------------------------

def template_name(cfg: Config, cell: str) -> str:
    return f"{cfg.prefix}_tpl_{cell}"


def build_templates(cfg: Config, cells: list[str]) -> dict[str, float]:
    """Each scale cell's background, once per run, in a database that repetitions copy;
    returns the seconds each took to build."""
    took = {}
    for cell in cells:
        started = time.perf_counter()
        name = template_name(cfg, cell)
        dsn = fresh_database(cfg.server, name)
        _scale.build(dsn, cell, cfg.sizes)
        settle(dsn)
        with psycopg.connect(cfg.server, autocommit=True) as admin:
            # No session (not even autovacuum's) may be in a database while it is copied.
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        took[cell] = time.perf_counter() - started
        print(f"  built the {cell} background in {took[cell]:.0f} s", file=sys.stderr)
    return took


def drop_templates(cfg: Config, cells: list[str]) -> None:
    for cell in cells:
        drop_database(cfg.server, template_name(cfg, cell))


def scale_unit(cfg: Config, cell: str) -> Unit:
    jobs = cfg.sizes.jobs
    types = _scale.served_types(cell)
    enqueues = _scale.enqueues_its_jobs(cell)

    def run() -> list[dict[str, Any]]:
        dsn = fresh_database(cfg.server, f"{cfg.prefix}_scale", template=template_name(cfg, cell))
        records = []
        # Round 1: the background, then the measured jobs, then statistics that see both.
        # Round 2: after round 1's claiming and completing, statistics taken then (the
        # claimed type nearly gone), and then the measured jobs.
        for round_ in (1, 2):
            if round_ == 2:
                settle(dsn)
            if enqueues:
                _jobq.fill(dsn, jobs)
            if round_ == 1:
                settle(dsn)
            else:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("CHECKPOINT")
            before = load1()
            started, (result,) = run_together([Child(
                "benchmarks._jobq:drain", dsn=dsn, concurrency=cfg.scale_concurrency,
                types=types, stop_after=jobs)])
            seconds = result["end"] - started
            records.append(record(unit, {"jobs_per_s": result["completed"] / seconds}, before,
                                  round=round_, completed=result["completed"], seconds=seconds,
                                  handed_back=result["handed_back"]))
        return records

    unit = Unit(f"scale_{cell}", "jobq", f"concurrency {cfg.scale_concurrency}", run)
    return unit


# -- the run ---------------------------------------------------------------------------------

def plan(cfg: Config) -> list[Unit]:
    units: list[Unit] = []
    for cell in CELLS:
        if cell not in cfg.cells:
            continue
        if cell in PEER_CELLS:
            units += peer_units(cfg, cell)
        elif "jobq" in cfg.systems:
            units.append(scale_unit(cfg, cell.removeprefix("scale_")))
    return units


def run(cfg: Config) -> dict[str, Any]:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    units = plan(cfg)
    scale_cells = [u.cell.removeprefix("scale_") for u in units if u.cell in SCALE_CELLS]
    figures: dict[str, Any] = {
        "started_at": started_at, "command": sys.argv, "server": server_facts(cfg.server),
        "versions": versions(), "load_at_start": load1(), "config": config_json(cfg),
        "measurements": [],
    }
    try:
        figures["template_seconds"] = build_templates(cfg, scale_cells)
        for rep in range(cfg.reps):
            # Each repetition runs every unit; the order turns by 1/reps of the list each
            # time, so no unit always runs first, last or right after the same neighbour.
            shift = rep * len(units) // cfg.reps
            for unit in units[shift:] + units[:shift]:
                print(f"  rep {rep + 1}/{cfg.reps}: {unit.cell} {unit.system} {unit.setting} "
                      f"(load {load1():.2f})", file=sys.stderr)
                try:
                    done = unit.run()
                except Exception as exc:
                    done = [{"cell": unit.cell, "system": unit.system, "setting": unit.setting,
                             "error": f"{type(exc).__name__}: {exc}"}]
                for item in done:
                    item["rep"] = rep + 1
                    figures["measurements"].append(item)
    finally:
        for key in SYSTEMS:
            drop_database(cfg.server, f"{cfg.prefix}_{key}")
        drop_database(cfg.server, f"{cfg.prefix}_scale")
        if not cfg.keep_templates:
            drop_templates(cfg, scale_cells)
    figures["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    figures["load_at_end"] = load1()
    figures["summary"] = summarize(figures["measurements"])
    figures["scale"] = scale_ratios(figures["measurements"], cfg)
    figures["targets"] = targets(figures["summary"], figures["scale"])
    return figures


def config_json(cfg: Config) -> dict[str, Any]:
    out = {k: v for k, v in cfg.__dict__.items() if k not in ("server", "sizes", "json")}
    out["sizes"] = dict(cfg.sizes.__dict__)
    out["timing"] = ("warm: each process has imported its library, opened its connection "
                     "and registered its handler before the clock starts; the worker's own "
                     "start (its LISTEN, further connections, checks) is timed")
    return out


# -- summaries -------------------------------------------------------------------------------

def _key(item: dict[str, Any]) -> str:
    round_ = f" | round {item['round']}" if "round" in item else ""
    return f"{item['cell']} | {item['system']} | {item['setting']}{round_}"


def summarize(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each figure of each (cell, system, setting[, round]), over the
    measurements that did not fail (the failures are listed under the report's tables)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in measurements:
        if "figures" in item and "error" not in item:
            grouped.setdefault(_key(item), []).append(item)
    summary = {}
    for key, items in grouped.items():
        first = items[0]
        summary[key] = {
            "cell": first["cell"], "system": first["system"], "setting": first["setting"],
            **({"round": first["round"]} if "round" in first else {}),
            "reps": len(items),
            "figures": {name: spread(i["figures"][name] for i in items)
                        for name in first["figures"]},
            "load": [min(i["load_before"] for i in items),
                     max(max(i["load_before"], i["load_after"]) for i in items)],
        }
    return summary


def best(summary: dict[str, Any], cell: str, system: str) -> dict[str, Any] | None:
    """The setting of `system` with the highest median throughput in `cell`."""
    rows: list[dict[str, Any]] = [s for s in summary.values()
                                  if s["cell"] == cell and s["system"] == system]
    return max(rows, key=lambda s: float(s["figures"]["jobs_per_s"]["median"]), default=None)


def only(summary: dict[str, Any], cell: str, system: str,
         setting: str | None = None) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = [
        s for s in summary.values()
        if s["cell"] == cell and s["system"] == system and setting in (None, s["setting"])]
    return rows[0] if rows else None


def median(row: dict[str, Any] | None, figure: str = "jobs_per_s") -> float | None:
    return None if row is None else float(row["figures"][figure]["median"])


def scale_ratios(measurements: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """Each scale cell's throughput over the empty table's, in the same repetition and round."""
    rates: dict[tuple[str, int, int], float] = {}
    for item in measurements:
        if item["cell"] in SCALE_CELLS and "figures" in item and "error" not in item:
            rates[(item["cell"], item["rep"], item["round"])] = item["figures"]["jobs_per_s"]
    out: dict[str, Any] = {}
    for cell in SCALE_CELLS:
        runs = sorted((rep, round_) for (c, rep, round_) in rates if c == cell)
        if not runs:
            continue
        ratios = {f"rep {rep} round {round_}": rates[(cell, rep, round_)] / empty
                  for rep, round_ in runs
                  if (empty := rates.get(("scale_empty", rep, round_)))}
        out[cell] = {
            "label": cfg.sizes.label(cell.removeprefix("scale_")),
            "jobs_per_s": {f"round {r}": spread(rates[(cell, rep, r)] for rep, rr in runs
                                                if rr == r) for r in (1, 2)
                           if any(rr == r for _, rr in runs)},
            "ratios": ratios,
            "lowest_ratio": min(ratios.values(), default=None),
        }
    return out


def targets(summary: dict[str, Any], scale: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each met or missed on this run's medians (or not run)."""
    rows: list[dict[str, Any]] = []

    def ratio(target: str, ours: float | None, theirs: float | None, at_least: float) -> None:
        if ours is None or theirs is None:
            rows.append({"target": target, "figure": None, "met": None})
            return
        value = ours / theirs
        rows.append({"target": target, "figure": f"{value:.2f}x", "value": value,
                     "met": value >= at_least})

    def pg_best(cell: str) -> float | None:
        return median(best(summary, cell, _pgqueuer.NAME))

    for cell, label in (("drain_1p", "1 process"), ("drain_2p", "2 processes")):
        ratio(f"drain, {label} >= 2x PgQueuer's best", median(best(summary, cell, "jobq")),
              pg_best(cell), 2.0)
    for system, api in (("jobq", "sync"), ("jobq async", "async")):
        ratio(f"enqueue one at a time >= 1.3x PgQueuer ({api} API)",
              median(only(summary, "enqueue_one", system)),
              median(only(summary, "enqueue_one", _pgqueuer.NAME)), 1.3)
    for system, api in (("jobq", "sync"), ("jobq async", "async")):
        ratio(f"batch enqueue >= 1.2x PgQueuer ({api} API)",
              median(only(summary, "enqueue_batch", system)),
              median(only(summary, "enqueue_batch", _pgqueuer.NAME)), 1.2)
    ours = only(summary, "latency", "jobq")
    theirs = only(summary, "latency", _pgqueuer.NAME)
    for figure, limit in (("p50_ms", 1.2), ("p99_ms", 3.0)):
        value = median(ours, figure)
        rows.append({"target": f"latency {figure[:3]} <= {limit} ms at concurrency 1",
                     "figure": None if value is None else f"{value:.2f} ms", "value": value,
                     "met": None if value is None else value <= limit})
        other = median(theirs, figure)
        rows.append({"target": f"latency {figure[:3]} no worse than PgQueuer's",
                     "figure": None if value is None or other is None
                     else f"{value:.2f} vs {other:.2f} ms",
                     "met": None if value is None or other is None else value <= other})
    for cell, got in scale.items():
        if cell == "scale_empty":
            continue
        low = got["lowest_ratio"]
        rows.append({"target": f"scale: {got['label']} >= 0.9x empty, every rep and round",
                     "figure": None if low is None else f"lowest {low:.2f}x", "value": low,
                     "met": None if low is None else low >= 0.9})
    return rows


# -- the report ------------------------------------------------------------------------------

def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _latency(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"{median(row, 'p50_ms'):.2f} / {median(row, 'p99_ms'):.2f}"


def _verdict(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> str:
    """Better when jobq's p50 and p99 are both no higher than PgQueuer's."""
    if ours is None or theirs is None:
        return "-"
    no_worse = all(ours["figures"][f]["median"] <= theirs["figures"][f]["median"]
                   for f in ("p50_ms", "p99_ms"))
    return "better" if no_worse else "worse"


def report(figures: dict[str, Any]) -> str:
    summary, lines = figures["summary"], []
    facts, v = figures["server"], figures["versions"]
    cfg = figures["config"]
    lines.append(f"PostgreSQL {facts['server']} (synchronous_commit={facts['synchronous_commit']}"
                 f", fsync={facts['fsync']}, shared_buffers={facts['shared_buffers']}), "
                 f"{facts['cpus']} CPUs; Python {v['python']}, psycopg {v['psycopg']}, "
                 f"asyncpg {v['asyncpg']}, PgQueuer {v['pgqueuer']}, Procrastinate "
                 f"{v['procrastinate']}. {cfg['reps']} interleaved repetition(s), medians; "
                 f"load average (1 min) {figures['load_at_start']:.2f} at the start, "
                 f"{figures['load_at_end']:.2f} at the end.")
    lines.append("")
    pg, pr, raw = _pgqueuer.NAME, _procrastinate.NAME, _raw.NAME
    ran = {s["cell"] for s in summary.values()}
    lines.append("| measurement | hand-written psycopg loop | jobq | PgQueuer best "
                 "| PgQueuer defaults | Procrastinate | jobq / PgQueuer best |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")

    def row(label: str, cells: list[float | None], ours: float | None,
            theirs: float | None) -> None:
        ratio = "-" if ours is None or theirs is None else f"{ours / theirs:.2f}"
        lines.append(f"| {label} | " + " | ".join(_n(c) for c in cells) + f" | {ratio} |")

    for cell, label in (("enqueue_one", "enqueue one at a time (jobs/s)"),
                        ("enqueue_batch", f"enqueue in batches of {cfg['batch_size']} (jobs/s)")):
        if cell in ran:
            theirs = median(only(summary, cell, pg))
            ours = median(only(summary, cell, "jobq"))
            row(label, [median(only(summary, cell, raw)), ours, theirs, None,
                        median(only(summary, cell, pr))], ours, theirs)
            ours = median(only(summary, cell, "jobq async"))
            row("... with jobq's async API", [None, ours, None, None, None], ours, theirs)
    for cell, label in (("drain_1p", "best drain, 1 process (jobs/s)"),
                        ("drain_2p", "best drain, 2 processes (jobs/s)")):
        if cell in ran:
            ours, theirs = median(best(summary, cell, "jobq")), median(best(summary, cell, pg))
            default = only(summary, cell, pg, f"asyncpg, batch {_pgqueuer.DEFAULT_BATCH}")
            row(label, [None, ours, theirs, median(default), median(best(summary, cell, pr))],
                ours, theirs)
    if "latency" in ran:
        peer = only(summary, "latency", pg)
        for system, label in (("jobq", "enqueue-to-start p50 / p99 (ms)"),
                              ("jobq async", "... with jobq's async producer")):
            mine = only(summary, "latency", system)
            shown = [only(summary, "latency", raw), mine, peer, None,
                     only(summary, "latency", pr)]
            if system != "jobq":
                shown = [None, mine, None, None, None]
            lines.append(f"| {label} | " + " | ".join(_latency(c) for c in shown)
                         + f" | {_verdict(mine, peer)} |")
    lines.append("")
    lines.append("Every setting (median, lowest..highest over the repetitions; load average 1 min, "
                 "lowest before..highest after):")
    lines.append("")
    lines.append("| cell | system | setting | figure | median | min..max | load |")
    lines.append("|---|---|---|---|---:|---:|---:|")
    for s in summary.values():
        for name, got in s["figures"].items():
            fmt = "{:,.2f}" if name.endswith("_ms") else "{:,.0f}"
            where = f"{s['cell']}" + (f" round {s['round']}" if "round" in s else "")
            lines.append(f"| {where} | {s['system']} | {s['setting']} | {name} | "
                         f"{fmt.format(got['median'])} | {fmt.format(got['min'])}.."
                         f"{fmt.format(got['max'])} | {s['load'][0]:.2f}..{s['load'][1]:.2f} |")
    if figures["scale"]:
        lines.append("")
        lines.append(f"Scale (jobq alone, runner at concurrency {cfg['scale_concurrency']}, "
                     f"{cfg['sizes']['jobs']:,} jobs handled per round; round 2 follows round "
                     "1's churn and a VACUUM ANALYZE):")
        lines.append("")
        lines.append("| cell | jobs/s, round 1 | jobs/s, round 2 | ratio to empty, by rep "
                     "and round | lowest ratio |")
        lines.append("|---|---:|---:|---|---:|")
        for got in figures["scale"].values():
            rates = [_n(got["jobs_per_s"].get(r, {}).get("median")) for r in ("round 1",
                                                                              "round 2")]
            ratios = ", ".join(f"{v:.2f}" for v in got["ratios"].values())
            low = got["lowest_ratio"]
            lines.append(f"| {got['label']} | {rates[0]} | {rates[1]} | {ratios} | "
                         f"{'-' if low is None else f'{low:.2f}'} |")
    lines.append("")
    lines.append("| target | this run | |")
    lines.append("|---|---:|---|")
    for t in figures["targets"]:
        verdict = {True: "met", False: "**missed**", None: "not run"}[t["met"]]
        lines.append(f"| {t['target']} | {t['figure'] or '-'} | {verdict} |")
    errors = [m for m in figures["measurements"] if "error" in m]
    if errors:
        lines.append("")
        lines.append("Errors:")
        lines += [f"- rep {m['rep']} {m['cell']} {m['system']} {m['setting']}: {m['error']}"
                  for m in errors]
    return "\n".join(lines)


# -- the command line -------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="the server (default: JOBQ_BENCH_DSN, DATABASE_URL or "
                        "the machine's Postgres at 127.0.0.1:5432)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and one repetition: a smoke run, not figures")
    parser.add_argument("--only", help="comma-separated cells (default: all)")
    parser.add_argument("--systems", default="raw,jobq,pgqueuer,procrastinate")
    parser.add_argument("--prefix", default="jobq_bench",
                        help="name prefix of the databases the run creates and drops")
    parser.add_argument("--jobq-concurrency", type=_ints)
    parser.add_argument("--pgqueuer-batch", type=_ints)
    parser.add_argument("--procrastinate-concurrency", type=_ints)
    parser.add_argument("--scale-concurrency", type=int, default=1024)
    parser.add_argument("--scale-jobs", type=int,
                        help="jobs handled per scale measurement (default 20,000)")
    parser.add_argument("--keep-templates", action="store_true",
                        help="keep the scale cells' template databases after the run")
    parser.add_argument("--json", type=Path, help="default: results/compare.json "
                        "(compare-quick.json with --quick)")
    args = parser.parse_args(argv)
    cells = list(CELLS)
    if args.only:
        cells = []
        for name in args.only.split(","):
            picked = SCALE_CELLS if name == "scale" else (name,)
            unknown = [c for c in picked if c not in CELLS]
            if unknown:
                parser.error(f"no cell {name!r}; cells: {', '.join(CELLS)}, scale")
            cells += picked
        if any(c in SCALE_CELLS for c in cells) and "scale_empty" not in cells:
            cells.append("scale_empty")  # the others are ratios to it
    systems = args.systems.split(",")
    if unknown_systems := [s for s in systems if s not in SYSTEMS]:
        parser.error(f"no system {unknown_systems[0]!r}; systems: {', '.join(SYSTEMS)}")
    quick = args.quick
    sizes = (_scale.Sizes(backlog=20_000, per_type=400, orphans=2_000, history=200_000,
                          jobs=1_000) if quick else _scale.Sizes())
    if args.scale_jobs:
        sizes = replace(sizes, jobs=args.scale_jobs)
    cfg = Config(
        server=server_dsn(args.dsn), prefix=args.prefix,
        reps=args.reps or (1 if quick else 3), quick=quick, cells=cells, systems=systems,
        enqueue_jobs=200 if quick else 2_000, batches=4 if quick else 50, batch_size=500,
        drain_jobs=2_000 if quick else 20_000, procrastinate_jobs=200 if quick else 2_000,
        jobq_concurrency=args.jobq_concurrency or ([1024] if quick else [64, 256, 1024]),
        pgqueuer_batch=args.pgqueuer_batch or ([10, 250] if quick else [10, 50, 100, 250, 500]),
        procrastinate_concurrency=args.procrastinate_concurrency or ([10] if quick
                                                                     else [10, 50]),
        latency_jobs=20 if quick else 200, latency_warmup=3 if quick else 10, spacing=0.02,
        scale_concurrency=args.scale_concurrency, sizes=sizes,
        keep_templates=args.keep_templates,
        json=args.json or RESULTS / ("compare-quick.json" if quick else "compare.json"),
    )
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    figures = run(cfg)
    out = cfg.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(report(figures))
    print(f"\nfigures: {out}", file=sys.stderr)
    return 1 if any("error" in m for m in figures["measurements"]) else 0


if __name__ == "__main__":
    sys.exit(main())
