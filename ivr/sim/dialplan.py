"""The dialplan model: steps in Asterisk's ``App(args)`` syntax, extension patterns, ``${}``.

Just enough of ``main/pbx.c`` for the simulator: extensions are looked up exactly first,
then among patterns (``_2XX``, ``_06XXXXXXXX``, ``_X.``) the most specific wins, as
``ast_extension_match`` and the pattern sort do; priorities are the step numbers (1-based)
and labels (``"talking:Wait(600)"``) can be jumped to by name.

Substitution covers ``${VAR}``, ``${VAR:offset}``/``${VAR:offset:length}`` (negative values
count from the end, as Asterisk's substring does), the channel builtins the engine passes
in (EXTEN, CONTEXT, CHANNEL, UNIQUEID, CALLERID(num), CALLERID(name), ...) and one
simulator function, ``${DEFAULT(VAR,value)}``: the variable if set and not empty, else
``value`` (the rig writes the same thing with ``IF``/``LEN``; the simulator keeps the model
declarative instead of embedding Asterisk's expression language).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

__all__ = ["Dialplan", "Step", "match_pattern", "parse_step", "split_args", "substitute"]

_APP_RE: Final = re.compile(
    r"(?:(?P<label>[A-Za-z0-9_-]+):)?(?P<app>[A-Za-z][A-Za-z0-9_]*)\((?P<args>.*)\)\s*"
)


@dataclass(frozen=True, slots=True)
class Step:
    """One priority: an application with its (unexpanded) argument string."""

    app: str
    args: str
    label: str | None = None


@lru_cache(maxsize=4096)
def parse_step(text: str) -> Step:
    """``"Queue(support,c,,,${QT})"`` -> Step("Queue", "support,c,,,${QT}")."""
    m = _APP_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected 'App(args)' or 'label:App(args)', got {text!r}")
    args = m["args"]
    if args.count("${") != _count_closing(args):
        raise ValueError(f"unbalanced ${{...}} in {text!r}")
    return Step(m["app"], args, m["label"])


def _count_closing(s: str) -> int:
    depth = opened = 0
    i = 0
    while i < len(s):
        if s.startswith("${", i):
            depth += 1
            opened += 1
            i += 2
            continue
        if s[i] == "}" and depth:
            depth -= 1
        i += 1
    return opened - depth


def split_args(args: str) -> list[str]:
    """Split application arguments on commas outside parentheses (``AST_STANDARD_APP_ARGS``)."""
    out: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in args:
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]" and depth:
            depth -= 1
        cur.append(ch)
    out.append("".join(cur))
    return out


Lookup = Callable[[str], str | None]


def substitute(text: str, lookup: Lookup) -> str:
    """Expand ``${...}`` in ``text``; ``lookup(name)`` gives a variable or ``None`` (unset)."""
    if "${" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        start = text.find("${", i)
        if start < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        depth = 1
        j = start + 2
        while j < n and depth:
            if text.startswith("${", j):
                depth += 1
                j += 2
                continue
            if text[j] == "}":
                depth -= 1
            j += 1
        inner = substitute(text[start + 2 : j - 1], lookup)
        out.append(_expand(inner, lookup))
        i = j
    return "".join(out)


_FUNC_RE: Final = re.compile(r"(?P<name>[A-Z_]+)\((?P<args>.*)\)")


def _expand(expr: str, lookup: Lookup) -> str:
    fm = _FUNC_RE.fullmatch(expr)
    if fm is not None:
        name, args = fm["name"], fm["args"]
        if name == "DEFAULT":
            var, _, default = args.partition(",")
            value = lookup(var.strip())
            return value if value else default
        if name == "LEN":
            return str(len(args))
        value = lookup(expr)  # CALLERID(num) and friends
        return value or ""
    name, colon, rest = expr.partition(":")
    value = lookup(name) or ""
    if not colon:
        return value
    offset_s, _, length_s = rest.partition(":")
    try:
        offset = int(offset_s) if offset_s else 0
        length = int(length_s) if length_s else None
    except ValueError:
        return value
    if offset < 0:
        offset = max(0, len(value) + offset)
    sub = value[offset:]
    if length is not None:
        sub = sub[:length] if length >= 0 else sub[:length] if -length <= len(sub) else ""
    return sub


# -- extension patterns -------------------------------------------------------------------------

_CLASS: Final[dict[str, str]] = {"X": "0123456789", "Z": "123456789", "N": "23456789"}


def _pattern_tokens(pattern: str) -> list[str | None]:
    """A pattern (without ``_``) as tokens: a char set per position, None for ``.``/``!``."""
    tokens: list[str | None] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        upper = ch.upper()
        if upper in _CLASS:
            tokens.append(_CLASS[upper])
        elif ch == "[":
            end = pattern.find("]", i)
            if end < 0:
                raise ValueError(f"unterminated [ in pattern {pattern!r}")
            body = pattern[i + 1 : end]
            chars: list[str] = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    chars.extend(chr(c) for c in range(ord(body[k]), ord(body[k + 2]) + 1))
                    k += 3
                else:
                    chars.append(body[k])
                    k += 1
            tokens.append("".join(chars))
            i = end
        elif ch in ".!":
            tokens.append(None)
        else:
            tokens.append(ch)
        i += 1
    return tokens


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> tuple[tuple[str | None, ...], tuple[float, ...]]:
    tokens = tuple(_pattern_tokens(pattern))
    weights = tuple(float("inf") if t is None else float(len(t)) for t in tokens)
    return tokens, weights


def match_pattern(pattern: str, exten: str) -> bool:
    """Whether ``exten`` matches extension ``pattern`` (``_`` prefix) or equals it."""
    if not pattern.startswith("_"):
        return pattern == exten
    tokens, _ = _compiled(pattern[1:])
    for i, tok in enumerate(tokens):
        if tok is None:
            return len(exten) > i  # '.' needs one more char; '!' would allow zero, close enough
        if i >= len(exten) or exten[i] not in tok:
            return False
    return len(exten) == len(tokens)


class Dialplan:
    """Contexts -> extensions -> parsed steps, with Asterisk's lookup precedence."""

    def __init__(self, contexts: Mapping[str, Mapping[str, list[str]]]) -> None:
        self.contexts: dict[str, dict[str, tuple[Step, ...]]] = {
            ctx: {ext: tuple(parse_step(s) for s in steps) for ext, steps in extens.items()}
            for ctx, extens in contexts.items()
        }
        self._patterns: dict[str, list[str]] = {
            ctx: sorted((e for e in extens if e.startswith("_")), key=lambda e: _compiled(e[1:])[1])
            for ctx, extens in self.contexts.items()
        }

    def find(self, context: str, exten: str) -> str | None:
        """The extension entry that handles ``exten`` in ``context`` (exact, then pattern)."""
        extens = self.contexts.get(context)
        if extens is None:
            return None
        if exten in extens:
            return exten
        for pattern in self._patterns[context]:
            if match_pattern(pattern, exten):
                return pattern
        return None

    def exists(self, context: str, exten: str) -> bool:
        return self.find(context, exten) is not None

    def steps(self, context: str, exten: str) -> tuple[Step, ...]:
        entry = self.find(context, exten)
        return () if entry is None else self.contexts[context][entry]

    def priority_of(self, context: str, exten: str, label_or_priority: str) -> int | None:
        """A priority number from ``"3"`` or a label name; None if absent."""
        steps = self.steps(context, exten)
        if label_or_priority.isdigit():
            prio = int(label_or_priority)
            return prio if 1 <= prio <= len(steps) else None
        for i, step in enumerate(steps, 1):
            if step.label == label_or_priority:
                return i
        return None
