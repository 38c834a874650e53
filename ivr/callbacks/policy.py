"""Overflow: when to offer a callback (or an appointment) instead of a long wait.

Judged on entry to a queue and again while the caller waits, from what the controller
knows live: how many are ahead, how many agents are logged in and free, how long recent
calls took, and when the service closes. Thresholds are per queue (``[queues.NAME]``:
``max_estimated_wait_s``, ``max_callers_per_agent``, ``offer_callback``).

Estimated wait (EWT): the callers ahead of this one are served by the logged-in agents,
each taking a recent mean handle time::

    EWT = 0                                               if position <= free agents
    EWT = (position - free agents) * mean_handle / max(1, logged-in agents)   otherwise

It is deliberately simple (no Erlang C): it must be explainable to a supervisor and it is
only used to decide whether to *offer* an alternative, never to refuse a caller the queue.

A decision carries every reason that applies, so the IVR can choose its words and the
``callback.offered`` event records why.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from ivr.config import QueueConfig

__all__ = [
    "DEFAULT_HANDLE_S",
    "OverflowDecision",
    "QueueLoad",
    "RecentHandleTimes",
    "decide",
    "estimated_wait",
]

#: Mean handle time assumed before any call of the queue has been seen (seconds).
DEFAULT_HANDLE_S: Final = 300.0

Offer = Literal["none", "callback", "appointment"]


def estimated_wait(position: int, mean_handle_s: float, logged_in: int, available: int = 0) -> float:
    """Seconds until an agent takes the caller at 1-based ``position`` (see module docstring)."""
    if position <= max(0, available):
        return 0.0
    ahead = position - max(0, available)
    return ahead * max(0.0, mean_handle_s) / max(1, logged_in)


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """A queue as the policy sees it at one instant.

    ``position`` is the caller's place in the merged line (for a caller about to join:
    everyone waiting + 1). ``closes_in_s``/``opens_in_s``: seconds until the service closes
    (None: it does not close soon) and, when closed, until it opens again (None: unknown
    or never).
    """

    position: int
    waiting: int
    logged_in: int
    available: int
    mean_handle_s: float | None = None
    is_open: bool = True
    closes_in_s: float | None = None
    opens_in_s: float | None = None


@dataclass(frozen=True, slots=True)
class OverflowDecision:
    """What to offer, and why.

    ``reasons`` (in this order when several apply): ``closed``, ``no_agent``,
    ``estimated_wait``, ``callers_per_agent``, ``closing_soon``. ``offer`` is ``none``
    when the caller should simply wait (or when the queue offers nothing).
    """

    offer: Offer
    reasons: tuple[str, ...]
    estimated_wait_s: float
    position: int
    callers_per_agent: float | None

    @property
    def overloaded(self) -> bool:
        return bool(self.reasons)


def decide(
    load: QueueLoad,
    queue: QueueConfig,
    *,
    callbacks_enabled: bool = True,
    callback_expiry_s: float = 8 * 3600.0,
    default_handle_s: float = DEFAULT_HANDLE_S,
) -> OverflowDecision:
    """The overflow decision for one caller of ``queue``.

    A callback is offered when some reason applies, the queue has ``offer_callback`` and
    callbacks are enabled. When the service is closed and will not reopen before a
    callback would expire, an appointment is suggested instead (a callback then would be
    a promise nobody keeps).
    """
    mean = load.mean_handle_s if load.mean_handle_s is not None else default_handle_s
    ewt = estimated_wait(load.position, mean, load.logged_in, load.available)
    per_agent = load.waiting / load.logged_in if load.logged_in > 0 else None
    reasons: list[str] = []
    if not load.is_open:
        reasons.append("closed")
    if load.logged_in <= 0:
        reasons.append("no_agent")
    elif ewt > queue.max_estimated_wait_s:
        reasons.append("estimated_wait")
    if per_agent is not None and per_agent > queue.max_callers_per_agent:
        reasons.append("callers_per_agent")
    if load.is_open and load.closes_in_s is not None and ewt >= load.closes_in_s:
        reasons.append("closing_soon")
    offer: Offer = "none"
    if reasons and queue.offer_callback:
        if not callbacks_enabled:
            offer = "appointment"
        elif not load.is_open and (load.opens_in_s is None or load.opens_in_s >= callback_expiry_s):
            offer = "appointment"
        else:
            offer = "callback"
    return OverflowDecision(offer, tuple(reasons), ewt, load.position, per_agent)


class RecentHandleTimes:
    """Mean handle time (talk, plus wrap-up if known) of the last calls of a queue.

    Fed with ``agent.complete`` events (``data.talk_s``); keeps the last ``size`` values
    no older than ``horizon_s`` (Asterisk time), so a morning of short calls does not
    hide an afternoon of long ones.
    """

    def __init__(self, size: int = 50, horizon_s: float = 3600.0, wrapup_s: float = 0.0) -> None:
        if size < 1 or horizon_s <= 0 or wrapup_s < 0:
            raise ValueError("size >= 1, horizon_s > 0 and wrapup_s >= 0 required")
        self.horizon_s = horizon_s
        self.wrapup_s = wrapup_s
        self._items: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, ts: float, handle_s: float) -> None:
        if math.isfinite(handle_s) and handle_s >= 0 and math.isfinite(ts):
            self._items.append((ts, handle_s + self.wrapup_s))

    def mean(self, now: float) -> float | None:
        """The mean over recent calls, None when there is none."""
        recent = [h for ts, h in self._items if now - ts <= self.horizon_s]
        return sum(recent) / len(recent) if recent else None

    def __len__(self) -> int:
        return len(self._items)
