"""Dialplan applications of the simulated PBX.

Each app is ``async def app(sim, chan, data) -> None | JUMP | STOP``: ``None`` goes on to
the next priority, ``JUMP`` means the app moved the channel (Goto), ``STOP`` ends the pbx
(the channel hung up, or Hangup() ran). The set is what the recording rig's dialplan and
Décroché's deployments use: Answer, AGI, Queue, Set, Wait, Hangup, NoOp, Goto, GotoIf,
ExecIf, Ringing, Busy, Congestion, SendDTMF, Playback, Dial -- plus two simulator apps
that model the people at the ends of a call:

* ``AgentPlan()`` -- an agent's phone: each ring of agent ``EXTEN`` takes the next step of
  the global ``PLAN<EXTEN>`` (``"d:t/d:t/N"``: ring ``d`` s then talk ``t`` s, or ``N``
  never answer; the rig's ``[agents]`` context), else ``DEF<EXTEN>``, else a random draw
  from the config's ``[agents.EXTEN]`` model.
* ``Patience(seconds)`` -- a caller's phone that hangs up after ``seconds`` unless its call
  is by then bridged to someone (then it stays until the far end hangs up); the rig's
  ``[caller] patient`` extension.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import structlog

from ivr.sim.channel import HANGUP, TIMEOUT, Channel
from ivr.sim.dialplan import split_args

if TYPE_CHECKING:
    from ivr.sim.engine import Simulator

__all__ = ["APPS", "JUMP", "STOP", "Bridge", "run_app"]

log = structlog.get_logger(__name__)


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


JUMP: Final = _Marker("JUMP")
STOP: Final = _Marker("STOP")

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
    sim.hangup(chan, soft=True)
    return STOP


async def app_wait(sim: Simulator, chan: Channel, data: str) -> AppResult:
    return await _pause(chan, _seconds(data))


async def app_noop(sim: Simulator, chan: Channel, data: str) -> AppResult:
    return None


async def app_set(sim: Simulator, chan: Channel, data: str) -> AppResult:
    name, sep, value = data.partition("=")
    if sep and name.strip():
        sim.set_var(chan, name.strip(), value)
    return None


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
        return False
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
    args = split_args(data)
    digits = "".join(c for c in args[0] if c in "0123456789*#ABCDabcd")
    duration = int(args[1]) if len(args) > 1 and args[1].strip().isdigit() else 250
    await sim.send_dtmf(chan, digits, duration)
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


async def app_patience(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """Hang up after ``data`` seconds unless the partner channel is bridged by then."""
    if await chan.wait(_seconds(data)) is HANGUP:
        return STOP
    peer = chan.peer
    if peer is not None and not peer.gone and peer.bridge is not None:
        await chan.wait(None)
        return STOP
    return None


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
        self.channels.append(chan)
        chan.bridge = self
        self.sim.emit("BridgeEnter", "call,all", [*self._headers(), *chan.snapshot()])

    def leave(self, chan: Channel) -> None:
        if chan in self.channels:
            self.channels.remove(chan)
            chan.bridge = None
            self.sim.emit("BridgeLeave", "call,all", [*self._headers(), *chan.snapshot()])

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
        tech, _, rest = target.strip().partition("/")
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
        leg = _Leg(f"{exten}@{context}", c1, c2)
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


APPS: Final[dict[str, App]] = {
    "answer": app_answer,
    "hangup": app_hangup,
    "wait": app_wait,
    "noop": app_noop,
    "set": app_set,
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
}


async def run_app(sim: Simulator, chan: Channel, app: str, data: str) -> AppResult:
    fn = APPS.get(app.lower())
    if fn is None:
        # pbx.c: "No application 'X' for extension" -- the channel is hung up.
        log.warning("sim.unknown_app", app=app, channel=chan.name)
        return STOP
    return await fn(sim, chan, data)
