"""Opening hours and French public holidays, as pure functions of a :class:`Schedule`.

The pickup rate only counts calls made while the service is open (a caller who rings at
night is told the hours, not "abandoned"), callbacks may only be dialled inside the
service's call windows, and overflow looks at the closing time. All three ask the same two
questions -- "is it open at this instant?" and "when does it next open / close?" -- and
must answer them identically live and in a recomputation, so the answers depend only on the
schedule and the Asterisk timestamp, never on the machine's clock or local timezone.

Times of day are local to the schedule's timezone (``Europe/Paris`` by default) and kept as
minutes since local midnight, ``[start, end)`` with ``end`` up to ``24 * 60`` ("24:00").
Across a daylight-saving change the local wall clock is what counts: a service open
08:30-12:00 opens at 08:30 local time on both sides of the change. A boundary that falls
in the spring-forward gap (02:00-03:00 local) is taken with the offset in force before the
change (PEP 495, ``fold=0``), i.e. it lands at the first instant after the gap.

Public holidays (``holidays="FR"``): the eleven French public holidays -- 1 January, Easter
Monday, 1 May, 8 May, Ascension (Easter + 39 days), Whit Monday (Easter + 50 days),
14 July, 15 August, 1 November, 11 November, 25 December -- with ``"FR-57"`` (Alsace-Moselle:
Bas-Rhin, Haut-Rhin, Moselle) adding Good Friday and 26 December (Code du travail, articles
L3133-1 and L3134-13). Whit Monday is a public holiday in law even where it is worked as the
"journée de solidarité"; a service that opens that day says so with ``special``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DAY_MINUTES",
    "HOLIDAY_CALENDARS",
    "Range",
    "Schedule",
    "easter_sunday",
    "format_ranges",
    "french_public_holidays",
    "is_holiday",
    "is_open",
    "next_closing",
    "next_opening",
    "parse_ranges",
    "parse_time",
    "ranges_on",
    "schedule_from_mapping",
    "weekday_index",
]

DAY_MINUTES: Final = 24 * 60

#: A half-open interval of local minutes since midnight, ``(start, end)``, ``0 <= start < end <= 1440``.
Range = tuple[int, int]

#: Accepted values of :attr:`Schedule.holidays`.
HOLIDAY_CALENDARS: Final = frozenset({"FR", "FR-57"})

#: How far :func:`next_opening` / :func:`next_closing` look ahead before answering "never".
_SEARCH_DAYS: Final = 400

_TIME = re.compile(r"^\s*([01]?[0-9]|2[0-4])(?::|h)([0-5][0-9])\s*$", re.IGNORECASE)

_WEEKDAYS: Final[dict[str, int]] = {}
for _i, _names in enumerate(
    (
        ("mon", "monday", "lun", "lundi"),
        ("tue", "tuesday", "mar", "mardi"),
        ("wed", "wednesday", "mer", "mercredi"),
        ("thu", "thursday", "jeu", "jeudi"),
        ("fri", "friday", "ven", "vendredi"),
        ("sat", "saturday", "sam", "samedi"),
        ("sun", "sunday", "dim", "dimanche"),
    )
):
    for _n in _names:
        _WEEKDAYS[_n] = _i


def weekday_index(name: str) -> int:
    """Monday = 0 ... Sunday = 6, from an English or French day name or abbreviation."""
    try:
        return _WEEKDAYS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown day name {name!r} (use mon..sun or lundi..dimanche)") from None


def parse_time(text: str) -> int:
    """``"08:30"`` (or ``"8h30"``) -> minutes since midnight; ``"24:00"`` is allowed as an end."""
    m = _TIME.match(text)
    if not m:
        raise ValueError(f"invalid time of day {text!r} (expected HH:MM)")
    hours, minutes = int(m.group(1)), int(m.group(2))
    if hours == 24 and minutes:
        raise ValueError(f"invalid time of day {text!r} (24:00 is the latest)")
    return hours * 60 + minutes


def _check_ranges(ranges: Iterable[Range], what: str) -> tuple[Range, ...]:
    out = tuple(sorted((int(a), int(b)) for a, b in ranges))
    for start, end in out:
        if not 0 <= start < end <= DAY_MINUTES:
            raise ValueError(
                f"{what}: invalid range {_fmt(start)}-{_fmt(end)} (need 00:00 <= start < end <= 24:00)"
            )
    for (_, e1), (s2, e2) in pairwise(out):
        if s2 < e1:
            raise ValueError(f"{what}: ranges overlap at {_fmt(s2)}-{_fmt(e2)}")
    return out


def parse_ranges(text: str, *, what: str = "hours") -> tuple[Range, ...]:
    """``"08:30-12:00, 13:30-17:00"`` -> ``((510, 720), (810, 1020))``; ``""`` or ``"closed"`` -> ``()``.

    Overlapping or inverted ranges are refused rather than merged: in a configuration file
    they are almost always a typing mistake that would silently change the opening hours.
    """
    body = text.strip()
    if not body or body.lower() in {"closed", "ferme", "fermé", "-"}:
        return ()
    ranges: list[Range] = []
    for part in body.split(","):
        bounds = part.split("-")
        if len(bounds) != 2:
            raise ValueError(f"{what}: invalid range {part.strip()!r} (expected HH:MM-HH:MM)")
        ranges.append((parse_time(bounds[0]), parse_time(bounds[1])))
    return _check_ranges(ranges, what)


def _fmt(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def format_ranges(ranges: Iterable[Range]) -> str:
    """Inverse of :func:`parse_ranges` (``"closed"`` for none)."""
    parts = [f"{_fmt(a)}-{_fmt(b)}" for a, b in ranges]
    return ", ".join(parts) if parts else "closed"


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r}") from None


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a service answers.

    ``weekly`` has seven entries, Monday first, each a tuple of :data:`Range`. ``special``
    gives the hours of particular dates and wins over everything else (a Christmas Eve that
    closes at 16:00, a holiday on which the service opens anyway); ``closed_dates`` are extra
    closures; ``holidays`` names the public-holiday calendar (``"FR"``, ``"FR-57"`` or
    ``None``), whose days are closed unless listed in ``special``.
    """

    weekly: tuple[tuple[Range, ...], ...]
    timezone: str = "Europe/Paris"
    holidays: str | None = "FR"
    closed_dates: frozenset[date] = frozenset()
    special: Mapping[date, tuple[Range, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.weekly) != 7:
            raise ValueError(f"weekly hours need 7 days (Monday first), got {len(self.weekly)}")
        names = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        object.__setattr__(
            self, "weekly", tuple(_check_ranges(day, names[i]) for i, day in enumerate(self.weekly))
        )
        object.__setattr__(
            self, "special", {d: _check_ranges(r, d.isoformat()) for d, r in dict(self.special).items()}
        )
        if self.holidays is not None and self.holidays not in HOLIDAY_CALENDARS:
            raise ValueError(f"unknown holiday calendar {self.holidays!r} (use FR, FR-57 or none)")
        _zone(self.timezone)

    @classmethod
    def always_open(cls, timezone: str = "Europe/Paris") -> Schedule:
        """Open every minute of every day, holidays included (a 24/7 line, or no hours configured)."""
        return cls(weekly=tuple(((0, DAY_MINUTES),) for _ in range(7)), timezone=timezone, holidays=None)


def schedule_from_mapping(
    weekly: Mapping[str, str],
    *,
    timezone: str = "Europe/Paris",
    holidays: str | None = "FR",
    closed_dates: Iterable[str | date] = (),
    special: Mapping[str | date, str] | None = None,
) -> Schedule:
    """Build a schedule from configuration text: ``{"mon": "08:30-12:00, 13:30-17:00", ...}``.

    Days left out are closed. Keys may name several days: ``"mon-fri"`` or ``"mon,tue"``.
    Dates are ISO ``YYYY-MM-DD``.
    """
    days: list[tuple[Range, ...] | None] = [None] * 7
    for key, text in weekly.items():
        ranges = parse_ranges(text, what=key)
        for idx in _day_spec(key):
            if days[idx] is not None:
                raise ValueError(f"day {key!r} given twice in the weekly hours")
            days[idx] = ranges
    spec: dict[date, tuple[Range, ...]] = {}
    for d, text in (special or {}).items():
        day = _date(d)
        spec[day] = parse_ranges(text, what=day.isoformat())
    return Schedule(
        weekly=tuple(d or () for d in days),
        timezone=timezone,
        holidays=holidays,
        closed_dates=frozenset(_date(d) for d in closed_dates),
        special=spec,
    )


def _day_spec(key: str) -> list[int]:
    out: list[int] = []
    for part in key.split(","):
        if "-" in part:
            first, last = (weekday_index(p) for p in part.split("-", 1))
            if last < first:
                raise ValueError(f"day range {part.strip()!r} goes backwards")
            out.extend(range(first, last + 1))
        else:
            out.append(weekday_index(part))
    return out


def _date(value: str | date) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"invalid date {value!r} (expected YYYY-MM-DD)") from None


