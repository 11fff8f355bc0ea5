"""jobq at two git revisions, side by side: did a change cost speed?

    python -m benchmarks.bench_revisions OLD NEW [--reps 3] [--only CELLS] [--json FILE]

Each revision is checked out in a worktree of its own, and `bench_compare` runs there with
`--systems jobq --reps 1` (so each revision measures with its own harness and its own jobq),
revisions taking turns, the first one alternating, `--reps` times. Reported per measurement:
each revision's median and range (the noise to judge the ratio by) and the ratio NEW / OLD,
with the load average around every run.
Cells default to the peer cells: enqueue_one, enqueue_batch, drain_1p, drain_2p, latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import load1

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEER_CELLS = "enqueue_one,enqueue_batch,drain_1p,drain_2p,latency"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _run(tree: Path, cells: str, out: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run([sys.executable, "-m", "benchmarks.bench_compare", "--systems", "jobq",
                    "--reps", "1", "--only", cells, "--json", str(out)],
                   cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def _values(figures: dict[str, Any]) -> dict[str, float]:
    """Each jobq measurement's headline figure, by cell and setting."""
    found: dict[str, float] = {}
    for m in figures["measurements"]:
        if not m["system"].startswith("jobq"):
            continue
        key = " · ".join(part for part in (m["cell"], m["system"], m["setting"]) if part)
        for name, value in m["figures"].items():
            if name in ("jobs_per_s", "p50_ms", "p99_ms") and value is not None:
                found[f"{key} · {name}"] = float(value)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default=PEER_CELLS)
    parser.add_argument("--json", type=Path, default=RESULTS / "revisions.json")
    args = parser.parse_args(argv)
    revisions = [_git("rev-parse", "--short", args.old), _git("rev-parse", "--short", args.new)]
    runs: dict[str, list[dict[str, float]]] = {rev: [] for rev in revisions}
    loads: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="jobq-revisions-") as scratch:
        trees = {}
        for rev in revisions:
            trees[rev] = Path(scratch) / rev
            _git("worktree", "add", "--detach", str(trees[rev]), rev)
        try:
            for rep in range(args.reps):
                order = revisions if rep % 2 == 0 else revisions[::-1]
                for rev in order:
                    before = load1()
                    figures = _run(trees[rev], args.only, Path(scratch) / f"{rev}-{rep}.json")
                    runs[rev].append(_values(figures))
                    loads.append({"rep": rep, "revision": rev, "load_before": before,
                                  "load_after": load1()})
                    print(f"  rep {rep + 1}/{args.reps} {rev}: done, load {before:.2f} → "
                          f"{loads[-1]['load_after']:.2f}", file=sys.stderr)
        finally:
            for tree in trees.values():
                _git("worktree", "remove", "--force", str(tree))
    old, new = revisions
    rows = []
    for key in sorted(set(runs[old][0]) & set(runs[new][0])):
        row: dict[str, Any] = {"measurement": key}
        for rev in revisions:
            values = [r[key] for r in runs[rev] if key in r]
            row[rev] = statistics.median(values)
            row[f"{rev} range"] = [min(values), max(values)]
        row["ratio"] = row[new] / row[old] if row[old] else None
        rows.append(row)
    report = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "old": old, "new": new,
              "reps": args.reps, "cells": args.only, "rows": rows, "loads": loads, "runs": runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| measurement | {old} (range) | {new} (range) | {new} / {old} |\n"
          "|---|---:|---:|---:|")
    for row in rows:
        shown = [f"{row[rev]:,.2f} ({row[f'{rev} range'][0]:,.2f} to "
                 f"{row[f'{rev} range'][1]:,.2f})" for rev in revisions]
        print(f"| {row['measurement']} | {shown[0]} | {shown[1]} | {row['ratio']:.3f} |")
    print(f"\nfigures: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
