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


def lag(delta: timedelta | None) -> str:
    """A replica's lag: "0 s", "1.2 s" under a minute, then as `span`; "unknown" for None."""
    if delta is None:
        return "unknown"
    seconds = delta.total_seconds()
    if seconds == 0:
        return "0 s"
    return f"{seconds:.1f} s" if seconds < 60 else span(delta)


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


def stamp(when: datetime | None, *, millis: bool = False) -> str:
    """A point in time as the console shows it, with its zone: 2026-12-06 14:03:07 UTC."""
    if when is None:
        return "—"
    shown = clock(when)
    return f"{shown if millis else shown[:19]} UTC"


def zoned(when: datetime, now: datetime) -> str:
    """A time with its zone (UTC, as servers log): 14:30 UTC today, else with the date."""
    utc = when.astimezone(UTC)
    day = "" if utc.date() == now.astimezone(UTC).date() else utc.strftime("%Y-%m-%d ")
    return f"{day}{utc:%H:%M} UTC"


#: The lease a job without a recorded length is judged by: the queue's default.
DEFAULT_LEASE = 30.0


def late(left: float, lease_ms: int | None) -> bool:
    """Less than half of its own lease left: its holder missed a heartbeat (a runner renews
    every third of a lease), as the overview's `late` count says."""
    return left < (lease_ms / 1000 if lease_ms else DEFAULT_LEASE) / 2


def lease_left(lease_until: datetime | None, now: datetime, lease_ms: int | None = None,
               width: int = 8) -> Text:
    """Time left on a lease as a bar scaled to the job's own lease (full when fresh, and when
    an operator extended it beyond); a late lease is yellow and says so, a lapsed one stands
    out in reverse red."""
    if lease_until is None:
        return Text("—")
    left = (lease_until - now).total_seconds()
    if left <= 0:
        return Text(f" EXPIRED {span(-left)} ago ", style="bold reverse red")
    full = lease_ms / 1000 if lease_ms else DEFAULT_LEASE
    filled = max(1, min(width, round(width * left / full)))
    behind = late(left, lease_ms)
    style = "yellow" if behind else "green"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"),
                         f" {span(left)}", (" late", "bold yellow") if behind else "")


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


#: What a completed job's history row holds instead of a payload larger than the queue's
#: `history_payload_bytes` (its size as stored).
NOT_KEPT = "jobq_payload_not_kept"


def not_kept(payload: Any) -> str | None:
    """What to say instead of a payload that history did not keep; None when it did."""
    if isinstance(payload, dict) and list(payload) == [NOT_KEPT]:
        return f"payload of {visible(payload[NOT_KEPT])} bytes not kept (history_payload_bytes)"
    return None


def payload_line(payload: Any, limit: int) -> Text:
    """A payload on one line, as compact JSON."""
    note = not_kept(payload)
    if note is not None:
        return Text(note, style="dim")
    return literal(json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str),
                   limit)


def multiline(value: object, indent: str = "") -> Text:
    """A message such as a traceback, one literal line per line."""
    lines = ("" if value is None else str(value)).splitlines() or [""]
    return Text("\n".join(indent + visible(line) for line in lines))


def count(value: object) -> Text:
    """A `Count` (exact, or ~estimate) right-aligned; zero is dimmed."""
    text = str(value)
    return Text(text, style="dim" if text == "0" else "", justify="right")
