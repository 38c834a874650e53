"""Appointments: slots from opening hours, French speech, atomic booking in Redis, the IVR offer."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.appointments.flow import AppointmentOutcome, booking_event, classify_key, offer_appointment
from ivr.appointments.requests import BookSlot, FindFreeSlots
from ivr.appointments.slots import Slot, free_window, slots_between, slots_for, slots_on
from ivr.appointments.speech import (
    SAY_DATETIME_FORMAT_FR,
    french_number,
    say_slot,
    say_slot_command,
    slot_sounds,
)
from ivr.appointments.store import AppointmentStore, drive_with_store
from ivr.config import (
    AppointmentConfig,
    Config,
    ConfigError,
    ServiceConfig,
    core_sound_names,
    default_config,
    parse_config,
)
from ivr.domain.events import CallEvent
from ivr.domain.hours import Schedule, is_open, schedule_from_mapping
from ivr.domain.ivr_ops import HUNG_UP, OK, CallInfo, EventRecorder, GetDigits, Play, Step, StepResult
from ivr.protocol import agi
from ivr.protocol.errors import LocalProtocolError
from ivr.storage.keys import Keys
from ivr.storage.privacy import NumberHasher

PARIS = ZoneInfo("Europe/Paris")
HOURS = schedule_from_mapping({"mon-fri": "08:30-12:00, 13:30-16:30"}, holidays="FR")
HASH_KEY = "0123456789abcdef0123"


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=PARIS).timestamp()


def local_times(slots: list[Slot]) -> list[str]:
    return [s.local().strftime("%a %d %H:%M") for s in slots]


# -- slots ------------------------------------------------------------------------------------


def test_weekday_slots_fit_inside_each_opening_range() -> None:
    tuesday = date(2026, 11, 24)
    slots = slots_on(HOURS, tuesday, 30)
    assert [s.local().strftime("%H:%M") for s in slots] == [
        "08:30", "09:00", "09:30", "10:00", "10:30", "11:00", "11:30",
        "13:30", "14:00", "14:30", "15:00", "15:30", "16:00",
    ]  # fmt: skip
    assert all(s.end - s.start == 1800 and s.day == tuesday for s in slots)
    # a slot never straddles the lunch break nor the closing time
    assert [s.local().strftime("%H:%M") for s in slots_on(HOURS, tuesday, 45)] == [
        "08:30", "09:15", "10:00", "10:45", "13:30", "14:15", "15:00", "15:45",
    ]  # fmt: skip
    assert slots_on(HOURS, date(2026, 11, 28), 30) == []  # Saturday: closed
    with pytest.raises(ValueError, match="positive"):
        slots_on(HOURS, tuesday, 0)


def test_holidays_closed_dates_and_special_hours() -> None:
    hours = schedule_from_mapping(
        {"mon-fri": "08:30-12:00"},
        holidays="FR",
        closed_dates=["2026-11-12"],
        special={"2026-11-13": "09:00-10:00"},
    )
    assert slots_on(hours, date(2026, 11, 11), 30) == []  # Armistice, a Wednesday
    assert slots_on(hours, date(2026, 11, 12), 30) == []  # closed date
    assert [s.local().strftime("%H:%M") for s in slots_on(hours, date(2026, 11, 13), 30)] == [
        "09:00",
        "09:30",
    ]
    # over that week only Monday, Tuesday and the special Friday remain
    week = list(slots_between(hours, 60, at(2026, 11, 9), at(2026, 11, 16)))
    assert sorted({s.day.isoformat() for s in week}) == ["2026-11-09", "2026-11-10", "2026-11-13"]


def test_window_from_lead_time_to_horizon() -> None:
    cfg = AppointmentConfig(enabled=True, slot_minutes=30, min_lead_minutes=60, horizon_days=3)
    friday_16h = at(2026, 11, 20, 16, 0)
    slots = slots_for(cfg, HOURS, friday_16h)
    # 16:00 + 60 min is after Friday's last slot; the weekend is closed; the horizon is Monday 16:00
    assert local_times(slots)[0] == "Mon 23 08:30"
    assert local_times(slots)[-1] == "Mon 23 15:30"
    assert len(slots) == 13 - 1
    tuesday_10h = at(2026, 11, 24, 10, 0)
    assert local_times(slots_for(cfg, HOURS, tuesday_10h))[0] == "Tue 24 11:00"  # exactly now + lead
    assert local_times(slots_for(cfg, HOURS, tuesday_10h + 1))[0] == "Tue 24 11:30"


def test_dst_week_keeps_wall_clock_times() -> None:
    """Summer time ends on Sunday 25 October 2026: 14:30 stays 14:30 on both sides."""
    cfg = AppointmentConfig(enabled=True, slot_minutes=30, min_lead_minutes=0, horizon_days=7)
    slots = slots_for(cfg, HOURS, at(2026, 10, 22, 18, 0))
    friday = next(s for s in slots if s.local().strftime("%a %H:%M") == "Fri 14:30")
    monday = next(s for s in slots if s.local().strftime("%a %H:%M") == "Mon 14:30")
    assert monday.start - friday.start == 3 * 86400 + 3600  # one more hour of real time
    assert friday.local().utcoffset() == timedelta(hours=2)
    assert monday.local().utcoffset() == timedelta(hours=1)
    assert len([s for s in slots if s.day == date(2026, 10, 26)]) == 13
    # the horizon is counted on the local clock too: Thursday 18:00 + 7 days = Thursday 18:00 (CET)
    assert free_window(cfg, "Europe/Paris", at(2026, 10, 22, 18, 0))[1] == at(2026, 10, 29, 18, 0)


def test_spring_forward_gap_has_no_slot() -> None:
    always = Schedule.always_open()
    day = slots_on(always, date(2026, 3, 29), 30)
    starts = [s.local().strftime("%H:%M") for s in day]
    assert "02:00" not in starts and "02:30" not in starts
    assert len(day) == 46
    assert all(b.start > a.start for a, b in itertools.pairwise(day))
    assert all(s.end - s.start == 1800 for s in day)  # 01:30 ends at 03:00 summer time: 30 minutes


@settings(max_examples=60, deadline=None)
@given(
    now=st.floats(min_value=at(2026, 1, 1), max_value=at(2027, 1, 1)),
    slot_minutes=st.sampled_from([15, 20, 30, 45, 60, 90]),
    lead=st.integers(min_value=0, max_value=3000),
)
def test_every_slot_is_open_and_in_the_window(now: float, slot_minutes: int, lead: int) -> None:
    cfg = AppointmentConfig(enabled=True, slot_minutes=slot_minutes, min_lead_minutes=lead, horizon_days=5)
    earliest, latest = free_window(cfg, HOURS.timezone, now)
    slots = slots_for(cfg, HOURS, now)
    for s in slots:
        assert earliest <= s.start < latest
        assert is_open(HOURS, s.start) and is_open(HOURS, s.end - 1)
        assert s.end - s.start == slot_minutes * 60
        assert s.local().date() == s.day
    assert slots == sorted(slots)


# -- speech -----------------------------------------------------------------------------------

#: What the French core sounds say (for readable assertions).
_DAYS = "dimanche lundi mardi mercredi jeudi vendredi samedi".split()
_MONTHS = "janvier février mars avril mai juin juillet août septembre octobre novembre décembre".split()
_NUMBERS = (
    "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize "
    "dix-sept dix-huit dix-neuf vingt"
).split()
WORDS = {
    **{f"digits/day-{i}": d for i, d in enumerate(_DAYS)},
    **{f"digits/mon-{i}": m for i, m in enumerate(_MONTHS)},
    **{f"digits/{n}": w for n, w in enumerate(_NUMBERS)},
    **{
        f"digits/{n}": w
        for n, w in zip(
            (30, 40, 50, 60, 80), "trente quarante cinquante soixante quatre-vingt".split(), strict=True
        )
    },
    "digits/h-1": "premier",
    "digits/et": "et",
    "digits/at": "à",
    "digits/oclock": "heures",
    "digits/today": "aujourd'hui",
    "digits/tomorrow": "demain",
}


def said(sounds: tuple[str, ...]) -> str:
    return " ".join(WORDS[s] for s in sounds)


def slot_at(y: int, mo: int, d: int, h: int, mi: int) -> Slot:
    start = int(at(y, mo, d, h, mi))
    return Slot(start, start + 1800, date(y, mo, d))


def test_a_slot_is_said_in_french() -> None:
    assert said(slot_sounds(slot_at(2025, 12, 2, 14, 30))) == "mardi deux décembre à quatorze heures trente"
    assert said(slot_sounds(slot_at(2025, 12, 1, 9, 0))) == "lundi premier décembre à neuf heures"
    assert said(slot_sounds(slot_at(2025, 12, 21, 16, 45))) == (
        "dimanche vingt et un décembre à seize heures quarante cinq"
    )
    assert (
        said(slot_sounds(slot_at(2026, 7, 31, 8, 15))) == "vendredi trente et un juillet à huit heures quinze"
    )


def test_today_and_tomorrow_come_first() -> None:
    monday_10h = at(2025, 12, 1, 10, 0)
    assert said(slot_sounds(slot_at(2025, 12, 1, 14, 0), now=monday_10h)) == (
        "aujourd'hui lundi premier décembre à quatorze heures"
    )
    assert said(slot_sounds(slot_at(2025, 12, 2, 14, 30), now=monday_10h)) == (
        "demain mardi deux décembre à quatorze heures trente"
    )
    assert said(slot_sounds(slot_at(2025, 12, 3, 14, 30), now=monday_10h)).startswith("mercredi trois")


def test_speech_uses_real_core_sounds_and_the_callers_language() -> None:
    core = core_sound_names()
    for minute in range(60):
        sounds = slot_sounds(slot_at(2026, 1, 31, 23, minute), now=at(2026, 1, 30, 9, 0))
        assert set(sounds) <= core, set(sounds) - core
    steps = say_slot(slot_at(2025, 12, 2, 14, 30), "fr")
    assert steps[:3] == (Play("fr/digits/day-2"), Play("fr/digits/2"), Play("fr/digits/mon-11"))
    assert all(isinstance(s, Play) and s.prompt.startswith("fr/digits/") for s in steps)


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zéro"),
        (17, "dix-sept"),
        (21, "vingt et un"),
        (31, "trente et un"),
        (45, "quarante cinq"),
        (59, "cinquante neuf"),
        (70, "soixante dix"),
        (71, "soixante et onze"),
        (80, "quatre-vingt"),
        (91, "quatre-vingt onze"),
        (99, "quatre-vingt dix-neuf"),
    ],
)
def test_french_numbers_as_asterisk_says_them(n: int, words: str) -> None:
    assert said(french_number(n)) == words


def test_say_datetime_command_carries_the_french_format_and_timezone() -> None:
    cmd = say_slot_command(slot_at(2025, 12, 2, 14, 30), escape_digits="12")
    assert cmd.encode() == b"SAY DATETIME 1764682200 12 \"A d B 'digits/at' H M\" Europe/Paris\n"
    parsed = agi.parse_command(cmd.encode().decode().rstrip("\n"))
    assert isinstance(parsed, agi.Command)
    assert parsed.name == "SAY DATETIME"
    assert parsed.args == ("1764682200", "12", SAY_DATETIME_FORMAT_FR, "Europe/Paris")


def test_say_date_time_builders() -> None:
    assert agi.say_date(1764682200).encode() == b'SAY DATE 1764682200 ""\n'
    assert agi.say_time(1764682200, "#").encode() == b"SAY TIME 1764682200 #\n"
    assert agi.say_datetime(1764682200).encode() == b'SAY DATETIME 1764682200 ""\n'
    assert agi.say_datetime(1764682200, "", "HM").encode() == b'SAY DATETIME 1764682200 "" HM\n'
    with pytest.raises(LocalProtocolError, match="format before a timezone"):
        agi.say_datetime(1764682200, "", None, "Europe/Paris")
    with pytest.raises(LocalProtocolError, match="must not be empty"):
        agi.say_datetime(1764682200, "", " ", "Europe/Paris")
    with pytest.raises(LocalProtocolError, match="invalid timezone"):
        agi.say_datetime(1764682200, "", "HM", "Europe/ Paris")
    with pytest.raises(LocalProtocolError, match="escape digits"):
        agi.say_time(1764682200, "x")
    with pytest.raises(LocalProtocolError, match="CR, LF"):
        agi.say_datetime(1764682200, "", "HM\nANSWER").encode()


# -- the store (real Redis) -------------------------------------------------------------------

SERVICE = "mairie"
NOW = at(2026, 11, 24, 10, 0)  # a Tuesday
A = slot_at(2026, 11, 24, 14, 0)
B = slot_at(2026, 11, 25, 9, 0)
C = slot_at(2026, 11, 26, 11, 30)


@pytest.fixture
def store(redis_client: redis.asyncio.Redis) -> AppointmentStore:
    return AppointmentStore(redis_client, NumberHasher(HASH_KEY), keys=Keys("t:ivr"))


def book(slot: Slot, number: str, capacity: int = 1, now: float = NOW, call: str = "c1") -> BookSlot:
    return BookSlot(SERVICE, slot, capacity, number, call, "accueil", now)


async def test_capacity_per_slot(store: AppointmentStore, redis_client: redis.asyncio.Redis) -> None:
    results = [await store.book(book(A, f"06123456{i:02d}", capacity=2)) for i in range(3)]
    assert [r.status for r in results] == ["booked", "booked", "full"]
    assert await store.taken(SERVICE, A) == 2
    assert await redis_client.hget(f"t:ivr:slots:{SERVICE}:2026-11-24", str(A.start)) == "2"
    assert await store.free_slots(SERVICE, [A, B], 2, 5) == [B]
    assert await store.free_slots(SERVICE, [A, B], 3, 5) == [A, B]
    assert await store.free_slots(SERVICE, [A, B, C], 3, 2) == [A, B]
    first = results[0].booking
    assert first is not None and await store.get(first.id) == first
    assert first.number == "0612345600" and len(first.number_hash) == 16
    # everything expires after the slot: nothing stays forever
    for key in (
        f"t:ivr:slots:{SERVICE}:2026-11-24",
        f"t:ivr:appt:{first.id}",
        f"t:ivr:appt:number:{SERVICE}:{first.number_hash}",
    ):
        assert await redis_client.ttl(key) > 0


async def test_two_concurrent_bookings_of_the_last_place_exactly_one_wins(
    store: AppointmentStore, redis_url: str
) -> None:
    assert (await store.book(book(A, "0611111111", capacity=3))).status == "booked"
    assert (await store.book(book(A, "0622222222", capacity=3))).status == "booked"
    # separate connections, as two controllers would have
    clients = [redis.asyncio.Redis.from_url(redis_url, decode_responses=False) for _ in range(2)]
    try:
        stores = [AppointmentStore(c, NumberHasher(HASH_KEY), keys=Keys("t:ivr")) for c in clients]
        results = await asyncio.gather(
            stores[0].book(book(A, "0633333333", capacity=3)),
            stores[1].book(book(A, "0644444444", capacity=3)),
        )
    finally:
        for c in clients:
            await c.aclose()
    assert sorted(r.status for r in results) == ["booked", "full"]
    assert await store.taken(SERVICE, A) == 3
    assert len(await store.due(NOW, NOW + 7 * 86400)) == 3


async def test_a_crowd_racing_for_one_place(store: AppointmentStore) -> None:
    results = await asyncio.gather(*(store.book(book(B, f"07000000{i:02d}")) for i in range(20)))
    assert [r.status for r in results].count("booked") == 1
    assert await store.taken(SERVICE, B) == 1
    assert [b.slot for b in await store.due(NOW, NOW + 7 * 86400)] == [B]


async def test_cancel_frees_the_place(store: AppointmentStore) -> None:
    first = await store.book(book(A, "0611111111"))
    assert first.booking is not None
    assert (await store.book(book(A, "0622222222"))).status == "full"
    result = await store.cancel(first.booking.id, now=NOW + 60)
    assert result.ok and result.status == "cancelled" and result.booking == first.booking
    event = booking_event("appointment.cancelled", first.booking, NOW + 60, reason="caller")
    assert (event.call, event.service, event.queue) == ("c1", SERVICE, "accueil")
    assert event.data == {
        "booking": first.booking.id,
        "slot": A.start,
        "caller_hash": first.booking.number_hash,
        "reason": "caller",
    }
    assert event.id == booking_event("appointment.cancelled", first.booking, NOW + 99).id  # idempotent
    assert await store.taken(SERVICE, A) == 0
    assert await store.due(NOW, NOW + 7 * 86400) == []
    closed = await store.get(first.booking.id)
    assert closed is not None and closed.status == "cancelled" and closed.number == ""  # number forgotten
    assert closed.number_hash == first.booking.number_hash
    assert await store.find(SERVICE, "0611111111") is None
    assert (await store.book(book(A, "0622222222"))).status == "booked"
    again = await store.cancel(first.booking.id, now=NOW + 120)
    assert (again.status, again.previous, again.ok) == ("closed", "cancelled", False)
    assert await store.taken(SERVICE, A) == 1  # a second cancel gives nothing back
    assert (await store.cancel("ap-unknown", now=NOW)).status == "unknown"
    assert (await store.cancel_number(SERVICE, "0622222222", now=NOW)).status == "cancelled"
    assert (await store.cancel_number(SERVICE, "0622222222", now=NOW)).status == "unknown"


async def test_due_range_for_the_dispatcher(store: AppointmentStore) -> None:
    for slot, number in ((C, "0633333333"), (A, "0611111111"), (B, "0622222222")):
        assert (await store.book(book(slot, number))).status == "booked"
    due = await store.due(A.start, B.start + 1)
    assert [(b.slot, b.number) for b in due] == [(A, "0611111111"), (B, "0622222222")]
    assert [b.slot for b in await store.due(A.start, B.start)] == [A]  # the end is excluded
    assert [b.slot for b in await store.due(0, NOW + 30 * 86400, limit=2)] == [A, B]
    handled = await store.finish(due[0].id, "dispatched", now=A.start)
    assert handled.ok and handled.status == "dispatched"
    assert [b.slot for b in await store.due(0, NOW + 30 * 86400)] == [B, C]
    assert await store.taken(SERVICE, A) == 1  # a used place stays counted
    with pytest.raises(ValueError, match="finish status"):
        await store.finish(due[1].id, "cancelled", now=NOW)


async def test_one_booking_per_number_and_service(store: AppointmentStore) -> None:
    first = await store.book(book(A, "0611111111"))
    assert first.booking is not None
    # the same line, spelled as another trunk would show it
    second = await store.book(book(B, "+33611111111", call="c2"))
    assert second.status == "booked" and second.replaced == first.booking.id
    assert second.booking is not None and second.booking.replaced == first.booking.id
    old = await store.get(first.booking.id)
    assert old is not None and old.status == "replaced" and old.number == ""
    assert await store.taken(SERVICE, A) == 0 and await store.taken(SERVICE, B) == 1
    assert [b.id for b in await store.due(0, NOW + 30 * 86400)] == [second.booking.id]
    found = await store.find(SERVICE, "06 11 11 11 11")
    assert found is not None and found.id == second.booking.id
    # the slot already held: nothing changes, nothing is counted twice
    same = await store.book(book(B, "0611111111", call="c3"))
    assert same.status == "unchanged" and same.ok and same.booking == second.booking
    assert await store.taken(SERVICE, B) == 1
    # another service is another booking
    other = await store.book(BookSlot("caf", A, 1, "0611111111", "c4", "caf", NOW))
    assert other.status == "booked" and other.replaced == ""


async def test_a_booking_already_due_is_not_replaced(store: AppointmentStore) -> None:
    first = await store.book(book(A, "0611111111"))
    assert first.booking is not None
    later = await store.book(book(C, "0611111111", now=A.start + 60))
    assert later.status == "booked" and later.replaced == ""
    kept = await store.get(first.booking.id)
    assert kept is not None and kept.status == "booked" and kept.number == "0611111111"
    assert [b.slot for b in await store.due(0, NOW + 30 * 86400)] == [A, C]


async def test_same_number_booking_twice_at_once_keeps_one(store: AppointmentStore) -> None:
    results = await asyncio.gather(*(store.book(book(s, "0611111111")) for s in (A, B, C)))
    assert all(r.ok for r in results)
    assert sum([await store.taken(SERVICE, s) for s in (A, B, C)]) == 1
    assert len(await store.due(0, NOW + 30 * 86400)) == 1


async def test_bad_booking_requests_are_refused(store: AppointmentStore) -> None:
    assert (await store.book(book(A, ""))).reason == "no_number"
    assert (await store.book(book(A, "06-12\r\nX"))).reason == "invalid_number"
    assert (await store.book(book(A, "0611111111", now=A.start))).reason == "past_slot"
    assert (await store.book(book(A, "0611111111", capacity=0))).reason == "no_capacity"
    assert await store.taken(SERVICE, A) == 0
    with pytest.raises(ValueError, match="retention"):
        AppointmentStore(store.client, NumberHasher(HASH_KEY), retention_s=0)


# -- the IVR offer ----------------------------------------------------------------------------

CONFIG_TOML = """
[ami]
secret = "s3cret"
[redis]
hash_key = "0123456789abcdef0123"
[queues.accueil]
service = "mairie"
[services.mairie]
fallback_queue = "accueil"
[services.mairie.hours.weekly]
mon-fri = "08:30-12:00, 13:30-16:30"
[services.mairie.menus.main]
prompt = "decroche/mairie-menu"
[services.mairie.menus.main.options]
"1" = { queue = "accueil" }
"""

APPOINTMENTS = """
[services.mairie.appointments]
enabled = true
slot_minutes = 30
capacity = 1
horizon_days = 7
min_lead_minutes = 60
offered = 3
retries = 1
"""


@pytest.fixture(scope="module")
def mairie() -> ServiceConfig:
    return parse_config(CONFIG_TOML + APPOINTMENTS).services["mairie"]


TIMEOUT = StepResult(timed_out=True)


@dataclass
class Caller:
    """Answers steps like a live channel; ``keys`` answer the GET DATA steps in order."""

    keys: list[str | StepResult]
    steps: list[Step] = field(default_factory=list)
    hang_up_when: Callable[[Step], bool] | None = None
    before_key: Callable[[int], Awaitable[None]] | None = None
    asked: int = 0

    async def __call__(self, step: Step) -> StepResult:
        self.steps.append(step)
        if self.hang_up_when is not None and self.hang_up_when(step):
            self.hang_up_when = lambda _: True  # gone for good
            return HUNG_UP
        if isinstance(step, GetDigits):
            self.asked += 1
            if self.before_key is not None:
                await self.before_key(self.asked)
            if not self.keys:
                return TIMEOUT
            key = self.keys.pop(0)
            return key if isinstance(key, StepResult) else StepResult(digits=key)
        return OK

    def prompts(self) -> list[str]:
        """Played prompts without the slot's digits, and GET DATA prompts."""
        return [
            s.prompt.removeprefix("fr/")
            for s in self.steps
            if isinstance(s, Play | GetDigits) and not s.prompt.startswith("fr/digits/")
        ]


