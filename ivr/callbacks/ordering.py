"""The merged line: callers waiting in a queue and callbacks waiting to be dialled, by join time.

A callback keeps the caller's original queue-join time as its place in line. The line a
free agent serves is therefore the union of the callers really waiting in the app_queue
queue and the pending callbacks of that queue, ordered by join time. The dispatcher may
dial a callback only when it stands among the first ``free agents`` entries of that line:
every entry ahead of it (a real caller or another callback) takes a free agent first.

Why this is exactly fair: a callback dialled under this rule has nobody still waiting who
joined before it, or enough free agents for all of those. Giving its leg a high app_queue
priority at that moment (``IVR_PRIO``) lets it neither jump anyone nor lose its place.

Ties: when a caller and a callback have the same join time the caller goes first, so a
callback is *never* ahead of a caller who joined at the same instant or earlier.

Everything here is pure: the live queue comes in as a :class:`QueueSnapshot` that the
controller builds from its state tracker (:func:`snapshot_from_state`), so the rule is
tested without Asterisk, Redis or a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ivr.domain.calls import CALLBACK
from ivr.domain.state import QueueState

#: Device states of a member who cannot take calls at all (4 invalid, 5 unavailable).
_LOGGED_OUT = frozenset({4, 5})

__all__ = [
    "LineEntry",
    "LiveQueues",
    "QueueSnapshot",
    "merged_line",
    "position_in_line",
    "select_for_dispatch",
    "snapshot_from_state",
]


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What the dispatcher needs to know about one live queue, at one instant.

    ``waiting`` holds ``(call id, join time)`` of the callers really waiting (callback legs
    excluded: they are already being served); ``available`` counts members who could take
    a call now (logged in, not paused, not ringing, not in a call); ``free_members`` names
    them (their interface, which is also their dial string), best candidate first.
    """

    name: str
    waiting: tuple[tuple[str, float], ...] = ()
    logged_in: int = 0
    available: int = 0
    free_members: tuple[str, ...] = ()


#: The dispatcher's view of the PBX: ``live(queue)`` gives a snapshot, None when it is unknown.
LiveQueues = Callable[[str], QueueSnapshot | None]


@dataclass(frozen=True, slots=True, order=True)
class LineEntry:
    """One place in the merged line; sorts by (join time, callers first, id)."""

    join_ts: float
    is_callback: bool
    key: str

    @property
    def callback_id(self) -> str | None:
        return self.key if self.is_callback else None


def merged_line(
    waiting: Iterable[tuple[str, float]], callbacks: Iterable[tuple[str, float]]
) -> list[LineEntry]:
    """Callers ``(call id, join ts)`` and callbacks ``(callback id, join ts)`` in serving order."""
    line = [LineEntry(ts, False, call) for call, ts in waiting]
    line.extend(LineEntry(ts, True, cb) for cb, ts in callbacks)
    line.sort()
    return line


def select_for_dispatch(line: Sequence[LineEntry], free_agents: int) -> list[str]:
    """Callback ids to dial now: those among the first ``free_agents`` entries of ``line``."""
    if free_agents <= 0:
        return []
    return [e.key for e in line[:free_agents] if e.is_callback]


def position_in_line(line: Sequence[LineEntry], callback_id: str) -> int | None:
    """1-based place of a callback in the merged line; None if it is not there."""
    for i, entry in enumerate(line, 1):
        if entry.is_callback and entry.key == callback_id:
            return i
    return None


def snapshot_from_state(queue: QueueState, calls: Mapping[str, object] | None = None) -> QueueSnapshot:
    """Build a :class:`QueueSnapshot` from the state tracker's :class:`QueueState`.

    ``calls`` is the tracker's call table (``StateTracker.calls``): waiting calls whose
    ``kind`` is ``callback`` are our own callback legs (``Local/<queue>@callback-queue``)
    and are left out of the line. Free members are ordered as app_queue's ``rrmemory``
    and ``leastrecent`` would favour them: the longest idle first.
    """
    waiting: list[tuple[str, float]] = []
    for w in queue.callers():
        call = calls.get(w.call) if calls is not None else None
        if call is not None and getattr(call, "kind", None) == CALLBACK:
            continue
        if "@callback-queue-" in w.channel:
            continue
        waiting.append((w.call, w.join_ts))
    members = list(queue.members.values())
    free = sorted((m for m in members if m.available), key=lambda m: (m.last_call, m.interface))
    logged_in = sum(1 for m in members if m.status not in _LOGGED_OUT)
    return QueueSnapshot(
        name=queue.name,
        waiting=tuple(waiting),
        logged_in=logged_in,
        available=len(free),
        free_members=tuple(m.interface for m in free),
    )