def easter_sunday(year: int) -> date:
    """Gregorian Easter Sunday (the anonymous "Meeus/Jones/Butcher" computus)."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    return date(year, month, day + 1)


@lru_cache(maxsize=256)
def french_public_holidays(year: int, calendar: str = "FR") -> dict[date, str]:
    """The public holidays (jours fériés) of ``year``: date -> French name."""
    if calendar not in HOLIDAY_CALENDARS:
        raise ValueError(f"unknown holiday calendar {calendar!r}")
    easter = easter_sunday(year)
    days = {
        date(year, 1, 1): "Jour de l'an",
        easter + timedelta(days=1): "Lundi de Pâques",
        date(year, 5, 1): "Fête du Travail",
        date(year, 5, 8): "Victoire 1945",
        easter + timedelta(days=39): "Ascension",
        easter + timedelta(days=50): "Lundi de Pentecôte",
        date(year, 7, 14): "Fête nationale",
        date(year, 8, 15): "Assomption",
        date(year, 11, 1): "Toussaint",
        date(year, 11, 11): "Armistice 1918",
        date(year, 12, 25): "Noël",
    }
    if calendar == "FR-57":
        days[easter - timedelta(days=2)] = "Vendredi saint"
        days[date(year, 12, 26)] = "Saint-Étienne"
    return dict(sorted(days.items()))


def is_holiday(schedule: Schedule, day: date) -> bool:
    """Whether ``day`` is a public holiday of the schedule's calendar."""
    return schedule.holidays is not None and day in french_public_holidays(day.year, schedule.holidays)


