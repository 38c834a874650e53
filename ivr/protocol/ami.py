"""Sans-I/O codec for the Asterisk Manager Interface (AMI).

Bytes in, typed messages out; messages in, bytes out. Nothing here touches a socket or an
event loop, so the same code serves the controller's client, the simulator's server, the
replay of recorded transcripts and the benchmarks.

Wire format (Asterisk 22, ``main/manager.c``): after the TCP connect the server sends one
banner line ``Asterisk Call Manager/11.0.0`` with no blank line after it. Every other
message is a block of ``Key: Value`` lines ended by an empty line. Asterisk writes CRLF;
we accept bare LF too. Keys repeat in some messages (``Variable:`` in Originate,
``Output:`` in Command responses), so a message keeps its headers in order.

Performance matters: a loaded Asterisk sends tens of thousands of events a second and the
parser runs on the controller's only event loop. The parser therefore works on whole runs
of messages: one search for the last terminator, one decode, one split into messages; it
splits CRLF text as it is rather than rewriting line ends (an extra pass over every byte,
measured at an eighth of the parse time), builds each message's field dict with C-level
``dict(map(str.split, ...))`` and fills the frozen message objects through their slot
descriptors. Per-line Python work happens only on the rare careful path (repeated keys,
``Key:value`` lines, malformed input). ``bench/ami_parse.py`` measures it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Final, cast

from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ASTERISK_MAX_ACTION_HEADERS",
    "ASTERISK_MAX_ACTION_LINE",
    "NEED_DATA",
    "AMIParser",
    "Action",
    "Banner",
    "Closed",
    "Event",
    "Message",
    "NeedData",
    "Response",
    "encode_action",
    "encode_banner",
    "encode_event",
    "encode_message",
    "encode_response",
    "event_text",
    "message_text",
]

#: Asterisk reads a manager line into ``char inbuf[1025]`` and discards any line that fills
#: it before a line end (``main/manager.c``, ``get_input``: "Line too long"), so a line we
#: send, CRLF included, must stay within 1024 bytes.
ASTERISK_MAX_ACTION_LINE: Final = 1024
#: ``struct message`` holds at most ``AST_MAX_MANHEADERS`` (128) header lines
#: (``include/asterisk/manager.h``); ``do_message`` answers a longer action with an error
#: ("Too many lines in message") instead of running it.
ASTERISK_MAX_ACTION_HEADERS: Final = 128

BANNER_PREFIX: Final = "Asterisk Call Manager/"

DEFAULT_MAX_MESSAGE_SIZE: Final = 256 * 1024
DEFAULT_MAX_LINE_SIZE: Final = 64 * 1024


class NeedData:
    """Sentinel type: no complete message is buffered yet; feed more bytes."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


class Closed:
    """Sentinel type: the peer closed the stream and every buffered message was returned."""

    _instance: Closed | None = None

    def __new__(cls) -> Closed:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "CLOSED"


NEED_DATA: Final = NeedData()
CLOSED: Final = Closed()


@dataclass(frozen=True, slots=True)
class Banner:
    """The greeting line a manager server sends first."""

    text: str

    @property
    def version(self) -> str:
        """The AMI protocol version (``11.0.0`` on Asterisk 22), not Asterisk's own."""
        return self.text[len(BANNER_PREFIX) :] if self.text.startswith(BANNER_PREFIX) else ""


@dataclass(frozen=True, slots=True)
class Message:
    """A block of headers.

    ``fields`` maps each key to its value (the last one when a key repeats); ``headers``
    gives every ``(key, value)`` pair in wire order, repeats included. ``repeated`` is set
    only when a key occurs more than once, so that the common case costs one dict.
    """

    fields: Mapping[str, str]
    repeated: tuple[tuple[str, str], ...] | None = field(default=None, repr=False)

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Every header pair in the order received."""
        if self.repeated is not None:
            return self.repeated
        return tuple(self.fields.items())

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of ``key``; matches case-insensitively as Asterisk itself does."""
        try:
            return self.fields[key]
        except KeyError:
            folded = key.lower()
            for k, v in self.fields.items():
                if k.lower() == folded:
                    return v
            return default

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def getall(self, key: str) -> list[str]:
        """Every value of a key that may repeat (``Variable``, ``Output``), in order."""
        folded = key.lower()
        return [v for k, v in self.headers if k.lower() == folded]

    @property
    def action_id(self) -> str | None:
        """The ActionID that ties a response or list item to its action."""
        return self.get("ActionID")


