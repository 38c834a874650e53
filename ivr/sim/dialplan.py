"""The dialplan model: steps in Asterisk's ``App(args)`` syntax, extension patterns, ``${}``.

Just enough of ``main/pbx.c`` for the simulator: extensions are looked up exactly first,
then among patterns (``_2XX``, ``_06XXXXXXXX``, ``_X.``) the most specific wins, as
``ast_extension_match`` and the pattern sort do; priorities are the step numbers (1-based)
and labels (``"talking:Wait(600)"``) can be jumped to by name.

Substitution covers ``${VAR}``, ``${VAR:offset}``/``${VAR:offset:length}`` (negative values
count from the end, as Asterisk's substring does), the channel builtins the engine passes
in (EXTEN, CONTEXT, CHANNEL, UNIQUEID, CALLERID(num), CALLERID(name), ...), the functions
``IF(cond?a:b)``, ``LEN(x)``, ``ISNULL(x)`` and one simulator function,
``${DEFAULT(VAR,value)}``: the variable if set and not empty, else ``value``. AstDB
(:class:`AstDB`) backs ``DB(family/key)``, ``DB_EXISTS`` and ``DB_DELETE`` (funcs/func_db.c),
read through the channel's lookup and written by ``Set()``.

``$[...]`` expressions are evaluated as ``main/ast_expr2.y`` does for the operators a
dialplan writes in practice (``|``, ``&``, comparisons, arithmetic, ``!``, unary ``-``,
parentheses, quoted strings, ``cond ? a :: b``), because the shipped dialplan routes on
them (``${IF($["${IVR_ACTION}" = ""]?queue:${IVR_ACTION})}``). Like Asterisk, the inside of
``${...}`` and ``$[...]`` is substituted first, innermost first.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "AstDB",
    "Dialplan",
    "Step",
    "evaluate_expression",
    "match_pattern",
    "parse_step",
    "split_args",
    "substitute",
]

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
    return list(_split_args(args))


@lru_cache(maxsize=4096)
def _split_args(args: str) -> tuple[str, ...]:
    """:func:`split_args`, cached: the same steps split the same arguments on every call."""
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
    return tuple(out)


Lookup = Callable[[str], str | None]


def substitute(text: str, lookup: Lookup) -> str:
    """Expand ``${...}`` and ``$[...]`` in ``text``; ``lookup(name)`` gives a variable or ``None``."""
    if "$" not in text:
        return text
    return _render(_compile(text), lookup)


#: A parsed argument string: literal text, or ``(is_brace, inner, plain)`` for ``${inner}``
#: / ``$[inner]``, whose inner text is itself substituted first -- unless it holds no
#: ``$`` part: then ``plain`` is that text (``${VAR}``, most of them), else None.
_Part = str | tuple[bool, "_Template", str | None]
_Template = tuple[_Part, ...]


@lru_cache(maxsize=8192)
def _compile(text: str) -> _Template:
    """Split ``text`` once into literals and ``${}``/``$[]`` parts (the same steps run again and
    again: parsing is cached, only the lookups are done per call)."""
    parts: list[_Part] = []
    i = 0
    n = len(text)
    while i < n:
        start = _next_dollar(text, i)
        if start < 0:
            parts.append(text[i:])
            break
        if start > i:
            parts.append(text[i:start])
        brace = text[start + 1] == "{"
        opener, closer = ("{", "}") if brace else ("[", "]")
        depth = 1
        j = start + 2
        while j < n and depth:
            if text.startswith("$" + opener, j):
                depth += 1
                j += 2
                continue
            ch = text[j]
            if ch == closer:
                depth -= 1
            elif not brace and ch == "[":
                depth += 1  # pbx.c counts every bracket inside $[...]
            j += 1
        inner = _compile(text[start + 2 : j - 1])
        if not inner:
            plain: str | None = ""
        elif len(inner) == 1 and isinstance(inner[0], str):
            plain = inner[0]
        else:
            plain = None
        parts.append((brace, inner, plain))
        i = j
    return tuple(parts)


def _render(template: _Template, lookup: Lookup) -> str:
    out: list[str] = []
    for part in template:
        if isinstance(part, str):
            out.append(part)
        else:
            brace, inner, plain = part
            text = plain if plain is not None else _render(inner, lookup)
            out.append(_expand(text, lookup) if brace else evaluate_expression(text))
    return "".join(out)


def _next_dollar(text: str, i: int) -> int:
    """Index of the next ``${`` or ``$[`` at or after ``i``, else -1."""
    while True:
        k = text.find("$", i)
        if k < 0 or k + 1 >= len(text):
            return -1
        if text[k + 1] in "{[":
            return k
        i = k + 1


_FUNC_RE: Final = re.compile(r"(?P<name>[A-Z_]+)\((?P<args>.*)\)")


def _expand(expr: str, lookup: Lookup) -> str:
    fm = _FUNC_RE.fullmatch(expr) if expr.endswith(")") else None  # most are plain names
    if fm is not None:
        name, args = fm["name"], fm["args"]
        if name == "DEFAULT":
            var, _, default = args.partition(",")
            value = lookup(var.strip())
            return value if value else default
        if name == "LEN":
            return str(len(args))
        if name == "ISNULL":
            return "0" if args else "1"
        if name == "IF":
            # func_logic.c: IF(<expr>?[<true>][:<false>]) -- first '?', then first ':'
            cond, _, branches = args.partition("?")
            if_true, _, if_false = branches.partition(":")
            return if_true if _truthy(cond) else if_false
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


def _truthy(cond: str) -> bool:
    """``pbx_checkcondition``: empty is false, a leading integer is its value, other text true."""
    cond = cond.strip()
    if not cond:
        return False
    m = _LEADING_INT.match(cond)
    return int(m[0]) != 0 if m is not None else True


_LEADING_INT: Final = re.compile(r"[+-]?\d+")


# -- $[...] expressions -------------------------------------------------------------------------

_TOKEN_RE: Final = re.compile(
    r"""\s*(?:(?P<str>"[^"]*")|(?P<op>==|=~|>=|<=|!=|::|[|&=<>+\-*/%!?:()])|(?P<word>[^\s|&=<>+\-*/%!?:()"]+))"""
)


class ExpressionError(ValueError):
    """An ``$[...]`` expression Asterisk would reject (it then substitutes nothing)."""


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"cannot read {expr[pos:]!r}")
        pos = m.end()
        if m["str"] is not None:
            out.append(("s", m["str"][1:-1]))
        elif m["op"] is not None:
            out.append(("o", m["op"]))
        else:
            out.append(("s", m["word"]))
    return out


def _number_of(value: str) -> int | float | None:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        return None
    return f if f == f else None  # NaN is not a number to Asterisk


def _num_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.15g}"


def _is_zero_or_null(value: str) -> bool:
    n = _number_of(value)
    return value == "" or (n is not None and n == 0)


_COMPARE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


class _Parser:
    """Recursive descent over ``ast_expr2.y``'s grammar, lowest precedence first."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        if self.pos < len(self.tokens) and self.tokens[self.pos][0] == "o":
            return self.tokens[self.pos][1]
        return None

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise ExpressionError("unexpected end of expression")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def parse(self) -> str:
        if not self.tokens:
            return ""
        value = self.ternary()
        if self.pos != len(self.tokens):
            raise ExpressionError(f"unexpected {self.tokens[self.pos][1]!r}")
        return value

    def ternary(self) -> str:
        cond = self.logical_or()
        if self.peek() == "?":
            self.take()
            if_true = self.ternary()
            if self.peek() != "::":
                raise ExpressionError("'?' without '::'")
            self.take()
            if_false = self.ternary()
            return if_false if _is_zero_or_null(cond) else if_true
        return cond

    def logical_or(self) -> str:
        left = self.logical_and()
        while self.peek() == "|":
            self.take()
            right = self.logical_and()
            left = right if _is_zero_or_null(left) else left
        return left

    def logical_and(self) -> str:
        left = self.comparison()
        while self.peek() == "&":
            self.take()
            right = self.comparison()
            left = "0" if _is_zero_or_null(left) or _is_zero_or_null(right) else left
        return left

    def comparison(self) -> str:
        left = self.additive()
        while self.peek() in ("=", "==", "!=", "<", ">", "<=", ">="):
            op = self.take()[1]
            right = self.additive()
            a, b = _number_of(left), _number_of(right)
            if a is not None and b is not None:
                result = _COMPARE[op](a, b)
            else:
                result = _COMPARE[op](left, right)
            left = "1" if result else "0"
        return left

    def additive(self) -> str:
        left = self.multiplicative()
        while self.peek() in ("+", "-"):
            op = self.take()[1]
            right = self.multiplicative()
            a, b = self.numbers(left, right, op)
            left = _num_text(a + b if op == "+" else a - b)
        return left

    def multiplicative(self) -> str:
        left = self.unary()
        while self.peek() in ("*", "/", "%"):
            op = self.take()[1]
            right = self.unary()
            a, b = self.numbers(left, right, op)
            if op == "*":
                left = _num_text(a * b)
            elif b == 0:
                raise ExpressionError("division by zero")
            elif op == "/":
                q = a / b
                left = _num_text(int(q) if isinstance(a, int) and isinstance(b, int) else q)
            else:
                left = _num_text(
                    int(math.fmod(a, b)) if isinstance(a, int) and isinstance(b, int) else math.fmod(a, b)
                )
        return left

    @staticmethod
    def numbers(left: str, right: str, op: str) -> tuple[int | float, int | float]:
        a, b = _number_of(left), _number_of(right)
        if a is None or b is None:
            raise ExpressionError(f"non-numeric argument to {op!r}: {left!r}, {right!r}")
        return a, b

    def unary(self) -> str:
        op = self.peek()
        if op == "!":
            self.take()
            return "1" if _is_zero_or_null(self.unary()) else "0"
        if op == "-":
            self.take()
            value = self.unary()
            n = _number_of(value)
            if n is None:
                raise ExpressionError(f"non-numeric argument to unary '-': {value!r}")
            return _num_text(-n)
        return self.primary()

    def primary(self) -> str:
        kind, value = self.take()
        if kind == "o":
            if value != "(":
                raise ExpressionError(f"unexpected {value!r}")
            inner = self.ternary()
            if self.peek() != ")":
                raise ExpressionError("missing ')'")
            self.take()
            return inner
        return value


