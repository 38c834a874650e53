"""The controller's AMI client: a thin asyncio adapter over the sans-I/O codec.

What it guarantees, and why:

* **The reader never waits.** Bytes are parsed in the transport's ``data_received``
  callback; responses resolve futures, list replies feed a :class:`ListCollector`, and
  events go into a bounded :class:`DropOldestQueue`. A stalled consumer costs dropped (and
  counted) events, never a stalled socket -- otherwise Ping replies would wait behind
  events and a healthy PBX would be declared dead.
* **Actions are awaitables with timeouts**, correlated by ActionIDs unique to this client
  (random prefix + counter, never reused across reconnects, so a late reply from an old
  connection cannot complete a new action). Asterisk's ``Response: Error`` becomes
  :class:`ActionError` carrying its ``Message``; header values are checked before sending
  (:class:`LocalProtocolError` for CR/LF injection or lines Asterisk would truncate).
* **Originate is always Async.** The ack comes back at once; the outcome comes later as
  an ``OriginateResponse`` event with the same ActionID, before or after the DialEnd
  (FACTS.md), and resolves :attr:`OriginateCall.result` whatever the order. That future
  survives a reconnect (Asterisk broadcasts OriginateResponse to every session) and fails
  with :class:`ActionTimeout` if no outcome arrives by its deadline.
* **Reconnect forever** with capped exponential backoff and jitter (injectable ``random``
  and ``sleep``). Pending actions of a lost connection fail at once with
  :class:`ConnectionLost`. After each (re)connect ``on_gap(start, end)`` reports the
  blind interval and ``on_connected(client)`` runs, where the controller resyncs live
  state from QueueStatus and CoreShowChannels.
* **Liveness by Ping**: a PBX that stops answering without closing (hung manager thread,
  half-dead network) is detected within ``ping_interval + ping_timeout`` and replaced.
* **Graceful close**: Logoff, wait for Asterisk to close, then close.

Usage::

    client = AMIClient("127.0.0.1", 5038, "ivr", secret, on_connected=resync)
    await client.start()                      # first login; LoginError if refused
    status = await client.list_action("QueueStatus", {"Queue": "support"})
    call = await client.originate("Local/201@agents", context="callback", exten="s")
    outcome = await call.result               # OriginateResult(reason=4, ...)
    async for event in client.events(): ...
    await client.close()
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random as _random
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from ivr.ami.errors import (
    ActionError,
    ActionTimeout,
    AMIError,
    ClientClosed,
    ConnectionLost,
    ListCountMismatch,
    LoginError,
    NotConnected,
)
from ivr.ami.queue import DropOldestQueue
from ivr.logs import get_logger
from ivr.protocol.ami import (
    DEFAULT_MAX_LINE_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    AMIMessage,
    AMIParser,
    Banner,
    Event,
    Headers,
    Response,
    encode_action,
)
from ivr.protocol.ami_list import ListCollector, ListResult
from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ORIGINATE_REASONS",
    "AMIClient",
    "Backoff",
    "ClientStats",
    "OriginateCall",
    "OriginateResult",
]

log = get_logger(__name__)

T = TypeVar("T")

#: ``Reason:`` of OriginateResponse (``enum ast_control_frame_type`` values, FACTS.md).
ORIGINATE_REASONS: Final[dict[int, str]] = {
    0: "failed (no such extension or channel)",
    1: "hung up",
    3: "no answer",
    4: "answered",
    5: "busy",
    8: "congestion",
}

ConnectedHook = Callable[["AMIClient"], Awaitable[None] | None]
GapHook = Callable[[float, float], Awaitable[None] | None]

#: Keys the client writes itself; letting callers set them would break correlation.
_RESERVED: Final = frozenset({"action", "actionid"})
#: ActionIDs of abandoned (timed-out) list actions whose late items we silently drop.
_ABANDONED_KEEP: Final = 256


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial * factor**attempt`` capped at ``maximum``, minus jitter.

    ``jitter`` is the fraction of the delay that is randomised away (0.5 gives a delay
    in ``[d/2, d]``), so that many controllers restarted together do not reconnect in
    lockstep to a PBX that just came back.
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: float) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rand)


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of the client's counters, for logs and Prometheus gauges/counters."""

    connected: bool
    events_received: int
    events_dropped: int
    queue_depth: int
    queue_capacity: int
    max_lag_s: float
    last_lag_s: float
    reconnects: int
    connect_failures: int
    login_failures: int
    pings_failed: int
    protocol_errors: int
    actions_sent: int
    actions_timed_out: int
    last_gap_s: float | None