@dataclass(frozen=True, slots=True)
class Event(Message):
    """An ``Event:`` block. ``name`` is the event name, e.g. ``QueueCallerJoin``."""

    name: str = ""

    @property
    def timestamp(self) -> float | None:
        """Asterisk's ``Timestamp`` (epoch seconds) when ``timestampevents = yes``.

        Absent on FullyBooted and on list items of action responses (see FACTS.md).
        """
        raw = self.fields.get("Timestamp")
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Response(Message):
    """A ``Response:`` block: ``Success``, ``Error``, ``Goodbye`` or ``Follows``."""

    status: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "Success"

    @property
    def message(self) -> str | None:
        return self.fields.get("Message")

    @property
    def output(self) -> list[str]:
        """The ``Output:`` lines of a Command response."""
        return self.getall("Output")

    @property
    def starts_list(self) -> bool:
        """True when this response opens an event list (``EventList: start``)."""
        return (self.get("EventList") or "").lower() == "start"


@dataclass(frozen=True, slots=True)
class Action(Message):
    """An ``Action:`` block, as a manager server receives it (the simulator's side)."""

    name: str = ""


AMIMessage = Banner | Event | Response | Action


class AMIParser:
    """Incremental AMI parser: ``receive_data(bytes)`` then ``next_event()`` until NEED_DATA.

    ``expect_banner`` is true on the client side (the server greets first). Line ends may
    be CRLF (what Asterisk writes) or bare LF, even mixed; a CR not followed by LF is
    data.

    Sizes are bounded. A message longer than ``max_message_size`` bytes (its header lines
    and their line ends; the blank line that closes it is not counted) or holding a line
    longer than ``max_line_size`` bytes (line end not counted) raises
    :class:`RemoteProtocolError`; the parser drops that message and carries on with the
    next one. Sizes are those of the UTF-8 text, which are the bytes received unless
    they were not valid UTF-8 (an undecodable byte then counts as the three bytes of
    U+FFFD). Whatever the peer sends, once a call has returned NEED_DATA (or
    :meth:`events` has returned) at most ``max_message_size + 1`` bytes stay buffered
    (:attr:`trailing_data`; the extra byte leaves room for the CR of the closing blank
    line). Feed ``b""`` at end of stream; a trailing incomplete message is then reported
    as an error and :data:`CLOSED` follows.

    A header line is split at its first ``": "``; a line without one is split at its
    first ``":"`` (``Key:value``). Asterisk itself splits at the first colon; the two
    rules differ only for a key that contains a colon, which Asterisk never sends and
    :func:`encode_message` refuses to write. A line with no colon or an empty key makes
    its message malformed.
    """

    def __init__(
        self,
        *,
        expect_banner: bool = True,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
    ) -> None:
        if max_line_size > max_message_size:
            raise ValueError("max_line_size cannot exceed max_message_size")
        self.max_message_size = max_message_size
        self.max_line_size = max_line_size
        self._expect_banner = expect_banner
        self._buf = bytearray()
        # Length of the buffer's head already searched for a terminator without success,
        # so that bytes trickling in are not rescanned from the start every time.
        self._scanned = 0
        # Whether the last terminator seen was CRLF-style: which form to look for first.
        self._crlf = True
        self._discarding = False
        self._eof = False
        self._ready: deque[AMIMessage | RemoteProtocolError] = deque()

    # -- input -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed the stream."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data after end of stream")
        self._buf += data

    @property
    def trailing_data(self) -> bytes:
        """The bytes buffered that are not yet part of a complete message, as received."""
        return bytes(self._buf)

    # -- output ------------------------------------------------------------------------
    def next_event(self) -> AMIMessage | NeedData | Closed:
        """The next complete message, NEED_DATA, or CLOSED after end of stream.

        Raises :class:`RemoteProtocolError` for a malformed message; that message is
        gone and the following call continues with the next one.
        """
        ready = self._ready
        while True:
            if ready:
                item = ready.popleft()
                if isinstance(item, RemoteProtocolError):
                    raise item
                return item
            if self._expect_banner:
                banner = self._take_banner()
                if banner is not None:
                    return banner
                if self._expect_banner:
                    return self._end_or_need()
            batch: list[AMIMessage | RemoteProtocolError] = []
            self._split(batch)
            if not batch:
                return self._end_or_need()
            ready.extend(batch)

    def __iter__(self) -> Iterator[AMIMessage]:
        """Every message now complete (stops at NEED_DATA or CLOSED; errors propagate)."""
        while True:
            msg = self.next_event()
            if msg is NEED_DATA or msg is CLOSED:
                return
            assert not isinstance(msg, NeedData | Closed)
            yield msg

    def events(self) -> list[AMIMessage]:
        """Every message now complete, in one list: the fast path for bulk readers.

        If a malformed message sits among them, the messages before it are returned and
        the error is raised by the next call, so nothing after it is lost either. An
        empty list means NEED_DATA, or CLOSED after end of stream.
        """
        items: list[AMIMessage | RemoteProtocolError] = []
        ready = self._ready
        while ready:
            item = ready.popleft()
            if isinstance(item, RemoteProtocolError):
                if items:
                    ready.appendleft(item)
                    return cast("list[AMIMessage]", items)
                raise item
            items.append(item)
        failed = False
        if self._expect_banner:
            try:
                banner = self._take_banner()
            except RemoteProtocolError as exc:
                items.append(exc)
                failed = True
            else:
                if banner is not None:
                    items.append(banner)
        if not self._expect_banner:
            failed = self._split(items) or failed
        if failed:
            # Hand out what precedes the first error; queue the error and what follows.
            first = next(i for i, item in enumerate(items) if isinstance(item, RemoteProtocolError))
            error = cast(RemoteProtocolError, items[first])
            ready.extend(items[first + 1 :])
            del items[first:]
            if not items:
                raise error
            ready.appendleft(error)
        elif not items:
            self._end_or_need()
        return cast("list[AMIMessage]", items)

    # -- internals ---------------------------------------------------------------------
    def _end_or_need(self) -> NeedData | Closed:
        if not self._eof:
            return NEED_DATA
        if self._buf.strip(b"\r\n"):
            size = len(self._buf)
            self._buf.clear()
            if not self._discarding:
                raise RemoteProtocolError(f"stream closed inside a message ({size} bytes unterminated)")
        self._buf.clear()
        return CLOSED

    def _take_banner(self) -> Banner | None:
        buf = self._buf
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > self.max_line_size:
                self._expect_banner = False
                self._discarding = True
                del buf[: len(buf) - 2]
                self._scanned = 0
                raise RemoteProtocolError("no banner line within the line size limit")
            if self._eof and buf:
                self._expect_banner = False
                text = buf.decode("utf-8", "replace")
                buf.clear()
                return self._banner_or_error(text)
            return None
        line = buf[:end].decode("utf-8", "replace")
        del buf[: end + 1]
        self._scanned = 0
        self._expect_banner = False
        return self._banner_or_error(line)

    @staticmethod
    def _banner_or_error(line: str) -> Banner:
        line = line.removesuffix("\r")
        if not line.startswith(BANNER_PREFIX):
            raise RemoteProtocolError(f"expected the AMI banner, got {line[:60]!r}")
        return Banner(line)

    def _split(self, sink: list[AMIMessage | RemoteProtocolError]) -> bool:
        """Move every complete message of the byte buffer onto ``sink``, in order.

        A malformed message becomes a :class:`RemoteProtocolError` item in its place, so
        one bad message costs only itself. Returns whether any error was appended.
        Afterwards the buffer holds at most ``max_message_size + 1`` bytes.
        """
        buf = self._buf
        # A terminator may straddle the end of what was already searched: back up 2.
        start = max(0, self._scanned - 2)
        if self._discarding:
            lf = buf.find(b"\n\n", start)
            crlf = buf.find(b"\n\r\n", start)
            if lf < 0 and crlf < 0:
                # Keep two bytes: they may begin the terminator.
                del buf[: len(buf) - 2]
                self._scanned = len(buf)
                return False
            stop = min(lf + 2 if lf >= 0 else len(buf), crlf + 3 if crlf >= 0 else len(buf))
            del buf[:stop]
            self._discarding = False
            start = 0
        failed = False
        # The last terminator: the LF ending a header line, an optional CR, then the LF of
        # the empty line. Look first for the form the peer used last time; the other form
        # can then only be searched for after it.
        if self._crlf:
            crlf = buf.rfind(b"\n\r\n", start)
            lf = buf.rfind(b"\n\n", crlf + 1 if crlf >= 0 else start)
        else:
            lf = buf.rfind(b"\n\n", start)
            crlf = buf.rfind(b"\n\r\n", lf + 1 if lf >= 0 else start)
        if lf >= 0 or crlf >= 0:
            if crlf >= 0 and crlf + 3 > lf + 2:
                end, stop, self._crlf = crlf, crlf + 3, True
            else:
                end, stop, self._crlf = lf, lf + 2, False
            if end > 0 and buf[end - 1] == 13:  # the CR of the last header line's CRLF
                block = buf[: end - 1]
            else:
                block = buf[:end]
            del buf[:stop]
            failed = self._parse_block(block, sink)
        self._scanned = len(buf)
        if len(buf) > self.max_message_size + 1:
            # No terminator in sight: drop this message as it arrives and resync on the
            # next blank line.
            self._discarding = True
            del buf[: len(buf) - 2]
            self._scanned = len(buf)
            sink.append(
                RemoteProtocolError(
                    f"message exceeds {self.max_message_size} bytes without a terminating blank line"
                )
            )
            failed = True
        return failed

    def _parse_block(self, block: bytearray, sink: list[AMIMessage | RemoteProtocolError]) -> bool:
        """Parse a run of whole messages (the bytes up to the last header line's end)."""
        if not block:
            return False
        text = block.decode("utf-8", "replace")
        mark = len(sink)
        if b"\r" not in block:
            sep = "\n"
        else:
            # Optimistically CRLF throughout; a bare LF among CRLFs is caught by counting
            # lines afterwards, and the block is then parsed again, line ends normalised.
            sep = "\r\n"
            failed, lines = self._parse_text(text, sep, sink)
            if lines == block.count(b"\n") + 1:
                return failed
            del sink[mark:]
            text = text.replace("\r\n", "\n")
            sep = "\n"
        return self._parse_text(text, sep, sink)[0]

    def _parse_text(
        self, text: str, sep: str, sink: list[AMIMessage | RemoteProtocolError]
    ) -> tuple[bool, int]:
        """Parse messages separated by blank lines; ``sep`` is the line end.

        Returns whether an error was appended and the number of lines in ``text``, blank
        ones included (for the CRLF check of :meth:`_parse_block`).
        """
        if text.startswith(sep) or text.endswith(sep) or sep * 3 in text:
            texts, blank = _without_blank_lines(text, sep)
        else:
            texts = text.split(sep + sep)
            blank = len(texts) - 1
        # Cheap screening first: a message whose text (its last line end excluded) is at
        # most ``limit`` bytes can break no limit, and a character is at most 4 bytes.
        limit = min(self.max_line_size, self.max_message_size - len(sep))
        if not text.isascii():
            limit //= 4
        if len(text) <= limit or max(map(len, texts)) <= limit:
            failed, lines = _build(texts, sep, sink)
            return failed, lines + blank
        failed = False
        lines = blank
        start = 0
        for i, message in enumerate(texts):
            error = None if len(message) <= limit else self._size_error(message, sep)
            if error is None:
                continue
            part = _build(texts[start:i], sep, sink)
            failed = failed or part[0]
            lines += part[1] + message.count(sep) + 1
            sink.append(error)
            failed = True
            start = i + 1
        part = _build(texts[start:], sep, sink)
        return failed or part[0], lines + part[1]

    def _size_error(self, message: str, sep: str) -> RemoteProtocolError | None:
        lines = message.split(sep)
        size = len(message.encode("utf-8")) + len(sep)  # the last line's end, too
        if size > self.max_message_size:
            return RemoteProtocolError(f"message of {size} bytes exceeds {self.max_message_size}")
        if max(len(line.encode("utf-8")) for line in lines) > self.max_line_size:
            return RemoteProtocolError(f"header line exceeds {self.max_line_size} bytes")
        return None


