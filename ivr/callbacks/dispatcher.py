"""The callback dispatcher: dials pending callbacks when their turn comes, exactly once.

Each pass (every ``poll_interval_s``, or at once when woken) and for each queue:

1. take the live :class:`~ivr.callbacks.ordering.QueueSnapshot` (injected function);
   nothing to do without a free agent;
2. read the queue's pending callbacks that may be dialled now (due after their retry
   delay, inside their window and the service's opening hours, not expired);
3. build the merged line (waiting callers ∪ those callbacks, by original join time) and
   claim the callbacks among its first ``free agents`` entries. A claim (Redis, atomic)
   fails if another controller took the request, or if as many callbacks as there are
   free agents are already ringing agents: never more callbacks in flight than free agents;
4. for each claim, a *flight* task places the call and follows it to its outcome.

**Agent-first** (default) follows ``dialplans/dp-callback.conf``: Originate
``Local/<queue>@callback-queue`` (the first free agent of the queue, through app_queue, at
priority ``IVR_PRIO``) or ``Local/<member>@agents`` (a given free member), then
``Context: callback-dial``, ``Exten: <customer number>``: once an agent answers, the
dialplan dials the customer. **Caller-first**: ``Local/<number>@callback-customer``, then
``callback-caller-first`` / ``<queue>``. Variables: ``IVR_CALLBACK_ID`` (the contract),
``IVR_CALLBACK_DIAL`` (which dial of the request this is), ``IVR_SERVICE``, ``IVR_CASE``,
``IVR_PRIO``, ``IVR_QTIMEOUT``.

Where outcomes come from (any of them settles the dial; the store applies the first):

* the ``OriginateResponse`` of our own Originate (FACTS.md: Reason 4 answered, 3 no
  answer, 5 busy, 8 congestion, 0 no such extension, 1 hung up). Agent-first: success means
  *an agent* answered; failure means no agent took it (``agent_retry``, not counted against
  the customer's attempts). Caller-first: success means the customer answered;
* AMI events, fed by the controller to :meth:`CallbackDispatcher.feed`: ``VarSet
  IVR_CALLBACK_ID`` maps the channel that dials the customer (agent-first: the originated
  ``;1`` running ``callback-dial``; caller-first: the ``;2`` of ``callback-customer``) to its
  request; its ``DialEnd`` carries the customer's DIALSTATUS. Every controller sees these
  events, so the outcome is recorded even when the controller that placed the call died;
* the ``callback-result`` AGI (:meth:`CallbackDispatcher.report_result`, for the IVR);
* liveness checks (``Status`` with ``Variables: IVR_CALLBACK_ID,IVR_CALLBACK_DIAL``) when an
  outcome is overdue or a dial was adopted: a ``;1`` in a bridge is a connected customer
  (agent-first);
* the outcome Asterisk itself keeps: ``h`` of ``dp-callback.conf`` writes it to AstDB
  (family :data:`OUTCOME_FAMILY`, key the request id, value ``<dial>:<DIALSTATUS>``) before
  the AGI. A call found gone without any outcome (every controller was down when it ended:
  no AGI taken, no AMI client saw it) is settled from that copy, read with ``DBGet`` (the
  ``reporting`` write class allows it, ``main/db.c``); only without one does it go back to
  pending, attempt counted (``outcome_unknown``). The ``ivr`` AMI user cannot delete AstDB
  keys (``DBDel`` needs ``system``): the dialplan deletes the key after an AGI that recorded
  the outcome, and a key read back here is named in ``IVR_CB_FORGET`` of the next Originate,
  whose dialplan deletes it.

Crash safety: a flight renews its Redis lease while the call lasts. A controller killed
mid-dial stops renewing; another dispatcher adopts the request once the lease has expired
(:meth:`CallbackStore.adopt`) and watches it like its own. Cancelling :meth:`run` (what a
``kill -9`` amounts to) touches nothing in Redis on the way out, on purpose.

Times: the injected ``clock`` is Asterisk time (retry delays, windows, expiry, events);
leases run on Redis' clock (they are about process liveness).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from redis.exceptions import RedisError

from ivr.ami.client import OriginateCall, OriginateResult
from ivr.ami.errors import ActionError, ActionTimeout, AMIError, ConnectionLost, NotConnected
from ivr.callbacks.ordering import LiveQueues, merged_line, select_for_dispatch
from ivr.callbacks.store import CallbackRequest, CallbackStore, FinishResult, Outcome
from ivr.domain.events import CallEvent, Scalar, make_id
from ivr.logs import get_logger
from ivr.protocol.ami import Event, Headers
from ivr.protocol.ami_list import ListResult
from ivr.protocol.errors import LocalProtocolError

if TYPE_CHECKING:
    from ivr.config import CallbackConfig

__all__ = [
    "OUTCOME_FAMILY",
    "AMIActions",
    "CallbackDispatcher",
    "DispatchSettings",
    "DispatcherStats",
    "Settler",
    "callback_event",
    "outcome_of_dialstatus",
]

log = get_logger(__name__)

Clock = Callable[[], float]
EventSink = Callable[[CallEvent], None]
OpenCheck = Callable[[str, float], bool]

#: Customer DIALSTATUS (``DialEnd`` or the ``callback-result`` AGI) -> (outcome, reason).
_DIALSTATUS: Final[dict[str, tuple[Outcome, str]]] = {
    "ANSWER": ("completed", "answered"),
    "NOANSWER": ("retry", "no_answer"),
    "BUSY": ("retry", "busy"),
    "CONGESTION": ("retry", "congestion"),
    "CHANUNAVAIL": ("retry", "unavailable"),
    "CANCEL": ("retry", "cancelled_by_agent"),
    "INVALIDNUMBER": ("failed", "invalid_number"),
}
#: ``ChannelState`` of an answered channel (``AST_STATE_UP``).
_STATE_UP: Final = "6"
#: OriginateResponse Reason (FACTS.md) -> reason slug.
_ORIGINATE_REASONS: Final[dict[int, str]] = {
    0: "no_such_extension",
    1: "hung_up",
    3: "no_answer",
    5: "busy",
    8: "congestion",
}


#: AstDB family where ``dp-callback.conf`` keeps each call's outcome (key: the request id).
OUTCOME_FAMILY: Final = "decroche-cb"
#: Keys read back and not yet deleted by a call's ``IVR_CB_FORGET``: bounded, oldest dropped.
_MAX_FORGET: Final = 1000


def outcome_of_dialstatus(status: str) -> tuple[Outcome, str]:
    """What a customer DIALSTATUS means for the request; unknown values are retried."""
    return _DIALSTATUS.get(status.strip().upper(), ("retry", "unknown_status"))


class AMIActions(Protocol):
    """The part of :class:`ivr.ami.client.AMIClient` the dispatcher uses."""

    async def originate(
        self,
        channel: str,
        *,
        context: str | None = ...,
        exten: str | None = ...,
        priority: int | str = ...,
        caller_id: str | None = ...,
        dial_timeout_ms: int = ...,
        variables: Mapping[str, str] | Iterable[tuple[str, str]] = ...,
        timeout: float | None = ...,  # noqa: ASYNC109 -- mirrors AMIClient.originate
        result_timeout: float | None = ...,
    ) -> OriginateCall: ...

    async def list_action(
        self,
        name: str,
        headers: Headers = ...,
        *,
        timeout: float | None = ...,  # noqa: ASYNC109 -- mirrors AMIClient.list_action
        strict: bool = ...,
    ) -> ListResult: ...


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """How callbacks are placed; defaults match ``dialplans/dp-callback.conf``.

    ``route``: ``queue`` (first free agent of the queue, app_queue picks) or ``member``
    (a free member picked here; direct to its interface). ``originate_timeout_s`` is the
    Originate ``Timeout``: agent-first, the queue wait plus the agent's ring; caller-first,
    the customer's ring. ``dialable`` is the pattern a number must match to be sent to the
    dialplan (the shipped ``_0[1-79]XXXXXXXX``): anything else fails at once rather than
    ringing an agent for nothing.
    """

    mode: Literal["agent_first", "caller_first"] = "agent_first"
    route: Literal["queue", "member"] = "queue"
    dial_context: str = "callback-dial"
    queue_context: str = "callback-queue"
    customer_context: str = "callback-customer"
    caller_first_context: str = "callback-caller-first"
    originate_timeout_s: float = 60.0
    retry_delay_s: float = 300.0
    agent_retry_delay_s: float = 20.0
    max_agent_failures: int = 10
    priority: int | None = None
    caller_id_name: str = "Rappel {service} {case}"
    dialable: str = r"0[1-79][0-9]{8}"
    lease_s: float = 15.0
    poll_interval_s: float = 1.0
    check_interval_s: float = 20.0
    outcome_grace_s: float = 30.0
    sweep_interval_s: float = 10.0
    ami_timeout_s: float = 10.0
    scan_limit: int = 500

    def __post_init__(self) -> None:
        if self.lease_s <= 0 or self.poll_interval_s <= 0 or self.check_interval_s <= 0:
            raise ValueError("lease_s, poll_interval_s and check_interval_s must be > 0")
        if self.originate_timeout_s <= 0 or self.retry_delay_s < 0 or self.agent_retry_delay_s < 0:
            raise ValueError("originate_timeout_s > 0, retry delays >= 0 required")
        if self.max_agent_failures < 1:
            raise ValueError("max_agent_failures must be >= 1")
        re.compile(self.dialable)

    @classmethod
    def from_config(cls, config: CallbackConfig, **overrides: Any) -> DispatchSettings:
        """Settings from ``[callbacks]``; caller-first rings the customer ``ring_timeout_s``."""
        values: dict[str, Any] = {
            "mode": config.mode,
            "route": config.route,
            "retry_delay_s": config.retry_delay_s,
            "lease_s": config.lease_s,
            "check_interval_s": config.check_interval_s,
            "outcome_grace_s": config.outcome_grace_s,
            "agent_retry_delay_s": config.agent_retry_delay_s,
        }
        if config.mode == "caller_first":
            values["originate_timeout_s"] = config.ring_timeout_s + 15.0
        values.update(overrides)
        return cls(**values)


@dataclass(slots=True)
class DispatcherStats:
    passes: int = 0
    claims: int = 0
    claim_conflicts: int = 0
    originates: int = 0
    originate_errors: int = 0
    completed: int = 0
    retried: int = 0
    failed: int = 0
    expired: int = 0
    adopted: int = 0
    leases_lost: int = 0
    liveness_checks: int = 0
    outcomes_kept: int = 0
    errors: int = 0


def callback_event(type_: str, req: CallbackRequest, ts: float, seq: object, **data: Scalar) -> CallEvent:
    """A ``callback.*`` event of ``req``: on the caller's original call, with a stable id.

    ``seq`` distinguishes repeated events of one request (the dial number, the update
    count), so that two controllers reporting the same step store it once.
    """
    payload: dict[str, Scalar] = {"callback_id": req.id, "original_join_ts": req.join_ts}
    payload.update(data)
    return CallEvent(
        type=type_,
        call=req.call or req.id,
        ts=ts,
        id=make_id("callback", req.id, type_, seq),
        service=req.service,
        queue=req.queue,
        source="callback",
        data=payload,
    )


class Settler:
    """Applies an outcome to the store and emits the event of what actually changed.

    The one place outcomes go through, whoever reports them (our flight, an AMI event, the
    ``callback-result`` AGI, a liveness check), so that each is recorded and announced once.
    """

    def __init__(self, store: CallbackStore, emit: EventSink, settings: DispatchSettings) -> None:
        self.store = store
        self.emit = emit
        self.settings = settings

    async def settle(
        self,
        callback_id: str,
        outcome: Outcome,
        *,
        now: float,
        dial: int | None,
        reason: str,
        count_attempt: bool,
        only_without_lease: bool = False,
        source: str = "",
    ) -> FinishResult:
        s = self.settings
        delay = s.agent_retry_delay_s if outcome in ("agent_retry", "release") else s.retry_delay_s
        result = await self.store.finish(
            callback_id,
            outcome,
            now=now,
            dial=dial,
            reason=reason,
            next_attempt_at=now + delay,
            count_attempt=count_attempt,
            max_agent_failures=s.max_agent_failures,
            only_without_lease=only_without_lease,
        )
        if not result.changed:
            return result
        req = await self.store.get(callback_id)
        if req is None:
            return result
        common: dict[str, Scalar] = {
            "attempt": result.dial,
            "attempts": result.attempts,
            "reason": result.reason,
        }
        if source:
            common["source"] = source
        if result.status == "completed":
            self.emit(
                callback_event(
                    "callback.connected",
                    req,
                    now,
                    "final",
                    wait_s=round(now - req.join_ts, 3),
                    since_request_s=round(now - req.created, 3),
                    **common,
                )
            )
        elif result.status == "failed":
            self.emit(callback_event("callback.failed", req, now, "final", **common))
        elif result.status == "pending" and outcome != "release":
            self.emit(
                callback_event(
                    "callback.retry", req, now, result.dial, next_attempt_at=req.next_attempt_at, **common
                )
            )
        return result


@dataclass(slots=True)
class _Flight:
    """One dial of one request, followed by this dispatcher."""

    request: CallbackRequest
    dial: int
    adopted: bool
    settled: asyncio.Future[FinishResult]
    phase: str = "agent"
    started: float = 0.0
    answered_at: float = 0.0
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Mapped:
    """A channel that dials a customer for a callback (from VarSet or a Status reply)."""

    callback_id: str
    dial: int | None = None
    from_birth: bool = True
    dial_ended: bool = False


@dataclass(frozen=True, slots=True)
class _Live:
    """Channels of one callback seen in a Status reply."""

    dial: int | None
    bridged: bool
    channels: tuple[str, ...] = field(default=())


class CallbackDispatcher:
    """Places callbacks (see the module docstring). One per controller; several may run.

    ``live(queue)`` gives a queue snapshot (None while unknown); ``emit`` is the
    controller's event sink; ``clock`` Asterisk time; ``is_open(service, ts)`` the service's
    opening hours (default: always open); ``queues`` the queues to serve.
    """

    def __init__(
        self,
        store: CallbackStore,
        ami: AMIActions,
        live: LiveQueues,
        emit: EventSink,
        clock: Clock,
        *,
        queues: Sequence[str],
        settings: DispatchSettings | None = None,
        is_open: OpenCheck | None = None,
        owner: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_mapped_channels: int = 20_000,
    ) -> None:
        self.store = store
        self.ami = ami
        self.live = live
        self.clock = clock
        self.queues = tuple(queues)
        self.settings = settings or DispatchSettings()
        self.is_open = is_open
        self.owner = owner or f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self.settler = Settler(store, emit, self.settings)
        self.emit = emit
        self.stats = DispatcherStats()
        self._sleep = sleep
        self._dialable = re.compile(self.settings.dialable)
        self._flights: dict[str, _Flight] = {}
        self._mapped: OrderedDict[str, _Mapped] = OrderedDict()
        self._max_mapped = max_mapped_channels
        self._reports: asyncio.Queue[tuple[str, int | None, Outcome, str, bool, str]] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_sweep = float("-inf")
        self._live_cache: tuple[float, dict[str, _Live]] | None = None
        self._live_lock = asyncio.Lock()
        self._forget: OrderedDict[str, None] = OrderedDict()
        self._running = False
        self._grace = 30.0
        self._exited = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch until :meth:`stop` (graceful) or cancellation (abrupt: Redis left as is)."""
        if self._running:
            raise RuntimeError("dispatcher already running")
        self._running = True
        self._exited.clear()
        worker = self._spawn(self._report_worker(), "callback-reports")
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                started = loop.time()
                try:
                    await self.tick()
                except (RedisError, OSError) as exc:
                    self.stats.errors += 1
                    log.warning("callback.dispatch_error", error=str(exc))
                except Exception:
                    # A bug must not stop every callback: log it loudly, try again next pass.
                    self.stats.errors += 1
                    log.exception("callback.dispatch_failed")
                remaining = self.settings.poll_interval_s - (loop.time() - started)
                self._wake.clear()
                if remaining > 0 and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await self._wake.wait()
            flights = [f.task for f in self._flights.values() if f.task is not None]
            if flights:
                await asyncio.wait(flights, timeout=self._grace)
        finally:
            # No Redis write on the way out: leases left behind expire and are adopted.
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                _, stuck = await asyncio.wait(tasks, timeout=5.0)
                for task in stuck:
                    log.error("callback.task_stuck_on_stop", task=task.get_name())
            worker.cancel()
            self._running = False
            self._exited.set()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop claiming; let calls in flight settle for up to ``grace_s``, then leave them.

        A call left behind keeps ringing or talking in Asterisk; its lease expires and
        another controller (or this one, restarted) adopts it.
        """
        self._grace = grace_s
        self._stopping = True
        self._wake.set()
        if self._running:
            await self._exited.wait()

    def wake(self) -> None:
        """Run a pass now (an agent became free, a request arrived)."""
        self._wake.set()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.errors += 1
            log.error("callback.task_failed", task=task.get_name(), exc_info=task.exception())

    @property
    def in_flight(self) -> int:
        """Calls this dispatcher is following now."""
        return len(self._flights)

    # -- one pass ----------------------------------------------------------------------------------

    async def tick(self) -> int:
        """One dispatch pass over every queue (plus sweeps); returns the number of claims."""
        self.stats.passes += 1
        now = self.clock()
        if now - self._last_sweep >= self.settings.sweep_interval_s:
            self._last_sweep = now
            await self._expire_due(now)
        await self._recover()
        claimed = 0
        if self._stopping:
            return 0
        for queue in self.queues:
            claimed += await self._dispatch_queue(queue, now)
        return claimed

    async def _dispatch_queue(self, queue: str, now: float) -> int:
        snap = self.live(queue)
        if snap is None or snap.available <= 0:
            return 0
        ringing = await self.store.ringing_count(queue)
        free = snap.available - ringing
        if free <= 0:
            return 0
        candidates = await self._candidates(queue, now, free)
        if not candidates:
            return 0
        line = merged_line(snap.waiting, [(c.id, c.join_ts) for c in candidates])
        chosen = select_for_dispatch(line, free)
        by_id = {c.id: c for c in candidates}
        members = list(snap.free_members)
        claimed = 0
        for cid in chosen:
            req = by_id[cid]
            if not self._dialable.fullmatch(req.number):
                await self._fail_undialable(req, now)
                continue
            result = await self.store.claim(
                cid,
                queue,
                self.owner,
                lease_ms=int(self.settings.lease_s * 1000),
                now=now,
                free_agents=snap.available,
            )
            if not result.ok:
                self.stats.claim_conflicts += 1
                log.debug("callback.claim_refused", callback_id=cid, reason=result.reason)
                if result.reason == "no_agent":
                    break
                continue
            self.stats.claims += 1
            claimed += 1
            member = members.pop(0) if self.settings.route == "member" and members else None
            fresh = await self.store.get(cid)
            self._start_flight(fresh or req, result.dial, adopted=False, member=member)
        return claimed

    async def _candidates(self, queue: str, now: float, wanted: int) -> list[CallbackRequest]:
        """Pending requests of ``queue`` that may be dialled now, earliest first (up to ``wanted``)."""
        out: list[CallbackRequest] = []
        start = 0
        chunk = max(10, wanted * 4)
        while len(out) < wanted and start < self.settings.scan_limit:
            batch = await self.store.pending(queue, start, chunk)
            if not batch:
                break
            start += chunk
            for req in batch:
                if req.status == "pending" and self._dialable_now(req, now):
                    out.append(req)
                    if len(out) >= wanted:
                        break
        return out

    def _dialable_now(self, req: CallbackRequest, now: float) -> bool:
        if req.next_attempt_at > now or req.expires_at <= now:
            return False
        if req.window_start and now < req.window_start:
            return False
        if req.window_end and now >= req.window_end:
            return False
        return self.is_open is None or self.is_open(req.service, now)

    async def _fail_undialable(self, req: CallbackRequest, now: float) -> None:
        """A number the dialplan would refuse (policy allowed it): fail it, ring nobody."""
        claim = await self.store.claim(
            req.id,
            req.queue,
            self.owner,
            lease_ms=int(self.settings.lease_s * 1000),
            now=now,
            free_agents=10**6,
        )
        if claim.ok:
            await self.settler.settle(
                req.id, "failed", now=now, dial=claim.dial, reason="not_dialable", count_attempt=False
            )

    async def _expire_due(self, now: float) -> None:
        for req in await self.store.open_requests(limit=100_000):
            if req.status == "pending" and req.expires_at <= now and await self.store.expire(req.id, now=now):
                self.stats.expired += 1
                self.emit(
                    callback_event(
                        "callback.expired",
                        req,
                        now,
                        "final",
                        attempts=req.attempts,
                        reason="expired",
                        wait_s=round(now - req.join_ts, 3),
                    )
                )

    async def _recover(self) -> None:
        """Adopt dials whose controller stopped renewing its lease."""
        due = await self.store.due_for_check(await self.store.server_ms())
        for cid in due:
            if cid in self._flights:
                continue
            dial = await self.store.adopt(cid, self.owner, int(self.settings.lease_s * 1000))
            if dial is None:
                continue
            req = await self.store.get(cid)
            if req is None:
                continue
            self.stats.adopted += 1
            log.warning(
                "callback.adopted", callback_id=cid, dial=dial, phase=req.phase, previous_owner=req.owner
            )
            self._start_flight(req, dial, adopted=True)

    # -- flights -------------------------------------------------------------------------------------

    def _start_flight(
        self, req: CallbackRequest, dial: int, *, adopted: bool, member: str | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        flight = _Flight(
            request=req,
            dial=dial,
            adopted=adopted,
            settled=loop.create_future(),
            phase=req.phase or "agent",
            started=self.clock(),
            answered_at=req.answered_at,
        )
        self._flights[req.id] = flight
        flight.task = self._spawn(self._fly(flight, member), f"callback {req.id}#{dial}")

    async def _fly(self, flight: _Flight, member: str | None) -> None:
        keeper = self._spawn(self._keep_lease(flight), f"lease {flight.request.id}")
        try:
            if not flight.adopted:
                await self._dial(flight, member)
            if not flight.settled.done():
                await self._watch(flight)
        finally:
            keeper.cancel()
            if self._flights.get(flight.request.id) is flight:
                del self._flights[flight.request.id]
            self.wake()

    async def _keep_lease(self, flight: _Flight) -> None:
        lease_ms = int(self.settings.lease_s * 1000)
        req = flight.request
        while not flight.settled.done():
            await self._sleep(self.settings.lease_s / 3)
            try:
                if await self.store.renew(req.id, self.owner, lease_ms):
                    continue
            except RedisError as exc:
                log.warning("callback.renew_failed", callback_id=req.id, error=str(exc))
                continue
            current = await self.store.get(req.id)
            if current is None or current.status != "dialing" or current.dial != flight.dial:
                return  # settled elsewhere: the flight will see it
            if await self.store.adopt(req.id, self.owner, lease_ms) is None:
                self.stats.leases_lost += 1
                log.warning("callback.lease_lost", callback_id=req.id, dial=flight.dial)
                if not flight.settled.done():
                    flight.settled.set_result(FinishResult(False, "dialing", reason="lease_lost"))
                return

    def _originate_args(self, req: CallbackRequest, dial: int, member: str | None) -> dict[str, Any]:
        s = self.settings
        variables: list[tuple[str, str]] = [
            ("IVR_CALLBACK_ID", req.id),
            ("IVR_CALLBACK_DIAL", str(dial)),
            ("IVR_SERVICE", req.service),
        ]
        if req.case:
            variables.append(("IVR_CASE", req.case))
        if s.priority is not None:
            variables.append(("IVR_PRIO", str(s.priority)))
        if self._forget:
            forget, _ = self._forget.popitem(last=False)
            if forget != req.id:  # this call's own 'h' overwrites its key anyway
                variables.append(("IVR_CB_FORGET", forget))
        for name, value in variables:
            if not value or any(c in value for c in ',"\r\n'):
                raise LocalProtocolError(f"unsafe value for channel variable {name}: {value!r}")
        timeout_ms = int(s.originate_timeout_s * 1000)
        if s.mode == "caller_first":
            return {
                "channel": f"Local/{req.number}@{s.customer_context}",
                "context": s.caller_first_context,
                "exten": req.queue,
                "variables": variables,
                "dial_timeout_ms": timeout_ms,
            }
        if member is not None:
            channel = member
        else:
            channel = f"Local/{req.queue}@{s.queue_context}"
            variables.append(("IVR_QTIMEOUT", str(max(1, int(s.originate_timeout_s)))))
        name = s.caller_id_name.format(service=req.service, case=req.case).strip()
        return {
            "channel": channel,
            "context": s.dial_context,
            "exten": req.number,
            "variables": variables,
            "dial_timeout_ms": timeout_ms,
            "caller_id": f'"{name}" <{req.number}>',
        }

    async def _dial(self, flight: _Flight, member: str | None) -> None:
        req, dial = flight.request, flight.dial
        s = self.settings
        try:
            args = self._originate_args(req, dial, member)
        except LocalProtocolError as exc:
            log.error("callback.bad_request", callback_id=req.id, error=str(exc))
            await self._settle(flight, "failed", "invalid_request", count_attempt=False)
            return
        self.stats.originates += 1
        try:
            call = await self.ami.originate(
                args.pop("channel"),
                priority=1,
                timeout=s.ami_timeout_s,
                result_timeout=s.originate_timeout_s + s.outcome_grace_s,
                **args,
            )
        except NotConnected:
            self.stats.originate_errors += 1
            await self._settle(flight, "release", "pbx_unreachable", count_attempt=False)
            return
        except ActionError as exc:
            self.stats.originate_errors += 1
            log.error("callback.originate_refused", callback_id=req.id, message=exc.message)
            await self._settle(flight, "agent_retry", "originate_refused", count_attempt=False)
            return
        except (ActionTimeout, ConnectionLost) as exc:
            # Sent, maybe running: only Asterisk knows now. Watch it.
            self.stats.originate_errors += 1
            log.warning("callback.originate_unknown", callback_id=req.id, error=str(exc))
            self._emit_dialing(flight)
            return
        self._emit_dialing(flight)
        result = await self._first(flight, call.result)
        if result is None:
            return  # settled by an event or the AGI meanwhile, or unknown (watch)
        await self._on_originate_result(flight, result)

    def _emit_dialing(self, flight: _Flight) -> None:
        req = flight.request
        self.emit(
            callback_event(
                "callback.dialing",
                req,
                self.clock(),
                flight.dial,
                attempt=flight.dial,
                attempts=req.attempts,
                mode=self.settings.mode,
                wait_s=round(self.clock() - req.join_ts, 3),
            )
        )

    async def _first(
        self, flight: _Flight, result: asyncio.Future[OriginateResult]
    ) -> OriginateResult | None:
        """The OriginateResponse, unless the dial is settled first (None also if it never came)."""
        waiting: list[asyncio.Future[Any]] = [result, flight.settled]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if result in done:
            try:
                return result.result()
            except AMIError as exc:
                log.warning(
                    "callback.originate_result_unknown", callback_id=flight.request.id, error=str(exc)
                )
                return None
        return None

    async def _on_originate_result(self, flight: _Flight, result: OriginateResult) -> None:
        req = flight.request
        reason = _ORIGINATE_REASONS.get(result.reason if result.reason is not None else -1, "failed")
        if self.settings.mode == "caller_first":
            if result.ok:
                await self._settle(flight, "completed", "answered", count_attempt=True, source="originate")
            else:
                await self._settle(flight, "retry", reason, count_attempt=True, source="originate")
            return
        if not result.ok:
            await self._settle(
                flight, "agent_retry", f"agent_{reason}", count_attempt=False, source="originate"
            )
            return
        flight.phase = "customer"
        flight.answered_at = self.clock()
        channel = result.channel or ""
        if channel:
            self._map(channel, req.id, flight.dial, from_birth=True)
        await self.store.agent_answered(req.id, req.queue, flight.dial, flight.answered_at, channel)
        log.info("callback.agent_answered", callback_id=req.id, dial=flight.dial, channel=channel)

    async def _watch(self, flight: _Flight) -> None:
        """Wait for the outcome; check with Asterisk when it is overdue or the dial was adopted."""
        s = self.settings
        if flight.adopted:
            if await self._check_alive(flight, fresh=True):
                return
        while not flight.settled.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.check_interval_s):
                    await asyncio.shield(flight.settled)
            if flight.settled.done():
                return
            if await self._check_alive(flight, fresh=False):
                return

    async def _check_alive(self, flight: _Flight, *, fresh: bool) -> bool:
        """Ask Asterisk about the call; settle it if it is connected or gone. True if settled."""
        req = flight.request
        live = await self._live_calls(max_age=0.0 if fresh else self.settings.check_interval_s / 2)
        if live is None:
            return False  # Asterisk unreachable: keep the lease, ask again later
        info = live.get(req.id)
        if info is not None and info.dial not in (None, flight.dial):
            info = None  # channels of an older dial of this request
        if info is not None:
            if info.bridged:
                await self._settle(flight, "completed", "answered", count_attempt=True, source="status")
                return True
            for channel in info.channels:
                self._map(channel, req.id, flight.dial, from_birth=False)
            return False
        # Gone. A late event or the AGI may still be on its way: give it a moment.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(2.0, self.settings.check_interval_s)):
                await asyncio.shield(flight.settled)
        if flight.settled.done():
            return True
        try:
            kept = await self._kept_outcome(req.id, flight.dial)
        except (AMIError, OSError) as exc:
            log.warning("callback.dbget_failed", callback_id=req.id, error=str(exc))
            return False  # Asterisk unreachable: keep the lease, ask again later
        if flight.settled.done():
            return True
        if kept is not None:
            outcome, reason = outcome_of_dialstatus(kept)
            self.stats.outcomes_kept += 1
            log.warning("callback.outcome_kept", callback_id=req.id, dial=flight.dial, status=kept)
            await self._settle(flight, outcome, reason, count_attempt=outcome != "failed", source="astdb")
            self._forget[req.id] = None
            while len(self._forget) > _MAX_FORGET:
                self._forget.popitem(last=False)
            return True
        await self._settle(flight, "retry", "outcome_unknown", count_attempt=True, source="status")
        return True

    async def _kept_outcome(self, callback_id: str, dial: int) -> str | None:
        """The DIALSTATUS ``dp-callback.conf`` kept in AstDB for this dial, or None.

        ``DBGet`` (``main/db.c``, ``manager_dbget``) answers ``Response: Success``,
        ``EventList: start``, ``Message: Result will follow``, one ``DBGetResponse`` event
        (``Family``, ``Key``, ``Val``) and ``DBGetComplete``; a missing key is ``Response:
        Error`` / ``Message: Database entry not found``. A value kept for another dial of the
        request (an older call) is ignored; so is any other error Asterisk answers (the call
        is then without outcome, as before). Raises :class:`AMIError` or :class:`OSError`
        when Asterisk could not be asked.
        """
        try:
            reply = await self.ami.list_action(
                "DBGet",
                {"Family": OUTCOME_FAMILY, "Key": callback_id},
                timeout=self.settings.ami_timeout_s,
            )
        except ActionError as exc:
            if exc.message != "Database entry not found":
                log.warning("callback.dbget_refused", callback_id=callback_id, error=exc.message)
            return None
        for item in reply.items:
            if item.name != "DBGetResponse":
                continue
            dial_text, sep, status = (item.get("Val") or "").partition(":")
            if not sep or not status:
                return None
            if dial_text and dial_text != str(dial):
                return None  # an older dial's outcome
            return status.strip().upper()
        return None

    async def _live_calls(self, *, max_age: float) -> dict[str, _Live] | None:
        """Callbacks with channels up, from one ``Status`` (shared between flights)."""
        loop = asyncio.get_running_loop()
        async with self._live_lock:
            cached = self._live_cache
            if cached is not None and loop.time() - cached[0] <= max_age:
                return cached[1]
            self.stats.liveness_checks += 1
            try:
                reply = await self.ami.list_action(
                    "Status",
                    {"Variables": "IVR_CALLBACK_ID,IVR_CALLBACK_DIAL"},
                    timeout=self.settings.ami_timeout_s,
                )
            except (AMIError, OSError) as exc:
                log.warning("callback.status_failed", error=str(exc))
                return None
            found: dict[str, tuple[int | None, bool, list[str]]] = {}
            for item in reply.items:
                values: dict[str, str] = {}
                for pair in item.getall("Variable"):
                    key, _, value = pair.partition("=")
                    values[key] = value
                cid = values.get("IVR_CALLBACK_ID", "")
                if not cid:
                    continue
                dial_text = values.get("IVR_CALLBACK_DIAL", "")
                dial = int(dial_text) if dial_text.isdigit() else None
                channel = item.get("Channel") or ""
                entry = found.setdefault(cid, (dial, False, []))
                bridged = entry[1]
                if self._dials_customer(channel) and (item.get("BridgeID") or item.get("BridgeId") or ""):
                    bridged = True
                if self._dials_customer(channel):
                    entry[2].append(channel)
                found[cid] = (entry[0] if entry[0] is not None else dial, bridged, entry[2])
            result = {cid: _Live(d, b, tuple(chs)) for cid, (d, b, chs) in found.items()}
            self._live_cache = (loop.time(), result)
            return result

    async def _settle(
        self, flight: _Flight, outcome: Outcome, reason: str, *, count_attempt: bool, source: str = ""
    ) -> None:
        result = await self.settler.settle(
            flight.request.id,
            outcome,
            now=self.clock(),
            dial=flight.dial,
            reason=reason,
            count_attempt=count_attempt,
            source=source,
        )
        self._count(result)
        if not flight.settled.done():
            flight.settled.set_result(result)

    def _count(self, result: FinishResult) -> None:
        if not result.changed:
            return
        if result.status == "completed":
            self.stats.completed += 1
        elif result.status == "failed":
            self.stats.failed += 1
        elif result.status == "pending":
            self.stats.retried += 1

    # -- outcomes from outside: AMI events and the AGI ----------------------------------------------

    def _dials_customer(self, channel: str) -> bool:
        """Is ``channel`` the half that dials the customer (see the module docstring)?"""
        if self.settings.mode == "caller_first":
            return f"@{self.settings.customer_context}-" in channel and channel.endswith(";2")
        # Agent-first: the originated channel itself runs callback-dial -- the ;1 of a Local
        # channel, or the agent's own channel when a member's interface is not Local.
        return bool(channel) and not channel.endswith(";2")

    def _map(self, channel: str, callback_id: str, dial: int | None, *, from_birth: bool) -> None:
        current = self._mapped.get(channel)
        if current is not None:
            if callback_id and not current.callback_id:
                current.callback_id = callback_id
            if dial is not None and current.dial is None:
                current.dial = dial
            return
        self._mapped[channel] = _Mapped(callback_id, dial, from_birth)
        while len(self._mapped) > self._max_mapped:
            self._mapped.popitem(last=False)

    def feed(self, event: Event) -> None:
        """An AMI event (the controller passes every one; the irrelevant cost a dict lookup)."""
        name = event.name
        if name == "VarSet":
            var = event.get("Variable") or ""
            if var not in ("IVR_CALLBACK_ID", "IVR_CALLBACK_DIAL"):
                return
            channel = event.get("Channel") or ""
            value = event.get("Value") or ""
            if not value or not self._dials_customer(channel):
                return
            if event.get("ChannelState") == _STATE_UP:
                # Set on a call already answered: the IVR recording a request on the
                # caller's channel, not our Originate (whose variables come before any answer).
                return
            if var == "IVR_CALLBACK_ID":
                self._map(channel, value, None, from_birth=True)
            elif value.isdigit():  # either variable may come first
                self._map(channel, "", int(value), from_birth=True)
            return
        if name == "DialEnd":
            dialler = event.get("Channel")
            if not dialler:
                return  # the Originate's own dial (no Channel header, FACTS.md)
            mapped = self._mapped.get(dialler)
            status = (event.get("DialStatus") or "").upper()
            if mapped is None or not mapped.callback_id or not status or mapped.dial_ended:
                return
            mapped.dial_ended = True
            outcome, reason = outcome_of_dialstatus(status)
            self._report(mapped.callback_id, mapped.dial, outcome, reason, outcome != "failed", "ami")
            return
        if name == "Hangup":
            mapped = self._mapped.pop(event.get("Channel") or "", None)
            if mapped is None or not mapped.callback_id or mapped.dial_ended:
                return
            if mapped.from_birth:
                # Hung up before dialling the customer (no agent, an agent who hung up, a
                # number the dialplan refused): the customer was never rung.
                self._report(
                    mapped.callback_id, mapped.dial, "agent_retry", "hangup_before_dial", False, "ami"
                )
            else:
                flight = self._flights.get(mapped.callback_id)
                if flight is not None:
                    self._spawn(self._check_alive(flight, fresh=True), f"check {mapped.callback_id}")

    def gap(self) -> None:
        """AMI events were lost (reconnect): what we know of channels may be incomplete."""
        for mapped in self._mapped.values():
            mapped.from_birth = False

    def _report(
        self, callback_id: str, dial: int | None, outcome: Outcome, reason: str, count: bool, source: str
    ) -> None:
        self._reports.put_nowait((callback_id, dial, outcome, reason, count, source))

    async def _report_worker(self) -> None:
        while True:
            callback_id, dial, outcome, reason, count, source = await self._reports.get()
            try:
                await self._apply_report(callback_id, dial, outcome, reason, count, source)
            except Exception as exc:
                # Not lost for good: the flight, the AGI or a liveness check settles it later.
                self.stats.errors += 1
                log.error("callback.report_failed", callback_id=callback_id, outcome=outcome, error=repr(exc))

    async def _apply_report(
        self, callback_id: str, dial: int | None, outcome: Outcome, reason: str, count: bool, source: str
    ) -> FinishResult:
        flight = self._flights.get(callback_id)
        if flight is not None and dial is None:
            dial = flight.dial
        if (
            flight is not None
            and not flight.adopted
            and flight.phase == "agent"
            and outcome == "agent_retry"
            and source == "ami"
        ):
            # Our Originate failed: its OriginateResponse, on its way, says why.
            return FinishResult(False, "dialing", reason="deferred")
        result = await self.settler.settle(
            callback_id,
            outcome,
            now=self.clock(),
            dial=dial,
            reason=reason,
            count_attempt=count,
            source=source,
        )
        self._count(result)
        if flight is not None and (
            result.changed or result.reason in ("not_dialing", "stale_dial", "missing")
        ):
            if not flight.settled.done():
                flight.settled.set_result(result)
        return result

    async def report_result(self, callback_id: str, status: str, dial: int | None = None) -> FinishResult:
        """The ``callback-result`` AGI: ``status`` is the customer's DIALSTATUS or INVALIDNUMBER.

        ``dial`` (channel variable ``IVR_CALLBACK_DIAL``) ties the report to one dial; without
        it the current dial is assumed. ``ANSWER`` completes the request even if it had been
        put back to pending meanwhile (the customer was reached: never dial them again).
        """
        outcome, reason = outcome_of_dialstatus(status)
        return await self._apply_report(callback_id, dial, outcome, reason, outcome != "failed", "agi")
