"""The values jobq hands out and takes in, and the validation at the edge."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from .errors import InvalidInputError
from .limits import KEY_MAX, KeyOf, key_of

#: The priority range: it is stored as SMALLINT.
PRIORITY_MIN, PRIORITY_MAX = -32768, 32767
#: The longest lease a claim or extend may ask for: a week.
LEASE_MS_MAX = 7 * 24 * 3600 * 1000
_TYPE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,127}")
_TEXT_MAX = 1024
#: Points in time a job may be given: readable back in any session time zone (a UTC time
#: next to year 1 or 9999 is not, once shifted by up to 14 hours).
WHEN_MIN = datetime(1, 1, 2, tzinfo=UTC)
WHEN_MAX = datetime(9999, 12, 30, tzinfo=UTC)
#: The longest delay from now.
DELAY_MAX = timedelta(days=100 * 366)
#: A worker name: what `claimed_by` stores.
WORKER_MAX = 200
#: The deepest nesting a payload or result may have. Whatever is stored must decode again
#: wherever it is read (psycopg's json.loads, the CLI's --json, the console's pretty JSON all
#: recurse, from call stacks of their own), so the limit is fixed, not the encoder's luck.
JSON_DEPTH_MAX = 256
# One encoder for every payload: json.dumps with options would build a new one per call.
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Job:
    """A job as a claimer sees it. `lease_token` fences complete, fail and extend.

    `attempts` counts the claims so far, so a claimed job's `attempts` is the number of the
    attempt under way: the `attempt` of the events it writes (`Event.attempt`) and of the
    runner's `ctx.attempt`. The plural is the count on the job; the singular, which one."""

    id: int
    type: str
    payload: Any
    priority: int
    run_at: datetime
    attempts: int
    request_id: str | None
    idempotency_key: str | None
    lease_token: UUID | None
    lease_until: datetime | None
    claimed_by: str | None
    created_at: datetime
    #: The W3C trace context of the span that enqueued the job, if there was one
    #: (`jobq_core.tracing`); every attempt's span is its child.
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class NewJob:
    """One item for `enqueue_many`; the fields mirror `enqueue`'s arguments."""

    type: str
    payload: Any = None
    run_at: datetime | timedelta | None = None
    priority: int = 0
    idempotency_key: str | None = None
    request_id: str | None = None
    #: What a key limit counts the job under (see `jobq_core.limits`).
    concurrency_key: str | None = None


@dataclass(frozen=True, slots=True)
class EnqueueParams:
    """A validated `NewJob`, ready to be bound to a statement."""

    type: str
    payload: str | None
    run_at: datetime | None
    delay: timedelta | None
    priority: int
    idempotency_key: str | None
    request_id: str | None
    concurrency_key: str | None


def validate_type(value: object, what: str = "job type") -> str:
    if not isinstance(value, str) or not _TYPE_RE.fullmatch(value):
        raise InvalidInputError(
            f"invalid {what} {value!r}: use 1-128 characters of letters, digits and _ . : / -, "
            "not starting with punctuation"
        )
    return value


def validate_types(types: object) -> list[str] | None:
    if types is None:
        return None
    if isinstance(types, str):
        return [validate_type(types)]
    if not isinstance(types, list | tuple | set | frozenset):
        raise InvalidInputError(f"types must be a list of job types, got {type(types).__name__}")
    checked = sorted({validate_type(t) for t in types})
    if not checked:
        raise InvalidInputError("types must not be empty; pass None to claim any type")
    return checked


def _encodable(text: str) -> bool:
    """Whether the text is valid Unicode for the database: a lone surrogate is not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def optional_text(value: object, what: str, maximum: int = _TEXT_MAX) -> str | None:
    """Request ids and idempotency keys: any text without NUL or lone surrogates, at most
    1024 characters.

    An empty string means "none", as upstream does for request ids.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError(f"{what} must not contain a NUL character")
    if len(value) > maximum:
        raise InvalidInputError(f"{what} is {len(value)} characters long; at most {maximum}")
    if not _encodable(value):
        raise InvalidInputError(f"{what} is not valid Unicode (a lone surrogate)")
    return value


def validate_worker(value: object) -> str:
    """A worker name as `claimed_by` stores it."""
    name = optional_text(value, "worker name", WORKER_MAX)
    if name is None:
        raise InvalidInputError("worker name must not be empty")
    return name


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(v) for v in value)
    return False


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest more than `limit` levels deep (iteratively: no recursion
    limit of its own). Only called on a value that encoded, so it has no cycles."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
    return False


def job_list(jobs: object, what: str = "jobs") -> list[Any]:
    """A batch argument as a list: any iterable of items, but not one item on its own (a
    job, a string, a mapping), which would otherwise be taken apart."""
    if isinstance(jobs, str | bytes | bytearray | Mapping | Job | NewJob) or not isinstance(
            jobs, Iterable):
        raise InvalidInputError(f"{what} must be a list, got {type(jobs).__name__}")
    return list(jobs)


class UndecodableJSON(str):
    """A stored JSON value Python cannot decode (nested deeper than its decoder goes, or a
    number of more digits than it converts; only
    another client can write one, as jobq refuses them), kept as its text: the row still
    claims, lists and shows, and a runner fails its job instead of running it."""


