"""The benchmark harness itself works: a quick run of jobq's own cells and a short soak each
finish and write figures of the documented shape. No figure is judged here (timing never is
in a test); the cells used need neither PgQueuer nor Procrastinate, so `.[dev]` suffices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, text=True,
                            capture_output=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _databases(server_dsn: str, prefix: str) -> list[str]:
    import psycopg

    with psycopg.connect(server_dsn) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (prefix + "%",)).fetchall()
    return [r[0] for r in rows]


def test_a_quick_comparison_writes_every_measurement_and_verdict(
        server_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    prefix = f"jobq_bench_t{os.getpid()}"
    result = _run("benchmarks.bench_compare", "--quick", "--only", "enqueue_batch,scale_orphans",
                  "--systems", "jobq", "--dsn", server_dsn, "--prefix", prefix,
                  "--json", str(out))
    figures: dict[str, Any] = json.loads(out.read_text())

    assert {"server", "versions", "config", "measurements", "summary", "scale",
            "targets"} <= figures.keys()
    assert {"synchronous_commit", "fsync", "shared_buffers"} <= figures["server"].keys()
    assert {"python", "psycopg", "asyncpg", "pgqueuer", "procrastinate"} <= \
        figures["versions"].keys()
    measured = {(m["cell"], m["system"], m.get("round")) for m in figures["measurements"]}
    assert measured == {
        ("enqueue_batch", "jobq", None), ("enqueue_batch", "jobq async", None),
        ("scale_empty", "jobq", 1), ("scale_empty", "jobq", 2),  # added: the ratios' base
        ("scale_orphans", "jobq", 1), ("scale_orphans", "jobq", 2),
    }
    for m in figures["measurements"]:
        assert "error" not in m, m
        assert m["figures"]["jobs_per_s"] > 0 and m["rep"] == 1
        assert isinstance(m["load_before"], float) and isinstance(m["load_after"], float)
    orphans = figures["scale"]["scale_orphans"]
    assert set(orphans["ratios"]) == {"rep 1 round 1", "rep 1 round 2"}
    assert orphans["lowest_ratio"] == min(orphans["ratios"].values())
    verdicts = {t["target"]: t["met"] for t in figures["targets"]}
    assert verdicts["scale: 2,000 orphaned expired leases >= 0.9x empty, every rep and round"] \
        in (True, False)
    assert verdicts["drain, 1 process >= 2x PgQueuer's best"] is None  # not run
    assert "| measurement |" in result.stdout and "| target |" in result.stdout
    assert _databases(server_dsn, prefix) == []  # it drops what it made


def test_a_short_soak_samples_sizes_dead_tuples_and_latency(
        server_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    prefix = f"jobq_bench_s{os.getpid()}"
    _run("benchmarks.bench_soak", "--minutes", "0.05", "--rate", "200", "--sample-seconds", "1",
         "--dsn", server_dsn, "--prefix", prefix, "--json", str(out))
    figures: dict[str, Any] = json.loads(out.read_text())

    assert len(figures["samples"]) >= 2
    for sample in figures["samples"]:
        assert {"minute", "load", "jobs_heap_bytes", "jobs_index_bytes", "jobs_total_bytes",
                "history_total_bytes", "n_dead_tup", "p50_ms", "p99_ms",
                "started"} <= sample.keys()
    assert figures["producer"]["enqueued"] > 0
    assert figures["runner"]["completed"] > 0
    for metric in ("jobs_total_bytes", "n_dead_tup", "p99_ms"):
        assert figures["verdicts"][metric]["flat"] in (True, False)
    assert _databases(server_dsn, prefix) == []


def test_the_limits_benchmark_drains_every_setting(server_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    prefix = f"jobq_bench_l{os.getpid()}"
    _run("benchmarks.bench_limits", "--jobs", "300", "--reps", "1", "--binding", "--dsn",
         server_dsn, "--prefix", prefix, "--json", str(out))
    figures: dict[str, Any] = json.loads(out.read_text())
    assert set(figures["summary"]) == {"none", "global", "key", "rate", "binding"}
    assert figures["summary"]["none"]["ratio"] == 1
    assert all(len(runs) == 1 and runs[0]["jobs_per_s"] > 0
               for runs in figures["runs"].values())
    assert _databases(server_dsn, prefix) == []


def test_the_limits_benchmark_times_claims_of_every_setting(server_dsn: str,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "claims.json"
    prefix = f"jobq_bench_c{os.getpid()}"
    _run("benchmarks.bench_limits", "--claims", "3", "--dsn", server_dsn, "--prefix", prefix,
         "--json", str(out))
    figures: dict[str, Any] = json.loads(out.read_text())
    assert set(figures["claims"]) == {"none", "global", "key", "rate"}
    assert all(f["median_ms"] > 0 for f in figures["claims"].values())
    assert _databases(server_dsn, prefix) == []


def test_the_metrics_benchmark_drains_with_metrics_off_and_on(
        server_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    prefix = f"jobq_bench_m{os.getpid()}"
    _run("benchmarks.bench_metrics", "--jobs", "300", "--reps", "1", "--scrape-every", "0.01",
         "--dsn", server_dsn, "--prefix", prefix, "--json", str(out))
    figures: dict[str, Any] = json.loads(out.read_text())
    assert set(figures["summary"]) == {"off", "on"}
    assert figures["summary"]["off"]["ratio"] == 1
    assert all(len(runs) == 1 and runs[0]["jobs_per_s"] > 0
               for runs in figures["runs"].values())
    assert figures["runs"]["off"][0]["scrapes"] == 0
    assert _databases(server_dsn, prefix) == []