@dataclass
class Run:
    outcome: AppointmentOutcome
    caller: Caller
    events: list[CallEvent]


async def offer(
    store: AppointmentStore,
    service: ServiceConfig,
    caller: Caller,
    *,
    number: str = "0612345678",
    now: float = NOW,
    call: str = "1700000000.1",
) -> Run:
    events: list[CallEvent] = []
    recorder = EventRecorder(events.append, lambda: now, CallInfo(call), service=service.name)
    flow = offer_appointment(service, recorder, number=number, lang="fr", clock=lambda: now)
    outcome = await drive_with_store(flow, caller, store)
    return Run(outcome, caller, events)


def types(events: list[CallEvent]) -> list[str]:
    return [e.type for e in events]


async def test_take_the_first_slot(store: AppointmentStore, mairie: ServiceConfig) -> None:
    run = await offer(store, mairie, Caller(["1", "1"]))
    booking = run.outcome.booking
    assert booking is not None and run.outcome.reason == "booked" and run.outcome.offered == 1
    assert booking.slot.local().strftime("%a %d %H:%M") == "Tue 24 11:00"  # 10:00 + one hour's notice
    assert (booking.number, booking.call, booking.queue) == ("0612345678", "1700000000.1", "accueil")
    assert run.caller.prompts() == [
        "decroche/appointment-offer",
        "decroche/appointment-choice",
        "decroche/appointment-chosen",
        "decroche/appointment-confirm",
        "decroche/appointment-booked",
    ]
    # the slot is read before the question, and again after "booked"
    after = run.caller.steps.index(Play("fr/decroche/appointment-booked")) + 1
    spoken = tuple(s.prompt.removeprefix("fr/") for s in run.caller.steps[after:] if isinstance(s, Play))
    assert said(spoken) == "aujourd'hui mardi vingt quatre novembre à onze heures"
    assert types(run.events) == ["appointment.offered", "ivr.input", "ivr.input", "appointment.booked"]
    booked = run.events[-1]
    assert booked.data["booking"] == booking.id and booked.data["slot"] == booking.slot.start
    assert booked.data["caller_hash"] == booking.number_hash and booked.queue == "accueil"
    assert "0612345678" not in repr([e.data for e in run.events])  # never the number itself
    assert len({e.id for e in run.events}) == len(run.events)
    assert await store.find("mairie", "0612345678") == booking


