"""Sans-I/O codec for FastAGI, both sides.

Asterisk connects to the FastAGI server, sends an environment block (``agi_key: value``
lines ended by an empty line), then answers each command line the server writes with a
reply line. Everything is LF-terminated (``res/res_agi.c``); we accept CRLF too.

Two quirks make a naive client drift (panoramisk 1.4 does):

* After the caller hangs up, Asterisk writes one unsolicited ``HANGUP`` line in the
  middle of the exchange, *before* the reply to the pending command (``agi_hangup``
  recording). It is not a reply: :class:`AGIServerConnection` reports it as
  :class:`HangupNotice` and keeps waiting for the real reply, so later replies never
  shift onto the wrong command.
* A syntax error is answered on several lines: ``520-Invalid command syntax.  Proper
  usage follows:``, usage text, ``520 End of proper usage.``; they form one reply.
  (Without usage text it is one line, ``520 Invalid command syntax.  Proper usage not
  available.``.) GOSUB also answers ``100 result=0 Trying...`` before its real reply.

Where the recordings are silent, the rules come from ``res/res_agi.c`` (Asterisk 22):
``run_agi`` reads a command with ``fgets`` into 8192 bytes and strips only its LF,
``parse_args`` splits it into at most 127 words, ``agi_handle_command`` writes the
replies, ``setup_env`` the environment.

:class:`AGIServerConnection` is the controller's side (receive environment and replies,
send commands); :class:`AGIClientConnection` is Asterisk's side, used by the simulator
(send the environment and replies, receive commands).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, cast
from urllib.parse import parse_qs

from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AGIClientConnection",
    "AGIEnvironment",
    "AGIServerConnection",
    "Command",
    "HangupNotice",
    "Reply",
    "ServerState",
    "UnknownCommand",
    "answer",
    "app_args",
    "encode_environment",
    "encode_reply",
    "exec_",
    "get_data",
    "get_full_variable",
    "get_variable",
    "hangup",
    "mset",
    "mset_pairs",
    "parse_command",
    "say_date",
    "say_datetime",
    "say_digits",
    "say_number",
    "say_time",
    "set_variable",
    "stream_file",
    "verbose",
    "wait_for_digit",
]

#: ``res/res_agi.c`` (``run_agi``) reads a command with ``fgets`` into ``char
#: buf[AGI_BUF_LEN]``: 8192 since Asterisk 22.6 (2048 before), so a command line, its LF
#: included, must stay within 8191 bytes or the rest is read as a second command.
AGI_BUF_LEN: Final = 8192
#: ``parse_args`` keeps at most ``MAX_ARGS - 1`` (127) words and silently drops the rest
#: ("Too many arguments, truncating"); we refuse to send more.
AGI_MAX_ARGS: Final = 128

DEFAULT_MAX_LINE: Final = 16 * 1024
DEFAULT_MAX_ENV_LINES: Final = 512
DEFAULT_MAX_USAGE_LINES: Final = 256

HANGUP_LINE: Final = "HANGUP"
USAGE_START: Final = "520-Invalid command syntax.  Proper usage follows:"
USAGE_END: Final = "520 End of proper usage."
TEXT_520_NO_USAGE: Final = "520 Invalid command syntax.  Proper usage not available."
TEXT_510: Final = "510 Invalid or unknown command"
TEXT_511: Final = "511 Command Not Permitted on a dead channel or intercept routine"


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
CLOSED: Final = _Sentinel("CLOSED")


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of text we are about to send; a lone surrogate cannot go on the wire."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"text is not valid Unicode: {exc.reason} at {exc.start}") from None


# -- messages --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _query_items(query: str) -> tuple[tuple[str, str], ...]:
    """A query string's pairs, last value wins: a dialplan calls a handful of URLs, parsed once."""
    parsed = parse_qs(query, keep_blank_values=True)
    return tuple((k, v[-1]) for k, v in parsed.items())


