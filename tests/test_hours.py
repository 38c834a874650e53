"""Opening hours and French public holidays (ivr.domain.hours)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ivr.domain.hours import (
    Schedule,
    easter_sunday,
    format_ranges,
    french_public_holidays,
    is_holiday,
    is_open,
    next_closing,
    next_opening,
    parse_ranges,
    parse_time,
    ranges_on,
    schedule_from_mapping,
    weekday_index,
)

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0) -> float:
    """Epoch of a Paris wall-clock time."""
    return datetime(y, mo, d, h, mi, tzinfo=PARIS, fold=fold).timestamp()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp()


@pytest.fixture
def office() -> Schedule:
    """A typical public-service line."""
    return schedule_from_mapping(
        {"mon-fri": "08:30-12:00, 13:30-17:00", "sat": "09:00-12:00"},
        closed_dates=["2026-12-24"],
        special={"2026-12-31": "08:30-12:00", "2026-11-11": "10:00-12:00"},
    )


def test_parse_time_and_ranges() -> None:
    assert parse_time("08:30") == 510
    assert parse_time("8h30") == 510
    assert parse_time("24:00") == 1440
    assert parse_ranges("08:30-12:00, 13:30-17:00") == ((510, 720), (810, 1020))
    assert parse_ranges(" 13:30-17:00,08:30-12:00") == ((510, 720), (810, 1020))  # sorted
    assert parse_ranges("") == ()
    assert parse_ranges("closed") == ()
    assert format_ranges(parse_ranges("08:30-12:00, 13:30-24:00")) == "08:30-12:00, 13:30-24:00"
    assert format_ranges(()) == "closed"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("25:00-26:00", "invalid time of day"),
        ("24:30-24:45", "invalid time of day"),
        ("08:60-09:00", "invalid time of day"),
        ("abc", "invalid range"),
        ("08:00", "invalid range"),
        ("08:00-09:00-10:00", "invalid range"),
        ("12:00-08:00", "invalid range 12:00-08:00"),
        ("08:00-08:00", "invalid range"),
        ("08:00-12:00, 11:00-14:00", "overlap"),
    ],
)
def test_bad_ranges_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ranges(text)


def test_day_names() -> None:
    assert weekday_index("Mon") == 0
    assert weekday_index("dimanche") == 6
    assert weekday_index(" vendredi ") == 4
    with pytest.raises(ValueError, match="unknown day name"):
        weekday_index("funday")


def test_schedule_from_mapping_validates() -> None:
    s = schedule_from_mapping({"lundi,mardi": "09:00-10:00", "sat-sun": "10:00-11:00"})
    assert s.weekly[0] == s.weekly[1] == ((540, 600),)
    assert s.weekly[2] == ()
    assert s.weekly[5] == s.weekly[6] == ((600, 660),)
    with pytest.raises(ValueError, match="given twice"):
        schedule_from_mapping({"mon-fri": "09:00-10:00", "fri": "10:00-11:00"})
    with pytest.raises(ValueError, match="backwards"):
        schedule_from_mapping({"sat-mon": "09:00-10:00"})
    with pytest.raises(ValueError, match="invalid date"):
        schedule_from_mapping({"mon": "09:00-10:00"}, closed_dates=["2026-13-01"])
    with pytest.raises(ValueError, match="unknown timezone"):
        schedule_from_mapping({"mon": "09:00-10:00"}, timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="holiday calendar"):
        schedule_from_mapping({"mon": "09:00-10:00"}, holidays="US")
    with pytest.raises(ValueError, match="7 days"):
        Schedule(weekly=((),) * 6)
    with pytest.raises(ValueError, match="monday: ranges overlap"):
        Schedule(weekly=(((0, 60), (30, 90)), (), (), (), (), (), ()))


@pytest.mark.parametrize(
    ("year", "easter"),
    [
        (2000, date(2000, 4, 23)),
        (2019, date(2019, 4, 21)),
        (2024, date(2024, 3, 31)),
        (2025, date(2025, 4, 20)),
        (2026, date(2026, 4, 5)),
        (1818, date(1818, 3, 22)),  # earliest possible date
        (2038, date(2038, 4, 25)),  # latest possible date
    ],
)
def test_easter(year: int, easter: date) -> None:
    assert easter_sunday(year) == easter


def test_french_public_holidays_2026() -> None:
    days = french_public_holidays(2026)
    assert list(days) == [
        date(2026, 1, 1),
        date(2026, 4, 6),  # Lundi de Pâques
        date(2026, 5, 1),
        date(2026, 5, 8),
        date(2026, 5, 14),  # Ascension
        date(2026, 5, 25),  # Lundi de Pentecôte
        date(2026, 7, 14),
        date(2026, 8, 15),
        date(2026, 11, 1),
        date(2026, 11, 11),
        date(2026, 12, 25),
    ]
    assert days[date(2026, 5, 14)] == "Ascension"
    alsace = french_public_holidays(2026, "FR-57")
    assert set(alsace) - set(days) == {date(2026, 4, 3), date(2026, 12, 26)}  # Good Friday, St Stephen
    with pytest.raises(ValueError):
        french_public_holidays(2026, "XX")


def test_is_open_weekly_hours(office: Schedule) -> None:
    wed = date(2026, 11, 25)
    assert wed.weekday() == 2
    assert not is_open(office, at(2026, 11, 25, 8, 29))
    assert is_open(office, at(2026, 11, 25, 8, 30))  # start included
    assert is_open(office, at(2026, 11, 25, 11, 59))
    assert not is_open(office, at(2026, 11, 25, 12, 0))  # end excluded
    assert not is_open(office, at(2026, 11, 25, 12, 45))  # lunch
    assert is_open(office, at(2026, 11, 25, 12, 0) - 0.001)
    assert is_open(office, at(2026, 11, 28, 9, 0))  # Saturday morning
    assert not is_open(office, at(2026, 11, 28, 14, 0))  # Saturday afternoon
    assert not is_open(office, at(2026, 11, 29, 10, 0))  # Sunday
    # The machine's timezone plays no part: 09:00 UTC is 10:00 in Paris in winter.
    assert is_open(office, utc(2026, 11, 25, 7, 30))  # 08:30 Paris
    assert not is_open(office, utc(2026, 11, 25, 7, 29))


def test_holidays_closures_and_special_hours(office: Schedule) -> None:
    assert is_holiday(office, date(2026, 5, 14))
    assert not is_open(office, at(2026, 5, 14, 10, 0))  # Ascension, a Thursday
    assert ranges_on(office, date(2026, 12, 24)) == ()  # closed date
    assert ranges_on(office, date(2026, 12, 31)) == ((510, 720),)  # special short day
    assert not is_open(office, at(2026, 12, 31, 14, 0))
    # special hours win over the public holiday
    assert is_open(office, at(2026, 11, 11, 10, 30))
    assert not is_open(office, at(2026, 11, 11, 9, 0))
    no_holidays = schedule_from_mapping({"mon-fri": "08:30-17:00"}, holidays=None)
    assert is_open(no_holidays, at(2026, 5, 14, 10, 0))


def test_next_opening(office: Schedule) -> None:
    assert next_opening(office, at(2026, 11, 25, 10, 0)) == at(2026, 11, 25, 10, 0)  # open now
    assert next_opening(office, at(2026, 11, 25, 12, 15)) == at(2026, 11, 25, 13, 30)
    assert next_opening(office, at(2026, 11, 27, 17, 30)) == at(2026, 11, 28, 9, 0)  # Fri -> Sat
    assert next_opening(office, at(2026, 11, 28, 12, 30)) == at(2026, 11, 30, 8, 30)  # Sat -> Mon
    # Wednesday 13 May 2026 evening: Ascension Thursday is skipped
    assert next_opening(office, at(2026, 5, 13, 17, 30)) == at(2026, 5, 15, 8, 30)
    never = Schedule(weekly=((),) * 7)
    assert next_opening(never, at(2026, 11, 25, 10, 0)) is None


def test_next_closing(office: Schedule) -> None:
    assert next_closing(office, at(2026, 11, 25, 10, 0)) == at(2026, 11, 25, 12, 0)
    assert next_closing(office, at(2026, 11, 25, 12, 30)) is None  # closed now
    assert next_closing(Schedule.always_open(), at(2026, 11, 25, 10, 0)) is None  # never closes
    # Ranges that touch across midnight make one opening interval.
    night = schedule_from_mapping({"mon": "20:00-24:00", "tue": "00:00-02:00"}, holidays=None)
    assert next_closing(night, at(2026, 11, 30, 21, 0)) == at(2026, 12, 1, 2, 0)
    assert next_opening(night, at(2026, 11, 30, 12, 0)) == at(2026, 11, 30, 20, 0)


def test_daylight_saving_changes() -> None:
    # Paris: 29 March 2026 02:00 -> 03:00, 25 October 2026 03:00 -> 02:00 (both Sundays).
    s = schedule_from_mapping({"sun": "01:00-04:00"}, holidays=None)
    # spring: 01:00 CET = 00:00 UTC, 04:00 CEST = 02:00 UTC -> two real hours
    assert next_closing(s, utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 2, 0)
    assert is_open(s, utc(2026, 3, 29, 1, 30))  # 03:30 CEST
    assert not is_open(s, utc(2026, 3, 29, 2, 0))
    # autumn: 01:00 CEST = 23:00 UTC (Saturday), 04:00 CET = 03:00 UTC -> four real hours,
    # and the repeated 02:30 is open both times
    assert next_opening(s, utc(2026, 10, 24, 20, 0)) == utc(2026, 10, 24, 23, 0)
    assert is_open(s, at(2026, 10, 25, 2, 30, fold=0))
    assert is_open(s, at(2026, 10, 25, 2, 30, fold=1))
    assert at(2026, 10, 25, 2, 30, fold=1) - at(2026, 10, 25, 2, 30, fold=0) == 3600
    assert next_closing(s, utc(2026, 10, 24, 23, 30)) == utc(2026, 10, 25, 3, 0)
    # An opening time inside the spring gap lands on the first instant after it.
    gap = schedule_from_mapping({"sun": "02:30-05:00"}, holidays=None)
    assert next_opening(gap, utc(2026, 3, 28, 20, 0)) == utc(2026, 3, 29, 1, 30)


def test_always_open() -> None:
    s = Schedule.always_open()
    start = at(2026, 1, 1, 0, 0)  # a public holiday, at midnight
    for h in range(0, 24 * 14, 5):
        assert is_open(s, start + h * 3600)
    assert next_opening(s, start) == start
    assert all(ranges_on(s, date(2026, 1, 1) + timedelta(days=i)) == ((0, 1440),) for i in range(7))
