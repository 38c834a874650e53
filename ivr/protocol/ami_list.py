"""Collecting the replies of AMI list actions (QueueStatus, QueueSummary, CoreShowChannels …).

A list action is answered in three parts that share its ActionID (FACTS.md):
``Response: Success`` with ``EventList: start``, one event per item, then a ``…Complete``
event with ``EventList: Complete`` and ``ListItems: N``. Other events interleave freely.
The collector is sans-I/O: the client feeds it every message carrying the ActionID and
gets a :class:`ListResult` once the list is complete. A count that disagrees with
``ListItems`` is reported, not hidden: after a reconnect the controller resyncs its live
state from these lists, and a silently short list would drop calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ivr.protocol.ami import Event, Response
from ivr.protocol.errors import RemoteProtocolError

__all__ = ["ListCollector", "ListResult"]


@dataclass(frozen=True, slots=True)
class ListResult:
    """A finished list: the opening response, the items and the closing event."""

    response: Response
    items: tuple[Event, ...]
    complete: Event | None
    expected: int | None = None

    @property
    def ok(self) -> bool:
        """True when the action succeeded and the item count matched ``ListItems``."""
        return self.response.ok and not self.count_mismatch

    @property
    def count_mismatch(self) -> bool:
        return self.expected is not None and self.expected != len(self.items)


@dataclass(slots=True)
class ListCollector:
    """Accumulates one list action's reply; feed it messages with its ActionID."""

    action_id: str
    response: Response | None = None
    items: list[Event] = field(default_factory=list)

    def feed(self, message: Response | Event) -> ListResult | None:
        """Take one message of this action; return the result once the list is done.

        An error response ends the list at once (Asterisk sends no items after it), as
        does a success response that does not open a list.
        """
        if message.action_id != self.action_id:
            raise ValueError(f"message for ActionID {message.action_id!r} fed to list {self.action_id!r}")
        if isinstance(message, Response):
            if self.response is not None:
                raise RemoteProtocolError(f"second response for list action {self.action_id!r}")
            self.response = message
            if not message.ok or not message.starts_list:
                return ListResult(message, (), None)
            return None
        if self.response is None:
            raise RemoteProtocolError(f"list item {message.name!r} before the response to {self.action_id!r}")
        if (message.get("EventList") or "").lower() == "complete":
            raw = message.get("ListItems")
            expected: int | None
            try:
                expected = int(raw) if raw is not None else None
            except ValueError as exc:
                raise RemoteProtocolError(f"ListItems is not a number: {raw!r}") from exc
            return ListResult(self.response, tuple(self.items), message, expected)
        self.items.append(message)
        return None
