"""The shipped Asterisk configuration on a real Asterisk 22 (``IVR_ASTERISK_BIN``).

What only a real Asterisk can say: that ``asterisk-conf/`` and ``dialplans/`` load
without complaint, that the ``ivr`` AMI user's event filters drop exactly what
``manager.conf`` says (the ``eventfilter(...)`` syntax is silently ignored by an
Asterisk that does not know it), that its permissions refuse what they should, and that
the dialplan's FastAGI requests carry what the controller routes on.

Asterisk is started once for the module on a temporary copy of the config
(``tests/real_asterisk.py`` lists the few changes) and always stopped. Each call is a
``Local/<DID>@from-trunk`` channel originated over AMI, as the operator trunk would
deliver it; the originator's half just waits. No queue has members, so every
``Queue()`` ends at once with JOINEMPTY (``joinempty = unavailable,invalid``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from real_asterisk import (
    AMI_SECRET,
    AMI_USER,
    DIALPLAN_DIR,
    ENV_VAR,
    SKIP_REASON,
    AsteriskProcess,
    build_config,
    shipped_contexts,
)

from ivr.agi.server import AGIServer
from ivr.ami.client import AMIClient
from ivr.ami.errors import ActionError, LoginError
from ivr.config import default_config
from ivr.domain.ivr_ops import (
    HUNG_UP,
    CallbackRecorded,
    CallInfo,
    CheckOverflow,
    Clock,
    Decision,
    EventSink,
    Flow,
    GetVar,
    OverflowAdvice,
    RecordCallback,
    Request,
    ServiceFlow,
    SetVar,
    SetVars,
    StepResult,
    set_variables,
)
from ivr.domain.ivr_ops import Reply as ServiceReply
from ivr.domain.scripts import AnyFlowFactory
from ivr.protocol import agi
from ivr.protocol.agi import NEED_DATA, AGIEnvironment, AGIServerConnection, Reply, mset_pairs
from ivr.protocol.ami import Event

#: Skipped unless IVR_ASTERISK_BIN is set; set to a wrong path, the fixture fails instead.
needs_asterisk = pytest.mark.skipif(not os.environ.get(ENV_VAR, "").strip(), reason=SKIP_REASON)
REPO = Path(__file__).resolve().parent.parent
#: The ivr user must never see these (manager.conf eventfilter exclude lines).
DROPPED_EVENTS = {
    "Newexten",
    "DeviceStateChange",
    "NewCallerid",
    "NewConnectedLine",
    "LocalBridge",
    "MusicOnHoldStart",
    "MusicOnHoldStop",
}
KEPT_VARSET = re.compile(r"^_*(QUEUESTATUS|CALLBACK_ID)$|^_*IVR_")


# -- the config copy (no Asterisk needed) ------------------------------------------------------


def test_rig_config_changes_only_machine_specific_lines(tmp_path: Path) -> None:
    """The test copy differs from the shipped files only in the documented lines.

    Runs without Asterisk, so that a reshaped shipped file breaks this helper (and is
    noticed) even where no Asterisk is installed.
    """
    moddir = tmp_path / "modules"
    moddir.mkdir()
    (moddir / "app_queue.so").touch()
    config = build_config(
        tmp_path / "rig",
        Path("/usr/sbin/asterisk"),
        moddir=moddir,
        datadir=tmp_path / "data",
        ami_port=15038,
        agi_port=14573,
        agi_host="127.0.0.2",
    )
    changed: dict[str, set[str]] = {}
    for src in [*REPO.joinpath("asterisk-conf").glob("*.conf"), *DIALPLAN_DIR.glob("*.conf")]:
        shipped = src.read_text(encoding="utf-8").splitlines()
        copied = (config.etc / src.name).read_text(encoding="utf-8").splitlines()
        changed[src.name] = set(copied) - set(shipped)
    assert changed["manager.conf"] == {"port = 15038", f"secret = {AMI_SECRET}"}
    assert changed["extensions.conf"] == {"IVR_AGI_HOST=127.0.0.2", "IVR_AGI_PORT=14573"}
    assert {line.split(":")[0] for line in changed["pjsip.conf"]} == {"bind = 127.0.0.1", "contact = sip"}
    assert all("127.0.0.1" in line for line in changed["pjsip.conf"])
    assert f"astmoddir => {moddir}" in changed["asterisk.conf"]
    assert "runuser = asterisk" not in (config.etc / "asterisk.conf").read_text(encoding="utf-8")
    # Every require names a module the fake module directory lacks, except app_queue.
    assert "app_queue.so" not in config.disabled_requires
    assert {"res_agi.so", "chan_pjsip.so", "pbx_config.so"} <= set(config.disabled_requires)
    assert all(line.startswith("; not built here: require") for line in changed["modules.conf"])
    untouched = set(changed) - {
        "manager.conf",
        "extensions.conf",
        "pjsip.conf",
        "asterisk.conf",
        "modules.conf",
    }
    assert untouched and all(not changed[name] for name in untouched)


# -- one Asterisk for the module: the ``asterisk`` and ``ami`` fixtures of conftest.py -----------


async def originate_inbound(ami: AMIClient, did: str) -> None:
    """A call on public number ``did`` as the trunk delivers it; returns once answered."""
    call = await ami.originate(
        f"Local/{did}@from-trunk", application="Wait", data="10", dial_timeout_ms=10_000
    )
    async with asyncio.timeout(10):
        result = await call.result
    assert result.ok and result.reason == 4, result.reason_text


async def events_until_gone(ami: AMIClient, did: str, timeout: float = 15.0) -> list[Event]:  # noqa: ASYNC109
    """Every event until both halves of the ``Local/<did>@from-trunk`` call have hung up."""
    prefix = f"Local/{did}@from-trunk-"
    events: list[Event] = []
    alive: set[str] = set()
    seen = False
    async with asyncio.timeout(timeout):
        while not seen or alive:
            event = await ami.next_event()
            events.append(event)
            channel = event.get("Channel") or ""
            if not channel.startswith(prefix):
                continue
            if event.name == "Newchannel":
                alive.add(channel)
                seen = True
            elif event.name == "Hangup":
                alive.discard(channel)
    return events


# -- (1) the config loads ----------------------------------------------------------------------


@pytest.mark.asterisk
@needs_asterisk
def test_shipped_config_loads(asterisk: AsteriskProcess) -> None:
    dialplan = asterisk.cli("dialplan show")
    loaded = set(re.findall(r"\[ Context '([^']+)' created by 'pbx_config' \]", dialplan))
    assert shipped_contexts() <= loaded, f"missing contexts: {shipped_contexts() - loaded}"

    globals_ = asterisk.cli("dialplan show globals")
    assert f"IVR_AGI_PORT={asterisk.config.agi_port}" in globals_
    assert "IVR_DEFAULT_QTIMEOUT=900" in globals_

    modules = asterisk.cli("module show")
    required = re.findall(
        r"^require\s*=>?\s*(\S+)", (asterisk.config.etc / "modules.conf").read_text(), flags=re.MULTILINE
    )
    assert required, "modules.conf requires nothing?"
    for module in required:
        assert re.search(rf"^{re.escape(module)}\s.*Running", modules, flags=re.MULTILINE), module

    queues = asterisk.cli("queue show")
    for queue in ("caf", "france-travail", "cpam", "carsat", "callback"):
        assert re.search(rf"^{re.escape(queue)} has 0 calls", queues, flags=re.MULTILINE), queue

    user = asterisk.cli(f"manager show user {AMI_USER}")
    assert re.search(r"read perm: call,agent,user,dialplan,agi$", user, flags=re.MULTILINE), user
    assert re.search(r"write perm: call,agent,user,reporting,originate$", user, flags=re.MULTILINE), user

    # Nothing in our files made the parsers complain (absent optional files, such as
    # cdr.conf, are other modules' business and are not ours to ship).
    ours = {"config.c", "pbx_config.c", "pbx.c", "manager.c", "app_queue.c", "res_agi.c", "logger.c"}
    level_and_source = re.compile(r"\] (?:WARNING|ERROR)\[\d+\] ([\w.]+):")
    complaints = [
        line
        for line in asterisk.config.messages_log.read_text(encoding="utf-8").splitlines()
        if (m := level_and_source.search(line)) and m.group(1) in ours
    ]
    assert not complaints, "\n".join(complaints)
    # logger.conf: queue_log is on, in astlogdir.
    assert "|NONE|NONE|NONE|QUEUESTART|" in "|" + asterisk.config.queue_log.read_text(encoding="utf-8")


# -- (2) the ivr AMI user ----------------------------------------------------------------------


@pytest.mark.asterisk
@needs_asterisk
async def test_ivr_user_event_filters_on_an_inbound_call(asterisk: AsteriskProcess, ami: AMIClient) -> None:
    """No FastAGI server is listening: the first decision fails open to the queue."""
    await originate_inbound(ami, "0199000001")
    events = await events_until_gone(ami, "0199000001")

    names = {e.name for e in events}
    assert {"Newchannel", "Hangup", "VarSet"} <= names
    assert not names & DROPPED_EVENTS, names & DROPPED_EVENTS
    variables = [(e.get("Variable"), e.get("Value")) for e in events if e.name == "VarSet"]
    assert all(KEPT_VARSET.search(name or "") for name, _ in variables), variables
    assert ("QUEUESTATUS", "JOINEMPTY") in variables
    assert ("IVR_SERVICE", "caf") in variables


@pytest.mark.asterisk
@needs_asterisk
async def test_ivr_user_is_refused_what_it_lacks(asterisk: AsteriskProcess, ami: AMIClient) -> None:
    """No 'command' class (the CLI), no 'system' (Originate of the AGI application)."""
    refused = await ami.action("Command", [("Command", "core show version")], check=False)
    assert refused.status == "Error"
    assert "permission denied" in (refused.message or "").lower()
    with pytest.raises(ActionError):
        await ami.originate("Local/0199000001@from-trunk", application="AGI", data="agi://127.0.0.1/x")

    intruder = AMIClient(
        "127.0.0.1", asterisk.config.ami_port, AMI_USER, "not-the-secret", action_timeout=5.0
    )
    with pytest.raises(LoginError):
        async with asyncio.timeout(10):
            await intruder.start()
    await intruder.close()


# -- (3) FastAGI requests from the shipped dialplan --------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def agi_listener(port: int, handler: Handler) -> AsyncIterator[None]:
    server = await asyncio.start_server(handler, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asterisk
@needs_asterisk
async def test_fastagi_request_of_the_ivr_script(asterisk: AsteriskProcess, ami: AMIClient) -> None:
    """The sans-I/O codec alone: the environment of ``ivr`` and a hangup decision."""
    envs: list[AGIEnvironment] = []
    replies: list[Reply] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AGIServerConnection()
        try:

            async def next_event() -> object:
                while (event := conn.next_event()) is NEED_DATA:
                    conn.receive_data(await reader.read(4096))
                return event

            env = await next_event()
            assert isinstance(env, AGIEnvironment)
            envs.append(env)
            writer.write(conn.send(agi.set_variable("IVR_ACTION", "hangup")))
            reply = await next_event()
            assert isinstance(reply, Reply)
            replies.append(reply)
        finally:
            writer.close()

    async with agi_listener(asterisk.config.agi_port, handle):
        await originate_inbound(ami, "0199000002")
        events = await events_until_gone(ami, "0199000002")

    assert len(envs) == 1, "the ivr script only: IVR_ACTION=hangup ends the call"
    env = envs[0]
    assert env.get("network") == "yes"
    assert env.network_script == "ivr?service=france-travail"
    assert env.script == "ivr" and env.query == {"service": "france-travail"}
    assert env.get("request") == f"agi://127.0.0.1:{asterisk.config.agi_port}/ivr?service=france-travail"
    assert env.get("context") == "ivr-entry"
    assert env.get("extension") == "0199000002"
    assert env.get("language") == "fr"
    assert env.channel.startswith("Local/0199000002@from-trunk-") and env.channel.endswith(";2")
    assert env.uniqueid and env.args == ()
    assert replies[0].code == 200 and replies[0].result == "1"
    # The decision was obeyed: no queue.
    assert not any(e.name == "VarSet" and e.get("Variable") == "QUEUESTATUS" for e in events)


@pytest.mark.asterisk
@needs_asterisk
async def test_mset_parses_its_argument_as_the_simulator_does(
    asterisk: AsteriskProcess, ami: AMIClient
) -> None:
    """What MSet makes of quotes, brackets, backslashes, a second ``=``, an item without ``=``
    and an empty last value: what ``ivr.protocol.agi.mset_pairs`` says, read back by GET VARIABLE."""
    options = 'IVR_A="x,y",IVR_B=f(1,2),IVR_C=p\\,q,IVR_D=k=v,junk,IVR_E='
    expected = dict(mset_pairs(options))
    assert expected == {"IVR_A": "x,y", "IVR_B": "f(1,2)", "IVR_C": "p,q", "IVR_D": "k=v", "IVR_E": ""}
    replies: list[Reply] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AGIServerConnection()

        async def next_event() -> object:
            while (event := conn.next_event()) is NEED_DATA:
                conn.receive_data(await reader.read(4096))
            return event

        try:
            env = await next_event()
            assert isinstance(env, AGIEnvironment)
            if env.script != "ivr":
                return
            for command in [agi.exec_("MSet", options), *(agi.get_variable(n) for n in [*expected, "junk"])]:
                writer.write(conn.send(command))
                reply = await next_event()
                assert isinstance(reply, Reply)
                replies.append(reply)
            writer.write(conn.send(agi.set_variable("IVR_ACTION", "hangup")))
            await next_event()
        finally:
            writer.close()

    async with agi_listener(asterisk.config.agi_port, handle):
        await originate_inbound(ami, "0199000002")
        await events_until_gone(ami, "0199000002")

    assert [(r.code, r.result) for r in replies] == [(200, "0")] + [(200, "1")] * len(expected) + [(200, "0")]
    assert [r.data or "" for r in replies[1:-1]] == list(expected.values())


#: What the after-queue script decides in these tests.
HANG_UP_AFTER_QUEUE = Decision(action="hangup", service="cpam", lang="fr", reason="test")


def ivr_server(asterisk: AsteriskProcess, ivr: AnyFlowFactory, after_queue: AnyFlowFactory) -> AGIServer:
    """Our FastAGI server on the test Asterisk's AGI port, with these two scripts."""
    return AGIServer(
        default_config(), flows={"ivr": ivr, "after-queue": after_queue}, port=asterisk.config.agi_port
    )


