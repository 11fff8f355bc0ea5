"""Fleet-wide limits on a task's jobs, kept by the claim statement itself.

A task may have any of three, enforced by every claim of its type on any runner (queries.sql,
`limits_function` and `claim_typed`):

- `global_concurrency`: at most this many of its jobs claimed at once, fleet-wide. A claimed
  job holds its slot until it completes, fails, is handed back or snoozed; a job whose holder
  died keeps its slot until its lease runs out and a claim takes it back, and its slot passes
  with it.
- `key_concurrency`: at most this many claimed at once per key. The key is the job's own
  `concurrency_key` (given at enqueue, or computed by the task's `concurrency_key` function
  when the producer's queue knows the task), else the payload's top-level field named by a
  `concurrency_key` string, else '' (one key for all such jobs).
- `rate_limit`: at most "N/period" claims started, as a token bucket of `rate_burst` tokens
  (N unless given) refilled at N per period: over any window of length w, at most
  `rate_burst + N * w / period` claims start. A job taken back from a dead holder spends no
  token; it started before. `key_rate_limit` (with `key_rate_burst`) is the same per key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import InvalidInputError

#: A key function of the payload, or the name of a top-level payload field.
KeyOf = Callable[[Any], Any] | str

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(ms|s|sec|second|m|min|minute|h|hour|d|day)s?\s*")
_UNITS = {"ms": timedelta(milliseconds=1), "s": timedelta(seconds=1),
          "sec": timedelta(seconds=1), "second": timedelta(seconds=1),
          "m": timedelta(minutes=1), "min": timedelta(minutes=1),
          "minute": timedelta(minutes=1), "h": timedelta(hours=1), "hour": timedelta(hours=1),
          "d": timedelta(days=1), "day": timedelta(days=1)}
#: The longest key, and payload field name, a key limit takes.
KEY_MAX = 128
_FIELD = re.compile(rf"[^\x00-\x1f]{{1,{KEY_MAX}}}")
#: The largest count a limit takes (an int column; beyond it a limit means nothing).
LIMIT_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` claims per `period`, in bursts of at most `burst`."""

    count: int
    period: timedelta
    burst: int

    @property
    def spec(self) -> str:
        return f"{self.count}/{_period_text(self.period)}"


def _period_text(period: timedelta) -> str:
    for unit, size in (("d", timedelta(days=1)), ("h", timedelta(hours=1)),
                       ("m", timedelta(minutes=1)), ("s", timedelta(seconds=1)),
                       ("ms", timedelta(milliseconds=1))):
        if period % size == timedelta(0):
            n = period // size
            return unit if n == 1 else f"{n}{unit}"
    return f"{period.total_seconds()}s"  # pragma: no cover - periods are whole ms


def parse_rate(spec: object, burst: object = None, what: str = "rate_limit") -> Rate:
    """"100/s", "1000/h", "5/10m": a count per period (ms, s, m, h or d, optionally with a
    multiple); `burst` defaults to the count."""
    if not isinstance(spec, str) or not (m := _RATE.fullmatch(spec)):
        raise InvalidInputError(
            f"invalid {what} {spec!r}: use 'count/period' such as '100/s', '1000/h' or "
            "'5/10m' (periods: ms, s, m, h, d)")
    count, multiple, unit = int(m[1]), int(m[2] or 1), m[3]
    period = _UNITS[unit] * multiple
    if not 0 < count <= LIMIT_MAX or not timedelta(0) < period <= timedelta(days=366):
        raise InvalidInputError(
            f"invalid {what} {spec!r}: the count must be 1-{LIMIT_MAX:,} and the period "
            "at most 366 days")
    burst_name = what.replace("limit", "burst")
    return Rate(count, period, _count(burst, burst_name) if burst is not None else count)


def rate_of(count: int | None, period: timedelta | None, burst: int | None) -> Rate | None:
    """A rate as a row stores it (NULLs: none)."""
    if count is None or period is None or burst is None:
        return None
    return Rate(count, period, burst)


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= LIMIT_MAX:
        raise InvalidInputError(f"{what} must be an integer from 1 to {LIMIT_MAX:,}, got "
                                f"{value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """One task's limits, as `TaskRunner.register` takes them."""

    global_concurrency: int | None = None
    key_concurrency: int | None = None
    #: A function of the payload, applied at enqueue, or a payload field read by claims.
    key: KeyOf | None = None
    rate: Rate | None = None
    key_rate: Rate | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Limits | None:
        """The limits among a task's options, checked; None when it has none."""
        global_c, key_c = options.get("global_concurrency"), options.get("key_concurrency")
        key, rate, burst = (options.get("concurrency_key"), options.get("rate_limit"),
                            options.get("rate_burst"))
        key_rate, key_burst = options.get("key_rate_limit"), options.get("key_rate_burst")
        if key is not None and not (callable(key) or isinstance(key, str)):
            raise InvalidInputError("concurrency_key must be a function of the payload or the "
                                    f"name of a payload field, got {key!r}")
        if isinstance(key, str) and not _FIELD.fullmatch(key):
            raise InvalidInputError(f"invalid concurrency_key field {key!r}: 1-128 printable "
                                    "characters")
        if (key is None) != (key_c is None and key_rate is None):
            raise InvalidInputError("key_concurrency or key_rate_limit, and concurrency_key, "
                                    "go together: a per-key limit, and what a job's key is")
        if burst is not None and rate is None:
            raise InvalidInputError("rate_burst needs a rate_limit")
        if key_burst is not None and key_rate is None:
            raise InvalidInputError("key_rate_burst needs a key_rate_limit")
        limits = cls(
            _count(global_c, "global_concurrency") if global_c is not None else None,
            _count(key_c, "key_concurrency") if key_c is not None else None,
            key,
            parse_rate(rate, burst) if rate is not None else None,
            parse_rate(key_rate, key_burst, "key_rate_limit") if key_rate is not None
            else None,
        )
        return None if limits == cls() else limits

    @property
    def key_field(self) -> str | None:
        return self.key if isinstance(self.key, str) else None

    def describe(self) -> str:
        """A line for logs and warnings."""
        return describe_limits(self.global_concurrency, self.key_concurrency, self.key_field,
                               self.rate, self.key_rate)


def describe_limits(global_c: int | None, key_c: int | None, key_field: str | None,
                    rate: Rate | None, key_rate: Rate | None) -> str:
    """"global 4, per key 2, rate 100/s burst 100, per key rate 5/s burst 5 (field 'x')"."""
    parts = []
    if global_c is not None:
        parts.append(f"global {global_c}")
    if key_c is not None:
        parts.append(f"per key {key_c}")
    if rate is not None:
        parts.append(f"rate {rate.spec} burst {rate.burst}")
    if key_rate is not None:
        parts.append(f"per key rate {key_rate.spec} burst {key_rate.burst}")
    text = ", ".join(parts) or "none"
    return text + (f" (key field {key_field!r})" if key_field else "")


def key_of(fn: KeyOf, type_: str, payload: Any) -> str | None:
    """A job's key from its task's key function, applied at enqueue. A field name is left
    to the claims (None here)."""
    if isinstance(fn, str):
        return None
    try:
        key = fn(payload)
    except Exception as exc:
        raise InvalidInputError(f"the concurrency_key function of task {type_!r} failed on "
                                f"this payload: {type(exc).__name__}: {exc}") from None
    if key is None:
        return None
    text = str(key)
    if not _FIELD.fullmatch(text) and text != "":
        raise InvalidInputError(f"task {type_!r}'s concurrency_key gave {text[:60]!r}: a key "
                                "is at most 128 printable characters")
    return text
