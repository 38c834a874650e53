"""The controller: wiring of every part around one event loop.

::

    Asterisk ──AMI──▶ AMIClient ─▶ StateTracker ─▶ emit() ─┬▶ EventLogWriter ─▶ Redis stream
    Asterisk ──FastAGI──▶ AGIServer (IVR flows) ───▶ emit() ├▶ KpiAccumulator (live figures)
                                                           └▶ (dashboard reads both)

Each part is built here and handed what it needs (explicit injection, no globals), so the
demo, the tests and ``ivr run`` assemble the same controller with different endpoints.
:func:`emit` is the only way a call event enters the system: the live KPIs and the
stored stream see the very same events, which is what makes live and historical figures
agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from prometheus_client import CollectorRegistry

from ivr.agi.server import AGIServer
from ivr.ami.client import AMIClient, Backoff
from ivr.ami.errors import AMIError
from ivr.config import Config
from ivr.domain.events import CallEvent
from ivr.domain.kpi import KpiAccumulator
from ivr.domain.state import StateTracker
from ivr.kpi_cli import report_from_redis, settings_from_config
from ivr.logs import get_logger
from ivr.metrics import ControllerCollector
from ivr.storage.keys import Keys
from ivr.storage.privacy import NumberHasher
from ivr.storage.writer import EventLogWriter, make_client
from ivr.web.app import WebSources, create_app
from ivr.web.tail import redis_tail

log = get_logger(__name__)

Clock = Callable[[], float]


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
    ) -> None:
        ep = endpoints or Endpoints()
        self.config = config
        self.clock = clock
        self.keys = Keys(config.redis.key_prefix)
        self.stream_key = config.redis.stream
        self.redis_url = ep.redis_url or config.redis.url
        self.hasher = NumberHasher(config.redis.resolve_hash_key())
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
        self.agi = AGIServer(config, event_sink=self.emit, host=ep.agi_host, port=ep.agi_port, clock=clock)
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

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self.writer.start()
        self._redis = make_client(self.redis_url)
        await self.agi.start()
        await self.ami.start(wait=False)
        self._tasks.append(asyncio.create_task(self._consume(), name="ami-consumer"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
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
        """Run until SIGINT or SIGTERM, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
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
        )
        self._runner = aioweb.AppRunner(create_app(sources), shutdown_timeout=2.0)
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

    async def _resync(self, client: AMIClient) -> None:
        """After every (re)connect: rebuild live state from Asterisk's own lists."""
        queues = await client.queue_status()
        channels = await client.core_show_channels()
        for event in self.tracker.resync(queues.items, channels.items):
            self.emit(event)
        log.info("controller.resynced", queue_items=len(queues.items), channels=len(channels.items))

    def _on_gap(self, start: float, end: float) -> None:
        # The client measures the gap on our clock; the tracker lives on Asterisk's. The
        # gap is recorded from the last event seen to the first one after the reconnect.
        if self._gap_from is None:
            self._gap_from = self.tracker.now
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
            "spooled": self.writer.stats.spool_depth,
            "pid": os.getpid(),
        }
