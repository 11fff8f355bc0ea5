"""Bad input raises `InvalidInputError` before any SQL and loses nothing; odd but valid data
round-trips exactly."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobq_core import (
    DatabaseUnavailableError,
    InvalidInputError,
    JobqError,
    JobQueue,
    NewJob,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize("kwargs", [
    {"type": ""}, {"type": " lead"}, {"type": "has space"}, {"type": "x" * 129}, {"type": None},
    {"type": "t", "payload": {1, 2}}, {"type": "t", "payload": object()},
    {"type": "t", "payload": math.nan}, {"type": "t", "payload": {"k": math.inf}},
    {"type": "t", "payload": "nul \x00 inside"}, {"type": "t", "payload": {"k\x00": 1}},
    {"type": "t", "priority": 40000}, {"type": "t", "priority": True},
    {"type": "t", "priority": "1"},
    {"type": "t", "run_at": datetime(2030, 1, 1)}, {"type": "t", "run_at": "tomorrow"},
    {"type": "t", "request_id": 5}, {"type": "t", "request_id": "a\x00b"},
    {"type": "t", "request_id": "r" * 1025}, {"type": "t", "idempotency_key": ["k"]},
])
def test_bad_enqueue_input_is_rejected(q: Any, db: psycopg.Connection[Any], kwargs: Any) -> None:
    kwargs = dict(kwargs)
    job_type = kwargs.pop("type")
    with pytest.raises(InvalidInputError):
        q.enqueue(job_type, **kwargs)
    assert db.execute("SELECT count(*) FROM svti_jobs").fetchone()[0] == 0


def test_jsonb_nul_rejection_names_the_problem(q: Any) -> None:
    with pytest.raises(InvalidInputError, match="NUL"):
        q.enqueue("t", {"text": "a\u0000b"})
    # An escaped backslash followed by u0000 is ordinary text, not a NUL.
    q.enqueue("t", {"text": "\\u0000"})
    assert q.claim().payload == {"text": "\\u0000"}


@pytest.mark.parametrize("call", [
    lambda q, j: q.claim(lease_ms=0), lambda q, j: q.claim(lease_ms=-1),
    lambda q, j: q.claim(lease_ms=float("nan")), lambda q, j: q.claim(lease_ms=10**12),
    lambda q, j: q.claim(types=[]), lambda q, j: q.claim(types=["bad type"]),
    lambda q, j: q.claim(types=5), lambda q, j: q.claim_many(0), lambda q, j: q.claim_many(10**6),
    lambda q, j: q.extend(j, 0), lambda q, j: q.extend(j, "5m"),
    lambda q, j: q.complete(-1), lambda q, j: q.complete("7"), lambda q, j: q.complete(True),
    lambda q, j: q.fail(j, reason=None), lambda q, j: q.fail(j, reason="x", run_at=timedelta(1)),
    lambda q, j: q.complete(j, result={1, 2}), lambda q, j: q.complete_many([7]),
    lambda q, j: q.complete_many([j], results=[1, 2]),
])
def test_bad_arguments_change_nothing(q: Any, db: psycopg.Connection[Any], call: Any) -> None:
    q.enqueue("t")
    job = q.claim()
    before = db.execute("SELECT * FROM svti_jobs").fetchall()
    with pytest.raises(InvalidInputError):
        call(q, job)
    assert db.execute("SELECT * FROM svti_jobs").fetchall() == before


def test_durations() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration(" 7D ") == timedelta(days=7)
    assert format_duration(timedelta(hours=36, seconds=5)) == "1d12h5s"
    for bad in ("7x", "", "1.5h", "-1d", "0s", "h", "1 d", "99999999999999w"):
        with pytest.raises(InvalidInputError, match="duration"):
            parse_duration(bad)


WEIRD_PAYLOADS = [
    {"quote": "it's \"quoted\"", "backslash": "C:\\path\\", "sql": "'); DROP TABLE svti_jobs;--"},
    {"unicode": "ünïcödé — 日本語 — 🎉", "rtl": "\u202eevil", "markup": "[bold]x[/bold]"},
    {"ansi": "\x1b[31mred\x1b[0m", "newlines": "a\nb\r\nc\t"},
    [1, 2.5, None, True, False, "s", [], {}],
    "just a string", 0, -1.5, True, [],
    {"big": "x" * 2_000_000, "many": list(range(50_000))},
    {"deep": [[[[[[[[[[{"k": "v"}]]]]]]]]]]},
]


@pytest.mark.parametrize("payload", WEIRD_PAYLOADS, ids=range(len(WEIRD_PAYLOADS)))
def test_payloads_round_trip_exactly(q: Any, payload: Any) -> None:
    q.enqueue("t", payload)
    assert q.claim().payload == payload


def test_reasons_and_request_ids_round_trip(q: Any, db: psycopg.Connection[Any]) -> None:
    odd = "[red]x[/] \x1b[2J 'quoted' ünï 🎉 " + "y" * 5000
    job_id = q.enqueue("t", request_id="[bold]req\x1b[0m'")
    q.fail(q.claim(), reason=odd)
    assert db.execute("SELECT last_error, request_id FROM svti_jobs WHERE id = %s",
                      (job_id,)).fetchone() == (odd, "[bold]req\x1b[0m'")
    # NUL cannot be stored in text; it is escaped rather than losing the failure.
    job_id = q.enqueue("t")
    q.fail(q.claim(), reason="bad\x00byte")
    assert db.execute("SELECT last_error FROM svti_jobs WHERE id = %s",
                      (job_id,)).fetchone() == ("bad\\x00byte",)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(st.characters(blacklist_categories=["Cs"],
                                            blacklist_characters="\x00"), max_size=8),
                      children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=json_values)
def test_any_json_value_round_trips(dsn: str, payload: Any) -> None:
    with JobQueue(dsn) as queue:
        queue.enqueue("prop", payload)
        job = queue.claim(types=["prop"])
        assert job is not None
        queue.complete(job)
    # jsonb stores numbers as decimals: 1.0 and 3e16 come back as ints, equal as numbers.
    assert _numbers_as_floats(job.payload) == _numbers_as_floats(payload)


def _numbers_as_floats(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [_numbers_as_floats(v) for v in value]
    return {k: _numbers_as_floats(v) for k, v in value.items()}


def test_errors_are_typed(q: Any) -> None:
    with pytest.raises(JobqError):
        q.enqueue("")
    with pytest.raises(ValueError):  # InvalidInputError is also a ValueError
        q.enqueue("")


def test_unreachable_database_is_a_typed_error_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jobq_core.queue as qmod

    monkeypatch.setattr(qmod, "CONNECT_TIMEOUT", 2.0)
    with JobQueue("postgresql://user:s3cret-pw@127.0.0.1:1/nowhere") as queue, \
            pytest.raises(DatabaseUnavailableError) as info:
        queue.enqueue("t")
    assert "s3cret-pw" not in str(info.value)


def test_new_job_items_accept_mappings(q: Any) -> None:
    ids = q.enqueue_many([{"type": "a", "payload": [1]}, NewJob("b", priority=2)])
    assert [j.id for j in q.claim_many(2)] == ids[::-1]


def test_bulk_enqueue_round_trips_escaping_and_fields(q: Any, db: psycopg.Connection[Any]) -> None:
    """Key-less batches go through COPY: its text format must not mangle anything."""
    odd_req = "tab\there\nnewline \\N backslash [bold]"
    items = [NewJob("t", p, request_id=odd_req) for p in WEIRD_PAYLOADS[:5]]
    items.append(NewJob("t", {"x": "\\."}, priority=-3, run_at=timedelta(minutes=5)))
    ids = q.enqueue_many(items)
    got = {j.id: j for j in q.claim_many(10)}
    assert [got[i].payload for i in ids[:5]] == WEIRD_PAYLOADS[:5]
    assert {got[i].request_id for i in ids[:5]} == {odd_req}
    r = db.execute("SELECT priority, run_at > now() + interval '4 minutes', payload "
                   "FROM svti_jobs WHERE id = %s", (ids[5],)).fetchone()
    assert r == (-3, True, {"x": "\\."})
    assert db.execute("SELECT count(*) FROM svti_jobs_events WHERE event = 'enqueued' "
                      "AND request_id = %s", (odd_req,)).fetchone() == (5,)


def test_bulk_enqueue_statements_do_not_grow_with_the_batch(dsn: str) -> None:
    """Counted on the real database: the statements one enqueue_many sends."""
    from jobq_core import _ops
    from jobq_core.queue import _run_sync
    from jobq_core.sql import Names, Statements

    st = Statements(Names.parse("svti_jobs"))

    def statements(items: list[NewJob]) -> int:
        sent: list[bytes] = []
        op = _ops.enqueue_many(st, items)

        def counting() -> Any:
            answer = None
            try:
                while True:
                    stmt = op.send(answer) if sent else next(op)
                    sent.append(stmt.query)
                    answer = yield stmt
            except StopIteration as stop:
                return stop.value

        with psycopg.connect(dsn) as conn, conn.transaction():
            ids = _run_sync(conn, counting())
        assert len(ids) == len(items)
        return len(sent)

    assert statements([NewJob("t")] * 10) == statements([NewJob("t")] * 5000) == 3
    assert statements([NewJob("t", idempotency_key=f"k{i}") for i in range(5000)]) == 1
