"""app_queue, simulated: Queue() with the semantics of ``apps/app_queue.c`` (Asterisk 22).

The structure follows the C code so that its timing quirks come out the same:
``queue_exec`` -> ``join_queue`` -> ``wait_our_turn`` (callers not yet allowed to ring
re-check every second, RECHECK) -> ``try_calling`` (``ring_one`` by strategy metric,
``wait_for_answer`` for the member ring ``timeout`` capped by the Queue() timeout) ->
``wait_a_bit`` (``retry`` seconds) -> and round again. Strategies ringall, rrmemory (and
rrordered, linear, fewestcalls, leastrecent, random, wrandom), member ``timeout``,
``retry``, ``wrapuptime``, ``ringinuse``, ``joinempty``/``leavewhenempty``, ``autofill``,
paused members, the ``QUEUE_PRIO`` caller priority, the exit-key ``context`` and options
``c`` (continue) and ``n`` (no retry) are modelled.

What real Asterisk shows and this reproduces (see FACTS.md): QueueCallerLeave *before*
AgentConnect; a Queue() timeout emits QueueCallerAbandon too (only queue_log
EXITWITHTIMEOUT and QUEUESTATUS=TIMEOUT tell it from an abandon); an unanswered ring gives
DialEnd NOANSWER then CANCEL and AgentRingNoAnswer with RingTime in *ms*; hold/talk times
are differences of whole epoch seconds; JOINEMPTY writes no queue_log line and emits no
queue event; QUEUESTATUS stays unset after an exit with a key or an abandon.

The queue_log (``epoch|callid|queue|agent|EVENT|data``) is written exactly as
``ast_queue_log`` does, from the same code points, so a simulated run carries the same
ground truth as a recorded one.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import structlog

from ivr.sim.apps import STOP, AppResult, Bridge
from ivr.sim.channel import HANGUP, TIMEOUT, Channel
from ivr.sim.config import (
    EMPTY_INUSE,
    EMPTY_INVALID,
    EMPTY_PAUSED,
    EMPTY_RINGING,
    EMPTY_UNAVAILABLE,
    EMPTY_UNKNOWN,
    EMPTY_WRAPUP,
    MemberConfig,
    QueueConfig,
)
from ivr.sim.dialplan import split_args

if TYPE_CHECKING:
    from ivr.sim.engine import Simulator

__all__ = ["CallQueue", "Member", "QueueEntry", "QueueManager", "app_queue"]

log = structlog.get_logger(__name__)

AGENT: Final = "agent,all"

# ``enum ast_device_state``
DEVICE_UNKNOWN: Final = 0
DEVICE_NOT_INUSE: Final = 1
DEVICE_INUSE: Final = 2
DEVICE_BUSY: Final = 3
DEVICE_INVALID: Final = 4
DEVICE_UNAVAILABLE: Final = 5
DEVICE_RINGING: Final = 6
DEVICE_RINGINUSE: Final = 7
DEVICE_ONHOLD: Final = 8
_DEVICE_BY_NAME: Final = {
    "UNKNOWN": 0,
    "NOT_INUSE": 1,
    "INUSE": 2,
    "BUSY": 3,
    "INVALID": 4,
    "UNAVAILABLE": 5,
    "RINGING": 6,
    "RINGINUSE": 7,
    "ONHOLD": 8,
}

#: ``RECHECK`` of app_queue.c: seconds between two "is it my turn?" checks.
RECHECK: Final = 1.0
MEMBER_BUCKETS: Final = 37
QUEUE_BUCKETS: Final = 53


def _compress_char(c: str) -> int:
    o = ord(c) & 0x7F
    if o < 32:
        return 0
    if o > 96:
        return o - 64
    return o - 32


def member_bucket(interface: str) -> int:
    """``member_hash_fn`` modulo 37: the order members are iterated in (QueueStatus)."""
    slash = interface.find("/")
    chname = interface[slash:] if slash >= 0 else interface
    h = 0
    for i, c in enumerate(chname[:5]):
        h += _compress_char(c) << (i * 6)
    h = ctypes.c_int32(h).value
    return abs(int(math.fmod(h, MEMBER_BUCKETS)))  # C: abs(hash % n), truncating division


def queue_bucket(name: str) -> int:
    """``ast_str_case_hash`` modulo 53: the order queues are listed in."""
    h = 5381
    for b in name.lower().encode():
        h = ((h * 33) & 0xFFFFFFFF) ^ b
    return (h & 0x7FFFFFFF) % QUEUE_BUCKETS


class Member:
    """A queue member (``struct member``)."""

    __slots__ = (
        "bucket",
        "callcompletedinsl",
        "calls",
        "dynamic",
        "interface",
        "lastcall",
        "lastpause",
        "lastqueue",
        "logintime",
        "membername",
        "paused",
        "penalty",
        "queuepos",
        "reason_paused",
        "reported",
        "ringinuse",
        "seq",
        "starttime",
        "state_interface",
        "status",
        "wrapuptime",
    )

    def __init__(
        self,
        interface: str,
        membername: str,
        *,
        penalty: int,
        paused: bool,
        dynamic: bool,
        logintime: int,
        ringinuse: bool,
        status: int,
        seq: int,
        reason: str = "",
        state_interface: str = "",
    ) -> None:
        self.interface = interface
        self.membername = membername or interface
        self.state_interface = state_interface or interface
        self.penalty = penalty
        self.paused = paused
        self.reason_paused = reason if paused else ""
        self.dynamic = dynamic
        self.calls = 0
        self.lastcall = 0
        self.lastpause = 0
        self.logintime = logintime
        self.starttime = 0
        self.status = status
        #: The status last announced by QueueMemberStatus.
        self.reported = status
        self.queuepos = 0
        self.ringinuse = ringinuse
        self.wrapuptime = 0
        self.lastqueue: CallQueue | None = None
        self.callcompletedinsl = False
        self.bucket = member_bucket(interface)
        self.seq = seq

    def event_headers(self, queue: str) -> list[tuple[str, str]]:
        """``queue_member_blob_create``: the QueueMember* event body."""
        return [
            ("Queue", queue),
            ("MemberName", self.membername),
            ("Interface", self.interface),
            ("StateInterface", self.state_interface),
            ("Membership", "dynamic" if self.dynamic else "static"),
            ("Penalty", str(self.penalty)),
            ("CallsTaken", str(self.calls)),
            ("LastCall", str(self.lastcall)),
            ("LastPause", str(self.lastpause)),
            ("LoginTime", str(self.logintime)),
            ("InCall", "1" if self.starttime else "0"),
            ("Status", str(self.status)),
            ("Paused", "1" if self.paused else "0"),
            ("PausedReason", self.reason_paused),
            ("Ringinuse", "1" if self.ringinuse else "0"),
            ("Wrapuptime", str(self.wrapuptime)),
        ]


class QueueEntry:
    """A caller in a queue (``struct queue_ent``)."""

    __slots__ = (
        "chan",
        "digits",
        "expire",
        "handled",
        "moh",
        "opos",
        "parent",
        "pending",
        "pos",
        "prio",
        "start",
        "valid_digits",
    )

    def __init__(self, chan: Channel, parent: CallQueue, start: int, expire: int, prio: int) -> None:
        self.chan = chan
        self.parent = parent
        self.start = start
        self.expire = expire
        self.prio = prio
        self.pos = 0
        self.opos = 0
        self.pending = 0
        self.handled = 0
        self.digits = ""
        self.valid_digits = False
        self.moh = False


class CallQueue:
    """A queue (``struct call_queue``) with its members and waiting callers."""

    def __init__(self, cfg: QueueConfig, autofill: bool) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.strategy = cfg.strategy
        self.autofill = autofill if cfg.autofill is None else cfg.autofill
        self.members: list[Member] = []  # kept in ao2 hash iteration order
        # member(): the first member in that order of each interface, case folded
        self._by_interface: dict[str, Member] = {}
        self.entries: list[QueueEntry] = []
        self.holdtime = 0
        self.talktime = 0
        self.completed = 0
        self.abandoned = 0
        self.completedinsl = 0
        self.abandonedinsl = 0
        self.rrpos = 0
        self.wrapped = False
        self.bucket = queue_bucket(cfg.name)
        #: Bumped whenever a member's availability may have changed (cache key).
        self.version = 0
        self._avail: tuple[int, int, int] = (-1, -1, 0)

    @property
    def count(self) -> int:
        return len(self.entries)

    def member(self, interface: str) -> Member | None:
        return self._by_interface.get(interface.lower())

    def _index(self, folded: str) -> None:
        """Point :meth:`member` at the first member of interface ``folded``, if any."""
        self._by_interface.pop(folded, None)
        for m in self.members:
            if m.interface.lower() == folded:
                self._by_interface[folded] = m
                break

    def insert_member(self, mem: Member) -> None:
        self.version += 1
        mem.queuepos = len(self.members)
        self.members.append(mem)
        self.members.sort(key=lambda m: (m.bucket, m.seq))
        self._index(mem.interface.lower())

    def remove_member(self, mem: Member) -> None:
        self.version += 1
        self.members.remove(mem)
        self._index(mem.interface.lower())
        for m in self.members:
            if m.queuepos > mem.queuepos:
                m.queuepos -= 1


class _Attempt:
    """A call attempt to one member (``struct callattempt``)."""

    __slots__ = ("chan", "interface", "member", "metric", "stillgoing")

    def __init__(self, member: Member, metric: int) -> None:
        self.member = member
        self.interface = member.interface
        self.metric = metric
        self.stillgoing = True
        self.chan: Channel | None = None


class QueueManager:
    """All queues of one simulated PBX, member administration and the queue_log."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.queues: dict[str, CallQueue] = {}
        self.pending_members: set[str] = set()
        #: state interface (lower-case) -> (queue, member) pairs, for device state updates.
        self._by_device: dict[str, list[tuple[CallQueue, Member]]] = {}
        self.log_lines: list[str] = []
        self._log: IO[str] | None = None
        self._seq = 0
        self._ordered: list[CallQueue] = []

    # -- life cycle -----------------------------------------------------------------------
    def load(self) -> None:
        """Create the configured queues and write ``QUEUESTART`` (app_queue load)."""
        sim = self.sim
        path = sim.queue_log_path
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._log = open(path, "a", encoding="utf-8", newline="")
        now = int(sim.now())
        for cfg in self.sorted_configs():
            q = CallQueue(cfg, sim.config.autofill)
            for mc in cfg.members:
                self._link(q, self._new_member(mc, dynamic=False, logintime=now, ringinuse=cfg.ringinuse))
            self.queues[cfg.name.lower()] = q
        self._ordered = sorted(self.queues.values(), key=lambda q: (q.bucket, q.name))
        self.qlog("NONE", "NONE", "NONE", "QUEUESTART", "")

    def sorted_configs(self) -> list[QueueConfig]:
        return sorted(self.sim.config.queues.values(), key=lambda c: queue_bucket(c.name))

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _new_member(
        self, mc: MemberConfig, *, dynamic: bool, logintime: int, ringinuse: bool, reason: str = ""
    ) -> Member:
        self._seq += 1
        return Member(
            mc.interface,
            mc.membername,
            penalty=mc.penalty,
            paused=mc.paused,
            dynamic=dynamic,
            logintime=logintime,
            ringinuse=ringinuse,
            status=self.device_status(mc.interface),
            seq=self._seq,
            reason=reason,
        )

    def _link(self, q: CallQueue, mem: Member) -> None:
        q.insert_member(mem)
        self._by_device.setdefault(mem.state_interface.lower(), []).append((q, mem))

    def _unlink(self, q: CallQueue, mem: Member) -> None:
        q.remove_member(mem)
        pairs = self._by_device.get(mem.state_interface.lower(), [])
        pairs[:] = [(qq, m) for qq, m in pairs if m is not mem]

    def ordered(self) -> Iterator[CallQueue]:
        """Queues in the ao2 hash order Asterisk lists them in."""
        return iter(self._ordered)

    def get(self, name: str) -> CallQueue | None:
        return self.queues.get(name.lower())

    # -- queue_log -------------------------------------------------------------------------
    def qlog(self, queue: str, callid: str, agent: str, event: str, data: str) -> None:
        """``ast_queue_log``: ``time|callid|queue|agent|event|data``."""
        line = f"{int(self.sim.now())}|{callid}|{queue}|{agent}|{event}|{data}"
        self.log_lines.append(line)
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()

    # -- device states -----------------------------------------------------------------------
    def device_status(self, interface: str) -> int:
        """The device state of a member interface right now (``ast_device_state``)."""
        if interface.lower().startswith("local/"):
            target = interface.split("/", 1)[1].split("/", 1)[0]
            exten, _, context = target.partition("@")
            if not self.sim.dialplan.exists(context or "default", exten):
                return DEVICE_INVALID
        return _DEVICE_BY_NAME.get(self.sim.device_state(interface), DEVICE_UNKNOWN)

    def device_in_use(self, device: str) -> None:
        """A device just got its first channel: its members are busy for the queues at once.

        On Asterisk the device state reaches app_queue within a millisecond of the ring, so
        a caller polling "in the same instant" already sees the member in use; the
        QueueMemberStatus event itself follows with the device-state update.
        """
        for q, m in self._by_device.get(device.lower(), ()):
            if m.status != DEVICE_INUSE:
                m.status = DEVICE_INUSE
                q.version += 1
                self.pending_members.discard(m.interface.lower())

    def device_state_changed(self, device: str, state: str) -> None:
        """Device state update (``update_status``): QueueMemberStatus for its members."""
        status = _DEVICE_BY_NAME.get(state, DEVICE_UNKNOWN)
        pairs = sorted(self._by_device.get(device.lower(), ()), key=lambda p: (p[0].bucket, p[0].name))
        for q, m in pairs:
            if m.status != status:
                # update_status(): a member becoming free ends its call for the queue
                if status == DEVICE_NOT_INUSE and m.starttime:
                    _update_queue(self.sim, q, m, m.callcompletedinsl, m.starttime)
                m.status = status
                q.version += 1
                self.pending_members.discard(m.interface.lower())
            if m.reported != status:
                m.reported = status
                self.sim.emit("QueueMemberStatus", AGENT, m.event_headers(q.name))

    # -- member administration (manager actions) ------------------------------------------------
    def add_member(
        self, queue: str, interface: str, membername: str, penalty: int, paused: bool, reason: str
    ) -> str | None:
        """QueueAdd; returns an error text or None."""
        q = self.get(queue)
        if q is None:
            return "Unable to add interface to queue: No such queue"
        if q.member(interface) is not None:
            return "Unable to add interface: Already there"
        mem = self._new_member(
            MemberConfig(interface, membername, penalty, paused),
            dynamic=True,
            logintime=int(self.sim.now()),
            ringinuse=q.cfg.ringinuse,
            reason=reason,
        )
        self._link(q, mem)
        self.sim.emit("QueueMemberAdded", AGENT, mem.event_headers(q.name))
        self.qlog(q.name, "MANAGER", interface, "ADDMEMBER", "PAUSED" if paused else "")
        return None

    def remove_member(self, queue: str, interface: str) -> str | None:
        q = self.get(queue)
        if q is None:
            return "Unable to remove interface from queue: No such queue"
        mem = q.member(interface)
        if mem is None:
            return "Unable to remove interface: Not there"
        if not mem.dynamic:
            return "Member not dynamic"
        self.sim.emit("QueueMemberRemoved", AGENT, mem.event_headers(q.name))
        self._unlink(q, mem)
        self.qlog(q.name, "MANAGER", interface, "REMOVEMEMBER", "")
        return None

    def set_paused(self, queue: str, interface: str, reason: str, paused: bool) -> bool:
        """``set_member_paused``: one queue, or every queue when ``queue`` is empty."""
        found = 0
        now = int(self.sim.now())
        for q in self.ordered():
            if queue and q.name.lower() != queue.lower():
                continue
            mem = q.member(interface)
            if mem is not None:
                found += 1
                if found == 1 and not queue:
                    self.qlog("NONE", "NONE", mem.membername, "PAUSEALL" if paused else "UNPAUSEALL", reason)
                if mem.paused != paused or paused:
                    if paused:
                        mem.lastpause = now
                mem.paused = paused
                q.version += 1
                mem.reason_paused = reason if paused else ""
                logged_reason = reason if (paused or reason) else ""
                self.qlog(
                    q.name,
                    "NONE",
                    mem.membername,
                    "PAUSE" if paused else "UNPAUSE",
                    mem.reason_paused if paused else logged_reason,
                )
                headers = mem.event_headers(q.name)
                if not paused and reason:
                    headers = [(k, reason if k == "PausedReason" else v) for k, v in headers]
                self.sim.emit("QueueMemberPause", AGENT, headers)
            if queue:
                break
        return found > 0

    def set_penalty(self, queue: str, interface: str, penalty: int) -> bool:
        found = False
        for q in self.ordered():
            if queue and q.name.lower() != queue.lower():
                continue
            mem = q.member(interface)
            if mem is not None:
                found = True
                mem.penalty = penalty
                self.qlog(q.name, "NONE", interface, "PENALTY", str(penalty))
                self.sim.emit("QueueMemberPenalty", AGENT, mem.event_headers(q.name))
        return found

    # -- listings --------------------------------------------------------------------------------
    def status_items(self, queue: str, member: str) -> list[tuple[str, list[tuple[str, str]]]]:
        """QueueStatus list items (QueueParams, QueueMember, QueueEntry), without ActionID."""
        now = int(self.sim.now())
        items: list[tuple[str, list[tuple[str, str]]]] = []
        for q in self.ordered():
            if queue and q.name.lower() != queue.lower():
                continue
            sl = 100.0 * q.completedinsl / q.completed if q.completed else 0.0
            total = q.completed + q.abandoned
            sl2 = 100.0 * (q.abandonedinsl + q.completedinsl) / total if total else 0.0
            items.append(
                (
                    "QueueParams",
                    [
                        ("Queue", q.name),
                        ("Max", str(q.cfg.maxlen)),
                        ("Strategy", q.strategy),
                        ("Calls", str(q.count)),
                        ("Holdtime", str(q.holdtime)),
                        ("TalkTime", str(q.talktime)),
                        ("Completed", str(q.completed)),
                        ("Abandoned", str(q.abandoned)),
                        ("ServiceLevel", str(q.cfg.servicelevel)),
                        ("ServicelevelPerf", f"{sl:.1f}"),
                        ("ServicelevelPerf2", f"{sl2:.1f}"),
                        ("Weight", str(q.cfg.weight)),
                    ],
                )
            )
            for m in q.members:
                if member and member != m.interface and member != m.membername:
                    continue
                items.append(
                    (
                        "QueueMember",
                        [
                            ("Queue", q.name),
                            ("Name", m.membername),
                            ("Location", m.interface),
                            ("StateInterface", m.state_interface),
                            ("Membership", "dynamic" if m.dynamic else "static"),
                            ("Penalty", str(m.penalty)),
                            ("CallsTaken", str(m.calls)),
                            ("LastCall", str(m.lastcall)),
                            ("LastPause", str(m.lastpause)),
                            ("LoginTime", str(m.logintime)),
                            ("InCall", "1" if m.starttime else "0"),
                            ("Status", str(m.status)),
                            ("Paused", "1" if m.paused else "0"),
                            ("PausedReason", m.reason_paused),
                            ("Wrapuptime", str(m.wrapuptime)),
                        ],
                    )
                )
            for pos, e in enumerate(q.entries, 1):
                c = e.chan
                items.append(
                    (
                        "QueueEntry",
                        [
                            ("Queue", q.name),
                            ("Position", str(pos)),
                            ("Channel", c.name),
                            ("Uniqueid", c.uniqueid),
                            ("CallerIDNum", c.cid_num or "unknown"),
                            ("CallerIDName", c.cid_name or "unknown"),
                            ("ConnectedLineNum", c.con_num or "unknown"),
                            ("ConnectedLineName", c.con_name or "unknown"),
                            ("Wait", str(now - e.start)),
                            ("Priority", str(e.prio)),
                        ],
                    )
                )
        return items

    def summary_items(self, queue: str) -> list[tuple[str, list[tuple[str, str]]]]:
        now = int(self.sim.now())
        items: list[tuple[str, list[tuple[str, str]]]] = []
        for q in self.ordered():
            if queue and q.name.lower() != queue.lower():
                continue
            logged_in = avail = 0
            for m in q.members:
                if m.status not in (DEVICE_UNAVAILABLE, DEVICE_INVALID):
                    logged_in += 1
                    if m.status in (DEVICE_NOT_INUSE, DEVICE_UNKNOWN) and not m.paused:
                        avail += 1
            longest = max((now - e.start for e in q.entries), default=0)
            items.append(
                (
                    "QueueSummary",
                    [
                        ("Queue", q.name),
                        ("LoggedIn", str(logged_in)),
                        ("Available", str(avail)),
                        ("Callers", str(q.count)),
                        ("HoldTime", str(q.holdtime)),
                        ("TalkTime", str(q.talktime)),
                        ("LongestHoldTime", str(max(0, longest))),
                    ],
                )
            )
        return items


