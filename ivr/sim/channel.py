"""Simulated channels: the state every AMI event snapshots, and the waits apps block on.

A channel is what ``struct ast_channel`` is to the manager: a name, a Uniqueid/Linkedid,
a state, caller/connected line, the dialplan location and variables. Every call in the
simulator is made of Local channel pairs (``Local/100@public-00000000;1``/``;2``), as in
the recording rig: ``;1`` is the dialled side, ``;2`` runs the dialplan at exten@context.

Apps wait on their channel with :meth:`Channel.wait`, which returns early on hangup, on a
DTMF digit (when asked) or on a message posted by another part of the engine (a member
answering, an AGI command arriving): one primitive instead of a task per timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ivr.sim.engine import Simulator

__all__ = [
    "CAUSE_TEXT",
    "DEFAULT_LANGUAGE",
    "HANGUP",
    "STATE_DESC",
    "TIMEOUT",
    "Channel",
    "DialObserver",
    "Wake",
]

# ``enum ast_channel_state`` and ``ast_state2str``
DOWN: Final = 0
RING: Final = 4
RINGING: Final = 5
UP: Final = 6
BUSY: Final = 7
STATE_DESC: Final[dict[int, str]] = {
    0: "Down",
    1: "Rsrvd",
    2: "OffHook",
    3: "Dialing",
    4: "Ring",
    5: "Ringing",
    6: "Up",
    7: "Busy",
    8: "Dialing Offhook",
    9: "Pre-ring",
}

#: ``ast_defaultlanguage`` (``main/asterisk.c``): a channel's language until
#: ``Set(CHANNEL(language)=...)`` changes it.
DEFAULT_LANGUAGE: Final = "en"
#: Where ``Set(CHANNEL(language)=fr)`` leaves the language: function writes are kept as
#: channel variables under their own name, without a VarSet (``ast_func_write``).
LANGUAGE_VAR: Final = "CHANNEL(language)"

#: ``ast_cause2str`` for the causes the simulator produces.
CAUSE_TEXT: Final[dict[int, str]] = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    21: "Call Rejected",
    26: "Answered elsewhere",
    34: "Circuit/channel congestion",
}


class Wake:
    """Why :meth:`Channel.wait` returned, when it was not a digit or a posted message."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


TIMEOUT: Final = Wake("TIMEOUT")
HANGUP: Final = Wake("HANGUP")
DATA: Final = Wake("DATA")