@dataclass(frozen=True, slots=True)
class AGIEnvironment:
    """The ``agi_*`` variables Asterisk sends when a session opens, in order."""

    variables: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        """``get("uniqueid")`` and ``get("agi_uniqueid")`` both work."""
        key = name if name.startswith("agi_") else f"agi_{name}"
        return self.variables.get(key, default)

    @property
    def network_script(self) -> str:
        """The script part of the AGI URL, query string included (``ivr?service=caf``)."""
        return self.get("network_script")

    @property
    def script(self) -> str:
        """The script name without its query string (``ivr``)."""
        return self.network_script.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        """The query string of the AGI URL as a dict (last value wins)."""
        return dict(_query_items(self.network_script.partition("?")[2]))

    @property
    def uniqueid(self) -> str:
        return self.get("uniqueid")

    @property
    def channel(self) -> str:
        return self.get("channel")

    @property
    def callerid(self) -> str:
        return self.get("callerid")

    @property
    def args(self) -> tuple[str, ...]:
        """``agi_arg_1`` … ``agi_arg_N`` in numeric order (not the order of the lines)."""
        numbered: list[tuple[int, str]] = []
        for key, value in self.variables.items():
            if key.startswith("agi_arg_") and key[8:].isdigit():
                numbered.append((int(key[8:]), value))
        return tuple(v for _, v in sorted(numbered))


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply from Asterisk.

    ``result`` is the raw text after ``result=`` (``"1"``, ``"-1"``, ``""`` or the digits of
    GET DATA); ``data`` the text in parentheses (a variable's value, ``timeout``);
    ``endpos`` the sample offset of STREAM FILE; ``usage`` the lines of a 520 reply.
    """

    code: int
    result: str | None = None
    data: str | None = None
    endpos: int | None = None
    text: str = ""
    usage: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def result_int(self) -> int | None:
        """``result`` as an int when it is one (``-1`` means failure or hangup)."""
        if self.result is None:
            return None
        try:
            return int(self.result)
        except ValueError:
            return None

    @property
    def timed_out(self) -> bool:
        return self.data == "timeout"

    @property
    def dead_channel(self) -> bool:
        """511: the channel is gone; media commands will never work again."""
        return self.code == 511


@dataclass(frozen=True, slots=True)
class HangupNotice:
    """The unsolicited ``HANGUP`` line: the caller has gone. Not a reply."""


@dataclass(frozen=True, slots=True)
class Command:
    """An AGI command: its name (one or more words) and its arguments."""

    name: str
    args: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """The command line as sent, quoting arguments the way ``parse_args`` reads them.

        A server sends the same few commands over and over (its prompts, its variables):
        short lines are encoded once and kept (bounded; a command is immutable).
        """
        data = _ENCODED.get(self)
        if data is None:
            data = self._encode()
            if len(data) <= _ENCODED_LINE_MAX and len(_ENCODED) < _ENCODED_MAX:
                _ENCODED[self] = data
        return data

    def _encode(self) -> bytes:
        name = self.name
        words = _NAME_WORDS.get(name)
        if words is None:
            words = _check_name(name)
        args = self.args
        if args:
            if len(args) + words > AGI_MAX_ARGS - 1:
                raise LocalProtocolError(f"AGI command {name!r} has more than {AGI_MAX_ARGS - 1} words")
            # Most arguments need no quoting: one search over them all instead of one per argument
            # (a special character in any argument shows in their concatenation).
            if "" in args or _NEEDS_QUOTES.search("".join(args)):
                line = name + " " + " ".join(map(_quote, args)) + "\n"
            else:
                line = name + " " + " ".join(args) + "\n"
        else:
            line = name + "\n"
        try:
            data = line.encode("utf-8")
        except UnicodeEncodeError:
            data = _utf8(line)  # raises LocalProtocolError
        if len(data) > AGI_BUF_LEN - 1:
            raise LocalProtocolError(
                f"AGI command line of {len(data)} bytes exceeds Asterisk's {AGI_BUF_LEN - 1}"
            )
        return data


#: Encoded command lines, by command (see :meth:`Command.encode`).
_ENCODED: Final[dict[Command, bytes]] = {}
_ENCODED_MAX: Final = 4096
_ENCODED_LINE_MAX: Final = 200

#: Word counts of the command names already checked (commands are sent over and over).
_NAME_WORDS: Final[dict[str, int]] = {}


def _check_name(name: str) -> int:
    if not name.strip() or any(c in name for c in '\r\n\0"\\'):
        raise LocalProtocolError(f"invalid AGI command name {name!r}")
    words = len(name.split())
    if len(_NAME_WORDS) < 256:  # a bounded cache: names come from code, not from peers
        _NAME_WORDS[name] = words
    return words


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A command line whose words name no command Asterisk knows (it answers 510)."""

    line: str
    words: tuple[str, ...]


_PLAIN_ARG: Final = re.compile(r'[^ \t"\\\r\n\0]+')
_NEEDS_QUOTES: Final = re.compile(r'[ \t"\\\r\n\0]')


def _quote(arg: str) -> str:
    if _PLAIN_ARG.fullmatch(arg):
        return arg
    if "\r" in arg or "\n" in arg or "\0" in arg:
        raise LocalProtocolError(f"AGI argument contains CR, LF or NUL: {arg[:40]!r}")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- command builders ----------------------------------------------------------------------


_DTMF_DIGITS: Final = re.compile(r"[0-9*#]*")
_BAD_VARIABLE_NAME: Final = re.compile(r'[ \t"\\=]')


def _digits_arg(escape_digits: str) -> str:
    if escape_digits and not _DTMF_DIGITS.fullmatch(escape_digits):
        raise LocalProtocolError(f"escape digits must be DTMF digits, got {escape_digits!r}")
    return escape_digits


def answer() -> Command:
    return Command("ANSWER")


def stream_file(filename: str, escape_digits: str = "", offset: int | None = None) -> Command:
    """Play a prompt; ``escape_digits`` interrupt it (``""`` = none, sent as ``""``)."""
    args = [filename, _digits_arg(escape_digits)]
    if offset is not None:
        args.append(str(offset))
    return Command("STREAM FILE", tuple(args))


def get_data(filename: str, timeout_ms: int | None = None, max_digits: int | None = None) -> Command:
    """Play a prompt and collect up to ``max_digits`` DTMF digits (``#`` ends input)."""
    args = [filename]
    if timeout_ms is not None:
        args.append(str(int(timeout_ms)))
        if max_digits is not None:
            args.append(str(int(max_digits)))
    elif max_digits is not None:
        raise LocalProtocolError("GET DATA needs a timeout before max_digits")
    return Command("GET DATA", tuple(args))


def wait_for_digit(timeout_ms: int) -> Command:
    return Command("WAIT FOR DIGIT", (str(int(timeout_ms)),))


def say_digits(digits: str, escape_digits: str = "") -> Command:
    if not (digits.isascii() and digits.isdigit()):
        raise LocalProtocolError(f"SAY DIGITS takes digits, got {digits!r}")
    return Command("SAY DIGITS", (digits, _digits_arg(escape_digits)))


def say_number(number: int, escape_digits: str = "", gender: str | None = None) -> Command:
    args = [str(int(number)), _digits_arg(escape_digits)]
    if gender is not None:
        args.append(gender)
    return Command("SAY NUMBER", tuple(args))


def say_date(epoch: int, escape_digits: str = "") -> Command:
    """Say the date of ``epoch`` in the channel's language, in *Asterisk's* local timezone.

    ``handle_saydate`` in res/res_agi.c takes no timezone: prefer :func:`say_datetime`, which
    does, when the PBX's zone may differ from the service's.
    """
    return Command("SAY DATE", (str(int(epoch)), _digits_arg(escape_digits)))


def say_time(epoch: int, escape_digits: str = "") -> Command:
    """Say the time of day of ``epoch``, in Asterisk's local timezone (see :func:`say_date`)."""
    return Command("SAY TIME", (str(int(epoch)), _digits_arg(escape_digits)))


def say_datetime(
    epoch: int, escape_digits: str = "", format: str | None = None, timezone: str | None = None
) -> Command:
    """``SAY DATETIME``: say ``epoch`` with an ``ast_say_date_with_format`` ``format`` in ``timezone``.

    ``format`` letters are those of main/say.c (``A`` weekday, ``d`` day of month, ``B`` month,
    ``H`` hour, ``M`` minutes, ``'sound'`` a sound file ...); without it Asterisk uses its
    English-style ``"ABdY 'digits/at' IMp"``. ``timezone`` is an IANA name (``Europe/Paris``);
    it is positional after the format in ``handle_saydatetime`` (res/res_agi.c), so it
    needs one: an empty format would make Asterisk say nothing.
    """
    args = [str(int(epoch)), _digits_arg(escape_digits)]
    if format is not None:
        if not format.strip():
            raise LocalProtocolError("SAY DATETIME format must not be empty (Asterisk would say nothing)")
        args.append(format)
    if timezone is not None:
        if format is None:
            raise LocalProtocolError("SAY DATETIME needs a format before a timezone")
        if not timezone or any(c.isspace() for c in timezone):
            raise LocalProtocolError(f"invalid timezone for SAY DATETIME: {timezone!r}")
        args.append(timezone)
    return Command("SAY DATETIME", tuple(args))


def set_variable(name: str, value: str) -> Command:
    if not name or _BAD_VARIABLE_NAME.search(name):
        raise LocalProtocolError(f"invalid channel variable name {name!r}")
    return Command("SET VARIABLE", (name, value))


def get_variable(name: str) -> Command:
    return Command("GET VARIABLE", (name,))


def get_full_variable(expression: str, channel: str | None = None) -> Command:
    return Command("GET FULL VARIABLE", (expression,) if channel is None else (expression, channel))


def exec_(application: str, options: str = "") -> Command:
    return Command("EXEC", (application, options) if options else (application,))


def mset(pairs: Iterable[tuple[str, str]]) -> Command:
    """``EXEC MSet a=1,b=2``: several channel variables in one command, set in order. The
    pairs are joined as given: only names and values :func:`mset_pairs` reads back unchanged
    keep their meaning (``ivr.domain.ivr_ops.set_variables`` groups only those)."""
    return exec_("MSet", ",".join(f"{name}={value}" for name, value in pairs))


def verbose(message: str, level: int = 1) -> Command:
    return Command("VERBOSE", (message, str(int(level))))


def hangup(channel: str | None = None) -> Command:
    return Command("HANGUP", () if channel is None else (channel,))


# -- Asterisk's side: parsing commands, encoding replies --------------------------------------

#: Command names of ``res/res_agi.c`` (``commands[]``), longest first so that
#: ``GET FULL VARIABLE`` wins over ``GET``-anything. Matching is case-insensitive there.
_COMMAND_NAMES: Final = """
ANSWER, ASYNCAGI BREAK, CHANNEL STATUS, CONTROL STREAM FILE, DATABASE DEL, DATABASE DELTREE,
DATABASE GET, DATABASE PUT, EXEC, GET DATA, GET FULL VARIABLE, GET OPTION, GET VARIABLE, GOSUB,
HANGUP, NOOP, RECEIVE CHAR, RECEIVE TEXT, RECORD FILE, SAY ALPHA, SAY DATE, SAY DATETIME,
SAY DIGITS, SAY NUMBER, SAY PHONETIC, SAY TIME, SEND IMAGE, SEND TEXT, SET AUTOHANGUP,
SET CALLERID, SET CONTEXT, SET EXTENSION, SET MUSIC, SET PRIORITY, SET VARIABLE,
SPEECH ACTIVATE GRAMMAR, SPEECH CREATE, SPEECH DEACTIVATE GRAMMAR, SPEECH DESTROY,
SPEECH LOAD GRAMMAR, SPEECH RECOGNIZE, SPEECH SET, SPEECH UNLOAD GRAMMAR, STREAM FILE, TDD MODE,
VERBOSE, WAIT FOR DIGIT
"""
KNOWN_COMMANDS: Final[tuple[tuple[str, ...], ...]] = tuple(
    sorted((tuple(n.split()) for n in _COMMAND_NAMES.replace("\n", " ").split(",")), key=len, reverse=True)
)


#: KNOWN_COMMANDS, each with its name as one string (the command's ``name``).
_JOINED_NAMES: Final[dict[tuple[str, ...], str]] = {name: " ".join(name) for name in KNOWN_COMMANDS}
_LONGEST_NAME: Final = max(len(name) for name in KNOWN_COMMANDS)

_PLAIN_WORD: Final = re.compile(r"[^ \t]++")
_QUOTED_WORD: Final = re.compile(r'(?:[^ \t"]++|"[^"]*+"?)++')


def split_args(line: str) -> list[str]:
    """Split a command line into words exactly as ``parse_args()`` in ``res/res_agi.c`` does.

    Double quotes group words (``""`` is an empty word) and may open in the middle of a
    word, a backslash makes the next character literal, spaces and tabs separate words
    outside quotes; a NUL ends the line (it is a C string). Like Asterisk, the words
    after the 127th are dropped unless they open with a quote, for which Asterisk forgets
    the check (and writes past its ``argv``); :meth:`Command.encode` never sends that many.
    """
    if "\\" not in line and "\0" not in line:
        # Fast path: without backslashes a quote only groups, so a word is a run of
        # unquoted characters and quoted parts, and its text is that run without quotes.
        # Up to 127 words nothing is truncated, and the C code's reading is the same.
        fast = (
            [w.replace('"', "") for w in _QUOTED_WORD.findall(line)]
            if '"' in line
            else _PLAIN_WORD.findall(line)
        )
        if len(fast) < AGI_MAX_ARGS:
            return fast
    return _parse_args(line)


def _parse_args(line: str) -> list[str]:
    """:func:`split_args` the long way: ``parse_args()``'s state machine, character by character."""
    words: list[list[str]] = []
    quoted = escaped = False
    whitespace = True  # between words: the next literal character starts a word
    for ch in line.partition("\0")[0]:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                words.append([])
                whitespace = False
            continue
        if ch in " \t" and not quoted and not escaped:
            whitespace = True
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            if len(words) >= AGI_MAX_ARGS - 1:
                continue  # "Too many arguments, truncating": dropped, ``escaped`` kept
            words.append([])
            whitespace = False
        words[-1].append(ch)
        escaped = False
    return ["".join(word) for word in words]


def app_args(data: str, delim: str, limit: int) -> list[str]:
    """An application's arguments as ``__ast_app_separate_args`` (main/app.c) splits them for
    ``AST_STANDARD_APP_ARGS`` and ``AST_NONSTANDARD_APP_ARGS`` (``remove_chars`` set): what
    ``EXEC <app> <data>`` hands the application.

    ``data`` split on ``delim`` outside ``()``, ``[]`` and double quotes, the quotes removed
    and a backslash making the next character literal; at most ``limit`` parts, the last one
    taking the rest as it is; a ``delim`` at the very end gives one more, empty, part.
    """
    out: list[str] = []
    i, n = 0, len(data)
    paren = bracket = 0
    quoted = ended_on_delim = False
    while i < n and len(out) < limit - 1:
        part: list[str] = []
        ended_on_delim = False
        while i < n:
            ch = data[i]
            i += 1
            if ch == "(":
                paren += 1
            elif ch == ")":
                paren = max(0, paren - 1)
            elif ch == "[":
                bracket += 1
            elif ch == "]":
                bracket = max(0, bracket - 1)
            elif ch == '"' and delim != '"':
                quoted = not quoted
                continue
            elif ch == "\\":
                if i < n:
                    part.append(data[i])
                    i += 1
                continue
            elif ch == delim and not (paren or quoted or bracket):
                ended_on_delim = True
                break
            part.append(ch)
        out.append("".join(part))
    if i < n or ended_on_delim:
        out.append(data[i:])
    return out


def mset_pairs(data: str) -> list[tuple[str, str]]:
    """The variables ``MSet(data)`` sets, in order (``pbx_builtin_setvar_multiple``,
    main/pbx_variables.c): up to 99 comma-separated items, each split on its first ``=``;
    an item without ``=`` is skipped (Asterisk logs a warning)."""
    pairs: list[tuple[str, str]] = []
    for item in app_args(data, ",", 99):
        name_value = app_args(item, "=", 2)
        if len(name_value) == 2:
            pairs.append((name_value[0], name_value[1]))
    return pairs


def parse_command(line: str) -> Command | UnknownCommand:
    """Parse one command line received from a FastAGI server (the simulator's side).

    As in ``run_agi``, only the final LF is removed: a CR before it stays in the last
    word, so ``ANSWER\\r`` names no command and Asterisk answers 510.
    """
    line = line.removesuffix("\n")
    if len(line) <= _CACHED_LINE_MAX:
        return _parse_command_cached(line)
    return _parse_command(line)


#: A server sends the same few lines over and over (prompts, variable names); the results are
#: immutable, so short lines are parsed once. Long ones (an 8 KiB VERBOSE) are not kept.
_CACHED_LINE_MAX: Final = 200


def _parse_command(line: str) -> Command | UnknownCommand:
    words = split_args(line)
    if words:
        # strcasecmp folds ASCII only
        upper = [w.upper() if w.isascii() else w for w in words[:_LONGEST_NAME]]
        for n in range(len(upper), 0, -1):  # the longest name wins, as in KNOWN_COMMANDS' order
            joined = _JOINED_NAMES.get(tuple(upper[:n]))
            if joined is not None:
                return Command(joined, tuple(words[n:]))
    return UnknownCommand(line, tuple(words))


_parse_command_cached: Final = functools.lru_cache(maxsize=1024)(_parse_command)


def encode_reply(
    code: int = 200,
    result: str | int | None = None,
    data: str | None = None,
    endpos: int | None = None,
    usage: Iterable[str] = (),
) -> bytes:
    """Encode a reply as Asterisk writes it (``agi_handle_command`` in ``res/res_agi.c``).

    200 replies carry ``result=`` and optionally ``(data)`` and ``endpos=``; 510 and 511
    carry Asterisk's fixed texts; 520 wraps the usage lines between its two markers, or,
    without usage, is Asterisk's one-line ``520 Invalid command syntax.  Proper usage not
    available.`` Anything that would break the line framing is refused
    (:class:`LocalProtocolError`): CR, LF or NUL in any part, white space in ``result``,
    a usage line a reader would take for the closing ``520 `` line.
    """
    if code == 200:
        res = "" if result is None else str(result)
        if _NOT_ONE_WORD.search(res):
            raise LocalProtocolError(f"AGI result must be one word, got {res!r}")
        parts = [f"200 result={res}"]
        if data is not None:
            _check_reply_text(data)
            parts.append(f"({data})")
        if endpos is not None:
            parts.append(f"endpos={int(endpos)}")
        text = " ".join(parts) + "\n"
    elif code == 510:
        text = TEXT_510 + "\n"
    elif code == 511:
        text = TEXT_511 + "\n"
    elif code == 520:
        lines = list(usage)
        for line in lines:
            _check_reply_text(line)
            if line.startswith("520 "):
                raise LocalProtocolError(f"520 usage line would end the reply early: {line[:40]!r}")
        if lines:
            text = "".join([USAGE_START + "\n", *(f"{u}\n" for u in lines), USAGE_END + "\n"])
        else:
            text = TEXT_520_NO_USAGE + "\n"
    else:
        raise LocalProtocolError(f"unsupported AGI reply code {code}")
    return _utf8(text)


_NOT_ONE_WORD: Final = re.compile(r"[\s\0]")  # \s is str.isspace()'s set (Py_UNICODE_ISSPACE)


def _check_reply_text(text: str) -> None:
    if "\r" in text or "\n" in text or "\0" in text:
        raise LocalProtocolError(f"AGI reply text contains CR, LF or NUL: {text[:40]!r}")


def encode_environment(variables: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The environment block Asterisk sends first, terminated by an empty line."""
    items = variables.items() if isinstance(variables, Mapping) else variables
    out = []
    for key, value in items:
        if not key.startswith("agi_") or any(c in key for c in ": \r\n"):
            raise LocalProtocolError(f"invalid AGI environment key {key!r}")
        if "\r" in value or "\n" in value:
            raise LocalProtocolError(f"AGI environment {key!r}: value contains CR or LF")
        out.append(f"{key}: {value}\n")
    out.append("\n")
    return _utf8("".join(out))


# -- line reader shared by both sides ------------------------------------------------------------


class _LineReader:
    """Bounded LF line splitter.

    ``max_line`` bounds a line's content, its line end excluded. With ``keep_cr`` false a
    CR before the LF is dropped (we accept CRLF from Asterisk); Asterisk's own reader
    keeps it, and so does the simulator's side.
    """

    __slots__ = ("_buf", "_eof", "_keep_cr", "_overlong", "_scanned", "max_line")

    def __init__(self, max_line: int, *, keep_cr: bool = False) -> None:
        self.max_line = max_line
        self._keep_cr = keep_cr
        self._buf = bytearray()
        self._scanned = 0  # bytes at the head of the buffer known to hold no LF
        self._eof = False
        self._overlong = False

    def feed(self, data: bytes | memoryview) -> None:
        if not data:
            self._eof = True
        else:
            self._buf += data

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def buffered(self) -> bytes:
        return bytes(self._buf)

    def peek_block(self) -> tuple[str, int] | None:
        """The lines up to the first empty one, decoded, and the bytes they take with it.

        Only when they are all buffered, hold no CR and fit in ``max_line`` bytes all
        together (so no line can be over-long); None otherwise. Nothing is consumed:
        :meth:`skip` does that once the caller has accepted the text.
        """
        buf = self._buf
        if self._overlong or buf[:1] == b"\n":
            return None
        end = buf.find(b"\n\n")
        if end < 0 or end + 1 > self.max_line or buf.find(b"\r", 0, end) >= 0:
            return None
        return buf[: end + 1].decode("utf-8", "replace"), end + 2

    def skip(self, size: int) -> None:
        del self._buf[:size]
        self._scanned = 0

    def line(self) -> str | None:
        """The next complete line, or None. Raises for an over-long line (then skips it)."""
        buf = self._buf
        end = buf.find(b"\n", self._scanned)
        if end < 0 or self._overlong:
            if not buf:  # nothing buffered: what follows every reply handled
                return None
            return self._no_line(end)
        stop = end - 1 if not self._keep_cr and end and buf[end - 1] == 13 else end  # CRLF
        if stop > self.max_line:
            del buf[: end + 1]
            self._scanned = 0
            raise RemoteProtocolError(f"AGI line exceeds {self.max_line} bytes")
        text = buf[:stop].decode("utf-8", "replace")
        del buf[: end + 1]
        self._scanned = 0
        return text

    def _no_line(self, end: int) -> str | None:
        buf = self._buf
        if self._overlong:  # skip the rest of a line already reported as too long
            if end < 0:
                buf.clear()
                self._scanned = 0
                return None
            del buf[: end + 1]
            self._overlong = False
            self._scanned = 0
            return self.line()
        if len(buf) > self.max_line + (0 if self._keep_cr else 1):
            buf.clear()
            self._scanned = 0
            self._overlong = True
            raise RemoteProtocolError(f"AGI line exceeds {self.max_line} bytes")
        self._scanned = len(buf)
        return None


_REPLY_200 = re.compile(r"(\S*)(?: \((.*)\))?(?: endpos=(-?\d+))?(.*)")  # after "200 result="
_ENDPOS = re.compile(r"(?:^| )endpos=(-?\d+)(?= |$)")


def _reply_code(line: str) -> int | None:
    """The status code of a reply line (three digits, then a space, a dash or nothing)."""
    code = line[:3]
    if len(code) == 3 and code.isascii() and code.isdigit() and (len(line) == 3 or line[3] in " -"):
        return int(code)
    return None


def parse_reply_line(line: str) -> Reply:
    """Parse a one-line reply (anything but the 520 block).

    Beyond ``result=``, ``(data)`` and ``endpos=``, a 200 reply may carry more text
    (``200 result=1 (digit) digit=5 endpos=0`` from SPEECH RECOGNIZE, ``200 result=0
    Gosub complete``): it stays in ``text``. The data runs to the last ``)`` so that a
    variable's value may itself hold parentheses.
    """
    if line.startswith("200 result="):
        return _parse_200(line)
    code = _reply_code(line)
    if code is None:
        raise RemoteProtocolError(f"malformed AGI reply: {line[:80]!r}")
    if code == 200:
        raise RemoteProtocolError(f"AGI 200 reply without result=: {line[:80]!r}")
    return _new_reply(code, None, None, None, line)


def _parse_200(line: str) -> Reply:
    """A line starting with ``200 result=``."""
    rest = line[11:]
    if " " not in rest:  # "200 result=1": most replies
        return _new_reply(200, rest, None, None, line)
    m = _REPLY_200.fullmatch(rest)
    assert m is not None  # every group is optional
    result, data, endpos, rest = m.groups()
    if endpos is None and rest:
        found = _ENDPOS.search(rest)
        endpos = found.group(1) if found else None
    return _new_reply(200, result, data, int(endpos) if endpos is not None else None, line)


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    return cast(Callable[[object, Any], None], vars(cls)[name].__set__)


_set_code, _set_result, _set_data, _set_endpos, _set_text, _set_usage = (
    _slot_setter(Reply, name) for name in ("code", "result", "data", "endpos", "text", "usage")
)


def _new_reply(code: int, result: str | None, data: str | None, endpos: int | None, text: str) -> Reply:
    """A :class:`Reply` built through its slot descriptors: the frozen dataclass's
    ``__init__`` goes through ``object.__setattr__`` six times and costs twice as much."""
    reply = object.__new__(Reply)
    _set_code(reply, code)
    _set_result(reply, result)
    _set_data(reply, data)
    _set_endpos(reply, endpos)
    _set_text(reply, text)
    _set_usage(reply, ())
    return reply


class ServerState(Enum):
    """States of the controller's side of a FastAGI session."""

    ENVIRONMENT = "environment"  # reading the agi_* block
    IDLE = "idle"  # may send a command
    AWAITING_REPLY = "awaiting_reply"  # one command is outstanding
    USAGE = "usage"  # inside a multi-line 520 reply
    CLOSED = "closed"  # the peer closed the connection

    # Members are singletons compared by identity; Enum's own __hash__ (the name's hash,
    # written in Python) would make every transition lookup pay a Python call.
    __hash__ = object.__hash__


#: Which state each input moves the server side to (h11's "state machine as data").
_SERVER_TRANSITIONS: Final[dict[tuple[ServerState, str], ServerState]] = {
    (ServerState.ENVIRONMENT, "env_end"): ServerState.IDLE,
    (ServerState.IDLE, "send"): ServerState.AWAITING_REPLY,
    (ServerState.AWAITING_REPLY, "reply"): ServerState.IDLE,
    (ServerState.AWAITING_REPLY, "usage_start"): ServerState.USAGE,
    (ServerState.USAGE, "usage_end"): ServerState.IDLE,
}

_HANGUP_NOTICE: Final = HangupNotice()


class AGIServerConnection:
    """The controller's side of one FastAGI session.

    Feed bytes from Asterisk with :meth:`receive_data`; :meth:`next_event` yields the
    :class:`AGIEnvironment` once, then a :class:`Reply` per command sent with
    :meth:`send` (one at a time), and :class:`HangupNotice` whenever Asterisk says the
    channel hung up. ``CLOSED`` after end of stream.

    A line that arrives while a command is outstanding is its reply if it starts with a
    status code, even a malformed one (then :class:`RemoteProtocolError` is raised, the
    command counts as answered), so that no later reply shifts onto the wrong command; a
    line without a code answers nothing and raises. GOSUB's provisional ``100 result=0
    Trying...`` is skipped: the reply follows it.
    """

    __slots__ = (
        "_env",
        "_lines",
        "_max_env_lines",
        "_max_usage_lines",
        "_usage",
        "environment",
        "hung_up",
        "pending",
        "state",
    )

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_env_lines: int = DEFAULT_MAX_ENV_LINES,
        max_usage_lines: int = DEFAULT_MAX_USAGE_LINES,
    ) -> None:
        self.state = ServerState.ENVIRONMENT
        self.hung_up = False
        self.environment: AGIEnvironment | None = None
        self.pending: Command | None = None
        self._lines = _LineReader(max_line)
        self._env: dict[str, str] = {}
        self._usage: list[str] = []
        self._max_env_lines = max_env_lines
        self._max_usage_lines = max_usage_lines

    def _move(self, what: str) -> None:
        try:
            self.state = _SERVER_TRANSITIONS[(self.state, what)]
        except KeyError:
            raise RemoteProtocolError(f"unexpected {what} in state {self.state.value}") from None

    def receive_data(self, data: bytes | memoryview) -> None:
        """Buffer bytes from Asterisk (copied); ``b""`` means it closed the connection."""
        self._lines.feed(data)

    @property
    def trailing_data(self) -> bytes:
        """Bytes received but not yet read as a line.

        Once :meth:`next_event` has returned NEED_DATA this is at most ``max_line + 1``
        bytes (a line's content and the CR of its CRLF), whatever Asterisk sent.
        """
        return self._lines.buffered

    def send(self, command: Command, encoded: bytes | None = None) -> bytes:
        """Bytes to write for ``command``. Only one command may be outstanding.

        ``encoded``: ``command.encode()`` already worked out by a caller that sends the same
        commands over and over (it is what is returned).
        """
        if self.state is not ServerState.IDLE:
            raise LocalProtocolError(f"cannot send {command.name} in state {self.state.value}")
        data = command.encode() if encoded is None else encoded
        self.state = ServerState.AWAITING_REPLY  # _SERVER_TRANSITIONS[IDLE, "send"]
        self.pending = command
        return data

    def next_event(self) -> AGIEnvironment | Reply | HangupNotice | _Sentinel:
        """The next event, ``NEED_DATA`` or ``CLOSED``."""
        # Fast paths for what nearly every session is made of: a ``200 result=`` reply to the
        # outstanding command, and a whole environment block arriving in one segment. Anything
        # else, or anything they do not vouch for, takes the general path below.
        state = self.state
        if state is ServerState.AWAITING_REPLY:
            lines = self._lines
            if not lines._buf and not lines._eof:
                return NEED_DATA  # every reply handled so far: the usual end of a read
            line = lines.line()
            if line is None:
                if not lines._eof:
                    return NEED_DATA
            else:
                if line.startswith("200 result="):
                    self.state = ServerState.IDLE  # _SERVER_TRANSITIONS[AWAITING_REPLY, "reply"]
                    self.pending = None
                    return _parse_200(line)
                event = self._reply(line)
                if event is not None:
                    return event
        elif state is ServerState.ENVIRONMENT and not self._env:
            env = self._environment_block()
            if env is not None:
                return env
        return self._next_event()

    def _next_event(self) -> AGIEnvironment | Reply | HangupNotice | _Sentinel:
        lines = self._lines
        while True:
            if self.state is ServerState.CLOSED:
                return CLOSED
            line = lines.line()
            if line is None:
                if lines.eof:
                    self._close()
                    continue
                return NEED_DATA
            event: AGIEnvironment | Reply | HangupNotice | None
            if self.state is ServerState.AWAITING_REPLY:
                event = self._reply(line)
            else:
                event = self._other(line)
            if event is not None:
                return event

    def _close(self) -> None:
        state = self.state
        self.state = ServerState.CLOSED
        if state is ServerState.ENVIRONMENT:
            raise RemoteProtocolError(
                f"connection closed inside the environment block ({len(self._env)} lines)"
            )
        if state is ServerState.USAGE:
            raise RemoteProtocolError("connection closed inside a 520 usage reply")

    def _reply(self, line: str) -> Reply | HangupNotice | None:
        """A line while a command is outstanding: the hot path."""
        code: int | None
        if line.startswith("200 result="):
            code = 200
        elif line == HANGUP_LINE:
            self.hung_up = True
            return _HANGUP_NOTICE
        elif line.startswith("520-"):
            self._move("usage_start")
            return None
        else:
            code = _reply_code(line)
            if code is None:
                # Asterisk's replies all start with a status code: this line answers
                # nothing, and the reply is still to come.
                raise RemoteProtocolError(f"AGI line is not a reply: {line[:80]!r}")
            if code == 100:
                return None  # provisional (GOSUB's "100 result=0 Trying..."); the reply follows
        # From here on the line is the reply, even if malformed.
        self._move("reply")
        self.pending = None
        reply = _parse_200(line) if line.startswith("200 result=") else parse_reply_line(line)
        if code == 511:
            self.hung_up = True
        return reply

    def _environment_block(self) -> AGIEnvironment | None:
        """The environment read in one go when all of it is buffered and every line is plain
        (``agi_name: value``); None leaves the bytes to the line-by-line path, which also
        reports what is wrong with them. A line is split at its first ``": "``, as there."""
        found = self._lines.peek_block()
        if found is None:
            return None
        text, size = found
        lines = text[:-1].split("\n")
        if len(lines) > self._max_env_lines or not (
            text.startswith("agi_") and text.count("\nagi_") == len(lines) - 1  # every line
        ):
            return None
        try:
            variables = dict([line.split(": ", 1) for line in lines])
        except ValueError:  # a line without ": "
            return None
        self._lines.skip(size)
        self.environment = AGIEnvironment(variables)
        self._move("env_end")
        return self.environment

    def _other(self, line: str) -> AGIEnvironment | Reply | HangupNotice | None:
        state = self.state
        if state is ServerState.ENVIRONMENT:
            if line == "":
                self.environment = AGIEnvironment(dict(self._env))
                self._move("env_end")
                return self.environment
            key, sep, value = line.partition(": ")
            if not sep:
                key, sep, value = line.partition(":")
            if not sep or not key.startswith("agi_"):
                raise RemoteProtocolError(f"malformed AGI environment line: {line[:80]!r}")
            if len(self._env) >= self._max_env_lines:
                raise RemoteProtocolError(f"AGI environment exceeds {self._max_env_lines} lines")
            self._env[key] = value
            return None
        if state is ServerState.USAGE:
            if line.startswith("520 "):
                self._move("usage_end")
                self.pending = None
                usage, self._usage = tuple(self._usage), []
                return Reply(520, text=USAGE_START, usage=usage)
            if len(self._usage) >= self._max_usage_lines:
                raise RemoteProtocolError(f"520 usage exceeds {self._max_usage_lines} lines")
            self._usage.append(line)
            return None
        if line == HANGUP_LINE:
            self.hung_up = True
            return _HANGUP_NOTICE
        raise RemoteProtocolError(f"unsolicited AGI line: {line[:80]!r}")


