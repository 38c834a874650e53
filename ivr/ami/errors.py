"""Exceptions of the AMI client, one per way an action can end badly.

The controller reacts differently to each: an :class:`ActionError` is Asterisk's own "no"
(bad queue name, member already there) and is final; an :class:`ActionTimeout` or a
:class:`ConnectionLost` leaves the outcome unknown, so the caller must check the PBX's state
(the client resyncs after every reconnect) before trying again -- re-sending an Originate
blindly could ring a citizen twice.
"""

from __future__ import annotations

from ivr.protocol.ami import Response

__all__ = [
    "AMIError",
    "ActionError",
    "ActionTimeout",
    "ClientClosed",
    "ConnectionLost",
    "ListCountMismatch",
    "LoginError",
    "NotConnected",
]


class AMIError(Exception):
    """Base class of every error the AMI client raises.

    ``action_id`` names the action concerned when there is one, so that a caller whose
    Originate timed out can still match a late ``OriginateResponse`` on the event stream.
    """

    action_id: str | None = None


class ActionError(AMIError):
    """Asterisk answered ``Response: Error``; ``message`` is its ``Message:`` text, verbatim."""

    def __init__(self, action: str, response: Response) -> None:
        self.action = action
        self.response = response
        self.message = response.message or ""
        super().__init__(f"{action} failed: {self.message or response.status}")


class LoginError(ActionError):
    """The Login was refused (``Authentication failed``): wrong user name or secret."""


class ListCountMismatch(AMIError):
    """A list action's items disagree with the ``ListItems`` count Asterisk announced."""

    def __init__(self, action: str, received: int, expected: int) -> None:
        self.action = action
        self.received = received
        self.expected = expected
        super().__init__(f"{action}: received {received} list items, Asterisk announced {expected}")


class ActionTimeout(AMIError, TimeoutError):
    """No complete reply within the timeout. The action may still have run on the PBX."""


class ConnectionLost(AMIError, ConnectionError):
    """The connection dropped before the reply came. The action may have run on the PBX."""


class NotConnected(AMIError, ConnectionError):
    """The client is between connections (reconnecting); nothing was sent."""


class ClientClosed(AMIError):
    """The client was closed; no further action or event."""