def _without_blank_lines(text: str, sep: str) -> tuple[list[str], int]:
    """Messages of ``text`` with stray blank lines dropped (they carry nothing), and the
    number of blank lines."""
    messages: list[str] = []
    run: list[str] = []
    blank = 0
    for line in text.split(sep):
        if line:
            run.append(line)
            continue
        blank += 1
        if run:
            messages.append(sep.join(run))
            run = []
    if run:
        messages.append(sep.join(run))
    return messages, blank


_SEP: Final = repeat(": ")
_ONE: Final = repeat(1)
_new: Final = object.__new__
_Setter = Callable[[object, Any], None]


def _slot_setter(cls: type, name: str) -> _Setter:
    return cast(_Setter, vars(cls)[name].__set__)


# Slot descriptors of the message dataclasses. The parser fills new instances through
# them instead of calling the generated ``__init__``, which must go through
# ``object.__setattr__`` for each field of a frozen dataclass: the instances are the same
# frozen objects, built in half the time.
_set_fields: Final = _slot_setter(Message, "fields")
_set_repeated: Final = _slot_setter(Message, "repeated")
_KINDS: Final[dict[str, tuple[type[Event] | type[Response] | type[Action], _Setter]]] = {
    "Event": (Event, _slot_setter(Event, "name")),
    "Response": (Response, _slot_setter(Response, "status")),
    "Action": (Action, _slot_setter(Action, "name")),
}
_KINDS_FOLDED: Final = {key.lower(): kind for key, kind in _KINDS.items()}