async def test_next_next_then_take(store: AppointmentStore, mairie: ServiceConfig) -> None:
    run = await offer(store, mairie, Caller(["2", "2", "1", "1"]))
    assert run.outcome.booking is not None and run.outcome.offered == 3
    assert run.outcome.booking.slot.local().strftime("%H:%M") == "13:30"  # 11:00, 11:30, then after lunch


async def test_no_slot_suits_goes_back_to_the_ivr(store: AppointmentStore, mairie: ServiceConfig) -> None:
    run = await offer(store, mairie, Caller(["2", "2", "2"]))
    assert run.outcome.booking is None and run.outcome.reason == "no_more_slots"
    assert run.caller.prompts()[-1] == "decroche/appointment-none"
    assert run.events[-1].type == "ivr.input" and run.events[-1].data["status"] == "no_booking"
    assert await store.due(0, NOW + 30 * 86400) == []


async def test_decline_to_wait_for_an_agent(store: AppointmentStore, mairie: ServiceConfig) -> None:
    run = await offer(store, mairie, Caller(["0"]))
    assert (run.outcome.booking, run.outcome.reason) == (None, "declined")
    assert run.caller.prompts()[-1] == "decroche/appointment-choice"  # nothing more is said here


async def test_silence_and_wrong_keys_fall_back_after_the_retries(
    store: AppointmentStore, mairie: ServiceConfig
) -> None:
    silent = await offer(store, mairie, Caller([]))
    assert (silent.outcome.booking, silent.outcome.reason) == (None, "no_input")
    assert silent.caller.asked == 2  # retries = 1
    assert types(silent.events).count("ivr.invalid") == 2
    assert "please-try-again" in silent.caller.prompts()
    wrong = await offer(store, mairie, Caller(["9", "12"]))
    assert (wrong.outcome.booking, wrong.outcome.reason) == (None, "invalid")
    assert [e.data["reason"] for e in wrong.events if e.type == "ivr.invalid"] == [
        "invalid",
        "too_many_digits",
    ]
    assert "pm-invalid-option" in wrong.caller.prompts()


