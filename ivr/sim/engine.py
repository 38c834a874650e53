"""The simulated Asterisk 22: channels, dialplan execution, Originate, hangups, events.

:class:`Simulator` implements the :class:`ivr.sim.api.Engine` protocol that the AMI
front-end (``ivr.sim.ami_server``) drives. It owns the virtual clock
(:mod:`ivr.sim.clock`), the channels, the dialplan interpreter (apps in
:mod:`ivr.sim.apps`), app_queue (:mod:`ivr.sim.queues`, which also writes the queue_log),
the FastAGI client (:mod:`ivr.sim.agi_client`) and the manager actions
(:mod:`ivr.sim.actions`).

Events are emitted with the names, headers and order of the transcripts recorded from a
real Asterisk 22.10.1 (``tests/fixtures/asterisk``): the channel snapshot headers of
``ast_manager_build_channel_state_string``, ``Privilege`` then ``Timestamp`` first
(``timestampevents = yes``). The hangup choreography of Local channel pairs follows the
recordings: the side that hangs up itself shows ``SoftHangupRequest``, its partner a
``HangupRequest`` with the cause, then each side its ``Hangup``.

Usage::

    sim = Simulator(default_config(), seed=1, speed=50)
    await sim.start()
    sim.add_listener(lambda name, headers: ...)
    result = await sim.handle_action(action)     # what the AMI server does
    ...
    await sim.stop()
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from ivr.protocol.ami import Action
from ivr.sim.api import ActionResult, EventInterest, EventListener, Headers, HeaderTest
from ivr.sim.channel import (
    BUSY,
    CAUSE_TEXT,
    DOWN,
    HANGUP,
    RING,
    RINGING,
    TIMEOUT,
    UP,
    Channel,
    DialObserver,
)
from ivr.sim.clock import Scheduler
from ivr.sim.config import SimConfig, default_config
from ivr.sim.dialplan import AstDB, Dialplan, split_args, substitute

__all__ = ["Mailbox", "OriginateRequest", "Simulator"]

log = structlog.get_logger(__name__)

CALL: Final = "call,all"
#: Apps that announce their own Newexten events (they run several rig priorities).
SELF_ANNOUNCING: Final = frozenset({"agentplan"})
DIALPLAN: Final = "dialplan,all"
AGENT: Final = "agent,all"


class Mailbox(DialObserver):
    """Collects dial progress of a ``;1`` channel for a coroutine that is not a channel app."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.items: list[tuple[str, Channel]] = []
        self._fut: asyncio.Future[None] | None = None

    def on_dial_event(self, chan: Channel, kind: str) -> None:
        self.items.append((kind, chan))
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def get(self, seconds: float | None) -> tuple[str, Channel] | object:
        if not self.items:
            fut = self.sim.clock.loop.create_future()
            self._fut = fut
            timer = self.sim.clock.call_later(seconds, _resolve_none, fut) if seconds is not None else None
            try:
                await fut
            finally:
                self._fut = None
                if timer is not None:
                    timer.cancel()
            if not self.items:
                return TIMEOUT
        return self.items.pop(0)


class Forwarder(DialObserver):
    """Posts dial progress of an outgoing leg into the inbox of the channel that dialled it."""

    __slots__ = ("tag", "target")

    def __init__(self, target: Channel, tag: object) -> None:
        self.target = target
        self.tag = tag

    def on_dial_event(self, chan: Channel, kind: str) -> None:
        self.target.post(("dial", kind, self.tag))


def _resolve_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class OriginateRequest:
    """The parsed headers of an Originate action."""

    __slots__ = (
        "action_id",
        "application",
        "channel",
        "cid_name",
        "cid_num",
        "context",
        "data",
        "exten",
        "priority",
        "result",
        "timeout_ms",
        "variables",
    )

    def __init__(
        self,
        channel: str,
        *,
        context: str = "",
        exten: str = "",
        priority: str = "1",
        application: str = "",
        data: str = "",
        cid_num: str = "",
        cid_name: str = "",
        timeout_ms: int = 30000,
        variables: Iterable[tuple[str, str]] = (),
        action_id: str | None = None,
    ) -> None:
        self.channel = channel
        self.context = context
        self.exten = exten
        self.priority = priority
        self.application = application
        self.data = data
        self.cid_num = cid_num
        self.cid_name = cid_name
        self.timeout_ms = timeout_ms
        self.variables = list(variables)
        self.action_id = action_id
        #: Set for a synchronous Originate: resolved with the outcome, no event is sent.
        self.result: asyncio.Future[bool] | None = None


