"""The contract between the simulated PBX (the engine) and its network front-ends.

The engine models calls, the dialplan and app_queue in virtual time and knows nothing of
sockets. The AMI server front-end (``ivr.sim.ami_server``) owns TCP sessions: banner,
Login/Logoff, Events on/off, Ping, framing; every other action it hands to the engine and
writes back what the engine returns. Events flow the other way: the engine calls each
listener with the event name and its headers, in the order Asterisk 22 emits them, and the
front-end encodes them for every logged-in session that has events on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ivr.protocol.ami import Action

#: Header pairs in wire order (repeated keys allowed).
Headers = list[tuple[str, str]]

#: Called for every event: ``(name, headers)``; headers exclude ``Event`` itself and start
#: with ``Privilege`` then ``Timestamp`` where Asterisk puts them. The same list goes to
#: every listener: read it, do not modify it. Listeners run synchronously inside the
#: engine, so they must be quick (encode and queue, never wait).
EventListener = Callable[[str, Headers], None]


@dataclass(frozen=True, slots=True)
class HeaderTest:
    """A listener's verdict on events of one name that depends on some of their headers.

    ``test(headers)`` is False when the listener would drop the event. It reads only the
    headers named in ``keys``, so an engine may ask it before adding the headers it
    builds itself (``Privilege``, ``Timestamp``, a channel snapshot) when none of those
    is in ``keys``: a VarSet the listener drops by its ``Variable`` is then never built.
    """

    keys: frozenset[str]
    test: Callable[[Headers], bool]


#: What a listener takes of the events of one name and class (``Privilege`` value):
#: True (every one), False (none: the engine need not build them for it) or a
#: :class:`HeaderTest`. Asked once per name and class, again after the engine's
#: ``interest_changed``.
EventInterest = Callable[[str, str], bool | HeaderTest]


@dataclass(slots=True)
class ListReply:
    """The body of a list action: item events and the completion event's name.

    The front-end adds ``ActionID`` to each item, and ``EventList: Complete`` and
    ``ListItems: N`` to the completion event, as Asterisk does.
    """

    items: list[tuple[str, Headers]] = field(default_factory=list)
    complete_event: str = ""
    complete_headers: Headers = field(default_factory=list)
    message: str = ""


@dataclass(slots=True)
class ActionResult:
    """What the engine answers to one action.

    ``status`` is ``Success`` or ``Error``; ``headers`` follow ``Response`` and
    ``ActionID`` (usually ``Message``). ``listing`` is set for list actions
    (QueueStatus, QueueSummary, CoreShowChannels, Status).
    """

    status: str
    headers: Headers = field(default_factory=list)
    listing: ListReply | None = None

    @classmethod
    def error(cls, message: str) -> ActionResult:
        return cls("Error", [("Message", message)])

    @classmethod
    def success(cls, message: str | None = None, extra: Headers | None = None) -> ActionResult:
        headers: Headers = [] if message is None else [("Message", message)]
        return cls("Success", headers + (extra or []))


class Engine(Protocol):
    """What the AMI front-end needs from the simulated PBX."""

    def add_listener(self, listener: EventListener) -> None: ...

    def remove_listener(self, listener: EventListener) -> None: ...

    async def handle_action(self, action: Action) -> ActionResult:
        """Run one action other than Login, Logoff, Events, Ping and Challenge.

        Unknown actions answer ``Error`` with Asterisk's text ("Invalid/unknown command:
        X. Use Action: ListCommands to show available commands.").
        """
        ...

    def now(self) -> float:
        """The simulated epoch time, for ``Timestamp`` headers."""
        ...


@runtime_checkable
class SelectiveEngine(Engine, Protocol):
    """An engine that builds an event only for the listeners that may take it.

    A front-end whose clients filter events (manager.conf ``eventfilter``) registers its
    listener with an :data:`EventInterest`; most events of a busy PBX (Newexten, most
    VarSet) are then never built at all. It calls :meth:`interest_changed` whenever its
    answers may change (a client logs in or out, changes its event mask).
    """

    def add_listener(self, listener: EventListener, interest: EventInterest | None = None) -> None: ...

    def interest_changed(self) -> None:
        """Forget the interests asked so far: ask the listeners again."""
        ...