def _decide(decision: Decision) -> Flow:
    for step in set_variables(decision.variables()):
        result = yield step
        if result.hangup:
            break
    return decision


@pytest.mark.asterisk
@needs_asterisk
async def test_variables_set_by_one_mset_line_read_back_exactly(
    asterisk: AsteriskProcess, ami: AMIClient
) -> None:
    """``EXEC MSet`` as the IVR sends it: each value, an empty one too, is what Asterisk keeps.

    A value MSet would parse (quotes, a comma, parentheses) goes by ``SET VARIABLE`` between
    two MSet lines; the empty ``IVR_CASE`` is set (GET VARIABLE answers ``result=1 ()``, not
    ``result=0``), and so is an empty value last on a line (``NAME=`` then the end).
    """
    decision = Decision(
        action="queue",
        service="cpam",
        lang="fr",
        queue="carsat",
        priority=3,
        qtimeout=60,
        reason='menu "2", (info)',
    )
    variables = {**decision.variables(), "IVR_TEST_LAST": ""}
    steps = set_variables(variables)
    assert [type(step) for step in steps] == [SetVars, SetVar, SetVars]
    results: list[StepResult] = []
    read: dict[str, str | None] = {}
    after: list[CallInfo] = []

    def ivr(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        for step in steps:
            results.append((yield step))
        for name in variables:
            read[name] = (yield GetVar(name)).value
        return decision

    def after_queue(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        after.append(call)
        return _decide(HANG_UP_AFTER_QUEUE)

    server = ivr_server(asterisk, ivr, after_queue)
    async with server:
        await originate_inbound(ami, "0199000003")
        events = await events_until_gone(ami, "0199000003")

    assert results == [StepResult()] * 3  # 200 result=0 for each MSet, 200 result=1 for SET VARIABLE
    assert read == variables
    commands = [e.get("Command") or "" for e in events if e.name == "AGIExecStart"]
    assert commands[:3] == [
        "EXEC MSet IVR_ACTION=queue,IVR_QUEUE=carsat,IVR_PRIO=3,IVR_QTIMEOUT=60,IVR_SERVICE=cpam",
        'SET VARIABLE IVR_REASON "menu \\"2\\", (info)"',
        "EXEC MSet IVR_CASE=,IVR_LANG=fr,IVR_TEST_LAST=",
    ]
    # One VarSet per variable, in the order sent, as SET VARIABLE gives; AMI shows the value
    # C-escaped (ast_escape_c_alloc in varset_to_ami, main/stasis_channels.c).
    varsets = [(e.get("Variable"), e.get("Value")) for e in events if e.name == "VarSet"]
    start = varsets.index(("IVR_ACTION", "queue"))
    escaped = {**variables, "IVR_REASON": 'menu \\"2\\", (info)'}
    assert varsets[start : start + len(variables)] == list(escaped.items())
    # The dialplan obeyed them: Queue(carsat) (JOINEMPTY: no members), then after-queue.
    assert [(c.query, c.args) for c in after] == [({"service": "cpam", "queue": "carsat"}, ("JOINEMPTY",))]
    assert server.stats.failed == 0


@pytest.mark.asterisk
@needs_asterisk
async def test_agi_server_and_the_dialplan_contract(asterisk: AsteriskProcess, ami: AMIClient) -> None:
    """ivr.agi.server: the IVR picks another queue; after-queue sees it and the queue status."""
    calls: dict[str, CallInfo] = {}

    def ivr(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        calls["ivr"] = call
        return _decide(Decision(action="queue", service="cpam", lang="fr", queue="carsat", priority=3))

    def after_queue(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        calls["after-queue"] = call
        return _decide(HANG_UP_AFTER_QUEUE)

    server = ivr_server(asterisk, ivr, after_queue)
    async with server:
        await originate_inbound(ami, "0199000003")
        events = await events_until_gone(ami, "0199000003")

    assert calls["ivr"].query == {"service": "cpam"}
    assert calls["ivr"].extension == "0199000003"
    after = calls["after-queue"]
    assert after.script == "after-queue"
    assert after.query == {"service": "cpam", "queue": "carsat"}
    assert after.args == ("JOINEMPTY",)
    assert after.uniqueid == calls["ivr"].uniqueid
    variables = [(e.get("Variable"), e.get("Value")) for e in events if e.name == "VarSet"]
    assert ("IVR_QUEUE", "carsat") in variables and ("IVR_PRIO", "3") in variables
    assert ("QUEUESTATUS", "JOINEMPTY") in variables
    assert server.stats.sessions_total == 2 and server.stats.failed == 0


@pytest.mark.asterisk
@needs_asterisk
async def test_asterisk_waits_while_a_service_request_is_answered(
    asterisk: AsteriskProcess, ami: AMIClient
) -> None:
    """ivr.agi.server: a request answered in 1.5 s, nothing sent meanwhile; the reply decides."""
    asked: list[Request] = []

    def ivr(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        advice = yield CheckOverflow("cpam", call.uniqueid)
        assert isinstance(advice, OverflowAdvice)
        reason = f"advice-{advice.offer}"
        return (yield from _decide(Decision(action="hangup", service="cpam", lang="fr", reason=reason)))

    async def perform(request: Request) -> ServiceReply:
        asked.append(request)
        await asyncio.sleep(1.5)  # Redis far away: Asterisk just waits for the next command
        return OverflowAdvice("callback", ("estimated_wait",))

    server = AGIServer(default_config(), flows={"ivr": ivr}, port=asterisk.config.agi_port, perform=perform)
    async with server:
        await originate_inbound(ami, "0199000004")
        events = await events_until_gone(ami, "0199000004", timeout=20.0)

    assert len(asked) == 1
    variables = [(e.get("Variable"), e.get("Value")) for e in events if e.name == "VarSet"]
    assert ("IVR_REASON", "advice-callback") in variables  # set after the wait, by the reply
    assert server.stats.sessions_total == 1 and server.stats.failed == 0


@pytest.mark.asterisk
@needs_asterisk
async def test_a_caller_gone_during_a_request_keeps_it_and_the_flow_sees_the_hangup_after(
    asterisk: AsteriskProcess, ami: AMIClient
) -> None:
    """The channel is hung up while a callback is recorded: recorded once, then HUNG_UP."""
    asked: list[Request] = []
    seen: list[object] = []
    flow_done = asyncio.Event()

    channels: list[str] = []

    def ivr(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        channels.append(call.channel)
        reply = yield RecordCallback(call.uniqueid, "0612345678", "cpam", "cpam")
        seen.append(reply)
        result = yield SetVar("IVR_ACTION", "callback")
        seen.append(result)
        flow_done.set()
        return Decision(action="callback", service="cpam", lang="fr", hung_up=result.hangup)

    async def perform(request: Request) -> ServiceReply:
        asked.append(request)
        assert isinstance(request, RecordCallback)
        channel = next(c for c in channels if c.endswith(";2"))
        await ami.action("Hangup", [("Channel", channel)])
        (session,) = server._sessions
        async with asyncio.timeout(5):
            while not session.hung_up:  # noqa: ASYNC110 -- Asterisk's HANGUP line, read by the session
                await asyncio.sleep(0.02)
        return CallbackRecorded(True, "created", callback_id="cb-real")

    server = AGIServer(default_config(), flows={"ivr": ivr}, port=asterisk.config.agi_port, perform=perform)
    async with server:
        await originate_inbound(ami, "0199000001")
        events = await events_until_gone(ami, "0199000001", timeout=20.0)
        async with asyncio.timeout(5):
            await flow_done.wait()

    assert len(asked) == 1
    assert seen == [CallbackRecorded(True, "created", callback_id="cb-real"), HUNG_UP]
    # Nothing was set on the dead channel: the flow learnt of the hangup at its next step.
    assert not any(e.name == "VarSet" and e.get("Variable") == "IVR_ACTION" for e in events)
    assert server.stats.failed == 0