class DialObserver:
    """Whoever dialled a ``;1`` channel and wants to hear how the far side progresses.

    ``kind`` is ``ringing``, ``answer``, ``busy``, ``congestion`` or ``hangup``.
    """

    def on_dial_event(self, chan: Channel, kind: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Channel:
    """One simulated channel (a half of a Local pair)."""

    __slots__ = (
        "_accept_custom",
        "_accept_data",
        "_accept_dtmf",
        "_accept_hangup",
        "_snap",
        "_snap_lang",
        "_waiter",
        "answered_at",
        "app",
        "appdata",
        "bridge",
        "cause",
        "cid_name",
        "cid_num",
        "con_name",
        "con_num",
        "context",
        "created",
        "device",
        "explicit_hangup",
        "exten",
        "gone",
        "half",
        "hangup_requested",
        "inbox",
        "linkedid",
        "name",
        "observer",
        "pbx_running",
        "peer",
        "priority",
        "sim",
        "state",
        "uniqueid",
        "vars",
    )

    def __init__(
        self,
        sim: Simulator,
        name: str,
        uniqueid: str,
        linkedid: str,
        *,
        state: int,
        context: str,
        exten: str,
        device: str,
        half: int,
    ) -> None:
        self.sim = sim
        self.name = name
        self.uniqueid = uniqueid
        self.linkedid = linkedid
        self.state = state
        self.cid_num = ""
        self.cid_name = ""
        self.con_num = ""
        self.con_name = ""
        self.context = context
        self.exten = exten
        self.priority = 1
        self.vars: dict[str, str] = {}
        self.app = ""
        self.appdata = ""
        self.created = sim.now()
        self.answered_at: float | None = None
        self.bridge: Any = None
        self.peer: Channel | None = None
        self.half = half
        self.device = device
        self.cause: int | None = None
        self.gone = False
        self.hangup_requested = False
        self.explicit_hangup = False
        self.pbx_running = False
        self.observer: DialObserver | None = None
        self.inbox: deque[object] = deque()
        self._waiter: asyncio.Future[object] | None = None
        self._accept_dtmf = False
        self._accept_custom = False
        self._accept_data = False
        self._accept_hangup = True
        self._snap: list[tuple[str, str]] | None = None
        self._snap_lang = DEFAULT_LANGUAGE

    def __repr__(self) -> str:
        return f"<Channel {self.name} {STATE_DESC.get(self.state, self.state)}>"

    # -- snapshot ------------------------------------------------------------------------
    def touch(self) -> None:
        """Invalidate the cached snapshot after a change of state, caller id or location."""
        self._snap = None

    @property
    def language(self) -> str:
        """``CHANNEL(language)``: what ``Set(CHANNEL(language)=...)`` made it, else ``en``."""
        return self.vars.get(LANGUAGE_VAR, DEFAULT_LANGUAGE)

    def snapshot(self) -> list[tuple[str, str]]:
        """``ast_manager_build_channel_state_string``: the 14 channel headers, in order.

        Cached until :meth:`touch`; a language change (a function write, which does not
        touch the channel) is noticed here.
        """
        snap = self._snap
        language = self.vars.get(LANGUAGE_VAR, DEFAULT_LANGUAGE)
        if snap is None or language != self._snap_lang:
            self._snap_lang = language
            snap = self._snap = [
                ("Channel", self.name),
                ("ChannelState", str(self.state)),
                ("ChannelStateDesc", STATE_DESC.get(self.state, "Unknown")),
                ("CallerIDNum", self.cid_num or "<unknown>"),
                ("CallerIDName", self.cid_name or "<unknown>"),
                ("ConnectedLineNum", self.con_num or "<unknown>"),
                ("ConnectedLineName", self.con_name or "<unknown>"),
                ("Language", language),
                ("AccountCode", ""),
                ("Context", self.context),
                ("Exten", self.exten),
                ("Priority", str(self.priority)),
                ("Uniqueid", self.uniqueid),
                ("Linkedid", self.linkedid),
            ]
        return snap

    def dest_snapshot(self) -> list[tuple[str, str]]:
        """The same headers prefixed ``Dest`` (DialBegin, Agent* events)."""
        return [("Dest" + k, v) for k, v in self.snapshot()]

    def prefixed_snapshot(self, prefix: str) -> list[tuple[str, str]]:
        return [(prefix + k, v) for k, v in self.snapshot()]

    # -- variables -----------------------------------------------------------------------
    def builtin(self, name: str) -> str | None:
        """A variable as ``pbx_builtin_getvar_helper`` plus the usual builtins would give it."""
        value = self.vars.get(name)
        if value is not None:
            return value
        if name == "EXTEN":
            return self.exten
        if name == "CONTEXT":
            return self.context
        if name == "PRIORITY":
            return str(self.priority)
        if name == "CHANNEL":
            return self.name
        if name == LANGUAGE_VAR:
            return DEFAULT_LANGUAGE
        if name == "UNIQUEID":
            return self.uniqueid
        if name == "LINKEDID":
            return self.linkedid
        if name in ("CALLERID(num)", "CALLERID(number)"):
            return self.cid_num
        if name == "CALLERID(name)":
            return self.cid_name
        if name == "CALLERID(all)":
            return f'"{self.cid_name}" <{self.cid_num}>'
        if name == "CONNECTEDLINE(num)":
            return self.con_num
        if name == "CONNECTEDLINE(name)":
            return self.con_name
        if name == "EPOCH":
            return str(int(self.sim.now()))
        if name.startswith("DB") and name.endswith(")"):
            found = self.sim.astdb.read_function(name)
            if found is not None:
                value, result = found
                if result is not None:
                    self.sim.set_var(self, "DB_RESULT", result)
                return value
        return self.sim.globals.get(name)

    # -- waiting -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return not self.gone and not self.hangup_requested

    async def wait(
        self,
        seconds: float | None,
        *,
        dtmf: bool = False,
        custom: bool = False,
        data: bool = False,
        hangup: bool = True,
    ) -> object:
        """Block until ``seconds`` virtual seconds pass, or something the caller accepts.

        Returns :data:`TIMEOUT`, :data:`HANGUP` (always accepted; also returned at once if
        the channel is already hanging up), a DTMF digit (``str``) when ``dtmf``, the next
        posted message when ``custom``, or :data:`DATA` when ``data`` and :meth:`wake_data`
        is called (FastAGI input). ``hangup=False`` ignores hangups (an AGI in dead mode
        still waits for its server's commands).
        """
        if hangup and (self.hangup_requested or self.gone):
            return HANGUP
        if custom and self.inbox:
            return self.inbox.popleft()
        sim = self.sim
        fut: asyncio.Future[object] = sim.clock.loop.create_future()
        self._waiter = fut
        self._accept_dtmf = dtmf
        self._accept_custom = custom
        self._accept_data = data
        self._accept_hangup = hangup
        timer = sim.clock.call_later(seconds, _timeout, fut) if seconds is not None else None
        try:
            return await fut
        finally:
            if self._waiter is fut:
                self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self, value: object) -> bool:
        fut = self._waiter
        if fut is None or fut.done():
            return False
        fut.set_result(value)
        self._waiter = None
        return True

    def wake_hangup(self) -> None:
        if self._accept_hangup:
            self._wake(HANGUP)

    def wake_data(self) -> None:
        if self._accept_data:
            self._wake(DATA)

    def deliver_dtmf(self, digit: str) -> bool:
        """A digit arrives; it is consumed if an app is reading digits, else dropped."""
        if self._accept_dtmf and self._waiter is not None:
            return self._wake(digit)
        return False

    def post(self, message: object) -> None:
        """Queue a message for the app running on this channel (never lost)."""
        if self._accept_custom and self._wake(message):
            return
        self.inbox.append(message)


def _timeout(fut: asyncio.Future[object]) -> None:
    if not fut.done():
        fut.set_result(TIMEOUT)
