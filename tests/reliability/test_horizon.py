"""Fault: the xmin horizon held back while the queue churns. A REPEATABLE READ reader and a
writer sit idle in their transactions (and a prepared transaction, where the server allows
them) as claims and completions leave dead rows behind them. `doctor` must name each holder
with its fix and must not recommend a VACUUM that would remove nothing. Prints a ledger of
what doctor found, before and after the holders end."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from jobq_core import JobQueue, NewJob
from jobq_core.admin import Admin, Finding

#: "It did not hang" bound for the statistics to show the dead rows.
STATS_WAIT = 20.0


def _dead(db: psycopg.Connection[Any]) -> int:
    return int(db.execute("SELECT coalesce(n_dead_tup, 0) FROM pg_stat_all_tables "
                          "WHERE relid = 'svti_jobs'::regclass").fetchone()[0])


def _render(title: str, findings: list[Finding], expected: dict[str, str]) -> str:
    lines = [f"===== ledger: {title} ====="]
    named = {f.check.removeprefix("xmin holder "): f for f in findings
             if f.check.startswith("xmin holder ")}
    for label, role in expected.items():
        f = named.get(label)
        verdict = "ok" if f is not None and f.status == "warn" else "VIOLATION"
        lines.append(f"  {role:<22} {label:<34} "
                     f"{'named ' + f.status if f else 'NOT NAMED'}  [{verdict}]")
        if f is not None:
            facts = f.facts or {}
            age = facts.get("seconds")
            lines.append(f"    {facts.get('via')}, xid age {facts.get('xid_age')}, "
                         f"open {age if age is None else round(age, 1)} s; fix: {f.fix}")
    for label, f in named.items():
        if label not in expected:
            lines.append(f"  other holder           {label:<34} {f.status}")
    for f in findings:
        if f.check.startswith("table ") or f.check == "xmin horizon":
            lines.append(f"  {f.check:<22} {f.status:<5} fix: {f.fix or '-'}")
    vacuum = [f.check for f in findings if (f.fix or "").startswith("VACUUM")]
    lines.append(f"  VACUUM advised         {len(vacuum)} {vacuum or ''}")
    lines.append("=" * (len(title) + 20))
    return "\n".join(lines)


def test_doctor_names_every_horizon_holder(dsn: str, db: psycopg.Connection[Any]) -> None:
    with JobQueue(dsn) as queue:
        admin = Admin(queue)
        held = queue.enqueue("held")
        reader = psycopg.connect(dsn, application_name="reli-reader")
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        reader.execute("SELECT count(*) FROM svti_jobs").fetchone()
        writer = psycopg.connect(dsn, application_name="reli-writer")
        writer.execute("UPDATE svti_jobs SET priority = 3 WHERE id = %s", (held,))
        expected = {f"pid {reader.info.backend_pid}": "RR reader (snapshot)",
                    f"pid {writer.info.backend_pid}": "writer (xid)"}
        prepared = int(db.execute("SHOW max_prepared_transactions").fetchone()[0]) > 0
        if prepared:
            other = queue.enqueue("held")
            with psycopg.connect(dsn) as tx:
                tx.execute("UPDATE svti_jobs SET priority = 4 WHERE id = %s", (other,))
                tx.execute("PREPARE TRANSACTION 'reli-horizon'")
            expected["prepared transaction 'reli-horizon'"] = "prepared transaction"
        try:
            # Churn behind them: every claim and completion leaves dead rows.
            queue.enqueue_many([NewJob("churn", i) for i in range(200)])
            while jobs := queue.claim_many(50, types=["churn"]):
                for job in jobs:
                    queue.complete(job)
            deadline = time.monotonic() + STATS_WAIT
            while _dead(db) == 0:
                assert time.monotonic() < deadline, "the statistics never showed dead rows"
                time.sleep(0.2)
            time.sleep(1.2)  # the holders are past "in flight", and only a few seconds old
            findings = admin.doctor()
            report = _render("xmin horizon held during churn", findings, expected)
            if not prepared:
                report += ("\n  note: prepared transaction skipped: max_prepared_transactions"
                           " = 0 on this server (tests/test_doctor.py covers it on a server"
                           " of its own)")
            print("\n" + report, flush=True)
            by = {f.check: f for f in findings}
            for label in expected:
                assert by.get(f"xmin holder {label}") is not None, report
                assert by[f"xmin holder {label}"].status == "warn", report
            table = by["table svti_jobs"]
            assert table.fix and table.fix.startswith("end what holds the xmin horizon"), report
            assert not any((f.fix or "").startswith("VACUUM") for f in findings), report
        finally:
            pids = [reader.info.backend_pid, writer.info.backend_pid]
            reader.close()
            writer.close()
            if prepared:
                db.execute("ROLLBACK PREPARED 'reli-horizon'")
        # A closed connection's backend exits a moment later; until then it still holds.
        deadline = time.monotonic() + 10
        while db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                         (pids,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the holders' backends never exited"
            time.sleep(0.05)
        after = admin.doctor()
        print("\n" + _render("after the holders ended", after, {}), flush=True)
        assert {f.check: f for f in after}["xmin horizon"].status == "ok"
