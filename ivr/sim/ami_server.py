"""The simulator's AMI TCP front-end: sessions, login, framing, flow control.

It behaves as Asterisk 22's manager (``main/manager.c``) does on the wire, so that the
controller -- or any AMI client, panoramisk included -- cannot tell it from the real PBX:

* the banner line first; ``Login`` (user name matched case-insensitively, secret exactly,
  header keys case-insensitively, first occurrence wins as ``astman_get_header`` does);
  success answers ``Authentication accepted`` then ``FullyBooted`` (no ``Timestamp``) and a
  ``SuccessfulAuth`` security event; a wrong secret answers ``Authentication failed`` after
  a delay (``sleep(1)`` in ``action_login``), closes the socket, and the logged-in sessions
  see ``InvalidPassword`` (``InvalidAccountID`` for an unknown user);
* before login every action but Login, Logoff and Challenge gets ``Permission denied``
  (``process_message``; the "Authentication Required" text of old Asterisk versions was
  removed in 2006) and a ``RequestNotAllowed`` security event;
* ``Logoff``: ``Goodbye`` / ``Thanks for all the fish.`` then close; ``Ping``: ``Ping: Pong``
  and a ``Timestamp``; ``Events``/``EventMask`` and Login's ``Events`` set the session's
  event mask with ``strings_to_mask``'s rules (on/off/numbers/category lists);
* everything else goes to the engine (:mod:`ivr.sim.api`); list replies are framed as
  ``astman_send_listack`` / ``astman_send_list_complete_start`` do.

Like Asterisk's session thread, a session handles its actions one at a time and writes the
events raised meanwhile after the action's response: the recordings show ``QueueAdd``'s
response before ``QueueMemberAdded`` and ``UserEvent``'s before the event.

Events are filtered per session as Asterisk does it (``process_events``): the user's
``read`` classes and the session's event mask must hold all of the event's classes, then
the user's ``eventfilter`` lines decide (``should_send_event``; :mod:`ivr.sim.manager_conf`
parses them and loads a user from manager.conf). Each event is formatted at most once,
and only if some session takes it: an event every session filters out by its name alone
(Newexten, DeviceStateChange for the shipped ``ivr`` user) is never encoded. An engine
that can (:class:`~ivr.sim.api.SelectiveEngine`, the simulator) is told what the sessions
take (:meth:`AMIServer.interest`) and does not even build the events none of them would
get -- for the shipped ``ivr`` user, two events out of three, most VarSet included (its
filter reads the ``Variable`` header only, which the engine can test first).

Output is coalesced: a session gathers what it writes and hands it to its transport in
one write -- at the end of the loop turn for responses, and for events within
``event_delay`` seconds (2 ms by default) or as soon as ``flush_bytes`` are gathered (at
most an eighth of ``max_output_buffer``). A busy simulated PBX raises events a few at a
time over many loop turns; a ``send`` each, and the client's wake-up and ``recv`` each,
cost several times the events' encoding. Two milliseconds is below what a client can
tell from a real Asterisk's own delivery jitter, and changes no order: events still
follow the responses they came after.

Flow control: the engine never waits for a socket. When a client reads too slowly and
the output waiting for it (gathered plus buffered in the transport) passes
``max_output_buffer``, the session is dropped and logged -- a real Asterisk does the same
to a client that stops reading (``writetimeout``). Incoming actions are queued per session
up to ``max_pending_actions``; beyond that the session stops reading its socket until it
catches up, so a flooding client costs bounded memory too.

Fault injection for tests of the client: :meth:`AMIServer.drop_connections`,
:meth:`AMIServer.set_silent` (a hung PBX: nothing answered, nothing closed) and
:meth:`AMIServer.send_raw` (bytes no Asterisk would send).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from ivr.logs import get_logger
from ivr.protocol.ami import (
    Action,
    AMIParser,
    Message,
    encode_banner,
    encode_event,
    encode_response,
    event_text,
)
from ivr.protocol.errors import LocalProtocolError, RemoteProtocolError
from ivr.sim.api import ActionResult, Engine, Headers, HeaderTest, SelectiveEngine
from ivr.sim.manager_conf import EventFilters

if TYPE_CHECKING:
    from ivr.sim.manager_conf import EventFilter, FilterPlan, ManagerUser

__all__ = [
    "ALL_EVENTS",
    "AMIServer",
    "encode_result",
    "event_category",
    "strings_to_mask",
]

log = get_logger(__name__)

# Event categories (``include/asterisk/manager.h``) by their manager.conf labels
# (``perms[]`` in ``main/manager.c``).
EVENT_FLAGS: Final[dict[str, int]] = {
    "system": 1 << 0,
    "call": 1 << 1,
    "log": 1 << 2,
    "verbose": 1 << 3,
    "command": 1 << 4,
    "agent": 1 << 5,
    "user": 1 << 6,
    "config": 1 << 7,
    "dtmf": 1 << 8,
    "reporting": 1 << 9,
    "cdr": 1 << 10,
    "dialplan": 1 << 11,
    "originate": 1 << 12,
    "agi": 1 << 13,
    "cc": 1 << 15,
    "aoc": 1 << 16,
    "test": 1 << 17,
    "security": 1 << 18,
    "message": 1 << 30,
}
#: The ``all`` label: INT_MAX, every category.
ALL_EVENTS: Final = 0x7FFFFFFF

_TRUE: Final = frozenset({"yes", "true", "y", "t", "1", "on"})
_FALSE: Final = frozenset({"no", "false", "n", "f", "0", "off"})

#: List items whose ActionID Asterisk writes right after ``Event:`` (``CoreShowChannel``,
#: ``main/manager.c``); the others (QueueParams, QueueMember, QueueEntry, QueueSummary,
#: Status) carry it last. See FACTS.md and the ``actions``/``member_admin`` recordings.
_ACTIONID_FIRST: Final = frozenset({"CoreShowChannel"})

_UNKNOWN_ACTION_PREFIX: Final = "Invalid/unknown command:"
_EPOCH_TV: Final = "1970-01-01T00:00:00.000+0000"
_REQUEST_FIELDS: Final = (
    "AccountID",
    "SessionID",
    "LocalAddress",
    "RemoteAddress",
    "RequestType",
    "SessionTV",
)


def strings_to_mask(value: str | None) -> int:
    """An event mask as ``strings_to_mask`` (``main/manager.c``) computes it.

    Empty -> -1 (leave the mask unchanged); digits -> that number; a false word -> 0
    (events off); a true word -> every category; otherwise a comma list of categories
    (an unknown label counts for nothing, so ``Events: bogus`` turns events off, as on
    Asterisk).
    """
    if not value:
        return -1
    if value.isascii() and value.isdigit():
        return int(value)
    folded = value.strip().lower()
    if folded in _FALSE:
        return 0
    if folded in _TRUE:
        return ALL_EVENTS
    mask = 0
    for label in value.split(","):
        label = label.strip()
        if label == "all":
            mask |= ALL_EVENTS
        else:
            mask |= EVENT_FLAGS.get(label, 0)
    return mask


#: Category bits by ``Privilege`` value: the engine uses a handful of values.
_CATEGORIES: Final[dict[str, int]] = {}


def _privilege_mask(value: str) -> int:
    mask = _CATEGORIES.get(value)
    if mask is None:
        mask = 0
        for label in value.split(","):
            mask |= EVENT_FLAGS.get(label.strip().lower(), 0)
        if len(_CATEGORIES) < 256:
            _CATEGORIES[value] = mask
    return mask


def event_category(headers: Headers) -> int:
    """The category bits of an event, from its ``Privilege`` header (``all`` ignored).

    An event without ``Privilege`` has category 0 and reaches every session with events
    on, as ``(send_events & category) == category`` lets it on Asterisk.
    """
    if headers and headers[0][0] == "Privilege":  # where the engine puts it
        return _privilege_mask(headers[0][1])
    for key, value in headers:
        if key == "Privilege":
            return _privilege_mask(value)
    return 0


def _item_headers(name: str, headers: Headers, action_id: str | None) -> Headers:
    """A list item's headers with the ActionID where Asterisk writes it.

    The engine may place an ``ActionID`` placeholder itself; otherwise it goes first for
    the items listed in ``_ACTIONID_FIRST`` and last for the rest.
    """
    out: Headers = []
    placed = False
    for key, value in headers:
        if key.lower() == "actionid":
            placed = True
            if action_id is not None:
                out.append((key, action_id))
            continue
        out.append((key, value))
    if not placed and action_id is not None:
        if name in _ACTIONID_FIRST:
            out.insert(0, ("ActionID", action_id))
        else:
            out.append(("ActionID", action_id))
    return out


def encode_result(result: ActionResult, action_id: str | None) -> bytes:
    """Encode the engine's answer to one action, list replies included.

    A list answers ``Response: Success``, ``ActionID``, ``EventList: start``, ``Message``;
    then each item with its ActionID; then the completion event: ``ActionID``,
    ``EventList: Complete``, ``ListItems: N`` and the engine's extra headers (StatusComplete
    adds ``Items: N``), byte for byte as in the recordings.
    """
    listing = result.listing
    if listing is None or result.status != "Success":
        return encode_response(result.status, action_id, result.headers)
    message = listing.message
    rest: Headers = []
    for key, value in result.headers:
        if key == "Message" and not message:
            message = value
        elif key != "Message":
            rest.append((key, value))
    chunks = [encode_response("Success", action_id, [("EventList", "start"), ("Message", message), *rest])]
    for name, headers in listing.items:
        chunks.append(encode_event(name, _item_headers(name, headers, action_id)))
    tail: Headers = [] if action_id is None else [("ActionID", action_id)]
    tail += [("EventList", "Complete"), ("ListItems", str(len(listing.items)))]
    chunks.append(encode_event(listing.complete_event, tail + listing.complete_headers))
    return b"".join(chunks)


def _first_header(msg: Message, key: str) -> str:
    """``astman_get_header``: first occurrence, key case-insensitive, leading blanks skipped."""
    folded = key.lower()
    for k, v in msg.headers:
        if k.lower() == folded:
            return v.lstrip(" \t")
    return ""


def _tv(epoch: float) -> str:
    """Asterisk's security-event time: ``2026-11-27T03:51:20.126+0000``."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _address(sockaddr: object) -> str:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host, port = str(sockaddr[0]), sockaddr[1]
        family = "IPV6" if ":" in host else "IPV4"
        return f"{family}/TCP/{host}/{port}"
    return "IPV4/TCP/0.0.0.0/0"


