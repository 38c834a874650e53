"""The controller: wiring of every part around one event loop.

::

    Asterisk ──AMI──▶ AMIClient ─▶ StateTracker ─▶ emit() ─┬▶ EventLogWriter ─▶ Redis stream
    Asterisk ──FastAGI──▶ AGIServer (IVR flows) ───▶ emit() ├▶ KpiAccumulator (live figures)
                      │  service requests                  ├▶ CallbackService.observe (handle times)
                      ▼                                    └▶ (dashboard reads both)
         CallbackService / AppointmentStore ──▶ Redis (requests, bookings)
    AMIClient ─▶ CallbackDispatcher.feed ─▶ AMI Originate (callbacks, in line order)
    due bookings ─▶ callback requests at the slot time

Callbacks: the IVR flows are *service flows* (``ivr.domain.ivr_ops``): they yield requests
("overload?", "record this callback", "free slots?") that :meth:`Controller.perform` answers
from the callback service and the appointment store. The FastAGI session hands each request
to the server, which runs :meth:`Controller.perform` as a task; the session sends nothing on
the channel meanwhile and resumes the flow with the reply. A request
the service cannot answer (Redis away, timeout) gets its fallback reply: nothing offered,
nothing promised, the caller waits for an agent. The dispatcher sees every AMI event (the
outcome of its calls), hears about AMI gaps, and is woken when an agent may have become
free. Appointments whose slot has come are turned into callback requests, placed in the
line at the slot's start.

Each part is built here and handed what it needs (explicit injection, no globals), so the
demo, the tests and ``ivr run`` assemble the same controller with different endpoints.
:func:`emit` is the only way a call event enters the system: the live KPIs and the
stored stream see the very same events, which is what makes live and historical figures
agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from ivr.agi.server import AGIServer
from ivr.ami.client import AMIClient, Backoff
from ivr.ami.errors import AMIError
from ivr.appointments.flow import booking_event
from ivr.appointments.requests import Booking
from ivr.appointments.store import AppointmentStore
from ivr.callbacks import http as callback_http
from ivr.callbacks.dispatcher import CallbackDispatcher, DispatchSettings
from ivr.callbacks.ordering import QueueSnapshot, snapshot_from_state
from ivr.callbacks.service import CallbackService, hours_check
from ivr.callbacks.store import CallbackStore
from ivr.config import Config
from ivr.domain.events import CallEvent
from ivr.domain.ivr_ops import (
    CallbackDetails,
    CallbackRecorded,
    CallbackReported,
    Cancelled,
    CancelOpen,
    CheckOverflow,
    FindOpen,
    GetCallback,
    OpenRequests,
    OverflowAdvice,
    RecordCallback,
    Reply,
    ReportCallback,
    Request,
    fallback_reply,
)
from ivr.domain.kpi import KpiAccumulator
from ivr.domain.scripts import ServiceFlowFactory, service_flows
from ivr.domain.state import StateTracker
from ivr.kpi_cli import report_from_redis, settings_from_config
from ivr.logs import get_logger
from ivr.metrics import ControllerCollector
from ivr.protocol.ami import Event
from ivr.shutdown import wait_for_stop_signal
from ivr.storage.keys import Keys
from ivr.storage.privacy import NumberHasher
from ivr.storage.writer import EventLogWriter, make_client
from ivr.web.app import WebSources, create_app
from ivr.web.tail import redis_tail

log = get_logger(__name__)

Clock = Callable[[], float]

#: How long after its slot ended a booking is still called back (a controller that was down).
APPOINTMENT_GRACE_S = 3600.0
#: AMI events after which an agent may be free: the dispatcher looks at once.
_WAKE_DISPATCHER = frozenset({"AgentComplete", "QueueMemberStatus", "QueueMemberPause"})


@dataclass(slots=True)
class Endpoints:
    """Where the controller connects and listens; defaults come from the config."""

    ami_host: str | None = None
    ami_port: int | None = None
    ami_secret: str | None = None
    agi_host: str | None = None
    agi_port: int | None = None
    web_host: str | None = None
    web_port: int | None = None
    redis_url: str | None = None
    spool_path: str | None = None


class Controller:
    """One running Décroché controller.

    ``clock`` is the time the IVR flows see (opening hours); a simulated PBX passes its
    own. The live KPI figures use Asterisk's own timestamps, carried by the events.
    """

    def __init__(
        self,
        config: Config,
        endpoints: Endpoints | None = None,
        *,
        clock: Clock = time.time,
        web: bool = True,
        retention_interval_s: float = 3600.0,
        dispatch: DispatchSettings | None = None,
        appointment_poll_s: float = 5.0,
        callback_grace_s: float = 10.0,
        wrapup_s: float | None = None,
    ) -> None:
        ep = endpoints or Endpoints()
        self.config = config
        self.clock = clock
        self.keys = Keys(config.redis.key_prefix)
        self.stream_key = config.redis.stream
        self.redis_url = ep.redis_url or config.redis.url
        self.hasher = NumberHasher(config.redis.resolve_hash_key())
        self.web_token = config.web.resolve_token()
        self.kpi_settings = settings_from_config(config)
        self.tracker = StateTracker(hash_number=self.hasher)
        self.kpi = KpiAccumulator(self.kpi_settings)
        self.writer = EventLogWriter(
            self.redis_url,
            spool_path=ep.spool_path or config.redis.spool_path,
            stream_key=self.stream_key,
            keys=self.keys,
            hasher=self.hasher,
        )
        ami = config.ami
        self.ami = AMIClient(
            ep.ami_host or ami.host,
            ep.ami_port or ami.port,
            ami.username,
            ep.ami_secret if ep.ami_secret is not None else ami.resolve_secret(),
            connect_timeout=ami.connect_timeout_s,
            ping_interval=ami.ping_interval_s,
            ping_timeout=ami.ping_timeout_s,
            backoff=Backoff(initial=ami.reconnect_min_s, maximum=ami.reconnect_max_s),
            on_connected=self._resync,
            on_gap=self._on_gap,
        )
        self.dispatch_settings = dispatch or DispatchSettings.from_config(config.callbacks)
        self.appointment_poll_s = appointment_poll_s
        self.wrapup_s = wrapup_s
        self.callback_grace_s = callback_grace_s
        # Built in start(), on the Redis client: until then requests get their fallback reply.
        self.callback_store: CallbackStore | None = None
        self.callbacks: CallbackService | None = None
        self.dispatcher: CallbackDispatcher | None = None
        self.appointments: AppointmentStore | None = None
        self.agi = AGIServer(
            config,
            flows=self.flows(),
            perform=self.perform,
            event_sink=self.emit,
            host=ep.agi_host,
            port=ep.agi_port,
            clock=clock,
        )
        self.registry = CollectorRegistry()
        self.registry.register(ControllerCollector(self))
        self.web_enabled = web
        self.web_host = ep.web_host or config.web.host
        self.web_port = config.web.port if ep.web_port is None else ep.web_port
        self.retention_interval_s = retention_interval_s
        self.events_emitted = 0
        self._gap_from: float | None = None
        self._dropped_seen = 0
        self._redis: redis.asyncio.Redis | None = None
        self._runner: Any = None
        self._site: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()

    # -- the one entry point of call events -------------------------------------------------
    def emit(self, event: CallEvent) -> None:
        """Store an event and count it live. Never blocks (the writer buffers or spools)."""
        self.writer.submit(event)
        self.kpi.add(event)
        self.events_emitted += 1
        if self.callbacks is not None:
            self.callbacks.observe(event)

    # -- callbacks and appointments --------------------------------------------------------
    def live_queue(self, queue: str) -> QueueSnapshot | None:
        """The dispatcher's and the overflow policy's view of a queue (None until known).

        A member still in its wrap-up time is not free, whatever its device state says:
        app_queue will not ring it (``wrapuptime``, apps/app_queue.c ``member_status_available``
        and ``can_ring_entry``), so counting it would let a callback be dialled ahead of a
        caller who joined earlier, for an agent who is not there yet. The queue's own
        wrap-up time is not on AMI (QueueParams has none; a member's ``Wrapuptime`` is only
        its own override), hence the queue's configured ``wrapup_s`` (or :attr:`wrapup_s`, which
        overrides it for every queue), and ``shared_lastcall``: the latest call
        of the interface in any queue counts.
        """
        q = self.tracker.queues.get(queue)
        if q is None:
            return None
        snap = snapshot_from_state(q, self.tracker.calls)
        if not snap.free_members:
            return snap
        # The tracker's time stands still while Asterisk is quiet: after the last call of the
        # day ends, no event may come to end the wrap-up. The clock does not.
        now = max(self.tracker.now, self.clock())
        qcfg = self.config.queues.get(queue)
        queue_wrapup = self.wrapup_s if self.wrapup_s is not None else (qcfg.wrapup_s if qcfg else 0.0)
        resting: set[str] = set()
        for m in q.members.values():
            if m.interface not in snap.free_members:
                continue
            wrapup = m.wrapuptime or queue_wrapup
            last = max(
                (
                    o.members[m.interface].last_call
                    for o in self.tracker.queues.values()
                    if m.interface in o.members
                ),
                default=0,
            )
            if wrapup > 0 and last and now < last + wrapup:
                resting.add(m.interface)
        if not resting:
            return snap
        free = tuple(i for i in snap.free_members if i not in resting)
        return dataclasses.replace(snap, available=len(free), free_members=free)

    def build_callbacks(self, client: redis.asyncio.Redis) -> None:
        """The callback service, dispatcher and appointment store on ``client`` (:meth:`start`
        calls it; a test may, to answer requests without a PBX)."""
        config = self.config
        store = self.callback_store = CallbackStore(client, self.keys)
        schedules = {name: s.hours for name, s in config.services.items()}
        self.dispatcher = CallbackDispatcher(
            store,
            self.ami,
            self.live_queue,
            self.emit,
            self.clock,
            queues=sorted(config.queues),
            settings=self.dispatch_settings,
            is_open=hours_check(schedules),
        )
        self.callbacks = CallbackService.from_config(
            config,
            store,
            hasher=self.hasher,
            emit=self.emit,
            clock=self.clock,
            live=self.live_queue,
            dispatcher=self.dispatcher,
        )
        self.appointments = AppointmentStore(client, self.hasher, keys=self.keys)

    def flows(self) -> dict[str, ServiceFlowFactory]:
        """The shipped scripts; the FastAGI server has their service requests answered by :meth:`perform`."""
        return service_flows(self.config)

    async def perform(self, request: Request) -> Reply:
        """Answer a flow's service request; a failure is its fallback reply, never an exception."""
        service, appointments = self.callbacks, self.appointments
        if service is None or appointments is None:
            return fallback_reply(request, "no_service")
        try:
            return await self._perform(request, service, appointments)
        except Exception as exc:
            log.warning("controller.request_failed", request=type(request).__name__, error=repr(exc))
            return fallback_reply(request, "error")

    def _join_ts(self, call_id: str, *, waited: bool) -> float | None:
        """The place in line of a caller asking for a callback, on the live state's clock.

        A caller who waited keeps the time it joined its (last) queue. One who did not is
        placed at the time of the last AMI event the state has seen, not at the PBX's clock:
        the dispatcher compares the place with the callers the state knows to be waiting, so
        a caller whose join is still on its way (it joined later than the state's time) must
        come after, and one the state has seen, before (None: no event seen yet, now).
        """
        if not waited:
            return self.tracker.now or None
        call = self.tracker.calls.get(call_id)
        return call.join_ts if call is not None else None

    async def _perform(
        self, request: Request, service: CallbackService, appointments: AppointmentStore
    ) -> Reply:
        if isinstance(request, CheckOverflow):
            decision = await service.overflow(
                request.queue, join_ts=self._join_ts(request.call, waited=request.waited)
            )
            if decision is None:
                return OverflowAdvice("none")
            return OverflowAdvice(
                decision.offer, decision.reasons, decision.position, decision.estimated_wait_s
            )
        if isinstance(request, RecordCallback):
            outcome = await service.request(
                call=request.call,
                number=request.number,
                queue=request.queue,
                join_ts=self._join_ts(request.call, waited=request.waited),
                service=request.service or None,
                case=request.case,
                language=request.lang,
            )
            return CallbackRecorded(
                outcome.ok,
                outcome.status,
                outcome.reason,
                outcome.callback_id,
                outcome.number,
                outcome.position,
                outcome.estimated_wait_s,
            )
        if isinstance(request, FindOpen):
            open_request = await service.find(request.number)
            booking = await appointments.find(request.service, request.number)
            return OpenRequests(
                open_request.id if open_request is not None else "",
                open_request.status if open_request is not None else "",
                booking.id if booking is not None else "",
                booking.slot if booking is not None else None,
            )
        if isinstance(request, CancelOpen):
            callback = ""
            if request.callback_id:
                callback = (await service.cancel(request.callback_id, by="caller")).outcome
            booking_status = ""
            if request.booking_id:
                now = self.clock()
                cancelled = await appointments.cancel(request.booking_id, now=now)
                booking_status = cancelled.status
                if cancelled.status == "cancelled" and cancelled.booking is not None:
                    self.emit(booking_event("appointment.cancelled", cancelled.booking, now, by="caller"))
            return Cancelled(callback, booking_status)
        if isinstance(request, GetCallback):
            found = await service.get(request.callback_id)
            if found is None:
                return CallbackDetails(False)
            return CallbackDetails(True, found.status, found.service, found.queue, found.case, found.language)
        if isinstance(request, ReportCallback):
            result = await service.report_result(request.callback_id, request.status, request.dial)
            return CallbackReported(result.changed, result.status, result.reason)
        return await appointments.perform(request)

    async def dispatch_due_appointments(self) -> int:
        """Turn the bookings whose slot has started into callback requests; returns how many.

        The booking is closed first (``dispatched``, atomically: of several controllers one
        wins), then its callback is requested with the slot's start as its place in line and
        the slot (plus :data:`APPOINTMENT_GRACE_S`) as its window. A booking whose slot ended
        longer ago than that (the controller was down) is closed as ``expired``.
        """
        service, appointments = self.callbacks, self.appointments
        if service is None or appointments is None:
            return 0
        now = self.clock()
        done = 0
        for booking in await appointments.due(0.0, now):
            if await self._dispatch_booking(booking, now, service, appointments):
                done += 1
        return done

    async def _dispatch_booking(
        self, booking: Booking, now: float, service: CallbackService, appointments: AppointmentStore
    ) -> bool:
        late = now >= booking.slot.end + APPOINTMENT_GRACE_S
        closed = await appointments.finish(booking.id, "expired" if late else "dispatched", now=now)
        if not closed.ok:
            return False  # another controller took it, or it was cancelled meanwhile
        if late:
            log.warning("appointment.expired", booking=booking.id, slot=booking.slot.start)
            return False
        queue = booking.queue
        svc = self.config.services.get(booking.service)
        if not queue and svc is not None:
            queue = svc.appointments.queue or svc.fallback_queue
        outcome = await service.request(
            call=booking.call,
            number=booking.number,
            queue=queue,
            join_ts=booking.slot.start,
            service=booking.service,
            case=booking.case,
            language=booking.lang,
            window=(booking.slot.start, booking.slot.end + APPOINTMENT_GRACE_S),
        )
        if not outcome.ok:
            log.error("appointment.dispatch_refused", booking=booking.id, reason=outcome.reason)
            return False
        log.info("appointment.dispatched", booking=booking.id, callback_id=outcome.callback_id)
        return True

    async def _appointments_loop(self) -> None:
        while True:
            await asyncio.sleep(self.appointment_poll_s)
            try:
                await self.dispatch_due_appointments()
            except (RedisError, OSError) as exc:
                log.warning("appointment.dispatch_failed", error=str(exc))
            except Exception:
                log.exception("appointment.dispatch_failed")

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self.writer.start()
        self._redis = make_client(self.redis_url)
        self.build_callbacks(self._redis)
        await self.agi.start()
        await self.ami.start(wait=False)
        self._tasks.append(asyncio.create_task(self._consume(), name="ami-consumer"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if self.config.callbacks.enabled and self.dispatcher is not None:
            self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="callback-dispatcher"))
            self._tasks.append(asyncio.create_task(self._appointments_loop(), name="appointments"))
        if self.web_enabled:
            await self._start_web()
        # Everything built so far lives as long as the process: keep it out of the
        # collector's way, so full collections stay short under load.
        gc.collect()
        gc.freeze()
        log.info(
            "controller.started",
            agi_port=self.agi.port,
            web_port=self.web_port if self.web_enabled else None,
            redis=self.redis_url,
        )

    async def stop(self) -> None:
        """Graceful: stop taking calls, finish IVR sessions, flush every event, close."""
        await self.agi.stop()
        if self.dispatcher is not None:
            # Calls in flight settle (or are left to their lease) before the AMI goes.
            with contextlib.suppress(Exception):
                await self.dispatcher.stop(grace_s=self.callback_grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(AMIError, OSError):
            await self.ami.close()
        for event in self.tracker.flush():
            self.emit(event)
        await self.writer.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        self._stopped.set()
        log.info("controller.stopped", events=self.events_emitted)

    async def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully.

        A start that fails half-way (a port in use, a spool held by another controller)
        closes what it had opened before the error goes up, so that ``ivr run`` can print
        one clear line and exit instead of leaving sockets and tasks behind.
        """
        try:
            await self.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise
        try:
            await wait_for_stop_signal()
        finally:
            await self.stop()

    async def _start_web(self) -> None:
        from aiohttp import web as aioweb

        assert self._redis is not None
        sources = WebSources(
            queues=self.queues_snapshot,
            live_kpi=self.live_kpi,
            health=self.health,
            history=self.history,
            tail=redis_tail(self._redis, self.stream_key),
            registry=self.registry,
            write_token=self.web_token,
        )
        app = create_app(sources)
        if self.callbacks is not None:
            callback_http.add_routes(app, self.callbacks)
        self._runner = aioweb.AppRunner(app, shutdown_timeout=2.0)
        await self._runner.setup()
        self._site = aioweb.TCPSite(self._runner, self.web_host, self.web_port)
        await self._site.start()
        if self.web_port == 0:
            server = self._site._server
            if server is not None and server.sockets:
                self.web_port = server.sockets[0].getsockname()[1]

    # -- AMI side ------------------------------------------------------------------------
    async def _consume(self) -> None:
        feed = self.tracker.feed
        emit = self.emit
        async for event in self.ami.events():
            if self._gap_from is not None:
                ts = event.timestamp
                if ts is not None:
                    emit(self.tracker.gap(self._gap_from, ts))
                    self._gap_from = None
            for call_event in feed(event):
                emit(call_event)
            self._to_dispatcher(event)

    def _to_dispatcher(self, event: Event) -> None:
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        dispatcher.feed(event)
        if event.name in _WAKE_DISPATCHER:
            dispatcher.wake()

    async def _resync(self, client: AMIClient) -> None:
        """After every (re)connect: rebuild live state from Asterisk's own lists."""
        queues = await client.queue_status()
        channels = await client.core_show_channels()
        # On the first connect no event has given the tracker Asterisk's time yet: the calls
        # in progress would be adopted at time 0 (and trimmed from the log as 55 years old).
        now = self.clock() if not self.tracker.now else None
        for event in self.tracker.resync(queues.items, channels.items, now=now):
            self.emit(event)
        log.info("controller.resynced", queue_items=len(queues.items), channels=len(channels.items))

    def _on_gap(self, start: float, end: float) -> None:
        # The client measures the gap on our clock; the tracker lives on Asterisk's. The
        # gap is recorded from the last event seen to the first one after the reconnect.
        if self._gap_from is None:
            self._gap_from = self.tracker.now
        if self.dispatcher is not None:
            self.dispatcher.gap()
        log.warning("controller.ami_gap", seconds=round(end - start, 3))

    async def _housekeeping(self) -> None:
        """Periodic chores: end calls whose last event never came, notice dropped events,
        trim the stream by age."""
        last_trim = 0.0
        while True:
            await asyncio.sleep(1.0)
            dropped = self.ami.stats.events_dropped
            if dropped > self._dropped_seen:
                # Events were lost between the socket and us: the live state may be wrong,
                # so rebuild it the way a reconnect would.
                self._dropped_seen = dropped
                if self._gap_from is None:
                    self._gap_from = self.tracker.now
                if self.dispatcher is not None:
                    self.dispatcher.gap()
                with contextlib.suppress(AMIError, OSError):
                    await self._resync(self.ami)
            now = time.monotonic()
            if now - last_trim >= self.retention_interval_s:
                last_trim = now
                with contextlib.suppress(Exception):
                    await self.writer.trim(self.config.redis.retention_days * 86400.0)

    # -- what the web layer reads --------------------------------------------------------
    def queues_snapshot(self) -> dict[str, Any]:
        now = self.tracker.now
        out: dict[str, Any] = {}
        for name, q in sorted(self.tracker.queues.items()):
            members = list(q.members.values())
            out[name] = {
                "callers": [
                    {"call": w.call, "position": w.position, "wait_s": round(max(0.0, now - w.join_ts), 1)}
                    for w in q.callers()
                ],
                "longest_wait_s": round(q.longest_wait(now), 1),
                "members": [
                    {
                        "interface": m.interface,
                        "name": m.name,
                        "status": m.status_name,
                        "paused": m.paused,
                        "in_call": m.in_call,
                        "ringing": m.ringing,
                        "calls_taken": m.calls_taken,
                    }
                    for m in members
                ],
                "members_available": sum(1 for m in members if m.available),
                "members_paused": sum(1 for m in members if m.paused),
            }
        return {"asterisk_time": now, "queues": out}

    def live_kpi(self, queue: str | None) -> dict[str, Any]:
        """Today's figures (midnight in the configured timezone to now), live."""
        from datetime import datetime
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(self.config.timezone)
        now = self.tracker.now or self.clock()
        midnight = datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0, microsecond=0)
        return self.kpi.report(midnight.timestamp(), None, queue=queue)

    async def history(self, since: float | None, until: float | None, queue: str | None) -> dict[str, Any]:
        assert self._redis is not None
        return await report_from_redis(
            self._redis, self.kpi_settings, since=since, until=until, queue=queue, stream_key=self.stream_key
        )

    def health(self) -> dict[str, Any]:
        ami_ok = self.ami.connected
        redis_ok = self.writer.redis_up
        return {
            "ok": ami_ok and redis_ok,
            "ami": ami_ok,
            "redis": redis_ok,
            "agi_sessions": self.agi.stats.sessions_active,
            "callbacks_in_flight": self.dispatcher.in_flight if self.dispatcher is not None else 0,
            "spooled": self.writer.stats.spool_depth,
            "pid": os.getpid(),
        }
