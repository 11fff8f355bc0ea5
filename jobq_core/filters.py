"""The job filter shared by `jobq list`, `jobq retry --failed …` and the TUI's filter bar.

Text form: space-separated qualifiers, e.g.
``state:failed type:send-email req:abc123 error:Timeout age:>1h attempts:>=3``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from .durations import parse_duration
from .errors import InvalidInputError
from .models import optional_text, parse_id, validate_id, validate_type

#: What `state:` accepts. pending = ready + scheduled; expired = claimed with a lapsed lease;
#: completed jobs live in the history only.
STATES = ("pending", "ready", "scheduled", "claimed", "expired", "failed", "cancelled",
          "completed")
_COMPARE = re.compile(r"(>=|<=|>|<|=)?(.+)")
QUALIFIERS = "state, id, type, req, error, age, attempts"


@dataclass(frozen=True, slots=True)
class JobFilter:
    state: str | None = None
    type: str | None = None
    request_id: str | None = None
    error: str | None = None
    #: ("<" | ">", duration): younger or older than.
    age: tuple[str, timedelta] | None = None
    #: (operator, count), operator one of = < <= > >=.
    attempts: tuple[str, int] | None = None
    #: One job, by id (a completed job's history row has its payload).
    job_id: int | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise InvalidInputError(
                f"unknown state {self.state!r}: use one of {', '.join(STATES)}")
        if self.job_id is not None:
            validate_id(self.job_id)
        if self.type is not None:
            validate_type(self.type)
        optional_text(self.request_id, "request id")
        optional_text(self.error, "error text")

    def describe(self) -> str:
        """The filter in its text form, round-trippable through `parse_filter`."""
        parts = [f"{key}:{value}" for key, value in (
            ("state", self.state), ("id", self.job_id), ("type", self.type),
            ("req", self.request_id), ("error", self.error)) if value]
        if self.age:
            parts.append(f"age:{self.age[0]}{int(self.age[1].total_seconds())}s")
        if self.attempts:
            parts.append(f"attempts:{self.attempts[0]}{self.attempts[1]}")
        return " ".join(parts)


def parse_filter(text: str) -> JobFilter:
    """Parse the text form; raises `InvalidInputError` naming what is accepted."""
    values: dict[str, object] = {}
    for word in text.split():
        key, sep, value = word.partition(":")
        if not sep or not value:
            raise InvalidInputError(
                f"cannot read {word!r}: use qualifier:value with one of {QUALIFIERS}")
        key = key.lower()
        # req, request and request_id are one field: a second of them is "given twice" too.
        field = {"req": "request_id", "request": "request_id", "id": "job_id"}.get(key, key)
        if field in values:
            raise InvalidInputError(f"{key}: given twice")
        if key == "state":
            values["state"] = value.lower()
        elif key == "id":
            values["job_id"] = parse_id(value)
        elif key == "type":
            values["type"] = value
        elif key in ("req", "request", "request_id"):
            values["request_id"] = value
        elif key == "error":
            values["error"] = value
        elif key == "age":
            op, amount = _comparison(word, value)
            if op not in ("<", ">"):
                raise InvalidInputError(f"{word!r}: age takes > or <, e.g. age:>1h")
            values["age"] = (op, parse_duration(amount))
        elif key == "attempts":
            op, amount = _comparison(word, value)
            if not (amount.isascii() and amount.isdigit() and len(amount) <= 9):
                raise InvalidInputError(
                    f"{word!r}: attempts takes a number from 0 to 999999999, e.g. attempts:>=3")
            values["attempts"] = (op, int(amount))
        else:
            raise InvalidInputError(f"unknown qualifier {key!r}: use one of {QUALIFIERS}")
    return JobFilter(**values)  # type: ignore[arg-type]


def _comparison(word: str, value: str) -> tuple[str, str]:
    match = _COMPARE.fullmatch(value)
    if match is None:  # pragma: no cover - the pattern accepts any non-empty value
        raise InvalidInputError(f"cannot read {word!r}")
    return match.group(1) or "=", match.group(2)
