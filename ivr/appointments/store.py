"""Appointment bookings in Redis: a place is booked at most ``capacity`` times, whatever the load.

Every change is one Lua script, so it is atomic on the server however many controllers
book at once (a script runs alone). The guarantees and how they are kept:

* **Capacity.** The places taken in a slot are a counter in the hash of its local day,
  ``ivr:slots:{service}:{YYYY-MM-DD}``, field = the slot's start in epoch seconds. The
  booking script reads it and increments it only when it is below the capacity passed
  in: of two callers racing for the last place exactly one gets ``booked``, the other
  ``full``.
* **One booking per number and service.** ``ivr:appt:number:{service}:{hash}`` (keyed
  hash of the number, never the number) names the number's open booking. Booking again
  *replaces* it in the same script: its place is given back, it leaves the due set and is
  closed as ``replaced``. Booking the very slot already held answers ``unchanged``. A
  booking whose slot has already started is not replaced (the dispatcher may be calling
  it); the new one simply becomes the number's open booking.
* **Cancel frees a place.** :meth:`AppointmentStore.cancel` gives the place back, removes
  the booking from the due set and closes it; a second cancel changes nothing.
* **Due list.** ``ivr:appt:due`` holds open bookings scored by slot start: the dispatcher
  lists those due in a time range (:meth:`AppointmentStore.due`) and closes each with
  :meth:`AppointmentStore.finish` once handled (``dispatched`` when turned into a
  callback, or ``completed``/``failed``/``expired``); that keeps its place counted.
* **Personal data.** The booking hash holds the number to call back while it is open and
  its keyed hash always; closing a booking deletes the number. Hashes and day counters
  expire ``retention_s`` after the slot ends, the number key a day after it.

Keys a script touches that depend on a booking (its day, its number key) are read by the
client first and passed in ``KEYS``; the script checks the number key still names the
booking the client saw and answers ``stale`` otherwise, and the client tries again.

Times are epoch seconds passed in (Asterisk time for ``now``): the store has no clock.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal, TypeVar

import redis.asyncio

from ivr.appointments.requests import (
    BOOKING_STATUSES,
    AppointmentReply,
    AppointmentRequest,
    Booking,
    BookingResult,
    BookingStatus,
    BookSlot,
    FindFreeSlots,
    FreeSlots,
)
from ivr.appointments.slots import Slot
from ivr.domain.ivr_ops import Step, StepResult, drive
from ivr.logs import get_logger
from ivr.storage.keys import DEFAULT_KEYS, Keys
from ivr.storage.privacy import NumberHasher

__all__ = [
    "FINAL_STATUSES",
    "AppointmentStore",
    "CancelResult",
    "drive_with_store",
    "new_booking_id",
]

log = get_logger(__name__)

#: Statuses :meth:`AppointmentStore.finish` may set (the dispatcher's outcomes).
FINAL_STATUSES: Final = frozenset({"dispatched", "completed", "failed", "expired"})
#: Numbers the dialplan can dial: digits, optionally after ``+`` (``ivr.callbacks.numbering``
#: decides which of them are allowed; this only keeps junk out of Redis).
_NUMBER_RE: Final = re.compile(r"\+?[0-9]{2,20}")
_ROUNDS: Final = 5
#: How long the number key outlives the slot (it only has to block a second booking).
_NUMBER_GRACE_S: Final = 86_400

# KEYS: 1 day hash, 2 due set, 3 number key, 4 new booking, 5 old booking (or the new one),
#       6 old booking's day hash (or the new day)
# ARGV: 1 slot field, 2 capacity, 3 new id, 4 expected old id ('' = none), 5 now,
#       6 day hash TTL, 7 booking TTL, 8 number key TTL (seconds), 9.. booking fields
_BOOK_LUA: Final = """
local cur = redis.call('GET', KEYS[3]) or ''
if cur ~= ARGV[4] then return {'stale'} end
local now = tonumber(ARGV[5])
local old_open = false
local old_slot = ''
if cur ~= '' then
  local f = redis.call('HMGET', KEYS[5], 'status', 'slot')
  if f[1] == 'booked' then
    if f[2] == ARGV[1] then return {'unchanged', cur} end
    old_open = tonumber(f[2]) > now
    old_slot = f[2]
  end
