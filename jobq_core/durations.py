"""Human durations such as ``30s``, ``90m``, ``1d12h`` or ``2w``."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import InvalidInputError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# ASCII digits only, at most 9 per number: "²" or a 5,000-digit number is a bad duration,
# never a crash of int().
_PART = re.compile(r"([0-9]{1,9})([smhdw])")
_WHOLE = re.compile(r"(?:[0-9]{1,9}[smhdw])+")

#: The longest duration anything accepts: far beyond any retention or delay, and well inside
#: what Postgres can add to now().
MAX_DURATION = timedelta(days=100 * 366)

ACCEPTED = "a duration like 30s, 90m, 12h, 7d, 2w or 1d12h (units s, m, h, d, w)"


def parse_duration(text: str | timedelta, *, maximum: timedelta = MAX_DURATION) -> timedelta:
    """Parse a duration string; a `timedelta` passes through. Zero, negative and durations
    beyond `maximum` (100 years unless said) are rejected with `InvalidInputError`."""
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, str) and _WHOLE.fullmatch(text.strip().lower()):
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(text.strip().lower()))
        if seconds > maximum.total_seconds():
            raise InvalidInputError(
                f"duration {text!r} is too long: at most {format_duration(maximum)}")
        value = timedelta(seconds=seconds)
    else:
        raise InvalidInputError(f"invalid duration {text!r}: expected {ACCEPTED}")
    if value <= timedelta(0):
        raise InvalidInputError(f"duration must be positive, got {text!r}")
    if value > maximum:
        raise InvalidInputError(
            f"duration {text!r} is too long: at most {format_duration(maximum)}")
    return value


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration` for whole seconds: ``timedelta(hours=36)`` is ``1d12h``."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
