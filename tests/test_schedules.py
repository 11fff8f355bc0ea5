"""Periodic jobs (issue 14): slots across daylight-saving changes with a clock the test
controls, the missed-slot policies, one job per slot however many runners tick, and `jobq
schedules`."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from rich.text import Text
from textual.widgets import DataTable

from jobq_core import InvalidInputError, JobQueue, Schedule, create_task_runner
from jobq_core.admin import Admin
from jobq_tui.app import JobqApp
from jobq_tui.screens.detail import DetailScreen
from jobq_tui.screens.schedules import SchedulesScreen

from . import runner_tasks
from .test_cli import as_json, cli  # noqa: F401  (the fixture)
from .tui_helpers import text_of, until

BERLIN = ZoneInfo("Europe/Berlin")


def local(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def wall(slots: Any) -> list[str]:
    """Slots as Berlin wall-clock times with their offset, to read the DST cases by."""
    return [s.astimezone(BERLIN).strftime("%m-%d %H:%M%z") for s in slots]


# -- slots, without a database ------------------------------------------------------------------

def test_a_skipped_hour_fires_nothing() -> None:
    """2026-03-29 in Berlin: 02:00 CET is followed by 03:00 CEST."""
    daily = Schedule("daily", cron="30 2 * * *", tz="Europe/Berlin")
    assert wall(daily.slots(utc(2026, 3, 27), utc(2026, 3, 31))) == [
        "03-27 02:30+0100", "03-28 02:30+0100", "03-30 02:30+0200"]
    half_hourly = Schedule("half", cron="*/30 * * * *", tz="Europe/Berlin")
    assert wall(half_hourly.slots(utc(2026, 3, 28, 23, 59), utc(2026, 3, 29, 2))) == [
        "03-29 01:00+0100", "03-29 01:30+0100", "03-29 03:00+0200", "03-29 03:30+0200",
        "03-29 04:00+0200"]


def test_a_repeated_hour_fires_once() -> None:
    """2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET, so 02:00-02:59 comes twice;
    its slots fire at their first occurrence only."""
    daily = Schedule("daily", cron="30 2 * * *", tz="Europe/Berlin")
    assert wall(daily.slots(utc(2026, 10, 23), utc(2026, 10, 27))) == [
        "10-23 02:30+0200", "10-24 02:30+0200", "10-25 02:30+0200", "10-26 02:30+0100"]
    half_hourly = Schedule("half", cron="*/30 * * * *", tz="Europe/Berlin")
    assert wall(half_hourly.slots(utc(2026, 10, 24, 22, 59), utc(2026, 10, 25, 3))) == [
        "10-25 01:00+0200", "10-25 01:30+0200", "10-25 02:00+0200", "10-25 02:30+0200",
        "10-25 03:00+0100", "10-25 03:30+0100", "10-25 04:00+0100"]
    # Asked from inside the second pass, nothing of the first pass comes again.
    second_pass = local(2026, 10, 25, 2, 10, fold=1)
    assert wall(half_hourly.slots(second_pass, utc(2026, 10, 25, 3))) == [
        "10-25 03:00+0100", "10-25 03:30+0100", "10-25 04:00+0100"]


def test_interval_slots_are_whole_periods_since_the_epoch() -> None:
    every = Schedule("tick", every=timedelta(seconds=90))
    assert list(every.slots(utc(2026, 12, 7, 12, 0, 1), utc(2026, 12, 7, 12, 4))) == [
        utc(2026, 12, 7, 12, 1, 30), utc(2026, 12, 7, 12, 3)]
    assert every.newest_slot(utc(2026, 12, 7, 12, 2)) == utc(2026, 12, 7, 12, 1, 30)
    assert every.key(utc(2026, 12, 7, 12, 3)) == "cron:tick:2026-12-07T12:03:00+00:00"


@pytest.mark.parametrize(("missed", "fired"), [
    ("skip", ["12:10"]),
    ("latest", ["12:09", "12:10"]),
    ("all", [f"12:{m:02d}" for m in range(1, 11)]),
])
def test_missed_slots_follow_the_schedules_policy(missed: str, fired: list[str]) -> None:
    """Runners down from 12:00 to 12:10:30: the 12:10 slot is on time (under a minute old),
    12:01-12:09 were missed."""
    schedule = Schedule("m", every=timedelta(minutes=1), missed=missed)  # type: ignore[arg-type]
    slots, newest = schedule.to_fire(utc(2026, 12, 7, 12), utc(2026, 12, 7, 12, 10, 30))
    assert [s.strftime("%H:%M") for s in slots] == fired
    assert newest == utc(2026, 12, 7, 12, 10)
    assert schedule.to_fire(newest, utc(2026, 12, 7, 12, 10, 59)) == ([], None)


@pytest.mark.parametrize(("missed", "count"), [("skip", 1), ("latest", 2), ("all", 600)])
def test_a_second_interval_back_from_an_outage_fires_by_its_policy_too(
    missed: str, count: int
) -> None:
    """Ten minutes away with every=1s: not the last minute's 60 slots, but the newest slot,
    and the missed ones as the policy says."""
    schedule = Schedule("s", every=timedelta(seconds=1), missed=missed)  # type: ignore[arg-type]
    slots, newest = schedule.to_fire(utc(2026, 12, 7, 12), utc(2026, 12, 7, 12, 10, 0, 500000))
    assert len(slots) == count and slots[-1] == newest == utc(2026, 12, 7, 12, 10)


def test_a_runner_a_little_behind_catches_up_on_every_slot() -> None:
    schedule = Schedule("s", every=timedelta(seconds=1), missed="skip")
    slots, _ = schedule.to_fire(utc(2026, 12, 7, 12), utc(2026, 12, 7, 12, 0, 30))
    assert len(slots) == 30


def test_all_missed_slots_reach_back_one_day_at_most() -> None:
    schedule = Schedule("m", every=timedelta(hours=1), missed="all")
    slots, newest = schedule.to_fire(utc(2026, 12, 1), utc(2026, 12, 7, 12, 0, 30))
    assert len(slots) == 24 and slots[0] == utc(2026, 12, 6, 13)
    assert newest == utc(2026, 12, 7, 12)


@pytest.mark.parametrize(("options", "message"), [
    ({"cron": "61 * * * *"}, "not a cron expression"),
    ({"cron": "0 0 30 2 *"}, "not a cron expression"),
    ({"cron": "0 0 * 2 MON#5"}, "more than four years without a slot"),
    ({"cron": "*/5 * * * * *"}, "five fields"),
    ({"cron": "@daily"}, "five fields"),
    ({"cron": "0 3 * * *", "tz": "localtime"}, "the same on every host"),
    ({"cron": "0 3 * * *", "tz": "America"}, "unknown time zone"),
    ({"every": timedelta(days=400)}, "from 1 s to 366 days"),
    ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
    ({}, "exactly one of cron= and every="),
    ({"cron": "* * * * *", "every": timedelta(minutes=1)}, "exactly one"),
    ({"every": timedelta(milliseconds=500)}, "from 1 s to 366 days"),
    ({"every": timedelta(minutes=1), "tz": "Europe/Berlin"}, "cron schedules only"),
    ({"every": timedelta(minutes=1), "missed": "some"}, "missed must be one of"),
])
def test_a_bad_schedule_is_refused_when_registered(options: dict[str, Any], message: str,
                                                   dsn: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Schedule("bad", **options)
    runner = create_task_runner(JobQueue(dsn))
    with pytest.raises(InvalidInputError, match=message):
        runner.periodic("bad", **options)(runner_tasks.noop)
    assert runner.task_types == [] and runner.schedules == []


# -- ticks against the database, with the test's clock ------------------------------------------

def _jobs_by_key(db: psycopg.Connection[Any], name: str) -> Counter[str]:
    """How many jobs were enqueued for each slot of schedule `name`."""
    return Counter(key for (key,) in db.execute(
        "SELECT idempotency_key FROM svti_jobs_events WHERE event = 'enqueued' "
        "AND idempotency_key LIKE %s", (f"cron:{name}:%",)))


def test_ticks_through_the_night_of_a_dst_change_fire_each_slot_once(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    schedule = Schedule("night", cron="*/30 * * * *", tz="Europe/Berlin")
    start = utc(2026, 10, 24, 22, 59)
    with JobQueue(dsn) as queue:
        queue.register_schedules([schedule], by="test", now=start)
        fired = []
        for minute in range(0, 5 * 60, 7):  # a tick every 7 minutes of the test's clock
            tick = queue.fire_schedule(schedule, now=start + timedelta(minutes=minute))
            fired += tick.slots
            again = queue.fire_schedule(schedule, now=start + timedelta(minutes=minute))
            assert again.fired == []  # a second tick at the same time finds nothing new
    assert wall(fired) == [
        "10-25 01:00+0200", "10-25 01:30+0200", "10-25 02:00+0200", "10-25 02:30+0200",
        "10-25 03:00+0100", "10-25 03:30+0100", "10-25 04:00+0100", "10-25 04:30+0100"]
    by_key = _jobs_by_key(db, "night")
    assert len(by_key) == 8 and set(by_key.values()) == {1}
    due = db.execute("SELECT run_at, request_id FROM svti_jobs WHERE type = 'night' "
                     "ORDER BY run_at").fetchall()
    assert [d for d, _ in due] == fired  # each job is due at its slot
    assert [r for _, r in due] == [schedule.key(s) for s in fired]


@pytest.mark.parametrize(("missed", "count"), [("skip", 1), ("latest", 2), ("all", 10)])
def test_after_downtime_a_tick_applies_the_missed_policy(
    dsn: str, db: psycopg.Connection[Any], missed: str, count: int
) -> None:
    schedule = Schedule("down", every=timedelta(minutes=1), missed=missed)  # type: ignore[arg-type]
    with JobQueue(dsn) as queue:
        queue.register_schedules([schedule], by="test", now=utc(2026, 12, 7, 12))
        tick = queue.fire_schedule(schedule, now=utc(2026, 12, 7, 12, 10, 30))
        assert len(tick.fired) == count and tick.next_slot == utc(2026, 12, 7, 12, 11)
        # Registered again (a runner restarts): the slots handled stay handled.
        queue.register_schedules([schedule], by="test", now=utc(2026, 12, 7, 11))
        assert queue.fire_schedule(schedule, now=utc(2026, 12, 7, 12, 10, 40)).fired == []
    assert sum(_jobs_by_key(db, "down").values()) == count


def test_concurrent_ticks_fire_each_slot_once(dsn: str, db: psycopg.Connection[Any]) -> None:
    """Eight queues (connections) tick one schedule at the same instants: the row lock
    orders them, and only the first to take it fires the slot."""
    schedule = Schedule("race", every=timedelta(seconds=10))
    start = utc(2026, 12, 7, 12)
    queues = [JobQueue(dsn) for _ in range(8)]
    queues[0].register_schedules([schedule], by="test", now=start)
    fired: list[datetime] = []
    lock = threading.Lock()

    def tick(queue: JobQueue, now: datetime, go: threading.Barrier) -> None:
        go.wait()
        got = queue.fire_schedule(schedule, now=now)
        with lock:
            fired.extend(got.slots)

    for step in range(1, 21):
        go = threading.Barrier(len(queues))
        threads = [threading.Thread(target=tick, args=(q, start + timedelta(seconds=5 * step),
                                                       go)) for q in queues]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for queue in queues:
        queue.close()
    assert sorted(fired) == [start + timedelta(seconds=10 * n) for n in range(1, 11)]
    assert set(_jobs_by_key(db, "race").values()) == {1}


# -- runners -----------------------------------------------------------------------------------

def test_two_runners_every_second_run_one_job_per_slot(
    dsn: str, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Two runners serve the same one-second schedule for over 5 slots: every slot between
    the first and the last has exactly one job, fired by one runner's tick (never both), and
    run once."""
    runners = []
    for _ in range(2):
        runner = create_task_runner(JobQueue(dsn), poll_interval=0.05)
        runner.periodic("beat", every=timedelta(seconds=1))(runner_tasks.noop)
        runners.append(runner)
    threads = [threading.Thread(target=lambda r=r: asyncio.run(r.serve()), daemon=True)
               for r in runners]
    with caplog.at_level(logging.INFO, logger="jobq.runner"):
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(_jobs_by_key(db, "beat")) < 7 and time.monotonic() < deadline:
            time.sleep(0.2)
        for r in runners:
            r.request_stop()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    by_key = _jobs_by_key(db, "beat")
    slots = sorted(datetime.fromisoformat(k.split(":", 2)[2]) for k in by_key)
    assert len(slots) >= 5 and set(by_key.values()) == {1}
    assert slots == [slots[0] + timedelta(seconds=n) for n in range(len(slots))]  # no gap
    fired = Counter(slot for record in caplog.records
                    for slot in re.findall(r"\d{4}-\d\d-\d\dT[\d:+]+",
                                           record.getMessage().partition(" for ")[2])
                    if record.getMessage().startswith("schedule beat: enqueued"))
    # No slot fired by two ticks (the row lock; the keys alone would hide a double fire).
    # A tick that committed as its runner stopped may not have logged.
    assert set(fired.values()) == {1}
    assert {datetime.fromisoformat(s) for s in fired} <= set(slots)
    assert len(fired) >= len(slots) - 2
    completed = Counter(job_id for (job_id,) in db.execute(
        "SELECT job_id FROM svti_jobs_events WHERE type = 'beat' AND event = 'completed'"))
    assert set(completed.values()) <= {1}
    assert sum(r.counters["completed"] for r in runners) == len(completed)