end
local taken = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if taken >= tonumber(ARGV[2]) then return {'full', tostring(taken)} end
local replaced = ''
if old_open then
  if redis.call('HINCRBY', KEYS[6], old_slot, -1) <= 0 then redis.call('HDEL', KEYS[6], old_slot) end
  redis.call('ZREM', KEYS[2], cur)
  redis.call('HSET', KEYS[5], 'status', 'replaced', 'closed', ARGV[5], 'replaced_by', ARGV[3])
  redis.call('HDEL', KEYS[5], 'number')
  replaced = cur
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('HSET', KEYS[4], 'replaced', replaced, unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[4], ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[8])
return {'booked', tostring(taken + 1), replaced}
"""

# KEYS: 1 booking, 2 its day hash, 3 due set, 4 its number key
# ARGV: 1 id, 2 now, 3 new status, 4 '1' = give the place back
_CLOSE_LUA: Final = """
local f = redis.call('HMGET', KEYS[1], 'status', 'slot')
if not f[1] then return {'unknown'} end
if f[1] ~= 'booked' then return {'closed', f[1]} end
if ARGV[4] == '1' then
  if redis.call('HINCRBY', KEYS[2], f[2], -1) <= 0 then redis.call('HDEL', KEYS[2], f[2]) end
end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'closed', ARGV[2])
redis.call('HDEL', KEYS[1], 'number')
return {'ok', f[1]}
"""


def new_booking_id() -> str:
    """A random booking id: safe in a Redis key and an Asterisk variable."""
    return "ap" + secrets.token_hex(10)


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _t(ts: float) -> str:
    """A time as stored: fixed-point text (Lua would print 1.7e+09)."""
    if not math.isfinite(ts):
        raise ValueError(f"not a finite time: {ts!r}")
    return f"{ts:.6f}"


_CloseStatus = Literal["cancelled", "dispatched", "completed", "failed", "expired"]


@dataclass(frozen=True, slots=True)
class CancelResult:
    """``status``: ``cancelled`` (or the final status asked for), ``closed`` (it already was:
    ``previous`` says how), ``unknown`` (no such booking, or expired). ``booking`` is the
    booking as it was just before (for the ``appointment.cancelled`` event).
    """

    status: Literal["cancelled", "dispatched", "completed", "failed", "expired", "closed", "unknown"]
    booking_id: str = ""
    previous: str = ""
    booking: Booking | None = None

    @property
    def ok(self) -> bool:
        return self.status not in ("closed", "unknown")


class AppointmentStore:
    """Bookings and slot capacity on one Redis database (``redis.asyncio``, decoded or not).

    ``hasher`` pseudonymises numbers (the deployment's :class:`NumberHasher`, the same key as
    the event log, so analytics link a booking to its calls). The store never closes the
    client it is given.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        hasher: NumberHasher,
        *,
        keys: Keys = DEFAULT_KEYS,
        retention_s: float = 30 * 86_400.0,
    ) -> None:
        if retention_s <= 0:
            raise ValueError(f"retention must be positive, got {retention_s}")
        self.client = client
        self.hasher = hasher
        self.keys = keys
        self.retention_s = retention_s
        self._book = client.register_script(_BOOK_LUA)
        self._close = client.register_script(_CLOSE_LUA)

    # -- reading -----------------------------------------------------------------------------

    async def taken(self, service: str, slot: Slot) -> int:
        """Places booked in ``slot``."""
        raw = await self.client.hget(self.keys.slots(service, slot.day), slot.field)
        return int(_s(raw) or 0)

    async def free_slots(
        self, service: str, candidates: Iterable[Slot], capacity: int, limit: int
    ) -> list[Slot]:
        """The first ``limit`` of ``candidates`` (kept in their order) with a place left.

        One pipelined ``HMGET`` per local day. A snapshot: a slot may fill before the caller
        confirms, which :meth:`book` then answers ``full``.
        """
        if limit <= 0:
            return []
        cands = list(candidates)
        days: dict[date, list[Slot]] = {}
        for slot in cands:
            days.setdefault(slot.day, []).append(slot)
        if not days:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for day, slots in days.items():
                pipe.hmget(self.keys.slots(service, day), [s.field for s in slots])
            answers = await pipe.execute()
        taken: dict[Slot, int] = {}
        for (_, slots), counts in zip(days.items(), answers, strict=True):
            for slot, count in zip(slots, counts, strict=True):
                taken[slot] = int(_s(count) or 0)
        return [s for s in cands if taken[s] < capacity][:limit]

    async def get(self, booking_id: str) -> Booking | None:
        """A booking by id (None when unknown or expired)."""
        raw = await self.client.hgetall(self.keys.appt(booking_id))
        return _booking(raw) if raw else None

    async def find(self, service: str, number: str) -> Booking | None:
        """The open booking of ``number`` at ``service``, if any."""
        number_hash = self.hasher(number)
        if not number_hash:
            return None
        booking_id = _s(await self.client.get(self.keys.appt_number(service, number_hash)))
        if not booking_id:
            return None
        booking = await self.get(booking_id)
        return booking if booking is not None and booking.status == "booked" else None

    async def due(self, start: float, end: float, *, limit: int = 500) -> list[Booking]:
        """Open bookings whose slot starts in ``[start, end)``, earliest first, all services."""
        ids = await self.client.zrangebyscore(
            self.keys.appt_due, _t(start), f"({_t(end)}", start=0, num=max(1, limit)
        )
        if not ids:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for booking_id in ids:
                pipe.hgetall(self.keys.appt(_s(booking_id)))
            rows = await pipe.execute()
        out = [_booking(row) for row in rows if row]
        return [b for b in out if b.status == "booked"]

    # -- changing ----------------------------------------------------------------------------

    async def book(self, request: BookSlot) -> BookingResult:
        """Book a place (see the module docstring for what is guaranteed)."""
        number = request.number.strip()
        if not _NUMBER_RE.fullmatch(number):
            return BookingResult("refused", reason="no_number" if not number else "invalid_number")
        number_hash = self.hasher(number)
        if not number_hash:
            return BookingResult("refused", reason="no_number")
        if request.capacity < 1:
            return BookingResult("refused", reason="no_capacity")
        slot = request.slot
        if slot.start <= request.now:
            return BookingResult("refused", reason="past_slot")
        keys = self.keys
        day_key = keys.slots(request.service, slot.day)
        number_key = keys.appt_number(request.service, number_hash)
        booking = Booking(
            id=new_booking_id(),
            service=request.service,
            slot=slot,
            number=number,
            number_hash=number_hash,
            call=request.call,
            queue=request.queue,
            lang=request.lang,
            case=request.case,
            created=request.now,
        )
        new_key = keys.appt(booking.id)
        # TTLs count from ``now`` (the caller's clock), never from the server's: the same
        # booking expires the same way live, in the simulator and in a test.
        ttl = max(1, math.ceil(slot.end + self.retention_s - request.now))
        number_ttl = max(1, math.ceil(slot.end + _NUMBER_GRACE_S - request.now))
        for _ in range(_ROUNDS):
            current = _s(await self.client.get(number_key))
            old_key, old_day = new_key, day_key
            if current:
                old_key = keys.appt(current)
                old_day_text = _s(await self.client.hget(old_key, "day"))
                if old_day_text:
                    old_day = keys.slots(request.service, old_day_text)
            answer = await self._book(
                keys=[day_key, keys.appt_due, number_key, new_key, old_key, old_day],
                args=[
                    slot.field,
                    request.capacity,
                    booking.id,
                    current,
                    _t(request.now),
                    ttl,
                    ttl,
                    number_ttl,
                    *_booking_fields(booking),
                ],
            )
            status = _s(answer[0])
            if status == "stale":
                continue
            if status == "booked":
                replaced = _s(answer[2])
                log.info(
                    "appointment.booked",
                    booking=booking.id,
                    service=request.service,
                    slot=slot.start,
                    taken=int(_s(answer[1])),
                    replaced=replaced or None,
                )
                return BookingResult("booked", booking=_replace_marker(booking, replaced), replaced=replaced)
            if status == "unchanged":
                return BookingResult("unchanged", booking=await self.get(_s(answer[1])))
            return BookingResult("full", reason="full")
        raise RuntimeError(f"booking kept changing under us ({_ROUNDS} rounds): {number_key}")

    async def cancel(self, booking_id: str, *, now: float) -> CancelResult:
        """Cancel an open booking: its place is free again."""
        return await self._finish(booking_id, "cancelled", now, free_place=True)

    async def cancel_number(self, service: str, number: str, *, now: float) -> CancelResult:
        """Cancel the open booking of ``number`` at ``service`` (the caller rang to cancel)."""
        booking = await self.find(service, number)
        if booking is None:
            return CancelResult("unknown")
        return await self.cancel(booking.id, now=now)

    async def finish(self, booking_id: str, status: BookingStatus, *, now: float) -> CancelResult:
        """Close a due booking the dispatcher has handled; its place stays counted."""
        if status in ("dispatched", "completed", "failed", "expired"):
            return await self._finish(booking_id, status, now, free_place=False)
        raise ValueError(f"finish status must be one of {sorted(FINAL_STATUSES)}, got {status!r}")

    async def _finish(
        self, booking_id: str, status: _CloseStatus, now: float, *, free_place: bool
    ) -> CancelResult:
        key = self.keys.appt(booking_id)
        before = await self.get(booking_id)
        if before is None:
            return CancelResult("unknown", booking_id)
        service, day, number_hash = before.service, before.slot.day.isoformat(), before.number_hash
        answer = await self._close(
            keys=[
                key,
                self.keys.slots(service, day),
                self.keys.appt_due,
                self.keys.appt_number(service, number_hash),
            ],
            args=[booking_id, _t(now), status, "1" if free_place else "0"],
        )
        if _s(answer[0]) == "unknown":
            return CancelResult("unknown", booking_id)
        if _s(answer[0]) == "closed":
            return CancelResult("closed", booking_id, previous=_s(answer[1]), booking=before)
        log.info("appointment.closed", booking=booking_id, status=status, place_freed=free_place)
        return CancelResult(status, booking_id, previous="booked", booking=before)

    # -- the flow's requests ----------------------------------------------------------------------

    async def perform(self, request: AppointmentRequest) -> AppointmentReply:
        """Answer a request the appointment flow yielded (``ivr.appointments.requests``)."""
        if isinstance(request, FindFreeSlots):
            free = await self.free_slots(request.service, request.candidates, request.capacity, request.limit)
            return FreeSlots(tuple(free))
        if isinstance(request, BookSlot):
            return await self.book(request)
        raise TypeError(f"unknown appointment request {request!r}")  # pragma: no cover


