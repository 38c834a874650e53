"""The controller's AMI client (asyncio) over the sans-I/O codec in :mod:`ivr.protocol.ami`."""

from ivr.ami.client import AMIClient, Backoff, ClientStats, OriginateCall, OriginateResult
from ivr.ami.errors import (
    ActionError,
    ActionTimeout,
    AMIError,
    ClientClosed,
    ConnectionLost,
    ListCountMismatch,
    LoginError,
    NotConnected,
)

__all__ = [
    "AMIClient",
    "AMIError",
    "ActionError",
    "ActionTimeout",
    "Backoff",
    "ClientClosed",
    "ClientStats",
    "ConnectionLost",
    "ListCountMismatch",
    "LoginError",
    "NotConnected",
    "OriginateCall",
    "OriginateResult",
]
