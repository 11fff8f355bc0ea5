"""Turning queue data into terminal text. Untrusted text always becomes a literal `Text`,
never markup, with control characters made visible (see `safe.visible`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.text import Text

from .safe import visible

SPARK = "▁▂▃▄▅▆▇█"


def literal(value: object, limit: int | None = None, style: str = "") -> Text:
    """Untrusted text as a literal `Text`: `[bold]` stays text, escapes are shown as \\x1b."""
    return Text("" if value is None else visible(value, limit), style=style)


def first_line(value: object, limit: int = 80) -> Text:
    """The first line of a multi-line message such as a traceback, cut to `limit`."""
    text = "" if value is None else str(value)
    head, _, rest = text.partition("\n")
    return literal(head + (" …" if rest.strip() else ""), limit)


def span(delta: timedelta | float | None) -> str:
    """A compact duration: 4s, 3m12s, 2h05m, 3d04h."""
    if delta is None:
        return "—"
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def relative(when: datetime | None, now: datetime) -> str:
    """`in 5s` for the future, `5s ago` for the past."""
    if when is None:
        return "—"
    delta = when - now
    if abs(delta.total_seconds()) < 1:
        return "now"
    return f"in {span(delta)}" if delta.total_seconds() > 0 else f"{span(delta)} ago"


def clock(when: datetime | None) -> str:
    """A timestamp to the millisecond, in UTC (as servers log)."""
    if when is None:
        return "—"
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def lease_left(lease_until: datetime | None, now: datetime, full: float = 60.0,
               width: int = 8) -> Text:
    """Time left on a lease as a bar; a lapsed lease stands out in reverse red."""
    if lease_until is None:
        return Text("—")
    left = (lease_until - now).total_seconds()
    if left <= 0:
        return Text(f" EXPIRED {span(-left)} ago ", style="bold reverse red")
    filled = max(1, min(width, round(width * left / full)))
    style = "red" if left < 10 else "yellow" if left < 60 else "green"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"),
                         f" {span(left)}")


def sparkline(values: list[int], width: int = 20) -> Text:
    """The last `width` values as block characters, scaled to the largest."""
    tail = values[-width:]
    top = max(tail, default=0)
    if top <= 0:
        return Text(SPARK[0] * len(tail), style="dim")
    return Text("".join(SPARK[min(7, (v * 7 + top - 1) // top)] for v in tail))


def pretty_json(value: Any) -> Text:
    """A payload as indented JSON; control characters arrive escaped by the encoder and any
    other invisible character is made visible."""
    return Text("\n".join(visible(line) for line in
                          json.dumps(value, indent=2, ensure_ascii=False,
                                     sort_keys=False, default=str).splitlines()))


def multiline(value: object, indent: str = "") -> Text:
    """A message such as a traceback, one literal line per line."""
    lines = ("" if value is None else str(value)).splitlines() or [""]
    return Text("\n".join(indent + visible(line) for line in lines))


def count(value: object) -> Text:
    """A `Count` (exact, or ~estimate) right-aligned; zero is dimmed."""
    text = str(value)
    return Text(text, style="dim" if text == "0" else "", justify="right")
