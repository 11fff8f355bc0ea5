"""Property-based tests of hostile input (issue 10), bounded in time.

Hypothesis throws generated values at the public API (`enqueue`, `enqueue_many`, `claim`,
`extend`, `fail`, `complete`, `clear`, sync and async; the filter and duration parsers) and
at the `jobq` CLI, in process (durations, times, ids, filters, cursors, request ids, table
names, payloads from argv, stdin and files, DSNs). Every example must end in success or a
typed `JobqError`: no driver error, `ValueError`, `OverflowError`, `UnicodeEncodeError`,
`RecursionError` … escapes; valid arguments are stored, and an `InvalidInputError` about one
hostile argument names it. The CLI never crashes or prints a traceback, exits with a
documented code (the one its input calls for), keeps an error to one stderr line, never
prints a DSN's password, and no call takes seconds. Nothing stored can break a later claim,
listing, `show`, trace or CLI rendering of the queue (checked after every example, and swept
at the end of each test).

Bounded: every test has a fixed `max_examples` (scaled by ``JOBQ_HYPOTHESIS_SCALE``, default
1, e.g. 10 for a long local hunt) and a pytest-timeout; the file runs in under a minute.
No example database (`database=None`): CI keeps no state between runs, but generation stays
random, so every run can find something new; the cases named in issue 10 and every bug
found so far are pinned with ``@example`` and run every time. A failure prints its seed;
rerun it with ``--hypothesis-seed=<seed>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from jobq_cli.commands import app
from jobq_core import (
    AsyncJobQueue,
    InvalidInputError,
    JobqError,
    JobQueue,
    JobStateError,
    LeaseLostError,
    NewJob,
    NotFoundError,
)
from jobq_core.admin import Admin
from jobq_core.filters import STATES, JobFilter, parse_filter
from jobq_core.models import LEASE_MS_MAX, WHEN_MAX, WHEN_MIN, parse_id

SCALE = float(os.environ.get("JOBQ_HYPOTHESIS_SCALE", "1"))


def bounded(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# -- strategies: text ---------------------------------------------------------------------------

#: Characters that have broken something somewhere: NUL, lone surrogates, terminal controls
#: (ESC, CSI U+009B), bidi override, zero-width, line separators, BOM, non-ASCII digits.
SPECIALS = ["\x00", "\ud800", "\udfff", "\udc80", "\x1b", "\x1b[31m", "\x9b", "\n", "\r",
            "\t", "\x0b", "\x85", "\u2028", "\u202e", "\u200b", "\ufeff", "\U0010ffff", "²",
            "٣", "\uff17", "é", "%", "_", "\\", "'", '"', " ", ":", "|", "@", "="]
any_char = st.characters(exclude_categories=())  # every code point, surrogates included
special = st.sampled_from(SPECIALS)
TYPE_RE = r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,127}"
hostile_text = st.one_of(
    st.text(any_char, max_size=30),
    st.lists(st.one_of(special, any_char, st.sampled_from("abc019")), max_size=12).map("".join),
    st.builds(lambda part, n: part * n, st.sampled_from(["a", "é", "\U0001d518", "\x00",
                                                       "\ud800", "ab "]),
              st.sampled_from([127, 128, 129, 200, 201, 1024, 1025, 100_000])),
)
#: Type names: mostly valid ones (so the rest of the call reaches the database), some hostile.
type_names = st.one_of(st.from_regex(TYPE_RE, fullmatch=True), hostile_text,
                       st.sampled_from([None, 5, b"t", ["t"]]))
optional_texts = st.one_of(st.none(), st.just(""), hostile_text, st.text(max_size=20),
                           st.sampled_from([5, b"k", ["k"]]))

# -- strategies: payloads -----------------------------------------------------------------------

big_ints = st.one_of(
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.builds(lambda digits, sign: sign * 10**digits, st.sampled_from([19, 20, 300, 4299, 4300,
                                                                       5000]),
              st.sampled_from([1, -1])),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), big_ints,
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-0.0, 5e-324, 1.8e308]),
    hostile_text, st.text(max_size=20),
)


class _Opaque:
    pass


not_json = st.sampled_from([b"bytes", {1, 2}, frozenset(), Decimal("1.5"), 1 + 2j,
                            date(2030, 1, 1), _Opaque(), ...])
dict_keys = st.one_of(hostile_text, st.text(max_size=8), st.integers(), big_ints,
                      st.floats(allow_nan=True), st.booleans(), st.none(),
                      st.tuples(st.integers()), st.just(b"k"))


def _cycle() -> Any:
    loop: list[Any] = [1]
    loop.append({"again": loop})
    return loop


def _nest(depth: int, kind: str, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if kind == "list" else {f"k{i % 3}": value}
    return value


class Deep:
    """A deeply nested value, built only when used: Hypothesis' own pretty-printer would hit
    the recursion limit on the value itself."""

    def __init__(self, depth: int, kind: str, leaf: Any) -> None:
        self.depth, self.kind, self.leaf = depth, kind, leaf

    def __repr__(self) -> str:
        return f"_nest({self.depth}, {self.kind!r}, {self.leaf!r})"

    def build(self) -> Any:
        return _nest(self.depth, self.kind, self.leaf)


def real(value: Any) -> Any:
    return value.build() if isinstance(value, Deep) else value


deep = st.builds(Deep, st.one_of(st.integers(0, 1500),
                                  st.sampled_from([255, 256, 257, 500, 900, 950, 980, 1000,
                                                   1500])),
                 st.sampled_from(["list", "dict"]), json_scalars)
payloads = st.one_of(
    st.recursive(st.one_of(json_scalars, not_json),
                 lambda inner: st.one_of(st.lists(inner, max_size=4),
                                         st.tuples(inner, inner),
                                         st.dictionaries(dict_keys, inner, max_size=4)),
                 max_leaves=12),
    deep,
    st.builds(_cycle),
)

# -- strategies: times, numbers -----------------------------------------------------------------


class _NoOffset(tzinfo):
    """A tzinfo that knows no offset: an aware-looking but in fact naive datetime."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


PLUS_14, MINUS_14 = timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))
ZONES = [UTC, PLUS_14, MINUS_14, timezone(timedelta(hours=23, minutes=59)),
         timezone(-timedelta(hours=23, minutes=59)), timezone(timedelta(hours=5, minutes=30)),
         ZoneInfo("Pacific/Kiritimati"), ZoneInfo("Etc/GMT+12"), ZoneInfo("Europe/Berlin"),
         _NoOffset()]
