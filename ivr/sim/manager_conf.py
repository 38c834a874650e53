"""Manager users from ``manager.conf`` and their event filters, as Asterisk 22 applies them.

A real Asterisk formats every event once, then checks it against each session's user:
``read`` (``(readperm & category) == category``) and the user's ``eventfilter`` lines
(``should_send_event`` in ``main/manager.c``). The simulator's AMI server does the same,
so that the controller sees the stream the shipped ``asterisk-conf/manager.conf`` gives it
(the ``ivr`` user drops about half of a loaded stream: Newexten, DeviceStateChange, most
VarSet...) and the simulator does not spend its time encoding events nobody receives.

Filters (``manager_add_filter``, Asterisk >= 22.1)::

    eventfilter = [!]<regex>                                 ; legacy: regex on the whole event
    eventfilter(action(include|exclude),name(<Event>),header(<Header>),method(<m>)) = [!]<pattern>

``method`` is ``regex`` (POSIX extended, searched anywhere), ``exact``, ``starts_with``,
``ends_with``, ``contains`` or ``none`` (no pattern: matches whatever ``name``/``header``
select). Without ``header`` the pattern runs on the whole event text (``Event: ...`` down
to the closing blank line, CRLF line ends); with ``header(H)`` on the value of each line
starting ``H:`` (leading blanks skipped, empty values ignored) until one matches.
``should_send_event``: no filters, everything; include filters only, what one of them
matches; exclude filters only, what none of them matches; both, what an include matches
and no exclude does.

Regexes are POSIX EREs as ``regcomp(REG_EXTENDED | REG_NOSUB)`` takes them; they are
translated to Python's ``re`` (:func:`compile_posix_ere`) for the constructs where the two
agree once rewritten (``$`` only at the very end, ``.`` matching line ends too, bracket
expressions with ``[:class:]``, GNU ``\\<``/``\\>``/``\\w``); constructs whose meaning
would differ (Python's ``(?...)``, stacked repetitions, collating elements) are refused
with an error rather than matched differently. One glibc quirk is not reproduced: there a
mid-pattern anchor also matches next to a line feed the pattern itself consumes
(``a$\\n`` finds ``a\\n``); in an event every line feed follows a carriage return, so only
a pattern spelling out ``\\r$\\n`` or ``\\n^`` could tell the difference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ivr.sim.conf_loader import ConfError, _read_lines

__all__ = [
    "EventFilter",
    "EventFilters",
    "FilterError",
    "ManagerUser",
    "compile_posix_ere",
    "get_perm",
    "load_manager_user",
    "parse_eventfilter",
    "parse_manager_conf",
]

#: ``perms[]`` of ``main/manager.c``, in its order (``all`` is INT_MAX, ``none`` 0).
PERMS: Final[tuple[tuple[str, int], ...]] = (
    ("system", 1 << 0),
    ("call", 1 << 1),
    ("log", 1 << 2),
    ("verbose", 1 << 3),
    ("command", 1 << 4),
    ("agent", 1 << 5),
    ("user", 1 << 6),
    ("config", 1 << 7),
    ("dtmf", 1 << 8),
    ("reporting", 1 << 9),
    ("cdr", 1 << 10),
    ("dialplan", 1 << 11),
    ("originate", 1 << 12),
    ("agi", 1 << 13),
    ("cc", 1 << 15),
    ("aoc", 1 << 16),
    ("test", 1 << 17),
    ("security", 1 << 18),
    ("message", 1 << 30),
    ("all", 0x7FFFFFFF),
    ("none", 0),
)

#: What ``ast_skip_blanks`` skips: every byte below 33.
_BLANKS: Final = "".join(map(chr, range(1, 33)))


class FilterError(ValueError):
    """An ``eventfilter`` Asterisk would refuse (FILTER_FORMAT_ERROR / FILTER_COMPILE_FAIL)."""


def get_perm(value: str) -> int:
    """``get_perm`` of ``main/manager.c``: the mask of a ``read``/``write`` value.

    ``ast_instring`` compares each comma-separated word but the last with ``strncmp`` over
    the word's length (so a word that begins a label counts for that label) and the last
    one exactly; words are not trimmed (``call, agent`` does not grant ``agent``).
    """
    words = value.split(",")
    mask = 0
    for label, num in PERMS:
        if any(label.startswith(w) for w in words[:-1]) or words[-1] == label:
            mask |= num
    return mask


# -- POSIX extended regular expressions ------------------------------------------------------------

_CLASSES: Final[dict[str, str]] = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v",
    "blank": " \\t",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "print": "\\x20-\\x7e",
    "graph": "\\x21-\\x7e",
    "cntrl": "\\x00-\\x1f\\x7f",
    "xdigit": "0-9A-Fa-f",
}
#: GNU escapes of glibc's regcomp (outside brackets) and their Python spelling.
_GNU_ESCAPES: Final[dict[str, str]] = {
    "w": "\\w",
    "W": "\\W",
    "s": "\\s",
    "S": "\\S",
    "b": "\\b",
    "B": "\\B",
    "<": "\\b(?=\\w)",
    ">": "\\b(?<=\\w)",
    "`": "\\A",
    "'": "\\Z",
}
_INTERVAL: Final = re.compile(r"\{(\d*)(,?)(\d*)\}")
_QUANTIFIERS: Final = frozenset("*+?{")


def _bracket(pattern: str, i: int) -> tuple[str, int]:
    """Translate the bracket expression starting at ``pattern[i] == "["``; return it and its end."""
    n = len(pattern)
    j = i + 1
    out = ["["]
    if j < n and pattern[j] == "^":
        out.append("^")
        j += 1
    first = True
    while True:
        if j >= n:
            raise FilterError(f"unmatched [ in regex {pattern!r}")
        c = pattern[j]
        if c == "]" and not first:
            out.append("]")
            return "".join(out), j + 1
        first = False
        if c == "[" and j + 1 < n and pattern[j + 1] in ":.=":
            kind = pattern[j + 1]
            end = pattern.find(kind + "]", j + 2)
            if end < 0:
                raise FilterError(f"unterminated [{kind} in regex {pattern!r}")
            name = pattern[j + 2 : end]
            if kind != ":":
                raise FilterError(f"collating element [{kind}{name}{kind}] not supported in {pattern!r}")
            if name not in _CLASSES:
                raise FilterError(f"unknown character class [:{name}:] in regex {pattern!r}")
            out.append(_CLASSES[name])
            j = end + 2
            continue
        # Inside brackets everything is literal in POSIX, backslash included; '-' keeps its
        # range meaning, which Python shares.
        out.append(c if c == "-" else re.escape(c))
        j += 1


def _translate(pattern: str) -> str:
    out: list[str] = []
    depth = 0
    i = 0
    n = len(pattern)
    last_was_quantifier = False
    while i < n:
        c = pattern[i]
        quantifier = False
        if c == "\\":
            if i + 1 >= n:
                raise FilterError(f"trailing backslash in regex {pattern!r}")
            nxt = pattern[i + 1]
            if nxt in _GNU_ESCAPES:
                out.append(_GNU_ESCAPES[nxt])
            elif nxt.isdigit() and nxt != "0":
                out.append("\\" + nxt)  # back-reference (a glibc extension in EREs)
            else:
                out.append(re.escape(nxt))
            i += 2
        elif c == "[":
            text, i = _bracket(pattern, i)
            out.append(text)
        elif c == "(":
            if pattern.startswith("(?", i):
                raise FilterError(f"'(?' is not POSIX in regex {pattern!r}")
            depth += 1
            out.append("(")
            i += 1
        elif c == ")":
            if depth:
                depth -= 1
                out.append(")")
            else:
                out.append("\\)")  # glibc: an unmatched ) is an ordinary character
            i += 1
        elif c == "$":
            out.append("\\Z")  # no REG_NEWLINE: the end of the text only
            i += 1
        elif c == "{":
            m = _INTERVAL.match(pattern, i)
            if m is None or (not m.group(1) and not m.group(3)):
                raise FilterError(f"invalid interval at {i} in regex {pattern!r}")
            low, comma, high = m.groups()
            if low and high and int(low) > int(high):
                raise FilterError(f"invalid interval {m.group(0)} in regex {pattern!r}")
            out.append("{" + (low or "0") + comma + high + "}")
            quantifier = True
            i = m.end()
        elif c in "*+?":
            out.append(c)
            quantifier = True
            i += 1
        else:
            out.append(re.escape(c) if c in "#&~ \t\n\r\f\v" else c)
            i += 1
        if quantifier and last_was_quantifier:
            raise FilterError(f"stacked repetition operators at {i} in regex {pattern!r}")
        last_was_quantifier = quantifier
    if depth:
        raise FilterError(f"unmatched ( in regex {pattern!r}")
    return "".join(out)


def compile_posix_ere(pattern: str) -> re.Pattern[str]:
    """A Python regex that ``search``-es like ``regexec`` with ``regcomp(REG_EXTENDED)``.

    ASCII classes (``\\w``, ``[:alpha:]``) as in the C locale Asterisk's regexes run in.

    Raises :class:`FilterError` for a pattern glibc would refuse or that cannot be
    translated faithfully.
    """
    try:
        return re.compile(_translate(pattern), re.DOTALL | re.ASCII)
    except re.error as exc:
        raise FilterError(f"regex {pattern!r} does not compile: {exc}") from None


# -- event filters -----------------------------------------------------------------------------------


def _tester(method: str, pattern: str, regex: re.Pattern[str] | None) -> Callable[[str], object]:
    """``match_eventdata`` for one filter, as a function of the data (truthy: a match)."""
    if method == "regex":
        assert regex is not None
        return regex.search
    if method == "exact":
        return pattern.__eq__
    if method == "starts_with":
        return lambda data: data.startswith(pattern)
    if method == "ends_with":
        return lambda data: data.endswith(pattern)
    if method == "contains":
        return lambda data: pattern in data
    return lambda data: True  # none


@dataclass(frozen=True, slots=True)
class EventFilter:
    """One ``eventfilter`` line, parsed as ``manager_add_filter`` does."""

    exclude: bool
    name: str | None = None
    header: str | None = None  # with its trailing ':'
    method: str = "regex"
    pattern: str = ""
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    #: ``match_eventdata`` bound to this filter's method and pattern.
    test: Callable[[str], object] = field(init=False, compare=False, repr=False)
    #: The header key whose lines ``header`` selects ("" for none: no line can start with
    #: a prefix holding a ':' before its end, every line being 'Key: value').
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise FilterError(f"unknown filter method {self.method!r}")
        if self.method == "regex" and self.regex is None:
            object.__setattr__(self, "regex", compile_posix_ere(self.pattern))
        object.__setattr__(self, "test", _tester(self.method, self.pattern, self.regex))
        key = "" if self.header is None else self.header[:-1] if self.header.endswith(":") else self.header
        object.__setattr__(self, "key", "" if ":" in key else key)

    @property
    def needs_text(self) -> bool:
        """Whether matching needs the whole event text (no ``header``, a pattern to test)."""
        return self.header is None and self.method != "none"

    @property
    def unconditional(self) -> bool:
        """Matches every event its ``name`` selects (``method(none)`` without ``header``)."""
        return self.header is None and self.method == "none"

    def match_data(self, data: str) -> bool:
        """``match_eventdata``."""
        return bool(self.test(data))

    def matches(self, name: str, headers: Sequence[tuple[str, str]], text: str | None) -> bool:
        """``filter_cmp_fn`` for an event whose name this filter accepts.

        ``text`` is the whole event text, needed only when :attr:`needs_text`.
        """
        if self.header is None:
            if self.method == "none":
                return True
            assert text is not None, "this filter needs the event text"
            return bool(self.test(text))
        key = self.key
        if not key:
            return False
        # Asterisk stops at the first line that matches; which one does not change the answer.
        values = [v for k, v in headers if k == key]
        if key == "Event":
            values.append(name)
        test = self.test
        for v in values:
            value = v.lstrip(_BLANKS)
            if value and test(value):
                return True
        return False


_METHODS: Final = ("regex", "exact", "starts_with", "ends_with", "contains", "none")


def _option_arg(option: str, what: str, where: str) -> str:
    paren = option.find("(")
    arg = option[paren + 1 :].strip(_BLANKS) if paren >= 0 else ""
    if not arg:
        raise FilterError(f"{where}: '{what}' parameter not formatted correctly")
    return arg


def parse_eventfilter(criteria: str, pattern: str) -> EventFilter:
    """``manager_add_filter(criteria, pattern)``: ``criteria`` is the key (``eventfilter...``).

    Raises :class:`FilterError` with Asterisk's reason where it would refuse the filter.
    """
    where = f"'{criteria} = {pattern}'"
    if not criteria:
        raise FilterError("missing criteria")
    exclude = pattern.startswith("!")
    if exclude:
        pattern = pattern[1:]
    method = "regex"
    name: str | None = None
    header: str | None = None
    start = criteria.find("(")
    if start < 0 and not pattern:
        raise FilterError(f"{where}: legacy filter with no filter pattern specified")
    if start >= 0:
        options = criteria[start + 1 :].strip(_BLANKS)
        method = "none"
        if not options or not options.endswith(")"):
            raise FilterError(f"{where}: filter options not formatted correctly")
        found: set[str] = set()
        # strtok_r(temp, " ,)"): any run of those characters separates two options.
        for option in filter(None, re.split(r"[ ,)]+", options)):
            if option.startswith("action"):
                arg = _option_arg(option, "action", where)
                if arg not in ("include", "exclude"):
                    raise FilterError(f"{where}: 'action' option '{arg}' is unknown")
                exclude = arg == "exclude"
                found.add("action")
            elif option.startswith("name"):
                name = _option_arg(option, "name", where)
                found.add("name")
            elif option.startswith("header"):
                arg = _option_arg(option, "header", where)
                header = arg if arg.endswith(":") else arg + ":"
                found.add("header")
            elif option.startswith("method"):
                arg = _option_arg(option, "method", where)
                if arg not in _METHODS:
                    raise FilterError(f"{where}: 'method' option '{arg}' is unknown")
                method = arg
                found.add("method")
            else:
                raise FilterError(f"{where}: filter option '{option}' is unknown")
        if not found:
            raise FilterError(f"{where}: no action, name, header, or method option found")
        if not pattern and method != "none":
            raise FilterError(f"{where}: method can't be '{method}' with no filter pattern")
        if pattern and method == "none":
            raise FilterError(f"{where}: method can't be 'none' with a filter pattern")
        if name is None and header is None and method == "none":
            raise FilterError(f"{where}: no name or header option found and no filter pattern")
    return EventFilter(exclude, name, header, method, pattern)


@dataclass(frozen=True, slots=True)
class FilterPlan:
    """What a filter set does with events of one name.

    ``verdict`` is True/False when the name alone decides (the event need not even be
    formatted), None when the filters in ``includes``/``excludes`` must look at it.
    """

    verdict: bool | None
    includes: tuple[EventFilter, ...]
    excludes: tuple[EventFilter, ...]
    any_include: bool
    needs_text: bool
    #: The header keys :meth:`evaluate` reads (when it needs no text): the verdict on an
    #: event depends on its name and these headers only.
    header_keys: frozenset[str] = frozenset()

    def evaluate(self, name: str, headers: Sequence[tuple[str, str]], text: str | None) -> bool:
        """``should_send_event`` (when :attr:`verdict` is None)."""
        if self.verdict is not None:
            return self.verdict
        if self.any_include:
            for f in self.includes:
                if f.matches(name, headers, text):
                    break
            else:
                return False
        for f in self.excludes:
            if f.matches(name, headers, text):
                return False
        return True


class EventFilters:
    """A user's filters, with what they decide per event name worked out once.

    Asterisk compares a hash of the name (``ast_str_hash``) that stands for the name; this
    compares the names themselves.
    """

    #: Plans kept per name; beyond this, plans are made on every call (still correct).
    MAX_PLANS: Final = 4096

    def __init__(self, filters: Iterable[EventFilter]) -> None:
        self.filters = tuple(filters)
        self.includes = tuple(f for f in self.filters if not f.exclude)
        self.excludes = tuple(f for f in self.filters if f.exclude)
        self._plans: dict[str, FilterPlan] = {}

    def __bool__(self) -> bool:
        return bool(self.filters)

    def __repr__(self) -> str:
        return f"EventFilters({len(self.includes)} include, {len(self.excludes)} exclude)"

    def plan(self, name: str) -> FilterPlan:
        plan = self._plans.get(name)
        if plan is None:
            plan = self._make_plan(name)
            if len(self._plans) < self.MAX_PLANS:
                self._plans[name] = plan
        return plan

    def _make_plan(self, name: str) -> FilterPlan:
        inc = tuple(f for f in self.includes if f.name is None or f.name == name)
        exc = tuple(f for f in self.excludes if f.name is None or f.name == name)
        # Include side: True (passes), False (fails) or None (depends on the event).
        included: bool | None
        if not self.includes:
            included = True  # exclude filters only: an implied "include all"
        elif any(f.unconditional for f in inc):
            included = True
        else:
            included = None if inc else False
        excluded: bool | None
        if any(f.unconditional for f in exc):
            excluded = True
        else:
            excluded = None if exc else False
        verdict: bool | None
        if included is False or excluded is True:
            verdict = False
        elif included is True and excluded is False:
            verdict = True
        else:
            verdict = None
        needs_text = verdict is None and any(f.needs_text for f in (*inc, *exc))
        keys = frozenset(f.key for f in (*inc, *exc) if f.key)
        return FilterPlan(verdict, inc, exc, bool(self.includes), needs_text, keys)

    def should_send(self, name: str, headers: Sequence[tuple[str, str]], text: str | None = None) -> bool:
        """``should_send_event``; ``text`` (the formatted event) is made here if needed and absent."""
        plan = self.plan(name)
        if plan.verdict is not None:
            return plan.verdict
        if plan.needs_text and text is None:
            from ivr.protocol.ami import event_text

            text = event_text(name, list(headers))
        return plan.evaluate(name, headers, text)


# -- manager.conf ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManagerUser:
    """A ``[user]`` section of manager.conf: what the simulator's AMI server applies."""

    username: str
    secret: str = ""
    read: int = 0
    write: int = 0
    filters: tuple[EventFilter, ...] = ()

    @property
    def event_filters(self) -> EventFilters:
        return EventFilters(self.filters)


