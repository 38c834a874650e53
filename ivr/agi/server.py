"""The FastAGI server: Asterisk connects, we run the flow its AGI URL names, we close.

Robustness, because every session is a caller waiting in silence:

* **Who may connect.** FastAGI has no authentication; a peer outside
  ``[agi] allowed_clients`` is dropped at once, before a byte is read.
* **Bounded load.** At most ``max_sessions`` sessions run; a connection beyond that is
  dropped at once with a log line (Asterisk's ``AGI()`` then fails and the dialplan
  continues, where it should route to a human). Waiting in line would only keep the
  caller in silence longer.
* **No stalls.** A session (:class:`~ivr.agi.session.AGISession`) has a deadline on the
  environment block and on every command; a client that sends half an environment and
  vanishes (panoramisk 1.4 keeps such a session forever) or trickles bytes frees its slot
  at the deadline. Nothing in a session blocks the event loop.
* **Cheap sessions.** A session is a protocol driven by the loop's callbacks, not a task
  with a stream reader: at 500 concurrent calls the per-command task switches, futures and
  timeout objects cost more than the IVR, and the loop's queueing is the silence a caller
  hears before the first prompt (``bench/agi_sessions.py``).
* **Hangups.** The codec reports Asterisk's inline ``HANGUP``; the session stops sending
  media commands and the flow ends (``ivr.domain.ivr_flow``).
* **Logs** of a session carry its ``uniqueid`` (structlog contextvars, bound in the
  session's own context so they never leak to another call): one ``agi.session_end`` line
  per call (plus a warning when it failed), debug lines elsewhere.
* **New calls first.** The server accepts connections itself and starts each session on its
  socket at once (environment read, first command written) while the loop builds the
  transport; between the replies it handles it looks for new calls and environments at
  least every :data:`NEW_CALL_POLL_S`. Under load the loop's turn is every call's reply;
  without this a new caller would wait two or three turns in silence before the welcome,
  while a call in progress only waits a little longer between prompts it hears anyway.
* **Graceful shutdown** (:meth:`AGIServer.stop`): stop listening, let running sessions
  finish until the grace deadline, then drop the rest.

Routing: the script name of ``agi_network_script`` (query string apart) picks a flow
factory from ``flows`` (by default the shipped scripts of :func:`ivr.domain.scripts.service_flows`
run without the service). An unknown script is logged, told on the Asterisk console and
hung up.

Service requests of the flows (callbacks, appointments) are answered by ``perform`` (the
controller's); without one, each gets its fallback reply at once (nothing offered, nothing
promised). Requests still running when a session ends run to their end, and
:meth:`AGIServer.stop` waits for them within the grace period: a callback a caller asked
for just before hanging up is not lost to a shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from ivr.agi.session import READ_SIZE, AGISession, Outcome
from ivr.config import Config
from ivr.domain import ivr_ops
from ivr.domain.events import CallEvent
from ivr.domain.ivr_ops import CallInfo, Clock, EventSink, Flow, Request, ServiceFlow, fallback_reply, refuse
from ivr.domain.scripts import AnyFlowFactory, service_flows
from ivr.logs import get_logger
from ivr.protocol.agi import AGIEnvironment

__all__ = ["AGIServer", "AGIStats", "Performer", "call_info"]

#: Answers a flow's service request (``Controller.perform``). An exception, a cancellation or no
#: answer within ``[agi] command_timeout_s`` gives the flow the request's fallback reply.
Performer = Callable[[Request], Awaitable[ivr_ops.Reply]]

#: How often, at most, sessions' replies give way to new calls (see the module docstring).
NEW_CALL_POLL_S: Final = 0.001
#: How long after its accept a session whose environment has not arrived is read between
#: replies (then, if its transport is there, only when the loop sees its socket readable).
ENV_POLL_WINDOW_S: Final = 0.05
#: Connections accepted at most per look (the rest wait for the next one).
ACCEPT_BATCH: Final = 64
#: accept() errors that mean "out of resources": stop accepting for a while (asyncio's
#: ``_accept_connection`` in selector_events.py does the same), rather than spin.
_ACCEPT_PAUSE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE_S: Final = 1.0

log = get_logger(__name__)
#: structlog hands our lines to this stdlib logger, whose level decides (``filter_by_level``):
#: asking it first spares building a debug line per call that would be dropped.
_level = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AGIStats:
    """Counters for health checks and metrics."""

    sessions_active: int
    sessions_total: int
    rejected: int
    denied: int
    failed: int


def call_info(env: AGIEnvironment) -> CallInfo:
    """The flow's view of an AGI environment."""
    return CallInfo(
        uniqueid=env.uniqueid,
        script=env.script,
        channel=env.channel,
        args=env.args,
        query=env.query,
        extension=env.get("extension"),
    )


