"""Human durations such as ``30s``, ``90m``, ``1d12h`` or ``2w``."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import InvalidInputError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw])")
_WHOLE = re.compile(r"(?:\d+[smhdw])+")

ACCEPTED = "a duration like 30s, 90m, 12h, 7d, 2w or 1d12h (units s, m, h, d, w)"


def parse_duration(text: str | timedelta) -> timedelta:
    """Parse a duration string; a `timedelta` passes through. Zero and negative are rejected."""
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, str) and _WHOLE.fullmatch(text.strip().lower()):
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(text.strip().lower()))
        try:
            value = timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidInputError(f"duration {text!r} is too large") from None
    else:
        raise InvalidInputError(f"invalid duration {text!r}: expected {ACCEPTED}")
    if value <= timedelta(0):
        raise InvalidInputError(f"duration must be positive, got {text!r}")
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
