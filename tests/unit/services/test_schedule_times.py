"""Next-fire computation of schedules: wall-clock cron in an IANA zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.services.schedules import (
    ScheduleError,
    count_slots,
    cron_spec,
    fire_times,
    next_fire,
    prev_fire,
)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(times, zone) -> list[str]:
    return [t.astimezone(zone).strftime("%m-%d %H:%M%z") for t in times]


def test_utc_every_minute_and_strictly_after():
    spec = cron_spec("* * * * *", "UTC")
    assert next_fire(spec, utc(2026, 5, 1, 12, 0, 0)) == utc(2026, 5, 1, 12, 1)
    assert next_fire(spec, utc(2026, 5, 1, 12, 0, 59, 999999)) == utc(2026, 5, 1, 12, 1)
    assert prev_fire(spec, utc(2026, 5, 1, 12, 0, 0)) == utc(2026, 5, 1, 12, 0)
    assert prev_fire(spec, utc(2026, 5, 1, 12, 0, 59)) == utc(2026, 5, 1, 12, 0)


def test_results_are_aware_utc():
    spec = cron_spec("0 9 * * 1-5", "Europe/Paris")
    result = next_fire(spec, datetime(2026, 5, 1, 12, 0, tzinfo=spec.zone))  # a Friday
    assert result.tzinfo is UTC
    assert result == utc(2026, 5, 4, 7, 0)  # Monday 09:00 CEST


@pytest.mark.parametrize("nickname, after, expected", [
    ("@hourly", utc(2026, 5, 1, 12, 30), utc(2026, 5, 1, 13, 0)),
    ("@daily", utc(2026, 5, 1, 12, 30), utc(2026, 5, 2, 0, 0)),
    ("@midnight", utc(2026, 5, 1, 12, 30), utc(2026, 5, 2, 0, 0)),
    ("@weekly", utc(2026, 5, 1, 12, 30), utc(2026, 5, 3, 0, 0)),  # Sunday
    ("@monthly", utc(2026, 5, 1, 12, 30), utc(2026, 6, 1, 0, 0)),
    ("@yearly", utc(2026, 5, 1, 12, 30), utc(2027, 1, 1, 0, 0)),
])
def test_nicknames(nickname, after, expected):
    assert next_fire(cron_spec(nickname, "UTC"), after) == expected


def test_hourly_nickname_in_a_zone_with_a_half_hour_offset():
    spec = cron_spec("@hourly", "Asia/Kolkata")  # UTC+05:30: local hours are UTC :30
    assert fire_times(spec, utc(2026, 5, 1, 12, 0), 2) == [utc(2026, 5, 1, 12, 30),
                                                            utc(2026, 5, 1, 13, 30)]


# Europe/Berlin: 2026-03-29 02:00 CET → 03:00 CEST (01:00 UTC);
#                2026-10-25 03:00 CEST → 02:00 CET (01:00 UTC).

def test_berlin_spring_forward_daily_in_the_gap_fires_when_the_clocks_jump():
    spec = cron_spec("30 2 * * *", "Europe/Berlin")
    times = fire_times(spec, utc(2026, 3, 27, 12, 0), 3)
    assert local(times, spec.zone) == ["03-28 02:30+0100", "03-29 03:00+0200",
                                       "03-30 02:30+0200"]
    assert times[1] == utc(2026, 3, 29, 1, 0)


def test_berlin_spring_forward_interval_skips_the_missing_hour():
    spec = cron_spec("*/30 * * * *", "Europe/Berlin")
    times = fire_times(spec, utc(2026, 3, 29, 0, 0), 4)
    assert local(times, spec.zone) == ["03-29 01:30+0100", "03-29 03:00+0200",
                                       "03-29 03:30+0200", "03-29 04:00+0200"]
    # every 30 minutes of real time, none doubled at the jump
    assert [t.minute for t in times] == [30, 0, 30, 0]


def test_berlin_spring_forward_hourly_keeps_one_hour_steps():
    spec = cron_spec("30 * * * *", "Europe/Berlin")
    times = fire_times(spec, utc(2026, 3, 28, 23, 45), 3)
    assert times == [utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 2, 30)]


def test_berlin_fall_back_daily_in_the_repeated_hour_fires_once():
    spec = cron_spec("30 2 * * *", "Europe/Berlin")
    times = fire_times(spec, utc(2026, 10, 24, 12, 0), 2)
    assert local(times, spec.zone) == ["10-25 02:30+0200", "10-26 02:30+0100"]
    # Asked from inside the repeated hour, after its first 02:30: the next is tomorrow.
    assert next_fire(spec, utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 26, 1, 30)


def test_berlin_fall_back_interval_runs_through_both_copies_of_the_hour():
    spec = cron_spec("15 * * * *", "Europe/Berlin")
    times = fire_times(spec, utc(2026, 10, 24, 23, 0), 4)
    assert local(times, spec.zone) == ["10-25 01:15+0200", "10-25 02:15+0200",
                                       "10-25 02:15+0100", "10-25 03:15+0100"]
    assert times == [utc(2026, 10, 24, 23, 15), utc(2026, 10, 25, 0, 15),
                     utc(2026, 10, 25, 1, 15), utc(2026, 10, 25, 2, 15)]
    # from inside the first copy, past its :15, the next is the second copy's :15
    assert next_fire(spec, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 1, 15)


def test_berlin_fall_back_previous_slot_sees_the_second_copy():
    spec = cron_spec("45 * * * *", "Europe/Berlin")
    # 01:50 UTC is 02:50 CET (second copy): the latest slot is 02:45 CET = 01:45 UTC
    assert prev_fire(spec, utc(2026, 10, 25, 1, 50)) == utc(2026, 10, 25, 1, 45)
    # 01:30 UTC is 02:30 CET: the latest slot is the first copy's 02:45 CEST = 00:45 UTC
    assert prev_fire(spec, utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 25, 0, 45)


def test_every_minute_counts_real_minutes_across_both_changes():
    spec = cron_spec("* * * * *", "Europe/Berlin")
    assert count_slots(spec, utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 3, 0)) == 240
    assert count_slots(spec, utc(2026, 10, 24, 23, 0), utc(2026, 10, 25, 3, 0)) == 240


# America/New_York: 2026-03-08 02:00 EST → 03:00 EDT (07:00 UTC);
#                   2026-11-01 02:00 EDT → 01:00 EST (06:00 UTC).

def test_new_york_spring_forward():
    spec = cron_spec("0 2 * * *", "America/New_York")
    times = fire_times(spec, utc(2026, 3, 7, 12, 0), 3)
    assert local(times, spec.zone) == ["03-08 03:00-0400", "03-09 02:00-0400",
                                       "03-10 02:00-0400"]
    assert times[0] == utc(2026, 3, 8, 7, 0)


def test_new_york_fall_back():
    daily = cron_spec("30 1 * * *", "America/New_York")
    assert fire_times(daily, utc(2026, 10, 31, 12, 0), 2) == [utc(2026, 11, 1, 5, 30),
                                                               utc(2026, 11, 2, 6, 30)]
    hourly = cron_spec("@hourly", "America/New_York")
    times = fire_times(hourly, utc(2026, 11, 1, 4, 30), 4)
    assert local(times, hourly.zone) == ["11-01 01:00-0400", "11-01 01:00-0500",
                                         "11-01 02:00-0500", "11-01 03:00-0500"]
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [times[1] - times[0]] * 3


def test_count_slots_is_capped_and_half_open():
    spec = cron_spec("* * * * *", "UTC")
    assert count_slots(spec, utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 10)) == 10
    assert count_slots(spec, utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 0)) == 0
    assert count_slots(spec, utc(2026, 1, 1), utc(2026, 2, 1), cap=500) == 500


@pytest.mark.parametrize("cron, zone", [
    ("not a cron", "UTC"), ("61 * * * *", "UTC"), ("* * * * *", "Mars/Olympus"),
    ("* * * * *", "../etc/passwd"),
])
def test_unreadable_schedules_raise_schedule_error(cron, zone):
    with pytest.raises(ScheduleError):
        cron_spec(cron, zone)


def test_a_cron_that_never_fires_raises_schedule_error():
    with pytest.raises(ScheduleError):
        next_fire(cron_spec("0 0 30 2 *", "UTC"), utc(2026, 1, 1))