class AGIClientConnection:
    """Asterisk's side of a FastAGI session, as the simulator plays it.

    :meth:`start` gives the environment block to send; then each complete command line
    from the server comes out of :meth:`next_event` as a :class:`Command` (or an
    :class:`UnknownCommand`, answered 510) and :meth:`reply` encodes the answer.

    Lines are read as ``run_agi`` reads them: only the LF ends a line (a CR stays in the
    command) and a command line is at most ``AGI_BUF_LEN - 2`` bytes before its LF.
    Asterisk would read the rest of a longer line as a second command; here it is
    refused with :class:`RemoteProtocolError`.
    """

    __slots__ = ("_lines", "awaiting_reply", "closed", "started")

    def __init__(self, *, max_line: int = AGI_BUF_LEN - 2) -> None:
        self._lines = _LineReader(max_line, keep_cr=True)
        self.started = False
        self.awaiting_reply = False
        self.closed = False

    def start(self, environment: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
        if self.started:
            raise LocalProtocolError("environment already sent")
        self.started = True
        return encode_environment(environment)

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the server; ``b""`` means it closed the connection."""
        self._lines.feed(data)

    @property
    def trailing_data(self) -> bytes:
        """Bytes received but not yet read as a command.

        Bounded like the server side's while no command awaits a reply; while one does,
        further commands are not read (Asterisk runs one at a time), so a server that
        writes on without waiting fills this buffer, as it would fill Asterisk's socket.
        """
        return self._lines.buffered

    def next_event(self) -> Command | UnknownCommand | _Sentinel:
        """The next command from the server, ``NEED_DATA`` or ``CLOSED``."""
        if self.closed:
            return CLOSED
        if self.awaiting_reply:
            return NEED_DATA
        line = self._lines.line()
        if line is None:
            if self._lines.eof:
                self.closed = True
                return CLOSED
            return NEED_DATA
        self.awaiting_reply = True
        return parse_command(line)

    def reply(
        self,
        code: int = 200,
        result: str | int | None = None,
        data: str | None = None,
        endpos: int | None = None,
        usage: Iterable[str] = (),
        *,
        hangup_first: bool = False,
    ) -> bytes:
        """Encode the reply to the pending command, optionally after the inline HANGUP."""
        if not self.awaiting_reply:
            raise LocalProtocolError("no command is waiting for a reply")
        out = encode_reply(code, result, data, endpos, usage)
        self.awaiting_reply = False
        return (HANGUP_LINE + "\n").encode() + out if hangup_first else out

    def hangup_notice(self) -> bytes:
        """The unsolicited ``HANGUP`` line, written when the channel hangs up between commands.

        ``run_agi`` writes it at the top of its loop, before reading the next command;
        when the server has already sent that command, use ``reply(...,
        hangup_first=True)`` instead, which is how the bytes then arrive.
        """
        if self.awaiting_reply:
            raise LocalProtocolError("a command is waiting: use reply(..., hangup_first=True)")
        return (HANGUP_LINE + "\n").encode()