#: The warning logged for a session that ended badly (besides its ``agi.session_end``).
_OUTCOME_EVENTS: Final[dict[Outcome, str]] = {
    Outcome.ENV_TIMEOUT: "agi.env_timeout",
    Outcome.BAD_ENVIRONMENT: "agi.bad_environment",
    Outcome.COMMAND_TIMEOUT: "agi.command_timeout",
    Outcome.CANCELLED: "agi.session_cancelled",
}


class AGIServer:
    """``AGIServer(config, flows, event_sink, host, port)``; ``await start()``, ``await stop()``.

    ``flows`` maps script names to flow factories, plain or service flows (None: the
    shipped scripts, without the service); ``perform`` answers the service requests (None:
    every request gets its fallback reply);
    ``event_sink`` receives every :class:`CallEvent` (None: dropped); ``host``/``port``
    override ``[agi]`` (port 0 picks a free one, see :attr:`port`); ``clock`` gives the
    time the flows see (opening hours, event times): the simulator passes its own.
    """

    def __init__(
        self,
        config: Config,
        flows: Mapping[str, AnyFlowFactory] | None = None,
        event_sink: EventSink | None = None,
        host: str | None = None,
        port: int | None = None,
        *,
        clock: Clock = time.time,
        perform: Performer | None = None,
    ) -> None:
        self.config = config
        self.flows: Mapping[str, AnyFlowFactory] = (
            service_flows(config, services=False) if flows is None else flows
        )
        self._perform = perform
        self._requests: set[asyncio.Future[ivr_ops.Reply]] = set()  # still running
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink = event_sink
        self.host = config.agi.host if host is None else host
        self._port = config.agi.port if port is None else port
        self.clock = clock
        self._listeners: list[socket.socket] = []
        self._bound_port = 0  # the port listened on (0 before start)
        self._stopped: asyncio.Event | None = None  # set once a stop in progress is over
        self._new_session: Callable[[], AGISession] | None = None
        # Accepted, environment not complete yet: polled between replies until this loop time
        # (or until the environment is read, if the transport is not there yet).
        self._waiting_env: dict[AGISession, float] = {}
        self._serving = False  # in serve_new_calls
        self._accept_paused: set[socket.socket] = set()  # out of descriptors: resumed later
        self._attaching: set[asyncio.Task[object]] = set()  # transports being built
        self._next_look = 0.0  # loop time of the next look for new calls between replies
        self._sessions: set[AGISession] = set()  # admitted, not ended
        self._connections: set[AGISession] = set()  # transports not yet gone, admitted or not
        self._idle: asyncio.Future[None] | None = None  # set when the last session ends (stop)
        self._closed: asyncio.Future[None] | None = None  # set when the last transport is gone
        self._allowed: dict[str, bool] = {}  # allowlist verdicts per peer address
        self._closing = False
        self.sessions_active = 0
        self.sessions_total = 0
        self.rejected = 0
        self.denied = 0
        self.failed = 0

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (the real one after :meth:`start` with port 0)."""
        return self._bound_port or self._port

    @property
    def stats(self) -> AGIStats:
        return AGIStats(self.sessions_active, self.sessions_total, self.rejected, self.denied, self.failed)

    async def start(self) -> None:
        if self._listeners:
            raise RuntimeError("AGI server already started")
        self._closing = False
        agi_cfg = self.config.agi
        loop = self._loop = asyncio.get_running_loop()
        # One read buffer for every session of this loop: each read is parsed (copied) by its
        # session before the next read starts.
        read_buffer = memoryview(bytearray(READ_SIZE))

        def new_session() -> AGISession:
            return AGISession(
                self,
                loop=loop,  # asyncio.get_running_loop() asks the kernel for the pid, every call
                env_timeout=agi_cfg.env_timeout_s,
                command_timeout=agi_cfg.command_timeout_s,
                media_timeout=agi_cfg.media_timeout_s,
                read_buffer=read_buffer,
            )

        self._new_session = new_session
        # A burst of calls connects at once: a listen backlog below max_sessions makes the
        # kernel drop SYNs, and those callers wait a second for the retransmission.
        self._listeners = await _listen(loop, self.host, self._port, max(100, agi_cfg.max_sessions))
        self._bound_port = self._listeners[0].getsockname()[1]
        for listener in self._listeners:
            loop.add_reader(listener.fileno(), self._accept, listener)
        log.info("agi.listening", host=self.host, port=self.port, max_sessions=agi_cfg.max_sessions)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let sessions finish up to ``grace`` seconds, then drop them.

        A second call while one runs waits for it; a call on a stopped server returns.
        """
        if self._stopped is not None:
            await self._stopped.wait()
            return
        if not self._listeners:
            return
        self._stopped = asyncio.Event()
        try:
            await self._stop(grace)
        finally:
            self._stopped.set()
            self._stopped = None

    async def _stop(self, grace: float | None) -> None:
        self._closing = True
        loop = asyncio.get_running_loop()
        self._stop_listening()
        deadline = self.config.agi.shutdown_grace_s if grace is None else grace
        if self._sessions:
            log.info("agi.draining", sessions=len(self._sessions), grace_s=deadline)
            self._idle = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle), deadline)
            self._idle = None
            if self._sessions:
                log.warning("agi.cancelling_sessions", sessions=len(self._sessions))
                for session in list(self._sessions):
                    session.cancel()
        if self._attaching:  # transports of sessions ended meanwhile close as soon as made
            await asyncio.wait(set(self._attaching), timeout=1.0)
        if self._connections:  # closing transports flush their last line; a peer that reads nothing
            self._closed = loop.create_future()  # gets a second, then the connection is dropped
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed), 1.0)
            self._closed = None
            for session in list(self._connections):
                if session.transport is not None:
                    session.transport.abort()
        if self._requests:  # requests of ended calls: recorded, not dropped half-way
            log.info("agi.requests_finishing", requests=len(self._requests))
            await asyncio.wait(set(self._requests), timeout=max(deadline, 1.0))
        self._bound_port = 0
        log.info("agi.stopped", sessions_total=self.sessions_total, rejected=self.rejected)

    def _stop_listening(self) -> None:
        loop = self._loop
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            if loop is not None and not loop.is_closed() and listener not in self._accept_paused:
                loop.remove_reader(listener.fileno())
            listener.close()
        self._accept_paused.clear()

    async def __aenter__(self) -> AGIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- accepting ------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        """Accept what is waiting on ``listener`` (up to :data:`ACCEPT_BATCH`) and start each call."""
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_PAUSE_ERRNOS:
                    log.debug("agi.accept_failed", error=str(exc))
                    continue  # that connection failed (ECONNABORTED ...): the next may not
                log.error("agi.accept_paused", error=str(exc), pause_s=ACCEPT_PAUSE_S)
                loop = self._loop
                assert loop is not None
                loop.remove_reader(listener.fileno())
                self._accept_paused.add(listener)
                loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting, listener)
                return
            self._start_session(sock, address)

    def _resume_accepting(self, listener: socket.socket) -> None:
        self._accept_paused.discard(listener)
        if not self._closing and listener in self._listeners and self._loop is not None:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _start_session(self, sock: socket.socket, address: object) -> None:
        loop = self._loop
        new_session = self._new_session
        assert loop is not None and new_session is not None
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports do
        peer = str(address[0]) if isinstance(address, tuple) and address else ""
        session = new_session()
        if not session.accepted(sock, peer):
            sock.close()
            self.connection_lost(session)
            return
        # The transport first: whatever happens in the early read, the socket has an owner
        # that closes it and reports the connection's end.
        task: asyncio.Task[object] = loop.create_task(loop.connect_accepted_socket(lambda: session, sock))
        self._attaching.add(task)
        task.add_done_callback(lambda done: self._attached(done, session, sock))
        if session.read_waiting():
            self._waiting_env[session] = loop.time() + ENV_POLL_WINDOW_S

    def _attached(self, task: asyncio.Task[object], session: AGISession, sock: socket.socket) -> None:
        """The transport is there (the session has it), or could not be made: then end the call."""
        self._attaching.discard(task)
        exc = None if task.cancelled() else task.exception()
        if session.transport is None:
            sock.close()
            session.connection_lost(exc if isinstance(exc, Exception) else None)

    def serve_new_calls(self) -> None:
        """Between sessions' replies, at most every :data:`NEW_CALL_POLL_S`: accept waiting
        connections and read environments that arrived after their accept.

        Not re-entered: a session started here reads and runs its flow, which calls back here
        (a burst of calls would otherwise nest one level per call). Nothing raised here
        reaches the session whose reply led here: it is logged, and that call goes on.
        """
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if now < self._next_look or self._serving:
            return
        self._next_look = now + NEW_CALL_POLL_S
        self._serving = True
        try:
            if not self._closing:
                for listener in self._listeners:
                    if listener not in self._accept_paused:
                        self._accept(listener)
            waiting = self._waiting_env
            for session, until in list(waiting.items()):
                # Once its transport reads, a session that stays silent is left to it: polling
                # a silent peer (a health check, a stuck PBX) until its deadline costs a recv
                # per look for nothing.
                if (now > until and session.transport is not None) or not session.read_waiting():
                    del waiting[session]
        except Exception:
            log.exception("agi.serve_new_calls_failed")
        finally:
            self._serving = False

    # -- sessions (SessionOwner) ------------------------------------------------------------------

    def _emit(self, event: CallEvent) -> None:
        """The sink must never break a call: its failures are logged and the call goes on."""
        if self._sink is None:
            return
        try:
            self._sink(event)
        except Exception:
            log.exception("agi.event_sink_failed", event_type=event.type, event_id=event.id)

    def _allows(self, address: str) -> bool:
        verdict = self._allowed.get(address)
        if verdict is None:
            verdict = self.config.agi.allows(address)
            if len(self._allowed) < 4096:  # peers are a few PBXs; bounded all the same
                self._allowed[address] = verdict
        return verdict

    def admit(self, session: AGISession, address: str) -> bool:
        self._connections.add(session)
        if not self._allows(address):
            self.denied += 1
            log.warning("agi.client_denied", peer=address)
            return False
        max_sessions = self.config.agi.max_sessions
        if self._closing or self.sessions_active >= max_sessions:
            self.rejected += 1
            log.warning(
                "agi.session_rejected",
                peer=address,
                active=self.sessions_active,
                max_sessions=max_sessions,
                closing=self._closing,
            )
            return False
        self._sessions.add(session)
        self.sessions_active += 1
        self.sessions_total += 1
        return True

    def open_flow(self, session: AGISession, env: AGIEnvironment) -> Flow | ServiceFlow:
        call = call_info(env)
        if _level.isEnabledFor(logging.DEBUG):
            log.debug(
                "agi.session_start", peer=session.peer, channel=call.channel, request=env.network_script
            )
        factory = self.flows.get(call.script)
        if factory is None:
            log.warning("agi.unknown_script", script=call.script, known=sorted(self.flows))
            return refuse("unknown_script", f"decroche: unknown FastAGI script {call.script!r}")
        return factory(call, self.clock, self._emit)

    def perform(self, session: AGISession, request: Request) -> asyncio.Future[ivr_ops.Reply]:
        loop = self._loop
        assert loop is not None
        performer = self._perform
        if performer is None:
            future: asyncio.Future[ivr_ops.Reply] = loop.create_future()
            future.set_result(fallback_reply(request, "no_service"))
            return future
        # Created in the session's context: the request's own log lines carry the call's id.
        task = asyncio.ensure_future(performer(request), loop=loop)
        if not task.done():
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
        return task

    def session_ended(
        self, session: AGISession, outcome: Outcome, error: str, exc: BaseException | None
    ) -> None:
        self._sessions.discard(session)
        self._waiting_env.pop(session, None)
        self.sessions_active -= 1
        if outcome.failed:
            self.failed += 1
        event = _OUTCOME_EVENTS.get(outcome)
        if session.env is None:  # nothing to tie to a call: that one line says it all
            log.warning(event or f"agi.{outcome.value}", peer=session.peer, error=error)
        else:
            if outcome is Outcome.FLOW_FAILED:
                log.error("agi.flow_failed", error=error, exc_info=exc)
            elif outcome is Outcome.PROTOCOL_ERROR:
                log.error("agi.protocol_error", error=error)
            elif event is not None:
                log.warning(event, error=error)
            decision = session.decision
            log.info(
                "agi.session_end",
                outcome=outcome.value,
                action=decision.action if decision else None,
                queue=decision.queue if decision else None,
                reason=decision.reason if decision else None,
                error=error or None,
                hung_up=session.hung_up,
                commands=session.commands_sent,
                duration_s=round(session.duration, 3),
            )
        if not self._sessions and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def connection_lost(self, session: AGISession) -> None:
        self._connections.discard(session)
        if not self._connections and self._closed is not None and not self._closed.done():
            self._closed.set_result(None)


async def _listen(loop: asyncio.AbstractEventLoop, host: str, port: int, backlog: int) -> list[socket.socket]:
    """Non-blocking listening sockets for ``host`` (every address it resolves to), made the
    way ``loop.create_server`` makes them (selector_events.py / base_events.py): SO_REUSEADDR,
    IPV6_V6ONLY on IPv6, the same error text when the port is taken (``ivr run`` prints it)."""
    infos = await loop.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _name, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, type_, proto)
            except OSError:
                continue  # an address family this host lacks (IPv6 off): the others serve
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {address!r}: {exc.strerror}"
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
            if port == 0:  # a free port is per address: listen on the first one only
                break
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {host!r} port {port}")
    return sockets