datetimes = st.one_of(
    st.datetimes(min_value=datetime.min, max_value=datetime.max,
                 timezones=st.one_of(st.none(), st.sampled_from(ZONES))),
    st.sampled_from([
        datetime(1, 1, 1, 5, tzinfo=PLUS_14), datetime(1, 1, 1, tzinfo=PLUS_14),
        datetime.max.replace(tzinfo=MINUS_14), datetime(9999, 12, 31, 20, tzinfo=MINUS_14),
        WHEN_MIN, WHEN_MAX, WHEN_MIN - timedelta(microseconds=1),
        WHEN_MAX + timedelta(microseconds=1), datetime(1, 1, 2, tzinfo=PLUS_14),
        datetime(9999, 12, 30, tzinfo=MINUS_14), datetime.now(UTC), datetime(2030, 1, 1),
    ]),
)
timedeltas = st.one_of(
    st.timedeltas(min_value=timedelta.min, max_value=timedelta.max),
    st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=2)),
    st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(microseconds=-1),
                     timedelta(seconds=-5), timedelta(days=100 * 366),
                     timedelta(days=100 * 366, microseconds=1), timedelta(days=10**6),
                     timedelta.max, timedelta.min]),
)
run_ats = st.one_of(st.none(), datetimes, timedeltas,
                    st.sampled_from(["tomorrow", "2030-01-01T00:00:00Z", 5, 1.5,
                                     date(2030, 1, 1), math.nan]))
priorities = st.one_of(
    st.integers(-40_000, 40_000), st.integers(),
    st.sampled_from([-32768, 32767, -32769, 32768, 2**63, -(2**63) - 1, 2**64, 10**100,
                     10**400, True, False, 1.0, math.nan, "1", None]),
)
lease_ms = st.one_of(
    st.integers(-10, 10**6), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, LEASE_MS_MAX, LEASE_MS_MAX + 1, 2**31, 2**63, 2**64, 10**30,
                     10**400, -(10**400), 0.4, 1e-300, -0.0, True, "5m", None]),
)
reasons = st.one_of(hostile_text, st.text(max_size=30), st.just("x" * 1_000_000),
                    st.sampled_from([None, 5, b"reason", ["r"]]))
#: Durations as text, the way people (and scripts) type them.
duration_texts = st.one_of(
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(-(10**6), 10**12),
              st.sampled_from([*"smhdwSMHDW", "", "x", "ms", " d", "秒"])),
    st.lists(st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**10),
                       st.sampled_from("smhdw")), min_size=1, max_size=4).map("".join),
    st.sampled_from(["", " ", "²", "²s", "٣d", "\uff11d", "1" * 5000 + "s", "9" * 9 + "w",
                     "999999999d", "-1d", "0s", "1.5h", "1d12h", " 7D ", "1_000s", "+5m",
                     "1e3s", "inf", "nan", "\ud800", "1s\udcff", "7d\n", "1 d", "d"]),
    hostile_text,
)
older_thans = st.one_of(timedeltas, duration_texts, st.sampled_from([None, 5, 7.0, b"7d"]))
#: Raw job ids: unfenced `extend`, `fail` and `complete` take a bare id.
job_ids = st.one_of(st.integers(-5, 10**6), st.integers(),
                    st.sampled_from([0, 2**63 - 1, 2**63, 10**400, True, "7", 7.0, None]))

# -- checking outcomes --------------------------------------------------------------------------


def attempt(fn: Callable[..., Any], *args: Any, names: Iterable[str] = (),
            allowed: tuple[type[JobqError], ...] = (InvalidInputError,),
            **kwargs: Any) -> Any:
    """Call the API: it returns, or raises a `JobqError` of an expected kind. Anything else
    (a driver error, ValueError, OverflowError, RecursionError …) propagates and fails the
    example. An `InvalidInputError` must name one of `names`."""
    name = getattr(fn, "__name__", "call")
    try:
        value = fn(*args, **kwargs)
    except JobqError as exc:
        event(f"{name}: {type(exc).__name__}")
        assert isinstance(exc, allowed), (
            f"{type(exc).__name__} (expected one of {[a.__name__ for a in allowed]}): {exc}")
        wanted = list(names)
        if isinstance(exc, InvalidInputError) and wanted:
            assert any(n in str(exc) for n in wanted), f"error names none of {wanted}: {exc}"
        return exc
    event(f"{name}: ok")
    return value


#: What a terminal acts on (C0 but tab and newline, DEL, C1 such as CSI U+009B) and the bidi
#: controls that reorder what it shows: none of it may reach the CLI's output from stored data.
UNSAFE_OUTPUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _json_depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list | dict) and value:
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
        depth += 1
    return depth


