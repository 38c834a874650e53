"""The FastAGI server: Asterisk connects, we run the flow its AGI URL names, we close.

Robustness, because every session is a caller waiting in silence:

* **Who may connect.** FastAGI has no authentication; a peer outside
  ``[agi] allowed_clients`` is closed at once, before a byte is read.
* **Bounded load.** At most ``max_sessions`` sessions run; a connection beyond that is
  closed at once with a log line (Asterisk's ``AGI()`` then fails and the dialplan
  continues, where it should route to a human). Waiting in line would only keep the
  caller in silence longer.
* **No stalls.** Each session is its own task with a deadline on the environment block and
  on every command; a client that sends half an environment and vanishes (panoramisk
  1.4 keeps such a session forever) or trickles bytes frees its slot at the deadline.
  Nothing in a session blocks the event loop.
* **Hangups.** The codec reports Asterisk's inline ``HANGUP``; the channel stops sending
  media commands and the flow ends (``ivr.domain.ivr_flow``).
* **Logs** of a session carry its ``uniqueid`` (structlog contextvars, bound in the
  session's own task so they never leak to another call).
* **Graceful shutdown** (:meth:`AGIServer.stop`): stop listening, let running sessions
  finish until the grace deadline, then cancel the rest.

Routing: the script name of ``agi_network_script`` (query string apart) picks a flow
factory from ``flows`` (by default :func:`ivr.domain.scripts.default_flows`: ``ivr``,
``after-queue``, ``exit-key``, ``survey``). An unknown script is logged, told on the
Asterisk console and hung up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from ivr.agi.session import (
    AGIChannel,
    AGISession,
    CommandTimeout,
    EnvironmentTimeout,
    SessionClosed,
    drive,
)
from ivr.config import Config
from ivr.domain.events import CallEvent
from ivr.domain.ivr_ops import CallInfo, Clock, Decision, EventSink, refuse
from ivr.domain.scripts import FlowFactory, default_flows
from ivr.logs import get_logger
from ivr.protocol.agi import AGIEnvironment
from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["AGIServer", "AGIStats", "call_info"]

log = get_logger(__name__)


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


class AGIServer:
    """``AGIServer(config, flows, event_sink, host, port)``; ``await start()``, ``await stop()``.

    ``flows`` maps script names to flow factories (None: the shipped four);
    ``event_sink`` receives every :class:`CallEvent` (None: dropped); ``host``/``port``
    override ``[agi]`` (port 0 picks a free one, see :attr:`port`); ``clock`` gives the
    time the flows see (opening hours, event times): the simulator passes its own.
    """

    def __init__(
        self,
        config: Config,
        flows: Mapping[str, FlowFactory] | None = None,
        event_sink: EventSink | None = None,
        host: str | None = None,
        port: int | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.flows: Mapping[str, FlowFactory] = default_flows(config) if flows is None else flows
        self._sink = event_sink
        self.host = config.agi.host if host is None else host
        self._port = config.agi.port if port is None else port
        self.clock = clock
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
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
        if self._server is not None and self._server.sockets:
            port: int = self._server.sockets[0].getsockname()[1]
            return port
        return self._port

    @property
    def stats(self) -> AGIStats:
        return AGIStats(self.sessions_active, self.sessions_total, self.rejected, self.denied, self.failed)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("AGI server already started")
        self._closing = False
        # A burst of calls connects at once: a listen backlog below max_sessions makes the
        # kernel drop SYNs, and those callers wait a second for the retransmission.
        self._server = await asyncio.start_server(
            self._accept, self.host, self._port, backlog=max(100, self.config.agi.max_sessions)
        )
        log.info("agi.listening", host=self.host, port=self.port, max_sessions=self.config.agi.max_sessions)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let sessions finish up to ``grace`` seconds, then cancel them."""
        server = self._server
        if server is None:
            return
        self._closing = True
        server.close()
        deadline = self.config.agi.shutdown_grace_s if grace is None else grace
        tasks = set(self._tasks)
        if tasks:
            log.info("agi.draining", sessions=len(tasks), grace_s=deadline)
            _, pending = await asyncio.wait(tasks, timeout=deadline)
            if pending:
                log.warning("agi.cancelling_sessions", sessions=len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)
        self._server = None
        log.info("agi.stopped", sessions_total=self.sessions_total, rejected=self.rejected)

    async def __aenter__(self) -> AGIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- sessions ---------------------------------------------------------------------------

    def _emit(self, event: CallEvent) -> None:
        """The sink must never break a call: its failures are logged and the call goes on."""
        if self._sink is None:
            return
        try:
            self._sink(event)
        except Exception:
            log.exception("agi.event_sink_failed", event_type=event.type, event_id=event.id)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        agi_cfg = self.config.agi
        if not agi_cfg.allows(address):
            self.denied += 1
            log.warning("agi.client_denied", peer=address)
            writer.transport.abort()
            return
        if self._closing or self.sessions_active >= agi_cfg.max_sessions:
            self.rejected += 1
            log.warning(
                "agi.session_rejected",
                peer=address,
                active=self.sessions_active,
                max_sessions=agi_cfg.max_sessions,
                closing=self._closing,
            )
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.sessions_active += 1
        self.sessions_total += 1
        session = AGISession(
            reader,
            writer,
            env_timeout=agi_cfg.env_timeout_s,
            command_timeout=agi_cfg.command_timeout_s,
            media_timeout=agi_cfg.media_timeout_s,
        )
        try:
            await self._session(session, address)
        except asyncio.CancelledError:
            log.warning("agi.session_cancelled", peer=address)
            session.abort()
            raise
        finally:
            self.sessions_active -= 1
            if task is not None:
                self._tasks.discard(task)
            await session.close()

    async def _session(self, session: AGISession, address: str) -> None:
        try:
            env = await session.read_environment()
        except EnvironmentTimeout as exc:
            self.failed += 1
            log.warning("agi.env_timeout", peer=address, error=str(exc))
            return
        except (RemoteProtocolError, ConnectionError) as exc:
            self.failed += 1
            log.warning("agi.bad_environment", peer=address, error=str(exc))
            return
        call = call_info(env)
        with structlog.contextvars.bound_contextvars(uniqueid=call.uniqueid, agi_script=call.script):
            await self._run(session, env, call, address)

    async def _run(self, session: AGISession, env: AGIEnvironment, call: CallInfo, address: str) -> None:
        started = time.monotonic()
        log.info("agi.session_start", peer=address, channel=call.channel, request=env.network_script)
        factory = self.flows.get(call.script)
        if factory is None:
            log.warning("agi.unknown_script", script=call.script, known=sorted(self.flows))
            flow = refuse("unknown_script", f"decroche: unknown FastAGI script {call.script!r}")
        else:
            flow = factory(call, self.clock, self._emit)
        decision: Decision | None = None
        try:
            decision = await drive(flow, AGIChannel(session))
        except SessionClosed as exc:
            log.info("agi.peer_closed", error=str(exc))
        except CommandTimeout as exc:
            self.failed += 1
            log.warning("agi.command_timeout", error=str(exc))
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.failed += 1
            log.error("agi.protocol_error", error=str(exc))
        except Exception:
            self.failed += 1
            log.exception("agi.flow_failed")
        finally:
            log.info(
                "agi.session_end",
                action=decision.action if decision else None,
                queue=decision.queue if decision else None,
                reason=decision.reason if decision else None,
                hung_up=session.hung_up,
                commands=session.commands_sent,
                duration_s=round(time.monotonic() - started, 3),
            )