@dataclass(frozen=True, slots=True)
class OriginateResult:
    """The ``OriginateResponse`` event of one Originate."""

    event: Event

    @property
    def response(self) -> str:
        return self.event.get("Response") or ""

    @property
    def ok(self) -> bool:
        """True when the callee answered (``Response: Success``, Reason 4)."""
        return self.response == "Success"

    @property
    def reason(self) -> int | None:
        raw = self.event.get("Reason")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    @property
    def reason_text(self) -> str:
        reason = self.reason
        return ORIGINATE_REASONS.get(reason, f"reason {reason}") if reason is not None else "unknown"

    @property
    def channel(self) -> str | None:
        return self.event.get("Channel")

    @property
    def uniqueid(self) -> str | None:
        """The new channel's Uniqueid; None on failure (Asterisk writes ``<unknown>``)."""
        value = self.event.get("Uniqueid")
        return None if value in (None, "", "<unknown>") else value


@dataclass(frozen=True, slots=True)
class OriginateCall:
    """An accepted Originate: the ack now, the outcome later in :attr:`result`."""

    action_id: str
    ack: Response
    result: asyncio.Future[OriginateResult]


class _Pending:
    """One action awaiting its reply on one connection."""

    __slots__ = ("collector", "future", "name")

    def __init__(self, name: str, future: asyncio.Future[Response | ListResult], list_id: str | None) -> None:
        self.name = name
        self.future = future
        self.collector = ListCollector(list_id) if list_id is not None else None

    def feed(self, message: Response | Event) -> None:
        if self.future.done():
            return
        if self.collector is None:
            if isinstance(message, Response):
                self.future.set_result(message)
            return
        try:
            result = self.collector.feed(message)
        except RemoteProtocolError as exc:
            self.future.set_exception(exc)
            return
        if result is not None:
            self.future.set_result(result)