def _build(texts: list[str], sep: str, sink: list[AMIMessage | RemoteProtocolError]) -> tuple[bool, int]:
    """Turn message texts into messages on ``sink``; ``sep`` is the line end.

    The hot loop of the parser. Each line is split by C-level ``str.split`` driven by
    ``map`` and the field dict is built by ``dict()``; a message with a line lacking
    ``": "``, an empty key, a repeated key or an unknown first key takes the careful
    path of :func:`_build_one`. Returns whether any error was appended and the number of
    lines seen.
    """
    append = sink.append
    split = str.split
    new = _new
    set_fields = _set_fields
    set_repeated = _set_repeated
    kinds = _KINDS
    failed = False
    total = 0
    for raw in texts:
        lines = raw.split(sep)
        count = len(lines)
        total += count
        try:
            fields = dict(map(split, lines, _SEP, _ONE))
        except ValueError:  # a line without ": "
            fields = None
        if fields is None or len(fields) != count or "" in fields:
            item = _build_one(lines)
            append(item)
            failed = failed or isinstance(item, RemoteProtocolError)
            continue
        key = next(iter(fields))
        kind = kinds.get(key)
        if kind is None:
            item = _build_one(lines)
            append(item)
            failed = failed or isinstance(item, RemoteProtocolError)
            continue
        cls, set_kind = kind
        msg = new(cls)
        set_fields(msg, fields)
        set_repeated(msg, None)
        set_kind(msg, fields[key])
        append(msg)
    return failed, total