def ranges_on(schedule: Schedule, day: date) -> tuple[Range, ...]:
    """Opening ranges on a local date: special hours, else closed on closures/holidays, else weekly."""
    special = schedule.special.get(day)
    if special is not None:
        return special
    if day in schedule.closed_dates or is_holiday(schedule, day):
        return ()
    return schedule.weekly[day.weekday()]


def _local(schedule: Schedule, ts: float) -> datetime:
    return datetime.fromtimestamp(ts, _zone(schedule.timezone))


def _instant(schedule: Schedule, day: date, minutes: int) -> float:
    """Epoch of local ``day`` + ``minutes`` (24:00 = next day's midnight), DST-aware."""
    base = day + timedelta(days=minutes // DAY_MINUTES)
    m = minutes % DAY_MINUTES
    return datetime(
        base.year, base.month, base.day, m // 60, m % 60, tzinfo=_zone(schedule.timezone)
    ).timestamp()


def _open_intervals(schedule: Schedule, first: date, days: int) -> Iterable[tuple[float, float]]:
    """Opening intervals as epoch pairs, day by day from ``first``, adjacent ones merged."""
    pending: tuple[float, float] | None = None
    for n in range(days):
        day = first + timedelta(days=n)
        for start, end in ranges_on(schedule, day):
            a, b = _instant(schedule, day, start), _instant(schedule, day, end)
            if b <= a:  # a range swallowed by the spring-forward gap
                continue
            if pending is not None and a <= pending[1]:
                pending = (pending[0], max(pending[1], b))
                continue
            if pending is not None:
                yield pending
            pending = (a, b)
    if pending is not None:
        yield pending


def is_open(schedule: Schedule, ts: float) -> bool:
    """Whether the service is open at epoch ``ts``."""
    local = _local(schedule, ts)
    minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    return any(start <= minute < end for start, end in ranges_on(schedule, local.date()))


def next_opening(schedule: Schedule, ts: float) -> float | None:
    """The first instant ``>= ts`` at which the service is open (``ts`` itself when open), or None."""
    if is_open(schedule, ts):
        return ts
    first = _local(schedule, ts).date()
    for start, end in _open_intervals(schedule, first, _SEARCH_DAYS):
        if end > ts:
            return max(start, ts)
    return None


def next_closing(schedule: Schedule, ts: float) -> float | None:
    """When the opening interval containing ``ts`` ends (None if closed at ``ts`` or never closes).

    Intervals that touch across midnight are merged, so a 24/7 line has no closing time.
    """
    if not is_open(schedule, ts):
        return None
    first = _local(schedule, ts).date() - timedelta(days=1)
    for start, end in _open_intervals(schedule, first, _SEARCH_DAYS):
        if start <= ts < end:
            horizon = _instant(schedule, first + timedelta(days=_SEARCH_DAYS), 0)
            return None if end >= horizon else end
    return None
