"""Working hours as ClearML's docs write them ("Scheduling Working Hours"): every example of the docs, in local time,
and the errors a user sees for a malformed span or for both an uptime and a downtime."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from conveyor.agent import schedule as schedule_module
from conveyor.agent.schedule import Schedule, ScheduleError, local_now
from conveyor.errors import UserError

# 2026-11-29 is a Sunday
SUN, MON, TUE, WED, THU = (datetime(2026, 11, 29) + timedelta(days=i) for i in range(5))


def at(day: datetime, hour: int, minute: int = 0) -> datetime:
    return day.replace(hour=hour, minute=minute)


def hours_up(spans: str | list[str], day: datetime) -> list[int]:
    schedule = Schedule.parse(spans, None)
    return [h for h in range(24) if schedule.active(at(day, h, 30))]


def test_hours_on_one_day() -> None:  # "20-23 SUN": 20:00 to 22:59 on Sundays
    assert hours_up("20-23 SUN", SUN) == [20, 21, 22]
    assert hours_up("20-23 SUN", MON) == []
    assert Schedule.parse("20-23 SUN", None).active(at(SUN, 22, 59))
    assert not Schedule.parse("20-23 SUN", None).active(at(SUN, 23, 0))


def test_a_list_of_days() -> None:  # "20-23 SUN,TUE"
    assert [hours_up("20-23 SUN,TUE", d) for d in (SUN, MON, TUE)] == [[20, 21, 22], [], [20, 21, 22]]


def test_a_range_of_days() -> None:  # "20-23 SUN-TUE"
    assert [hours_up("20-23 SUN-TUE", d) for d in (SUN, MON, TUE, WED)] == [[20, 21, 22]] * 3 + [[]]


def test_a_single_hour_runs_to_midnight() -> None:  # "20 SUN"
    assert hours_up("20 SUN", SUN) == [20, 21, 22, 23]


def test_hours_around_midnight_in_one_span() -> None:  # "20-00,00-08 SUN"
    assert hours_up("20-00,00-08 SUN", SUN) == [0, 1, 2, 3, 4, 5, 6, 7, 20, 21, 22, 23]


def test_a_night_across_two_days() -> None:  # ["20-00 SUN", "00-08 MON"]
    spans = ["20-00 SUN", "00-08 MON"]
    assert hours_up(spans, SUN) == [20, 21, 22, 23]
    assert hours_up(spans, MON) == list(range(8))


def test_spans_on_different_days() -> None:  # ["17-20 SUN-TUE", "13-22 WED"]
    spans = ["17-20 SUN-TUE", "13-22 WED"]
    assert [hours_up(spans, d) for d in (SUN, TUE, WED, THU)] == [[17, 18, 19]] * 2 + [list(range(13, 22)), []]


def test_downtime_is_the_reverse() -> None:
    schedule = Schedule.parse(None, ["20-00 SUN", "00-08 MON"])
    assert not schedule.active(at(SUN, 21)) and not schedule.active(at(MON, 7, 59))
    assert schedule.active(at(MON, 8)) and schedule.active(at(SUN, 19, 59))


def test_no_schedule_is_always_on() -> None:
    assert Schedule.parse(None, None).active(at(WED, 3)) and Schedule.parse(None, None).next_change(at(WED, 3)) is None


def test_the_next_change_is_the_next_boundary() -> None:
    schedule = Schedule.parse("20-23 SUN", None)
    assert schedule.next_change(at(SUN, 14, 5)) == at(SUN, 20)
    assert schedule.next_change(at(SUN, 21, 30)) == at(SUN, 23)


def test_days_are_read_in_any_case() -> None:
    assert hours_up("20-23 sun", SUN) == [20, 21, 22]


def test_both_uptime_and_downtime_is_a_user_error() -> None:
    with pytest.raises(UserError, match="Both an uptime and a downtime") as caught:
        Schedule.parse(["20-23 SUN"], ["00-08 MON"])
    assert "--uptime or --downtime" in str(caught.value)


@pytest.mark.parametrize(("span", "says"), [
    ("20-23", "expected \"<hours> <days>\""),
    ("25 SUN", '"25" is not an hour from 00 to 23'),
    ("ab-23 SUN", '"ab" is not an hour'),
    ("20-23 SUNDAY", '"SUNDAY" is not a day'),
    ("22-02 SUN", 'hours "22-02" end before they start'),
])
def test_a_malformed_span_names_itself_and_what_is_expected(span: str, says: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        Schedule.parse([span], None)
    message = str(caught.value)
    assert f'"{span}"' in message and says in message
    assert "20-23 SUN" in message  # the expected syntax, by example


def test_the_fake_clock_starts_at_the_given_moment_and_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schedule_module, "_fake_start", None)
    monkeypatch.setenv(schedule_module.FAKE_NOW_ENV, "2026-11-29T21:00:00")
    first = local_now()
    assert at(SUN, 21) <= first < at(SUN, 21, 1)
    assert local_now() >= first