def _build_one(lines: list[str]) -> Event | Response | Action | RemoteProtocolError:
    """Parse one message line by line: repeated keys, ``Key:value`` lines, errors."""
    pairs: list[tuple[str, str]] = []
    for line in lines:
        key, sep, value = line.partition(": ")
        if not sep:
            key, sep, value = line.partition(":")
        if not sep or not key:
            return RemoteProtocolError(f"header line without 'Key: value' form: {line[:80]!r}")
        pairs.append((key, value))
    first_key, first_value = pairs[0]
    kind = _KINDS.get(first_key) or _KINDS_FOLDED.get(first_key.lower())
    if kind is None:
        # A manager server takes the Action header wherever it stands (main/manager.c
        # reads it with astman_get_header); some clients (panoramisk) sort their headers.
        action = next(((k, v) for k, v in pairs if k.lower() == "action"), None)
        if action is None:
            return RemoteProtocolError(f"message starts with {first_key!r}, not Event/Response/Action")
        kind = _KINDS["Action"]
        first_value = action[1]
    fields = dict(pairs)
    cls, set_kind = kind
    msg = _new(cls)
    _set_fields(msg, fields)
    _set_repeated(msg, tuple(pairs) if len(fields) != len(pairs) else None)
    set_kind(msg, first_value)
    return msg


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of text we are about to send; a lone surrogate cannot go on the wire."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"text is not valid Unicode: {exc.reason} at {exc.start}") from None


