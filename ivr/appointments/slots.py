"""Appointment slots, cut from a service's opening hours: pure functions of the schedule and a clock.

A slot is a wall-clock interval of ``slot_minutes`` inside one opening range of the
service's hours (``ivr.domain.hours``): a service open 08:30-12:00 with 30-minute slots
offers 08:30, 09:00 ... 11:30; a range too short for a whole slot gives nothing, and no
slot straddles a lunch break. Days the service is closed -- public holidays, closed dates,
days without weekly hours -- have no slot, and ``special`` hours replace the weekly ones,
exactly as :func:`ivr.domain.hours.ranges_on` says.

Why wall-clock: callers and agents live by the local clock, so a 14:30 slot is at 14:30
on both sides of a daylight-saving change. Each slot is computed in the schedule's
timezone and turned into epoch seconds (what Redis scores and the dispatcher compare);
a slot whose start falls in the spring-forward gap does not exist and is skipped, an
ambiguous one (the repeated autumn hour) takes its first occurrence (PEP 495 ``fold=0``).

The window: from ``now + min_lead_minutes`` (agents need notice) to the same local time
``horizon_days`` later. A slot is identified by its start in epoch seconds; its capacity
lives in the hash of its *local* date (``Keys.slots(service, day)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from ivr.config import AppointmentConfig
from ivr.domain.hours import DAY_MINUTES, Schedule, ranges_on

__all__ = ["Slot", "free_window", "slots_between", "slots_for", "slots_on"]


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """One bookable interval: ``[start, end)`` in epoch seconds, and its local date in ``timezone``."""

    start: int
    end: int
    day: date
    timezone: str = "Europe/Paris"

    def local(self) -> datetime:
        """The start as an aware datetime of the slot's timezone."""
        return datetime.fromtimestamp(self.start, ZoneInfo(self.timezone))

    @property
    def field(self) -> str:
        """The slot's field in its day's capacity hash: its start, in epoch seconds."""
        return str(self.start)


def _wall(zone: ZoneInfo, day: date, minutes: int) -> tuple[int, bool]:
    """Epoch of local ``day`` at ``minutes`` past midnight, and whether that wall time exists.

    A time in the spring-forward gap maps (``fold=0``) to the first instant after the gap,
    which is right for an end and means "no such slot" for a start.
    """
    base = day + timedelta(days=minutes // DAY_MINUTES)
    hour, minute = divmod(minutes % DAY_MINUTES, 60)
    epoch = datetime(base.year, base.month, base.day, hour, minute, tzinfo=zone).timestamp()
    back = datetime.fromtimestamp(epoch, zone)
    exists = (back.date(), back.hour, back.minute) == (base, hour, minute)
    return int(epoch), exists


def slots_on(schedule: Schedule, day: date, slot_minutes: int) -> list[Slot]:
    """Every slot of local ``day`` (closed day: none), in time order."""
    if slot_minutes <= 0:
        raise ValueError(f"slot length must be positive, got {slot_minutes} minutes")
    zone = ZoneInfo(schedule.timezone)
    out: list[Slot] = []
    for range_start, range_end in ranges_on(schedule, day):
        t = range_start
        while t + slot_minutes <= range_end:
            start, exists = _wall(zone, day, t)
            end, _ = _wall(zone, day, t + slot_minutes)
            if exists and end > start:
                out.append(Slot(start, end, day, schedule.timezone))
            t += slot_minutes
    return out


def slots_between(schedule: Schedule, slot_minutes: int, earliest: float, latest: float) -> Iterator[Slot]:
    """Slots starting in ``[earliest, latest)`` (epoch seconds), in time order."""
    zone = ZoneInfo(schedule.timezone)
    day = datetime.fromtimestamp(earliest, zone).date()
    last = datetime.fromtimestamp(latest, zone).date()
    while day <= last:
        for slot in slots_on(schedule, day, slot_minutes):
            if earliest <= slot.start < latest:
                yield slot
        day += timedelta(days=1)


def free_window(config: AppointmentConfig, timezone: str, now: float) -> tuple[float, float]:
    """``(earliest, latest)`` epochs a slot may start in: ``now`` + lead, to ``horizon_days`` ahead.

    The horizon is counted on the local clock (``now`` 10:00 + 14 days is 10:00 local, even
    across a daylight-saving change).
    """
    zone = ZoneInfo(timezone)
    earliest = now + config.min_lead_minutes * 60
    latest = (datetime.fromtimestamp(now, zone) + timedelta(days=config.horizon_days)).timestamp()
    return earliest, latest


def slots_for(config: AppointmentConfig, schedule: Schedule, now: float) -> list[Slot]:
    """The candidate slots of a service at ``now`` (free or not: the store knows which are taken)."""
    earliest, latest = free_window(config, schedule.timezone, now)
    return list(slots_between(schedule, config.slot_minutes, earliest, latest))