class _Connection(asyncio.BufferedProtocol):
    """One TCP connection: parses, dispatches, and fails its pending actions when lost.

    A buffered protocol with a small read buffer: each read parses at most
    ``READ_CHUNK`` bytes (about 150 events) before the loop runs other tasks, which keeps
    the loop's lag low when Asterisk floods us (a 256 KiB read took ~50 ms to parse).
    """

    READ_CHUNK = 64 * 1024

    def __init__(self, client: AMIClient) -> None:
        self.client = client
        self.parser = AMIParser(
            expect_banner=True,
            max_message_size=client.max_message_size,
            max_line_size=min(client.max_line_size, client.max_message_size),
        )
        loop = asyncio.get_running_loop()
        self.banner: asyncio.Future[Banner] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[str, _Pending] = {}
        self.close_reason = "closed by the PBX"
        self.pinger: asyncio.Task[None] | None = None
        self._read_buffer = bytearray(self.READ_CHUNK)

    # -- asyncio.BufferedProtocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._read_buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.parser.receive_data(data)
        self._drain()

    def eof_received(self) -> bool:
        self.parser.receive_data(b"")
        self._drain()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.close_reason == "closed by the PBX":
            self.close_reason = f"connection error: {exc}"
        if not self.banner.done():
            self.banner.set_exception(ConnectionLost(f"AMI connection {self.close_reason} before the banner"))
            self.banner.exception()  # retrieved: the opener may already have given up
        pending, self.pending = self.pending, {}
        for aid, item in pending.items():
            if not item.future.done():
                error = ConnectionLost(
                    f"AMI connection {self.close_reason} before the reply to {item.name} (ActionID {aid})"
                )
                error.action_id = aid
                item.future.set_exception(error)
        if self.pinger is not None:
            self.pinger.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- input ---------------------------------------------------------------------------
    def _drain(self) -> None:
        client = self.client
        while True:
            try:
                messages = self.parser.events()
            except RemoteProtocolError as exc:
                if not self.banner.done():
                    self.banner.set_exception(exc)
                    self.abort("no AMI banner")
                    return
                client._protocol_error(exc)
                continue
            if not messages:
                return
            for message in messages:
                self._dispatch(message)

    def _dispatch(self, message: AMIMessage) -> None:
        if isinstance(message, Event):
            # Asterisk spells it exactly so on list items and OriginateResponse; the exact
            # lookup spares every other event Message.get's case-insensitive scan.
            aid = message.fields.get("ActionID")
            if aid is not None:
                pending = self.pending.get(aid)
                if pending is not None and pending.collector is not None:
                    pending.feed(message)
                    return
                if aid in self.client._abandoned:
                    if (message.get("EventList") or "").lower() == "complete":
                        self.client._abandoned.pop(aid, None)
                    return
                if message.name == "OriginateResponse":
                    self.client._originate_done(aid, message)
            self.client._enqueue(message)
        elif isinstance(message, Response):
            aid = message.action_id
            pending = self.pending.get(aid) if aid is not None else None
            if pending is not None:
                pending.feed(message)
            else:
                log.debug("ami.unexpected_response", action_id=aid, status=message.status)
        elif isinstance(message, Banner):
            if not self.banner.done():
                self.banner.set_result(message)
        else:
            self.client._protocol_error(RemoteProtocolError(f"the PBX sent an action: {message.name!r}"))

    # -- output --------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self.closed.done()

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.closed.done():
            raise ConnectionLost(f"AMI connection {self.close_reason}")
        transport.write(data)
        size = transport.get_write_buffer_size()
        if size > self.client.max_write_buffer:
            self.abort(f"the PBX stopped reading ({size} bytes unsent)")
            raise ConnectionLost(f"AMI connection {self.close_reason}")

    def abort(self, reason: str) -> None:
        if self.close_reason == "closed by the PBX":
            self.close_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class AMIClient:
    """A self-healing AMI connection. See the module docstring for the guarantees.

    ``queue_size`` bounds the event queue (oldest dropped first); ``events=False`` logs in
    with ``Events: off`` (actions only). ``clock`` gives wall time for gap reports;
    ``random`` and ``sleep`` drive the reconnect backoff and may be replaced in tests.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        events: bool = True,
        action_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        ping_interval: float = 20.0,
        ping_timeout: float = 5.0,
        queue_size: int = 10_000,
        originate_grace: float = 15.0,
        backoff: Backoff | None = None,
        on_connected: ConnectedHook | None = None,
        on_gap: GapHook | None = None,
        fail_fast_on_login: bool = True,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        max_write_buffer: int = 1024 * 1024,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._secret = secret
        self.events_enabled = events
        self.action_timeout = action_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.originate_grace = originate_grace
        self.backoff = backoff or Backoff()
        self.on_connected = on_connected
        self.on_gap = on_gap
        self.fail_fast_on_login = fail_fast_on_login
        self.max_message_size = max_message_size
        self.max_line_size = max_line_size
        self.max_write_buffer = max_write_buffer
        self._random = random
        self._sleep = sleep
        self._clock = clock
        self._queue: DropOldestQueue[Event] = DropOldestQueue(queue_size)
        self._ids = itertools.count(1)
        self._id_prefix = f"ivr-{secrets.token_hex(3)}"
        self._conn: _Connection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._failed: BaseException | None = None
        self._closing = False
        self._closed = False
        self._ever_connected = False
        self._dropping = False
        self._originates: dict[str, tuple[asyncio.Future[OriginateResult], asyncio.TimerHandle]] = {}
        self._abandoned: OrderedDict[str, None] = OrderedDict()
        self._log = log.bind(ami=f"{host}:{port}")
        # Counters behind :attr:`stats`.
        self._reconnects = 0
        self._connect_failures = 0
        self._login_failures = 0
        self._pings_failed = 0
        self._protocol_errors = 0
        self._actions_sent = 0
        self._actions_timed_out = 0
        self._last_gap: tuple[float, float] | None = None

    # -- life cycle --------------------------------------------------------------------
    async def start(self, *, wait: bool = True) -> None:
        """Start connecting (and reconnecting) in the background.

        With ``wait`` (the default) return once logged in and ``on_connected`` has run.
        A refused first login raises :class:`LoginError` (a configuration error should stop
        the controller, not loop); an unreachable PBX is retried until it answers.
        """
        if self._runner is not None:
            raise RuntimeError("AMIClient already started")
        if self._closed:
            raise ClientClosed("AMIClient is closed")
        self._runner = asyncio.get_running_loop().create_task(
            self._run(), name=f"ami-{self.host}:{self.port}"
        )
        if wait:
            await self.wait_connected()

    async def wait_connected(self) -> None:
        """Wait until logged in and resynced (bound it with ``asyncio.timeout``)."""
        while not self._ready.is_set():
            if self._failed is not None:
                raise self._failed
            if self._closed:
                raise ClientClosed("AMIClient is closed")
            runner = self._runner
            if runner is None:
                raise RuntimeError("AMIClient not started")
            ready = asyncio.ensure_future(self._ready.wait())
            try:
                await asyncio.wait({ready, runner}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if runner.done() and not self._ready.is_set():
                if self._failed is not None:
                    raise self._failed
                raise ClientClosed("AMIClient stopped before connecting")

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    async def close(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 -- bounds the Logoff exchange
        """Logoff, wait (up to ``timeout``) for Asterisk to close, then close. Idempotent."""
        if self._closed:
            return
        self._closing = True
        conn = self._conn
        if conn is not None and conn.is_open:
            try:
                await self._request(conn, "Logoff", (), timeout)
            except (AMIError, LocalProtocolError) as exc:
                self._log.info("ami.logoff_unanswered", error=str(exc))
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(conn.closed)
            except TimeoutError:
                pass
            conn.close_reason = "closed by us"
            conn.close()
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            try:
                await runner
            except asyncio.CancelledError:
                pass
        if conn is not None and not conn.closed.done():
            conn.abort("closed by us")
        self._closed = True
        for aid, (future, timer) in list(self._originates.items()):
            timer.cancel()
            if not future.done():
                error = ClientClosed(f"AMI client closed before the outcome of Originate {aid}")
                error.action_id = aid
                future.set_exception(error)
        self._originates.clear()
        self._queue.close()
        self._log.info("ami.closed")

    async def __aenter__(self) -> AMIClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the connection supervisor -------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        lost_at: float | None = None
        while not self._closing:
            try:
                conn = await self._open()
            except LoginError as exc:
                self._login_failures += 1
                self._log.error("ami.login_refused", message=exc.message)
                if self.fail_fast_on_login and not self._ever_connected:
                    self._failed = exc
                    return
            except (OSError, TimeoutError, AMIError, RemoteProtocolError) as exc:
                self._connect_failures += 1
                self._log.warning("ami.connect_failed", error=str(exc) or type(exc).__name__, attempt=attempt)
            else:
                attempt = 0
                await self._session(conn, lost_at)
                lost_at = self._clock()
                if self._closing:
                    return
                self._log.warning("ami.disconnected", reason=conn.close_reason)
            delay = self.backoff.delay(attempt, self._random())
            attempt += 1
            self._log.info("ami.reconnect_wait", delay_s=round(delay, 3), attempt=attempt)
            await self._sleep(delay)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _transport, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        try:
            async with asyncio.timeout(self.connect_timeout):
                banner = await conn.banner
            headers = [
                ("Username", self.username),
                ("Secret", self._secret),
                ("Events", "on" if self.events_enabled else "off"),
            ]
            response = await self._request(conn, "Login", headers, self.connect_timeout)
            assert isinstance(response, Response)
            if not response.ok:
                raise LoginError("Login", response)
        except BaseException:
            conn.abort("login did not complete")
            raise
        self._log.info("ami.logged_in", version=banner.version)
        return conn

    async def _session(self, conn: _Connection, lost_at: float | None) -> None:
        """Run one logged-in connection until it is lost."""
        self._conn = conn
        conn.pinger = asyncio.get_running_loop().create_task(self._ping_loop(conn))
        if lost_at is not None:
            end = self._clock()
            self._reconnects += 1
            self._last_gap = (lost_at, end)
            self._log.warning("ami.reconnected", gap_s=round(end - lost_at, 3))
            await self._call_hook("on_gap", self.on_gap, lost_at, end)
        await self._call_hook("on_connected", self.on_connected, self)
        self._ever_connected = True
        if not conn.closed.done():
            self._ready.set()
        try:
            await asyncio.shield(conn.closed)
        finally:
            self._ready.clear()
            if self._conn is conn:
                self._conn = None

    async def _call_hook(
        self, name: str, hook: Callable[..., Awaitable[None] | None] | None, *args: object
    ) -> None:
        if hook is None:
            return
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # A failed resync must not kill the connection: log it loudly and carry on.
            self._log.exception("ami.hook_failed", hook=name)

    async def _ping_loop(self, conn: _Connection) -> None:
        while conn.is_open:
            await asyncio.sleep(self.ping_interval)
            try:
                await self._request(conn, "Ping", (), self.ping_timeout)
            except ActionTimeout:
                self._pings_failed += 1
                self._log.warning("ami.ping_timeout", timeout_s=self.ping_timeout)
                conn.abort(f"silent (no Ping reply within {self.ping_timeout} s)")
                return
            except (ConnectionLost, ActionError):
                return

    # -- actions -------------------------------------------------------------------------
    def _new_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def _connection(self) -> _Connection:
        if self._closed or self._closing:
            raise ClientClosed("AMI client is closed")
        if self._failed is not None:
            raise ClientClosed(f"AMI client stopped: {self._failed}")
        conn = self._conn
        if conn is None or not conn.is_open:
            raise NotConnected(f"not connected to the AMI at {self.host}:{self.port} (reconnecting)")
        return conn

    @staticmethod
    def _encode(name: str, action_id: str, headers: Headers) -> bytes:
        if not isinstance(headers, Mapping):
            headers = list(headers)
            keys = [key for key, _value in headers]
        else:
            keys = list(headers)
        for key in keys:
            if key.lower() in _RESERVED:
                raise LocalProtocolError(f"header {key!r} is set by the client itself")
        return encode_action(name, action_id, headers)

    async def _request(
        self,
        conn: _Connection,
        name: str,
        headers: Headers,
        timeout: float | None,  # noqa: ASYNC109 -- per-action deadline, default action_timeout
        *,
        as_list: bool = False,
        action_id: str | None = None,
    ) -> Response | ListResult:
        aid = action_id or self._new_id()
        data = self._encode(name, aid, headers)
        future: asyncio.Future[Response | ListResult] = asyncio.get_running_loop().create_future()
        conn.pending[aid] = _Pending(name, future, aid if as_list else None)
        limit = self.action_timeout if timeout is None else timeout
        try:
            conn.send(data)
            self._actions_sent += 1
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            self._actions_timed_out += 1
            if as_list:
                self._abandoned[aid] = None
                while len(self._abandoned) > _ABANDONED_KEEP:
                    self._abandoned.popitem(last=False)
            error = ActionTimeout(f"no complete reply to {name} (ActionID {aid}) within {limit} s")
            error.action_id = aid
            raise error from None
        except ConnectionLost as exc:
            exc.action_id = aid
            raise
        finally:
            conn.pending.pop(aid, None)

    async def action(
        self,
        name: str,
        headers: Headers = (),
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- per-action deadline, default action_timeout
        check: bool = True,
    ) -> Response:
        """Send one action and return its response.

        Raises :class:`ActionError` on ``Response: Error`` (unless ``check=False``),
        :class:`ActionTimeout`, :class:`ConnectionLost`, :class:`NotConnected`, and
        :class:`LocalProtocolError` before sending anything unsafe.
        """
        result = await self._request(self._connection(), name, headers, timeout)
        assert isinstance(result, Response)
        if check and result.status == "Error":
            raise ActionError(name, result)
        return result

    async def list_action(
        self,
        name: str,
        headers: Headers = (),
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- per-action deadline, default action_timeout
        strict: bool = False,
    ) -> ListResult:
        """Send a list action (QueueStatus, CoreShowChannels ...) and collect its items.

        A count that disagrees with ``ListItems`` is logged and visible on the result
        (``count_mismatch``); with ``strict`` it raises :class:`ListCountMismatch`.
        """
        result = await self._request(self._connection(), name, headers, timeout, as_list=True)
        assert isinstance(result, ListResult)
        if result.response.status == "Error":
            raise ActionError(name, result.response)
        if result.count_mismatch:
            assert result.expected is not None
            self._log.warning(
                "ami.list_count_mismatch", action=name, received=len(result.items), expected=result.expected
            )
            if strict:
                raise ListCountMismatch(name, len(result.items), result.expected)
        return result

    async def ping(self, *, timeout: float | None = None) -> float:  # noqa: ASYNC109
        """Round-trip a Ping; return the seconds it took."""
        started = time.monotonic()
        await self.action("Ping", timeout=timeout)
        return time.monotonic() - started

    async def queue_status(self, queue: str | None = None, member: str | None = None) -> ListResult:
        headers: list[tuple[str, str]] = []
        if queue:
            headers.append(("Queue", queue))
        if member:
            headers.append(("Member", member))
        return await self.list_action("QueueStatus", headers)

    async def core_show_channels(self) -> ListResult:
        return await self.list_action("CoreShowChannels")

    async def originate(
        self,
        channel: str,
        *,
        context: str | None = None,
        exten: str | None = None,
        priority: int | str = 1,
        application: str | None = None,
        data: str | None = None,
        caller_id: str | None = None,
        dial_timeout_ms: int = 30_000,
        variables: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        account: str | None = None,
        extra: Iterable[tuple[str, str]] = (),
        timeout: float | None = None,  # noqa: ASYNC109 -- deadline of the ack
        result_timeout: float | None = None,
    ) -> OriginateCall:
        """Originate (always ``Async: true``) to an extension or an application.

        Returns once Asterisk queued it; await ``.result`` for the OriginateResponse. The
        result fails with :class:`ActionTimeout` after ``result_timeout`` (default: the
        dial timeout plus ``originate_grace``) -- by then the outcome is unknown, check
        CoreShowChannels before dialling again.
        """
        if (exten is None) == (application is None):
            raise ValueError("originate needs exactly one of exten (with context) or application")
        if exten is not None and context is None:
            raise ValueError("originate to an extension needs a context")
        headers: list[tuple[str, str]] = [("Channel", channel)]
        if exten is not None:
            assert context is not None
            headers += [("Context", context), ("Exten", exten), ("Priority", str(priority))]
        else:
            assert application is not None
            headers.append(("Application", application))
            if data is not None:
                headers.append(("Data", data))
        headers.append(("Timeout", str(dial_timeout_ms)))
        if caller_id is not None:
            headers.append(("CallerID", caller_id))
        pairs = variables.items() if isinstance(variables, Mapping) else variables
        for key, value in pairs:
            if not key or "=" in key:
                raise LocalProtocolError(f"invalid channel variable name {key!r}")
            headers.append(("Variable", f"{key}={value}"))
        if account is not None:
            headers.append(("Account", account))
        for key, value in extra:
            if key.lower() == "async":
                raise ValueError("originate is always Async: the OriginateResponse carries the outcome")
            headers.append((key, value))
        headers.append(("Async", "true"))

        conn = self._connection()
        aid = self._new_id()
        self._encode("Originate", aid, headers)  # refuse bad values before registering anything
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[OriginateResult] = loop.create_future()
        outcome.add_done_callback(_retrieve)
        deadline = (
            result_timeout if result_timeout is not None else dial_timeout_ms / 1000 + self.originate_grace
        )
        timer = loop.call_later(deadline, self._originate_expired, aid, deadline)
        self._originates[aid] = (outcome, timer)
        try:
            ack = await self._request(conn, "Originate", headers, timeout, action_id=aid)
            assert isinstance(ack, Response)
            if ack.status == "Error":
                raise ActionError("Originate", ack)
        except BaseException:
            entry = self._originates.pop(aid, None)
            if entry is not None:
                entry[1].cancel()
                entry[0].cancel()
            raise
        return OriginateCall(aid, ack, outcome)

    def _originate_done(self, aid: str, event: Event) -> None:
        entry = self._originates.pop(aid, None)
        if entry is None:
            return
        future, timer = entry
        timer.cancel()
        if not future.done():
            future.set_result(OriginateResult(event))

    def _originate_expired(self, aid: str, deadline: float) -> None:
        entry = self._originates.pop(aid, None)
        if entry is not None and not entry[0].done():
            error = ActionTimeout(
                f"no OriginateResponse for ActionID {aid} within {deadline} s: outcome unknown"
            )
            error.action_id = aid
            entry[0].set_exception(error)

    # -- events --------------------------------------------------------------------------
    def _enqueue(self, event: Event) -> None:
        if self._queue.closed:
            return
        if not self._queue.put(event) and not self._dropping:
            self._dropping = True
            self._log.warning("ami.events_dropping", capacity=self._queue.maxsize)

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        self._protocol_errors += 1
        self._log.warning("ami.bad_message", error=str(exc))

    def _after_get(self) -> None:
        if self._dropping and len(self._queue) <= self._queue.maxsize // 2:
            self._dropping = False
            self._log.warning("ami.events_dropping_ended", dropped_total=self._queue.dropped)

    async def next_event(self) -> Event:
        """The oldest queued event; :class:`ClientClosed` once closed and drained."""
        try:
            event = await self._queue.get()
        except EOFError:
            raise ClientClosed("AMI client closed") from None
        self._after_get()
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Every event, in order, until the client is closed."""
        while True:
            try:
                event = await self._queue.get()
            except EOFError:
                return
            self._after_get()
            yield event

    # -- metrics -------------------------------------------------------------------------
    @property
    def stats(self) -> ClientStats:
        queue = self._queue
        gap = self._last_gap
        return ClientStats(
            connected=self.connected,
            events_received=queue.received,
            events_dropped=queue.dropped,
            queue_depth=len(queue),
            queue_capacity=queue.maxsize,
            max_lag_s=queue.max_lag_s,
            last_lag_s=queue.last_lag_s,
            reconnects=self._reconnects,
            connect_failures=self._connect_failures,
            login_failures=self._login_failures,
            pings_failed=self._pings_failed,
            protocol_errors=self._protocol_errors,
            actions_sent=self._actions_sent,
            actions_timed_out=self._actions_timed_out,
            last_gap_s=None if gap is None else gap[1] - gap[0],
        )

    @property
    def last_gap(self) -> tuple[float, float] | None:
        """Wall-clock (start, end) of the last disconnection, None if there was none."""
        return self._last_gap


def _retrieve(future: asyncio.Future[OriginateResult]) -> None:
    """Mark an outcome's exception as seen, so an unawaited failure does not warn."""
    if not future.cancelled():
        future.exception()