def _booking_fields(b: Booking) -> list[str]:
    pairs: Mapping[str, str] = {
        "id": b.id,
        "service": b.service,
        "slot": b.slot.field,
        "end": str(b.slot.end),
        "day": b.slot.day.isoformat(),
        "tz": b.slot.timezone,
        "number": b.number,
        "number_hash": b.number_hash,
        "call": b.call,
        "queue": b.queue,
        "lang": b.lang,
        "case": b.case,
        "created": _t(b.created),
        "status": b.status,
    }
    return [x for kv in pairs.items() for x in kv]


def _replace_marker(b: Booking, replaced: str) -> Booking:
    if not replaced:
        return b
    return Booking(
        id=b.id,
        service=b.service,
        slot=b.slot,
        number=b.number,
        number_hash=b.number_hash,
        call=b.call,
        queue=b.queue,
        lang=b.lang,
        case=b.case,
        created=b.created,
        status=b.status,
        replaced=replaced,
    )


def _booking(raw: Mapping[Any, Any]) -> Booking:
    f = {_s(k): _s(v) for k, v in raw.items()}
    status = f.get("status", "booked")
    return Booking(
        id=f["id"],
        service=f["service"],
        slot=Slot(int(f["slot"]), int(f["end"]), date.fromisoformat(f["day"]), f.get("tz") or "Europe/Paris"),
        number=f.get("number", ""),
        number_hash=f.get("number_hash", ""),
        call=f.get("call", ""),
        queue=f.get("queue", ""),
        lang=f.get("lang", "fr"),
        case=f.get("case", ""),
        created=float(f.get("created") or 0.0),
        status=status if status in _STATUS_SET else "booked",
        replaced=f.get("replaced", ""),
    )


_STATUS_SET: Final = frozenset(BOOKING_STATUSES)

R = TypeVar("R")


async def drive_with_store(
    flow: Generator[Step | AppointmentRequest, StepResult | AppointmentReply, R],
    perform_step: Callable[[Step], Awaitable[StepResult]],
    store: AppointmentStore,
) -> R:
    """Run a flow that yields channel steps *and* appointment requests to its end.

    Steps go to ``perform_step`` (whatever answers channel steps: a scripted caller in tests), requests
    to the store (:func:`~ivr.domain.ivr_ops.drive` with the store as performer).
    """
    return await drive(flow, perform_step, store.perform)