async def test_a_wrong_key_then_a_good_one_books(store: AppointmentStore, mairie: ServiceConfig) -> None:
    run = await offer(store, mairie, Caller(["*", "1", StepResult(digits=""), "1"]))
    assert run.outcome.booking is not None
    assert [e.data["reason"] for e in run.events if e.type == "ivr.invalid"] == ["invalid", "empty"]


async def test_not_confirming_offers_the_next_slot(store: AppointmentStore, mairie: ServiceConfig) -> None:
    run = await offer(store, mairie, Caller(["1", "2", "1", "1"]))
    assert run.outcome.booking is not None
    assert run.outcome.booking.slot.local().strftime("%H:%M") == "11:30"
    unconfirmed = await offer(store, mairie, Caller(["1"]), number="0698765432")
    assert (unconfirmed.outcome.booking, unconfirmed.outcome.reason) == (None, "not_confirmed")


async def test_the_place_taken_meanwhile_is_told_and_the_next_is_offered(
    store: AppointmentStore, mairie: ServiceConfig
) -> None:
    eleven = slots_for(mairie.appointments, mairie.hours, NOW)[0]

    async def rival_books(asked: int) -> None:
        if asked == 2:  # while our caller hears the confirmation question
            assert (await store.book(book(eleven, "0699999999"))).status == "booked"

    run = await offer(store, mairie, Caller(["1", "1", "1", "1"], before_key=rival_books))
    assert run.outcome.booking is not None
    assert run.outcome.booking.slot.local().strftime("%H:%M") == "11:30"
    assert "decroche/appointment-taken" in run.caller.prompts()
    assert run.outcome.offered == 2
    assert await store.taken("mairie", eleven) == 1


