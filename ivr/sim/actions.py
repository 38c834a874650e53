"""Manager actions of the simulated PBX (everything but Login/Logoff/Events/Ping/Challenge).

Responses carry Asterisk 22's texts (``main/manager.c``, ``apps/app_queue.c``), checked
against the ``actions`` and ``member_admin`` recordings: e.g. ``Channel not specified``,
``No such channel``, ``Unable to add interface: Already there``, ``Interface not found``,
AstDB's ``Database entry not found`` (``DBGet``/``DBPut``/``DBDel``, main/db.c),
and for an unknown action ``Invalid/unknown command: FooBar. Use Action: ListCommands to
show available commands.`` List actions return their items without ``ActionID``; the AMI
front-end places it where Asterisk does (:mod:`ivr.sim.ami_server`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from ivr.protocol.ami import Action
from ivr.sim.api import ActionResult, Headers, ListReply
from ivr.sim.channel import STATE_DESC, Channel
from ivr.sim.engine import OriginateRequest, parse_variables

if TYPE_CHECKING:
    from ivr.sim.engine import Simulator

__all__ = ["ACTIONS", "dispatch", "parse_callerid"]

Handler = Callable[["Simulator", Action], Awaitable[ActionResult]]

_TRUE: Final = frozenset({"yes", "true", "y", "t", "1", "on"})


def _h(action: Action, key: str) -> str:
    """``astman_get_header``: first occurrence, case-insensitive, leading blanks skipped."""
    folded = key.lower()
    for k, v in action.headers:
        if k.lower() == folded:
            return v.lstrip(" \t")
    return ""


def _true(value: str) -> bool:
    return value.strip().lower() in _TRUE


def parse_callerid(value: str) -> tuple[str, str]:
    """``ast_callerid_parse`` + ``ast_shrink_phone_number``: ``"Name" <num>`` -> (num, name)."""
    value = value.strip()
    if "<" in value and ">" in value[value.find("<") :]:
        start = value.find("<")
        end = value.find(">", start)
        num = value[start + 1 : end]
        name = value[:start].strip().strip('"').strip()
    elif value and all(c in "0123456789+*#()-. " for c in value):
        num, name = value, ""
    else:
        num, name = "", value.strip('"')
    num = "".join(c for c in num if c not in "()-. ")
    return num, name


# -- Originate ------------------------------------------------------------------------------------


async def action_originate(sim: Simulator, a: Action) -> ActionResult:
    channel = _h(a, "Channel")
    if not channel:
        return ActionResult.error("Channel not specified")
    context, exten, priority = _h(a, "Context"), _h(a, "Exten"), _h(a, "Priority")
    if priority and not priority.isdigit() and sim.dialplan.priority_of(context, exten, priority) is None:
        return ActionResult.error("Invalid priority")
    timeout = _h(a, "Timeout")
    try:
        timeout_ms = int(timeout) if timeout else 30000
    except ValueError:
        return ActionResult.error("Invalid timeout")
    if "/" not in channel:
        return ActionResult.error("Invalid channel")
    application = _h(a, "Application")
    if not application and exten and context and priority and not sim.dialplan.exists(context, exten):
        return ActionResult.error("Extension does not exist.")
    num, name = parse_callerid(_h(a, "CallerID"))
    req = OriginateRequest(
        channel,
        context=context,
        exten=exten,
        priority=priority or "1",
        application=application,
        data=_h(a, "Data"),
        cid_num=num,
        cid_name=name,
        timeout_ms=timeout_ms,
        variables=parse_variables(a.getall("Variable")),
        action_id=a.action_id,
    )
    if _true(_h(a, "Async")):
        sim.originate(req)
        return ActionResult.success("Originate successfully queued")
    if not application and not (exten and context):
        return ActionResult.error("Originate with 'Exten' requires 'Context' and 'Priority'")
    ok = await sim.originate_sync(req)
    return (
        ActionResult.success("Originate successfully queued")
        if ok
        else ActionResult.error("Originate failed")
    )


# -- channel actions -------------------------------------------------------------------------------


async def action_hangup(sim: Simulator, a: Action) -> ActionResult:
    target = _h(a, "Channel")
    if not target:
        return ActionResult.error("No channel specified")
    cause_s = _h(a, "Cause")
    cause = 0
    if cause_s:
        try:
            cause = int(cause_s)
        except ValueError:
            cause = 0
        if not 0 <= cause <= 127:
            cause = 0
    if not target.startswith("/"):
        chan = sim.find_channel(target)
        if chan is None:
            return ActionResult.error("No such channel")
        sim.ami_hangup(chan, cause or 16)
        return ActionResult.success("Channel Hungup")
    pattern = target[1:-1] if target.endswith("/") and len(target) > 1 else None
    if pattern is None:
        return ActionResult.error("Regex format invalid, Channel param should be /regex/")
    try:
        regex = re.compile(pattern)
    except re.error:
        return ActionResult.error(f"Regex compile failed on: {target}")
    items: list[tuple[str, Headers]] = []
    for chan in list(sim.channels.values()):
        if regex.search(chan.name):
            sim.ami_hangup(chan, cause or 16)
            items.append(("ChannelHungup", [("Channel", chan.name)]))
    return ActionResult(
        "Success",
        [],
        ListReply(items, "ChannelsHungupListComplete", [], "Channels hung up will follow"),
    )


async def action_getvar(sim: Simulator, a: Action) -> ActionResult:
    name = _h(a, "Variable")
    if not name:
        return ActionResult.error("No variable specified")
    target = _h(a, "Channel")
    if target:
        chan = sim.find_channel(target)
        if chan is None:
            return ActionResult.error("No such channel")
        value = chan.builtin(name)
    else:
        value = sim.globals.get(name)
    return ActionResult("Success", [("Variable", name), ("Value", value or "")])


async def action_setvar(sim: Simulator, a: Action) -> ActionResult:
    name = _h(a, "Variable")
    if not name:
        return ActionResult.error("No variable specified")
    target = _h(a, "Channel")
    value = _h(a, "Value")
    if target:
        chan = sim.find_channel(target)
        if chan is None:
            return ActionResult.error("No such channel")
        sim.set_var(chan, name, value)
    else:
        sim.set_var(None, name, value)
    return ActionResult.success("Variable Set")


async def action_dbget(sim: Simulator, a: Action) -> ActionResult:
    """``manager_dbget`` (main/db.c): a one-item list, or ``Database entry not found``."""
    family, key = _h(a, "Family"), _h(a, "Key")
    if not family:
        return ActionResult.error("No family specified.")
    if not key:
        return ActionResult.error("No key specified.")
    value = sim.astdb.get(family, key)
    if value is None:
        return ActionResult.error("Database entry not found")
    item: Headers = [("Family", family), ("Key", key), ("Val", value)]
    return ActionResult(
        "Success", [], ListReply([("DBGetResponse", item)], "DBGetComplete", [], "Result will follow")
    )


async def action_dbput(sim: Simulator, a: Action) -> ActionResult:
    """``manager_dbput`` (main/db.c); its texts have no final dot, unlike DBGet's and DBDel's."""
    family, key = _h(a, "Family"), _h(a, "Key")
    if not family:
        return ActionResult.error("No family specified")
    if not key:
        return ActionResult.error("No key specified")
    sim.astdb.put(family, key, _h(a, "Val"))
    return ActionResult.success("Updated database successfully")


async def action_dbdel(sim: Simulator, a: Action) -> ActionResult:
    """``manager_dbdel`` (main/db.c): ``ast_db_del2`` fails on a missing key."""
    family, key = _h(a, "Family"), _h(a, "Key")
    if not family:
        return ActionResult.error("No family specified.")
    if not key:
        return ActionResult.error("No key specified.")
    if not sim.astdb.delete(family, key):
        return ActionResult.error("Database entry could not be deleted")
    return ActionResult.success("Key deleted successfully")


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{(s % 3600) // 60:02d}:{s % 60:02d}"


def _channels_newest_first(sim: Simulator) -> list[Channel]:
    return list(reversed(list(sim.channels.values())))


async def action_coreshowchannels(sim: Simulator, a: Action) -> ActionResult:
    now = sim.now()
    items: list[tuple[str, Headers]] = []
    for chan in _channels_newest_first(sim):
        bridge = chan.bridge.uniqueid if chan.bridge is not None else ""
        items.append(
            (
                "CoreShowChannel",
                [
                    *chan.snapshot(),
                    ("Application", chan.app),
                    ("ApplicationData", chan.appdata),
                    ("Duration", _duration(now - chan.created)),
                    ("BridgeId", bridge),
                ],
            )
        )
    return ActionResult(
        "Success", [], ListReply(items, "CoreShowChannelsComplete", [], "Channels will follow")
    )


async def action_status(sim: Simulator, a: Action) -> ActionResult:
    target = _h(a, "Channel")
    if target:
        chan = sim.find_channel(target)
        if chan is None:
            return ActionResult.error("No such channel")
        chans = [chan]
    else:
        chans = _channels_newest_first(sim)
    wanted = [v.strip() for v in _h(a, "Variables").split(",") if v.strip()]
    now = sim.now()
    items: list[tuple[str, Headers]] = []
    for chan in chans:
        bridge = chan.bridge.uniqueid if chan.bridge is not None else ""
        headers: Headers = [
            ("Privilege", "Call"),
            *chan.snapshot(),
            ("Type", chan.name.split("/", 1)[0]),
            ("DNID", ""),
            ("EffectiveConnectedLineNum", chan.con_num or "<unknown>"),
            ("EffectiveConnectedLineName", chan.con_name or "<unknown>"),
            ("TimeToHangup", "0"),
            ("BridgeID", bridge),
            ("Application", chan.app),
            ("Data", chan.appdata),
            ("Nativeformats", "(slin)"),
            ("Readformat", "slin"),
            ("Readtrans", ""),
            ("Writeformat", "slin"),
            ("Writetrans", ""),
            ("Callgroup", "0"),
            ("Pickupgroup", "0"),
            ("Seconds", str(int(now - chan.created))),
        ]
        for var in wanted:
            headers.append(("Variable", f"{var}={chan.builtin(var) or ''}"))
        items.append(("Status", headers))
    return ActionResult(
        "Success",
        [],
        ListReply(items, "StatusComplete", [("Items", str(len(items)))], "Channel status will follow"),
    )


async def action_userevent(sim: Simulator, a: Action) -> ActionResult:
    name = _h(a, "UserEvent")
    headers: Headers = []
    for k, v in a.headers:
        if k.lower() in ("action", "userevent"):
            continue
        headers.append((k, v))
    sim.user_event(name, headers)
    return ActionResult.success("Event Sent")


_VERSION_LINE: Final = "Asterisk {v} built by root @ vm on a x86_64 running Linux on 2026-11-27 03:11:59 UTC"


async def action_command(sim: Simulator, a: Action) -> ActionResult:
    command = _h(a, "Command").strip()
    if not command:
        return ActionResult.error("No command provided")
    words = command.split()
    lowered = [w.lower() for w in words]
    out: list[str]
    ok = True
    if lowered[:3] == ["core", "show", "version"]:
        out = [_VERSION_LINE.format(v=sim.config.version)]
    elif lowered[:3] == ["core", "show", "uptime"]:
        up = int(sim.now() - sim.clock.start_epoch)
        out = [f"System uptime: {up} seconds", f"Last reload: {up} seconds"]
    elif lowered[:3] == ["core", "show", "channels"]:
        out = ["Channel              Location             State   Application(Data)             "]
        for chan in _channels_newest_first(sim):
            loc = f"{chan.exten}@{chan.context}:{chan.priority}"
            state = STATE_DESC.get(chan.state, "Unknown")
            out.append(
                f"{chan.name[:20]:<20} {loc[:20]:<20} {state:<7} {(chan.app + '(' + chan.appdata + ')')[:30]}"
            )
        n = len(sim.channels)
        out += [
            f"{n} active channel{'s' if n != 1 else ''}",
            f"{n // 2} active call{'s' if n // 2 != 1 else ''}",
        ]
    elif lowered[:3] == ["dialplan", "set", "global"] and len(words) >= 5:
        sim.set_var(None, words[3], " ".join(words[4:]))
        out = [f"    -- Global variable '{words[3]}' set to '{' '.join(words[4:])}'"]
    elif lowered[:2] == ["queue", "show"]:
        out = _queue_show(sim, words[2] if len(words) > 2 else "")
    else:
        ok = False
        out = [f"No such command '{command}' (type 'core show help {command}' for other possible commands)"]
    headers: Headers = [("Message", "Command output follows")]
    headers += [("Output", line) for line in out]
    return ActionResult("Success" if ok else "Error", headers)


def _queue_show(sim: Simulator, name: str) -> list[str]:
    out: list[str] = []
    for q in sim.queues.ordered():
        if name and q.name.lower() != name.lower():
            continue
        out.append(
            f"{q.name} has {q.count} calls (max {q.cfg.maxlen or 'unlimited'}) in '{q.strategy}' strategy "
            f"({q.holdtime}s holdtime, {q.talktime}s talktime), W:{q.cfg.weight}, C:{q.completed}, "
            f"A:{q.abandoned}, SL:0.0%, SL2:0.0% within {q.cfg.servicelevel}s"
        )
        out.append("   Members: " if q.members else "   No Members")
        for m in q.members:
            status = {1: "Not in use", 2: "In use", 4: "Invalid", 5: "Unavailable"}.get(m.status, "Unknown")
            paused = (
                f" (paused:{m.reason_paused})"
                if m.paused and m.reason_paused
                else (" (paused)" if m.paused else "")
            )
            out.append(
                f"      {m.membername} ({m.interface}) ({'dynamic' if m.dynamic else 'static'}){paused} "
                f"({status}) has taken {m.calls} calls"
            )
        out.append("   Callers: " if q.entries else "   No Callers")
        now = int(sim.now())
        for i, e in enumerate(q.entries, 1):
            w = now - e.start
            out.append(f"      {i}. {e.chan.name} (wait: {w // 60}:{w % 60:02d}, prio: {e.prio})")
        out.append("")
    if not out:
        out = [f"No such queue: {name}."]
    return out


async def action_listcommands(sim: Simulator, a: Action) -> ActionResult:
    headers: Headers = [(name, f"{name} (simulated)") for name in sorted(ACTIONS, key=str.lower)]
    return ActionResult("Success", headers)


async def action_corestatus(sim: Simulator, a: Action) -> ActionResult:
    import time as _time

    start = _time.gmtime(sim.clock.start_epoch)
    date = _time.strftime("%Y-%m-%d", start)
    clock = _time.strftime("%H:%M:%S", start)
    return ActionResult(
        "Success",
        [
            ("CoreStartupDate", date),
            ("CoreStartupTime", clock),
            ("CoreReloadDate", date),
            ("CoreReloadTime", clock),
            ("CoreCurrentCalls", str(len(sim.channels) // 2)),
        ],
    )


async def action_coresettings(sim: Simulator, a: Action) -> ActionResult:
    return ActionResult(
        "Success",
        [
            ("AMIversion", "11.0.0"),
            ("AsteriskVersion", sim.config.version),
            ("SystemName", ""),
            ("CoreMaxCalls", "0"),
            ("CoreMaxLoadAvg", "0.000000"),
            ("CoreRunUser", ""),
            ("CoreRunGroup", ""),
            ("CoreMaxFilehandles", "0"),
            ("CoreRealTimeEnabled", "No"),
            ("CoreCDRenabled", "No"),
            ("CoreHTTPenabled", "No"),
            ("SoundsSearchCustomDir", "No"),
        ],
    )


# -- queue actions -----------------------------------------------------------------------------------


async def action_queuestatus(sim: Simulator, a: Action) -> ActionResult:
    items = sim.queues.status_items(_h(a, "Queue"), _h(a, "Member"))
    return ActionResult(
        "Success", [], ListReply(list(items), "QueueStatusComplete", [], "Queue status will follow")
    )


async def action_queuesummary(sim: Simulator, a: Action) -> ActionResult:
    items = sim.queues.summary_items(_h(a, "Queue"))
    return ActionResult(
        "Success", [], ListReply(list(items), "QueueSummaryComplete", [], "Queue summary will follow")
    )


async def action_queueadd(sim: Simulator, a: Action) -> ActionResult:
    queue, interface = _h(a, "Queue"), _h(a, "Interface")
    if not queue:
        return ActionResult.error("'Queue' not specified.")
    if not interface:
        return ActionResult.error("'Interface' not specified.")
    penalty_s = _h(a, "Penalty")
    try:
        penalty = int(penalty_s) if penalty_s else 0
    except ValueError:
        penalty = 0
    penalty = max(0, penalty)
    paused = _true(_h(a, "Paused"))
    error = sim.queues.add_member(queue, interface, _h(a, "MemberName"), penalty, paused, _h(a, "Reason"))
    return ActionResult.error(error) if error else ActionResult.success("Added interface to queue")


async def action_queueremove(sim: Simulator, a: Action) -> ActionResult:
    queue, interface = _h(a, "Queue"), _h(a, "Interface")
    if not queue or not interface:
        return ActionResult.error("Need 'Queue' and 'Interface' parameters.")
    error = sim.queues.remove_member(queue, interface)
    return ActionResult.error(error) if error else ActionResult.success("Removed interface from queue")


async def action_queuepause(sim: Simulator, a: Action) -> ActionResult:
    interface, paused_s = _h(a, "Interface"), _h(a, "Paused")
    if not interface or not paused_s:
        return ActionResult.error("Need 'Interface' and 'Paused' parameters.")
    paused = _true(paused_s)
    if not sim.queues.set_paused(_h(a, "Queue"), interface, _h(a, "Reason"), paused):
        return ActionResult.error("Interface not found")
    return ActionResult.success(
        "Interface paused successfully" if paused else "Interface unpaused successfully"
    )


async def action_queuepenalty(sim: Simulator, a: Action) -> ActionResult:
    interface, penalty_s = _h(a, "Interface"), _h(a, "Penalty")
    if not interface or not penalty_s:
        return ActionResult.error("Need 'Interface' and 'Penalty' parameters.")
    try:
        penalty = int(penalty_s)
    except ValueError:
        penalty = -1
    if penalty < 0 or not sim.queues.set_penalty(_h(a, "Queue"), interface, penalty):
        return ActionResult.error("Invalid interface, queuename or penalty")
    return ActionResult.success("Interface penalty set successfully")


async def action_queuelog(sim: Simulator, a: Action) -> ActionResult:
    queue, event = _h(a, "Queue"), _h(a, "Event")
    if not queue or not event:
        return ActionResult.error("Need 'Queue' and 'Event' parameters.")
    sim.queues.qlog(queue, _h(a, "UniqueID") or "NONE", _h(a, "Interface"), event, _h(a, "Message"))
    return ActionResult.success("Event added successfully")


ACTIONS: Final[dict[str, Handler]] = {
    "originate": action_originate,
    "hangup": action_hangup,
    "getvar": action_getvar,
    "setvar": action_setvar,
    "coreshowchannels": action_coreshowchannels,
    "status": action_status,
    "userevent": action_userevent,
    "command": action_command,
    "listcommands": action_listcommands,
    "corestatus": action_corestatus,
    "coresettings": action_coresettings,
    "queuestatus": action_queuestatus,
    "queuesummary": action_queuesummary,
    "queueadd": action_queueadd,
    "queueremove": action_queueremove,
    "queuepause": action_queuepause,
    "queuepenalty": action_queuepenalty,
    "queuelog": action_queuelog,
    "dbget": action_dbget,
    "dbput": action_dbput,
    "dbdel": action_dbdel,
}


async def dispatch(sim: Simulator, action: Action) -> ActionResult:
    handler = ACTIONS.get(action.name.lower())
    if handler is None:
        return ActionResult.error(
            f"Invalid/unknown command: {action.name}. Use Action: ListCommands to show available commands."
        )
    return await handler(sim, action)