class Simulator:
    """A simulated Asterisk 22 for the paths Décroché uses (see module docstring).

    ``seed`` drives every random choice (``random.Random(seed)``; no global random);
    ``speed`` is virtual seconds per real second; ``start_epoch`` is the virtual time at
    :meth:`start` (default: the config's, else the wall clock). ``queue_log_path`` (or the
    config's ``queue_log``) is where the queue_log is written; ``None`` keeps it in memory
    only (:attr:`queue_log_lines`).
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        seed: int = 0,
        speed: float = 1.0,
        start_epoch: float | None = None,
        queue_log_path: str | Path | None = None,
    ) -> None:
        from ivr.sim.queues import QueueManager

        self.config = config if config is not None else default_config()
        self.seed = seed
        self.rng = random.Random(seed)
        epoch = start_epoch if start_epoch is not None else self.config.start_epoch
        self.clock = Scheduler(epoch if epoch is not None else time.time(), speed)
        self.dialplan = Dialplan(self.config.dialplan)
        self.globals: dict[str, str] = dict(self.config.globals)
        self.channels: dict[str, Channel] = {}
        self.by_uniqueid: dict[str, Channel] = {}
        self._uid = 0
        self._local = 0
        # A tuple, replaced on change: emit() iterates it while a listener may unsubscribe.
        self._listeners: tuple[tuple[EventListener, EventInterest | None], ...] = ()
        # Who takes the events of a name and class: name -> Privilege value -> route.
        self._routes: dict[str, dict[str, _Route]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._device_inuse: dict[str, int] = {}
        self._device_reported: dict[str, str] = {}
        self._device_check: set[str] = set()
        # The Timestamp header of the current instant: many events share one instant.
        self._ts_at = -1.0
        self._ts_pair: tuple[str, str] = ("Timestamp", "")
        self.started = False
        self.stopped = False
        self.events_emitted = 0
        self.event_counts: Counter[str] = Counter()
        self.calls_originated = 0
        #: AstDB of the simulated PBX (FastAGI DATABASE GET/PUT/DEL, DB() in the dialplan,
        #: AMI DBGet/DBPut/DBDel).
        self.astdb = AstDB()
        path = queue_log_path if queue_log_path is not None else self.config.queue_log
        self.queue_log_path: Path | None = Path(path) if path is not None else None
        self.queues = QueueManager(self)

    # -- Engine protocol ------------------------------------------------------------------
    def add_listener(self, listener: EventListener, interest: EventInterest | None = None) -> None:
        """Call ``listener`` for every event, or, with ``interest``, for those it may take.

        An event no listener may take is counted (:attr:`events_emitted`,
        :attr:`event_counts`) but never built.
        """
        self._listeners = (*self._listeners, (listener, interest))
        self._routes = {}

    def remove_listener(self, listener: EventListener) -> None:
        listeners = list(self._listeners)
        for i, (known, _interest) in enumerate(listeners):
            if known == listener:
                del listeners[i]
                break
        else:
            return
        self._listeners = tuple(listeners)
        self._routes = {}

    def interest_changed(self) -> None:
        """A listener's interest may have changed: ask again on the next events."""
        self._routes = {}

    def now(self) -> float:
        return self.clock.now()

    async def handle_action(self, action: Action) -> ActionResult:
        from ivr.sim.actions import dispatch

        self.clock.sync_external()
        return await dispatch(self, action)

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start virtual time, load the queues (``QUEUESTART`` in the queue_log)."""
        if self.started:
            raise RuntimeError("simulator already started")
        self.started = True
        # Import the modules apps and actions live in now, not on the first call (a first
        # import costs milliseconds of real time, i.e. seconds of virtual time at speed).
        import ivr.sim.actions
        import ivr.sim.agi_client
        import ivr.sim.apps
        import ivr.sim.queues  # noqa: F401

        self.clock.start()
        self.queues.load()
        log.info("sim.started", epoch=self.now(), speed=self.clock.speed, seed=self.seed)

    async def stop(self) -> None:
        """Cancel every call in progress and close the queue_log."""
        if self.stopped:
            return
        self.stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.clock.stop()
        self.queues.close()
        log.info("sim.stopped", events=self.events_emitted)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def queue_log_lines(self) -> list[str]:
        return self.queues.log_lines

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run a coroutine as part of the engine; it is cancelled by :meth:`stop`."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("sim.task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)

    async def sleep(self, seconds: float) -> None:
        await self.clock.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[..., Any], *args: Any) -> None:
        self.clock.call_later(seconds, callback, *args)

    async def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass (at the configured speed)."""
        await self.clock.sleep(seconds)

    async def idle(self, real_seconds: float | None = None) -> None:
        """Wait until no call is in progress (every channel gone, no engine task running).

        ``real_seconds`` bounds the wait in wall-clock time (TimeoutError).
        """
        loop = asyncio.get_running_loop()
        deadline = None if real_seconds is None else loop.time() + real_seconds
        while self.channels or any(not t.done() for t in self._tasks):
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError(f"simulator still busy: {len(self.channels)} channels")
            await asyncio.sleep(0.005)

    # -- events ---------------------------------------------------------------------------
    def _timestamp(self) -> tuple[str, str]:
        """``("Timestamp", "<epoch>.<microseconds>")`` for the current virtual instant."""
        now = self.clock.now()
        if now != self._ts_at:
            self._ts_at = now
            self._ts_pair = ("Timestamp", f"{now:.6f}")
        return self._ts_pair

    def _route(self, name: str, privilege: str) -> _Route:
        """Who takes the events ``name`` of class ``privilege`` (asked once, then cached)."""
        by_privilege = self._routes.get(name)
        if by_privilege is None:
            by_privilege = self._routes[name] = {}
        entries: list[tuple[EventListener, HeaderTest | None]] = []
        for listener, interest in self._listeners:
            want: bool | HeaderTest = True if interest is None else interest(name, privilege)
            if want is True:
                entries.append((listener, None))
            elif want is not False:
                assert isinstance(want, HeaderTest)
                entries.append((listener, want))
        route = by_privilege[privilege] = _Route(entries)
        return route

    def emit(self, name: str, privilege: str, headers: Headers) -> None:
        """Send an event to every listener: ``Privilege``, ``Timestamp`` then ``headers``."""
        listeners = self._takers(name, privilege, headers, chan=False)
        if listeners:
            self._dispatch(listeners, name, [_privilege(privilege), self._timestamp(), *headers])

    def _takers(
        self, name: str, privilege: str, headers: Sequence[tuple[str, str]], *, chan: bool
    ) -> tuple[EventListener, ...]:
        """Count the event, then the listeners that take it, judged before it is built.

        ``headers`` are what is known before building (the channel's snapshot aside, for
        ``chan``): an event no listener takes costs no more than this.
        """
        self.clock.activity += 1
        self.events_emitted += 1
        self.event_counts[name] += 1
        try:
            route = self._routes[name][privilege]
        except KeyError:
            route = self._route(name, privilege)
        listeners = route.listeners
        if listeners is None:
            listeners = route.select(headers, route.chan_safe if chan else route.plain_safe)
        return listeners

    def _dispatch(self, listeners: tuple[EventListener, ...], name: str, full: Headers) -> None:
        for listener in listeners:
            try:
                listener(name, full)
            except Exception:
                log.exception("sim.listener_failed", event=name)

    def emit_chan(
        self, name: str, chan: Channel, extra: Sequence[tuple[str, str]] = (), privilege: str = CALL
    ) -> None:
        """An event about one channel: its snapshot headers, then ``extra``."""
        listeners = self._takers(name, privilege, extra, chan=True)
        if listeners:
            self._dispatch(
                listeners, name, [_privilege(privilege), self._timestamp(), *chan.snapshot(), *extra]
            )

    def wanted(self, name: str, privilege: str) -> bool:
        """Whether some listener may take the events ``name`` of class ``privilege``: an
        event nobody takes need not have its headers built (it is still :meth:`emit`-ted,
        with none, to be counted)."""
        try:
            route = self._routes[name][privilege]
        except KeyError:
            route = self._route(name, privilege)
        return route.entries != ()

    def emit_two(
        self, name: str, chan: Channel | None, dest: Channel, extra: Headers, privilege: str
    ) -> None:
        """An event about two channels: ``Channel``'s snapshot (if any), then ``Dest*``."""
        if not self.wanted(name, privilege):
            self.emit(name, privilege, [])
            return
        headers: Headers = [] if chan is None else list(chan.snapshot())
        headers += dest.dest_snapshot()
        headers += extra
        self.emit(name, privilege, headers)

    def user_event(self, name: str, headers: Headers) -> None:
        self.emit("UserEvent", "user,all", [("UserEvent", name), *headers])

    # -- ids and channels -----------------------------------------------------------------
    def new_uniqueid(self) -> str:
        uid = f"{int(self.clock.now())}.{self._uid}"
        self._uid += 1
        return uid

    def find_channel(self, name: str) -> Channel | None:
        chan = self.channels.get(name)
        if chan is None:
            chan = self.by_uniqueid.get(name)
        return chan

    def new_local_pair(
        self, exten: str, context: str, linkedid: str | None = None
    ) -> tuple[Channel, Channel]:
        """Create ``Local/exten@context-XXXXXXXX;1`` and ``;2`` and emit their Newchannel."""
        base = f"Local/{exten}@{context}-{self._local:08x}"
        self._local += 1
        device = f"Local/{exten}@{context}"
        uid1 = self.new_uniqueid()
        uid2 = self.new_uniqueid()
        link = linkedid or uid1
        c1 = Channel(
            self, base + ";1", uid1, link, state=DOWN, context=context, exten=exten, device=device, half=1
        )
        c2 = Channel(
            self, base + ";2", uid2, link, state=RING, context=context, exten=exten, device=device, half=2
        )
        c1.peer = c2
        c2.peer = c1
        for c in (c1, c2):
            self.channels[c.name] = c
            self.by_uniqueid[c.uniqueid] = c
        before = self._device_inuse.get(device, 0)
        self._device_inuse[device] = before + 2
        if not before:
            self.queues.device_in_use(device)
        self.emit_chan("Newchannel", c1)
        self.emit_chan("Newchannel", c2)
        self.device_changed(device)
        return c1, c2

    def local_bridge_event(self, c1: Channel, c2: Channel) -> None:
        if self.wanted("LocalBridge", CALL):
            self.emit(
                "LocalBridge",
                CALL,
                [
                    *c1.prefixed_snapshot("LocalOne"),
                    *c2.prefixed_snapshot("LocalTwo"),
                    ("Context", c2.context),
                    ("Exten", c2.exten),
                    ("LocalOptimization", "Yes"),
                ],
            )
        else:
            self.emit("LocalBridge", CALL, [])

    def set_callerid(self, chan: Channel, num: str, name: str, *, connected: bool = True) -> None:
        """NewCallerid (then NewConnectedLine when ``connected``).

        On the ``;2`` half of a Local pair the connected line is already copied when
        NewCallerid is published (the recordings), on ``;1`` it follows.
        """
        chan.cid_num = num
        chan.cid_name = name
        if connected and chan.half == 2:
            chan.con_num, chan.con_name = num, name
        chan.touch()
        self.emit_chan("NewCallerid", chan, [("CID-CallingPres", "0 (Presentation Allowed, Not Screened)")])
        if connected:
            self.set_connected(chan, num, name)

    def set_connected(self, chan: Channel, num: str, name: str) -> None:
        chan.con_num = num
        chan.con_name = name
        chan.touch()
        self.emit_chan("NewConnectedLine", chan)

    def set_var(self, chan: Channel | None, name: str, value: str) -> None:
        """``pbx_builtin_setvar_helper``: set and emit VarSet (``GLOBAL(X)`` sets a global).

        Any other name ending in ``)`` is a dialplan function: written without a VarSet, as
        ``ast_func_write`` does (``CHANNEL(language)`` set by an Originate variable or an
        AGI ``SET VARIABLE``, as ``Set()`` does in the dialplan).
        """
        if name.startswith("GLOBAL(") and name.endswith(")"):
            chan = None
            name = name[7:-1]
        elif chan is not None and name.endswith(")") and "(" in name and not name.startswith("CALLERID("):
            from ivr.sim.apps import _write_function

            _write_function(self, chan, name, value)
            return
        if chan is None:
            self.globals[name] = value
            self.emit(
                "VarSet",
                DIALPLAN,
                [("Channel", "none"), ("Uniqueid", "none"), ("Variable", name), ("Value", value)],
            )
            return
        if name.startswith("CALLERID(") and name.endswith(")"):
            what = name[9:-1].lower()
            if what in ("num", "number"):
                self.set_callerid(chan, value, chan.cid_name, connected=False)
            elif what == "name":
                self.set_callerid(chan, chan.cid_num, value, connected=False)
            return
        chan.vars[name] = value
        self.emit_chan("VarSet", chan, [("Variable", name), ("Value", value)], DIALPLAN)

    def set_state(self, chan: Channel, state: int) -> None:
        if chan.state == state:
            return
        chan.state = state
        chan.touch()
        self.emit_chan("Newstate", chan)

    def newexten(self, chan: Channel, app: str, appdata: str) -> None:
        chan.app = app
        chan.appdata = appdata
        self.emit_chan(
            "Newexten",
            chan,
            [("Extension", chan.exten), ("Application", app), ("AppData", appdata)],
            DIALPLAN,
        )

    # -- device states ----------------------------------------------------------------------
    def device_changed(self, device: str) -> None:
        """Re-evaluate a device's state once the current instant has settled.

        Asterisk processes device state changes on a task processor, so QueueMemberStatus
        trails the channel events that caused it (and, after a call, the AgentComplete).
        """
        if device not in self._device_check:
            self._device_check.add(device)
            self.clock.call_later(0.0, self._check_device, device)

    def device_state(self, device: str) -> str:
        if device.startswith("Queue:"):
            return self._device_reported.get(device, "NOT_INUSE")
        if device.lower().startswith("local/"):
            return "INUSE" if self._device_inuse.get(device, 0) > 0 else "NOT_INUSE"
        return "UNKNOWN"

    def _check_device(self, device: str) -> None:
        self._device_check.discard(device)
        state = self.device_state(device)
        if self._device_reported.get(device, "NOT_INUSE") == state and device in self._device_reported:
            return
        self._device_reported[device] = state
        self.emit("DeviceStateChange", CALL, [("Device", device), ("State", state)])
        self.queues.device_state_changed(device, state)

    def queue_device(self, name: str, state: str) -> None:
        device = f"Queue:{name}"
        if self._device_reported.get(device) != state:
            self._device_reported[device] = state
            self.emit("DeviceStateChange", CALL, [("Device", device), ("State", state)])

    # -- call control -----------------------------------------------------------------------
    def answer(self, chan: Channel) -> bool:
        """Answer ``chan`` (and, for a Local ``;2``, its ``;1``); tell whoever dialled it."""
        if chan.state == UP:
            return False
        self.set_state(chan, UP)
        chan.answered_at = self.now()
        peer = chan.peer
        if chan.half == 2 and peer is not None and not peer.gone and peer.state != UP:
            self.set_state(peer, UP)
            peer.answered_at = self.now()
            if peer.observer is not None:
                peer.observer.on_dial_event(peer, "answer")
        return True

    def indicate(self, chan: Channel, kind: str) -> None:
        """``ringing`` / ``busy`` / ``congestion`` from a ``;2`` towards its ``;1``'s dialler."""
        peer = chan.peer
        if kind == "ringing":
            if chan.half == 2 and peer is not None and not peer.gone:
                self.set_state(peer, RINGING)
                if peer.observer is not None:
                    peer.observer.on_dial_event(peer, "ringing")
            return
        self.set_state(chan, BUSY)
        chan.cause = 17 if kind == "busy" else 34
        if chan.half == 2 and peer is not None and not peer.gone and peer.observer is not None:
            peer.observer.on_dial_event(peer, kind)

    def request_hangup(self, chan: Channel, cause: int) -> None:
        """``ast_queue_hangup_with_cause``: ask ``chan`` to hang up (HangupRequest event)."""
        if chan.gone or chan.hangup_requested:
            return
        chan.hangup_requested = True
        if chan.cause is None:
            chan.cause = cause
        self.emit_chan("HangupRequest", chan, [("Cause", str(cause))])
        self._hangup_requested(chan)

    def _hangup_requested(self, chan: Channel) -> None:
        chan.wake_hangup()
        if chan.observer is not None:
            chan.observer.on_dial_event(chan, "hangup")
        elif chan.bridge is not None:
            chan.bridge.on_hangup(chan)
        elif not chan.pbx_running:
            # Nobody runs this channel: it goes at once (a Local half left alone).
            self.hangup(chan)

    def soft_hangup(self, chan: Channel) -> None:
        """``ast_softhangup``: AGI HANGUP and the like; SoftHangupRequest now, Hangup when
        the channel's application returns."""
        if chan.gone or chan.hangup_requested:
            return
        self.emit_chan("SoftHangupRequest", chan, [("Cause", "16")])
        chan.hangup_requested = True
        chan.explicit_hangup = True
        self._hangup_requested(chan)

    def ami_hangup(self, chan: Channel, cause: int) -> None:
        """The Hangup action: a soft hangup with a cause, no event for the channel itself."""
        if chan.gone or chan.hangup_requested:
            return
        chan.hangup_requested = True
        chan.explicit_hangup = True
        chan.cause = cause
        self._hangup_requested(chan)

    def hangup(self, chan: Channel, *, soft: bool = False) -> None:
        """``ast_hangup``: the channel goes; a Local partner gets a HangupRequest first."""
        if chan.gone:
            return
        if soft:
            self.emit_chan("SoftHangupRequest", chan, [("Cause", "16")])
        chan.gone = True
        chan.hangup_requested = True
        cause = chan.cause if chan.cause is not None else 16
        chan.cause = cause
        peer = chan.peer
        if peer is not None and not peer.gone and not peer.hangup_requested:
            self.request_hangup(peer, cause)
        self.emit_chan(
            "Hangup", chan, [("Cause", str(cause)), ("Cause-txt", CAUSE_TEXT.get(cause, "Unknown"))]
        )
        self.channels.pop(chan.name, None)
        self.by_uniqueid.pop(chan.uniqueid, None)
        chan.wake_hangup()
        device = chan.device
        count = self._device_inuse.get(device, 0) - 1
        if count <= 0:
            self._device_inuse.pop(device, None)
        else:
            self._device_inuse[device] = count
        self.device_changed(device)
        if peer is not None and peer.gone:
            _unpair(chan, peer)

    # -- dialplan -----------------------------------------------------------------------------
    def lookup(self, chan: Channel) -> Callable[[str], str | None]:
        return chan.builtin

    def start_pbx(self, chan: Channel, context: str, exten: str, priority: int = 1) -> asyncio.Task[Any]:
        chan.pbx_running = True
        return self.spawn(self.run_pbx(chan, context, exten, priority), name=f"pbx {chan.name}")

    async def run_pbx(self, chan: Channel, context: str, exten: str, priority: int = 1) -> None:
        """``__ast_pbx_run``: execute priorities until the channel hangs up or falls off.

        An empty extension starts at ``s``; an extension that does not exist goes to
        ``i`` (``INVALID_EXTEN`` set), else to ``e`` (``EXCEPTION(REASON)=INVALID``), else
        the channel hangs up; running past an existing extension's last priority hangs up
        (autofallthrough) -- ``main/pbx.c``.
        """
        from ivr.sim.apps import JUMP, STOP, run_app

        chan.pbx_running = True
        if not exten:
            exten, priority = "s", 1
        if chan.context != context or chan.exten != exten or chan.priority != priority:
            chan.context, chan.exten, chan.priority = context, exten, priority
            chan.touch()
        structlog.contextvars.bind_contextvars(uniqueid=chan.uniqueid)
        try:
            while not chan.hangup_requested and not chan.gone:
                steps = self.dialplan.steps(chan.context, chan.exten)
                if not 1 <= chan.priority <= len(steps):
                    if steps or not self._invalid_extension(chan):
                        break
                    continue
                step = steps[chan.priority - 1]
                appdata = substitute(step.args, chan.builtin)
                if step.app.lower() not in SELF_ANNOUNCING:
                    self.newexten(chan, step.app, appdata)
                result = await run_app(self, chan, step.app, appdata)
                if result is STOP:
                    break
                if result is not JUMP:
                    chan.priority += 1
                    chan.touch()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sim.app_failed", channel=chan.name, app=chan.app)
        finally:
            chan.pbx_running = False
            structlog.contextvars.unbind_contextvars("uniqueid")
        if not chan.gone:
            self.hangup(chan, soft=not chan.explicit_hangup)

    def _invalid_extension(self, chan: Channel) -> bool:
        """``__ast_pbx_run`` on an extension that does not exist: on to ``i`` or ``e``.

        False when the context has neither (Asterisk logs "sent to invalid extension but no
        invalid handler" and hangs up). ``ast_exists_extension`` matches patterns too.
        """
        context, exten = chan.context, chan.exten
        if exten != "i" and self.dialplan.exists(context, "i"):
            log.info("sim.invalid_extension", channel=chan.name, context=context, exten=exten)
            self.set_var(chan, "INVALID_EXTEN", exten)
            target = "i"
        elif exten != "e" and self.dialplan.exists(context, "e"):
            # raise_exception(chan, "INVALID", 1): a datastore read by ${EXCEPTION(...)}
            log.info("sim.invalid_extension", channel=chan.name, context=context, exten=exten)
            chan.vars["EXCEPTION(REASON)"] = "INVALID"
            chan.vars["EXCEPTION(CONTEXT)"] = context
            chan.vars["EXCEPTION(EXTEN)"] = exten
            chan.vars["EXCEPTION(PRIORITY)"] = str(chan.priority)
            target = "e"
        else:
            log.warning("sim.invalid_extension_no_handler", channel=chan.name, context=context, exten=exten)
            return False
        chan.exten, chan.priority = target, 1
        chan.touch()
        return True

    # -- Originate ---------------------------------------------------------------------------
    def originate(self, req: OriginateRequest) -> None:
        """Queue an asynchronous Originate; its outcome is an OriginateResponse event."""
        self.calls_originated += 1
        self.spawn(self._originate(req), name=f"originate {req.channel}")

    async def _originate(self, req: OriginateRequest) -> None:
        tech, _, rest = req.channel.partition("/")
        target = rest.split("/", 1)[0]
        exten, _, context = target.partition("@")
        context = context or "default"
        if tech.lower() != "local" or not exten:
            self._originate_response(req, None, 0)
            return
        c1, c2 = self.new_local_pair(exten, context)
        if not self.dialplan.exists(context, exten):
            for name, value in reversed(req.variables):
                self.set_var(c1, name, value)
            for name, value in req.variables:
                self.set_var(c2, name, value)
            c1.cause = c2.cause = 0
            for chan in (c2, c1):
                chan.gone = True  # no HangupRequest to the partner: both go together
            for chan in (c2, c1):
                self.emit_chan("Hangup", chan, [("Cause", "0"), ("Cause-txt", "Unknown")])
                self.channels.pop(chan.name, None)
                self.by_uniqueid.pop(chan.uniqueid, None)
            self._device_inuse.pop(c1.device, None)
            self.device_changed(c1.device)
            _unpair(c1, c2)
            self._originate_response(req, None, 0)
            return
        self.newexten(c1, "AppDial2", "(Outgoing Line)")
        for name, value in reversed(req.variables):
            self.set_var(c1, name, value)
        if req.cid_num or req.cid_name:
            self.set_callerid(c1, req.cid_num, req.cid_name)
        for name, value in req.variables:
            self.set_var(c2, name, value)
        if req.cid_num or req.cid_name:
            self.set_callerid(c2, req.cid_num, req.cid_name)
        self.local_bridge_event(c1, c2)
        self.emit_two("DialBegin", None, c1, [("DialString", target)], CALL)
        box = Mailbox(self)
        c1.observer = box
        self.start_pbx(c2, context, exten)
        deadline = self.now() + max(0, req.timeout_ms) / 1000.0
        while True:
            item = await box.get(max(0.0, deadline - self.now()))
            if item is TIMEOUT:
                c1.observer = None
                c1.cause = 19
                self.request_hangup(c2, 19)
                self._originate_response(req, None, 3)
                self.hangup(c1)
                return
            assert isinstance(item, tuple)
            kind = item[0]
            if kind == "ringing":
                self.emit_two("DialState", None, c1, [("DialStatus", "RINGING")], CALL)
                continue
            if kind == "answer":
                c1.observer = None
                self.emit_two("DialEnd", None, c1, [("DialStatus", "ANSWER")], CALL)
                self._originate_response(req, c1, 4)
                break
            c1.observer = None
            if kind in ("busy", "congestion"):
                self.emit_two("DialEnd", None, c1, [("DialStatus", kind.upper())], CALL)
                c1.cause = 0
                self.hangup(c1)
                self._originate_response(req, None, 5 if kind == "busy" else 8)
                return
            # the far side went away before answering
            self.hangup(c1)
            self._originate_response(req, None, 1)
            return
        if req.application:
            await self._run_originate_app(c1, req.application, req.data)
        else:
            prio = self.dialplan.priority_of(req.context, req.exten, req.priority or "1") or 1
            await self.run_pbx(c1, req.context, req.exten, prio)

    async def _run_originate_app(self, chan: Channel, app: str, data: str) -> None:
        from ivr.sim.apps import run_app

        chan.pbx_running = True
        try:
            self.newexten(chan, app, data)
            await run_app(self, chan, app, data)
        finally:
            chan.pbx_running = False
        if not chan.gone:
            self.hangup(chan, soft=not chan.explicit_hangup)

    async def originate_sync(self, req: OriginateRequest) -> bool:
        """A non-Async Originate: wait until the channel answers or fails."""
        req.result = asyncio.get_running_loop().create_future()
        self.originate(req)
        return await req.result

    def _originate_response(self, req: OriginateRequest, chan: Channel | None, reason: int) -> None:
        if req.result is not None:
            if not req.result.done():
                req.result.set_result(chan is not None)
            return
        headers: Headers = []
        if req.action_id is not None:
            headers.append(("ActionID", req.action_id))
        headers += [
            ("Response", "Success" if chan is not None else "Failure"),
            ("Channel", chan.name if chan is not None else req.channel),
        ]
        if req.application:
            headers += [("Application", req.application), ("Data", req.data)]
        else:
            headers += [("Context", req.context), ("Exten", req.exten)]
        headers += [
            ("Reason", str(reason)),
            ("Uniqueid", chan.uniqueid if chan is not None else "<unknown>"),
            ("CallerIDNum", req.cid_num or "<unknown>"),
            ("CallerIDName", req.cid_name or "<unknown>"),
        ]
        self.emit("OriginateResponse", CALL, headers)

    # -- DTMF ---------------------------------------------------------------------------------
    async def send_dtmf(self, chan: Channel, digits: str, duration_ms: int = 250) -> None:
        """SendDTMF on ``chan``: each digit reaches the partner (DTMFBegin/End, Received)."""
        gap = self.config.dtmf_gap
        for digit in digits:
            if not chan.alive:
                return
            if await chan.wait(0.1) is HANGUP:
                return
            target = chan.peer
            if target is not None and not target.gone:
                self.emit_chan("DTMFBegin", target, [("Digit", digit), ("Direction", "Received")], "dtmf,all")
            if await chan.wait(0.1) is HANGUP:
                return
            if target is not None and not target.gone:
                self.emit_chan(
                    "DTMFEnd",
                    target,
                    [("Digit", digit), ("DurationMs", "100"), ("Direction", "Received")],
                    "dtmf,all",
                )
                self.route_dtmf(target, digit)
            if await chan.wait(max(0.0, gap - 0.2)) is HANGUP:
                return

    def route_dtmf(self, chan: Channel, digit: str) -> None:
        """A digit received on ``chan``: to its app, or across its bridge."""
        if chan.deliver_dtmf(digit):
            return
        bridge = chan.bridge
        if bridge is not None:
            for other in bridge.channels:
                if other is not chan and other.peer is not None and not other.peer.gone:
                    other.peer.deliver_dtmf(digit)

    # -- bridges ------------------------------------------------------------------------------
    def new_bridge_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


