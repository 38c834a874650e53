"""Virtual time for the simulated PBX: a clock that runs ``speed`` times faster than the wall.

Virtual epoch time is ``start_epoch + (loop.time() - t0) * speed``; a wait of ``v`` virtual
seconds lasts ``v / speed`` real seconds. That lets a day of call-centre traffic run in a
few minutes while every timestamp, hold time and queue_log line stays self-consistent.

Why not ``asyncio.sleep`` per step: two things would break at high speed.

* **Exact timestamps.** At ``speed=1000`` one millisecond of scheduling jitter is a whole
  virtual second, enough to turn a ``HoldTime`` of 2 into 3. Timers here carry their exact
  virtual due time and the clock jumps to it when they fire, so whatever runs in response
  sees the instant it was scheduled for, not the instant the OS got round to it.
* **Causal order.** When the engine lags behind the wall clock several timers are overdue
  at once; firing them all in one go would let a later timer run before the coroutines woken
  by an earlier one had reacted. The scheduler fires one virtual instant at a time and lets
  the event loop settle (no engine activity for two loop turns) before the next overdue
  instant, so a run gives the same story whatever the machine's load. (Firing as soon as
  the loop has nothing ready would save a turn per instant but lose that: a socket's data
  in flight between two in-process peers is in no ready queue, and the story would then
  depend on when the kernel delivers it.)

Inputs from outside the engine (an AMI action, a FastAGI command) are stamped with the
wall-derived time, capped at the next pending timer so that they never overtake work the
engine still owes the past. Only the engine's own waits are paced; sockets run in real time.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Any, Final

__all__ = ["Scheduler", "Timer"]

#: Quiet loop turns required before an overdue instant may fire (see module docstring).
_SETTLE_TURNS: Final = 2
#: Upper bound on settling turns, so that a busy-looping coroutine cannot stall time.
_MAX_SETTLE_TURNS: Final = 64


class Timer:
    """A scheduled callback; ``cancel()`` makes it a no-op.

    The heap holds ``(due, seq, timer)`` tuples: ``seq`` is unique, so the heap orders
    them by C-level tuple comparison and never compares two timers (a Python ``__lt__``
    was a visible share of a busy simulation's time).
    """

    __slots__ = ("args", "callback", "cancelled", "due")

    def __init__(self, due: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.due = due
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Virtual clock and timer heap shared by everything in one simulated PBX.

    ``speed`` is virtual seconds per real second (``math.inf`` runs timers as fast as the
    loop allows, for tests without external peers). :attr:`activity` is bumped by the
    engine whenever it does something observable; the settle logic watches it.
    """

    def __init__(self, start_epoch: float, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed!r}")
        self.start_epoch = float(start_epoch)
        self.speed = float(speed)
        self.activity = 0
        self._now = self.start_epoch
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._armed: asyncio.TimerHandle | asyncio.Handle | None = None
        self._armed_for: float | None = None
        self._settling = False
        self._running = False

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Bind to the running loop; virtual time starts flowing now."""
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time() - (self._now - self.start_epoch) / self.speed
        self._running = True
        self._arm()

    def stop(self) -> None:
        self._running = False
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
            self._armed_for = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("scheduler not started")
        return self._loop

    # -- time ----------------------------------------------------------------------------
    def now(self) -> float:
        """The current virtual epoch time (never goes backwards)."""
        return self._now

    def wall_now(self) -> float:
        """Virtual time as derived from the wall clock alone."""
        if self._loop is None or math.isinf(self.speed):
            return self._now
        return self.start_epoch + (self._loop.time() - self._t0) * self.speed

    def sync_external(self) -> float:
        """Advance the clock for an input from outside the engine and return it.

        The wall-derived time is capped at the next pending timer: an input that arrives
        while the engine is behind is ordered before the work it still owes the past.
        """
        wall = self.wall_now()
        if self._heap:
            wall = min(wall, self._heap[0][0])
        if wall > self._now:
            self._now = wall
        return self._now

    # -- timers --------------------------------------------------------------------------
    def call_at(self, due: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` at virtual time ``due`` (not before the current time)."""
        self._seq += 1
        if due < self._now:
            due = self._now
        timer = Timer(due, callback, args)
        heapq.heappush(self._heap, (due, self._seq, timer))
        if self._running and (self._armed_for is None or due < self._armed_for):
            self._arm()
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(self._now + max(0.0, delay), callback, *args)

    def sleep(self, delay: float) -> asyncio.Future[None]:
        """A future resolved ``delay`` virtual seconds from now."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.call_later(delay, _resolve, fut)
        return fut

    def sleep_until(self, due: float) -> asyncio.Future[None]:
        """A future resolved at virtual time ``due`` (at once if it has passed)."""
        return self.sleep(max(0.0, due - self._now))

    def pending(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def next_due(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- firing --------------------------------------------------------------------------
    def _arm(self) -> None:
        if not self._running:
            return
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
            self._armed_for = None
        due = self.next_due()
        if due is None:
            return
        loop = self.loop
        when = self._t0 + (due - self.start_epoch) / self.speed if not math.isinf(self.speed) else 0.0
        self._armed_for = due
        if when <= loop.time():
            self._armed = loop.call_soon(self._begin_settle)
        else:
            self._armed = loop.call_at(when, self._begin_settle)

    def _begin_settle(self) -> None:
        self._settle(0, self.activity, 0)

    def _settle(self, quiet: int, seen: int, turns: int) -> None:
        """Wait until the engine has been quiet for a few loop turns, then fire."""
        if not self._running:
            return
        if turns >= _MAX_SETTLE_TURNS:
            self._fire()
            return
        if self.activity != seen:
            quiet, seen = 0, self.activity
        else:
            quiet += 1
        if quiet >= _SETTLE_TURNS:
            self._fire()
        else:
            self._armed = self.loop.call_soon(self._settle, quiet, seen, turns + 1)

    def _fire(self) -> None:
        """Run every timer due at the earliest pending instant, then re-arm."""
        self._armed = None
        self._armed_for = None
        heap = self._heap
        due = self.next_due()
        if due is None:
            return
        if due > self._now:
            self._now = due
        pop = heapq.heappop
        while heap and heap[0][0] <= due:
            timer = pop(heap)[2]
            if timer.cancelled:
                continue
            self.activity += 1
            timer.callback(*timer.args)
        self._arm()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
