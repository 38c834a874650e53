"""Manager users and event filters (``ivr.sim.manager_conf``) against Asterisk 22's own tables.

The parsing and matching cases are those of ``eventfilter_test_creation`` and
``eventfilter_test_matching`` in ``main/manager.c``; the regex translation is checked
against the C library's ``regcomp``/``regexec`` where there is one (Linux).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.protocol.ami import event_text
from ivr.sim.conf_loader import ConfError
from ivr.sim.manager_conf import (
    EventFilter,
    EventFilters,
    FilterError,
    compile_posix_ere,
    get_perm,
    load_manager_user,
    parse_eventfilter,
    parse_manager_conf,
)

MANAGER_CONF = Path(__file__).resolve().parent.parent / "asterisk-conf" / "manager.conf"

NEWCHANNEL = ("Newchannel", [("Channel", "XXX"), ("Someheader", "YYY")])
VARSET = ("VarSet", [("Channel", "ABC"), ("Someheader", "XXX")])


def _text(name: str, headers: list[tuple[str, str]]) -> str:
    """The payload as Asterisk's test builds it: no closing blank line."""
    return "".join(f"{k}: {v}\r\n" for k, v in [("Event", name), *headers])


# -- manager_add_filter: parsing_filter_tests[] -------------------------------------------------

# criteria, pattern, (exclude, name, header, method), event, expected should_send_event
VALID = [
    ("eventfilter", "XXX", (False, None, None, "regex"), NEWCHANNEL, True),
    ("eventfilter", "!XXX", (True, None, None, "regex"), VARSET, False),
    ("eventfilter(name(VarSet),method(none))", "", (False, "VarSet", None, "none"), VARSET, True),
    (
        "eventfilter(name(Newchannel),method(regex))",
        "X[XYZ]X",
        (False, "Newchannel", None, "regex"),
        NEWCHANNEL,
        True,
    ),
    (
        "eventfilter(name(Newchannel),method(regex))",
        "X[abc]X",
        (False, "Newchannel", None, "regex"),
        NEWCHANNEL,
        False,
    ),
    (
        "eventfilter(action(exclude),name(Newchannel),method(regex))",
        "X[XYZ]X",
        (True, "Newchannel", None, "regex"),
        NEWCHANNEL,
        False,
    ),
    (
        "eventfilter(action(exclude),name(Newchannel),method(regex))",
        "X[abc]X",
        (True, "Newchannel", None, "regex"),
        NEWCHANNEL,
        True,
    ),
    (
        "eventfilter(action(include),name(VarSet),header(Channel),method(starts_with))",
        "AB",
        (False, "VarSet", "Channel:", "starts_with"),
        VARSET,
        True,
    ),
    (
        "eventfilter(action(include),name(VarSet),header(Channel),method(ends_with))",
        "BC",
        (False, "VarSet", "Channel:", "ends_with"),
        VARSET,
        True,
    ),
    (
        "eventfilter(action(include),name(VarSet),header(Channel),method(exact))",
        "ABC",
        (False, "VarSet", "Channel:", "exact"),
        VARSET,
        True,
    ),
    (
        "eventfilter(action(include),name(VarSet),header(Channel),method(exact))",
        "XXX",
        (False, "VarSet", "Channel:", "exact"),
        VARSET,
        False,
    ),
    (
        "eventfilter(name(VarSet),header(Channel),method(exact))",
        "!ZZZ",
        (True, "VarSet", "Channel:", "exact"),
        VARSET,
        True,
    ),
    (
        "eventfilter(action(exclude),name(VarSet),header(Channel),method(exact))",
        "ZZZ",
        (True, "VarSet", "Channel:", "exact"),
        VARSET,
        True,
    ),
    (
        "eventfilter(action(include),name(VarSet),header(Someheader),method(exact))",
        "!XXX",
        (False, "VarSet", "Someheader:", "exact"),
        VARSET,
        True,
    ),
]


@pytest.mark.parametrize(("criteria", "pattern", "parsed", "event", "expected"), VALID)
def test_valid_filters_parse_and_decide_as_asterisk_does(
    criteria: str,
    pattern: str,
    parsed: tuple[bool, str | None, str | None, str],
    event: tuple[str, list[tuple[str, str]]],
    expected: bool,
) -> None:
    f = parse_eventfilter(criteria, pattern)
    assert (f.exclude, f.name, f.header, f.method) == parsed
    name, headers = event
    assert EventFilters([f]).should_send(name, headers, _text(name, headers)) is expected


