"""Periodic jobs: when a schedule's slots fall, and which of them a tick fires.

A slot is a point in time, in UTC, at which a schedule's job is due. A cron schedule's slots
are the wall-clock times its expression matches in its time zone (cronsim parses and walks
the expression on naive local times); each is then placed in UTC by this module, so that the
daylight-saving rule is jobq's own and written down here:

- a local time that does not exist (the hour skipped when clocks go forward) is no slot:
  nothing fires for it, then or later;
- a local time that exists twice (the hour repeated when clocks go back) is one slot, at its
  first occurrence: the repeated hour fires once.

An interval schedule (`every`) has its slots at whole multiples of its period since the Unix
epoch, in UTC, so every runner computes the same slots and no time zone applies.

Slots are fired by whichever runner ticks first: each slot's job carries the idempotency key
`cron:<name>:<slot>`, and the schedule's row records the newest slot handled, so a slot is
fired at most once across any number of runners, with no leader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import InvalidInputError
from .models import validate_type

Missed = Literal["skip", "latest", "all"]
MISSED_POLICIES: tuple[Missed, ...] = ("skip", "latest", "all")

#: A tick whose oldest due slot is at most this old catches up on all of them. One that
#: finds an older slot (the runners were away or far behind) fires the newest slot if it is
#: this recent, and the schedule's `missed` policy decides about the others.
ON_TIME = timedelta(seconds=60)
#: Under `missed="all"`, how far back missed slots are fired, and the most of them one
#: tick fires (the newest).
MISSED_WINDOW, MISSED_MAX = timedelta(days=1), 1000
#: How far ahead the next slot is looked for: an expression whose slots can be further apart
#: (say, a fifth Monday in February) is refused when registered.
_HORIZON = timedelta(days=4 * 366 + 1)
#: The longest interval; and zone names that are not one place's rules everywhere.
EVERY_MAX = timedelta(days=366)
_NOT_A_ZONE = frozenset({"localtime", "posixrules", "Factory"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A periodic job: `name` is both the schedule's name and the type of the jobs it
    enqueues. Exactly one of `cron` (a five-field expression, read in `tz`) and `every`."""

    name: str
    cron: str | None = None
    every: timedelta | None = None
    tz: str = "UTC"
    #: What happens to slots missed while no runner ticked: "skip" fires none of them,
    #: "latest" (the default) fires the newest, "all" fires each of the last day's.
    missed: Missed = "latest"
    payload: Any = None
    priority: int = 0

    def __post_init__(self) -> None:
        validate_type(self.name, "schedule name")
        if (self.cron is None) == (self.every is None):
            raise InvalidInputError(
                f"schedule {self.name!r}: give exactly one of cron= and every=")
        if self.missed not in MISSED_POLICIES:
            raise InvalidInputError(f"schedule {self.name!r}: missed must be one of "
                                    f"{', '.join(MISSED_POLICIES)}, got {self.missed!r}")
        if self.every is not None:
            if (not isinstance(self.every, timedelta)
                    or not timedelta(seconds=1) <= self.every <= EVERY_MAX):
                raise InvalidInputError(f"schedule {self.name!r}: every must be a timedelta "
                                        f"from 1 s to {EVERY_MAX.days} days")
            if self.tz != "UTC":
                raise InvalidInputError(
                    f"schedule {self.name!r}: tz applies to cron schedules only")
            return
        if not isinstance(self.cron, str) or len(self.cron.split()) != 5:
            raise InvalidInputError(f"schedule {self.name!r}: cron takes five fields (minute "
                                    f"hour day-of-month month day-of-week), got {self.cron!r}")
        self.zone  # noqa: B018 - raises for an unknown zone
        try:
            walk = CronSim(self.cron, datetime(2001, 1, 1))
        except CronSimError as exc:
            raise InvalidInputError(
                f"schedule {self.name!r}: not a cron expression: {self.cron!r} ({exc})") from None
        # Slots never further apart than the horizon: the next one is always found. Four
        # years from 2001 hold every pattern a slot can have, leap days included.
        previous = datetime(2001, 1, 1)
        for local in walk:
            if local - previous > _HORIZON:
                break
            previous = local
            if local.year >= 2009:
                return
        raise InvalidInputError(f"schedule {self.name!r}: {self.cron!r} can go more than four "
                                "years without a slot")

    @property
    def zone(self) -> ZoneInfo:
        """The IANA zone `tz` names; a name that means the host's own zone is refused, as
        runners on different hosts would place the same slots differently."""
        if self.tz in _NOT_A_ZONE or not isinstance(self.tz, str):
            raise InvalidInputError(f"schedule {self.name!r}: {self.tz!r} is not an IANA "
                                    "time zone the same on every host")
        try:
            return ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidInputError(
                f"schedule {self.name!r}: unknown time zone {self.tz!r}") from None

    @property
    def spec(self) -> str:
        """How the schedule is shown: `cron 0 3 * * * Europe/Berlin` or `every 90s`."""
        return spec_of(self.cron, self.tz if self.cron is not None else None, self.every)

    def key(self, slot: datetime) -> str:
        """The idempotency key of the job for `slot`."""
        return f"cron:{self.name}:{slot.astimezone(UTC).isoformat()}"

    def slots(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """The slots in (after, until], oldest first, in UTC."""
        if self.every is not None:
            period = _micros(self.every)
            n = _micros(after - _EPOCH) // period + 1
            while (slot := _EPOCH + timedelta(microseconds=n * period)) <= until:
                yield slot
                n += 1
            return
        assert self.cron is not None
        zone = self.zone
        # Walk local wall-clock times from a little before `after`, whose local time may be
        # in a repeated hour; each is placed at its first occurrence, or skipped.
        start = after.astimezone(zone).replace(tzinfo=None) - timedelta(hours=3)
        for local in CronSim(self.cron, start):
            placed = _first_occurrence(local, zone)
            if placed is None or placed <= after:
                if local - start > _HORIZON:
                    return
                continue
            if placed > until:
                return
            yield placed

    def next_slot(self, after: datetime) -> datetime | None:
        """The first slot after `after`; None past the end of time (year 9999)."""
        try:
            return next(self.slots(after, after + _HORIZON), None)
        except (OverflowError, ValueError):
            return None

    def newest_slot(self, at: datetime) -> datetime | None:
        """The last slot at or before `at`."""
        if self.every is not None:
            period = _micros(self.every)
            return _EPOCH + timedelta(microseconds=_micros(at - _EPOCH) // period * period)
        assert self.cron is not None
        zone = self.zone
        start = at.astimezone(zone).replace(tzinfo=None) + timedelta(hours=3)
        for local in CronSim(self.cron, start, reverse=True):
            slot = _first_occurrence(local, zone)
            if slot is not None and slot <= at:
                return slot
            if start - local > _HORIZON:
                break
        return None

    def to_fire(self, last: datetime, now: datetime) -> tuple[list[datetime], datetime | None]:
        """Of the slots in (last, now]: those a tick at `now` fires, oldest first, and the
        newest of all of them, fired or not, which the schedule's row then records as
        handled (None when there is none).

        When every due slot is less than `ON_TIME` old, all of them fire: the runners were
        only a little behind. Otherwise they were away: the newest slot fires if it is less
        than `ON_TIME` old, and the others were missed, for the schedule's `missed` policy to
        pick among: none, the newest, or each of those in the last `MISSED_WINDOW` (at most
        `MISSED_MAX`, the newest)."""
        newest = self.newest_slot(now)
        if newest is None or newest <= last:
            return [], None
        late = now - ON_TIME
        oldest = self.next_slot(last)
        if oldest is None or oldest > late:
            return list(self.slots(last, now)), newest
        on_time = [newest] if newest > late else []
        missed_until = self.newest_slot(newest - timedelta(microseconds=1)) if on_time else newest
        chosen: list[datetime] = []
        if missed_until is not None and missed_until > last:
            if self.missed == "latest":
                chosen = [missed_until]
            elif self.missed == "all":
                chosen = list(self.slots(max(last, now - MISSED_WINDOW),
                                         missed_until))[-MISSED_MAX:]
        return chosen + on_time, newest


def spec_of(cron: str | None, tz: str | None, every: timedelta | None) -> str:
    """A schedule as shown, from its stored columns."""
    if every is not None:
        return f"every {every.total_seconds():g}s"
    return f"cron {cron} {tz}"


def _first_occurrence(local: datetime, zone: ZoneInfo) -> datetime | None:
    """A naive local time in UTC, at its first occurrence; None when it does not exist."""
    placed = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if placed.astimezone(zone).replace(tzinfo=None) != local:
        return None  # skipped by a clock going forward
    return placed


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
