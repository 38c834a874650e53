"""Keyed hashing of caller numbers.

A phone number is personal data. Callbacks need the number itself (it is stored in the
callback hash only while the request is open), but analytics never do: they need to tell
"the same caller called three times" from "three callers", nothing more. So the event log
and every KPI keep only ``HMAC-SHA256(key, normalised number)``, truncated.

Why keyed: French numbers are a small space (about 10⁹ mobiles and landlines); a plain
hash is reversed by enumerating them in minutes. With a secret key held in the
controller's configuration, a copy of the Redis data alone reveals nothing. Rotating the
key breaks the linking of old and new hashes, which is the point of rotating it.

Why normalised first: Asterisk shows the same line as ``0612345678``, ``+33612345678``,
``33612345678`` or ``06 12 34 56 78`` depending on the trunk; each must give one hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Final

__all__ = [
    "NUMBER_FIELDS",
    "NumberHasher",
    "normalize_number",
    "scrub_numbers",
]

#: Fields of event data that may carry a raw caller number; the writer replaces each by
#: ``<field>_hash``.
NUMBER_FIELDS: Final = frozenset(
    {"caller", "callerid", "calleridnum", "number", "phone", "connectedlinenum", "callback_number"}
)

MIN_KEY_BYTES: Final = 16

# What Asterisk puts in CALLERID(num) when the number is withheld or absent.
_NO_NUMBER: Final = frozenset({"", "anonymous", "unknown", "restricted", "private", "<unknown>"})
_SEPARATORS_RE: Final = re.compile(r"[\s.\-()/]+")


def normalize_number(number: str, *, country_code: str = "33", national_digits: int = 9) -> str:
    """One spelling per line: E.164 (``+33612345678``) when the form is recognised.

    ``00`` becomes ``+``; a national number (trunk prefix ``0`` + ``national_digits``
    digits) or a bare country code + national digits gets ``+<country_code>``.
    Anything else (short codes, SIP user names) is kept as typed, minus separators and
    case, which is still stable. A withheld number gives ``""``.
    """
    text = _SEPARATORS_RE.sub("", number.strip()).lower()
    if text in _NO_NUMBER:
        return ""
    if text.startswith("00") and text[2:].isdigit():
        return "+" + text[2:]
    if text.isdigit():
        if len(text) == national_digits + 1 and text.startswith("0"):
            return f"+{country_code}{text[1:]}"
        if len(text) == len(country_code) + national_digits and text.startswith(country_code):
            return "+" + text
    return text


class NumberHasher:
    """``HMAC-SHA256(key, normalize_number(number))``, hex, truncated to ``length`` chars.

    64 bits (the default 16 hex characters) make an accidental collision between two
    callers of one service practically impossible (birthday bound near 4·10⁹ numbers)
    while keeping keys and log lines short. A withheld number hashes to ``""`` so that
    analytics can count "no number" without pretending it is one caller.
    """

    __slots__ = ("_country_code", "_key", "_length", "_national_digits")

    def __init__(
        self,
        key: bytes | str,
        *,
        length: int = 16,
        country_code: str = "33",
        national_digits: int = 9,
    ) -> None:
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if len(raw) < MIN_KEY_BYTES:
            raise ValueError(
                f"number hashing key too short ({len(raw)} bytes): use at least {MIN_KEY_BYTES} random "
                "bytes (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
        if not 8 <= length <= 64:
            raise ValueError(f"hash length {length} out of range 8..64 hex characters")
        if not country_code.isdigit():
            raise ValueError(f"invalid country code {country_code!r}")
        self._key = raw
        self._length = length
        self._country_code = country_code
        self._national_digits = national_digits

    def __call__(self, number: str) -> str:
        normal = normalize_number(
            number, country_code=self._country_code, national_digits=self._national_digits
        )
        if not normal:
            return ""
        digest = hmac.new(self._key, normal.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[: self._length]

    def __repr__(self) -> str:  # never show the key
        return f"<NumberHasher length={self._length} country_code={self._country_code}>"


def scrub_numbers(
    data: Mapping[str, str | int | float | bool],
    hasher: NumberHasher,
    fields: frozenset[str] = NUMBER_FIELDS,
) -> dict[str, str | int | float | bool] | None:
    """``data`` with each raw number field ``f`` replaced by ``f_hash``; None if nothing to do.

    Renaming (rather than hashing in place) makes the operation idempotent and lets a
    reader tell a hash from a number by the field name alone.
    """
    if not any(name in fields for name in data):
        return None
    out: dict[str, str | int | float | bool] = {}
    for name, value in data.items():
        if name in fields:
            out[f"{name}_hash"] = hasher(str(value))
        else:
            out[name] = value
    return out
