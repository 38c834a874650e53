"""The appointment offer: a pure IVR sub-flow that reads free slots one by one and books one.

What the caller hears (prompts from ``[services.NAME.appointments.prompts]``, slots said by
``ivr.appointments.speech``)::

    offer    "Nous pouvons vous rappeler à l'heure de votre choix."
    slot     "demain, mardi 2 décembre à 14 heures 30"
    choice   "Pour ce créneau, tapez 1. Pour le suivant, tapez 2. Pour attendre un conseiller, tapez 0."
      1 ->   chosen "Vous avez choisi" + slot
             + confirm "Pour confirmer, tapez 1. Pour un autre créneau, tapez 2."
               1 -> booked "Votre rendez-vous est enregistré ..." + slot      (returns the booking)
               2 -> the next slot
      2 ->   the next slot, up to ``offered`` slots, then none "Nous vous mettons en relation ..."
      0 ->   declined: back to the caller of this flow (the queue)

Rules, whatever the caller presses:

* **Never a dead end.** Nothing typed, wrong keys (after ``retries``), no free slot, no
  slot wanted, the last place taken meanwhile by someone else and nothing left: the flow
  returns *without* a booking and the IVR carries on to the queue or the callback offer.
  Nobody is hung up on here.
* **Nothing booked without a confirmation**, and nothing said to be booked that is not:
  "booked" is played only after the store answered ``booked``.
* **A place taken meanwhile** (the store answers ``full``): the caller is told, and the
  next free slots are fetched afresh -- but no more than ``offered`` slots are read in all.
* **After a hangup nothing more is sent**; a booking confirmed before it stands.

The flow is a generator like every IVR flow (``ivr.domain.ivr_ops``), except that it also
yields *store requests* (``ivr.appointments.requests``): the driver answers them from
Redis (``AppointmentStore.perform``; ``drive_with_store`` does both). Events go to the
call's :class:`~ivr.domain.ivr_ops.EventRecorder` (shared with the IVR flow, so ids never
collide): ``appointment.offered`` (slots were read to the caller), ``ivr.input`` /
``ivr.invalid`` (``menu="appointment"``), ``appointment.booked`` (with the caller's number
hash, never the number) and, when no booking is made, ``ivr.input`` with
``status="no_booking"`` and the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from ivr.appointments.requests import (
    AppointmentReply,
    AppointmentRequest,
    Booking,
    BookingResult,
    BookSlot,
    FindFreeSlots,
    FreeSlots,
)
from ivr.appointments.slots import Slot, slots_for
from ivr.appointments.speech import say_slot
from ivr.config import AppointmentConfig, ServiceConfig
from ivr.domain.events import CallEvent, Scalar, make_id
from ivr.domain.ivr_ops import Clock, EventRecorder, GetDigits, Play, Step, StepResult, prompt_path

__all__ = [
    "CHOICE_KEYS",
    "CONFIRM_KEYS",
    "AppointmentFlow",
    "AppointmentOutcome",
    "booking_event",
    "classify_key",
    "offer_appointment",
]

#: Keys after a slot is read: take it, hear the next one, or decline (wait for an agent).
CHOICE_KEYS: Final[Mapping[str, str]] = {"1": "take", "2": "next", "0": "decline"}
#: Keys after the chosen slot is read back.
CONFIRM_KEYS: Final[Mapping[str, str]] = {"1": "confirm", "2": "other"}

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AppointmentOutcome:
    """How the offer ended. ``booking`` is None when nothing was booked: the IVR goes on.

    ``reason``: ``booked``, ``unchanged`` (the caller already held that slot), ``declined``
    (pressed 0), ``no_slot`` (nothing free), ``no_more_slots`` (none of the ``offered``
    slots suited), ``no_input`` / ``invalid`` (retries spent), ``not_confirmed``,
    ``refused`` (the store refused the number), ``disabled``, ``no_number``,
    ``caller_hangup``. ``offered``: how many slots were read to the caller.
    """

    booking: Booking | None
    reason: str
    offered: int = 0
    hung_up: bool = False

    @property
    def slot(self) -> Slot | None:
        return self.booking.slot if self.booking is not None else None


#: What :func:`offer_appointment` returns: channel steps and store requests out, their answers in.
AppointmentFlow = Generator[Step | AppointmentRequest, StepResult | AppointmentReply, AppointmentOutcome]
_Sub = Generator[Step | AppointmentRequest, StepResult | AppointmentReply, _T]


class _CallerGone(Exception):
    """A step came back "hung up"."""


def classify_key(result: StepResult, keys: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(key, None)`` for an expected single key, else ``(None, problem)``.

    Problems, as the IVR menus name them: ``error`` (Asterisk failed), ``timeout``,
    ``empty`` (``#`` alone), ``too_many_digits``, ``invalid`` (an unexpected key).
    """
    if result.failed:
        return None, "error"
    if not result.digits:
        return None, "timeout" if result.timed_out else "empty"
    if len(result.digits) > 1:
        return None, "too_many_digits"
    if result.digits not in keys:
        return None, "invalid"
    return result.digits, None