# criteria, pattern, words the error must contain
INVALID = [
    ("eventfilter(action(include)", "", "no name or header option"),
    ("eventfilter(action(inlude)", "", "'action' option 'inlude' is unknown"),
    ("eventfilter(nnnn(yyy)", "XXX", "'nnnn(yyy' is unknown"),
    ("eventfilter(eader(VarSet)", "XXX", "'eader(VarSet' is unknown"),
    ("eventfilter(ethod(contains)", "XXX", "'ethod(contains' is unknown"),
    ("eventfilter(nnnn(yyy),header(VarSet),method(contains)", "XXX", "'nnnn(yyy' is unknown"),
    ("eventfilter(name(yyy),heder(VarSet),method(contains)", "XXX", "'heder(VarSet' is unknown"),
    ("eventfilter(name(yyy),header(VarSet),mehod(contains)", "XXX", "'mehod(contains' is unknown"),
    ("eventfilter(name(yyy),header(VarSet),method(coains)", "XXX", "'method' option 'coains' is unknown"),
    ("eventfilter(method(yyy))", "XXX", "'method' option 'yyy' is unknown"),
    ("eventfilter", "", "legacy filter with no filter pattern"),
    ("eventfilter", "!", "legacy filter with no filter pattern"),
    ("eventfilter()", "XXX", "no action, name, header, or method option"),
    ("eventfilter", "XX[X", "unmatched ["),
    ("eventfilter(method(regex))", "XX[X", "unmatched ["),
    ("eventfilter(name(X),method(exact))", "", "method can't be 'exact' with no filter pattern"),
    ("eventfilter(name(X),method(none))", "abc", "method can't be 'none' with a filter pattern"),
    ("eventfilter(name)", "abc", "'name' parameter not formatted correctly"),
    ("eventfilter(name(X", "abc", "filter options not formatted correctly"),
    ("eventfilter(name(X)", "abc", "method can't be 'none' with a filter pattern"),
    ("", "abc", "missing criteria"),
]


@pytest.mark.parametrize(("criteria", "pattern", "reason"), INVALID)
def test_filters_asterisk_refuses_raise_a_clear_error(criteria: str, pattern: str, reason: str) -> None:
    with pytest.raises(FilterError, match=None) as info:
        parse_eventfilter(criteria, pattern)
    assert reason in str(info.value)


# -- should_send_event: filters_for_matching[] x events_for_matching[] -----------------------------

MATCHING_FILTERS = [
    ("eventfilter(name(VarSet),method(none))", ""),
    ("eventfilter(name(Newchannel),method(regex))", "X[XYZ]X"),
    ("eventfilter(name(Newchannel),method(regex))", "X[abc]X"),
    ("eventfilter(name(Newchannel),header(Someheader),method(regex))", "ZZZ"),
    ("eventfilter(action(exclude),name(Newchannel),method(regex))", "X[a]X"),
    ("eventfilter(action(exclude),name(Newchannel),method(regex))", "X[Z]X"),
    ("eventfilter(action(exclude),name(VarSet),header(Channel),method(regex))", "YYY"),
]
MATCHING_EVENTS = [
    ("Newchannel", "XXX", "YYY", True),
    ("Newchannel", "XZX", "YYY", False),
    ("Newchannel", "XaX", "YYY", False),
    ("Newchannel", "XbX", "YYY", True),
    ("Newchannel", "XcX", "YYY", True),
    ("Newchannel", "YYY", "YYY", False),
    ("Newchannel", "YYY", "ZZZ", True),
    ("VarSet", "XXX", "YYY", True),
    ("VarSet", "YYY", "YYY", False),
]


@pytest.mark.parametrize(("name", "channel", "some", "expected"), MATCHING_EVENTS)
def test_include_then_exclude_precedence(name: str, channel: str, some: str, expected: bool) -> None:
    filters = EventFilters(parse_eventfilter(c, p) for c, p in MATCHING_FILTERS)
    headers = [("Channel", channel), ("Someheader", some)]
    assert filters.should_send(name, headers, _text(name, headers)) is expected
    # the text is made from the headers when not given
    assert filters.should_send(name, headers) is expected


def test_name_alone_decides_when_it_can() -> None:
    filters = EventFilters(
        [
            parse_eventfilter("eventfilter(action(exclude),name(Newexten))", ""),
            parse_eventfilter(
                "eventfilter(action(exclude),name(VarSet),header(Variable),method(exact))", "X"
            ),
        ]
    )
    assert filters.plan("Newexten").verdict is False
    assert filters.plan("Hangup").verdict is True
    varset = filters.plan("VarSet")
    assert varset.verdict is None and not varset.needs_text
    assert not filters.should_send("VarSet", [("Variable", "X"), ("Value", "1")])
    assert filters.should_send("VarSet", [("Variable", "Y"), ("Value", "1")])
    # include filters only: what none includes is dropped without looking at it
    only = EventFilters([parse_eventfilter("eventfilter(name(Hangup),method(none))", "")])
    assert only.plan("Newchannel").verdict is False and only.plan("Hangup").verdict is True
    assert not EventFilters([])  # no filter: falsy, nothing to apply


