"""Which numbers a callback may dial: the French national numbering plan (ARCEP), by default.

Why a callback number is checked at all: the controller places the call and the public
service pays for it. A number typed on a keypad (or a spoofed caller ID) that leads to a
premium-rate line, an emergency service or a foreign country is toll fraud, a nuisance, or
both. So a number is accepted only when it falls in a range the national plan assigns to
ordinary lines, and each refusal has a reason code the IVR can turn into a prompt ("this
number cannot be called back, please type a French landline or mobile number") and that
goes into the ``callback.*`` events.

The plan (ARCEP, "plan national de numérotation téléphonique"; the same ranges as the
French metadata of Google's libphonenumber), for ten-digit national numbers ``0Z ABPQ MCDU``:

=========  ================================================  ==================  ===============
prefix     what                                              kind                default
=========  ================================================  ==================  ===============
01 - 05    geographic lines (incl. overseas: 0262, 0590...)  ``geographic``      allowed
06         mobile                                            ``mobile``          allowed
073 - 079  mobile                                            ``mobile``          allowed
070 - 072  not assigned to people (0700: 14-digit M2M)       --                  refused
09         non-geographic lines (VoIP, boxes)                ``nongeographic``   allowed
0800-0805  free-to-call service numbers                      ``special``         refused
0806-0809  ordinary-rate service numbers                     ``special``         refused
081, 082   value-added services, surcharged                  ``premium``         refused
089        value-added services, highest surcharge           ``premium``         refused
0884       shared-cost                                       ``premium``         refused
other 08   not assigned                                      --                  refused
=========  ================================================  ==================  ===============

Decisions, and why:

* **All 08 numbers are refused by default, under one flag** (``allow_premium``). 081, 082,
  089 and 0884 cost the caller -- here the service -- a surcharge per minute or per call:
  the toll-fraud risk itself. 080 numbers cost nothing (0800-0805) or the ordinary rate
  (0806-0809), but they are inbound numbers of companies and administrations, never a
  citizen's own line: calling one back cannot reach the person who asked. They are kept
  apart (kind ``special``, reason ``special_not_allowed``) so a prompt can say so, but
  one flag opens the 08 range, as "numéros spéciaux" are one family in the plan. The
  shipped dialplan (``_0[1-79]XXXXXXXX`` in ``dp-callback.conf``) refuses 08 whatever
  the controller sends: allowing them also needs a dialplan change.
* **Short numbers** (2 to 6 digits, no leading 0: 1x, 11x, 3xxx, 10xx, 118xxx) are refused
  unless ``allow_short_codes``; 118xxx directory enquiries are premium-rate and also need
  ``allow_premium``. Emergency and public-interest numbers (15, 17, 18, 112, 114, 115,
  119, 191, 196, 197 and the European 116xxx) are **always** refused: no flag lets the
  controller ring an emergency line.
* **International numbers** (``+`` or ``00``) are refused unless ``allow_international``.
  ``+33`` (or ``0033``, or the ``33`` + 9 digits some trunks present) is France and is
  normalised to the national form first; so are the overseas departments' own country
  codes (+262 Réunion/Mayotte, +590 Guadeloupe, +594 Guyane, +596 Martinique), whose
  numbers are in the national plan (``+262 262 xx xx xx`` is ``0262 xx xx xx``).
* **No number** (empty, ``anonymous``, ``unknown``, ``restricted``, ``private``,
  ``<unknown>``: what Asterisk shows for a withheld caller ID) is reason ``withheld``: the
  IVR must ask the caller to type a number rather than give up.

The accepted number is returned in the form the dialplan dials: ten national digits for
France (``0612345678``), ``00`` + digits for abroad, the digits of a short code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from ivr.config import CallbackConfig

__all__ = [
    "EMERGENCY_NUMBERS",
    "REASONS",
    "NumberCheck",
    "NumberKind",
    "NumberPolicy",
    "check_number",
]

NumberKind = Literal[
    "geographic",
    "mobile",
    "nongeographic",
    "special",
    "premium",
    "international",
    "short_code",
    "emergency",
    "unknown",
]

#: Every refusal reason, with what it means (for logs, the HTTP API and prompt choice).
REASONS: Final[dict[str, str]] = {
    "withheld": "no number (withheld, anonymous or empty): ask the caller to type one",
    "invalid_characters": "only digits, a leading '+' and separators are allowed",
    "invalid_length": "not the length of a number of this kind (10 digits in France)",
    "unassigned": "in no range the national numbering plan assigns to lines",
    "machine_to_machine": "a 14-digit 0700 number: machine-to-machine, never a person",
    "emergency": "an emergency or public-interest number: never called back",
    "geographic_not_allowed": "geographic numbers (01-05) are not called back here",
    "mobile_not_allowed": "mobile numbers (06, 073-079) are not called back here",
    "nongeographic_not_allowed": "non-geographic numbers (09) are not called back here",
    "special_not_allowed": "service numbers (080x) reach an organisation, not the caller",
    "premium_not_allowed": "surcharged numbers (081, 082, 089, 0884, 118xxx) are refused (toll fraud)",
    "international_not_allowed": "numbers outside France are not called back",
    "short_code_not_allowed": "short numbers (1x, 3xxx, 10xx) are not called back",
}

#: Emergency and public-interest short numbers (plus every 116xxx): never dialled.
EMERGENCY_NUMBERS: Final = frozenset({"15", "17", "18", "112", "114", "115", "119", "191", "196", "197"})

#: Overseas departments with their own country code but numbers of the national plan.
_OVERSEAS_CODES: Final = ("262", "590", "594", "596")
#: What Asterisk puts in CALLERID(num) when there is no usable number.
_NO_NUMBER: Final = frozenset({"", "anonymous", "unknown", "restricted", "private", "<unknown>", "withheld"})
#: Separators people and trunks put inside numbers.
_SEPARATORS_RE: Final = re.compile(r"[\s.\-()/]+")
_DIGITS_RE: Final = re.compile(r"[0-9]+")
#: E.164: at most 15 digits including the country code; none is shorter than 7 in practice.
_E164_MIN: Final = 7
_E164_MAX: Final = 15


@dataclass(frozen=True, slots=True)
class NumberPolicy:
    """Which kinds of valid numbers may be called back (``[callbacks]`` of the configuration)."""

    allow_geographic: bool = True
    allow_mobile: bool = True
    allow_nongeographic: bool = True
    allow_premium: bool = False
    allow_international: bool = False
    allow_short_codes: bool = False

    @classmethod
    def from_config(cls, config: CallbackConfig) -> NumberPolicy:
        return cls(
            allow_geographic=config.allow_geographic,
            allow_mobile=config.allow_mobile,
            allow_nongeographic=config.allow_nongeographic,
            allow_premium=config.allow_premium,
            allow_international=config.allow_international,
            allow_short_codes=config.allow_short_codes,
        )

    def allows(self, kind: NumberKind) -> bool:
        if kind == "geographic":
            return self.allow_geographic
        if kind == "mobile":
            return self.allow_mobile
        if kind == "nongeographic":
            return self.allow_nongeographic
        if kind in ("special", "premium"):
            return self.allow_premium
        if kind == "international":
            return self.allow_international
        if kind == "short_code":
            return self.allow_short_codes
        return False


DEFAULT_POLICY: Final = NumberPolicy()


@dataclass(frozen=True, slots=True)
class NumberCheck:
    """The verdict on one number.

    ``number`` is the dialable form when the number is valid (even if the policy refuses
    it, so a log can say what was refused); ``reason`` is ``""`` when ``ok``, else a key
    of :data:`REASONS`.
    """

    ok: bool
    number: str
    kind: NumberKind
    reason: str = ""

    @property
    def explanation(self) -> str:
        return REASONS.get(self.reason, "") if self.reason else ""


def _refuse(reason: str, number: str = "", kind: NumberKind = "unknown") -> NumberCheck:
    return NumberCheck(False, number, kind, reason)


def _national_kind(digits: str) -> tuple[NumberKind | None, str]:
    """Kind of a national number (leading 0), or (None, reason) when the plan has no such line."""
    if len(digits) == 14 and digits.startswith("0700"):
        return None, "machine_to_machine"
    if len(digits) != 10:
        return None, "invalid_length"
    z, a, b = digits[1], digits[2], digits[3]
    if z in "12345":
        return "geographic", ""
    if z == "6":
        return "mobile", ""
    if z == "7":
        return ("mobile", "") if a in "3456789" else (None, "unassigned")
    if z == "9":
        return "nongeographic", ""
    if z == "8":
        if a == "0":
            return "special", ""
        if a in "129" or (a == "8" and b == "4"):
            return "premium", ""
        return None, "unassigned"
    return None, "unassigned"  # 00 is the international prefix, handled before


def _short_kind(digits: str) -> tuple[NumberKind | None, str]:
    if digits in EMERGENCY_NUMBERS or (digits.startswith("116") and len(digits) == 6):
        return "emergency", ""
    if len(digits) == 6 and digits.startswith("118"):
        return "premium", ""
    if 2 <= len(digits) <= 6 and digits[0] in "13":
        return "short_code", ""
    return None, "invalid_length" if len(digits) < 10 else "unassigned"


def check_number(raw: str, policy: NumberPolicy = DEFAULT_POLICY) -> NumberCheck:
    """Classify ``raw`` (a caller ID or digits typed by the caller) and apply ``policy``.

    Pure and total: any string gives a :class:`NumberCheck`, never an exception.
    """
    text = _SEPARATORS_RE.sub("", raw.strip()) if isinstance(raw, str) else ""
    if text.lower() in _NO_NUMBER:
        return _refuse("withheld")
    international = False
    if text.startswith("+"):
        international, digits = True, text[1:]
    elif text.startswith("00"):
        international, digits = True, text[2:]
    else:
        digits = text
    if not digits or not _DIGITS_RE.fullmatch(digits):
        return _refuse("invalid_characters")

    national: str | None = None
    if international:
        if digits.startswith("33"):
            rest = digits[2:]
            # "+33 0 6 12..." is a common way of writing it: the trunk 0 is dropped.
            national = "0" + (rest[1:] if rest.startswith("0") and len(rest) == 10 else rest)
        elif digits[:3] in _OVERSEAS_CODES and len(digits) == 12:
            national = "0" + digits[3:]
        else:
            if not _E164_MIN <= len(digits) <= _E164_MAX:
                return _refuse("invalid_length", kind="international")
            dialable = "00" + digits
            ok = policy.allows("international")
            return NumberCheck(ok, dialable, "international", "" if ok else "international_not_allowed")
    elif digits.startswith("0"):
        national = digits
    elif len(digits) == 11 and digits.startswith("33"):
        national = "0" + digits[2:]  # E.164 without the '+', as some trunks present it

    if national is not None:
        kind, reason = _national_kind(national)
    else:
        kind, reason = _short_kind(digits)
    if kind is None:
        return _refuse(reason)
    number = national if national is not None else digits
    if kind == "emergency":
        return NumberCheck(False, number, kind, "emergency")
    if kind == "premium" and national is None and not policy.allow_short_codes:
        return NumberCheck(False, number, kind, "short_code_not_allowed")
    if policy.allows(kind):
        return NumberCheck(True, number, kind)
    return NumberCheck(False, number, kind, f"{kind}_not_allowed")