# -- encoding ------------------------------------------------------------------------------

HeaderValue = str | int | float | bool
Headers = Mapping[str, HeaderValue | Iterable[HeaderValue]] | Iterable[tuple[str, HeaderValue]]


def _pairs(headers: Headers) -> Iterator[tuple[str, str]]:
    items: Iterable[tuple[str, object]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if isinstance(value, str | int | float | bool):
            yield key, _text(value)
        elif isinstance(value, Iterable) and not isinstance(value, bytes | bytearray | memoryview):
            for v in value:
                yield key, _text(v)
        else:
            raise LocalProtocolError(f"header {key!r}: unsupported value type {type(value).__name__}")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_key(key: str) -> None:
    if not key or any(c in key for c in ":\r\n\0") or key.strip() != key:
        raise LocalProtocolError(f"invalid AMI header name {key!r}")


#: Header names already checked by :func:`_check_key`. A server writes the same few dozen
#: names millions of times, so the fast path checks a name once; the set is bounded so that
#: a peer cannot grow it by making us echo arbitrary names (beyond it names are checked
#: every time, which is correct, only slower).
_GOOD_KEYS: Final[set[str]] = set()
_GOOD_KEYS_MAX: Final = 4096


def _fast_text(pairs: Sequence[tuple[str, str]]) -> str | None:
    """The message text of ``pairs`` if they are all ``(str, str)`` and valid, else None.

    The hot path of every event the simulator sends: one C-level join of the whole
    message, then one scan of it, instead of Python checks on each header. A value holding
    CR, LF or NUL cannot hide in the joined text: the text of ``n`` lines has exactly
    ``n - 1`` CRs and LFs (the separators) and no NUL. Names are checked once each (see
    :data:`_GOOD_KEYS`). None sends the caller to :func:`_careful_text`, which converts
    non-string values and raises the precise error.
    """
    n = len(pairs)
    if not n:
        return None
    try:
        body = "\r\n".join(map(": ".join, pairs))
        keys = dict(pairs).keys()
    except (TypeError, ValueError):  # a value to convert, or not a pair
        return None
    if body.count("\n") != n - 1 or body.count("\r") != n - 1 or "\0" in body:
        return None
    if not keys <= _GOOD_KEYS:
        for key in keys - _GOOD_KEYS:
            try:
                _check_key(key)
            except LocalProtocolError:
                return None
            if len(_GOOD_KEYS) < _GOOD_KEYS_MAX:
                _GOOD_KEYS.add(key)
    return body + "\r\n\r\n"


def _careful_text(
    pairs: Iterable[tuple[str, str]], max_line: int | None = None, max_headers: int | None = None
) -> str:
    """The message text, each header checked on its own: the reference for :func:`_fast_text`."""
    out: list[str] = []
    for key, value in pairs:
        _check_key(key)
        if "\r" in value or "\n" in value or "\0" in value:
            raise LocalProtocolError(f"AMI header {key!r}: value contains CR, LF or NUL")
        line = f"{key}: {value}\r\n"
        if max_line is not None and len(_utf8(line)) > max_line:
            raise LocalProtocolError(
                f"AMI header {key!r}: line of {len(_utf8(line))} bytes exceeds Asterisk's {max_line}"
            )
        out.append(line)
    if not out:
        raise LocalProtocolError("an AMI message needs at least one header")
    if max_headers is not None and len(out) > max_headers:
        raise LocalProtocolError(f"AMI message of {len(out)} lines exceeds Asterisk's {max_headers}")
    out.append("\r\n")
    return "".join(out)


def message_text(
    pairs: Iterable[tuple[str, str]], *, max_line: int | None = None, max_headers: int | None = None
) -> str:
    """The text :func:`encode_message` would encode (same checks, same errors), as ``str``.

    For a sender that looks at the text before sending it (the simulator's event filters
    run regexes on it, as Asterisk does on the formatted event).
    """
    if max_line is None and max_headers is None:
        if not isinstance(pairs, list | tuple):
            pairs = list(pairs)
        text = _fast_text(pairs)
        if text is not None:
            return text
    return _careful_text(pairs, max_line, max_headers)


def encode_message(
    pairs: Iterable[tuple[str, str]], *, max_line: int | None = None, max_headers: int | None = None
) -> bytes:
    """Encode header pairs as one CRLF message ending with a blank line.

    Refuses (LocalProtocolError) any key or value holding CR or LF, which would let a
    value inject headers or whole messages, or NUL, at which Asterisk's C strings would
    silently end; a key that is empty, holds ``:`` or starts or ends with white space;
    an empty message (a lone blank line); and, when given, more than ``max_headers``
    lines or a line longer than ``max_line`` bytes (CRLF included).
    """
    return _utf8(message_text(pairs, max_line=max_line, max_headers=max_headers))


def encode_action(name: str, action_id: str | None = None, headers: Headers = ()) -> bytes:
    """Encode an action as a client sends it: ``Action``, ``ActionID``, then ``headers``.

    ``headers`` may be a mapping (a list value repeats the key, as ``Variable`` needs) or
    a sequence of pairs. Lines are limited to :data:`ASTERISK_MAX_ACTION_LINE` bytes and
    the action to :data:`ASTERISK_MAX_ACTION_HEADERS` lines.
    """
    head: list[tuple[str, str]] = [("Action", name)]
    if action_id is not None:
        head.append(("ActionID", action_id))
    return encode_message(
        [*head, *_pairs(headers)],
        max_line=ASTERISK_MAX_ACTION_LINE,
        max_headers=ASTERISK_MAX_ACTION_HEADERS,
    )


def _head_text(first: tuple[str, str], action_id: str | None, headers: Headers) -> str:
    """Text of a message made of ``first``, an optional ``ActionID`` and ``headers``."""
    if isinstance(headers, list | tuple):
        pairs = cast("list[tuple[str, str]]", [first, *headers])
        if action_id is not None:
            pairs.insert(1, ("ActionID", action_id))
        text = _fast_text(pairs)
        if text is not None:
            return text
    head = [first] if action_id is None else [first, ("ActionID", action_id)]
    return _careful_text([*head, *_pairs(headers)])


def event_text(name: str, headers: Headers = ()) -> str:
    """The text of an event (what :func:`encode_event` encodes), as ``str``."""
    if isinstance(headers, list):  # the simulator's events: the fast path, inlined
        text = _fast_text([("Event", name), *headers])
        if text is not None:
            return text
    return _head_text(("Event", name), None, headers)


def encode_event(name: str, headers: Headers = ()) -> bytes:
    """Encode an event as a manager server sends it (the simulator's side)."""
    return _utf8(_head_text(("Event", name), None, headers))


def encode_response(status: str, action_id: str | None = None, headers: Headers = ()) -> bytes:
    """Encode a response; ActionID comes second, as Asterisk writes it."""
    return _utf8(_head_text(("Response", status), action_id, headers))


def encode_banner(version: str = "11.0.0") -> bytes:
    """The greeting line: no blank line follows it."""
    if any(c in version for c in "\r\n\0"):
        raise LocalProtocolError(f"invalid AMI banner version {version!r}")
    return _utf8(f"{BANNER_PREFIX}{version}\r\n")
