"""The double of a PBX that the AMI server tests put behind the simulator's AMI server.

:class:`EngineDouble` implements the engine interface (:class:`ivr.sim.api.Engine`) for a
handful of actions with Asterisk's replies, so that the server and the clients are tested
on framing, login and event flow without the simulator's own behaviour in the way. The
``engine`` and ``server`` fixtures of ``conftest.py`` serve it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from ivr.protocol.ami import Action
from ivr.sim.api import ActionResult, EventListener, Headers, ListReply

SECRET = "secret"

UNKNOWN = "Invalid/unknown command: {}. Use Action: ListCommands to show available commands."


class EngineDouble:
    """A tiny PBX implementing :class:`ivr.sim.api.Engine` for a handful of actions.

    ``answering`` lists the Originate channels that answer (Reason 4); any other channel
    fails with Reason 0 and no Dial events (FACTS.md). ``dialend_first`` chooses which of
    DialEnd and OriginateResponse comes first -- both orders occur on a real Asterisk.
    ``delays`` makes named actions slow, to test timeouts; ``hold_outcomes`` keeps
    Originate outcomes until :meth:`release_outcomes`.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.listeners: list[EventListener] = []
        self.queues: dict[str, dict[str, str]] = {
            "support": {"Local/201@agents": "Local/201@agents", "Local/202@agents": "Local/202@agents"},
            "overflow": {"Local/203@agents": "Local/203@agents"},
        }
        self.channels: list[dict[str, str]] = []
        self.answering: set[str] = {"Local/201@agents"}
        self.dialend_first = True
        self.delays: dict[str, float] = {}
        self.hold_outcomes = False
        self.held_outcomes: list[Callable[[], None]] = []
        self.seen: list[str] = []
        self._uid = itertools.count()

    # -- Engine protocol --------------------------------------------------------------
    def add_listener(self, listener: EventListener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        self.listeners.remove(listener)

    def now(self) -> float:
        return self._clock()

    async def handle_action(self, action: Action) -> ActionResult:
        self.seen.append(action.name)
        delay = self.delays.get(action.name)
        if delay:
            await asyncio.sleep(delay)
        handler = getattr(self, "_do_" + action.name.lower(), None)
        if handler is None:
            return ActionResult.error(UNKNOWN.format(action.name))
        result: ActionResult = handler(action)
        return result

    # -- helpers ----------------------------------------------------------------------
    def emit(self, name: str, headers: Headers, privilege: str = "call,all") -> None:
        full = [("Privilege", privilege), ("Timestamp", f"{self.now():.6f}"), *headers]
        for listener in list(self.listeners):
            listener(name, full)

    def _member(self, queue: str, name: str, iface: str) -> Headers:
        return [
            ("Queue", queue),
            ("Name", name),
            ("Location", iface),
            ("StateInterface", iface),
            ("Membership", "static"),
            ("Penalty", "0"),
            ("CallsTaken", "0"),
            ("LastCall", "0"),
            ("LastPause", "0"),
            ("LoginTime", str(int(self.now()))),
            ("InCall", "0"),
            ("Status", "1"),
            ("Paused", "0"),
            ("PausedReason", ""),
            ("Wrapuptime", "0"),
        ]

    # -- actions ----------------------------------------------------------------------
    def _do_queuestatus(self, action: Action) -> ActionResult:
        wanted = action.get("Queue")
        listing = ListReply(message="Queue status will follow", complete_event="QueueStatusComplete")
        for queue, members in self.queues.items():
            if wanted and wanted != queue:
                continue
            listing.items.append(
                (
                    "QueueParams",
                    [
                        ("Queue", queue),
                        ("Max", "0"),
                        ("Strategy", "rrmemory"),
                        ("Calls", "0"),
                        ("Holdtime", "0"),
                        ("TalkTime", "0"),
                        ("Completed", "0"),
                        ("Abandoned", "0"),
                        ("ServiceLevel", "0"),
                        ("ServicelevelPerf", "0.0"),
                        ("ServicelevelPerf2", "0.0"),
                        ("Weight", "0"),
                    ],
                )
            )
            for iface, name in members.items():
                listing.items.append(("QueueMember", self._member(queue, name, iface)))
        return ActionResult("Success", listing=listing)

    def _do_coreshowchannels(self, action: Action) -> ActionResult:
        listing = ListReply(message="Channels will follow", complete_event="CoreShowChannelsComplete")
        for chan in self.channels:
            listing.items.append(
                (
                    "CoreShowChannel",
                    [("Channel", chan["Channel"]), ("Uniqueid", chan["Uniqueid"]), ("Application", "Wait")],
                )
            )
        return ActionResult("Success", listing=listing)

    def _do_queueadd(self, action: Action) -> ActionResult:
        queue, iface = action.get("Queue") or "", action.get("Interface") or ""
        if queue not in self.queues:
            return ActionResult.error("Unable to add interface to queue: No such queue")
        if iface in self.queues[queue]:
            return ActionResult.error("Unable to add interface: Already there")
        name = action.get("MemberName") or iface
        self.queues[queue][iface] = name
        asyncio.get_running_loop().call_soon(
            self.emit,
            "QueueMemberAdded",
            [("Queue", queue), ("MemberName", name), ("Interface", iface), ("Membership", "dynamic")],
            "agent,all",
        )
        return ActionResult.success("Added interface to queue")

    def _do_userevent(self, action: Action) -> ActionResult:
        custom = [(k, v) for k, v in action.headers if k.lower() not in ("action", "actionid", "userevent")]
        headers: Headers = [("UserEvent", action.get("UserEvent") or "")]
        if action.action_id:
            headers.append(("ActionID", action.action_id))
        # Raised synchronously, while the action runs: the front-end must still write it
        # after the response, as Asterisk does.
        self.emit("UserEvent", headers + custom, "user,all")
        return ActionResult.success("Event Sent")

    def _do_command(self, action: Action) -> ActionResult:
        known = (action.get("Command") or "") == "core show version"
        output = "Asterisk 22.10.1 (double)" if known else "No such command"
        return ActionResult("Success", [("Message", "Command output follows"), ("Output", output)])

    def _do_originate(self, action: Action) -> ActionResult:
        channel = action.get("Channel")
        if not channel:
            return ActionResult.error("Channel not specified")
        context, exten = action.get("Context") or "", action.get("Exten") or ""
        aid = action.action_id
        if self.hold_outcomes:
            self.held_outcomes.append(lambda: self._originate_outcome(aid, channel, context, exten))
        else:
            asyncio.get_running_loop().call_soon(self._originate_outcome, aid, channel, context, exten)
        return ActionResult.success("Originate successfully queued")

    def release_outcomes(self) -> None:
        """Let the held Originate outcomes happen now (a slow callee, a long ring)."""
        held, self.held_outcomes = self.held_outcomes, []
        for outcome in held:
            outcome()

    def _originate_outcome(self, aid: str | None, channel: str, context: str, exten: str) -> None:
        id_header: Headers = [("ActionID", aid)] if aid else []
        if channel not in self.answering:
            self.emit(
                "OriginateResponse",
                [
                    *id_header,
                    ("Response", "Failure"),
                    ("Channel", channel),
                    ("Context", context),
                    ("Exten", exten),
                    ("Reason", "0"),
                    ("Uniqueid", "<unknown>"),
                ],
            )
            return
        uid = f"1795751483.{next(self._uid)}"
        name = f"{channel}-0000000{len(self.channels)};1"
        self.channels.append({"Channel": name, "Uniqueid": uid})
        self.emit("Newchannel", [("Channel", name), ("Uniqueid", uid)])
        self.emit("DialBegin", [("DestChannel", name), ("DestUniqueid", uid), ("DialString", channel)])
        dial_end = ("DialEnd", [("DestChannel", name), ("DestUniqueid", uid), ("DialStatus", "ANSWER")])
        outcome = (
            "OriginateResponse",
            [
                *id_header,
                ("Response", "Success"),
                ("Channel", name),
                ("Context", context),
                ("Exten", exten),
                ("Reason", "4"),
                ("Uniqueid", uid),
            ],
        )
        first, second = (dial_end, outcome) if self.dialend_first else (outcome, dial_end)
        self.emit(*first)
        self.emit(*second)