def booking_event(type_: str, booking: Booking, ts: float, **data: Scalar) -> CallEvent:
    """An ``appointment.*`` event about ``booking`` made outside a call's flow (a cancellation by
    the web API or a later call, the dispatcher's outcome).

    It belongs to the call that booked; its id derives from the booking and the type, so
    the same change reported twice is stored once.
    """
    return CallEvent(
        type=type_,
        call=booking.call,
        ts=ts,
        id=make_id("appointment", booking.id, type_),
        service=booking.service,
        queue=booking.queue,
        source="appointments",
        data={"booking": booking.id, "slot": booking.slot.start, "caller_hash": booking.number_hash, **data},
    )


def offer_appointment(
    service: ServiceConfig,
    events: EventRecorder,
    *,
    number: str,
    lang: str,
    clock: Clock,
    case: str = "",
) -> AppointmentFlow:
    """Offer ``service``'s next free slots to the caller of ``events.call``; book the one confirmed.

    ``number`` is the number to call back, already accepted by the numbering policy
    (``ivr.callbacks.numbering.check_number``); empty (withheld) means no offer at all.
    """
    return _Offer(service, events, number=number, lang=lang, clock=clock, case=case).run()


class _Offer:
    def __init__(
        self,
        service: ServiceConfig,
        events: EventRecorder,
        *,
        number: str,
        lang: str,
        clock: Clock,
        case: str,
    ) -> None:
        self.service = service
        self.cfg: AppointmentConfig = service.appointments
        self.events = events
        self.number = number
        self.lang = lang
        self.clock = clock
        self.case = case
        self.now = clock()
        self.offered = 0
        self.booking: Booking | None = None

    # -- small steps ------------------------------------------------------------------------

    def _do(self, step: Step) -> _Sub[StepResult]:
        result = yield step
        if not isinstance(result, StepResult):
            raise TypeError(f"step {step!r} answered with {result!r}")
        if result.hangup:
            raise _CallerGone
        return result

    def _ask(self, request: AppointmentRequest, kind: type[_T]) -> _Sub[_T]:
        reply = yield request
        if not isinstance(reply, kind):
            raise TypeError(f"request {request!r} answered with {reply!r}")
        return reply

    def _play(self, name: str) -> _Sub[None]:
        if name:
            yield from self._do(Play(prompt_path(self.lang, name)))

    def _say(self, slot: Slot) -> _Sub[None]:
        for step in say_slot(slot, self.lang, now=self.now):
            yield from self._do(step)  # a missing sound is skipped: the rest still makes sense

    def _end(self, reason: str) -> AppointmentOutcome:
        if self.booking is None:
            self.events.emit(
                "ivr.input",
                queue=self.cfg.queue,
                menu="appointment",
                status="no_booking",
                reason=reason,
                offered=self.offered,
            )
        return AppointmentOutcome(self.booking, reason, self.offered)

    # -- the flow ---------------------------------------------------------------------------

    def run(self) -> AppointmentFlow:
        try:
            return (yield from self._offer())
        except _CallerGone:  # a booking confirmed before the hangup stands
            return dataclasses.replace(self._end("caller_hangup"), hung_up=True)

    def _free(self, candidates: tuple[Slot, ...], limit: int) -> _Sub[list[Slot]]:
        request = FindFreeSlots(self.service.name, candidates, self.cfg.capacity, limit)
        reply = yield from self._ask(request, FreeSlots)
        return list(reply.slots)

    def _offer(self) -> _Sub[AppointmentOutcome]:
        cfg = self.cfg
        if not cfg.enabled:
            return self._end("disabled")
        if not self.number:
            return self._end("no_number")
        candidates = tuple(slots_for(cfg, self.service.hours, self.now))
        free = yield from self._free(candidates, cfg.offered)
        if not free:
            yield from self._play(cfg.prompts.none)
            return self._end("no_slot")
        self.events.emit(
            "appointment.offered", queue=cfg.queue, slots=len(free), first_slot=free[0].start, lang=self.lang
        )
        yield from self._play(cfg.prompts.offer)
        while free:
            slot = free.pop(0)
            self.offered += 1
            choice, problem = yield from self._question(slot, None, cfg.prompts.choice, CHOICE_KEYS)
            if choice is None:
                return self._end(problem)
            if choice == "0":
                return self._end("declined")
            if choice == "2":
                continue
            confirmed, problem = yield from self._question(
                slot, cfg.prompts.chosen, cfg.prompts.confirm, CONFIRM_KEYS
            )
            if confirmed is None:
                return self._end("not_confirmed")
            if confirmed == "2":
                continue
            result = yield from self._ask(
                BookSlot(
                    service=self.service.name,
                    slot=slot,
                    capacity=cfg.capacity,
                    number=self.number,
                    call=self.events.call.uniqueid,
                    queue=cfg.queue,
                    now=self.clock(),
                    lang=self.lang,
                    case=self.case,
                ),
                BookingResult,
            )
            if result.ok and result.booking is not None:
                return (yield from self._booked(result))
            if result.status == "refused":
                yield from self._play(cfg.prompts.none)
                return self._end("refused")
            # full: someone took the last place between the offer and the confirmation
            yield from self._play(cfg.prompts.taken)
            left = cfg.offered - self.offered
            later = tuple(s for s in candidates if s.start > slot.start)
            free = (yield from self._free(later, left)) if left > 0 else []
        yield from self._play(cfg.prompts.none)
        return self._end("no_more_slots")

    def _question(
        self, slot: Slot, before: str | None, prompt: str, keys: Mapping[str, str]
    ) -> _Sub[tuple[str | None, str]]:
        """Say the slot (after ``before``), ask ``prompt``; ``(key, "")`` or ``(None, reason)``."""
        failures = 0
        question = "confirm" if keys is CONFIRM_KEYS else "choice"
        while True:
            if before:
                yield from self._play(before)
            yield from self._say(slot)
            result = yield from self._do(
                GetDigits(prompt_path(self.lang, prompt), int(self.cfg.timeout_s * 1000), 1)
            )
            key, problem = classify_key(result, keys)
            if key is not None:
                self.events.emit(
                    "ivr.input",
                    menu="appointment",
                    question=question,
                    key=key,
                    choice=keys[key],
                    slot=slot.start,
                )
                return key, ""
            failures += 1
            self.events.emit(
                "ivr.invalid",
                menu="appointment",
                question=question,
                reason=problem or "invalid",
                keys=result.digits[:16],
                attempt=failures,
            )
            no_input = problem in ("timeout", "empty")
            if failures > self.cfg.retries:
                return None, "no_input" if no_input else "invalid"
            prompts = self.service.prompts
            yield from self._play(prompts.no_input if no_input else prompts.invalid)

    def _booked(self, result: BookingResult) -> _Sub[AppointmentOutcome]:
        booking = result.booking
        assert booking is not None
        self.booking = booking
        self.events.emit(
            "appointment.booked",
            queue=booking.queue,
            booking=booking.id,
            slot=booking.slot.start,
            slot_end=booking.slot.end,
            status=result.status,
            replaced=result.replaced or None,
            caller_hash=booking.number_hash,
            offered=self.offered,
        )
        yield from self._play(self.cfg.prompts.booked)
        yield from self._say(booking.slot)
        return AppointmentOutcome(booking, result.status, self.offered)