class Health:
    """Checks that whatever is stored can be claimed, listed and shown."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.admin = Admin(queue)
        self.ids: set[int] = set()
        self.deep_ids: set[int] = set()
        self.request_ids: set[str] = set()

    def stored(self, job_id: int, payload: Any = None, request_id: Any = None) -> None:
        self.ids.add(job_id)
        if _json_depth(payload) > 50:
            self.deep_ids.add(job_id)
        if isinstance(request_id, str) and request_id:
            self.request_ids.add(request_id)

    def check(self, new: Iterable[int] = ()) -> None:
        """After an example: the new jobs show, the first page of every state lists, and
        every claimable job can be claimed (then failed, so it stays listable with its
        payload and is not claimed again by the next check)."""
        for job_id in new:
            detail = self.admin.show(job_id)
            assert detail.job is not None or detail.events
        for state in (None, *STATES):
            self.admin.list_jobs(JobFilter(state=state), limit=50)
        while batch := self.queue.claim_many(100, lease_ms=60_000, worker="health"):
            for job in batch:
                self.queue.fail(job, reason="health check")

    def sweep(self, cli: CliInvoke | None = None) -> None:
        """At the end of a test: every page of every state, every job shown, each request
        id traced and filtered on; and the CLI lists and shows them without a crash."""
        for state in (None, *STATES):
            after = None
            while True:
                page = self.admin.list_jobs(JobFilter(state=state), after=after, limit=200)
                after = page.next_cursor
                if after is None:
                    break
        for job_id in sorted(self.ids):
            self.admin.show(job_id)
        for rid in sorted(self.request_ids)[:30]:
            self.admin.list_jobs(JobFilter(request_id=rid))
            self.admin.trace(rid)
        self.admin.stats()
        if cli is None:
            return
        for state in ("", *STATES):
            for fmt in ([], ["--json"]):
                args = ["list", *([f"state:{state}"] if state else []), "--limit", "1000",
                        *fmt]
                check_cli(cli(args), args, {0}, stored_data=True)
        for fmt in ([], ["--json"]):
            check_cli(cli(["status", *fmt]), ["status", *fmt], {0}, stored_data=True)
        shown = sorted(self.deep_ids) + sorted(self.ids - self.deep_ids)[:25]
        for job_id in shown:
            for fmt in ([], ["--json"]):
                args = ["show", str(job_id), *fmt]
                check_cli(cli(args), args, {0}, stored_data=True)


# -- the CLI, in process ----------------------------------------------------------------------

EXIT_CODES = {0, 1, 2, 3, 4, 5, 130}
#: The most one in-process CLI call may take before it counts as a hang.
CLI_SECONDS = 5.0
CliInvoke = Callable[..., Any]


@pytest.fixture
def cli(dsn: str, monkeypatch: pytest.MonkeyPatch) -> CliInvoke:
    monkeypatch.setenv("JOBQ_DSN", dsn)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("JOBQ_TABLE", raising=False)
    runner = CliRunner()

    def invoke(args: list[str], input: bytes | str | None = None) -> Any:
        started = time.monotonic()
        result = runner.invoke(app, args, input=input)
        result.elapsed = time.monotonic() - started
        return result

    return invoke


def _usage_error(result: Any) -> bool:
    """Click's own usage error (an unknown option, an int that does not parse)."""
    return bool(result.stderr.startswith("Usage:"))