async def test_two_callers_for_the_same_last_place_both_get_one(
    store: AppointmentStore, mairie: ServiceConfig
) -> None:
    runs = await asyncio.gather(
        offer(store, mairie, Caller(["1"] * 6), number="0611111111", call="c1"),
        offer(store, mairie, Caller(["1"] * 6), number="0622222222", call="c2"),
    )
    slots = [r.outcome.booking.slot for r in runs if r.outcome.booking is not None]
    assert len(slots) == 2 and slots[0] != slots[1]
    for slot in slots:
        assert await store.taken("mairie", slot) == 1


async def test_nothing_free_means_no_offer(store: AppointmentStore, mairie: ServiceConfig) -> None:
    friday_evening = at(2026, 11, 27, 18, 0)
    short = dataclasses.replace(
        mairie,
        appointments=AppointmentConfig(enabled=True, horizon_days=1, min_lead_minutes=60, queue="accueil"),
    )
    run = await offer(store, short, Caller(["1", "1"]), now=friday_evening)  # the weekend is closed
    assert (run.outcome.booking, run.outcome.reason) == (None, "no_slot")
    assert "appointment.offered" not in types(run.events)
    assert run.caller.prompts() == ["decroche/appointment-none"]


async def test_disabled_or_no_number_asks_nothing(store: AppointmentStore, mairie: ServiceConfig) -> None:
    off = dataclasses.replace(mairie, appointments=AppointmentConfig(enabled=False))
    run = await offer(store, off, Caller(["1", "1"]))
    assert (run.outcome.reason, run.caller.steps) == ("disabled", [])
    run = await offer(store, mairie, Caller(["1", "1"]), number="")
    assert (run.outcome.reason, run.caller.steps) == ("no_number", [])


