"""The console's bars: where you are, how fresh the data is, and whether the database is up."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from jobq_cli.format import lag, span
from jobq_cli.safe import visible
from jobq_core.admin import Replication


@dataclass(frozen=True, slots=True)
class Freshness:
    """What the status bar shows about the data on screen."""

    age: float | None  # seconds since the last successful refresh; None before the first
    query_ms: float | None
    interval: float
    paused: bool
    read_only: bool
    target: str  # database and table, without the password
    #: Where the read replica stands, when reads go to one.
    replica: Replication | None = None


#: A replica further behind than this many seconds shows in yellow, beyond the second in red.
LAG_WARN, LAG_ALARM = 5.0, 60.0


def replica_badge(replica: Replication) -> tuple[str, str]:
    """How far behind the replica the screen was read from is; after an action taken on the
    primary, until the replica has replayed it, that it does not show the action yet (fits
    80 columns after the data's age and query time)."""
    behind = f"replica {lag(replica.lag)} behind"
    if not replica.streaming:
        return f" · replica NOT streaming ({lag(replica.lag)} behind)", "bold red"
    if not replica.has_own_writes:
        return f" · {behind}, not yet showing your action", "bold yellow"
    seconds = None if replica.lag is None else replica.lag.total_seconds()
    if seconds is None or seconds > LAG_ALARM:
        return f" · {behind}", "bold red"
    return f" · {behind}", "yellow" if seconds > LAG_WARN else ""


class StatusBar(Static):
    """Bottom line: the freshness badge (data age, query time, interval) and the mode."""

    def show(self, info: Freshness) -> None:
        parts: list[Text | tuple[str, str] | str] = []
        if info.read_only:
            parts += [(" READ-ONLY ", "bold reverse"), " "]
        if info.paused:
            parts += [(" PAUSED ", "bold reverse"), " space resumes · "]
        if info.age is None:
            parts.append(("loading…", "dim"))
        else:
            stale = info.age > max(3 * info.interval, 5) and not info.paused
            parts.append((f"updated {span(info.age)} ago", "bold red" if stale else ""))
            if info.query_ms is not None:
                parts.append(f" · query {info.query_ms:.0f} ms")
        if info.replica is not None:
            parts.append(replica_badge(info.replica))
        parts.append(f" · every {info.interval:g}s")
        parts.append((f" · {info.target}", "dim"))
        self.set_class(info.read_only, "-read-only")
        self.update(Text.assemble(*parts, no_wrap=True, overflow="ellipsis"))


class Banner(Static):
    """A full-width warning while the database cannot be reached; hidden otherwise."""

    def show(self, message: str | None) -> None:
        self.display = message is not None
        if message is not None:
            self.update(Text(message, no_wrap=True, overflow="ellipsis"))


class Crumbs(Static):
    """Top line: where you are, as a path you can walk back with escape."""

    def show(self, path: list[str]) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" jobq ", style="bold reverse")
        for i, part in enumerate(path):
            text.append(" / ", style="dim")
            text.append(visible(part, 60), style="bold" if i == len(path) - 1 else "")
        self.update(text)