def load_json(data: bytes | bytearray | memoryview | str) -> Any:
    """How jobq reads json and jsonb columns: as `json.loads`, except that a value too deep
    to decode becomes an `UndecodableJSON` rather than an error after a claim committed."""
    raw = bytes(data) if isinstance(data, memoryview) else data
    try:
        return json.loads(raw)
    except (RecursionError, ValueError):  # too deep, or an integer beyond 4,300 digits
        return UndecodableJSON(raw if isinstance(raw, str) else raw.decode())


def dump_json(value: Any, what: str = "payload") -> str | None:
    """Serialise to JSON text that Postgres' jsonb accepts, or raise `InvalidInputError`."""
    if value is None:
        return None
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidInputError(f"{what} is nested too deeply to store") from None
    # Cheap first: the brackets in the text bound the depth from above.
    if (text.count("[") + text.count("{") > JSON_DEPTH_MAX
            and isinstance(value, dict | list | tuple) and _deeper_than(value, JSON_DEPTH_MAX)):
        raise InvalidInputError(
            f"{what} is nested too deeply to store: at most {JSON_DEPTH_MAX} levels")
    if not _encodable(text):
        raise InvalidInputError(f"{what} is not valid Unicode (it holds a lone surrogate)")
    # jsonb cannot store U+0000; json.dumps writes it as the escape \u0000.
    if "\\u0000" in text and _contains_nul(value):
        raise InvalidInputError(f"{what} contains a NUL character (\\u0000), which jsonb rejects")
    return text


def validate_priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"priority must be an integer, got {value!r}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise InvalidInputError(
            f"priority {value} is out of range {PRIORITY_MIN}..{PRIORITY_MAX}"
        )
    return value


def validate_when(value: object, what: str = "run_at") -> tuple[datetime | None, timedelta | None]:
    """A point in time (timezone-aware, between years 1 and 9999 in any time zone) or a delay
    from the database's now() (from zero to 100 years)."""
    if value is None:
        return None, None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInputError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
        try:
            in_range = WHEN_MIN <= value <= WHEN_MAX
        except OverflowError:
            in_range = False
        if not in_range:
            raise InvalidInputError(
                f"{what} {value.isoformat()} is out of range: from {WHEN_MIN.date()} to "
                f"{WHEN_MAX.date()} UTC")
        # As UTC: Python allows offsets up to 24 hours, Postgres reads at most 15:59.
        return value.astimezone(UTC), None
    if isinstance(value, timedelta):
        if not timedelta(0) <= value <= DELAY_MAX:
            raise InvalidInputError(
                f"{what} delay {value} is out of range: from 0 to {DELAY_MAX.days} days")
        return None, value
    raise InvalidInputError(f"{what} must be a datetime or a timedelta, got {type(value).__name__}")


def validate_lease_ms(value: object, what: str = "lease_ms") -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{what} must be a number of milliseconds, got {value!r}")
    # An int is never NaN, and one beyond a float's range must not reach math.isnan.
    if (isinstance(value, float) and math.isnan(value)) or not value > 0:
        raise InvalidInputError(f"{what} must be positive, got {value!r}")
    if value > LEASE_MS_MAX:
        raise InvalidInputError(f"{what} {value!r} exceeds the maximum of {LEASE_MS_MAX} (7 days)")
    return max(1, round(value))


def validate_limit(value: object, what: str = "limit", maximum: int = 10_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInputError(f"{what} must be an integer from 1 to {maximum}, got {value!r}")
    return value


def validate_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise InvalidInputError(f"job id must be a positive integer, got {value!r}")
    return value


def parse_id(text: str) -> int:
    """A job id typed by a person: ASCII digits only ("²" and "٣" are digits to Python)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise InvalidInputError(f"invalid job id {text!r}: expected a positive whole number")
    return validate_id(int(text))


def clean_reason(value: object) -> str:
    """A failure reason is stored as given, except what text columns refuse: NUL, and lone
    surrogates (an exception's text may hold them), which are written as escapes. A failure
    is always recorded."""
    if not isinstance(value, str):
        raise InvalidInputError(f"reason must be a string, got {type(value).__name__}")
    text = value.replace("\x00", "\\x00")
    if not _encodable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def new_job_params(job: NewJob | Mapping[str, Any],
                   keys_of: Mapping[str, KeyOf] | None = None) -> EnqueueParams:
    """A job checked and encoded; its concurrency key, unless given, from its task's key
    function when `keys_of` (a queue's, by type) has one."""
    if isinstance(job, Mapping):
        try:
            job = NewJob(**job)
        except TypeError as exc:
            raise InvalidInputError(f"invalid job item: {exc}") from None
    if not isinstance(job, NewJob):
        raise InvalidInputError(f"expected a NewJob or a mapping, got {type(job).__name__}")
    run_at, delay = validate_when(job.run_at)
    return EnqueueParams(
        type=validate_type(job.type),
        payload=dump_json(job.payload),
        run_at=run_at,
        delay=delay,
        priority=validate_priority(job.priority),
        idempotency_key=optional_text(job.idempotency_key, "idempotency_key"),
        request_id=optional_text(job.request_id, "request_id"),
        concurrency_key=(
            optional_text(job.concurrency_key, "concurrency_key", KEY_MAX)
            if job.concurrency_key is not None or keys_of is None or job.type not in keys_of
            else key_of(keys_of[job.type], job.type, job.payload)),
    )
