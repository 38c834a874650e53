"""The encoders' fast path (one check of the joined text) against the header-by-header one.

Whatever the input, :func:`encode_message` / :func:`encode_event` must give the bytes the
careful path gives, or the same :class:`LocalProtocolError` with the same message.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.protocol import ami
from ivr.protocol.ami import encode_event, encode_message, encode_response, event_text, message_text
from ivr.protocol.errors import LocalProtocolError

_TEXT = st.text(alphabet=st.sampled_from(["a", "B", " ", ":", "\r", "\n", "\0", "é", "\t", "-"]), max_size=6)
_KEYS = st.one_of(st.sampled_from(["Channel", "Value", "Event", "X-Y"]), _TEXT)


def _careful(pairs: list[tuple[str, str]]) -> bytes | str:
    try:
        return ami._careful_text(pairs).encode()
    except LocalProtocolError as exc:
        return f"error: {exc}"


def _fast(pairs: list[tuple[str, str]]) -> bytes | str:
    try:
        return encode_message(pairs)
    except LocalProtocolError as exc:
        return f"error: {exc}"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_KEYS, _TEXT), max_size=6))
def test_fast_path_agrees_with_the_careful_one(pairs: list[tuple[str, str]]) -> None:
    ami._GOOD_KEYS.clear()  # names are checked again, as on a fresh process
    assert _fast(pairs) == _careful(pairs)
    assert _fast(pairs) == _careful(pairs)  # and with the names now known


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("Value", "a\r\nEvent: Injected")], "AMI header 'Value': value contains CR, LF or NUL"),
        ([("Value", "a\rb")], "value contains CR, LF or NUL"),
        ([("Value", "a\x00b")], "value contains CR, LF or NUL"),
        ([("Bad:Key", "v")], "invalid AMI header name 'Bad:Key'"),
        ([(" Padded", "v")], "invalid AMI header name ' Padded'"),
        ([("", "v")], "invalid AMI header name ''"),
        ([], "an AMI message needs at least one header"),
    ],
)
def test_errors_name_the_header(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_message(pairs)
    assert message in str(info.value)


def test_values_to_convert_and_iterables_take_the_careful_path() -> None:
    assert encode_event("E", [("Count", 3), ("On", True)]) == b"Event: E\r\nCount: 3\r\nOn: true\r\n\r\n"
    assert encode_message(iter([("A", "1")])) == b"A: 1\r\n\r\n"
    assert encode_response("Success", "id", {"Message": "ok"}) == (
        b"Response: Success\r\nActionID: id\r\nMessage: ok\r\n\r\n"
    )
    assert event_text("E", [("A", "é")]) == "Event: E\r\nA: é\r\n\r\n"
    assert message_text([("A", "1")]) == "A: 1\r\n\r\n"
    with pytest.raises(LocalProtocolError, match="not valid Unicode"):
        encode_event("E", [("A", "\ud800")])
    with pytest.raises(LocalProtocolError, match="'Event': value contains CR, LF or NUL"):
        encode_event("E\r\nInjected: 1", [("A", "1")])


def test_the_cache_of_checked_names_is_bounded() -> None:
    ami._GOOD_KEYS.clear()
    for i in range(ami._GOOD_KEYS_MAX + 50):
        encode_message([(f"K{i}", "v")])
    assert len(ami._GOOD_KEYS) == ami._GOOD_KEYS_MAX
    with pytest.raises(LocalProtocolError):  # a bad name is refused, cached or not
        encode_message([("K1", "v"), ("Bad:Name", "v")])
    ami._GOOD_KEYS.clear()