class AMIServer:
    """Asterisk's manager interface over TCP, backed by a simulated PBX engine.

    ``await start()`` binds (``port=0`` picks a free port, see :attr:`port`); ``await
    stop()`` sends ``Shutdown``, closes every session after its pending output and waits
    for them. ``auth_failure_delay`` is Asterisk's one-second penalty on a failed login,
    shortened in tests.

    ``event_filters`` and ``read_perm`` are the manager user's ``eventfilter`` lines and
    ``read`` classes (default: no filter, every class -- the whole stream, as the
    recordings were made); :meth:`for_user` takes both from a
    :class:`~ivr.sim.manager_conf.ManagerUser` loaded from manager.conf.
    """

    def __init__(
        self,
        engine: Engine,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "ivr",
        secret: str = "",
        banner_version: str = "11.0.0",
        *,
        auth_failure_delay: float = 1.0,
        max_output_buffer: int = 4 * 1024 * 1024,
        max_pending_actions: int = 64,
        max_message_size: int = 64 * 1024,
        shutdown_grace: float = 5.0,
        event_delay: float = 0.002,
        flush_bytes: int = 64 * 1024,
        event_filters: Iterable[EventFilter] = (),
        read_perm: int = ALL_EVENTS,
    ) -> None:
        if not secret:
            raise ValueError("the AMI secret must not be empty: a manager account always has one")
        filters = EventFilters(event_filters)
        #: The user's filters (None: none, every event passes); shared by its sessions.
        self.filters: EventFilters | None = filters if filters else None
        self.read_perm = read_perm
        self.engine = engine
        self.host = host
        self._requested_port = port
        self.username = username
        self.secret = secret
        self.banner = encode_banner(banner_version)
        self.auth_failure_delay = auth_failure_delay
        self.max_output_buffer = max_output_buffer
        self.max_pending_actions = max_pending_actions
        self.max_message_size = max_message_size
        self.shutdown_grace = shutdown_grace
        if event_delay < 0 or flush_bytes < 1:
            raise ValueError("event_delay must be >= 0 and flush_bytes >= 1")
        self.event_delay = event_delay
        # Gathered output must reach the transport long before it counts against the limit.
        self.flush_bytes = max(1, min(flush_bytes, max_output_buffer // 8))
        self.sessions: set[_Session] = set()
        self.started_at = 0.0
        self.silent = False
        self.slow_clients_dropped = 0
        #: Events written to sessions (one per session that took it), and events a session
        #: would have taken (mask and read classes) but its eventfilters kept from it.
        self.events_delivered = 0
        self.events_filtered = 0
        self._receivers: tuple[_Session, ...] = ()
        self._server: asyncio.Server | None = None
        # The engine, when it asks what the sessions take before building an event.
        self._selective: SelectiveEngine | None = None

    @classmethod
    def for_user(
        cls,
        engine: Engine,
        user: ManagerUser,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> AMIServer:
        """A server for one manager.conf user: its name, secret, ``read`` and filters.

        ``options`` go to the constructor (``secret=`` overrides the file's placeholder).
        """
        options.setdefault("secret", user.secret)
        return cls(
            engine, host, port, user.username, event_filters=user.filters, read_perm=user.read, **options
        )

    # -- life cycle --------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("AMIServer is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("AMIServer already started")
        loop = asyncio.get_running_loop()
        self.started_at = self.engine.now()
        self._server = await loop.create_server(lambda: _Session(self), self.host, self._requested_port)
        engine = self.engine
        if isinstance(engine, SelectiveEngine):
            self._selective = engine
            engine.add_listener(self.broadcast, self.interest)
        else:
            engine.add_listener(self.broadcast)
        log.info("ami_server.started", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop accepting, say ``Shutdown``, flush and close every session, wait for them.

        Sessions still busy after ``shutdown_grace`` seconds (an engine action that never
        returns, a client that never reads) are aborted.
        """
        server = self._server
        if server is None:
            return
        self._server = None
        server.close()
        self.engine.remove_listener(self.broadcast)
        self._selective = None
        now = self.engine.now()
        self.broadcast(
            "Shutdown",
            [
                ("Privilege", "system,all"),
                ("Timestamp", f"{now:.6f}"),
                ("Shutdown", "Cleanly"),
                ("Restart", "False"),
            ],
        )
        sessions = list(self.sessions)
        for session in sessions:
            session.close()
        tasks = [s.task for s in sessions if s.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace)
            for session in sessions:
                if not session.closed:
                    session.abort("shutdown timeout")
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await server.wait_closed()
        log.info("ami_server.stopped")

    async def __aenter__(self) -> AMIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- fault injection -----------------------------------------------------------------
    def drop_connections(self) -> int:
        """Abort every TCP connection at once (the listener stays open); return how many."""
        sessions = list(self.sessions)
        for session in sessions:
            session.abort("dropped by fault injection")
        return len(sessions)

    def set_silent(self, silent: bool) -> None:
        """A hung PBX: while silent nothing is read, answered or sent, and nothing is closed.

        New connections get no banner until the silence ends; actions received meanwhile
        are lost, as they would be behind a stuck manager thread.
        """
        self.silent = silent
        self._interest_changed()
        if not silent:
            for session in list(self.sessions):
                session.greet()

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is to every session (unless silent): for tests of bad input."""
        for session in list(self.sessions):
            session.write(data)

    @property
    def logged_in(self) -> int:
        return sum(1 for s in self.sessions if s.authenticated)

    # -- events ------------------------------------------------------------------------
    def broadcast(self, name: str, headers: Headers, *, exclude: _Session | None = None) -> None:
        """Send an event to every logged-in session that takes it (``process_events``).

        A session takes an event when its event mask and its user's ``read`` hold all of
        the event's classes and its filters let it through. The event is formatted once,
        when the first session needs it: to send it, or for a filter that reads the text.
        """
        receivers = self._receivers
        if not receivers or self.silent:
            return
        if headers and headers[0][0] == "Privilege":  # where the engine puts it
            category = _CATEGORIES.get(headers[0][1])
            if category is None:
                category = _privilege_mask(headers[0][1])
        else:
            category = event_category(headers)
        text: str | None = None
        data: bytes | None = None
        plan_for: EventFilters | None = None
        plan: FilterPlan | None = None
        for session in receivers:
            if session is exclude or (session.accepts & category) != category:
                continue
            filters = session.filters
            if filters is not None:
                if filters is not plan_for:
                    plan_for, plan = filters, filters.plan(name)
                assert plan is not None
                ok = plan.verdict
                if ok is None:
                    if plan.needs_text and text is None:
                        text = self._text(name, headers)
                        if text is None:
                            return
                    ok = plan.evaluate(name, headers, text)
                if not ok:
                    self.events_filtered += 1
                    continue
            if data is None:
                if text is None:
                    text = self._text(name, headers)
                    if text is None:
                        return
                try:
                    data = text.encode()
                except UnicodeEncodeError:
                    log.exception("ami_server.unencodable_event", event_name=name)
                    return
            self.events_delivered += 1
            session.deliver(data)

    def interest(self, name: str, privilege: str) -> bool | HeaderTest:
        """What the sessions take of the events ``name`` of class ``privilege``.

        A selective engine asks this before building an event (see
        :class:`~ivr.sim.api.SelectiveEngine`): False when every session drops such events
        by their class or by their name alone (no session, events off, the ``ivr`` user's
        Newexten), a :class:`~ivr.sim.api.HeaderTest` when the filters read some headers
        only (the ``ivr`` user's VarSet filter reads ``Variable``), else True. The events
        an engine then never hands over are not counted in :attr:`events_filtered`.
        """
        if self.silent:
            return False
        category = _privilege_mask(privilege)
        plans: list[FilterPlan] = []
        for session in self._receivers:
            if (session.accepts & category) != category:
                continue
            filters = session.filters
            if filters is None:
                return True
            plan = filters.plan(name)
            if plan.verdict is True:
                return True
            if plan.verdict is None:
                if plan.needs_text:
                    return True
                if not any(p is plan for p in plans):
                    plans.append(plan)
        if not plans:
            return False
        keys = frozenset().union(*(p.header_keys for p in plans))
        return HeaderTest(keys, _PlanTest(name, plans, keys))

    def _interest_changed(self) -> None:
        if self._selective is not None:
            self._selective.interest_changed()

    def _update_receivers(self) -> None:
        """Recompute the sessions events go to (logged in, open, events on)."""
        self._receivers = tuple(s for s in self.sessions if s.authenticated and not s.closed and s.accepts)
        self._interest_changed()

    @staticmethod
    def _text(name: str, headers: Headers) -> str | None:
        try:
            return event_text(name, headers)
        except LocalProtocolError:
            log.exception("ami_server.unencodable_event", event_name=name)
            return None

    def security_event(
        self,
        name: str,
        session: _Session,
        *,
        severity: str = "Error",
        version: int = 1,
        fields: Iterable[str] = ("AccountID", "SessionID", "LocalAddress", "RemoteAddress", "SessionTV"),
        extra: Headers | None = None,
        account: str | None = None,
    ) -> None:
        """Broadcast one security event with the fields in ``security_events.c`` order."""
        now = self.engine.now()
        values = {
            "AccountID": session.username if account is None else account,
            "SessionID": session.session_id,
            "LocalAddress": session.local_address,
            "RemoteAddress": session.remote_address,
            "SessionTV": _tv(session.session_tv) if session.session_tv is not None else _EPOCH_TV,
        }
        headers: Headers = [
            ("Privilege", "security,all"),
            ("Timestamp", f"{now:.6f}"),
            ("EventTV", _tv(now)),
            ("Severity", severity),
            ("Service", "AMI"),
            ("EventVersion", str(version)),
        ]
        extras = dict(extra or [])
        for field in fields:
            headers.append((field, extras.pop(field) if field in extras else values[field]))
        headers.extend(extras.items())
        self.broadcast(name, headers)


class _PlanTest:
    """Whether some filter plan lets an event through, from the headers it reads only.

    The verdicts are remembered per value of those headers: the ``ivr`` user's VarSet
    filter sees a few dozen variable names, each thousands of times.
    """

    __slots__ = ("keys", "memo", "name", "plans")

    MAX_MEMO: Final = 4096

    def __init__(self, name: str, plans: list[FilterPlan], keys: frozenset[str]) -> None:
        self.name = name
        self.plans = tuple(plans)
        self.keys = keys
        self.memo: dict[tuple[tuple[str, str], ...], bool] = {}

    def __call__(self, headers: Headers) -> bool:
        keys = self.keys
        seen = tuple([pair for pair in headers if pair[0] in keys])
        verdict = self.memo.get(seen)
        if verdict is None:
            name = self.name
            verdict = any(plan.evaluate(name, seen, None) for plan in self.plans)
            if len(self.memo) < self.MAX_MEMO:
                self.memo[seen] = verdict
        return verdict


class _Session(asyncio.Protocol):
    """One manager connection: parser in, actions handled in order, bounded output."""

    def __init__(self, server: AMIServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = AMIParser(
            expect_banner=False,
            max_message_size=server.max_message_size,
            max_line_size=min(server.max_message_size, 64 * 1024),
        )
        self.inbox: deque[Message | RemoteProtocolError] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.greeted = False
        self.reading_paused = False
        self.authenticated = False
        self.username = ""
        self._send_events = ALL_EVENTS
        self.read_perm = ALL_EVENTS
        #: The classes an event may hold to reach this session: event mask & read classes,
        #: or 0 with events off (then not even a class-less event goes out).
        self.accepts = ALL_EVENTS
        self.filters: EventFilters | None = None
        self.session_tv: float | None = None
        self.session_id = f"0x{secrets.randbits(44) | (0x7F << 40):x}"
        self.local_address = "IPV4/TCP/0.0.0.0/0"
        self.remote_address = "IPV4/TCP/0.0.0.0/0"
        self.challenge = ""
        self.busy = False
        self.held: list[bytes] = []
        self.held_bytes = 0
        # Output gathered for the next _flush (see the module docstring); flush_soon is
        # set when that flush is due at the end of this loop turn, not after event_delay.
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.flush_handle: asyncio.Handle | None = None
        self.flush_soon = False
        # The transport's buffer as of the last flush: it only shrinks until the next one,
        # so out_bytes + this bounds what waits for the client.
        self.transport_bytes = 0

    @property
    def send_events(self) -> int:
        """The session's event mask (``Events``/``EventMask``, Login's ``Events``)."""
        return self._send_events

    @send_events.setter
    def send_events(self, mask: int) -> None:
        self._send_events = mask
        self._update_accepts()

    def _update_accepts(self) -> None:
        mask = self._send_events
        self.accepts = mask & self.read_perm if mask else 0
        self.server._update_receivers()

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.local_address = _address(transport.get_extra_info("sockname"))
        self.remote_address = _address(transport.get_extra_info("peername"))
        self.server.sessions.add(self)
        self.task = asyncio.get_running_loop().create_task(self._run())
        log.debug("ami_server.connected", peer=self.remote_address)
        if not self.server.silent:
            self.greet()

    def data_received(self, data: bytes) -> None:
        if self.server.silent or self.closed:
            return
        self.parser.receive_data(data)
        self._collect()

    def eof_received(self) -> bool:
        if not self.closed:
            self.parser.receive_data(b"")
            self._collect()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.sessions.discard(self)
        self.server._update_receivers()
        self.held.clear()
        self._discard_output()
        self.wakeup.set()
        log.debug("ami_server.disconnected", peer=self.remote_address, error=str(exc) if exc else None)

    def pause_writing(self) -> None:
        log.debug("ami_server.client_behind", peer=self.remote_address)

    def resume_writing(self) -> None:
        log.debug("ami_server.client_caught_up", peer=self.remote_address)

    # -- output --------------------------------------------------------------------------
    def greet(self) -> None:
        if not self.greeted and not self.closed:
            self.greeted = True
            self.write(self.server.banner)

    def write(self, data: bytes, *, urgent: bool = True) -> None:
        """Queue ``data`` for the transport: at the end of this loop turn if ``urgent``
        (a response, the banner), else within ``event_delay`` (events)."""
        if self.flush_handle is not None and (self.flush_soon or not urgent) and not self.server.silent:
            # The common case, every event of a busy PBX: a flush is due anyway (a pending
            # handle means the session is open: closing and aborting clear it).
            server = self.server
            gathered = self.out_bytes + len(data)
            if gathered < server.flush_bytes and gathered + self.transport_bytes <= server.max_output_buffer:
                self.out.append(data)
                self.out_bytes = gathered
                return
        transport = self.transport
        if self.closed or self.server.silent or transport is None or transport.is_closing():
            return
        server = self.server
        self.out.append(data)
        self.out_bytes += len(data)
        if self.out_bytes + self.transport_bytes > server.max_output_buffer:
            self.transport_bytes = transport.get_write_buffer_size()  # it may have drained
            if self.out_bytes + self.transport_bytes > server.max_output_buffer:
                self._drop_slow(self.out_bytes + self.transport_bytes)
                return
        if self.flush_soon:
            return
        if urgent or self.out_bytes >= server.flush_bytes or not server.event_delay:
            if self.flush_handle is not None:
                self.flush_handle.cancel()
            self.flush_soon = True
            self.flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        elif self.flush_handle is None:
            self.flush_handle = asyncio.get_running_loop().call_later(server.event_delay, self._flush)

    def _flush(self) -> None:
        """Hand everything gathered to the transport in one write."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()  # when called directly (close)
            self.flush_handle = None
        self.flush_soon = False
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.out_bytes = 0
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        transport.write(data)
        size = self.transport_bytes = transport.get_write_buffer_size()
        if size > self.server.max_output_buffer:
            self._drop_slow(size)

    def _discard_output(self) -> None:
        self.out.clear()
        self.out_bytes = 0
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        self.flush_soon = False

    def _drop_slow(self, buffered: int) -> None:
        self.server.slow_clients_dropped += 1
        log.warning(
            "ami_server.slow_client_dropped",
            peer=self.remote_address,
            buffered=buffered,
            limit=self.server.max_output_buffer,
        )
        self.abort("output buffer over its limit")

    def deliver(self, data: bytes) -> None:
        """An event this session takes (the server checked its mask and filters)."""
        if self.closed:
            return
        if self.busy:
            # Asterisk writes the events raised during an action after its response.
            self.held.append(data)
            self.held_bytes += len(data)
            if self.held_bytes > self.server.max_output_buffer:
                self.server.slow_clients_dropped += 1
                log.warning("ami_server.slow_client_dropped", peer=self.remote_address, held=self.held_bytes)
                self.abort("held events over the output limit")
            return
        self.write(data, urgent=False)

    def _flush_held(self) -> None:
        if self.held:
            data = b"".join(self.held)
            self.held.clear()
            self.held_bytes = 0
            self.write(data, urgent=False)

    def close(self) -> None:
        """Close after the buffered output is sent."""
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.wakeup.set()

    def abort(self, reason: str) -> None:
        """Drop the connection now, discarding buffered output."""
        log.info("ami_server.session_aborted", peer=self.remote_address, reason=reason)
        self._discard_output()
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self.server.sessions.discard(self)
        self.server._update_receivers()
        self.wakeup.set()

    # -- input ---------------------------------------------------------------------------
    def _collect(self) -> None:
        while True:
            try:
                messages = self.parser.events()
            except RemoteProtocolError as exc:
                self.inbox.append(exc)
                continue
            if not messages:
                break
            self.inbox.extend(m for m in messages if isinstance(m, Message))
        if self.inbox:
            self.wakeup.set()
        if len(self.inbox) > self.server.max_pending_actions and not self.reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self.reading_paused = True

    async def _run(self) -> None:
        while not self.closed:
            if not self.inbox:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            item = self.inbox.popleft()
            if self.reading_paused and len(self.inbox) <= self.server.max_pending_actions // 2:
                self.reading_paused = False
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.resume_reading()
            if self.server.silent:
                continue
            self.busy = True
            try:
                keep_open = await self._handle(item)
            except Exception:
                log.exception("ami_server.action_failed")
                keep_open = True
            finally:
                self.busy = False
                self._flush_held()
            if not keep_open:
                self.close()
                return

    async def _handle(self, item: Message | RemoteProtocolError) -> bool:
        """Handle one incoming message; False means close the session afterwards."""
        if isinstance(item, RemoteProtocolError):
            log.warning("ami_server.bad_message", peer=self.remote_address, error=str(item))
            self._bad_format("NONE")
            self.write(encode_response("Error", None, [("Message", "Missing action in request")]))
            return True
        action_id = _first_header(item, "ActionID") or None
        name = _first_header(item, "Action") if isinstance(item, Action) else ""
        if not name:
            self._bad_format("NONE")
            self._error(action_id, "Missing action in request")
            return True
        assert isinstance(item, Action)
        verb = name.lower()
        if not self.authenticated and verb not in ("login", "logoff", "challenge"):
            self.server.security_event(
                "RequestNotAllowed",
                self,
                fields=_REQUEST_FIELDS,
                extra=[("RequestType", f"Action: {name}")],
            )
            self._error(action_id, "Permission denied")
            return True
        if verb == "login":
            return await self._login(item, action_id)
        if verb == "logoff":
            self.write(encode_response("Goodbye", action_id, [("Message", "Thanks for all the fish.")]))
            return False
        if verb == "challenge":
            self._challenge(item, action_id)
            return True
        if verb == "ping":
            now = self.server.engine.now()
            self.write(encode_response("Success", action_id, [("Ping", "Pong"), ("Timestamp", f"{now:.6f}")]))
            return True
        if verb == "events":
            self._events(item, action_id)
            return True
        await self._engine_action(item, name, action_id)
        return True

    def _error(self, action_id: str | None, message: str) -> None:
        self.write(encode_response("Error", action_id, [("Message", message)]))

    def _bad_format(self, action: str) -> None:
        self.server.security_event(
            "RequestBadFormat",
            self,
            fields=("SessionID", "LocalAddress", "RemoteAddress", "RequestType", "SessionTV", "AccountID"),
            extra=[("RequestType", f"Action: {action}")],
        )

    async def _engine_action(self, action: Action, name: str, action_id: str | None) -> None:
        try:
            result = await self.server.engine.handle_action(action)
        except Exception as exc:
            log.exception("ami_server.engine_error", action=name)
            result = ActionResult.error(f"Internal error: {type(exc).__name__}")
        try:
            data = encode_result(result, action_id)
        except LocalProtocolError as exc:
            log.error("ami_server.unencodable_result", action=name, error=str(exc))
            data = encode_response("Error", action_id, [("Message", "Internal error")])
        self.write(data)
        if result.status == "Error":
            message = next((v for k, v in result.headers if k == "Message"), "")
            if message.startswith(_UNKNOWN_ACTION_PREFIX):
                self._bad_format(name)

    async def _login(self, msg: Action, action_id: str | None) -> bool:
        server = self.server
        if self.authenticated:
            self.write(encode_response("Success", action_id, [("Message", "Already authenticated")]))
            return True
        username = _first_header(msg, "Username")
        ok = False
        if not username:
            pass
        elif username.lower() != server.username.lower():
            server.security_event("InvalidAccountID", self, account=username)
        elif _first_header(msg, "AuthType").lower() == "md5":
            key = _first_header(msg, "Key")
            digest = hashlib.md5((self.challenge + server.secret).encode(), usedforsecurity=False)
            expected = digest.hexdigest()
            ok = bool(key) and bool(self.challenge) and key == expected
            if not ok:
                server.security_event("ChallengeResponseFailed", self, account=username)
        elif _first_header(msg, "Secret") == server.secret:
            ok = True
        else:
            server.security_event("InvalidPassword", self, version=2, account=username)
        if not ok:
            log.info("ami_server.login_failed", peer=self.remote_address, username=username)
            await asyncio.sleep(server.auth_failure_delay)
            self._error(action_id, "Authentication failed")
            return False
        now = server.engine.now()
        self.authenticated = True
        self.username = username
        self.session_tv = now
        self.read_perm = server.read_perm
        self.filters = server.filters
        self._update_accepts()
        mask = strings_to_mask(_first_header(msg, "Events"))
        if mask >= 0:
            self.send_events = mask
        self.write(encode_response("Success", action_id, [("Message", "Authentication accepted")]))
        if self.send_events & self.read_perm & EVENT_FLAGS["system"]:
            uptime = str(int(max(0.0, now - server.started_at)))
            self.write(
                encode_event(
                    "FullyBooted",
                    [
                        ("Privilege", "system,all"),
                        ("Uptime", uptime),
                        ("LastReload", uptime),
                        ("Status", "Fully Booted"),
                    ],
                )
            )
        server.security_event(
            "SuccessfulAuth",
            self,
            severity="Informational",
            fields=("AccountID", "SessionID", "LocalAddress", "RemoteAddress", "UsingPassword", "SessionTV"),
            extra=[("UsingPassword", "0")],
        )
        log.info("ami_server.logged_in", peer=self.remote_address, username=username)
        return True

    def _challenge(self, msg: Action, action_id: str | None) -> None:
        if _first_header(msg, "AuthType").lower() != "md5":
            self._error(action_id, "Must specify AuthType")
            return
        if not self.challenge:
            self.challenge = str(secrets.randbelow(2**31))
        self.write(encode_response("Success", action_id, [("Challenge", self.challenge)]))

    def _events(self, msg: Action, action_id: str | None) -> None:
        mask = strings_to_mask(_first_header(msg, "EventMask"))
        if mask >= 0:
            self.send_events = mask
        if mask > 0:
            self.write(encode_response("Success", action_id, [("Events", "On")]))
        elif mask == 0:
            self.write(encode_response("Success", action_id, [("Events", "Off")]))
        else:
            self._error(action_id, "Invalid event mask")
