"""Asterisk ``queue_log`` lines: parse them into entries and format entries back, exactly.

The queue_log is Asterisk's own account of what happened in its queues, and the reference
that call-centre statistics are judged against. We read it to check our statistics engine
against Asterisk (the recorded ``tests/fixtures/asterisk/*/queue_log``) and the simulator
writes it in the same shape, so both directions must agree with Asterisk to the byte.

Line format (``main/logger.c``, ``ast_queue_log``)::

    snprintf("%ld|%s|%s|%s|%s|", time(NULL), callid, queuename, agent, event) + data

i.e. ``epoch|callid|queue|agent|EVENT|data1|data2|...``. Asterisk always writes the ``|``
after the event, so there is at least one data field, possibly empty (``QUEUESTART|``,
``UNPAUSE|``). The data part is split on ``|`` like the queue_log readers do, so empty
fields are kept (``ENTERQUEUE||0611000001|1``: no URL). ``callid`` is the caller
channel's Uniqueid (the ``;2`` half of a Local caller), or ``NONE`` / ``MANAGER`` / ``CLI``
/ ``REALTIME`` for member administration; ``agent`` is a member name, an interface or
``NONE``; ``queue`` is ``NONE`` for ``QUEUESTART`` and ``PAUSEALL`` / ``UNPAUSEALL``.

This module is pure apart from :func:`read_queue_log`, which only reads a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "EVENT_FIELDS",
    "QueueLogEntry",
    "QueueLogFormatError",
    "format_queue_log",
    "parse_queue_log",
    "parse_queue_log_line",
    "read_queue_log",
]

#: Names of each event's data fields, in order, as Asterisk 22 writes them. Durations are
#: whole seconds computed as differences of ``time(NULL)`` (so +-1 s against real time)
#: unless the name ends in ``_ms``. Events seen in the recordings (FACTS.md) first, then the
#: other ones app_queue writes. Checked against ``apps/app_queue.c`` of asterisk/asterisk
#: (commit f0c1c1a7b79b, Aug 2026): EXITEMPTY is written in two places, ``wait_our_turn()``
#: and ``queue_exec()``, both as ``"%d|%d|%ld", qe->pos, qe->opos, time(NULL) - qe->start``
#: -- position, original position, wait -- the same fields as ABANDON and EXITWITHTIMEOUT.
EVENT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    # Asterisk (app_queue) start; the single data field is empty.
    "QUEUESTART": ("",),
    # Caller entered the queue. A 4th field, the caller-id name, is added when queues.conf
    # has ``log_caller_id_name = yes`` (not the case in the recordings).
    "ENTERQUEUE": ("url", "callerid", "position"),
    # A member answered: wait in queue (s), Uniqueid of the member channel bridged to the
    # caller (the ``;1`` half of a Local member), ring time of that attempt (s).
    "CONNECT": ("holdtime", "bridged_uniqueid", "ringtime"),
    # Bridged call ended by the member / by the caller: hold (s), talk (s), position the
    # caller entered at.
    "COMPLETEAGENT": ("holdtime", "talktime", "origposition"),
    "COMPLETECALLER": ("holdtime", "talktime", "origposition"),
    # Caller hung up while waiting: position at that time, entry position, wait (s).
    "ABANDON": ("position", "origposition", "waittime"),
    # Queue timeout reached (Queue() timeout argument, or option n after one cycle).
    "EXITWITHTIMEOUT": ("position", "origposition", "waittime"),
    # Caller pressed a key of the queue's exit context.
    "EXITWITHKEY": ("key", "position", "origposition", "waittime"),
    # Left because the queue became empty (leavewhenempty); see the app_queue.c note above.
    "EXITEMPTY": ("position", "origposition", "waittime"),
    # A member rang and did not answer within the member timeout (ms, not s).
    "RINGNOANSWER": ("ringtime_ms",),
    # A ringing member was cancelled (caller gave up, pressed a key, or another member
    # answered): how long it rang (ms).
    "RINGCANCELED": ("ringtime_ms",),
    # Member (un)paused in one queue; callid NONE, agent = member name (which is the
    # interface when the member has no name). UNPAUSE has an empty reason unless one was given.
    "PAUSE": ("reason",),
    "UNPAUSE": ("reason",),
    # QueuePause without a queue: one line with callid and queue NONE, agent = member name,
    # before the per-queue PAUSE/UNPAUSE lines.
    "PAUSEALL": ("reason",),
    "UNPAUSEALL": ("reason",),
    # Dynamic member added (``PAUSED`` if added paused, else empty) / removed (empty);
    # callid MANAGER, CLI, REALTIME or the channel's Uniqueid; agent = interface (member
    # name with ``log_membername_as_agent = yes``).
    "ADDMEMBER": ("paused",),
    "REMOVEMEMBER": ("",),
    # QueuePenalty: the new penalty; callid NONE, agent = interface.
    "PENALTY": ("penalty",),
    # -- not seen in the recordings, from apps/app_queue.c --
    "RINGINUSE": ("ringinuse",),
    "BLINDTRANSFER": ("extension", "context", "holdtime", "talktime", "origposition"),
    "WITHDRAW": ("position", "origposition", "waittime", "withdraw_info"),
    "AGENTDUMP": ("",),
    "SYSCOMPAT": ("",),
    "AGENTLOGIN": ("channel",),
    "AGENTLOGOFF": ("channel", "logintime"),
    # ATTENDEDTRANSFER is left out on purpose: its first part is a transfer description
    # that itself contains ``|`` (``BRIDGE|<bridge id>``, ``APP|<app>``, ``LINK|...``), so
    # the number of data fields varies.
}

_EPOCH: Final = re.compile(r"0|[1-9][0-9]*")


class QueueLogFormatError(ValueError):
    """A queue_log line does not have Asterisk's shape.

    ``line`` is the 1-based line number when parsing a file (0 for a lone line) and
    ``source`` names the file, so the bad line can be found at once.
    """

    def __init__(self, reason: str, text: str, *, line: int = 0, source: str | None = None) -> None:
        where = f"{source or '<queue_log>'}:{line}: " if line else ""
        super().__init__(f"{where}{reason}: {text!r}")
        self.reason = reason
        self.text = text
        self.line = line
        self.source = source


@dataclass(frozen=True, slots=True)
class QueueLogEntry:
    """One queue_log line. ``data`` holds every field after the event, empty ones included.

    Construction checks that the entry can be written as one line that parses back to
    itself: no ``|`` or line break in the fixed fields, no line break in data, and at least
    one data field (Asterisk always writes one; use ``("",)`` for an event without data).
    """

    time: int
    callid: str
    queue: str
    agent: str
    event: str
    data: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.time < 0:
            raise ValueError(f"queue_log time must be a non-negative epoch, got {self.time}")
        for name in ("callid", "queue", "agent", "event"):
            value: str = getattr(self, name)
            if "|" in value or "\n" in value or "\r" in value:
                raise ValueError(f"queue_log {name} cannot contain '|' or a line break: {value!r}")
        if not self.event:
            raise ValueError("queue_log event cannot be empty")
        if not self.data:
            raise ValueError("queue_log data needs at least one field (Asterisk writes 'EVENT|'); use ('',)")
        for value in self.data:
            if "|" in value or "\n" in value or "\r" in value:
                raise ValueError(f"queue_log data field cannot contain '|' or a line break: {value!r}")

    def format(self) -> str:
        """The line as Asterisk writes it, without the newline."""
        return "|".join((str(self.time), self.callid, self.queue, self.agent, self.event, *self.data))

    def named(self) -> dict[str, str]:
        """Data fields by name per :data:`EVENT_FIELDS`; unknown or extra ones as ``data<n>``.

        ``n`` is 1-based, matching the ``data1``..``data5`` columns of realtime queue_log.
        """
        names = EVENT_FIELDS.get(self.event, ())
        out: dict[str, str] = {}
        for i, value in enumerate(self.data):
            name = names[i] if i < len(names) and names[i] else f"data{i + 1}"
            out[name] = value
        return out

    def int_field(self, name: str) -> int:
        """A named numeric data field as an int (raises KeyError / ValueError if absent / not one)."""
        return int(self.named()[name])


def parse_queue_log_line(text: str, *, line: int = 0, source: str | None = None) -> QueueLogEntry:
    """Parse one line (a trailing ``\\n`` is allowed and ignored).

    Strict on purpose: a line that would not format back to itself byte for byte is an
    error, so a statistics mismatch can never come from a silently "fixed" line.
    """
    body = text[:-1] if text.endswith("\n") else text
    if "\n" in body or "\r" in body:
        raise QueueLogFormatError("line break inside a queue_log line", text, line=line, source=source)
    parts = body.split("|")
    if len(parts) < 6:
        raise QueueLogFormatError(
            "expected at least 6 '|'-separated fields (time|callid|queue|agent|EVENT|data)",
            text,
            line=line,
            source=source,
        )
    epoch, callid, queue, agent, event, *data = parts
    if not _EPOCH.fullmatch(epoch):
        raise QueueLogFormatError("time is not an integer epoch", text, line=line, source=source)
    if not event:
        raise QueueLogFormatError("empty event name", text, line=line, source=source)
    return QueueLogEntry(int(epoch), callid, queue, agent, event, tuple(data))


def parse_queue_log(text: str, *, source: str | None = None) -> list[QueueLogEntry]:
    """Parse a whole queue_log. Every line must end with ``\\n``, as Asterisk writes them.

    A missing final newline means a line cut short (the file was copied while Asterisk was
    writing), whose last field could be truncated, so it is an error.
    """
    if not text:
        return []
    lines = text.split("\n")
    last = lines.pop()
    if last:
        raise QueueLogFormatError(
            "last line does not end with a newline", last, line=len(lines) + 1, source=source
        )
    return [parse_queue_log_line(ln, line=i, source=source) for i, ln in enumerate(lines, 1)]


def format_queue_log(entries: Iterable[QueueLogEntry]) -> str:
    """Entries as queue_log text, one ``\\n``-terminated line each (inverse of parse_queue_log)."""
    return "".join(e.format() + "\n" for e in entries)


def read_queue_log(path: str | os.PathLike[str]) -> list[QueueLogEntry]:
    """Read and parse a queue_log file (UTF-8, newlines untranslated)."""
    p = Path(path)
    with p.open(encoding="utf-8", newline="") as f:
        return parse_queue_log(f.read(), source=str(p))