def _unpair(c1: Channel, c2: Channel) -> None:
    """Forget the partners of a Local pair once both halves are gone.

    Each half refers to the other; left so, a finished call's channels (and their
    variables and snapshots) would wait for the garbage collector instead of going at once.
    A gone partner and no partner mean the same to every user of ``peer``.
    """
    c1.peer = None
    c2.peer = None


#: The headers the engine puts before a channel event's own (``emit_chan``'s ``extra``).
_CHAN_BUILT: Final = frozenset(
    {
        "Privilege",
        "Timestamp",
        "Channel",
        "ChannelState",
        "ChannelStateDesc",
        "CallerIDNum",
        "CallerIDName",
        "ConnectedLineNum",
        "ConnectedLineName",
        "Language",
        "AccountCode",
        "Context",
        "Exten",
        "Priority",
        "Uniqueid",
        "Linkedid",
    }
)
_PLAIN_BUILT: Final = frozenset({"Privilege", "Timestamp"})


class _Route:
    """The listeners of the events of one name and class.

    ``listeners`` is the answer when no listener's interest depends on the headers;
    otherwise :meth:`select` asks each :class:`HeaderTest` about the event's own headers
    -- only when the headers the engine adds cannot hold what it reads (``chan_safe``,
    ``plain_safe``), else that listener gets the event and decides itself.
    """

    __slots__ = ("chan_safe", "entries", "everyone", "listeners", "lone", "plain_safe")

    def __init__(self, entries: list[tuple[EventListener, HeaderTest | None]]) -> None:
        self.entries = tuple(entries)
        self.everyone = tuple(listener for listener, _t in entries)
        tests = [t for _listener, t in entries if t is not None]
        self.listeners: tuple[EventListener, ...] | None = None if tests else self.everyone
        # the common case of a test: one listener (the AMI server), one test
        self.lone = tests[0].test if len(entries) == 1 and tests else None
        self.chan_safe = all(t.keys.isdisjoint(_CHAN_BUILT) for t in tests)
        self.plain_safe = all(t.keys.isdisjoint(_PLAIN_BUILT) for t in tests)

    def select(self, own: Sequence[tuple[str, str]], safe: bool) -> tuple[EventListener, ...]:
        """The listeners an event with these headers (its own, or all but the ones the
        engine adds) goes to."""
        if not safe:
            return self.everyone
        headers = own if isinstance(own, list) else list(own)
        lone = self.lone
        if lone is not None:
            return self.everyone if lone(headers) else ()
        return tuple(listener for listener, t in self.entries if t is None or t.test(headers))


_PRIVILEGES: dict[str, tuple[str, str]] = {}


def _privilege(privilege: str) -> tuple[str, str]:
    """The ``Privilege`` header pair (one tuple per value, not one per event)."""
    try:
        return _PRIVILEGES[privilege]
    except KeyError:
        return _PRIVILEGES.setdefault(privilege, ("Privilege", privilege))


def parse_variables(values: Iterable[str]) -> list[tuple[str, str]]:
    """Originate ``Variable:`` headers: each ``A=1,B=2`` (commas split as Asterisk does)."""
    out: list[tuple[str, str]] = []
    for value in values:
        for part in split_args(value):
            name, sep, val = part.partition("=")
            name = name.strip()
            if sep and name:
                out.append((name, val))
    return out
