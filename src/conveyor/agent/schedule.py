"""Working hours: `--uptime` / `--downtime` (agent.uptime / agent.downtime) as ClearML's docs write them.

A span is `"<hours> <days>"`: hours are a comma list of `H` (H until midnight) or `H1-H2` (H1:00 to H2:00, an end of
00 is midnight); days are `SUN`..`SAT`, a comma list or a range (`SUN-TUE`). Examples: `"20-23 SUN"`,
`"20-00,00-08 SUN"`, `["20-00 SUN", "00-08 MON"]`. Times are local.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from conveyor.errors import UserError

# The clock override for end-to-end tests: a local time ("2026-11-29T21:00") the agent's clock starts at, then runs on.
FAKE_NOW_ENV = "CONVEYOR_FAKE_NOW"
DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")  # index = datetime.weekday()
SYNTAX = '"<hours> <days>", e.g. "20-23 SUN", "20-00,00-08 SUN", "17-20 SUN-TUE"'

Clock = Callable[[], datetime]
_fake_start: tuple[datetime, float] | None = None


def local_now() -> datetime:
    """The agent's clock: local time, or CONVEYOR_FAKE_NOW's moment plus the time since it was first read."""
    global _fake_start
    fake = os.environ.get(FAKE_NOW_ENV)
    if not fake:
        return datetime.now()
    if _fake_start is None or _fake_start[0] != datetime.fromisoformat(fake):
        _fake_start = (datetime.fromisoformat(fake), time.monotonic())
    return _fake_start[0] + timedelta(seconds=time.monotonic() - _fake_start[1])


class ScheduleError(UserError):
    """A malformed or contradictory schedule: printed as one line at start."""


@dataclass(frozen=True)
class Span:
    text: str
    hours: frozenset[int]
    days: frozenset[int]

    def covers(self, t: datetime) -> bool:
        return t.weekday() in self.days and t.hour in self.hours


def _hour(text: str, span: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 23:
        raise ScheduleError(f'Schedule span "{span}": "{text}" is not an hour from 00 to 23', hint=f"Write {SYNTAX}")
    return int(text)


def _hours(text: str, span: str) -> set[int]:
    hours: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        start = _hour(first, span)
        end = (_hour(last, span) or 24) if dash else 24
        if end <= start:
            raise ScheduleError(f'Schedule span "{span}": hours "{part}" end before they start',
                                hint=f'Split a span across midnight: "{start}-00,00-{last}"; write {SYNTAX}')
        hours.update(range(start, end))
    return hours


def _day(text: str, span: str) -> int:
    if text.upper() not in DAYS:
        raise ScheduleError(f'Schedule span "{span}": "{text}" is not a day', hint=f"Days are {', '.join(DAYS)}; "
                                                                                   f"write {SYNTAX}")
    return DAYS.index(text.upper())


def _days(text: str, span: str) -> set[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        start = _day(first, span)
        end = _day(last, span) if dash else start
        days.update((start + i) % 7 for i in range((end - start) % 7 + 1))  # FRI-MON wraps over the weekend
    return days


def parse_span(text: str) -> Span:
    fields = text.split()
    if len(fields) != 2:
        raise ScheduleError(f'Schedule span "{text}": expected {SYNTAX}', hint="Give hours, a space, then days")
    return Span(text.strip(), frozenset(_hours(fields[0], text)), frozenset(_days(fields[1], text)))


def _spans(value: str | Sequence[str] | None) -> list[Span]:
    if not value:
        return []
    return [parse_span(s) for s in ([value] if isinstance(value, str) else value)]


@dataclass(frozen=True)
class Schedule:
    """Uptime spans (active only inside one) or downtime spans (inactive inside one); neither: always active."""

    uptime: tuple[Span, ...] = ()
    downtime: tuple[Span, ...] = ()

    @classmethod
    def parse(cls, uptime: str | Sequence[str] | None, downtime: str | Sequence[str] | None) -> Schedule:
        up, down = _spans(uptime), _spans(downtime)
        if up and down:
            raise ScheduleError("Both an uptime and a downtime are set: give only one",
                                hint="Drop --uptime or --downtime (or agent.uptime / agent.downtime in the config)")
        return cls(tuple(up), tuple(down))

    def active(self, t: datetime) -> bool:
        if self.uptime:
            return any(s.covers(t) for s in self.uptime)
        return not any(s.covers(t) for s in self.downtime)

    def next_change(self, t: datetime) -> datetime | None:
        """The next whole hour at which `active` flips, within a week; None if it never does."""
        now = self.active(t)
        hour = t.replace(minute=0, second=0, microsecond=0)
        for i in range(1, 7 * 24 + 1):
            at = hour + timedelta(hours=i)
            if self.active(at) != now:
                return at
        return None

    def describe(self) -> str:
        if self.uptime:
            return "uptime " + ", ".join(s.text for s in self.uptime)
        if self.downtime:
            return "downtime " + ", ".join(s.text for s in self.downtime)
        return "always on"