@lru_cache(maxsize=4096)
def evaluate_expression(expr: str) -> str:
    """The value of ``$[expr]``: ``"1"``/``"0"`` for comparisons, numbers, or a string.

    A malformed expression gives ``""``, as Asterisk substitutes nothing after its
    "syntax error" warning. Cached: the value depends on the text alone (variables are
    substituted before), and the same few expressions come back on every call.
    """
    try:
        return _Parser(_tokens(expr)).parse()
    except ExpressionError:
        return ""


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
        self._matches: dict[tuple[str, str], str | None] = {}

    #: Pattern matches remembered (an agent's extension is looked up at every step).
    MAX_MATCHES: Final = 4096

    def find(self, context: str, exten: str) -> str | None:
        """The extension entry that handles ``exten`` in ``context`` (exact, then pattern)."""
        extens = self.contexts.get(context)
        if extens is None:
            return None
        if exten in extens:
            return exten
        key = (context, exten)
        try:
            return self._matches[key]
        except KeyError:
            pass
        found = None
        for pattern in self._patterns[context]:
            if match_pattern(pattern, exten):
                found = pattern
                break
        if len(self._matches) < self.MAX_MATCHES:
            self._matches[key] = found
        return found

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


#: Dialplan functions on AstDB, read side (funcs/func_db.c): name -> reader.
_DB_READS: Final = frozenset({"DB", "DB_EXISTS", "DB_DELETE"})


