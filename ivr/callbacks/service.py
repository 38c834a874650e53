"""What the IVR, the controller and the supervisors' API call: the callback feature's front door.

The IVR (FastAGI, ``ivr/agi``) uses, in the order of a call:

* :meth:`CallbackService.overflow` -- on entry to a queue and while waiting: should the
  caller be offered a callback (or an appointment)? With the reasons and the estimated wait.
* :meth:`CallbackService.check_number` -- is the caller ID (or the digits typed) a number
  we may call back? A refusal has a reason code (``ivr.callbacks.numbering.REASONS``) to
  choose the prompt: ``withheld`` -> "type your number", ``premium_not_allowed`` -> "this
  number cannot be called back" ...
* :meth:`CallbackService.request` -- record the request (or update the open one of that
  number) with the caller's original queue-join time; returns the callback id (for
  ``IVR_CALLBACK_ID``), the position in the merged line and the estimated wait to announce.
* :meth:`CallbackService.cancel` / :meth:`cancel_number` -- the caller calls again to cancel;
  :meth:`find` tells whether a number already has a callback scheduled.
* :meth:`CallbackService.estimate` -- position and estimated wait of an open request.
* :meth:`CallbackService.report_result` -- the ``callback-result`` AGI
  (``IVR_CALLBACK_ID``, DIALSTATUS); :meth:`get` gives the ``callback-greet`` AGI the
  request (service, queue, case, language).

The controller builds it (:meth:`from_config`) next to the dispatcher, and passes it the
call events it emits (:meth:`observe`: recent handle times for the estimated wait).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from ivr.callbacks.dispatcher import (
    CallbackDispatcher,
    DispatchSettings,
    EventSink,
    Settler,
    callback_event,
    outcome_of_dialstatus,
)
from ivr.callbacks.numbering import NumberCheck, NumberPolicy, check_number
from ivr.callbacks.ordering import LiveQueues, QueueSnapshot
from ivr.callbacks.policy import (
    DEFAULT_HANDLE_S,
    OverflowDecision,
    QueueLoad,
    RecentHandleTimes,
    decide,
    estimated_wait,
)
from ivr.callbacks.store import CallbackRequest, CallbackStore, CancelResult, FinishResult, NewRequest
from ivr.config import CallbackConfig, QueueConfig
from ivr.domain.events import CallEvent
from ivr.domain.hours import Schedule, is_open, next_closing, next_opening
from ivr.logs import get_logger
from ivr.storage.privacy import NumberHasher

if TYPE_CHECKING:
    from ivr.config import Config

__all__ = ["CallbackService", "Estimate", "RequestOutcome", "hours_check"]

log = get_logger(__name__)

Clock = Callable[[], float]

#: A case number goes into a channel variable and the agent's caller ID name.
_CASE_RE: Final = re.compile(r"[A-Za-z0-9_-]{0,32}")
_LANG_RE: Final = re.compile(r"(?:[a-z]{2}(?:_[A-Z]{2})?)?")
#: How far in the future a join time may be (clocks of two machines): beyond, it is "now".
_FUTURE_SLACK_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """The answer to a callback request.

    ``status``: ``created``, ``updated``/``unchanged`` (the number already had an open
    request: it keeps the earlier place), ``in_progress`` (it is being dialled right now),
    or ``refused`` with ``reason`` (a numbering reason, ``callbacks_disabled``,
    ``unknown_queue``, ``no_service``, ``invalid_case``, ``invalid_window``). ``number`` is
    the number that will be dialled (for a read-back prompt).
    """

    ok: bool
    status: Literal["created", "updated", "unchanged", "in_progress", "refused"]
    reason: str = ""
    callback_id: str = ""
    number: str = ""
    number_kind: str = ""
    position: int | None = None
    estimated_wait_s: float | None = None


@dataclass(frozen=True, slots=True)
class Estimate:
    """Place of a caller (or callback) in the merged line and the estimated wait."""

    position: int
    waiting_callers: int
    pending_callbacks: int
    logged_in: int
    available: int
    estimated_wait_s: float


class CallbackService:
    """Callback requests, overflow advice and outcome reports (see the module docstring)."""

    def __init__(
        self,
        store: CallbackStore,
        *,
        hasher: NumberHasher,
        emit: EventSink,
        clock: Clock,
        callbacks: CallbackConfig,
        queues: Mapping[str, QueueConfig],
        schedules: Mapping[str, Schedule] | None = None,
        live: LiveQueues | None = None,
        dispatcher: CallbackDispatcher | None = None,
        settings: DispatchSettings | None = None,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.emit = emit
        self.clock = clock
        self.config = callbacks
        self.queues = queues
        self.schedules = schedules or {}
        self.live = live
        self.dispatcher = dispatcher
        self.policy = NumberPolicy.from_config(callbacks)
        self.settler = Settler(store, emit, settings or DispatchSettings.from_config(callbacks))
        self.handle_times: dict[str, RecentHandleTimes] = {}

    @classmethod
    def from_config(
        cls,
        config: Config,
        store: CallbackStore,
        *,
        hasher: NumberHasher,
        emit: EventSink,
        clock: Clock,
        live: LiveQueues | None = None,
        dispatcher: CallbackDispatcher | None = None,
    ) -> CallbackService:
        return cls(
            store,
            hasher=hasher,
            emit=emit,
            clock=clock,
            callbacks=config.callbacks,
            queues=config.queues,
            schedules={name: s.hours for name, s in config.services.items()},
            live=live,
            dispatcher=dispatcher,
            settings=dispatcher.settings if dispatcher is not None else None,
        )

    # -- numbers ------------------------------------------------------------------------------

    def check_number(self, raw: str) -> NumberCheck:
        """Whether ``raw`` may be called back under this deployment's policy."""
        return check_number(raw, self.policy)

    # -- requests -----------------------------------------------------------------------------

    async def request(
        self,
        *,
        call: str,
        number: str,
        queue: str,
        join_ts: float | None = None,
        service: str | None = None,
        case: str = "",
        language: str = "",
        window: tuple[float, float] | None = None,
    ) -> RequestOutcome:
        """Record a callback for ``number`` in ``queue``, keeping the place ``join_ts`` gave.

        ``join_ts`` is when the caller joined the queue (Asterisk time; None: now, for a
        caller who chose the callback before queueing). ``window`` limits when the call may
        be placed (epoch seconds, start inclusive, end exclusive), on top of the service's
        opening hours.
        """
        now = self.clock()
        if not self.config.enabled:
            return RequestOutcome(False, "refused", "callbacks_disabled")
        qcfg = self.queues.get(queue)
        if qcfg is None:
            return RequestOutcome(False, "refused", "unknown_queue")
        service = service or qcfg.service
        if not service:
            return RequestOutcome(False, "refused", "no_service")
        if not _CASE_RE.fullmatch(case) or not _LANG_RE.fullmatch(language):
            return RequestOutcome(False, "refused", "invalid_case")
        if window is not None and not (window[0] < window[1] and window[1] > now):
            return RequestOutcome(False, "refused", "invalid_window")
        check = self.check_number(number)
        if not check.ok:
            log.info("callback.number_refused", reason=check.reason, kind=check.kind, call=call)
            return RequestOutcome(False, "refused", check.reason, number_kind=check.kind)
        joined = now if join_ts is None or join_ts > now + _FUTURE_SLACK_S else join_ts
        new = NewRequest(
            call=call,
            service=service,
            queue=queue,
            number=check.number,
            number_hash=self.hasher(check.number),
            join_ts=joined,
            expires_at=now + self.config.expiry_s,
            max_attempts=self.config.attempts,
            window_start=window[0] if window else 0.0,
            window_end=window[1] if window else 0.0,
            case=case,
            language=language,
        )
        result = await self.store.request(new, now)
        req = result.request
        estimate = await self.estimate(queue, req.join_ts, callback_id=req.id)
        extra = {
            "number_kind": check.kind,
            "attempts": req.attempts,
            "expires_at": req.expires_at,
        }
        if estimate is not None:
            extra["position"] = estimate.position
            extra["estimated_wait_s"] = round(estimate.estimated_wait_s, 1)
        if result.outcome == "created":
            self.emit(callback_event("callback.requested", req, now, 0, **extra))
        elif result.outcome == "updated":
            self.emit(callback_event("callback.updated", req, now, req.updates, repeat_call=call, **extra))
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return RequestOutcome(
            True,
            result.outcome,
            callback_id=req.id,
            number=check.number,
            number_kind=check.kind,
            position=estimate.position if estimate else None,
            estimated_wait_s=estimate.estimated_wait_s if estimate else None,
        )

    async def get(self, callback_id: str) -> CallbackRequest | None:
        """The request (for ``callback-greet``: service, queue, case, language)."""
        try:
            return await self.store.get(callback_id)
        except ValueError:  # not usable as a key part: no such request
            return None

    async def find(self, number: str) -> CallbackRequest | None:
        """The open request of a number (as typed or shown), if any."""
        check = check_number(number, NumberPolicy(True, True, True, True, True, True))
        key = self.hasher(check.number or number)
        if not key:
            return None
        return await self.store.open_for_number(key)

    async def cancel(self, callback_id: str, *, by: str = "caller", reason: str = "") -> CancelResult:
        """Cancel a pending request; a request being dialled cannot be (``dialing``)."""
        now = self.clock()
        req = await self.get(callback_id)
        if req is None:
            return CancelResult("missing")
        result = await self.store.cancel(callback_id, now=now, reason=reason or f"by_{by}")
        if result.outcome == "cancelled":
            self.emit(
                callback_event(
                    "callback.cancelled",
                    req,
                    now,
                    "final",
                    by=by,
                    reason=reason or f"by_{by}",
                    attempts=req.attempts,
                    wait_s=round(now - req.join_ts, 3),
                )
            )
        return result

    async def cancel_number(self, number: str, *, by: str = "caller") -> CancelResult:
        """Cancel the open request of ``number`` (the caller rings back to cancel)."""
        req = await self.find(number)
        if req is None:
            return CancelResult("missing")
        return await self.cancel(req.id, by=by)

    async def report_result(self, callback_id: str, status: str, dial: int | None = None) -> FinishResult:
        """The ``callback-result`` AGI's report (see :meth:`CallbackDispatcher.report_result`)."""
        if self.dispatcher is not None:
            return await self.dispatcher.report_result(callback_id, status, dial)
        outcome, reason = outcome_of_dialstatus(status)
        return await self.settler.settle(
            callback_id,
            outcome,
            now=self.clock(),
            dial=dial,
            reason=reason,
            count_attempt=outcome != "failed",
            source="agi",
        )

    async def list_requests(
        self, status: str = "open", *, queue: str | None = None, limit: int = 200
    ) -> list[CallbackRequest]:
        """For supervisors: ``open`` (by join time), ``closed`` (newest first) or ``all``."""
        out: list[CallbackRequest] = []
        if status in ("open", "all"):
            out.extend(await self.store.open_requests(limit))
        if status in ("closed", "all"):
            out.extend(await self.store.closed_requests(limit))
        if queue is not None:
            out = [r for r in out if r.queue == queue]
        return out[:limit]

    # -- estimates and overflow -------------------------------------------------------------------

    def observe(self, event: CallEvent) -> None:
        """Feed every emitted call event; ``agent.complete`` updates the recent handle times
        (talk time plus the queue's ``wrapup_s``)."""
        if event.type != "agent.complete" or not event.queue:
            return
        talk = event.data.get("talk_s")
        if isinstance(talk, int | float) and not isinstance(talk, bool):
            times = self.handle_times.get(event.queue)
            if times is None:
                # An agent takes the next call after its wrap-up: part of the handle time.
                qcfg = self.queues.get(event.queue)
                times = RecentHandleTimes(wrapup_s=qcfg.wrapup_s if qcfg is not None else 0.0)
                self.handle_times[event.queue] = times
            times.add(event.ts, float(talk))

    def mean_handle_s(self, queue: str, now: float) -> float | None:
        times = self.handle_times.get(queue)
        return times.mean(now) if times is not None else None

    def _snapshot(self, queue: str) -> QueueSnapshot | None:
        return self.live(queue) if self.live is not None else None

    async def estimate(
        self, queue: str, join_ts: float | None = None, *, callback_id: str | None = None
    ) -> Estimate | None:
        """Position in the merged line of a caller who joined at ``join_ts`` (or of a callback).

        None when the live state of the queue is unknown.
        """
        snap = self._snapshot(queue)
        if snap is None:
            return None
        now = self.clock()
        ts = now if join_ts is None else join_ts
        # Counts from the ordered set of pending callbacks, never the requests themselves:
        # an estimate is asked on every queue entry, and in overload thousands may wait.
        counts = await self.store.line_counts(queue, ts, callback_id)
        if counts.rank is not None and counts.join_ts is not None:
            # A pending callback: the callbacks ranked before it, and the callers who joined
            # at the same time or earlier (callers go first on a tie, ivr.callbacks.ordering).
            cb_ts = counts.join_ts
            position = 1 + counts.rank + sum(1 for _, joined in snap.waiting if joined <= cb_ts)
        else:
            position = 1 + counts.up_to + sum(1 for _, joined in snap.waiting if joined <= ts)
        mean = self.mean_handle_s(queue, now) or DEFAULT_HANDLE_S
        return Estimate(
            position=position,
            waiting_callers=len(snap.waiting),
            pending_callbacks=counts.pending,
            logged_in=snap.logged_in,
            available=snap.available,
            estimated_wait_s=estimated_wait(position, mean, snap.logged_in, snap.available),
        )

    async def overflow(self, queue: str, *, join_ts: float | None = None) -> OverflowDecision | None:
        """Should a caller of ``queue`` (joined at ``join_ts``; None: about to join) be offered a
        callback or an appointment? None when the queue or its live state is unknown."""
        qcfg = self.queues.get(queue)
        estimate = await self.estimate(queue, join_ts)
        if qcfg is None or estimate is None:
            return None
        now = self.clock()
        schedule = self.schedules.get(qcfg.service)
        open_now, closes_in, opens_in = True, None, None
        if schedule is not None:
            open_now = is_open(schedule, now)
            if open_now:
                closing = next_closing(schedule, now)
                closes_in = closing - now if closing is not None else None
            else:
                opening = next_opening(schedule, now)
                opens_in = opening - now if opening is not None else None
        load = QueueLoad(
            position=estimate.position,
            waiting=estimate.waiting_callers + estimate.pending_callbacks,
            logged_in=estimate.logged_in,
            available=estimate.available,
            mean_handle_s=self.mean_handle_s(queue, now),
            is_open=open_now,
            closes_in_s=closes_in,
            opens_in_s=opens_in,
        )
        return decide(
            load,
            qcfg,
            callbacks_enabled=self.config.enabled,
            callback_expiry_s=self.config.expiry_s,
        )


def hours_check(schedules: Mapping[str, Schedule]) -> Callable[[str, float], bool]:
    """``is_open(service, ts)`` for the dispatcher from the services' opening hours.

    A service without a schedule is taken as always open (a shared pool has none).
    """

    def check(service: str, ts: float) -> bool:
        schedule = schedules.get(service)
        return True if schedule is None else is_open(schedule, ts)

    return check
