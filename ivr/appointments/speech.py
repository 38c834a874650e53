"""How a slot is said in French: "mardi 2 décembre à 14 heures 30", from Asterisk's own sounds.

Two ways to the same words, both from Debian's ``asterisk-core-sounds-fr``:

* :func:`say_slot` -- a sequence of :class:`~ivr.domain.ivr_ops.Play` steps, one sound each
  (``digits/day-2``, ``digits/2``, ``digits/mon-11``, ``digits/at``, ``digits/14``,
  ``digits/oclock``, ``digits/30``). It needs no step beyond those every flow has, the
  words are checked here against the sound list, and the timezone is the service's.
* :func:`say_slot_command` -- one ``SAY DATETIME`` AGI command with the French format
  :data:`SAY_DATETIME_FORMAT_FR` and the service's timezone: fewer round trips, and keys
  may interrupt it.

Both follow ``ast_say_date_with_format_fr`` (main/say.c): ``A`` plays ``digits/day-N``
(Sunday = 0), ``d`` the day of the month as a number but ``digits/h-1`` ("premier") for
the 1st, ``B`` ``digits/mon-N`` (January = 0), ``H`` the hour as a number then
``digits/oclock`` ("heures"), ``M`` the minutes as a number and nothing at all on the
hour. Numbers follow ``ast_say_number_full_fr``: 21 is ``digits/20 digits/et digits/1``,
71 ``digits/60 digits/et digits/11``, 80-99 ``digits/80`` + the rest.

A slot today or tomorrow is announced "aujourd'hui" / "demain" first (``digits/today``,
``digits/tomorrow``), then the full date, so a caller never has to work out the weekday.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from ivr.appointments.slots import Slot
from ivr.domain.ivr_ops import Play, prompt_path
from ivr.protocol import agi
from ivr.protocol.agi import Command

__all__ = [
    "SAY_DATETIME_FORMAT_FR",
    "french_number",
    "say_slot",
    "say_slot_command",
    "slot_sounds",
]

#: ``ast_say_date_with_format`` format for "mardi 2 décembre à 14 heures 30" (spaces are ignored).
SAY_DATETIME_FORMAT_FR: Final = "A d B 'digits/at' H M"


def french_number(n: int) -> tuple[str, ...]:
    """The sounds ``SAY NUMBER`` plays for ``n`` in French (``ast_say_number_full_fr``, masculine)."""
    if n < 0:
        return ("digits/minus", *french_number(-n))
    if n == 0:
        return ("digits/0",)
    out: list[str] = []
    while n:
        if n < 21:
            out.append(f"digits/{n}")
            n = 0
        elif n < 70:
            out.append(f"digits/{n // 10 * 10}")
            if n % 10 == 1:
                out.append("digits/et")
            n %= 10
        elif n < 80:
            out.append("digits/60")
            if n % 10 == 1:
                out.append("digits/et")
            n -= 60
        elif n < 100:
            out.append("digits/80")
            n -= 80
        elif n < 200:
            out.append("digits/hundred")
            n -= 100
        elif n < 1000:
            out.extend((f"digits/{n // 100}", "digits/hundred"))
            n %= 100
        elif n < 2000:
            out.append("digits/thousand")
            n -= 1000
        elif n < 1_000_000:
            out.extend((*french_number(n // 1000), "digits/thousand"))
            n %= 1000
        else:
            raise ValueError(f"{n} is too large to be said here")
    return tuple(out)


def slot_sounds(slot: Slot, *, now: float | None = None) -> tuple[str, ...]:
    """Sound names (no language directory) saying when ``slot`` starts, in the slot's timezone.

    With ``now``, a slot today or tomorrow (local dates) starts with "aujourd'hui" / "demain".
    """
    zone = ZoneInfo(slot.timezone)
    when = datetime.fromtimestamp(slot.start, zone)
    out: list[str] = []
    if now is not None:
        today = datetime.fromtimestamp(now, zone).date()
        if when.date() == today:
            out.append("digits/today")
        elif when.date() == today + timedelta(days=1):
            out.append("digits/tomorrow")
    out.append(f"digits/day-{(when.weekday() + 1) % 7}")  # Asterisk: Sunday = 0
    out.extend(("digits/h-1",) if when.day == 1 else french_number(when.day))
    out.append(f"digits/mon-{when.month - 1}")
    out.append("digits/at")
    out.extend(french_number(when.hour))
    out.append("digits/oclock")
    if when.minute:
        out.extend(french_number(when.minute))
    return tuple(out)


def say_slot(slot: Slot, lang: str, *, now: float | None = None) -> tuple[Play, ...]:
    """The :class:`Play` steps that say ``slot`` to a caller speaking ``lang``."""
    return tuple(Play(prompt_path(lang, name)) for name in slot_sounds(slot, now=now))


def say_slot_command(slot: Slot, escape_digits: str = "") -> Command:
    """One ``SAY DATETIME`` saying the same words (the channel's language must be ``fr``)."""
    return agi.say_datetime(slot.start, escape_digits, SAY_DATETIME_FORMAT_FR, slot.timezone)