def test_header_filter_skips_blanks_and_empty_values_and_sees_the_event_line() -> None:
    f = parse_eventfilter("eventfilter(header(Value),method(exact))", "x")
    assert f.matches("VarSet", [("Value", ""), ("Value", "  \tx")], None)
    assert not f.matches("VarSet", [("Value", "")], None)
    event = parse_eventfilter("eventfilter(header(Event),method(starts_with))", "Var")
    assert event.matches("VarSet", [], None) and not event.matches("Hangup", [], None)
    # 'header(a:b)' can begin no 'Key: value' line
    assert not parse_eventfilter("eventfilter(header(a:b),method(none))", "").matches(
        "a", [("a", "b:c")], None
    )


def test_whole_text_regex_sees_the_formatted_event() -> None:
    f = parse_eventfilter("eventfilter", "!Privilege: dialplan,all\r\nTimestamp")
    headers = [("Privilege", "dialplan,all"), ("Timestamp", "1.000000"), ("Channel", "c")]
    assert not EventFilters([f]).should_send("VarSet", headers)
    assert EventFilters([f]).should_send("Hangup", [("Privilege", "call,all"), ("Channel", "c")])
    # '$' is the end of the text only: the formatted event ends with its blank line
    end = parse_eventfilter("eventfilter", "\r\n\r\n$")
    assert end.matches("X", [], event_text("X", [("A", "1")]))
    assert not parse_eventfilter("eventfilter", "1$").matches("X", [], event_text("X", [("A", "1")]))


# -- the shipped manager.conf -----------------------------------------------------------------------


def test_shipped_ivr_user_loads_with_its_classes_and_filters() -> None:
    user = load_manager_user(MANAGER_CONF, "IVR")  # matched case-insensitively
    assert user.username == "ivr" and user.secret.startswith("CHANGE_ME")
    assert user.read == get_perm("call,agent,user,dialplan,agi")
    assert user.write == get_perm("call,agent,user,originate,reporting")
    filters = user.event_filters
    for noise in ("Newexten", "DeviceStateChange", "NewCallerid", "NewConnectedLine", "LocalBridge"):
        assert filters.plan(noise).verdict is False, noise
    for name in ("Newchannel", "Hangup", "QueueCallerJoin", "AgentConnect", "UserEvent", "AGIExecStart"):
        assert filters.plan(name).verdict is True, name
    for variable, kept in [
        ("QUEUESTATUS", True),
        ("__IVR_QUEUE", True),
        ("CALLBACK_ID", True),
        ("QUEUESTATUSX", False),
        ("DIALSTATUS", False),
        ("AGISTATUS", False),
        ("IVR", False),
    ]:
        headers = [("Privilege", "dialplan,all"), ("Channel", "c"), ("Variable", variable), ("Value", "1")]
        assert filters.should_send("VarSet", headers) is kept, variable


def test_get_perm_follows_ast_instring() -> None:
    assert get_perm("call,agent") == (1 << 1) | (1 << 5)
    assert get_perm("all") == 0x7FFFFFFF
    assert get_perm("call, agent") == 1 << 1  # words are not trimmed
    assert get_perm("ca,agent") == (1 << 1) | (1 << 5)  # strncmp over the word's length
    assert get_perm("agent,ca") == 1 << 5  # ... but the last word must be exact
    assert get_perm("") == 0


def test_manager_conf_templates_and_errors(tmp_path: Path) -> None:
    conf = tmp_path / "manager.conf"
    conf.write_text(
        "[general]\nenabled = yes\n"
        "[base](!)\nread = call\neventfilter(action(exclude),name(Newexten)) =\n"
        "[ops](base)\nsecret = s3cret ; a comment\nwrite = agent\n"
        "[other]\nsecret = x\neventfilter = !^Event: Newexten\n",
        encoding="utf-8",
    )
    users = parse_manager_conf(conf)
    assert sorted(users) == ["ops", "other"]
    ops = users["ops"]
    assert (ops.secret, ops.read, ops.write) == ("s3cret", 1 << 1, 1 << 5)
    assert ops.event_filters.plan("Newexten").verdict is False
    assert not users["other"].event_filters.should_send("Newexten", [("Channel", "c")])
    with pytest.raises(ConfError, match=r"no manager user \[nobody\] \(users: ops, other\)"):
        load_manager_user(conf, "nobody")
    bad = tmp_path / "bad.conf"
    bad.write_text("[u]\nsecret = x\neventfilter(action(sometimes)) = X\n", encoding="utf-8")
    with pytest.raises(ConfError, match=r"bad\.conf:3: .*'action' option 'sometimes' is unknown"):
        parse_manager_conf(bad)
    with pytest.raises(ConfError, match="cannot read"):
        parse_manager_conf(tmp_path / "missing.conf")