async def test_hangup_stops_the_offer(store: AppointmentStore, mairie: ServiceConfig) -> None:
    caller = Caller(["1", "1"], hang_up_when=lambda s: isinstance(s, GetDigits))
    run = await offer(store, mairie, caller)
    assert run.outcome.hung_up and run.outcome.booking is None
    assert isinstance(caller.steps[-1], GetDigits)  # nothing sent after the hangup
    assert await store.due(0, NOW + 30 * 86400) == []


async def test_a_hangup_after_booking_keeps_the_booking(
    store: AppointmentStore, mairie: ServiceConfig
) -> None:
    caller = Caller(["1", "1"], hang_up_when=lambda s: s == Play("fr/decroche/appointment-booked"))
    run = await offer(store, mairie, caller)
    assert run.outcome.hung_up and run.outcome.booking is not None
    assert "appointment.booked" in types(run.events)
    assert [b.id for b in await store.due(0, NOW + 30 * 86400)] == [run.outcome.booking.id]


def test_the_flow_is_pure_and_asks_the_store_by_request(mairie: ServiceConfig) -> None:
    """Driven by hand: the first thing it does is ask which of its candidate slots are free."""
    events: list[CallEvent] = []
    recorder = EventRecorder(events.append, lambda: NOW, CallInfo("c9"), service="mairie")
    flow = offer_appointment(mairie, recorder, number="0612345678", lang="fr", clock=lambda: NOW)
    first = next(flow)
    assert isinstance(first, FindFreeSlots)
    assert first.candidates == tuple(slots_for(mairie.appointments, mairie.hours, NOW))
    assert (first.service, first.capacity, first.limit) == ("mairie", 1, 3)
    with pytest.raises(TypeError, match="answered with"):
        flow.send(OK)  # a driver that answers a request with a step result is a bug, said loudly


