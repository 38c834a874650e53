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
parser runs on the controller's only event loop. The parser therefore normalises line ends
once per chunk, decodes whole runs of messages at once and builds each message's field
dict with C-level ``dict()``; per-line Python work happens only on the rare slow path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Final

from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
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
]

#: Asterisk reads a manager line into ``char inbuf[1025]`` and discards any line that fills
#: it before a line end (``main/manager.c``, ``get_input``: "Line too long"), so a line we
#: send, CRLF included, must stay within 1024 bytes.
ASTERISK_MAX_ACTION_LINE: Final = 1024

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

_MESSAGE_CLASSES: Final[dict[str, type[Event] | type[Response] | type[Action]]] = {
    "event": Event,
    "response": Response,
    "action": Action,
}


class AMIParser:
    """Incremental AMI parser: ``receive_data(bytes)`` then ``next_event()`` until NEED_DATA.

    ``expect_banner`` is true on the client side (the server greets first). Sizes are
    bounded: a message longer than ``max_message_size`` or a line longer than
    ``max_line_size`` raises :class:`RemoteProtocolError`; the parser drops the offending
    message and carries on with the next one, so memory stays bounded whatever the peer
    sends. Feed ``b""`` at end of stream; a trailing incomplete message is then reported
    as an error and :data:`CLOSED` follows.
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
        self._cr_pending = False
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
        if self._cr_pending:
            data = b"\r" + data
            self._cr_pending = False
        if data[-1:] == b"\r":
            # A CRLF may straddle two reads: keep the CR until we see what follows.
            data = data[:-1]
            self._cr_pending = True
        self._buf += data.replace(b"\r\n", b"\n")

    @property
    def trailing_data(self) -> bytes:
        """Bytes buffered but not yet part of a complete message."""
        return bytes(self._buf)

    # -- output ------------------------------------------------------------------------
    def next_event(self) -> AMIMessage | NeedData | Closed:
        """The next complete message, NEED_DATA, or CLOSED after end of stream.

        Raises :class:`RemoteProtocolError` for a malformed message; that message is
        gone and the following call continues with the next one.
        """
        while True:
            if self._ready:
                item = self._ready.popleft()
                if isinstance(item, RemoteProtocolError):
                    raise item
                return item
            if self._expect_banner:
                banner = self._take_banner()
                if banner is not None:
                    return banner
                if self._expect_banner:
                    return self._end_or_need()
            if not self._split():
                return self._end_or_need()

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
        the error is raised by the next call, so nothing after it is lost either.
        """
        out: list[AMIMessage] = []
        ready = self._ready
        while True:
            if not ready:
                if self._expect_banner:
                    try:
                        banner = self._take_banner()
                    except RemoteProtocolError as exc:
                        ready.append(exc)
                        banner = None
                    if banner is not None:
                        out.append(banner)
                    if self._expect_banner:
                        break
                try:
                    if not self._split():
                        break
                except RemoteProtocolError as exc:
                    ready.append(exc)
            while ready:
                item = ready.popleft()
                if isinstance(item, RemoteProtocolError):
                    if out:
                        ready.appendleft(item)
                        return out
                    raise item
                out.append(item)
        if not out:
            self._end_or_need()
        return out

    # -- internals ---------------------------------------------------------------------
    def _end_or_need(self) -> NeedData | Closed:
        if not self._eof:
            return NEED_DATA
        if self._buf.strip(b"\n"):
            size = len(self._buf)
            self._buf.clear()
            if not self._discarding:
                raise RemoteProtocolError(f"stream closed inside a message ({size} bytes unterminated)")
        self._buf.clear()
        return CLOSED

    def _take_banner(self) -> Banner | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > self.max_line_size:
                self._expect_banner = False
                self._discarding = True
                self._buf.clear()
                raise RemoteProtocolError("no banner line within the line size limit")
            if self._eof and self._buf:
                self._expect_banner = False
                text = self._buf.decode("utf-8", "replace")
                self._buf.clear()
                return self._banner_or_error(text)
            return None
        line = self._buf[:end].decode("utf-8", "replace")
        del self._buf[: end + 1]
        self._expect_banner = False
        return self._banner_or_error(line)

    @staticmethod
    def _banner_or_error(line: str) -> Banner:
        line = line.rstrip("\r")
        if not line.startswith(BANNER_PREFIX):
            raise RemoteProtocolError(f"expected the AMI banner, got {line[:60]!r}")
        return Banner(line)

    def _split(self) -> bool:
        """Parse every complete message of the byte buffer onto the ready queue.

        Malformed messages become :class:`RemoteProtocolError` items in the queue, in
        order, so one bad message costs only itself.
        """
        buf = self._buf
        if self._discarding:
            end = buf.find(b"\n\n")
            if end < 0:
                # Keep one byte: it may be the first LF of the terminator.
                del buf[: max(0, len(buf) - 1)]
                return False
            del buf[: end + 2]
            self._discarding = False
        end = buf.rfind(b"\n\n")
        if end < 0:
            if len(buf) > self.max_message_size:
                size = len(buf)
                self._discarding = True
                del buf[: size - 1]
                raise RemoteProtocolError(
                    f"message exceeds {self.max_message_size} bytes without a terminating blank line"
                )
            return False
        text = buf[:end].decode("utf-8", "replace")
        del buf[: end + 2]
        append = self._ready.append
        max_message = self.max_message_size
        max_line = self.max_line_size
        split = str.split
        for raw in text.split("\n\n"):
            if raw[:1] == "\n" or raw[-1:] == "\n":
                raw = raw.strip("\n")
                if not raw:
                    continue
            size = len(raw)
            lines = raw.split("\n")
            if size > max_line:
                if size > max_message:
                    append(RemoteProtocolError(f"message of {size} bytes exceeds {max_message}"))
                    continue
                if max(map(len, lines)) > max_line:
                    append(RemoteProtocolError(f"header line exceeds {max_line} bytes"))
                    continue
            parts = list(map(split, lines, _SEP, _ONE))
            try:
                fields: dict[str, str] = dict(parts)
            except ValueError:
                try:
                    parts = [_slow_header(line) for line in lines]
                except RemoteProtocolError as exc:
                    append(exc)
                    continue
                fields = dict(parts)
            first_key, first_value = parts[0]
            cls = _MESSAGE_CLASSES.get(first_key) or _MESSAGE_CLASSES.get(first_key.lower())
            if cls is None:
                append(RemoteProtocolError(f"message starts with {first_key!r}, not Event/Response/Action"))
                continue
            if len(fields) == len(parts):
                append(cls(fields, None, first_value))
            else:
                append(cls(fields, tuple((k, v) for k, v in parts), first_value))
        return True


