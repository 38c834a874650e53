"""What the appointment flow asks of the store, and what it gets back: plain data, no I/O.

The IVR flow is a pure generator (``ivr.domain.ivr_ops``): it cannot await Redis. So,
like a channel step, a store operation is *yielded* as a request value -- "which of these
slots are free?", "book this one" -- and the driver that runs the flow answers it
(:meth:`ivr.appointments.store.AppointmentStore.perform`), or a test answers it from a
script. The flow stays replayable and the booking stays one atomic script in Redis.

This module imports nothing from the flow machinery, so ``ivr.domain.ivr_ops`` may name
these types in its step union without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from ivr.appointments.slots import Slot

__all__ = [
    "BOOKING_STATUSES",
    "AppointmentReply",
    "AppointmentRequest",
    "BookSlot",
    "Booking",
    "BookingResult",
    "FindFreeSlots",
    "FreeSlots",
]

BookingStatus = Literal["booked", "cancelled", "replaced", "dispatched", "completed", "failed", "expired"]
#: ``booked`` is the only open status; the others are final.
BOOKING_STATUSES: Final[tuple[BookingStatus, ...]] = (
    "booked",
    "cancelled",
    "replaced",
    "dispatched",
    "completed",
    "failed",
    "expired",
)


@dataclass(frozen=True, slots=True)
class Booking:
    """One appointment as stored.

    ``number`` is the number to call back (emptied once the booking is closed: personal
    data is kept only while needed); ``number_hash`` its keyed hash, the only form
    analytics see. ``call`` is the uniqueid of the call that booked it.
    """

    id: str
    service: str
    slot: Slot
    number: str
    number_hash: str
    call: str
    queue: str
    lang: str = "fr"
    case: str = ""
    created: float = 0.0
    status: BookingStatus = "booked"
    replaced: str = ""


@dataclass(frozen=True, slots=True)
class FindFreeSlots:
    """Which of ``candidates`` (in order) still have a place; at most ``limit`` of them."""

    service: str
    candidates: tuple[Slot, ...]
    capacity: int
    limit: int


@dataclass(frozen=True, slots=True)
class BookSlot:
    """Book ``slot`` for ``number`` if it has a place left (``capacity`` per slot).

    ``now`` (Asterisk time) is when the booking is made: an earlier booking of the same
    number whose slot is still ahead is replaced, one already due is left to the dispatcher.
    """

    service: str
    slot: Slot
    capacity: int
    number: str
    call: str
    queue: str
    now: float
    lang: str = "fr"
    case: str = ""


@dataclass(frozen=True, slots=True)
class FreeSlots:
    """Answer to :class:`FindFreeSlots`: the free slots, in the order asked."""

    slots: tuple[Slot, ...]


@dataclass(frozen=True, slots=True)
class BookingResult:
    """Answer to :class:`BookSlot`.

    ``status``: ``booked`` (a new booking; ``replaced`` names the number's earlier one,
    now freed), ``unchanged`` (the number already holds this very slot: ``booking`` is that
    one), ``full`` (no place left: someone else took the last one), ``refused`` (``reason``:
    ``no_number``, ``past_slot`` ...).
    """

    status: Literal["booked", "unchanged", "full", "refused"]
    booking: Booking | None = None
    replaced: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("booked", "unchanged")


AppointmentRequest = FindFreeSlots | BookSlot
AppointmentReply = FreeSlots | BookingResult
