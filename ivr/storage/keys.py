"""Every Redis key name Décroché uses, in one place.

Why one module (as arq does): keys are the schema of a database without a schema. When
they are spelled in one file, a reader sees at once what lives in Redis, two features
cannot pick the same name by accident, and the prefix that lets two deployments (or a
test run) share one server is applied everywhere or nowhere.

Key plan (with the default prefix ``ivr``):

=================================  ===========  =============================================
key                                type         what
=================================  ===========  =============================================
``ivr:events``                     stream       the call event log (``ivr.storage.writer``)
``ivr:seen:{event_id}``            string+TTL   idempotency marker: this event is stored
``ivr:call:{call_id}``             hash+TTL     last known state of one call
``ivr:cb:pending``                 sorted set   open callbacks, by original queue-join time
``ivr:cb:{callback_id}``           hash         one callback request
``ivr:cb:lease:{callback_id}``     string+PX    a dispatcher's claim on a callback
``ivr:cb:number:{number_hash}``    string       the one open request of a (hashed) number
``ivr:cb:queue:{queue}``           sorted set   callbacks of a queue waiting to be dialled, by join time
``ivr:cb:inflight``                sorted set   callbacks being dialled, by when their lease is checked
``ivr:cb:ringing:{queue}``         sorted set   callbacks of a queue whose Originate has no agent yet
``ivr:cb:closed``                  sorted set   closed callbacks by closing time (supervisors' list)
``ivr:slots:{service}:{date}``     hash         appointment capacity of a day (YYYY-MM-DD)
``ivr:appt:{booking_id}``          hash+TTL     one appointment booking
``ivr:appt:due``                   sorted set   open appointment bookings, by slot start time
``ivr:appt:number:{svc}:{hash}``   string+TTL   the one open booking of a (hashed) number at a service
``ivr:kpi:{queue}:{yyyymmddhh}``   hash         hourly counters of a queue
``ivr:hb:{instance}``              string+TTL   heartbeat of a controller instance
=================================  ===========  =============================================

Variable parts are checked: an empty part, a ``:`` or white space would let two
different things share a key (``cb("pending")`` would *be* the pending set), so they are
refused with a :class:`ValueError` rather than silently mangled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

__all__ = ["DEFAULT_KEYS", "DEFAULT_PREFIX", "Keys"]

DEFAULT_PREFIX: Final = "ivr"

# A key part may hold anything printable except the separator and white space.
_PART_RE: Final = re.compile(r"[^\s:]+")
_PREFIX_RE: Final = re.compile(r"[^\s:]+(?::[^\s:]+)*")
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_HOUR_RE: Final = re.compile(r"\d{10}")
# Names under ivr:cb: that are not callback ids.
_CB_RESERVED: Final = frozenset({"pending", "lease", "number", "queue", "inflight", "ringing", "closed"})
# Names under ivr:appt: that are not booking ids.
_APPT_RESERVED: Final = frozenset({"due", "number"})


def _part(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _PART_RE.fullmatch(value):
        raise ValueError(f"invalid {kind} for a Redis key: {value!r} (empty, ':' or white space)")
    return value


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix; ``Keys("test:ivr")`` gives ``test:ivr:events`` etc."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"invalid Redis key prefix {self.prefix!r}")

    # -- event log -----------------------------------------------------------

    @property
    def events(self) -> str:
        """The call event stream."""
        return f"{self.prefix}:events"

    def seen(self, event_id: str) -> str:
        """Idempotency marker of one event id (SET NX EX by the writer's script)."""
        return f"{self.prefix}:seen:{_part('event id', event_id)}"

    def call(self, call_id: str) -> str:
        """Per-call summary hash (last state, with a TTL)."""
        return f"{self.prefix}:call:{_part('call id', call_id)}"

    # -- callbacks -----------------------------------------------------------

    @property
    def cb_pending(self) -> str:
        """Sorted set of open callbacks, scored by the caller's original queue-join time."""
        return f"{self.prefix}:cb:pending"

    def cb(self, callback_id: str) -> str:
        """Hash of one callback request."""
        if callback_id in _CB_RESERVED:
            raise ValueError(f"callback id {callback_id!r} is reserved")
        return f"{self.prefix}:cb:{_part('callback id', callback_id)}"

    def cb_lease(self, callback_id: str) -> str:
        """Lease (SET NX PX) held by the dispatcher that claimed the callback."""
        return f"{self.prefix}:cb:lease:{_part('callback id', callback_id)}"

    def cb_number(self, number_hash: str) -> str:
        """The open callback of a number, by its keyed hash (never the number itself)."""
        return f"{self.prefix}:cb:number:{_part('number hash', number_hash)}"

    def cb_queue(self, queue: str) -> str:
        """Callbacks of one queue waiting to be dialled (status pending), scored by original join time."""
        return f"{self.prefix}:cb:queue:{_part('queue', queue)}"

    @property
    def cb_inflight(self) -> str:
        """Callbacks being dialled (status dialing), scored by when their lease should be checked."""
        return f"{self.prefix}:cb:inflight"

    def cb_ringing(self, queue: str) -> str:
        """Callbacks of ``queue`` whose Originate has not reached an agent yet: each holds a free agent."""
        return f"{self.prefix}:cb:ringing:{_part('queue', queue)}"

    @property
    def cb_closed(self) -> str:
        """Closed callbacks (completed, failed, expired, cancelled) by closing time, for supervisors."""
        return f"{self.prefix}:cb:closed"

    # -- appointments, counters, liveness ------------------------------------

    def slots(self, service: str, day: date | str) -> str:
        """Appointment capacity of ``service`` on ``day`` (a date or ``YYYY-MM-DD``)."""
        if isinstance(day, datetime):
            day = day.date()
        text = day.isoformat() if isinstance(day, date) else day
        if not isinstance(text, str) or not _DATE_RE.fullmatch(text):
            raise ValueError(f"invalid day {day!r}: expected a date or YYYY-MM-DD")
        return f"{self.prefix}:slots:{_part('service', service)}:{text}"

    def kpi(self, queue: str, hour: datetime | str) -> str:
        """Hourly counters of ``queue``; ``hour`` is a datetime (its own wall clock) or ``yyyymmddhh``.

        The zone is the caller's choice (the controller uses the service's local time, as
        supervisors read their day in it); this module only spells the bucket.
        """
        text = hour.strftime("%Y%m%d%H") if isinstance(hour, datetime) else hour
        if not isinstance(text, str) or not _HOUR_RE.fullmatch(text):
            raise ValueError(f"invalid hour {hour!r}: expected a datetime or yyyymmddhh")
        return f"{self.prefix}:kpi:{_part('queue', queue)}:{text}"

    def hb(self, instance: str) -> str:
        """Heartbeat of one controller instance (SET with a TTL, refreshed while alive)."""
        return f"{self.prefix}:hb:{_part('instance', instance)}"

    # -- appointment bookings --------------------------------------------------

    def appt(self, booking_id: str) -> str:
        """Hash of one appointment booking (``ivr.appointments.store``)."""
        if booking_id in _APPT_RESERVED:
            raise ValueError(f"booking id {booking_id!r} is reserved")
        return f"{self.prefix}:appt:{_part('booking id', booking_id)}"

    @property
    def appt_due(self) -> str:
        """Open bookings scored by slot start (epoch s): what the dispatcher calls back, and when."""
        return f"{self.prefix}:appt:due"

    def appt_number(self, service: str, number_hash: str) -> str:
        """The open booking of a number at a service, by the number's keyed hash (never the number)."""
        return f"{self.prefix}:appt:number:{_part('service', service)}:{_part('number hash', number_hash)}"


#: The key names of a default deployment.
DEFAULT_KEYS: Final = Keys()