def check_cli(result: Any, args: list[str], codes: set[int] = EXIT_CODES, *,
              stored_data: bool = False) -> None:
    """A documented exit code, no traceback, and an error is one line on stderr."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # Re-raised as it was, so that Hypothesis tells different crashes apart.
        exc = result.exception
        exc.add_note(f"jobq {args!r} crashed: the user would see this traceback")
        raise exc.with_traceback(result.exc_info[2])
    output = result.stdout + result.stderr
    # No hang: a command takes tens of milliseconds here; this is a hundred times that.
    assert result.elapsed < CLI_SECONDS, f"jobq {args!r} took {result.elapsed:.1f} s"
    assert "Traceback (most recent call last)" not in output, (args, output)
    assert result.exit_code in EXIT_CODES, (args, result.exit_code, output)
    if result.exit_code != 0:
        lines = result.stderr.strip().splitlines()
        if _usage_error(result):
            # Depends on the one-line usage errors being made in jobq_cli/commands.py.
            assert len(lines) == 1, f"multi-line usage error for {args!r}:\n{result.stderr}"
        else:
            assert len(lines) == 1 and lines[0].startswith("jobq: "), (args, result.stderr)
    assert result.exit_code in codes, (
        f"jobq {args!r} exited {result.exit_code}, expected one of {sorted(codes)}: "
        f"{result.stderr.strip()[:500]}")
    if stored_data:
        found = UNSAFE_OUTPUT.search(result.stdout + result.stderr)
        assert found is None, f"jobq {args!r} printed {found.group()!r} from stored data"


def _argv_safe(text: str) -> bool:
    """What a real command line or environment can carry: bytes without NUL. Bytes that are
    not UTF-8 arrive as the lone surrogates U+DC80..U+DCFF (surrogateescape), so those stay
    in; other lone surrogates cannot arrive."""
    try:
        return b"\x00" not in os.fsencode(text)
    except UnicodeEncodeError:
        return False


# -- the library ---------------------------------------------------------------------------------

valid_texts = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40),
    st.sampled_from(["r-1", "x" * 1024, "\x1b[31m\u202e\u2028", "é" * 1024, "\\u0000"]))
valid_payloads = st.one_of(
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**200), 2**200),
                           st.floats(allow_nan=False, allow_infinity=False), valid_texts),
                 lambda inner: st.one_of(st.lists(inner, max_size=4),
                                         st.dictionaries(valid_texts, inner, max_size=4)),
                 max_leaves=15),
    st.builds(Deep, st.integers(0, 256), st.sampled_from(["list", "dict"]), st.just("leaf")),
)
AWARE = [z for z in ZONES if not isinstance(z, _NoOffset)]
valid_run_ats = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
                 timezones=st.sampled_from(AWARE)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100 * 366)),
)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "type": st.from_regex(TYPE_RE, fullmatch=True), "payload": valid_payloads,
    "run_at": valid_run_ats, "priority": st.integers(-32768, 32767),
    "idempotency_key": st.one_of(st.none(), valid_texts),
    "request_id": st.one_of(st.none(), valid_texts),
}
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "type": type_names, "payload": payloads, "run_at": run_ats, "priority": priorities,
    "idempotency_key": optional_texts, "request_id": optional_texts,
}
#: What an `InvalidInputError` about each argument must mention.
NAMED = {"type": "job type", "payload": "payload", "run_at": "run_at",
         "priority": "priority", "idempotency_key": "idempotency_key",
         "request_id": "request_id"}


ANY_HOSTILE = st.sampled_from([None, *HOSTILE, "all"])


@st.composite
def enqueue_calls(draw: st.DrawFn, hostile: st.SearchStrategy[str | None] = ANY_HOSTILE
                  ) -> tuple[str | None, dict[str, Any]]:
    """`enqueue` arguments: all valid, one of them hostile (named in `bad`), or all hostile."""
    bad = draw(hostile)
    return bad, {k: draw(HOSTILE[k] if bad in (k, "all") else VALID[k]) for k in VALID}


def _call(bad: str | None, **overrides: Any) -> tuple[str | None, dict[str, Any]]:
    return bad, {"type": "t", "payload": None, "run_at": None, "priority": 0,
                 "idempotency_key": None, "request_id": None, **overrides}


ENQUEUE_NAMES = ("job type", "payload", "run_at", "priority", "idempotency_key", "request_id",
                 "NewJob", "job item")


@pytest.fixture
def queue(dsn: str) -> Iterator[JobQueue]:
    with JobQueue(dsn) as shared:  # one for all the examples of a test
        yield shared


@pytest.fixture
def health(queue: JobQueue) -> Iterator[Health]:
    """Checks after each example (`check`), and sweeps what all the examples stored at the
    end of the test (a failure there is reported as an error in teardown)."""
    checker = Health(queue)
    yield checker
    checker.sweep()


@pytest.mark.timeout(120)
@bounded(150)
@given(call=enqueue_calls())
@example(call=_call("run_at", run_at=datetime(1, 1, 1, 5, tzinfo=PLUS_14)))
@example(call=_call("run_at", run_at=datetime(9999, 12, 31, 20, tzinfo=MINUS_14)))
@example(call=_call("run_at", run_at=timedelta(days=10**6)))
@example(call=_call("run_at", run_at=datetime(2030, 1, 1)))
@example(call=_call("payload", payload=Deep(1500, "list", 1)))
@example(call=_call("payload", payload=Deep(900, "list", 1)))
@example(call=_call("payload", payload=Deep(257, "dict", 1)))
@example(call=_call(None, payload=Deep(256, "dict", 1)))
@example(call=_call("payload", payload={"n": 2**64, "f": math.nan}))
@example(call=_call("payload", payload={"big": 10**4299, (1,): 1}))
@example(call=_call("payload", payload={1: "\ud800"}))
@example(call=_call("priority", priority=10**400))
@example(call=_call("idempotency_key", idempotency_key="k\ud800"))
@example(call=_call("request_id", request_id="r\x00"))
@example(call=_call("type", type="a\x00b"))
def test_enqueue_is_stored_or_refused(queue: JobQueue, health: Health,
                                      call: tuple[str | None, dict[str, Any]]) -> None:
    """Valid arguments are stored; one hostile argument is refused by name, or stored."""
    bad, kwargs = call
    options = {k: v for k, v in kwargs.items() if k not in ("type", "payload")}
    payload = real(kwargs["payload"])
    names = [NAMED[bad]] if bad in NAMED else list(ENQUEUE_NAMES)
    got = attempt(queue.enqueue, kwargs["type"], payload, **options, names=names,
                  allowed=() if bad is None else (InvalidInputError,))
    if isinstance(got, int):
        health.stored(got, payload, options["request_id"])
        job = health.admin.show(got).job
        if not options["idempotency_key"] and job is not None:  # a known key: another job
            assert (job.type, job.priority) == (kwargs["type"], options["priority"])
            assert job.request_id == (options["request_id"] or None)
    health.check([got] if isinstance(got, int) else [])


new_jobs = st.one_of(
    enqueue_calls(st.sampled_from([None, None, *HOSTILE])).map(lambda c: NewJob(**c[1])),
    st.builds(NewJob, type_names, payloads, run_ats, priorities, optional_texts,
              optional_texts),
    st.builds(NewJob, st.from_regex(TYPE_RE, fullmatch=True)),
    st.dictionaries(st.sampled_from(["type", "payload", "run_at", "priority", "bogus"]),
                    st.one_of(type_names, payloads, run_ats), max_size=4),
    st.sampled_from([None, "t", 5, ("t",), b"t"]),
)


@pytest.mark.timeout(120)
@bounded(60)
@given(items=st.one_of(st.lists(new_jobs, max_size=5),
                       st.sampled_from([None, 5, "abc", {"type": "t"}, NewJob("t")])),
       as_tuple=st.booleans())
@example(items=[NewJob("t"), NewJob("t", run_at=datetime(1, 1, 1, 5, tzinfo=PLUS_14))],
         as_tuple=False)
@example(items=[NewJob("t", idempotency_key="k"), {"type": "t", "bogus": 1}], as_tuple=False)
@example(items=None, as_tuple=False)
def test_enqueue_many_stores_all_or_nothing(queue: JobQueue, health: Health,
                                            db: psycopg.Connection[Any], items: Any,
                                            as_tuple: bool) -> None:
    if isinstance(items, list):  # else not a sequence of jobs at all: refused, not a TypeError
        items = [_real_item(item) for item in items]
        if as_tuple:
            items = tuple(items)
    before = db.execute("SELECT count(*) FROM svti_jobs").fetchone()
    got = attempt(queue.enqueue_many, items,
                  names=[*ENQUEUE_NAMES, "jobs", "sequence", "list", "expected"])
    if isinstance(got, list):
        assert isinstance(items, list | tuple) and len(got) == len(items)
        assert all(isinstance(i, int) for i in got)
        for job_id, item in zip(got, items, strict=True):
            health.stored(job_id, getattr(item, "payload", None))
    else:
        assert db.execute("SELECT count(*) FROM svti_jobs").fetchone() == before, (
            "a refused batch stored something")
    health.check(got if isinstance(got, list) else [])


def _real_item(item: Any) -> Any:
    if isinstance(item, NewJob):
        return dataclasses.replace(item, payload=real(item.payload))
    if isinstance(item, dict):
        return {k: real(v) for k, v in item.items()}
    return item


STATE_ERRORS = (InvalidInputError, NotFoundError, JobStateError, LeaseLostError)
_unique = itertools.count()


@pytest.mark.timeout(120)
@bounded(120)
@given(types=st.one_of(st.none(), st.just("own"), st.lists(type_names, max_size=3),
                       st.sampled_from([[], "bad type", 5, {"t"}])),
       claim_ms=st.one_of(st.integers(1, LEASE_MS_MAX), lease_ms),
       worker=st.one_of(st.none(), valid_texts, hostile_text),
       extend_ms=st.one_of(st.integers(1, LEASE_MS_MAX), lease_ms), reason=reasons,
       retry=st.one_of(st.booleans(), st.none(), st.just(1)),
       retry_at=st.one_of(valid_run_ats, run_ats), result=st.one_of(valid_payloads, payloads),
       finish=st.sampled_from(["fail", "complete"]),
       bare_id=job_ids, bare_ms=lease_ms)
@example(types="own", claim_ms=10**400, worker=None, extend_ms=1000, reason="x", retry=False,
         retry_at=None, result=None, finish="fail", bare_id=1, bare_ms=1000)
@example(types="own", claim_ms=1000, worker="w", extend_ms=10**400, reason="broke \ud800\x00",
         retry=True, retry_at=datetime(1, 1, 1, 5, tzinfo=PLUS_14), result=None,
         finish="fail", bare_id=10**400, bare_ms=-(10**400))
@example(types="own", claim_ms=1000, worker="w", extend_ms=1000, reason="x", retry=True,
         retry_at=timedelta(days=10**6), result=Deep(950, "dict", 1), finish="complete",
         bare_id=2**63, bare_ms=0)
def test_claim_extend_fail_complete(queue: JobQueue, health: Health, types: Any,  # noqa: PLR0917
                                    claim_ms: Any, worker: Any, extend_ms: Any, reason: Any,
                                    retry: Any, retry_at: Any, result: Any, finish: str,
                                    bare_id: Any, bare_ms: Any) -> None:
    result = real(result)
    own = f"own{next(_unique)}"
    job_id = queue.enqueue(own, {"n": 1}, request_id="prop")
    health.stored(job_id, request_id="prop")
    job = attempt(queue.claim, types=[own] if types == "own" else types, lease_ms=claim_ms,
                  worker=worker, names=("lease_ms", "worker", "job type", "types"))
    if job is not None and not isinstance(job, JobqError):
        attempt(queue.extend, job, extend_ms, names=("lease_ms",), allowed=STATE_ERRORS)
        if finish == "fail":
            attempt(queue.fail, job, reason=reason, retry=retry, run_at=retry_at,
                    names=("reason", "run_at"), allowed=STATE_ERRORS)
        else:
            attempt(queue.complete, job, result=result, names=("result",),
                    allowed=STATE_ERRORS)
    # Unfenced, by a bare id that may not exist or not be a valid id at all.
    attempt(queue.extend, bare_id, bare_ms, names=("job id", "lease_ms"), allowed=STATE_ERRORS)
    attempt(queue.fail, bare_id, reason=reason, names=("job id", "reason"),
            allowed=STATE_ERRORS)
    attempt(queue.complete, bare_id, result=result, names=("job id", "result"),
            allowed=STATE_ERRORS)
    health.check([job_id])


@pytest.mark.timeout(120)
@bounded(60)
@given(older_than=older_thans, via_admin=st.booleans())
@example(older_than=timedelta(days=10**6), via_admin=False)
@example(older_than="1" * 5000 + "s", via_admin=True)
@example(older_than=timedelta(microseconds=1), via_admin=False)
def test_clear_any_cutoff(queue: JobQueue, health: Health, older_than: Any,
                          via_admin: bool) -> None:
    queue.enqueue("c", {"x": 1})
    job = queue.claim(types=["c"])
    assert job is not None
    queue.fail(job, reason="old")
    names = ("duration", "older_than")
    if via_admin:
        attempt(health.admin.preview_clear, older_than, names=names)
        got = attempt(health.admin.clear, older_than, names=names)
    else:
        got = attempt(queue.clear, older_than=older_than, names=names)
    assert isinstance(got, int | InvalidInputError)
    assert not isinstance(got, int) or got >= 0
    health.check()  # (job_id itself may be gone: clearing it is the point)


@pytest.fixture
def async_queue(dsn: str) -> Iterator[tuple[asyncio.Runner, AsyncJobQueue]]:
    with asyncio.Runner() as runner:
        shared = AsyncJobQueue(dsn)
        yield runner, shared
        runner.run(shared.close())


@pytest.mark.timeout(120)
@bounded(40)
@given(call=enqueue_calls(), claim_ms=st.one_of(st.integers(1, LEASE_MS_MAX), lease_ms))
@example(call=_call("all", type="\ud800", payload=Deep(1500, "dict", 1),
                    run_at=timedelta(days=10**6), priority=2**70, idempotency_key="\ud800"),
         claim_ms=10**400)
def test_async_twin_is_stored_or_refused(async_queue: tuple[asyncio.Runner, AsyncJobQueue],
                                         call: tuple[str | None, dict[str, Any]],
                                         claim_ms: Any) -> None:
    runner, queue = async_queue
    bad, kwargs = call
    kwargs = {**kwargs, "payload": real(kwargs["payload"])}

    async def scenario() -> None:
        try:
            got: Any = await queue.enqueue(kwargs.pop("type"), kwargs.pop("payload"), **kwargs)
        except InvalidInputError as exc:
            assert bad is not None, f"valid arguments refused: {exc}"
            assert NAMED.get(bad, "") in str(exc) or bad == "all", exc
        else:
            assert isinstance(got, int)
        try:
            job = await queue.claim(lease_ms=claim_ms)
        except InvalidInputError as exc:
            assert "lease_ms" in str(exc), exc
            job = await queue.claim()
        while job is not None:
            await queue.fail(job, reason="async")
            job = await queue.claim()

    runner.run(scenario())


@pytest.mark.timeout(180)
def test_everything_stored_above_can_be_listed_and_shown(dsn: str, cli: CliInvoke) -> None:
    """One sweep over a queue filled by the generators above, through the library and the
    CLI (list, status and show, human and --json)."""

    @bounded(60)
    @given(call=enqueue_calls(st.sampled_from([None, None, None, "payload", "request_id",
                                               "idempotency_key"])),
           reason=reasons, finish=st.sampled_from(["pending", "failed", "completed", "claimed"]))
    @example(call=_call(None, payload=Deep(256, "list", 1), request_id="r\x1b[31m\u202e"),
             reason="a\x1b[2Jb\nc", finish="failed")
    @example(call=_call(None, payload={"x": "\x9b31m\u2028"}, run_at=WHEN_MAX),
             reason="x", finish="pending")
    @example(call=_call(None, run_at=WHEN_MIN), reason="x", finish="pending")
    @example(call=_call(None, payload=[10**300, -(2**200), 1e308, 5e-324]), reason="x",
             finish="completed")
    def fill(call: tuple[str | None, dict[str, Any]], reason: Any, finish: str) -> None:
        kwargs = {**call[1], "payload": real(call[1]["payload"])}
        got = attempt(queue.enqueue, kwargs.pop("type"), kwargs["payload"],
                      **{k: v for k, v in kwargs.items() if k != "payload"},
                      names=ENQUEUE_NAMES)
        if not isinstance(got, int):
            return
        health.stored(got, kwargs["payload"], kwargs["request_id"])
        if finish == "pending":
            return
        job = queue.claim_by_id(got, worker="sweep")
        if job is None:  # scheduled, or claimed already (a known idempotency key)
            return
        if finish == "failed":
            attempt(queue.fail, job, reason=reason, names=("reason",))
        elif finish == "completed":
            attempt(queue.complete, job, result=kwargs["payload"], names=("result",))

    with JobQueue(dsn) as queue:
        health = Health(queue)
        fill()
        health.sweep(cli)


# -- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def seeded(dsn: str) -> dict[str, int]:
    """One job in each state, with odd but valid data."""
    with JobQueue(dsn) as queue:
        pending = queue.enqueue("t", {"x": "\x1b[31m"}, request_id="r-1")
        scheduled = queue.enqueue("t", run_at=timedelta(days=1), request_id="r-1")
        claimed = queue.enqueue("t", request_id="r-2")
        failed = queue.enqueue("u", request_id="r 3")
        done = queue.enqueue("u")
        for job_id in (claimed, failed, done):
            assert queue.claim_by_id(job_id, worker="seed") is not None
        queue.fail(failed, reason="SMTP\n timeout\x1b")
        queue.complete(done, result=[1])
        return {"pending": pending, "scheduled": scheduled, "claimed": claimed,
                "failed": failed, "completed": done}


@pytest.mark.timeout(120)
@bounded(60)
@given(text=duration_texts.filter(_argv_safe),
       where=st.sampled_from(["delay", "clear", "clear-dry", "age", "extend", "age<"]))
@example(text="²", where="delay")
@example(text="٣d", where="age")
@example(text="1" * 5000 + "s", where="clear")
@example(text="-1d", where="extend")
@example(text="", where="delay")
@example(text="999999999d", where="age<")
def test_cli_durations(cli: CliInvoke, seeded: dict[str, int], text: str, where: str) -> None:
    from jobq_core import parse_duration

    args = {
        "delay": ["enqueue", "t", f"--delay={text}"],
        "clear": ["clear", f"--older-than={text}", "--yes"],
        "clear-dry": ["clear", f"--older-than={text}", "--dry-run", "--json"],
        "age": ["list", f"age:>{text}"],
        "age<": ["list", f"age:<{text}"],
        "extend": ["extend", str(seeded["claimed"]), f"--by={text}", "--yes", "--json"],
    }[where]
    if where.startswith("age"):  # the filter splits on white space: one word, or bad
        words = f"age:>{text}".split()
        text = words[0][len("age:>"):] if len(words) == 1 else "not one word"
    try:
        parse_duration(text)
        valid = True
    except InvalidInputError:
        valid = False
    # Extending by more than a lease may last is bad input too.
    codes = ({0, 2} if where == "extend" else {0}) if valid else {2}
    check_cli(cli(args), args, codes)


@pytest.mark.timeout(120)
@bounded(40)
@given(text=st.one_of(datetimes.map(lambda d: d.isoformat()),
                      st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                                       "2030-01-01T00:00:00", "2030-01-01", "2030-13-01T00:00Z",
                                       "tomorrow", "", "+002030-01-01T00:00:00Z",
                                       "2030-01-01T00:00:00+24:00", "²０３０-01-01"]),
                      hostile_text).filter(_argv_safe),
       where=st.sampled_from(["enqueue", "retry"]))
@example(text="0001-01-01T00:00:00+14:00", where="enqueue")
@example(text="9999-12-31T20:00:00-14:00", where="retry")
def test_cli_times(cli: CliInvoke, seeded: dict[str, int], text: str, where: str) -> None:
    args = (["enqueue", "t", f"--run-at={text}", "--json"] if where == "enqueue" else
            ["retry", str(seeded["failed"]), f"--at={text}", "--dry-run", "--json"])
    check_cli(cli(args), args, {0, 2})


@pytest.mark.timeout(120)
@bounded(60)
@given(text=st.one_of(
    st.integers().map(str), st.integers(-5, 10).map(str),
    st.sampled_from(["abc", "-1", "1e9", "0", "00", "+5", " 5", "5 ", "²", "٣", "\uff11",
                     "9" * 5000, str(2**63), str(2**63 - 1), str(2**64), "0x10", "1_0",
                     "", "\udcff", "1.0", "NaN"]),
    hostile_text.filter(_argv_safe)),
    command=st.sampled_from(["show", "show-json", "retry", "extend", "delete"]),
    dashdash=st.booleans())
@example(text="abc", command="show", dashdash=False)
@example(text="-1", command="show", dashdash=True)
@example(text="1e9", command="show", dashdash=False)
@example(text="9" * 5000, command="show", dashdash=False)
@example(text="٣", command="show", dashdash=False)
@example(text="٣", command="retry", dashdash=False)
def test_cli_ids(cli: CliInvoke, seeded: dict[str, int], text: str, command: str,
                 dashdash: bool) -> None:
    sep = ["--"] if dashdash else []
    args = {
        "show": ["show", *sep, text],
        "show-json": ["show", "--json", *sep, text],
        "retry": ["retry", "--dry-run", "--json", *sep, text],
        "extend": ["extend", "--dry-run", "--json", *sep, text],
        "delete": ["delete", "--dry-run", "--json", *sep, text],
    }[command]
    try:
        job_id: int | None = parse_id(text)
    except InvalidInputError:
        job_id = None
    if job_id is None and not text.strip().isascii():
        codes = {2}  # "٣" or "²" must never select job 3 or 2
    elif job_id is None:
        # Not an id by `parse_id` (e.g. "abc", "-1", "1e9", "0"): bad input, except that
        # Typer reads "+5" and "1_0" as int() does (see the report of issue 10).
        codes = {2} if _python_int(text) is None else {0, 2, 3}
    elif not command.startswith("show"):
        codes = {0}  # a dry run previews any id, eligible or not
    else:
        codes = {0} if job_id in seeded.values() else {3}
    check_cli(cli(args), args, codes)


def _python_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


filter_words = st.one_of(
    st.builds(lambda key, op, value: f"{key}:{op}{value}",
              st.sampled_from(["state", "STATE", "type", "req", "request", "request_id",
                               "error", "age", "attempts", "bogus", ""]),
              st.sampled_from(["", ">", "<", ">=", "<=", "=", "=="]),
              st.one_of(st.sampled_from([*STATES, "Failed", "sleeping", "t", "u", "r-1", "3",
                                         "1h", "²", "٣", "1" * 5000, "%", "_", "\\", "'"]),
                        duration_texts, hostile_text)),
    hostile_text, st.sampled_from(["state:", ":x", "::", "age:", "attempts:>", "req:r-1"]),
)


#: Which field each qualifier sets: two words for one field are an error, never a silent
#: overwrite.
FIELD_OF = {"state": "state", "type": "type", "req": "request_id", "request": "request_id",
            "request_id": "request_id", "error": "error", "age": "age", "attempts": "attempts"}


@pytest.mark.timeout(60)
@bounded(300)
@given(words=st.lists(filter_words, max_size=4))
@example(words=["request:a", "request:b"])
@example(words=["req:a", "request:b"])
@example(words=["request_id:a", "req:b"])
@example(words=["TYPE:a", "type:b"])
def test_filter_text_parses_round_trips_or_is_refused(words: list[str]) -> None:
    """No database: the filter parser itself. A parsed filter describes itself as text that
    parses back to the same filter, and a field given twice is refused."""
    try:
        parsed = parse_filter(" ".join(words))
    except InvalidInputError:
        return
    assert parse_filter(parsed.describe()) == parsed, parsed.describe()
    fields = [FIELD_OF.get(w.partition(":")[0].lower()) for w in " ".join(words).split()]
    assert len(fields) == len(set(fields)), f"{words!r} set one field twice: {parsed}"


@pytest.mark.timeout(60)
@bounded(300)
@given(text=st.one_of(duration_texts, timedeltas))
def test_durations_parse_within_bounds_or_are_refused(text: Any) -> None:
    from jobq_core import format_duration, parse_duration
    from jobq_core.durations import MAX_DURATION

    try:
        value = parse_duration(text)
    except InvalidInputError:
        return
    assert timedelta(0) < value <= MAX_DURATION
    if value.microseconds == 0:
        assert parse_duration(format_duration(value)) == value


@pytest.mark.timeout(120)
@bounded(60)
@given(words=st.lists(filter_words, max_size=4).map(lambda ws: [w for w in ws if
                                                                 _argv_safe(w)]),
       how=st.sampled_from(["list", "list-json", "retry", "extend", "delete"]))
@example(words=["attempts:²"], how="list")
@example(words=["age:>999999999d"], how="list")
@example(words=["req:\udcff"], how="list")
@example(words=["error:\ud800"], how="retry")
@example(words=["state:failed", "state:failed"], how="list")
@example(words=["req:a", "request:b"], how="list")
@example(words=["a" * 100_000], how="list")  # echoed in the error: redacting it must be fast
def test_cli_filters(cli: CliInvoke, seeded: dict[str, int], words: list[str],
                     how: str) -> None:
    text = " ".join(words)
    args = {
        "list": ["list", *words],
        "list-json": ["list", "--json", "--", *words],
        "retry": ["retry", "--failed", f"--filter={text}", "--dry-run", "--json"],
        "extend": ["extend", f"--filter={text}", "--dry-run", "--json"],
        "delete": ["delete", f"--filter={text}", "--dry-run", "--json"],
    }[how]
    default = {"retry": "state:failed", "extend": "state:claimed"}.get(how, "")
    try:
        parse_filter(f"{default} {text}")  # what the command asks Admin.matching_ids for
        valid: bool | None = True
    except InvalidInputError:
        valid = False
    if how == "list" and any(w.startswith("-") for w in words):
        valid = None  # an option to Click, a usage error
    if not valid:
        codes = {2}
    elif how.startswith("list"):
        codes = {0}
    else:
        codes = {0, 3}  # "no job matches" is exit 3
    check_cli(cli(args), args, codes)


@pytest.mark.timeout(120)
@bounded(60)
@given(cursor=st.one_of(hostile_text, st.integers().map(str),
                        st.builds(lambda at, key: f"{at.isoformat()}|{key}", datetimes,
                                  st.integers()),
                        st.sampled_from(["", "|", "x|1", "|1", "0001-01-01T00:00:00+14:00|5",
                                         "9" * 5000, "²", "9999-12-31T23:59:59-14:00|" +
                                         "9" * 30])).filter(_argv_safe),
       state=st.sampled_from(["", *STATES]), limit=st.sampled_from(["1", "50", "0", "1000",
                                                                    "1001", "-1", "x"]))
@example(cursor="0001-01-01T00:00:00+14:00|5", state="failed", limit="1")
@example(cursor="9" * 30, state="", limit="1")
def test_cli_cursors_and_limits(cli: CliInvoke, seeded: dict[str, int], cursor: str,
                                state: str, limit: str) -> None:
    args = ["list", *([f"state:{state}"] if state else []), f"--after={cursor}",
            f"--limit={limit}", "--json"]
    check_cli(cli(args), args, {0, 2})


@pytest.mark.timeout(120)
@bounded(60)
@given(request_id=st.one_of(hostile_text, st.sampled_from(["r-1", "r 3", "", "\udcff",
                                                          "x" * 2000])).filter(_argv_safe),
       as_json=st.booleans())
@example(request_id="\udcff", as_json=False)
@example(request_id="x" * 2000, as_json=True)
def test_cli_trace_request_ids(cli: CliInvoke, seeded: dict[str, int], request_id: str,
                               as_json: bool) -> None:
    args = ["trace", request_id, *(["--json"] if as_json else [])]
    check_cli(cli(args), args, {0, 2})


@pytest.mark.timeout(120)
@bounded(30)
@given(table=st.one_of(hostile_text, st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,45}(\.[A-Za-z_]"
                                                   r"[A-Za-z0-9_]{0,45})?", fullmatch=True),
                       st.sampled_from(["", ".", "a.b.c", "pg_x", "information_schema.x",
                                        "svti_jobs", "public.svti_jobs", "x" * 41])
                       ).filter(_argv_safe),
       via_env=st.booleans())
@example(table="jobs; DROP TABLE x", via_env=False)
@example(table="\udcff", via_env=True)
def test_cli_table_names(cli: CliInvoke, seeded: dict[str, int], table: str, via_env: bool,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    if via_env:
        monkeypatch.setenv("JOBQ_TABLE", table)
        args = ["list", "--json"]
    else:
        monkeypatch.delenv("JOBQ_TABLE", raising=False)
        args = ["list", "--json", f"--table={table}"]
    # 0: the seeded queue; 1: no such queue (it names `jobq migrate`); 2: not a table name.
    check_cli(cli(args), args, {0, 1, 2})


payload_sources = st.one_of(
    st.builds(lambda v: ("arg", json.dumps(v, allow_nan=True).encode()),
              st.recursive(json_scalars.filter(lambda v: not isinstance(v, int) or
                                               abs(v) < 10**4000),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)),
    st.tuples(st.sampled_from(["arg", "stdin", "file"]), st.one_of(
        st.binary(max_size=40),
        st.text(any_char, max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b'{"x": "\xff\xfe"}', b"\xef\xbb\xbf{}", b"\xff", b"{}", b"[]",
                         b"null", b"NaN", b"1e400", b'"\\ud800"', b'{"a":"\\u0000"}',
                         b"[" * 100_000, b"[" * 990 + b"]" * 990, b"[" * 1500 + b"]" * 1500,
                         b"1" * 5000, b"-" + b"9" * 4301, b"{" * 50, b"", b" ",
                         b'{"a": 1, "a": 2}', b"\x00"]),
    )),
)


@pytest.mark.timeout(120)
@bounded(60)
@given(source=payload_sources)
@example(source=("arg", b"[" * 100_000))
@example(source=("stdin", b"1" * 5000))
@example(source=("file", b'{"x": "\xff\xfe"}'))
@example(source=("arg", b"[" * 1500 + b"]" * 1500))
@example(source=("stdin", b"[" * 990 + b"]" * 990))
def test_cli_payloads(cli: CliInvoke, tmp_path: Any, source: tuple[str, bytes]) -> None:
    how, data = source
    stdin: bytes | None = None
    if how == "arg":
        # argv bytes that are not UTF-8 arrive as lone surrogates; NUL cannot be in argv.
        text = data.decode("utf-8", "surrogateescape")
        if "\x00" in text:
            return
        value = text
    elif how == "stdin":
        value, stdin = "-", data
    else:
        file = tmp_path / "payload.json"
        file.write_bytes(data)
        value = f"@{file}"
    args = ["enqueue", "t", "--payload", value, "--json"]
    result = cli(args, input=stdin)
    check_cli(result, args, {0, 2})
    if result.exit_code == 0:
        job_id = json.loads(result.stdout)["id"]
        for fmt in ([], ["--json"]):
            shown = ["show", str(job_id), *fmt]
            check_cli(cli(shown), shown, {0}, stored_data=True)


MARKER = "S3cr3tPw"


def _dsns(server: dict[str, Any]) -> st.SearchStrategy[str]:
    """DSNs that reach this server, or a closed port on 127.0.0.1, or nothing at all: never
    a host name that needs DNS, nor an address that would only time out."""
    port = str(server.get("port") or 5432)
    hosts = st.sampled_from(["127.0.0.1", "localhost", "127.0.0.1:1", f"127.0.0.1:{port}",
                             "[::1]:1", "/nonexistent"])
    dbname = st.sampled_from([str(server.get("dbname") or "postgres"), "nope", "%zz", "a b",
                              "db?x=1", "", "%00"])
    user = st.sampled_from(["postgres", "u", "", "a b", "%zz", "x@y"])
    password = st.sampled_from([MARKER, f"pre@{MARKER}", f"{MARKER}@post", f"a b{MARKER}",
                                f"{MARKER}%zz", f"%{MARKER}", f"{MARKER}:x", f"{MARKER}/x"])
    noise = st.text(st.sampled_from("ab =%@:/?&'\\\"\udcff\n"), max_size=6)
    url = st.builds(lambda s, u, p, h, d, q: f"{s}://{u}:{p}@{h}/{d}{q}",
                    st.sampled_from(["postgresql", "postgres", "pg", "http"]), user, password,
                    hosts, dbname, st.one_of(st.just(""), st.builds(
                        lambda k, v: f"?{k}={v}", st.sampled_from(
                            ["password", "sslmode", "bogus", "connect_timeout", "port"]),
                        st.one_of(password, noise))))
    kv = st.builds(" ".join, st.lists(st.one_of(
        st.builds(lambda p: f"password={p}", password),
        st.builds(lambda p: f"password='{p}", password),   # unterminated quote
        st.builds(lambda p: f"password = {p} x", password),
        st.builds(lambda h: f"host={h.split(':')[0]}", hosts),
        st.sampled_from([f"port={port}", "port=1", "port=99999999999", "port=abc",
                         "dbname=nope", "sslmode=require", "sslmode=bogus", "bogus=1",
                         "options='-c statement_timeout=abc'", "connect_timeout=-1", "="]),
        noise), min_size=1, max_size=5))
    garbage = st.text(any_char, max_size=30).filter(
        lambda t: "host" not in t.lower() and "service" not in t.lower())
    # (Garbage carries no marker: a token that is no password by any syntax is not one.)
    return st.one_of(url, kv, garbage)


@pytest.mark.timeout(120)
def test_cli_dsns_never_leak_the_password(cli: CliInvoke, dsn: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server = conninfo_to_dict(dsn)

    @bounded(80)
    @given(target=_dsns(server).filter(_argv_safe), via_env=st.booleans(),
           command=st.sampled_from([["status"], ["list", "--json"], ["show", "1"]]))
    @example(target=f"password=xx {MARKER} host=127.0.0.1", via_env=False, command=["status"])
    @example(target=f"postgresql://u:pre@{MARKER}@127.0.0.1/db", via_env=False,
             command=["status"])
    @example(target=f"postgresql://127.0.0.1:1/db?password={MARKER}%zz", via_env=False,
             command=["status"])
    @example(target="\udcff", via_env=False, command=["status"])
    @example(target=make_conninfo(dsn, password=MARKER), via_env=True, command=["status"])
    def run(target: str, via_env: bool, command: list[str]) -> None:
        if via_env:
            monkeypatch.setenv("JOBQ_DSN", target)
            args = command
        else:
            monkeypatch.setenv("JOBQ_DSN", dsn)
            args = [*command, f"--dsn={target}"]
        result = cli(args)
        check_cli(result, args)
        output = result.stdout + result.stderr
        assert MARKER not in output, f"jobq {args!r} printed the password: {output.strip()}"

    run()