# -- POSIX ERE -> Python ---------------------------------------------------------------------------


class _LibcRegex:
    """regcomp(REG_EXTENDED) / regexec from the C library (glibc or musl)."""

    def __init__(self, libc: ctypes.CDLL, pattern: str) -> None:
        self.libc = libc
        self.buf = ctypes.create_string_buffer(1024)  # >= sizeof(regex_t)
        self.ok = libc.regcomp(self.buf, pattern.encode(), 1) == 0

    def search(self, text: str) -> bool:
        return bool(self.libc.regexec(self.buf, text.encode(), 0, None, 0) == 0)

    def free(self) -> None:
        if self.ok:
            self.libc.regfree(self.buf)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    return ctypes.CDLL(name) if name else None


LIBC = _libc()
needs_libc = pytest.mark.skipif(LIBC is None, reason="needs the C library's POSIX regex (Linux)")

PATTERNS = [
    "^_*($|[^_CIQ]|C([^A]|$)|QUEUESTATUS.)",
    "X[XYZ]X",
    "[[:alpha:]]+[[:digit:]]{2,3}$",
    "a|b|^c",
    "\\.",
    "[]a]",
    "[^]a-c]",
    "a\\]b",
    "(ab)+c?",
    "x{2}",
    "x{,2}y",
    "[\\]",
    "\\<word\\>",
    "a.b",
    "^$",
    "a)",
    "[[:space:][:punct:]]",
]
TEXTS = ["", "a", "ab", "abc", "ababc", "X", "XYX", "XaX", "xx", "xxy", "y", "a.b", "a\nb", "a]b", "]", "\\",
         "-", "word", "a word!", "QUEUESTATUS", "QUEUESTATUSX", "_", "__IVR_X", "CALL", "abc12", "abc1234",
         "c", " ", "a)", "Event: X\r\n\r\n"]  # fmt: skip


@needs_libc
@pytest.mark.parametrize("pattern", PATTERNS)
def test_translated_regex_agrees_with_regexec(pattern: str) -> None:
    assert LIBC is not None
    posix = _LibcRegex(LIBC, pattern)
    try:
        assert posix.ok, f"regcomp refused {pattern!r}"
        ours = compile_posix_ere(pattern)
        for text in TEXTS:
            assert (ours.search(text) is not None) == posix.search(text), (pattern, text)
    finally:
        posix.free()


_ATOMS = st.sampled_from(
    ["a", "b", ".", "[ab]", "[^a]", "[]a]", "[[:digit:]]", "\\.", "\\w", "(a|b)", "(ab)", "a|", "^", "$", "1"]
)
_QUANT = st.sampled_from(["", "", "*", "+", "?", "{1,2}", "{2}"])


@needs_libc
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_ATOMS, _QUANT), min_size=1, max_size=5),
    st.lists(st.text(alphabet="ab1.\r", max_size=8), min_size=1, max_size=8),
)
def test_generated_regexes_agree_with_regexec(parts: list[tuple[str, str]], texts: list[str]) -> None:
    """No LF in the texts: glibc lets a mid-pattern anchor match next to an LF the pattern
    itself consumes (``a$\\n`` finds ``a\\n``), POSIX and the translation do not; in an event
    every LF follows a CR, so only a pattern spelling ``\\r$\\n`` could tell."""
    assert LIBC is not None
    pattern = "".join(atom + ("" if atom in "^$" else quant) for atom, quant in parts)
    posix = _LibcRegex(LIBC, pattern)
    try:
        try:
            ours = compile_posix_ere(pattern)
        except FilterError:
            return  # refusing is allowed; matching differently is not
        if not posix.ok:
            return
        for text in texts:
            assert (ours.search(text) is not None) == posix.search(text), (pattern, text)
    finally:
        posix.free()


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a(?i)b", "'(?' is not POSIX"),
        ("a**", "stacked repetition"),
        ("a{2", "invalid interval"),
        ("a{3,1}", "invalid interval"),
        ("(ab", "unmatched ("),
        ("[[:nope:]]", "unknown character class"),
        ("[[.a.]]", "collating element"),
        ("ab\\", "trailing backslash"),
        ("*a", "does not compile"),
    ],
)
def test_untranslatable_or_invalid_regexes_are_refused(pattern: str, reason: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_posix_ere(pattern)
    assert reason in str(info.value)


def test_a_filter_built_directly_is_checked() -> None:
    with pytest.raises(FilterError, match="unknown filter method"):
        EventFilter(True, name="X", method="fuzzy", pattern="x")
    assert EventFilter(True, name="X", method="regex", pattern="a+").match_data("caat")
