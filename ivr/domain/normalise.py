"""Small, pure helpers that turn Asterisk's raw AMI field values into typed values.

They exist because Asterisk is inconsistent in ways that silently corrupt statistics when
read naively (see tests/fixtures/asterisk/FACTS.md):

* the same member is ``Name``/``Location`` in a QueueStatus list item but
  ``MemberName``/``Interface`` in the QueueMember* events;
* ``AgentRingNoAnswer`` gives ``RingTime`` in milliseconds while ``AgentConnect`` gives it in
  seconds;
* channel names encode the Local-channel half (``;1``/``;2``) the call identity depends on;
* numbers arrive as text and occasionally as junk (``<unknown>``, empty strings).

Keeping them in one module gives each trap one tested answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ivr.protocol.agi import UnknownCommand, mset_pairs, parse_command

#: AMI ``ChannelState`` value of an answered channel (``AST_STATE_UP``, include/asterisk/channelstate.h).
CHANNEL_STATE_UP: Final = "6"

#: Caller-id placeholder Asterisk prints when a number is not known.
UNKNOWN_CALLERID: Final = "<unknown>"

#: Device states of ``QueueMemberStatus``/``QueueMember`` ``Status`` (include/asterisk/devicestate.h).
DEVICE_STATES: Final[dict[int, str]] = {
    0: "unknown",
    1: "not_inuse",
    2: "inuse",
    3: "busy",
    4: "invalid",
    5: "unavailable",
    6: "ringing",
    7: "ringinuse",
    8: "onhold",
}


def to_int(value: str | None, default: int = 0) -> int:
    """An AMI integer field, or ``default`` when absent or not a number.

    A malformed number in one event must not stop the tracker (the controller processes
    tens of thousands of events a second and one bad field would otherwise kill the stream).
    """
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        try:
            return int(float(value))
        except ValueError:
            return default


def to_bool(value: str | None) -> bool:
    """AMI booleans: ``1``/``0`` in queue events, ``true``/``yes`` in some others."""
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def callerid(value: str | None) -> str:
    """A caller-id number, ``""`` when Asterisk says ``<unknown>`` or gives nothing."""
    if not value or value == UNKNOWN_CALLERID:
        return ""
    return value


def parse_duration(value: str | None) -> int:
    """``CoreShowChannel`` ``Duration`` (``HH:MM:SS``, hours may exceed 24) in seconds; 0 if malformed."""
    if not value:
        return 0
    parts = value.split(":")
    if len(parts) != 3:
        return to_int(value)
    try:
        h, m, s = (int(p) for p in parts)
    except ValueError:
        return 0
    return h * 3600 + m * 60 + s


def local_half(channel: str) -> tuple[str, int]:
    """Split a Local channel name into its pair base and half: ``("Local/100@public-00000000", 2)``.

    Non-Local channels give ``(channel, 0)``. Both halves of a Local channel share the base,
    which is how the tracker ties the ``;1`` (the originated side) to the ``;2`` (the side
    that runs the dialplan and that app_queue sees as the caller).
    """
    if channel.startswith("Local/") and len(channel) > 2 and channel[-2] == ";" and channel[-1] in "12":
        return channel[:-2], int(channel[-1])
    return channel, 0


def app_args(appdata: str | None) -> list[str]:
    """Dialplan application arguments as Newexten's ``AppData`` shows them (already substituted).

    Asterisk separates arguments with ``,`` (``|`` was the pre-1.6 separator, still accepted
    by some applications); quoting is not needed for the arguments we read.
    """
    if not appdata:
        return []
    return [a.strip() for a in appdata.split(",")]


def queue_app_target(appdata: str | None) -> tuple[str, int | None]:
    """``Queue(queuename,options,URL,announceoverride,timeout,...)`` -> ``(queue, timeout_s)``.

    The 5th argument is the Queue() timeout in seconds (apps/app_queue.c, queue_exec); the
    recordings show it substituted in ``AppData: support,c,,,10``. It is the only place the
    AMI stream names the queue of a caller that never joins (JOINEMPTY sends no queue event).
    """
    args = app_args(appdata)
    queue = args[0] if args else ""
    timeout: int | None = None
    if len(args) > 4 and args[4]:
        t = to_int(args[4], -1)
        timeout = t if t >= 0 else None
    return queue, timeout


def agi_script(appdata: str | None) -> str:
    """The script name of an ``AGI(agi://host:port/script?query,args)`` step: ``script``.

    Used for the IVR path: ``agi://127.0.0.1:4573/ivr?service=caf`` -> ``ivr``,
    ``agi://127.0.0.1:4573/after-queue,CONTINUE`` -> ``after-queue``.
    """
    if not appdata:
        return ""
    url = appdata.split(",", 1)[0].strip()
    if "://" in url:
        url = url.split("://", 1)[1]
        url = url.split("/", 1)[1] if "/" in url else ""
    return url.split("?", 1)[0]


def agi_set_variable(command: str | None) -> tuple[str, str] | None:
    """``SET VARIABLE name value`` from an ``AGIExecStart`` ``Command`` -> ``(name, value)``.

    res_agi parses the command line like a shell (quotes group words): a value with spaces
    arrives quoted. Returns None for any other command or a command without a value.
    """
    if not command or not command[:13].upper().startswith("SET VARIABLE "):
        return None
    rest = command[13:].strip()
    name, _, value = rest.partition(" ")
    if not name:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return name, value


def agi_set_variables(command: str | None) -> list[tuple[str, str]]:
    """The variables an ``AGIExecStart`` ``Command`` sets: ``SET VARIABLE name value``, or
    ``EXEC MSet a=1,b=2`` (how our IVR ends a call, ``ivr.domain.ivr_ops.set_variables``),
    parsed as res_agi.c and MSet parse them."""
    single = agi_set_variable(command)
    if single is not None:
        return [single]
    if not command or not command[:10].upper().startswith("EXEC MSET "):
        return []
    parsed = parse_command(command)
    if isinstance(parsed, UnknownCommand) or len(parsed.args) < 2:
        return []
    return mset_pairs(parsed.args[1])


@dataclass(frozen=True, slots=True)
class MemberFields:
    """A queue member's state, whichever message carried it."""

    queue: str
    interface: str
    name: str
    state_interface: str
    membership: str
    penalty: int
    calls_taken: int
    last_call: int
    status: int
    paused: bool
    paused_reason: str
    in_call: bool | None  #: None when the source cannot be trusted (events always say 0)
    wrapuptime: int


def member_fields(f: Mapping[str, str], *, from_list_item: bool) -> MemberFields:
    """Read a member from a ``QueueMember`` list item or a ``QueueMember*`` event.

    Trap (member_admin): the list item names the member ``Name``/``Location``, the events
    ``MemberName``/``Interface``. Trap (answered, concurrent): the events always carry
    ``InCall: 0`` even during a call, so ``in_call`` is reported only for list items, whose
    ``InCall`` is right.
    """
    if from_list_item:
        interface = f.get("Location") or f.get("Interface") or ""
        name = f.get("Name") or f.get("MemberName") or interface
        in_call: bool | None = to_bool(f.get("InCall"))
    else:
        interface = f.get("Interface") or f.get("Location") or ""
        name = f.get("MemberName") or f.get("Name") or interface
        in_call = None
    return MemberFields(
        queue=f.get("Queue") or "",
        interface=interface,
        name=name,
        state_interface=f.get("StateInterface") or interface,
        membership=f.get("Membership") or "",
        penalty=to_int(f.get("Penalty")),
        calls_taken=to_int(f.get("CallsTaken")),
        last_call=to_int(f.get("LastCall")),
        status=to_int(f.get("Status")),
        paused=to_bool(f.get("Paused")),
        paused_reason=f.get("PausedReason") or "",
        in_call=in_call,
        wrapuptime=to_int(f.get("Wrapuptime")),
    )


def ring_ms(f: Mapping[str, str], event: str) -> int:
    """A ring duration in milliseconds whatever the event's unit.

    ``AgentRingNoAnswer`` ``RingTime`` is ms (15000); ``AgentConnect`` ``RingTime`` is s (2)
    (apps/app_queue.c: rna() gets ``rnatime`` in ms, try_calling() divides by 1000 for the
    connect blob).
    """
    value = to_int(f.get("RingTime"))
    return value if event == "AgentRingNoAnswer" else value * 1000