def test_classify_key() -> None:
    keys = {"1": "take", "2": "next"}
    assert classify_key(StepResult(digits="1"), keys) == ("1", None)
    assert classify_key(StepResult(digits="3"), keys) == (None, "invalid")
    assert classify_key(StepResult(digits="A"), keys) == (None, "invalid")
    assert classify_key(StepResult(digits="12"), keys) == (None, "too_many_digits")
    assert classify_key(StepResult(timed_out=True), keys) == (None, "timeout")
    assert classify_key(StepResult(), keys) == (None, "empty")
    assert classify_key(StepResult(failed=True), keys) == (None, "error")


# -- configuration ----------------------------------------------------------------------------


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.toml")
    return info.value.problems


def test_appointments_config_and_defaults(mairie: ServiceConfig) -> None:
    cfg = mairie.appointments
    assert (cfg.enabled, cfg.queue, cfg.slot_minutes, cfg.capacity) == (True, "accueil", 30, 1)
    assert (cfg.horizon_days, cfg.min_lead_minutes, cfg.offered, cfg.retries) == (7, 60, 3, 1)
    assert cfg.prompts.choice == "decroche/appointment-choice"
    plain = parse_config(CONFIG_TOML).services["mairie"].appointments
    assert plain == AppointmentConfig(queue="accueil") and not plain.enabled
    shipped: Config = default_config()
    assert all(not s.appointments.enabled for s in shipped.services.values())
    custom = (
        parse_config(
            CONFIG_TOML
            + "[services.mairie.appointments]\nenabled = true\ncapacity = 4\n"
            + '[services.mairie.appointments.prompts]\ntaken = "sorry"\n'
        )
        .services["mairie"]
        .appointments
    )
    assert custom.capacity == 4 and custom.prompts.taken == "sorry"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("slot_minutes = 2", "t.toml: services.mairie.appointments.slot_minutes: 2 is below the minimum 5"),
        ("capacity = 0", "t.toml: services.mairie.appointments.capacity: 0 is below the minimum 1"),
        (
            'offered = "3"',
            "t.toml: services.mairie.appointments.offered: expected an integer, got string '3'",
        ),
        ("offered = 10", "t.toml: services.mairie.appointments.offered: 10 is above the maximum 9"),
        (
            "enabled = 1",
            "t.toml: services.mairie.appointments.enabled: expected true or false, got integer 1",
        ),
        (
            "slots_minutes = 30",
            "t.toml: services.mairie.appointments.slots_minutes: unknown key; did you mean 'slot_minutes'?",
        ),
        (
            "horizon_days = 1\nmin_lead_minutes = 1440",
            "t.toml: services.mairie.appointments.min_lead_minutes: 1440 minutes is not before the horizon "
            "of 1 day(s): no slot could ever be offered",
        ),
        (
            'queue = "acceuil"',
            "t.toml: services.mairie.appointments.queue: unknown queue 'acceuil'; did you mean 'accueil'?",
        ),
        (
            "enabled = true\nslot_minutes = 240",
            "t.toml: services.mairie.appointments.slot_minutes: 240 minutes is longer than every opening "
            "range of the service's hours: no slot fits, so none could be offered",
        ),
        (
            '[services.mairie.appointments.prompts]\nbooked = "fr/decroche/x"',
            "t.toml: services.mairie.appointments.prompts.booked: 'fr/decroche/x': write prompts without the "
            "language directory ('decroche/x'); the IVR adds the caller's language",
        ),
        (
            '[services.mairie.appointments.prompts]\nnone = ""',
            "t.toml: services.mairie.appointments.prompts.none: must not be empty",
        ),
    ],
)
def test_bad_appointments_config_is_a_clear_error(extra: str, expected: str) -> None:
    assert problems(CONFIG_TOML + "[services.mairie.appointments]\n" + extra + "\n") == [expected]


