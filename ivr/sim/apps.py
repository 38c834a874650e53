"""Dialplan applications of the simulated PBX.

Each app is ``async def app(sim, chan, data) -> None | JUMP | STOP``: ``None`` goes on to
the next priority, ``JUMP`` means the app moved the channel (Goto), ``STOP`` ends the pbx
(the channel hung up, or Hangup() ran). The set is what the recording rig's dialplan and
Décroché's shipped dialplan (``dialplans/``) use: Answer, AGI, Queue, Set (variables and
the functions CALLERID, CHANNEL, TIMEOUT, GLOBAL), Wait, Hangup, NoOp, Goto, GotoIf,
ExecIf, Gosub, Return, Ringing, Busy, Congestion, SendDTMF (with ``w``/``W`` pauses),
Playback, Dial (Local channels, other technologies through ``[endpoints]``) -- plus two
simulator apps that model the people at the ends of a call:

* ``AgentPlan()`` -- an agent's phone: each ring of agent ``EXTEN`` takes the next step of
  the global ``PLAN<EXTEN>`` (``"d:t/d:t/N"``: ring ``d`` s then talk ``t`` s, or ``N``
  never answer; the rig's ``[agents]`` context), else ``DEF<EXTEN>``, else a random draw
  from the config's ``[agents.EXTEN]`` model.
* ``Patience(seconds)`` -- a caller's phone that hangs up after ``seconds`` unless its call
  is by then bridged to someone (then it stays until the far end hangs up); the rig's
  ``[caller] patient`` extension. ``Patience(seconds,keys)``: the patience ends as soon as
  the call is bridged, and once that bridge is over the caller presses ``keys`` (the
  post-call survey) and stays until the far end hangs up.

What ``pbx.c`` does around the apps and the simulator needs for the shipped dialplan:
the ``h`` extension runs when the dialplan of a channel ends (hangup, ``Hangup()``, an app
that fails), with the channel already hung up (:func:`run_h_exten`); a ``Goto`` to an
extension that does not exist goes to the context's ``i`` extension with INVALID_EXTEN
set. An app the simulator cannot model (``Echo``, ``Dial`` of a technology without an
``[endpoints]`` mapping, any unknown app) raises :class:`SimUnsupportedError` when a call
reaches it -- never when the dialplan is loaded --; it is logged (``sim.unsupported``) and
that call is hung up.
"""

from __future__ import annotations

import heapq
import re
import weakref
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Final

import structlog

from ivr.protocol.agi import mset_pairs
from ivr.sim.channel import HANGUP, TIMEOUT, UP, Channel
from ivr.sim.dialplan import split_args, substitute

if TYPE_CHECKING:
    from ivr.sim.engine import Simulator

__all__ = ["APPS", "JUMP", "STOP", "Bridge", "SimUnsupportedError", "run_app", "run_h_exten"]

log = structlog.get_logger(__name__)


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


JUMP: Final = _Marker("JUMP")
STOP: Final = _Marker("STOP")


class SimUnsupportedError(RuntimeError):
    """A call reached something the simulator does not model; the message says what and where."""


def _where(chan: Channel) -> str:
    return f"{chan.context},{chan.exten},{chan.priority} on {chan.name}"


AppResult = _Marker | None
App = Callable[["Simulator", Channel, str], Awaitable[AppResult]]


def _seconds(value: str, default: float = 0.0) -> float:
    try:
        return max(0.0, float(value)) if value.strip() else default
    except ValueError:
        return default


async def _pause(chan: Channel, seconds: float) -> AppResult:
    return STOP if await chan.wait(seconds) is HANGUP else None


# -- basic apps --------------------------------------------------------------------------------


async def app_answer(sim: Simulator, chan: Channel, data: str) -> AppResult:
    if sim.answer(chan):
        # ast_answer on a Local channel waits up to 500 ms for media (the recordings).
        return await _pause(chan, sim.config.answer_media_wait)
    return None


async def app_hangup(sim: Simulator, chan: Channel, data: str) -> AppResult:
    if data.strip().isdigit() and chan.cause is None:
        chan.cause = int(data)
    if chan.pbx_running and chan.exten != "h" and _has_h(sim, chan.context):
        # pbx_builtin_hangup only requests the hangup; the 'h' extension runs before the
        # channel goes (run_app), so its Hangup event comes last.
        sim.soft_hangup(chan)
        return STOP
    sim.hangup(chan, soft=not chan.hangup_requested)
    return STOP