_SEP: Final = repeat(": ")
_ONE: Final = repeat(1)


def _slow_header(line: str) -> list[str]:
    key, sep, value = line.partition(":")
    if not sep or not key:
        raise RemoteProtocolError(f"header line without 'Key: value' form: {line[:80]!r}")
    return [key, value[1:] if value[:1] == " " else value]


# -- encoding ------------------------------------------------------------------------------

HeaderValue = str | int | float | bool
Headers = Mapping[str, HeaderValue | Iterable[HeaderValue]] | Iterable[tuple[str, HeaderValue]]


def _pairs(headers: Headers) -> Iterator[tuple[str, str]]:
    items: Iterable[tuple[str, object]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if isinstance(value, str | int | float | bool):
            yield key, _text(value)
        elif isinstance(value, Iterable):
            for v in value:
                yield key, _text(v)
        else:
            raise LocalProtocolError(f"header {key!r}: unsupported value type {type(value).__name__}")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def encode_message(pairs: Iterable[tuple[str, str]], *, max_line: int | None = None) -> bytes:
    """Encode header pairs as one CRLF message ending with a blank line.

    Refuses (LocalProtocolError) any key or value holding CR or LF, which would let a
    value inject headers or whole messages, a key holding ``:``, and, when ``max_line``
    is given, any line longer than that many bytes (CRLF included).
    """
    out: list[str] = []
    for key, value in pairs:
        if not key or ":" in key or "\r" in key or "\n" in key or key.strip() != key:
            raise LocalProtocolError(f"invalid AMI header name {key!r}")
        if "\r" in value or "\n" in value:
            raise LocalProtocolError(f"AMI header {key!r}: value contains CR or LF")
        line = f"{key}: {value}\r\n"
        if max_line is not None and len(line.encode("utf-8")) > max_line:
            raise LocalProtocolError(
                f"AMI header {key!r}: line of {len(line.encode('utf-8'))} bytes exceeds Asterisk's {max_line}"
            )
        out.append(line)
    out.append("\r\n")
    return "".join(out).encode("utf-8")


def encode_action(name: str, action_id: str | None = None, headers: Headers = ()) -> bytes:
    """Encode an action as a client sends it: ``Action``, ``ActionID``, then ``headers``.

    ``headers`` may be a mapping (a list value repeats the key, as ``Variable`` needs) or
    a sequence of pairs. Lines are limited to :data:`ASTERISK_MAX_ACTION_LINE`.
    """
    head: list[tuple[str, str]] = [("Action", name)]
    if action_id is not None:
        head.append(("ActionID", action_id))
    return encode_message([*head, *_pairs(headers)], max_line=ASTERISK_MAX_ACTION_LINE)


def encode_event(name: str, headers: Headers = ()) -> bytes:
    """Encode an event as a manager server sends it (the simulator's side)."""
    return encode_message([("Event", name), *_pairs(headers)])


def encode_response(status: str, action_id: str | None = None, headers: Headers = ()) -> bytes:
    """Encode a response; ActionID comes second, as Asterisk writes it."""
    head: list[tuple[str, str]] = [("Response", status)]
    if action_id is not None:
        head.append(("ActionID", action_id))
    return encode_message([*head, *_pairs(headers)])


def encode_banner(version: str = "11.0.0") -> bytes:
    """The greeting line: no blank line follows it."""
    return f"{BANNER_PREFIX}{version}\r\n".encode()