def parse_manager_conf(path: str | Path) -> dict[str, ManagerUser]:
    """Every user of a manager.conf (``[general]`` aside), by section name.

    Reads the Asterisk config format (comments, ``#include``, templates ``[u](tmpl)``;
    :mod:`ivr.sim.conf_loader`), and of each user the lines the simulator uses:
    ``secret``, ``read``, ``write`` and ``eventfilter...``; the others (ACLs,
    ``writetimeout``, ``setvar``...) are accepted and ignored. A filter Asterisk would
    refuse raises :class:`ConfError` naming the file and line (Asterisk only logs a
    warning and runs without that filter, which is easy to miss).
    """
    sections: dict[str, list[tuple[str, str, str]]] = {}
    templates: dict[str, list[tuple[str, str, str]]] = {}
    current: list[tuple[str, str, str]] | None = None
    for line in _read_lines(Path(path)):
        if line.category is not None:
            entries: list[tuple[str, str, str]] = []
            for option in line.options:
                if option in ("!", "+"):
                    continue
                if option not in templates:
                    raise ConfError(f"{line.where}: [{line.category}] uses unknown template {option}")
                entries += templates[option]
            if "!" in line.options:
                templates[line.category] = entries
            elif "+" in line.options and line.category in sections:
                entries = sections[line.category]
            else:
                sections[line.category] = entries
            current = entries
            continue
        if current is None:
            raise ConfError(f"{line.where}: '{line.key}' before any [section]")
        current.append((line.where, line.key, line.value))
    users: dict[str, ManagerUser] = {}
    for name, items in sections.items():
        if name.lower() == "general":
            continue
        secret, read, write = "", 0, 0
        filters: list[EventFilter] = []
        for where, key, value in items:
            folded = key.lower()
            if folded == "secret":
                secret = value
            elif folded == "read":
                read = get_perm(value)
            elif folded == "write":
                write = get_perm(value)
            elif key.startswith("eventfilter"):
                try:
                    filters.append(parse_eventfilter(key, value))
                except FilterError as exc:
                    raise ConfError(f"{where}: {exc}") from None
        users[name] = ManagerUser(name, secret, read, write, tuple(filters))
    return users


def load_manager_user(path: str | Path, username: str) -> ManagerUser:
    """The ``[username]`` user of a manager.conf (name matched case-insensitively, as at login)."""
    users = parse_manager_conf(path)
    for name, user in users.items():
        if name.lower() == username.lower():
            return user
    known = ", ".join(sorted(users)) or "none"
    raise ConfError(f"{path}: no manager user [{username}] (users: {known})")