async def app_wait(sim: Simulator, chan: Channel, data: str) -> AppResult:
    return await _pause(chan, _seconds(data))


async def app_noop(sim: Simulator, chan: Channel, data: str) -> AppResult:
    return None


async def app_set(sim: Simulator, chan: Channel, data: str) -> AppResult:
    name, sep, value = data.partition("=")
    name = name.strip()
    if not sep or not name:
        return None
    if name.endswith(")") and "(" in name and not name.startswith(("GLOBAL(", "CALLERID(")):
        _write_function(sim, chan, name, value)
    else:
        sim.set_var(chan, name, value)
    return None


async def app_mset(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """``MSet(a=1,b=2)`` (``pbx_builtin_setvar_multiple``, main/pbx_variables.c): each pair set
    in order, each with its VarSet as ``Set`` gives; the IVR ends a call with it (``EXEC``)."""
    for name, value in mset_pairs(data):
        sim.set_var(chan, name, value)
    return None


#: Channel variable holding the absolute timeout's deadline (a function value, no VarSet).
_TIMEOUT_ABS: Final = "TIMEOUT(absolute)"


def _write_function(sim: Simulator, chan: Channel, name: str, value: str) -> None:
    """A dialplan function on the left of Set(): written without a VarSet, as ast_func_write.

    ``TIMEOUT(absolute)`` arms the channel's absolute timeout (func_timeout.c: 0 disarms);
    ``CHANNEL(x)`` and other functions are kept so that ``${CHANNEL(x)}`` reads them back.
    """
    handled, db_result = sim.astdb.write_function(name, value)
    if handled:
        if db_result is not None:
            sim.set_var(chan, "DB_RESULT", db_result)
        return
    if name == _TIMEOUT_ABS:
        try:
            seconds = float(value) if value.strip() else 0.0
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            chan.vars.pop(name, None)
            return
        due = sim.now() + seconds
        deadline = f"{due:.6f}"
        chan.vars[name] = deadline
        sweeper = _SWEEPERS.get(sim)
        if sweeper is None:
            sweeper = _SWEEPERS[sim] = _TimeoutSweeper(sim)
        sweeper.add(due, chan.uniqueid, deadline)
        return
    chan.vars[name] = value


class _TimeoutSweeper:
    """Absolute timeouts of one simulator behind a single engine timer.

    Almost every call arms a 2-hour timeout and ends long before it; one engine timer per
    call would fill the scheduler's heap with dead entries. Here they wait in a heap of
    plain tuples and only the earliest is scheduled.
    """

    def __init__(self, sim: Simulator) -> None:
        self.sim = weakref.ref(sim)  # a strong one would keep the WeakKeyDictionary key alive
        self.heap: list[tuple[float, str, str]] = []
        self.armed: float | None = None

    def add(self, due: float, uniqueid: str, deadline: str) -> None:
        heapq.heappush(self.heap, (due, uniqueid, deadline))
        sim = self.sim()
        if sim is not None and (self.armed is None or due < self.armed):
            self.armed = due
            sim.call_later(due - sim.now(), self.fire, due)

    def fire(self, due: float) -> None:
        sim = self.sim()
        if sim is None or due != self.armed:
            return  # superseded by an earlier one
        now = sim.now()
        while self.heap and self.heap[0][0] <= now:
            _, uniqueid, deadline = heapq.heappop(self.heap)
            chan = sim.by_uniqueid.get(uniqueid)
            if chan is not None and not chan.gone and chan.vars.get(_TIMEOUT_ABS) == deadline:
                # ast_check_hangup: AST_SOFTHANGUP_TIMEOUT, the channel is hung up (cause 16)
                log.info("sim.absolute_timeout", channel=chan.name)
                sim.ami_hangup(chan, 16)
        self.armed = None
        if self.heap:
            self.armed = self.heap[0][0]
            sim.call_later(self.armed - now, self.fire, self.armed)


_SWEEPERS: weakref.WeakKeyDictionary[Simulator, _TimeoutSweeper] = weakref.WeakKeyDictionary()


def goto(sim: Simulator, chan: Channel, target: str) -> bool:
    """Move ``chan`` to ``[[context,]exten,]priority``; False if there is no such place."""
    parts = [p.strip() for p in split_args(target)]
    context, exten = chan.context, chan.exten
    if len(parts) == 3:
        context, exten, prio = parts
    elif len(parts) == 2:
        exten, prio = parts
    elif len(parts) == 1 and parts[0]:
        prio = parts[0]
    else:
        return False
    number = sim.dialplan.priority_of(context, exten, prio)
    if number is None:
        if not prio.isdigit() or sim.dialplan.find(context, exten) is not None:
            return False
        if sim.dialplan.find(context, "i") != "i":
            return False
        # __ast_pbx_run: a channel sent to an extension that does not exist goes to 'i'.
        sim.set_var(chan, "INVALID_EXTEN", exten)
        exten, number = "i", 1
    chan.context, chan.exten, chan.priority = context, exten, number
    chan.touch()
    return True


async def app_goto(sim: Simulator, chan: Channel, data: str) -> AppResult:
    if goto(sim, chan, data):
        return JUMP
    log.warning("sim.goto_failed", channel=chan.name, target=data)
    return STOP


def _truthy(cond: str) -> bool:
    cond = cond.strip()
    return bool(cond) and cond != "0"


async def app_gotoif(sim: Simulator, chan: Channel, data: str) -> AppResult:
    cond, _, labels = data.partition("?")
    if_true, _, if_false = labels.partition(":")
    target = if_true if _truthy(cond) else if_false
    if not target.strip():
        return None
    return await app_goto(sim, chan, target)


async def app_execif(sim: Simulator, chan: Channel, data: str) -> AppResult:
    cond, _, call = data.partition("?")
    if not _truthy(cond):
        return None
    name, _, rest = call.partition("(")
    return await run_app(sim, chan, name.strip(), rest[:-1] if rest.endswith(")") else rest)


#: Where Gosub keeps its return addresses on the channel (a name no dialplan can write).
_GOSUB_STACK: Final = "\x00gosub"


async def app_gosub(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """Gosub([[context,]exten,]priority[(arg1,...)]): call a subroutine (app_stack.c)."""
    target, args = data.strip(), ""
    paren = target.find("(")
    if paren >= 0 and target.endswith(")"):
        target, args = target[:paren], target[paren + 1 : -1]
    back = f"{chan.context}\x1f{chan.exten}\x1f{chan.priority + 1}"
    if not goto(sim, chan, target):
        log.warning("sim.gosub_failed", channel=chan.name, target=data)
        return STOP
    stack = chan.vars.get(_GOSUB_STACK)
    chan.vars[_GOSUB_STACK] = back if not stack else f"{stack}\x1e{back}"
    values = split_args(args) if args else []
    sim.set_var(chan, "ARGC", str(len(values)))
    for i, value in enumerate(values, 1):
        sim.set_var(chan, f"ARG{i}", value)
    return JUMP


async def app_return(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """Return([value]): back to the priority after the last Gosub; GOSUB_RETVAL = value."""
    stack = chan.vars.get(_GOSUB_STACK)
    if not stack:
        log.warning("sim.return_without_gosub", channel=chan.name)
        return STOP
    rest, _, top = stack.rpartition("\x1e")
    if rest:
        chan.vars[_GOSUB_STACK] = rest
    else:
        del chan.vars[_GOSUB_STACK]
    context, exten, prio = top.split("\x1f")
    sim.set_var(chan, "GOSUB_RETVAL", data)
    chan.context, chan.exten, chan.priority = context, exten, int(prio)
    chan.touch()
    return JUMP


async def app_unsupported(sim: Simulator, chan: Channel, data: str) -> AppResult:
    raise SimUnsupportedError(f"the simulator cannot run {chan.app or 'this app'}() at {_where(chan)}")


async def app_ringing(sim: Simulator, chan: Channel, data: str) -> AppResult:
    sim.indicate(chan, "ringing")
    return None


async def app_busy(sim: Simulator, chan: Channel, data: str) -> AppResult:
    sim.indicate(chan, "busy")
    await chan.wait(_seconds(data) or None)
    return STOP


async def app_congestion(sim: Simulator, chan: Channel, data: str) -> AppResult:
    sim.indicate(chan, "congestion")
    await chan.wait(_seconds(data) or None)
    return STOP


async def app_senddtmf(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """SendDTMF(digits[,duration]): ``w`` pauses 0.5 s and ``W`` 1 s (``ast_dtmf_stream``)."""
    args = split_args(data)
    duration = int(args[1]) if len(args) > 1 and args[1].strip().isdigit() else 250
    chunk = ""
    for c in args[0]:
        if c in "0123456789*#ABCDabcd":
            chunk += c
        elif c in "wW":
            if chunk:
                await sim.send_dtmf(chan, chunk, duration)
                chunk = ""
            if not chan.alive or await chan.wait(0.5 if c == "w" else 1.0) is HANGUP:
                return STOP
    if chunk:
        await sim.send_dtmf(chan, chunk, duration)
    return STOP if not chan.alive else None


async def app_playback(sim: Simulator, chan: Channel, data: str) -> AppResult:
    files = [f for f in split_args(data)[0].split("&") if f]
    if chan.state != 6:
        sim.answer(chan)
    for name in files:
        if await chan.wait(sim.config.prompt_seconds(name)) is HANGUP:
            sim.set_var(chan, "PLAYBACKSTATUS", "FAILED")
            return STOP
    sim.set_var(chan, "PLAYBACKSTATUS", "SUCCESS")
    return None


# -- the people at the ends of a call --------------------------------------------------------------


#: Seconds between the end of the agent's call and the caller's survey keys.
SURVEY_DELAY: Final = 2.5
#: What :class:`Bridge` posts to a ``Patience`` caller whose partner enters or leaves a bridge.
_BRIDGE_CHANGED: Final = ("bridge_changed",)


async def app_patience(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """Hang up after ``seconds`` unless the partner channel is bridged by then (see above)."""
    args = split_args(data)
    seconds = _seconds(args[0])
    keys = args[1].strip() if len(args) > 1 else None
    if keys is None:
        if await chan.wait(seconds) is HANGUP:
            return STOP
        peer = chan.peer
        if peer is not None and not peer.gone and peer.bridge is not None:
            await chan.wait(None)
            return STOP
        return None
    # Bridge.enter/leave post _BRIDGE_CHANGED to this channel (see _tell_patience).
    deadline = sim.now() + seconds
    while not _bridged(chan):
        left = deadline - sim.now()
        if left <= 0:
            return None
        if await chan.wait(left, custom=True) is HANGUP:
            return STOP
    while _bridged(chan):
        if await chan.wait(None, custom=True) is HANGUP:
            return STOP
    if keys:
        if await chan.wait(SURVEY_DELAY) is HANGUP:
            return STOP
        await app_senddtmf(sim, chan, keys)
    await chan.wait(None)
    return STOP


def _bridged(chan: Channel) -> bool:
    peer = chan.peer
    return peer is not None and not peer.gone and peer.bridge is not None


def _tell_patience(chan: Channel) -> None:
    """Wake the caller's phone (``Patience`` on the Local partner) when ``chan``'s bridge changes."""
    peer = chan.peer
    if peer is not None and not peer.gone and peer.app == "Patience" and "," in peer.appdata:
        peer.post(_BRIDGE_CHANGED)  # only the two-argument form listens


def _agent_step(sim: Simulator, chan: Channel) -> str:
    """The rig's ``[agents]`` logic: RINGS<ext>++, STEP = PLAN<ext>[RINGS] or DEF<ext>."""
    ext = chan.exten
    rings = int(sim.globals.get(f"RINGS{ext}", "0") or "0") + 1
    sim.newexten(chan, "Set", f"GLOBAL(RINGS{ext})={rings}")
    sim.set_var(None, f"RINGS{ext}", str(rings))
    plan = [p for p in sim.globals.get(f"PLAN{ext}", "").split("/")]
    step = plan[rings - 1] if 0 < rings <= len(plan) else ""
    if not step:
        step = sim.globals.get(f"DEF{ext}", "")
    if not step:
        model = sim.config.agents.get(ext)
        if model is None:
            from ivr.sim.config import AgentModel

            model = AgentModel()
        rng = sim.rng
        if rng.random() < model.no_answer:
            step = "N"
        else:
            step = f"{rng.uniform(*model.answer_delay):.1f}:{rng.uniform(*model.talk_time):.1f}"
    chan.priority += 1
    chan.touch()
    sim.newexten(chan, "Set", f"STEP={step}")
    sim.set_var(chan, "STEP", step)
    return step


def _next(sim: Simulator, chan: Channel, priority: int, app: str, data: str) -> None:
    chan.priority = priority
    chan.touch()
    sim.newexten(chan, app, data)


async def app_agentplan(sim: Simulator, chan: Channel, data: str) -> AppResult:
    step = _agent_step(sim, chan)
    if step.strip().upper() == "N":
        _next(sim, chan, 10, "Ringing", "")
        sim.indicate(chan, "ringing")
        _next(sim, chan, 11, "Wait", "600")
        await chan.wait(600)
        return STOP
    ring_s, _, talk_s = step.partition(":")
    _next(sim, chan, 5, "Ringing", "")
    sim.indicate(chan, "ringing")
    _next(sim, chan, 6, "Wait", ring_s)
    if await _pause(chan, _seconds(ring_s)) is STOP:
        return STOP
    _next(sim, chan, 7, "Answer", "")
    if await app_answer(sim, chan, "") is STOP:
        return STOP
    _next(sim, chan, 8, "Wait", talk_s)
    if await _pause(chan, _seconds(talk_s)) is STOP:
        return STOP
    _next(sim, chan, 9, "Hangup", "")
    return await app_hangup(sim, chan, "")


# -- bridging and Dial ----------------------------------------------------------------------------


class Bridge:
    """A two-party basic bridge (BridgeCreate/Enter/Leave/Destroy events).

    ``on_hangup`` is told when a channel inside gets a hangup request, so that the app
    owning the bridge (Queue, Dial) can tear it down in Asterisk's order.
    """

    def __init__(self, sim: Simulator, owner: Channel) -> None:
        self.sim = sim
        self.owner = owner
        self.uniqueid = sim.new_bridge_id()
        self.channels: list[Channel] = []
        sim.emit("BridgeCreate", "call,all", self._headers())

    def _headers(self) -> list[tuple[str, str]]:
        return [
            ("BridgeUniqueid", self.uniqueid),
            ("BridgeType", "basic"),
            ("BridgeTechnology", "simple_bridge"),
            ("BridgeCreator", "<unknown>"),
            ("BridgeName", "<unknown>"),
            ("BridgeNumChannels", str(len(self.channels))),
            ("BridgeVideoSourceMode", "none"),
        ]

    def enter(self, chan: Channel) -> None:
        if chan.state != UP and not chan.gone:
            # pre_bridge_setup (main/features.c): ast_bridge_call answers the channel first,
            # e.g. a callback's Local/<queue>@callback-queue;2 that an agent picked up.
            self.sim.answer(chan)
        self.channels.append(chan)
        chan.bridge = self
        self.sim.emit("BridgeEnter", "call,all", [*self._headers(), *chan.snapshot()])
        _tell_patience(chan)

    def leave(self, chan: Channel) -> None:
        if chan in self.channels:
            self.channels.remove(chan)
            chan.bridge = None
            self.sim.emit("BridgeLeave", "call,all", [*self._headers(), *chan.snapshot()])
            _tell_patience(chan)

    def destroy(self) -> None:
        for chan in list(self.channels):
            self.leave(chan)
        self.sim.emit("BridgeDestroy", "call,all", self._headers())

    def on_hangup(self, chan: Channel) -> None:
        if chan is not self.owner:
            self.owner.post(("bridge_hangup", chan))

    def set_peers(self) -> None:
        a, b = self.channels
        self.sim.set_var(a, "BRIDGEPEER", b.name)
        self.sim.set_var(b, "BRIDGEPEER", a.name)


class _Leg:
    __slots__ = ("c1", "c2", "done", "target")

    def __init__(self, target: str, c1: Channel, c2: Channel) -> None:
        self.target = target
        self.c1 = c1
        self.c2 = c2
        self.done = False


async def app_dial(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """Dial(Local/x@ctx[&...][,timeout]): ring, bridge the first to answer, then return."""
    from ivr.sim.engine import Forwarder

    args = split_args(data)
    timeout = _seconds(args[1]) if len(args) > 1 and args[1].strip() else None
    sim.set_var(chan, "DIALSTATUS", "")
    legs: list[_Leg] = []
    statuses: list[str] = []
    for target in args[0].split("&"):
        dialstring = target.strip().partition("/")[2]
        tech, _, rest = map_endpoint(sim, chan, target.strip()).partition("/")
        exten, _, context = rest.partition("@")
        if tech.lower() != "local" or not exten or not sim.dialplan.exists(context, exten):
            statuses.append("CHANUNAVAIL")
            continue
        c1, c2 = sim.new_local_pair(exten, context, linkedid=chan.linkedid)
        sim.set_callerid(c1, chan.cid_num, chan.cid_name, connected=False)
        c1.con_num, c1.con_name = chan.cid_num, chan.cid_name
        c1.touch()
        sim.set_callerid(c2, chan.cid_num, chan.cid_name)
        sim.local_bridge_event(c1, c2)
        leg = _Leg(dialstring, c1, c2)
        c1.observer = Forwarder(chan, leg)
        legs.append(leg)
        sim.emit_two("DialBegin", chan, c1, [("DialString", leg.target)], "call,all")
        sim.start_pbx(c2, context, exten)
    if not legs:
        sim.set_var(chan, "DIALSTATUS", "CHANUNAVAIL")
        return None
    deadline = None if timeout is None else sim.now() + timeout

    def cancel(status: str, cause: int = 0) -> None:
        for leg in legs:
            if not leg.done:
                leg.done = True
                leg.c1.observer = None
                sim.emit_two("DialEnd", chan, leg.c1, [("DialStatus", status)], "call,all")
                leg.c1.cause = cause
                sim.hangup(leg.c1)

    while True:
        remaining = None if deadline is None else max(0.0, deadline - sim.now())
        item = await chan.wait(remaining, custom=True)
        if item is HANGUP:
            cancel("CANCEL")
            sim.set_var(chan, "DIALSTATUS", "CANCEL")
            return STOP
        if item is TIMEOUT:
            cancel("NOANSWER")
            sim.set_var(chan, "DIALSTATUS", "NOANSWER")
            return None
        if not (isinstance(item, tuple) and item[0] == "dial"):
            continue
        _, kind, leg = item
        assert isinstance(leg, _Leg)
        if leg.done:
            continue
        if kind == "ringing":
            sim.emit_two("DialState", chan, leg.c1, [("DialStatus", "RINGING")], "call,all")
            continue
        if kind == "answer":
            leg.done = True
            leg.c1.observer = None
            sim.set_var(chan, "DIALSTATUS", "ANSWER")
            sim.emit_two("DialEnd", chan, leg.c1, [("DialStatus", "ANSWER")], "call,all")
            cancel("CANCEL", 26)
            if chan.state != 6:
                sim.answer(chan)
            return await _bridge_dialled(sim, chan, leg.c1)
        leg.done = True
        leg.c1.observer = None
        status = {"busy": "BUSY", "congestion": "CONGESTION"}.get(str(kind), "NOANSWER")
        sim.emit_two("DialEnd", chan, leg.c1, [("DialStatus", status)], "call,all")
        leg.c1.cause = 0
        sim.hangup(leg.c1)
        statuses.append(status)
        if all(lg.done for lg in legs):
            sim.set_var(chan, "DIALSTATUS", statuses[-1])
            return None


def map_endpoint(sim: Simulator, chan: Channel, target: str) -> str:
    """A Dial() target as the simulator can dial it: Local as is, others per ``[endpoints]``."""
    tech = target.partition("/")[0]
    if tech.lower() == "local":
        return target
    endpoints = sim.config.endpoints
    mapped = endpoints.get(target)
    if mapped is not None:
        return mapped
    for key in sorted(endpoints, key=len, reverse=True):
        m = _endpoint_re(key).fullmatch(target)
        if m is not None:
            return endpoints[key].replace("*", m[1]) if m.groups() else endpoints[key]
    raise SimUnsupportedError(
        f"Dial({target}) at {_where(chan)}: the simulator has no {tech} channels; map them to a "
        f"Local channel in [endpoints] of the simulator config, e.g. "
        f'"{tech}/*" = "Local/*@sim-phones"'
    )


@lru_cache(maxsize=256)
def _endpoint_re(key: str) -> re.Pattern[str]:
    head, star, tail = key.partition("*")
    return re.compile(re.escape(head) + ("(.+?)" if star else "") + re.escape(tail))


async def _bridge_dialled(sim: Simulator, chan: Channel, callee: Channel) -> AppResult:
    bridge = Bridge(sim, chan)
    bridge.enter(callee)
    bridge.enter(chan)
    bridge.set_peers()
    while True:
        item = await chan.wait(None, custom=True)
        if item is HANGUP:
            bridge.leave(chan)
            sim.set_var(chan, "DIALSTATUS", "ANSWER")
            sim.call_later(0.0, _finish_callee, sim, bridge, callee)
            return STOP
        if isinstance(item, tuple) and item[0] == "bridge_hangup" and item[1] is callee:
            bridge.leave(callee)
            sim.hangup(callee)
            bridge.destroy()
            sim.set_var(chan, "DIALSTATUS", "ANSWER")
            return None


def _finish_callee(sim: Simulator, bridge: Bridge, callee: Channel) -> None:
    bridge.leave(callee)
    callee.cause = callee.cause or 16
    sim.hangup(callee)
    bridge.destroy()


# -- dispatch ----------------------------------------------------------------------------------------


async def _app_agi(sim: Simulator, chan: Channel, data: str) -> AppResult:
    from ivr.sim.agi_client import app_agi

    return await app_agi(sim, chan, data)


async def _app_queue(sim: Simulator, chan: Channel, data: str) -> AppResult:
    from ivr.sim.queues import app_queue

    return await app_queue(sim, chan, data)


def _has_h(sim: Simulator, context: str) -> bool:
    extens = sim.dialplan.contexts.get(context)
    return extens is not None and "h" in extens


async def run_h_exten(sim: Simulator, chan: Channel) -> None:
    """``ast_pbx_h_exten_run``: the context's ``h`` extension on a channel that is ending.

    The channel is hung up first (``AST_SOFTHANGUP_APPUNLOAD`` in ``__ast_pbx_run``), so an
    AGI there runs dead (no media commands, no HANGUP line); the extension runs until an app
    returns non-zero or it ends.
    """
    if chan.alive:
        sim.soft_hangup(chan)
    chan.exten, chan.priority = "h", 1
    chan.touch()
    while not chan.gone:
        steps = sim.dialplan.steps(chan.context, chan.exten)
        if not 1 <= chan.priority <= len(steps):
            return
        step = steps[chan.priority - 1]
        appdata = substitute(step.args, chan.builtin)
        sim.newexten(chan, step.app, appdata)
        result = await run_app(sim, chan, step.app, appdata)
        if result is STOP:
            return
        if result is not JUMP:
            chan.priority += 1
            chan.touch()


APPS: Final[dict[str, App]] = {
    "answer": app_answer,
    "hangup": app_hangup,
    "wait": app_wait,
    "noop": app_noop,
    "set": app_set,
    "mset": app_mset,
    "goto": app_goto,
    "gotoif": app_gotoif,
    "execif": app_execif,
    "ringing": app_ringing,
    "busy": app_busy,
    "congestion": app_congestion,
    "senddtmf": app_senddtmf,
    "playback": app_playback,
    "patience": app_patience,
    "agentplan": app_agentplan,
    "dial": app_dial,
    "agi": _app_agi,
    "queue": _app_queue,
    "gosub": app_gosub,
    "return": app_return,
    "echo": app_unsupported,
}


async def run_app(sim: Simulator, chan: Channel, app: str, data: str) -> AppResult:
    """Run one app; when it ends the channel's dialplan, run the context's ``h`` first.

    :class:`SimUnsupportedError` from the app is logged as an error (``sim.unsupported``,
    naming the app, the dialplan location and the fix) and the call ends there, as a
    failing application ends it on Asterisk; the simulator goes on with the other calls.
    """
    fn = APPS.get(app.lower())
    try:
        if fn is None:
            raise SimUnsupportedError(f"the simulator has no application {app!r} (at {_where(chan)})")
        result = await fn(sim, chan, data)
    except SimUnsupportedError as exc:
        log.error("sim.unsupported", channel=chan.name, app=app, error=str(exc))
        result = STOP
    if (
        (result is STOP or not chan.alive)
        and chan.pbx_running
        and not chan.gone
        and chan.exten != "h"
        # the priority the pbx loop is running, not an app nested in ExecIf or AGI EXEC
        and chan.app == app
        and chan.appdata == data
        and _has_h(sim, chan.context)
    ):
        await run_h_exten(sim, chan)
        return STOP
    return result