class AstDB:
    """The PBX's AstDB (``main/db.c``): values by family and key, kept across calls.

    Read by ``${DB(family/key)}`` (empty when missing), ``${DB_EXISTS(family/key)}`` (1/0)
    and ``${DB_DELETE(family/key)}`` (the value, then gone); written by
    ``Set(DB(family/key)=value)`` and ``Set(DB_DELETE(family/key)=)``; reached over AMI by
    ``DBGet``/``DBPut``/``DBDel`` (:mod:`ivr.sim.actions`). The argument splits at the first
    ``/`` (``AST_NONSTANDARD_APP_ARGS`` with two arguments: the key keeps any further ``/``).
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def get(self, family: str, key: str) -> str | None:
        return self.entries.get((family, key))

    def put(self, family: str, key: str, value: str) -> None:
        self.entries[(family, key)] = value

    def delete(self, family: str, key: str) -> bool:
        return self.entries.pop((family, key), None) is not None

    @staticmethod
    def _split(arg: str) -> tuple[str, str] | None:
        family, sep, key = arg.partition("/")
        return (family, key) if sep and family else None

    def read_function(self, expr: str) -> tuple[str, str | None] | None:
        """``${expr}`` if it is an AstDB function: (value, ``DB_RESULT`` to set or None).

        None when ``expr`` is no AstDB function. As func_db.c: ``DB`` sets ``DB_RESULT`` only
        when the key exists, ``DB_EXISTS`` too (to the value), ``DB_DELETE`` always (empty
        for a missing key). A malformed argument (no ``/``) reads as empty.
        """
        name, paren, rest = expr.partition("(")
        if not paren or name not in _DB_READS or not rest.endswith(")"):
            return None
        where = self._split(rest[:-1])
        if where is None:
            return ("", None)
        value = self.get(*where)
        if name == "DB":
            return (value, value) if value is not None else ("", None)
        if name == "DB_EXISTS":
            return ("1", value) if value is not None else ("0", None)
        if value is not None:
            self.delete(*where)
        return (value or "", value or "")

    def write_function(self, name: str, value: str) -> tuple[bool, str | None]:
        """``Set(name=value)`` if ``name`` is ``DB(...)`` or ``DB_DELETE(...)``.

        Returns (handled, ``DB_RESULT`` to set or None). ``DB_DELETE`` written deletes as its
        read does (``function_db_delete_write``).
        """
        func, paren, rest = name.partition("(")
        if not paren or func not in ("DB", "DB_DELETE") or not rest.endswith(")"):
            return (False, None)
        where = self._split(rest[:-1])
        if where is None:
            return (True, None)
        if func == "DB":
            self.put(*where, value)
            return (True, None)
        old = self.get(*where)
        if old is not None:
            self.delete(*where)
        return (True, old or "")