def test_a_schedule_whose_row_is_deleted_is_registered_again(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Someone empties the schedules table under a serving runner: it registers its
    schedules again and goes on firing, rather than failing its loop."""
    runner = create_task_runner(JobQueue(dsn), poll_interval=0.05)
    runner.periodic("beat", every=timedelta(seconds=1))(runner_tasks.noop)
    thread = threading.Thread(target=lambda: asyncio.run(runner.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while sum(_jobs_by_key(db, "beat").values()) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        db.execute("DELETE FROM svti_jobs_schedules")
        fired = sum(_jobs_by_key(db, "beat").values())
        while sum(_jobs_by_key(db, "beat").values()) < fired + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(_jobs_by_key(db, "beat").values()) >= fired + 2
        assert db.execute("SELECT count(*) FROM svti_jobs_schedules").fetchone() == (1,)
        assert runner.health()["status"] == "ok"
    finally:
        runner.request_stop()
        thread.join(30)


def test_jobq_schedules_lists_each_schedule_with_its_last_and_next_slot(
    dsn: str, cli: Any  # noqa: F811  (the fixture)
) -> None:
    schedule = Schedule("report", cron="0 3 * * *", tz="Europe/Berlin")
    with JobQueue(dsn) as queue:
        queue.register_schedules([schedule], by="web-1:42", now=utc(2026, 12, 6, 1))
        tick = queue.fire_schedule(schedule, now=utc(2026, 12, 6, 2, 0, 5))
        assert tick.slots == [utc(2026, 12, 6, 2)]
        rows = Admin(queue).schedules()
    assert [(r.name, r.spec, r.missed, r.last_slot, r.last_job_id, r.last_state,
             r.registered_by) for r in rows] == [
        ("report", "cron 0 3 * * * Europe/Berlin", "latest", utc(2026, 12, 6, 2),
         tick.fired[0], "pending", "web-1:42")]
    assert rows[0].next_slot is not None and rows[0].next_slot.astimezone(BERLIN).hour == 3
    shown = as_json(cli("schedules", "--json"))
    assert shown[0]["name"] == "report" and shown[0]["last_job_id"] == tick.fired[0]
    assert shown[0]["last_slot"] == "2026-12-06T02:00:00+00:00"
    listed = cli("schedules")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SCHEDULE", "NEXT", "SLOT", "UTC", "LAST", "SLOT",
                                "UTC", "LAST", "JOB", "MISSED"]
    assert all(len(line) <= 80 for line in lines), listed.stdout
    assert "2026-12-06 02:00:00" in listed.stdout
    assert f"{tick.fired[0]} pending" in listed.stdout


async def test_the_console_lists_schedules_and_opens_the_last_job(dsn: str) -> None:
    """`s` on the overview: each schedule with its expression, next and last slot and last
    job; enter opens that job."""
    schedule = Schedule("report", cron="0 3 * * *", tz="Europe/Berlin")
    with JobQueue(dsn) as queue:
        queue.register_schedules([schedule], by="web-1:42", now=utc(2026, 12, 6, 1))
        tick = queue.fire_schedule(schedule, now=utc(2026, 12, 6, 2, 0, 5))
        queue.register_schedules([Schedule("tick", every=timedelta(minutes=5))], by="web-2:7")
    app = JobqApp(dsn, interval=0.2)
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.refreshes)
        await pilot.press("s")
        screen = await until(pilot, lambda: isinstance(app.screen, SchedulesScreen)
                             and app.screen)
        table: DataTable[Text] = screen.query_one("#schedules", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        assert [r.key.value for r in table.ordered_rows] == ["report", "tick"]
        assert table.get_cell("report", "spec").plain == "cron 0 3 * * * Europe/Berlin"
        assert table.get_cell("report", "job").plain == f"{tick.fired[0]} pending"
        assert table.get_cell("tick", "job").plain == "—"
        assert re.fullmatch(r"in \d+m\d\ds|in \d+s|now",
                            table.get_cell("tick", "next").plain)
        info = text_of(app, "#schedules-info")
        assert "registered by web-1:42" in info and "2026-12-06 02:00:00 UTC" in info
        await pilot.press("enter")
        detail = await until(pilot, lambda: isinstance(app.screen, DetailScreen)
                             and app.screen)
        assert detail.job_id == tick.fired[0]


def test_two_definitions_under_one_name_are_told_apart(dsn: str) -> None:
    """A rolling deploy changes a schedule: the runner still on the old definition learns
    from each tick that the row says otherwise (and its scheduler warns once)."""
    old = Schedule("report", cron="0 3 * * *", tz="Europe/Berlin")
    new = Schedule("report", cron="0 4 * * *", tz="Europe/Berlin")
    with JobQueue(dsn) as queue:
        queue.register_schedules([old], by="web-1:1", now=utc(2026, 12, 6, 1))
        assert queue.fire_schedule(old, now=utc(2026, 12, 6, 1, 30)).conflict is None
        queue.register_schedules([new], by="web-2:2")
        assert queue.fire_schedule(new, now=utc(2026, 12, 6, 1, 40)).conflict is None
        assert (queue.fire_schedule(old, now=utc(2026, 12, 6, 1, 50)).conflict
                == "cron 0 4 * * * Europe/Berlin")


def test_jobq_schedules_remove_forgets_a_schedule(
    dsn: str, db: psycopg.Connection[Any], cli: Any  # noqa: F811  (the fixture)
) -> None:
    with JobQueue(dsn) as queue:
        queue.register_schedules([Schedule("gone", every=timedelta(minutes=1)),
                                  Schedule("kept", every=timedelta(minutes=1))], by="w:1")
    missing = cli("schedules", "--remove", "nothing", "--yes")
    assert missing.exit_code == 3 and "no schedule named 'nothing'" in missing.output
    refused = cli("--read-only", "schedules", "--remove", "gone", "--yes")
    assert refused.exit_code == 2, refused.output
    assert as_json(cli("schedules", "--remove", "gone", "--yes", "--json")) == {
        "removed": "gone"}
    assert db.execute("SELECT name FROM svti_jobs_schedules").fetchall() == [("kept",)]
