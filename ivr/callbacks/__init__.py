"""Callbacks that keep the caller's place in line.

A caller facing a long wait leaves a number instead; the callback keeps their original
queue-join time, and the dispatcher calls them back when that place reaches the head of
the merged line (waiting callers ∪ pending callbacks) and an agent is free. One folder,
one feature:

* :mod:`~ivr.callbacks.numbering` -- which numbers may be called back (ARCEP plan), pure;
* :mod:`~ivr.callbacks.ordering` -- the merged line, pure;
* :mod:`~ivr.callbacks.policy` -- when to offer a callback (overflow), pure;
* :mod:`~ivr.callbacks.store` -- requests in Redis, atomic claims with leases;
* :mod:`~ivr.callbacks.dispatcher` -- places the calls over AMI and follows them;
* :mod:`~ivr.callbacks.service` -- the API the IVR and the controller call;
* :mod:`~ivr.callbacks.http` -- supervisors' routes (list, cancel).
"""

from ivr.callbacks.dispatcher import CallbackDispatcher, DispatchSettings
from ivr.callbacks.numbering import REASONS, NumberCheck, NumberPolicy, check_number
from ivr.callbacks.ordering import QueueSnapshot, snapshot_from_state
from ivr.callbacks.policy import OverflowDecision, decide
from ivr.callbacks.service import CallbackService, Estimate, RequestOutcome, hours_check
from ivr.callbacks.store import CallbackRequest, CallbackStore

__all__ = [
    "REASONS",
    "CallbackDispatcher",
    "CallbackRequest",
    "CallbackService",
    "CallbackStore",
    "DispatchSettings",
    "Estimate",
    "NumberCheck",
    "NumberPolicy",
    "OverflowDecision",
    "QueueSnapshot",
    "RequestOutcome",
    "check_number",
    "decide",
    "hours_check",
    "snapshot_from_state",
]