def test_appointments_of_another_services_queue_are_refused() -> None:
    text = (
        CONFIG_TOML
        + '[queues.other]\nservice = "autre"\n'
        + """
[services.autre]
fallback_queue = "other"
[services.autre.menus.main]
prompt = "decroche/autre"
[services.autre.menus.main.options]
"1" = { queue = "other" }
[services.mairie.appointments]
queue = "other"
"""
    )
    assert problems(text) == [
        "t.toml: services.mairie.appointments.queue: queue 'other' belongs to service 'autre', not 'mairie'"
    ]


def test_every_appointment_problem_is_reported_at_once() -> None:
    found = problems(CONFIG_TOML + "[services.mairie.appointments]\ncapacity = -1\noffered = 0\nfoo = 1\n")
    assert len(found) == 3 and all("services.mairie.appointments." in p for p in found)


def test_booking_key_names() -> None:
    keys = Keys("t:ivr")
    assert keys.appt("ap01") == "t:ivr:appt:ap01"
    assert keys.appt_due == "t:ivr:appt:due"
    assert keys.appt_number("caf", "abcd") == "t:ivr:appt:number:caf:abcd"
    with pytest.raises(ValueError, match="reserved"):
        keys.appt("due")
    with pytest.raises(ValueError, match="number hash"):
        keys.appt_number("caf", "a:b")