# =============================================================================================
# Queue() itself
# =============================================================================================


class _Ctx:
    """Per-call state of one Queue() execution."""

    __slots__ = ("continue_", "noption", "qe", "ringing", "sim", "tries")

    def __init__(self, sim: Simulator, qe: QueueEntry, options: str) -> None:
        self.sim = sim
        self.qe = qe
        self.continue_ = "c" in options
        self.noption = "n" in options
        self.ringing = "r" in options
        self.tries = 0


_RESULTS: Final = {
    "timeout": "TIMEOUT",
    "full": "FULL",
    "joinempty": "JOINEMPTY",
    "leaveempty": "LEAVEEMPTY",
    "joinunavail": "JOINUNAVAIL",
    "leaveunavail": "LEAVEUNAVAIL",
    "continue": "CONTINUE",
    "withdraw": "WITHDRAW",
}


def _now(sim: Simulator) -> int:
    return int(sim.now())


def _set_duration(sim: Simulator, chan: Channel, name: str, ms: int) -> None:
    """``set_duration_var``: NAME in whole seconds, NAME_MS in milliseconds."""
    sim.set_var(chan, name, str(ms // 1000))
    sim.set_var(chan, f"{name}_MS", str(ms))


async def app_queue(sim: Simulator, chan: Channel, data: str) -> AppResult:
    """Queue(queuename[,options[,URL[,announceoverride[,timeout]]]])."""
    args = split_args(data) + [""] * 9
    qname, options, url, _announce, timeout_s = (a.strip() for a in args[:5])
    for var in (
        "ANSWEREDTIME",
        "ANSWEREDTIME_MS",
        "DIALEDTIME",
        "DIALEDTIME_MS",
        "QUEUEWAIT",
        "QUEUEWAIT_MS",
    ):
        sim.set_var(chan, var, "")
    if not qname:
        return STOP
    start = _now(sim)
    chan.vars.pop("ABANDONED", None)
    expire = start + _atoi(timeout_s) if timeout_s else 0
    prio = _atoi(chan.builtin("QUEUE_PRIO") or "0")
    mgr = sim.queues
    q = mgr.get(qname)
    if q is None:
        # join_queue fails without a reason: set_queue_result(QUEUE_UNKNOWN)
        log.warning("sim.queue_unknown", queue=qname, channel=chan.name)
        sim.set_var(chan, "QUEUESTATUS", "UNKNOWN")
        return None
    qe = QueueEntry(chan, q, start, expire, prio)
    ctx = _Ctx(sim, qe, options)
    reason = _join_queue(sim, q, qe)
    if reason is not None:
        sim.set_var(chan, "QUEUESTATUS", _RESULTS[reason])
        return None
    mgr.qlog(q.name, chan.uniqueid, "NONE", "ENTERQUEUE", f"{url}|{chan.cid_num}|{qe.opos}")
    _moh_start(sim, qe)

    res: int | str = 0
    reason_out: str | None = None
    outer = True
    while outer:  # check_turns:
        res, reason_out = await _wait_our_turn(ctx)
        if res:
            break
        while True:
            if qe.expire and _now(sim) >= qe.expire:
                _record_abandoned(sim, qe)
                reason_out = "timeout"
                res = 0
                mgr.qlog(
                    q.name,
                    chan.uniqueid,
                    "NONE",
                    "EXITWITHTIMEOUT",
                    f"{qe.pos}|{qe.opos}|{_now(sim) - qe.start}",
                )
                outer = False
                break
            res = await _try_calling(ctx)
            if res:
                outer = False
                break
            if q.cfg.leavewhenempty and _member_status(sim, q, q.cfg.leavewhenempty):
                _record_abandoned(sim, qe)
                reason_out = "leaveempty"
                mgr.qlog(
                    q.name, chan.uniqueid, "NONE", "EXITEMPTY", f"{qe.pos}|{qe.opos}|{_now(sim) - qe.start}"
                )
                res = 0
                outer = False
                break
            if ctx.noption and ctx.tries >= len(q.members):
                mgr.qlog(
                    q.name,
                    chan.uniqueid,
                    "NONE",
                    "EXITWITHTIMEOUT",
                    f"{qe.pos}|{qe.opos}|{_now(sim) - qe.start}",
                )
                _record_abandoned(sim, qe)
                reason_out = "timeout"
                res = 0
                outer = False
                break
            if qe.expire and _now(sim) >= qe.expire:
                _record_abandoned(sim, qe)
                reason_out = "timeout"
                res = 0
                mgr.qlog(
                    q.name,
                    chan.uniqueid,
                    "NONE",
                    "EXITWITHTIMEOUT",
                    f"{qe.pos}|{qe.opos}|{_now(sim) - qe.start}",
                )
                outer = False
                break
            res = await _wait_a_bit(ctx)
            if res:
                outer = False
                break
            if not _is_our_turn(sim, qe):
                break  # "Darn priorities": back to check_turns

    # stop:
    if not chan.gone:
        if not chan.vars.get("QUEUEWAIT"):
            _set_duration(sim, chan, "QUEUEWAIT", (_now(sim) - qe.start) * 1000)
        if not chan.vars.get("DIALEDTIME"):
            _set_duration(sim, chan, "DIALEDTIME", int((sim.now() - chan.created) * 1000))
        if not chan.vars.get("ANSWEREDTIME"):
            _set_duration(sim, chan, "ANSWEREDTIME", 0)
    hung_up = False
    if res:
        if res == -1:
            if not qe.handled:
                _record_abandoned(sim, qe)
                mgr.qlog(
                    q.name, chan.uniqueid, "NONE", "ABANDON", f"{qe.pos}|{qe.opos}|{_now(sim) - qe.start}"
                )
                hung_up = True
            elif reason_out == "leaveempty":
                res = 0
            elif ctx.continue_:
                reason_out = "continue"
                res = 0
            else:
                hung_up = True
        elif qe.valid_digits:
            mgr.qlog(
                q.name,
                chan.uniqueid,
                "NONE",
                "EXITWITHKEY",
                f"{qe.digits}|{qe.pos}|{qe.opos}|{_now(sim) - qe.start}",
            )
    if not hung_up:
        _moh_stop(sim, qe)
    _leave_queue(sim, qe)
    if reason_out is not None:
        sim.set_var(chan, "QUEUESTATUS", _RESULTS[reason_out])
    if hung_up or chan.hangup_requested or chan.gone:
        return STOP
    if qe.valid_digits:
        return None  # valid_exit moved the channel to <context>,<digits>,0: go on at priority 1
    return None


def _atoi(value: str) -> int:
    digits = ""
    for i, c in enumerate(value.strip()):
        if c.isdigit() or (i == 0 and c in "+-"):
            digits += c
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return 0


def _moh_start(sim: Simulator, qe: QueueEntry) -> None:
    if not qe.moh:
        qe.moh = True
        sim.emit_chan("MusicOnHoldStart", qe.chan, [("Class", qe.parent.cfg.musicclass or "default")])


def _moh_stop(sim: Simulator, qe: QueueEntry) -> None:
    if qe.moh:
        qe.moh = False
        sim.emit_chan("MusicOnHoldStop", qe.chan)


# -- join / leave ------------------------------------------------------------------------------


def _member_status(sim: Simulator, q: CallQueue, conditions: int) -> bool:
    """``get_member_status`` != 0: True when no member is usable under ``conditions``."""
    now = _now(sim)
    for m in q.members:
        status = m.status
        unusable = (
            (status == DEVICE_INVALID and conditions & EMPTY_INVALID)
            or (status == DEVICE_UNAVAILABLE and conditions & EMPTY_UNAVAILABLE)
            or (status == DEVICE_INUSE and conditions & EMPTY_INUSE)
            or (status == DEVICE_RINGING and conditions & EMPTY_RINGING)
            or (status == DEVICE_UNKNOWN and conditions & EMPTY_UNKNOWN)
        )
        if unusable:
            continue
        if m.paused and conditions & EMPTY_PAUSED:
            continue
        wrap = _wrapuptime(q, m)
        if conditions & EMPTY_WRAPUP and m.lastcall and wrap and now - wrap < m.lastcall:
            continue
        return False
    return True


def _join_queue(sim: Simulator, q: CallQueue, qe: QueueEntry) -> str | None:
    """``join_queue``: insert by priority; QueueCallerJoin. Returns a failure reason."""
    cfg = q.cfg
    if cfg.joinempty and _member_status(sim, q, cfg.joinempty):
        return "joinempty"
    if cfg.maxlen and q.count >= cfg.maxlen:
        return "full"
    inserted = False
    pos = 0
    new: list[QueueEntry] = []
    for cur in q.entries:
        if not inserted and qe.prio > cur.prio:
            pos += 1
            qe.pos = qe.opos = pos
            new.append(qe)
            inserted = True
        pos += 1
        cur.pos = pos
        new.append(cur)
    if not inserted:
        pos += 1
        qe.pos = qe.opos = pos
        new.append(qe)
    q.entries = new
    qe.parent = q
    if q.count == 1:
        sim.queue_device(q.name, "RINGING")
    sim.emit_chan(
        "QueueCallerJoin",
        qe.chan,
        [("Queue", q.name), ("Position", str(qe.pos)), ("Count", str(q.count))],
        AGENT,
    )
    return None


def _leave_queue(sim: Simulator, qe: QueueEntry) -> None:
    q = qe.parent
    if qe not in q.entries:
        return
    q.entries.remove(qe)
    for i, e in enumerate(q.entries, 1):
        e.pos = i
    if not q.count:
        sim.queue_device(q.name, "NOT_INUSE")
    sim.emit_chan(
        "QueueCallerLeave",
        qe.chan,
        [("Queue", q.name), ("Position", str(qe.pos)), ("Count", str(q.count))],
        AGENT,
    )
    sim.set_var(qe.chan, "QUEUEPOSITION", str(qe.pos))


def _record_abandoned(sim: Simulator, qe: QueueEntry) -> None:
    q = qe.parent
    sim.set_var(qe.chan, "ABANDONED", "TRUE")
    held = _now(sim) - qe.start
    if held <= q.cfg.servicelevel:
        q.abandonedinsl += 1
    q.abandoned += 1
    sim.emit_chan(
        "QueueCallerAbandon",
        qe.chan,
        [
            ("Queue", q.name),
            ("Position", str(qe.pos)),
            ("OriginalPosition", str(qe.opos)),
            ("HoldTime", str(held)),
        ],
        AGENT,
    )


def _recalc_holdtime(qe: QueueEntry, newholdtime: int) -> None:
    q = qe.parent
    if q.completed + q.abandoned == 0:
        q.holdtime = newholdtime
    else:
        q.holdtime = ((q.holdtime << 2) - q.holdtime + newholdtime) >> 2


# -- whose turn ---------------------------------------------------------------------------------------


def _wrapuptime(q: CallQueue, m: Member) -> int:
    return m.wrapuptime or q.cfg.wrapuptime


def _num_available(sim: Simulator, q: CallQueue) -> int:
    """``num_available_members``, cached per (member-change version, second)."""
    now = _now(sim)
    version, second, cached = q._avail
    if version == q.version and second == now:
        return cached
    avl = _count_available(sim, q)
    q._avail = (q.version, now, avl)
    return avl


_BUSY_STATES: Final = frozenset({DEVICE_INUSE, DEVICE_BUSY, DEVICE_RINGING, DEVICE_RINGINUSE, DEVICE_ONHOLD})
_GONE_STATES: Final = frozenset({DEVICE_INVALID, DEVICE_UNAVAILABLE})


def _count_available(sim: Simulator, q: CallQueue) -> int:
    """``num_available_members``: the members ``is_member_available`` finds free (on
    their device state, pause and wrap-up time); the first one only without autofill
    or with ringall. Inlined: a busy queue counts its members on every caller's turn."""
    avl = 0
    first_only = not q.autofill or q.strategy == "ringall"
    now = _now(sim)
    qwrap = q.cfg.wrapuptime
    for m in q.members:
        status = m.status
        if status in _GONE_STATES:
            continue
        if m.paused or (status in _BUSY_STATES and not m.ringinuse):
            continue
        wrap = m.wrapuptime or qwrap
        if m.lastcall and wrap and now - wrap < m.lastcall:
            continue
        avl += 1
        if first_only:
            break
    return avl


def _is_our_turn(sim: Simulator, qe: QueueEntry) -> bool:
    q = qe.parent
    avl = _num_available(sim, q)
    entries = q.entries
    idx = i = 0
    while idx < avl and i < len(entries) and entries[i] is not qe:
        if not entries[i].pending:
            idx += 1
        i += 1
    return i < len(entries) and idx < avl and (q.autofill or qe.pos == 1)


async def _wait_our_turn(ctx: _Ctx) -> tuple[int | str, str | None]:
    """The holding pen for callers not yet allowed to ring (re-checks every RECHECK s)."""
    sim, qe = ctx.sim, ctx.qe
    q = qe.parent
    while True:
        if _is_our_turn(sim, qe):
            return 0, None
        if qe.expire and _now(sim) >= qe.expire:
            return 0, "timeout"
        if q.cfg.leavewhenempty and _member_status(sim, q, q.cfg.leavewhenempty):
            _record_abandoned(sim, qe)
            sim.queues.qlog(
                q.name, qe.chan.uniqueid, "NONE", "EXITEMPTY", f"{qe.pos}|{qe.opos}|{_now(sim) - qe.start}"
            )
            qe.handled = -1
            return -1, "leaveempty"
        res = await _wait_digit(ctx, RECHECK)
        if res:
            return res, None
        if qe.expire and _now(sim) >= qe.expire:
            return 0, "timeout"


async def _wait_digit(ctx: _Ctx, seconds: float) -> int | str:
    """``ast_waitfordigit`` + ``valid_exit``: -1 on hangup, the digits of a valid exit, else 0."""
    sim, qe = ctx.sim, ctx.qe
    chan = qe.chan
    deadline = sim.now() + seconds
    while True:
        item = await chan.wait(max(0.0, deadline - sim.now()), dtmf=True)
        if item is TIMEOUT:
            return 0
        if item is HANGUP:
            _moh_stop(sim, qe)
            return -1
        if isinstance(item, str) and _valid_exit(sim, qe, item):
            return qe.digits


def _valid_exit(sim: Simulator, qe: QueueEntry, digit: str) -> bool:
    """``valid_exit``: a digit that completes an extension of the queue's ``context``."""
    context = qe.parent.cfg.context
    if len(qe.digits) >= 78:
        qe.digits = ""
        return False
    qe.digits += digit
    if not context:
        return False
    dialplan = sim.dialplan
    extens = dialplan.contexts.get(context, {})
    if not any(e.startswith(qe.digits) or (e.startswith("_")) for e in extens):
        qe.digits = ""
        return False
    if dialplan.exists(context, qe.digits):
        chan = qe.chan
        chan.context, chan.exten, chan.priority = context, qe.digits, 0
        chan.touch()
        qe.valid_digits = True
        return True
    return False


async def _wait_a_bit(ctx: _Ctx) -> int | str:
    return await _wait_digit(ctx, float(ctx.qe.parent.cfg.retry))


# -- calling members ---------------------------------------------------------------------------------------


def _calc_metric(q: CallQueue, m: Member, pos: int, qe: QueueEntry, sim: Simulator) -> int:
    usepenalty = 1 if len(q.members) > 0 else 0
    penalty = m.penalty
    s = q.strategy
    if s == "ringall":
        return penalty * 1000000 * usepenalty
    if s in ("rrmemory", "rrordered", "linear"):
        mpos = m.queuepos if s != "linear" else pos
        ref = q.rrpos
        if mpos < ref:
            metric = 1000 + mpos
        else:
            if mpos > ref:
                q.wrapped = True
            metric = mpos
        return metric + penalty * 1000000 * usepenalty
    if s == "random":
        return sim.rng.randrange(1000) + penalty * 1000000 * usepenalty
    if s == "wrandom":
        return sim.rng.randrange((1 + penalty) * 1000)
    if s == "fewestcalls":
        return m.calls + penalty * 1000000 * usepenalty
    if s == "leastrecent":
        base = 0 if not m.lastcall else 1000000 - (_now(sim) - m.lastcall)
        return base + penalty * 1000000 * usepenalty
    return 0


def _attempts(q: CallQueue, qe: QueueEntry, sim: Simulator) -> list[_Attempt]:
    """An attempt per member with its :func:`_calc_metric`, in member order.

    The round-robin strategies (the shipped queues') are computed inline: a queue of many
    members makes this list for every ring of every caller.
    """
    s = q.strategy
    if s != "rrmemory" and s != "rrordered":
        return [_Attempt(m, _calc_metric(q, m, pos, qe, sim)) for pos, m in enumerate(q.members)]
    ref = q.rrpos
    out: list[_Attempt] = []
    wrapped = False
    for m in q.members:  # usepenalty is 1: there are members
        mpos = m.queuepos
        if mpos < ref:
            metric = 1000 + mpos
        else:
            if mpos > ref:
                wrapped = True
            metric = mpos
        out.append(_Attempt(m, metric + m.penalty * 1000000))
    if wrapped:
        q.wrapped = True
    return out


def _find_best(attempts: list[_Attempt]) -> _Attempt | None:
    best: _Attempt | None = None
    for cur in attempts:
        if cur.stillgoing and cur.chan is None and (best is None or cur.metric < best.metric):
            best = cur
    return best


def _can_ring(sim: Simulator, qe: QueueEntry, att: _Attempt) -> bool:
    m = att.member
    q = qe.parent
    ringinuse = m.ringinuse
    if m.paused:
        return False
    if not ringinuse and m.status not in (DEVICE_NOT_INUSE, DEVICE_UNKNOWN):
        return False
    lastq = m.lastqueue or q
    wrap = _wrapuptime(lastq, m)
    if wrap and _now(sim) - m.lastcall < wrap:
        return False
    if not ringinuse:
        key = m.interface.lower()
        if key in sim.queues.pending_members:
            return False
        sim.queues.pending_members.add(key)
        if sim.queues.device_status(m.state_interface) not in (DEVICE_NOT_INUSE, DEVICE_UNKNOWN):
            sim.queues.pending_members.discard(key)
            return False
    return True


def _ring_entry(ctx: _Ctx, att: _Attempt) -> tuple[bool, int]:
    """Ring one member; returns (rung, busies added)."""
    from ivr.sim.engine import Forwarder

    sim, qe = ctx.sim, ctx.qe
    q = qe.parent
    caller = qe.chan
    if not _can_ring(sim, qe, att):
        att.stillgoing = False
        return False, 1
    tech, _, location = att.interface.partition("/")
    target = location.split("/", 1)[0]
    exten, _, context = target.partition("@")
    if tech.lower() != "local" or not sim.dialplan.exists(context, exten):
        q.rrpos += 1
        sim.queues.pending_members.discard(att.member.interface.lower())
        att.stillgoing = False
        return False, 1
    c1, c2 = sim.new_local_pair(exten, context, linkedid=caller.linkedid)
    sim.newexten(c1, "AppQueue", "(Outgoing Line)")
    sim.set_callerid(
        c1, caller.con_num or caller.cid_num, caller.con_name or caller.cid_name, connected=False
    )
    sim.set_var(c1, "DIALEDPEERNUMBER", target)
    sim.set_var(c2, "DIALEDPEERNUMBER", target)
    sim.set_callerid(c2, c1.cid_num, c1.cid_name)
    sim.local_bridge_event(c1, c2)
    # DialBegin carries the snapshot from before ring_entry moved the leg to the caller's
    # exten and connected line; AgentCalled the fresh one (both as recorded).
    before = c1.dest_snapshot()
    c1.exten = caller.exten
    c1.con_num, c1.con_name = caller.cid_num, caller.cid_name
    c1.touch()
    att.chan = c1
    c1.observer = Forwarder(caller, att)
    sim.emit_two(
        "AgentCalled",
        caller,
        c1,
        [("Queue", q.name), ("Interface", att.interface), ("MemberName", att.member.membername)],
        AGENT,
    )
    sim.emit("DialBegin", "call,all", [*caller.snapshot(), *before, ("DialString", att.interface)])
    sim.start_pbx(c2, context, exten)
    return True, 0


def _by_metric(attempts: list[_Attempt]) -> list[_Attempt]:
    """Attempts in the order repeated ``find_best`` calls would pick them (stable on ties)."""
    return sorted(attempts, key=lambda a: a.metric)


def _ring_one(ctx: _Ctx, attempts: list[_Attempt]) -> tuple[bool, int]:
    """``ring_one``: ring the best member (ringall: every member sharing the best metric).

    Metrics do not change during one call attempt and members only ever drop out, so one
    pass over the attempts sorted by metric makes the same choices as calling
    ``find_best`` again after every failure, in O(n) instead of O(n^2).
    """
    sim, qe = ctx.sim, ctx.qe
    q = qe.parent
    ret = False
    busies = 0
    ordered = _by_metric(attempts)
    i = 0
    n = len(ordered)
    while not ret:
        while i < n and not (ordered[i].stillgoing and ordered[i].chan is None):
            i += 1
        if i >= n:
            break
        best = ordered[i]
        if q.strategy == "ringall":
            for cur in attempts:
                if cur.stillgoing and cur.chan is None and cur.metric <= best.metric:
                    rung, b = _ring_entry(ctx, cur)
                    ret = ret or rung
                    busies += b
        else:
            ret, b = _ring_entry(ctx, best)
            busies += b
        if qe.expire and _now(sim) >= qe.expire:
            ret = False
            break
    return ret, busies


def _store_next_rr(q: CallQueue, attempts: list[_Attempt]) -> None:
    best = _find_best(attempts)
    if best is not None:
        q.rrpos = best.metric % 1000
    elif q.wrapped:
        q.rrpos = 0
    else:
        q.rrpos += 1
    q.wrapped = False


def _dial_end(sim: Simulator, caller: Channel, att: _Attempt, status: str) -> None:
    if att.chan is not None:
        sim.emit_two("DialEnd", caller, att.chan, [("DialStatus", status)], "call,all")


def _hang_attempt(sim: Simulator, att: _Attempt, cause: int = 0) -> None:
    """``do_hang``: drop a call attempt."""
    att.stillgoing = False
    chan = att.chan
    att.chan = None
    sim.queues.pending_members.discard(att.member.interface.lower())
    if chan is not None and not chan.gone:
        chan.observer = None
        if chan.cause is None:
            chan.cause = cause
        sim.hangup(chan)


def _hangupcalls(sim: Simulator, qe: QueueEntry, attempts: list[_Attempt], exception: Channel | None) -> None:
    for att in attempts:
        chan = att.chan
        if chan is not None and chan is not exception:
            if exception is not None:
                chan.cause = 26
            _dial_end(sim, qe.chan, att, "CANCEL")
            if att.member.status == DEVICE_NOT_INUSE:
                sim.queues.pending_members.discard(att.member.interface.lower())
            att.chan = None
            if not chan.gone:
                chan.observer = None
                if chan.cause is None:
                    chan.cause = 0
                sim.hangup(chan)


def _rna(ctx: _Ctx, rnatime: int, att: _Attempt, peer: Channel) -> None:
    sim, qe = ctx.sim, ctx.qe
    q = qe.parent
    sim.emit_two(
        "AgentRingNoAnswer",
        qe.chan,
        peer,
        [
            ("Queue", q.name),
            ("Interface", att.interface),
            ("MemberName", att.member.membername),
            ("RingTime", str(rnatime)),
        ],
        AGENT,
    )
    sim.queues.qlog(q.name, qe.chan.uniqueid, att.member.membername, "RINGNOANSWER", str(rnatime))


async def _wait_for_answer(
    ctx: _Ctx, attempts: list[_Attempt], to_ms: int, busies: int
) -> tuple[_Attempt | None, int, str]:
    """Returns (answered attempt, remaining ms (-1 = caller hung up), exit digits)."""
    sim, qe = ctx.sim, ctx.qe
    q = qe.parent
    caller = qe.chan
    start_v = sim.now()
    starttime = _now(sim)
    orig = to_ms

    def remaining() -> int:
        if orig < 0:
            return -1
        return max(0, orig - round((sim.now() - start_v) * 1000))

    while True:
        left = remaining()
        if left == 0:
            break
        ringing = [a for a in attempts if a.stillgoing and a.chan is not None]
        if not ringing:
            stillgoing = any(a.stillgoing for a in attempts)
            if q.strategy == "ringall" and stillgoing:
                _, b = _ring_one(ctx, attempts)
                busies += b
                ringing = [a for a in attempts if a.stillgoing and a.chan is not None]
            if not ringing:
                return None, 0, ""
        item = await caller.wait(None if left < 0 else left / 1000.0, dtmf=True, custom=True)
        if item is TIMEOUT:
            break
        if item is HANGUP or (isinstance(item, str) and _valid_exit(sim, qe, item)):
            hung = item is HANGUP
            if hung:
                _moh_stop(sim, qe)
            for a in attempts:
                _dial_end(sim, caller, a, "CANCEL")
            elapsed = int((sim.now() - start_v) * 1000)
            for a in attempts:
                if a.chan is not None:
                    sim.queues.qlog(
                        q.name, caller.uniqueid, a.member.membername, "RINGCANCELED", str(elapsed)
                    )
            return None, (-1 if hung else 0), ("" if hung else qe.digits)
        if not isinstance(item, tuple) or item[0] != "dial":
            continue
        _, kind, att = item
        if not isinstance(att, _Attempt) or att not in attempts or att.chan is None or not att.stillgoing:
            continue
        if kind == "ringing":
            sim.emit_two("DialState", caller, att.chan, [("DialStatus", "RINGING")], "call,all")
            continue
        if kind == "answer":
            _dial_end(sim, caller, att, "ANSWER")
            for a in attempts:
                if a is not att:
                    _dial_end(sim, caller, a, "CANCEL")
            return att, remaining(), ""
        peer = att.chan
        if kind in ("busy", "congestion"):
            _dial_end(sim, caller, att, kind.upper())
        else:
            _dial_end(sim, caller, att, "NOANSWER")
        _rna(ctx, (_now(sim) - starttime) * 1000, att, peer)
        _hang_attempt(sim, att)
        if q.strategy != "ringall" and remaining() > 500:
            _, b = _ring_one(ctx, attempts)
            busies += b
            starttime = _now(sim)
    for a in attempts:
        if a.chan is not None and a.stillgoing:
            _rna(ctx, orig, a, a.chan)
    for a in attempts:
        _dial_end(sim, caller, a, "NOANSWER")
    return None, 0, ""


async def _try_calling(ctx: _Ctx) -> int | str:
    sim, qe = ctx.sim, ctx.qe
    q = qe.parent
    caller = qe.chan
    now = _now(sim)
    if qe.expire and now >= qe.expire:
        return 0
    if ctx.noption:
        if q.strategy in ("rrmemory", "linear", "rrordered"):
            ctx.tries += 1
        else:
            ctx.tries = len(q.members)
    # try_calling prepends each member to its list: the attempts are in reverse member order
    attempts = _attempts(q, qe, sim)
    attempts.reverse()
    if qe.expire and (not q.cfg.timeout or qe.expire - now <= q.cfg.timeout):
        to = (qe.expire - now) * 1000
    else:
        to = q.cfg.timeout * 1000 if q.cfg.timeout else -1
    orig = to
    qe.pending += 1
    _, busies = _ring_one(ctx, attempts)
    att, left, digits = await _wait_for_answer(ctx, attempts, to, busies)
    if q.strategy in ("rrmemory", "rrordered"):
        _store_next_rr(q, attempts)
    if att is None or att.chan is None:
        qe.pending = 0
        _hangupcalls(sim, qe, attempts, None)
        if left:
            return -1
        return digits or 0
    peer: Channel = att.chan
    member = att.member
    now = _now(sim)
    _recalc_holdtime(qe, now - qe.start)
    callcompletedinsl = now - qe.start <= q.cfg.servicelevel
    _hangupcalls(sim, qe, attempts, peer)
    peer.observer = None
    _moh_stop(sim, qe)
    _leave_queue(sim, qe)
    qe.handled += 1
    ringtime = (orig - left) // 1000 if orig - left > 0 else 0
    sim.queues.qlog(
        q.name, caller.uniqueid, member.membername, "CONNECT", f"{now - qe.start}|{peer.uniqueid}|{ringtime}"
    )
    _set_duration(sim, caller, "QUEUEWAIT", (now - qe.start) * 1000)
    sim.emit_two(
        "AgentConnect",
        caller,
        peer,
        [
            ("Queue", q.name),
            ("Interface", member.interface),
            ("MemberName", member.membername),
            ("HoldTime", str(now - qe.start)),
            ("RingTime", str(ringtime)),
        ],
        AGENT,
    )
    member.starttime = now
    # Bridging answers a caller still unanswered (main/features.c, pre_bridge_setup: "Answer if
    # need be", ast_raw_answer). A Local ;2 queued by an Originate -- the agent-first callback
    # leg of dp-callback.conf [callback-queue] -- is answered only here, and that answers its
    # ;1: the Originate succeeds and the ;1 goes on to [callback-dial].
    sim.answer(caller)
    return await _bridge_call(ctx, att, peer, callcompletedinsl)


async def _bridge_call(ctx: _Ctx, att: _Attempt, peer: Channel, callcompletedinsl: bool) -> int:
    sim, qe = ctx.sim, ctx.qe
    caller = qe.chan
    member = att.member
    starttime = member.starttime
    bridge = Bridge(sim, caller)
    bridge.enter(peer)
    bridge.enter(caller)
    bridge.set_peers()
    bridged_at = sim.now()
    while True:
        item = await caller.wait(None, custom=True)
        if item is HANGUP:
            sim.set_var(caller, "BRIDGEPEER", "")
            _complete(ctx, member, starttime, "caller", peer, callcompletedinsl)
            sim.set_var(peer, "BRIDGEPEER", "")
            bridge.leave(caller)
            _set_duration(sim, caller, "ANSWEREDTIME", int((sim.now() - bridged_at) * 1000))
            sim.call_later(0.0, _finish_member, sim, bridge, peer)
            return -1
        if isinstance(item, tuple) and item[0] == "bridge_hangup" and item[1] is peer:
            _complete(ctx, member, starttime, "agent", peer, callcompletedinsl)
            sim.set_var(peer, "BRIDGEPEER", "")
            sim.set_var(caller, "BRIDGEPEER", "")
            bridge.leave(peer)
            sim.hangup(peer)
            bridge.destroy()
            _set_duration(sim, caller, "ANSWEREDTIME", int((sim.now() - bridged_at) * 1000))
            return -1
        if isinstance(item, tuple) and item[0] == "dial":
            continue


def _finish_member(sim: Simulator, bridge: Bridge, peer: Channel) -> None:
    bridge.leave(peer)
    if peer.cause is None:
        peer.cause = 16
    sim.hangup(peer)
    bridge.destroy()


def _complete(ctx: _Ctx, member: Member, starttime: int, reason: str, peer: Channel, insl: bool) -> None:
    sim, qe = ctx.sim, ctx.qe
    q = qe.parent
    now = _now(sim)
    hold = starttime - qe.start
    talk = now - starttime
    sim.queues.qlog(
        q.name,
        qe.chan.uniqueid,
        member.membername,
        "COMPLETECALLER" if reason == "caller" else "COMPLETEAGENT",
        f"{hold}|{talk}|{qe.opos}",
    )
    sim.emit_two(
        "AgentComplete",
        qe.chan,
        peer,
        [
            ("Queue", q.name),
            ("Interface", member.interface),
            ("MemberName", member.membername),
            ("HoldTime", str(hold)),
            ("TalkTime", str(talk)),
            ("Reason", reason),
        ],
        AGENT,
    )
    _update_queue(sim, q, member, insl, starttime)


def _update_queue(sim: Simulator, q: CallQueue, member: Member, insl: bool, starttime: int) -> None:
    if not starttime or member.starttime != starttime:
        return
    now = _now(sim)
    newtalk = now - starttime
    member.starttime = 0
    targets = (
        [m for other in sim.queues.ordered() if (m := other.member(member.interface)) is not None]
        if sim.config.shared_lastcall
        else [member]
    )
    for m in targets:
        m.lastcall = now
        m.calls += 1
        if m.lastqueue is not None:
            m.lastqueue.version += 1
        m.callcompletedinsl = False
        m.lastqueue = q
    q.version += 1
    for other in sim.queues.ordered():
        other.version += 1
    sim.queues.pending_members.discard(member.interface.lower())
    q.completed += 1
    if insl:
        q.completedinsl += 1
    if q.completed == 1:
        q.talktime = newtalk
    else:
        q.talktime = ((q.talktime << 2) - q.talktime + newtalk) >> 2
