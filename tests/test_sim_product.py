"""The simulator runs the dialplan Décroché ships (``dialplans/``), not a look-alike.

The shipped extensions.conf and queues.conf load with every context; a call on a public
number goes through the real FastAGI IVR server (``ivr.agi.server.AGIServer`` with the
default controller config) and app_queue, and the AMI stream -- read by a client over TCP
-- shows what the dialplan did; the callback contexts work as dp-callback.conf describes
them; a seeded overflow run makes callers wait long. Bad configurations fail with clear
errors. Simulated time runs fast (speed factors); each test takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from ivr.agi.server import AGIServer
from ivr.config import default_config
from ivr.demo import start_of_demo_day
from ivr.domain.events import CallEvent
from ivr.domain.ivr_ops import CallInfo, Clock, Decision, EventSink, Flow
from ivr.domain.queue_log import QueueLogEntry, parse_queue_log
from ivr.domain.scripts import default_flows
from ivr.protocol.ami import AMIParser, Event
from ivr.sim import cli
from ivr.sim.ami_server import AMIServer
from ivr.sim.apps import SimUnsupportedError, map_endpoint
from ivr.sim.conf_loader import (
    PRODUCT_TOML,
    ConfError,
    config_from_toml,
    load_product,
    parse_extensions_conf,
    parse_queues_conf,
    product_config,
    profiles,
)
from ivr.sim.config import SimConfig, SimConfigError, load_config
from ivr.sim.dialplan import evaluate_expression, substitute
from ivr.sim.engine import OriginateRequest, Simulator
from ivr.sim.traffic import TrafficGenerator

ROOT = Path(__file__).resolve().parent.parent
DIALPLAN = ROOT / "dialplans" / "extensions.conf"
QUEUES = ROOT / "asterisk-conf" / "queues.conf"
SECRET = "product-test"
SPEED = 60.0


# -- loading the shipped files --------------------------------------------------------------------


def _declared_contexts() -> set[str]:
    """Every [context] of dialplans/*.conf, read with a plain regex (not the loader)."""
    names: set[str] = set()
    for path in (ROOT / "dialplans").glob("*.conf"):
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\s*\[([^\]]+)\]", line)
            if m:
                names.add(m[1])
    return names - {"general", "globals"}


def _priority_lines() -> int:
    count = 0
    for path in (ROOT / "dialplans").glob("*.conf"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"\s*(exten|same)\s*=>", line) and ",hint," not in line:
                count += 1
    return count


def test_the_shipped_dialplan_loads_with_every_context() -> None:
    conf = parse_extensions_conf(DIALPLAN)
    assert set(conf.contexts) == _declared_contexts()
    assert sum(len(s) for ext in conf.contexts.values() for s in ext.values()) == _priority_lines()
    assert {p.name for p in conf.files} == {p.name for p in (ROOT / "dialplans").glob("*.conf")}
    assert conf.globals["IVR_AGI_HOST"] == "127.0.0.1"
    assert conf.globals["IVR_DEFAULT_QTIMEOUT"] == "900"
    assert conf.globals["CLI_france-travail"] == "0199000002"
    assert conf.contexts["from-trunk"]["0199000001"] == ["Set(IVR_SERVICE=caf)", "Goto(ivr-entry,${EXTEN},1)"]
    assert conf.contexts["ivr-entry"]["_X."][5] == (
        "AGI(agi://${IVR_AGI_HOST}:${IVR_AGI_PORT}/ivr?service=${IVR_SERVICE})"
    )
    assert conf.contexts["callback-dial"]["h"][0].startswith('ExecIf($["${DIALSTATUS}" != ""]?')
    # the sim cannot run Echo (from-agents *43): loading is fine, only reaching it fails
    assert "echo" in conf.apps()


def test_the_shipped_queues_load_with_their_template() -> None:
    q = parse_queues_conf(QUEUES)
    assert set(q.queues) == {"caf", "france-travail", "cpam", "carsat", "callback"}
    caf = q.queues["caf"]
    assert (caf.strategy, caf.timeout, caf.retry, caf.wrapuptime, caf.ringinuse) == (
        "rrmemory",
        15,
        2,
        10,
        False,
    )
    assert caf.context == "queue-exit" and caf.servicelevel == 60 and caf.members == ()
    assert q.autofill is True and q.shared_lastcall is True
    assert "caf.announce-frequency" in q.ignored and "general.persistentmembers" in q.ignored


def test_the_product_config_overlays_people_on_the_shipped_files() -> None:
    cfg = product_config()
    shipped = parse_extensions_conf(DIALPLAN)
    for ctx, extens in shipped.contexts.items():
        if ctx != "agents":
            assert cfg.dialplan[ctx] == extens, ctx
    assert cfg.dialplan["agents"] == {"_2XX": ["AgentPlan()"]}
    assert {"sim-callers", "sim-customers"} <= set(cfg.dialplan)
    assert cfg.endpoints == {"PJSIP/*@trunk-operator": "Local/*@sim-customers"}
    assert [m.interface for m in cfg.queues["callback"].members] == ["Local/214@agents"]
    assert all(cfg.queues[s].members for s in ("caf", "france-travail", "cpam", "carsat"))
    assert {line.exten for line in cfg.traffic.lines} == {f"019900000{i}" for i in range(1, 5)}
    assert cfg.traffic.context == "from-trunk" and cfg.traffic.enabled
    assert profiles() == ("normal", "overflow")
    overflow = product_config("overflow")
    assert overflow.traffic.arrivals_per_hour > 3 * cfg.traffic.arrivals_per_hour
    # the packaged file goes through load_config too (what `start_sim(path)` uses)
    assert load_config(PRODUCT_TOML).dialplan == cfg.dialplan


# -- the conf format -------------------------------------------------------------------------------


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_conf_syntax_includes_labels_comments_and_includes(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "sub/more.conf",
        "[other]\nexten => 7,1,NoOp(from more)\n  same => n(end),Hangup()\n",
    )
    root = _write(
        tmp_path,
        "extensions.conf",
        "[general]\nstatic=yes ; ignored\n"
        "[globals]\nGREETING = hello ; a comment\nSEMI=a\\;b\n"
        ";-- a block\ncomment --;\n"
        "#include sub/more.conf\n"
        "[main]\n"
        "exten => s,1,Answer\n"
        " same => n(loop),Set(X=${GREETING})   ; trailing comment\n"
        " same => 3,Goto(loop)\n"
        "exten => s,4,NoOp,old,style\n"
        "exten => 100,hint,PJSIP/100\n"
        "include => other\n"
        "[main](+)\n"
        "exten => 8,1,Hangup()\n",
    )
    conf = parse_extensions_conf(root)
    assert conf.globals == {"GREETING": "hello", "SEMI": "a;b"}
    assert conf.contexts["main"]["s"] == [
        "Answer()",
        "loop:Set(X=${GREETING})",
        "Goto(loop)",
        "NoOp(old,style)",
    ]
    assert conf.contexts["main"]["7"] == ["NoOp(from more)", "end:Hangup()"]  # include => other
    assert conf.contexts["main"]["8"] == ["Hangup()"]
    assert "100" not in conf.contexts["main"]  # hints are not priorities


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[c]\nexten => s,1,NoOp()\n same => 3,Hangup()\n", "leaves a gap"),
        ("[c]\nexten => s,1,NoOp()\nexten => s,1,Hangup()\n", "already in use"),
        ("[c]\n same => n,NoOp()\n", "'same =>' before any 'exten =>'"),
        ("[c]\nexten => s,n,NoOp()\n", "priority 'n' before priority 1"),
        ("[c]\nexten => s,1,Set(X=${Y)\n", "unbalanced"),
        ("[c]\nfoo => bar\n", "unknown dialplan keyword"),
        ("[c]\nexten => s,1\n", "expected 'priority,App(args)'"),
        ("exten => s,1,NoOp()\n", "outside any [context]"),
        ("[c]\n#include missing.conf\n", "cannot read"),
        ("[c]\n#exec /bin/true\n", "#exec is not supported"),
        ("[c]\ninclude => nowhere\n", "no such context"),
        ("[c]\nswitch => Realtime/x\n", "not supported"),
        ("[c\n", "category without ']'"),
    ],
)
def test_bad_dialplans_are_refused_with_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, "extensions.conf", text)
    with pytest.raises(ConfError, match=re.escape(message)) as info:
        parse_extensions_conf(path)
    if "cannot read" not in message:
        assert str(path) + ":" in str(info.value)


def test_include_loops_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a.conf", "#include b.conf\n")
    _write(tmp_path, "b.conf", "#include a.conf\n")
    with pytest.raises(ConfError, match="includes itself"):
        parse_extensions_conf(tmp_path / "a.conf")
    loop = _write(tmp_path, "c.conf", "[x]\ninclude => y\n[y]\ninclude => x\n")
    with pytest.raises(ConfError, match="loop"):
        parse_extensions_conf(loop)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[q]\ntimeout = soon\n", "whole number"),
        ("[q]\nringinuse = maybe\n", "yes or no"),
        ("[q]\nstrategy = fastest\n", "unknown strategy"),
        ("[q](nope)\n", "no template [nope]"),
        ("[q]\nmember => Local/201\n", "needs exten@context"),
        ("[q]\n[q]\n", "defined twice"),
    ],
)
def test_bad_queues_conf_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfError, match=re.escape(message)):
        parse_queues_conf(_write(tmp_path, "queues.conf", text))


def test_dialplan_expressions_as_the_shipped_dialplan_writes_them() -> None:
    vars_ = {"EMPTY": "", "A": "survey", "S": "france-travail", "CLI_france-travail": "0199000002"}
    vars_["EXTEN"] = "+33199000002"
    look = vars_.get
    assert substitute('${IF($["${EMPTY}" = ""]?queue:${EMPTY})}', look) == "queue"
    assert substitute('${IF($["${A}" = ""]?queue:${A})}', look) == "survey"
    assert substitute('$["${A}" != ""]?Set(X=${A})', look) == "1?Set(X=survey)"
    assert substitute("${CLI_${S}}", look) == "0199000002"
    assert substitute("0${EXTEN:3}", look) == "0199000002"
    assert substitute("${ISNULL(${EMPTY})}${LEN(${A})}", look) == "16"
    assert evaluate_expression("2 + 3 * 4") == "14"
    assert evaluate_expression("(2 + 3) * 4 >= 20 & 1") == "1"
    assert evaluate_expression('"b" < "a" | 0') == "0"
    assert evaluate_expression("1 ? yes :: no") == "yes"
    assert evaluate_expression("7 / 0") == ""  # Asterisk substitutes nothing after an error
    assert evaluate_expression("1 +") == ""


# -- a running simulator -----------------------------------------------------------------------------


@dataclass
class AMIReader:
    """A real AMI client over TCP that keeps every event it reads."""

    events: list[Event] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        parser = AMIParser()
        writer.write(f"Action: Login\r\nUsername: ivr\r\nSecret: {SECRET}\r\n\r\n".encode())
        logged_in = asyncio.Event()

        async def read() -> None:
            try:
                while data := await reader.read(65536):
                    parser.receive_data(data)
                    for msg in parser.events():
                        if isinstance(msg, Event):
                            self.events.append(msg)
                            self.arrived.set()
                        elif getattr(msg, "status", "") == "Success":
                            logged_in.set()
            finally:
                writer.close()

        self.task = asyncio.create_task(read())
        await asyncio.wait_for(logged_in.wait(), 5)

    async def wait_for(self, pred: Any, within: float = 20.0) -> Event:
        """The first event (read so far or to come) for which ``pred`` is true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(f"event not seen in {within} s") from None


@dataclass
class Rig:
    sim: Simulator
    ami: AMIServer
    agi: AGIServer | None
    reader: AMIReader
    agi_events: list[CallEvent]
    recorded: list[tuple[str, dict[str, str], tuple[str, ...]]]


def _recorder(recorded: list[tuple[str, dict[str, str], tuple[str, ...]]]) -> Any:
    """A FastAGI flow that records its call (script, query, args) and ends at once."""

    def factory(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        recorded.append((call.script, dict(call.query), call.args))
        return Decision(action="hangup", service=call.query.get("service", ""), lang="fr")
        yield  # pragma: no cover - makes this a generator

    return factory


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port where nothing listens (bound, not listening): connect() is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def _rig(cfg: SimConfig, *, agi: bool, port: int = 0, speed: float = SPEED) -> Rig:
    sim = Simulator(cfg, seed=5, speed=speed, start_epoch=start_of_demo_day(time.time()))
    for ext in range(201, 215):
        sim.globals[f"DEF{ext}"] = "2:20"  # every agent: rings 2 s, talks 20 s
    agi_events: list[CallEvent] = []
    recorded: list[tuple[str, dict[str, str], tuple[str, ...]]] = []
    server: AGIServer | None = None
    if agi:
        flows = default_flows(default_config())
        flows["callback-result"] = _recorder(recorded)
        flows["callback-greet"] = _recorder(recorded)
        server = AGIServer(
            default_config(),
            flows=flows,
            event_sink=agi_events.append,
            host="127.0.0.1",
            port=0,
            clock=sim.now,
        )
        await server.start()
        port = server.port
    sim.globals["IVR_AGI_PORT"] = str(port)
    await sim.start()
    ami = AMIServer(sim, "127.0.0.1", 0, "ivr", secret=SECRET)
    await ami.start()
    reader = AMIReader()
    await reader.start(ami.port)
    return Rig(sim, ami, server, reader, agi_events, recorded)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await _rig(product_config("normal"), agi=True)
    try:
        yield r
    finally:
        await r.ami.stop()
        await r.sim.stop()
        if r.agi is not None:
            await r.agi.stop()


def _caller(number: str, digits: str, survey: str = "4", patience: str = "600") -> OriginateRequest:
    """A call from the trunk, placed as the traffic generator places it."""
    return OriginateRequest(
        f"Local/{number}@from-trunk",
        context="sim-callers",
        exten="caller",
        cid_num="0600000001",
        cid_name="Client 1",
        variables=[("WAIT1", "6.5"), ("DIGITS", digits), ("PATIENCE", patience), ("SURVEY", survey)],
        action_id="call-1",
    )


def _queue_log(sim: Simulator) -> list[QueueLogEntry]:
    return parse_queue_log("".join(line + "\n" for line in sim.queue_log_lines))


async def test_a_call_on_the_caf_number_runs_the_shipped_ivr_queue_and_survey(rig: Rig) -> None:
    rig.sim.originate(_caller("0199000001", "3WW12345678", survey="4"))
    caller = "Local/0199000001@from-trunk-"
    hangup = await rig.reader.wait_for(
        lambda e: (
            e.name == "Hangup" and (e.get("Channel") or "").startswith(caller) and e["Channel"].endswith(";2")
        )
    )
    await rig.sim.idle(real_seconds=10)
    leg2 = hangup["Channel"]
    mine = [e for e in rig.reader.events if e.get("Channel") == leg2]
    port = rig.sim.globals["IVR_AGI_PORT"]
    agi = f"agi://127.0.0.1:{port}"
    steps = [f"{e['Application']}({e['AppData']})" for e in mine if e.name == "Newexten"]
    assert steps == [
        "Set(IVR_SERVICE=caf)",
        "Goto(ivr-entry,0199000001,1)",
        "Answer()",
        "Set(CHANNEL(language)=fr)",
        "Set(TIMEOUT(absolute)=7200)",
        "Set(DP_DEFAULT_QUEUE=caf)",
        "Set(DP_PRIO=0)",
        f"AGI({agi}/ivr?service=caf)",
        "Goto(ivr-route,queue,1)",
        "Set(DP_QUEUE=caf)",
        "Set(QUEUE_PRIO=0)",
        "Set(DP_QTIMEOUT=900)",
        "Set(CALLERID(name)=caf 12345678)",
        "Queue(caf,c,,,900)",
        "Set(IVR_ACTION=)",
        f"AGI({agi}/after-queue?service=caf&queue=caf,CONTINUE)",
        "Goto(ivr-route,survey,1)",
        "Goto(ivr-survey,s,1)",
        f"AGI({agi}/survey?service=caf&queue=caf)",
        "Hangup()",
    ]
    names = [e.name for e in mine]
    order = ["QueueCallerJoin", "AgentCalled", "QueueCallerLeave", "AgentConnect", "AgentComplete", "Hangup"]
    positions = [names.index(n) for n in order]
    assert positions == sorted(positions), names
    join = next(e for e in mine if e.name == "QueueCallerJoin")
    assert (join["Queue"], join["CallerIDName"], join["CallerIDNum"]) == ("caf", "caf 12345678", "0600000001")
    varsets = {(e["Variable"], e["Value"]) for e in mine if e.name == "VarSet"}
    assert {
        ("IVR_ACTION", "queue"),
        ("IVR_QUEUE", "caf"),
        ("IVR_CASE", "12345678"),
        ("QUEUE_PRIO", "0"),
    } <= varsets
    assert ("QUEUESTATUS", "CONTINUE") in varsets and ("IVR_ACTION", "survey") in varsets
    # the AGI commands the IVR sent, as AMI shows them
    commands = [e["Command"] for e in mine if e.name == "AGIExecStart"]
    expected = [
        'STREAM FILE fr/decroche/caf-welcome ""',
        "GET DATA fr/decroche/caf-menu-main 5000 1",
        "GET DATA fr/decroche/caf-case-number 10000 8",
        "EXEC MSet IVR_ACTION=queue,IVR_QUEUE=caf,",  # the dialplan variables, in one command
        "EXEC MSet IVR_ACTION=survey,",
        "GET DATA fr/decroche/survey-question 6000 1",
    ]
    positions = [next(i for i, c in enumerate(commands) if c.startswith(line)) for line in expected]
    assert positions == sorted(positions), commands
    # the caller's keys: 3, then (two 1 s pauses) the case number; then 4 in the survey
    dtmf = [(e["Digit"], e.timestamp or 0.0) for e in mine if e.name == "DTMFEnd"]
    assert "".join(d for d, _ in dtmf) == "3123456784"
    assert dtmf[1][1] - dtmf[0][1] >= 2.0
    # what the IVR flows recorded
    types = [(e.type, e.data.get("key"), e.data.get("reason"), e.data.get("score")) for e in rig.agi_events]
    assert ("ivr.input", "3", None, None) in types
    assert ("agent.requested", None, "conseiller", None) in types
    assert ("survey.answer", None, None, 4) in types
    start = next(e for e in rig.agi_events if e.type == "ivr.start")
    assert start.data["in_hours"] is True
    # the queue_log agrees
    lines = [q for q in _queue_log(rig.sim) if q.callid == hangup["Uniqueid"]]
    assert [q.event for q in lines] == ["ENTERQUEUE", "CONNECT", "COMPLETEAGENT"]


async def test_e164_numbers_fold_and_unknown_ones_get_unallocated(rig: Rig) -> None:
    rig.sim.originate(_caller("+33199000002", "3"))
    join = await rig.reader.wait_for(lambda e: e.name == "QueueCallerJoin")
    assert join["Queue"] == "france-travail"
    leg2 = join["Channel"]
    steps = [e["AppData"] for e in rig.reader.events if e.get("Channel") == leg2 and e.name == "Newexten"]
    assert steps[:3] == ["0199000002,1", "IVR_SERVICE=france-travail", "ivr-entry,0199000002,1"]
    rig.sim.originate(_caller("+33199000009", "3"))
    gone = await rig.reader.wait_for(
        lambda e: (
            e.name == "Hangup" and "+33199000009@from-trunk" in (e.get("Channel") or "") and e["Cause"] == "1"
        )
    )
    invalid = [
        e["Value"]
        for e in rig.reader.events
        if e.name == "VarSet" and e.get("Channel") == gone["Channel"] and e["Variable"] == "INVALID_EXTEN"
    ]
    assert invalid == ["0199000009"]


@pytest.mark.parametrize(
    ("channel", "number", "status"),
    [
        ("Local/caf@callback-queue", "0612345678", "ANSWER"),  # first free agent of the queue
        ("Local/201@agents", "0612345670", "BUSY"),  # a given agent; numbers ending in 0 are busy
    ],
    ids=["through-queue", "given-agent-busy-customer"],
)
async def test_agent_first_callbacks_follow_dp_callback(
    rig: Rig, channel: str, number: str, status: str
) -> None:
    rig.sim.originate(
        OriginateRequest(
            channel,
            context="callback-dial",
            exten=number,
            timeout_ms=60000,
            cid_num=number,
            cid_name="Rappel caf 123",
            variables=[("IVR_CALLBACK_ID", "cb-1"), ("IVR_SERVICE", "caf"), ("IVR_CASE", "123")],
            action_id="cb",
        )
    )
    response = await rig.reader.wait_for(lambda e: e.name == "OriginateResponse")
    assert (response["Response"], response["Reason"]) == ("Success", "4")
    leg1 = response["Channel"]
    end = await rig.reader.wait_for(lambda e: e.name == "DialEnd" and e.get("Channel") == leg1)
    assert end["DialStatus"] == status
    assert end["DestChannel"].startswith(f"Local/{number}@sim-customers-")
    begin = next(e for e in rig.reader.events if e.name == "DialBegin" and e.get("Channel") == leg1)
    assert begin["DialString"] == f"{number}@trunk-operator"
    # callback-cli presented the service's number, without a name
    assert (begin["CallerIDNum"], begin["CallerIDName"]) == ("0199000001", "<unknown>")
    await rig.reader.wait_for(lambda e: e.name == "Hangup" and e.get("Channel") == leg1, within=30)
    await rig.sim.idle(real_seconds=10)
    assert rig.recorded == [("callback-result", {"service": "caf"}, ("cb-1", status))]
    mine = [e for e in rig.reader.events if e.get("Channel") == leg1 and e.name == "Newexten"]
    assert [e["Exten"] for e in mine][-2:] == ["h", "h"]  # the h extension ran, then the channel went
    if channel.endswith("@callback-queue"):
        leg2 = leg1[:-1] + "2"
        join = next(e for e in rig.reader.events if e.name == "QueueCallerJoin" and e.get("Channel") == leg2)
        assert (join["Queue"], join["CallerIDName"]) == ("caf", "Rappel caf 123")
        prio = [
            e["Value"]
            for e in rig.reader.events
            if e.get("Channel") == leg2 and e.get("Variable") == "QUEUE_PRIO"
        ]
        assert prio == ["10"]  # CALLBACK_QUEUE_PRIO


async def test_caller_first_callback_greets_then_queues(rig: Rig) -> None:
    rig.sim.originate(
        OriginateRequest(
            "Local/0612345678@callback-customer",
            context="callback-caller-first",
            exten="caf",
            timeout_ms=45000,
            variables=[("IVR_CALLBACK_ID", "cb-2"), ("IVR_SERVICE", "caf"), ("IVR_PRIO", "5")],
        )
    )
    await rig.reader.wait_for(lambda e: e.name == "QueueCallerJoin")
    await rig.reader.wait_for(lambda e: e.name == "AgentConnect")
    assert rig.recorded[0] == ("callback-greet", {"service": "caf", "queue": "caf"}, ("cb-2",))
    prio = [e["Value"] for e in rig.reader.events if e.get("Variable") == "QUEUE_PRIO"]
    assert prio == ["5"]


async def test_apps_the_simulator_cannot_run_fail_only_when_reached(rig: Rig) -> None:
    with structlog.testing.capture_logs() as logs:
        rig.sim.originate(OriginateRequest("Local/*43@from-agents", application="Wait", data="1"))
        await rig.reader.wait_for(
            lambda e: e.name == "Hangup" and "*43@from-agents" in (e.get("Channel") or "")
        )
        await rig.sim.idle(real_seconds=10)
    failed = [entry for entry in logs if entry["event"] == "sim.unsupported"]
    assert [entry["app"] for entry in failed] == ["Echo"]
    assert "cannot run Echo() at from-agents,*43,2" in failed[0]["error"]
    assert not rig.sim.channels  # the call was hung up, nothing left behind
    # Dial of a PJSIP phone (from-agents 2XX) has no [endpoints] mapping: a clear error
    probe = Simulator(product_config())
    await probe.start()
    try:
        c1, _ = probe.new_local_pair("201", "agents")
        with pytest.raises(SimUnsupportedError, match=r"PJSIP channels; map them .*\[endpoints\]"):
            map_endpoint(probe, c1, "PJSIP/201")
        assert map_endpoint(probe, c1, "PJSIP/0612345678@trunk-operator") == "Local/0612345678@sim-customers"
    finally:
        await probe.stop()


async def test_timeout_absolute_and_h_run_as_asterisk_does(tmp_path: Path) -> None:
    conf = _write(
        tmp_path,
        "extensions.conf",
        "[t]\nexten => s,1,Answer()\n same => n,Set(TIMEOUT(absolute)=5)\n same => n,Wait(60)\n"
        " same => n,Hangup()\nexten => h,1,Set(AFTER=${EXTEN})\n"
        "[hold]\nexten => s,1,Wait(600)\n",
    )
    cfg = config_from_toml({"sim": {"dialplan_conf": str(conf)}})
    events: list[tuple[float, str, dict[str, str]]] = []
    sim = Simulator(cfg, speed=float("inf"), start_epoch=1_800_000_000.0)
    sim.add_listener(lambda name, headers: events.append((sim.now(), name, dict(headers))))
    await sim.start()
    try:
        sim.originate(OriginateRequest("Local/s@t", context="hold", exten="s"))
        await sim.idle(real_seconds=10)
    finally:
        await sim.stop()
    leg2 = [(t, n, h) for t, n, h in events if h.get("Channel", "").endswith(";2")]
    armed = next(t for t, n, h in leg2 if n == "Newexten" and h["AppData"] == "TIMEOUT(absolute)=5")
    hung = next(t for t, n, h in leg2 if n == "Hangup")
    assert hung - armed == pytest.approx(5.0)  # not the Wait(60)
    h_steps = [h["AppData"] for _, n, h in leg2 if n == "Newexten" and h["Exten"] == "h"]
    assert h_steps == ["AFTER=h"]
    assert [n for _, n, _ in leg2][-1] == "Hangup"


# -- traffic and profiles ------------------------------------------------------------------------------


async def test_traffic_lines_spread_calls_over_the_public_numbers() -> None:
    cfg = product_config()
    sim = Simulator(cfg, seed=3, speed=float("inf"), start_epoch=1_800_000_000.0)
    gen = TrafficGenerator(sim, seed=3)
    plans = [gen.plan(0.0) for _ in range(400)]
    again = TrafficGenerator(sim, seed=3)
    assert [again.plan(0.0) for _ in range(400)] == plans  # seeded
    counts = {line.exten: sum(p.exten == line.exten for p in plans) for line in cfg.traffic.lines}
    assert set(counts) == {"0199000001", "0199000002", "0199000003", "0199000004"}
    assert counts["0199000001"] == max(counts.values()) and min(counts.values()) > 20
    caf = next(line for line in cfg.traffic.lines if line.exten == "0199000001")
    assert {p.digits for p in plans if p.exten == "0199000001"} <= set(caf.digits)
    assert {p.survey for p in plans} <= {"1", "2", "3", "4", "5", ""}
    assert all(p.wait_before_digits == 6.5 and p.number.startswith("06") for p in plans)


async def _waits(profile: str, port: int, seconds: float) -> list[int]:
    """Queue waits (s) of a seeded run: connected, abandoned, timed out, and still waiting.

    No controller runs: every AGI() fails and the dialplan fails open to the service's queue
    (IVR_DEFAULT_QTIMEOUT). The callers key nothing: their menu keys would reach app_queue,
    where 1 is the exit key of queue-exit (so nobody takes a callback either).
    """
    cfg = product_config(profile)
    lines = tuple(replace(line, digits=("",), digit_weights=(1.0,)) for line in cfg.traffic.lines)
    cfg.traffic = replace(cfg.traffic, lines=lines, callback_share=0.0)
    sim = Simulator(cfg, seed=11, speed=600.0, start_epoch=1_800_000_000.0)
    sim.globals["IVR_AGI_PORT"] = str(port)
    await sim.start()
    task = asyncio.create_task(TrafficGenerator(sim).run())
    try:
        await sim.run_for(seconds)
        now = int(sim.now())
        waiting = [now - e.start for q in sim.queues.ordered() for e in q.entries]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()
    waits: list[int] = []
    for entry in _queue_log(sim):
        data = entry.data
        if entry.event == "CONNECT":
            waits.append(int(data[0]))
        elif entry.event in ("ABANDON", "EXITWITHTIMEOUT"):
            waits.append(int(data[2]))
    return waits + waiting


async def test_a_seeded_overflow_run_makes_callers_wait_long(closed_port: int) -> None:
    overflow = await _waits("overflow", closed_port, 1800)
    normal = await _waits("normal", closed_port, 1800)
    assert len(overflow) > 2 * len(normal) > 0
    assert max(overflow) >= 600
    assert sum(w >= 300 for w in overflow) >= 20
    assert sorted(normal)[len(normal) // 2] < 60  # the normal profile's median wait is short


# -- bad configurations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[members]\ncaf = ['Local/999@nowhere']\n", "has no extension 999 in [nowhere]"),
        ("[members]\nnope = ['Local/201@agents']\n", "no queue 'nope'"),
        ("[members]\ncaf = ['Local/201@agents', 'Local/201@agents']\n", "twice"),
        (
            "[traffic]\nenabled = true\ncontext = 'from-trunk'\nexten = '0100000000'\n",
            "no extension 0100000000",
        ),
        ("[endpoints]\n'PJSIP/*' = 'Local/*@nowhere'\n", "no dialplan context [nowhere]"),
        ("[endpoints]\n'PJSIP/*' = 'PJSIP/*'\n", "must be a Local channel"),
        ("[profiles.x]\nsim = { dialplan_conf = 'y' }\n", "cannot change"),
        ("[dialplan.agents]\n'_2XX' = ['Bad(']\n", "App(args)"),
        ("[queues.caf]\nstrategy = 'fastest'\n", "unknown strategy"),
        ("[traffic]\nsurvey = ['5', '']\nsurvey_weights = [0, 0]\n", "at least one weight"),
        ("[traffic]\nlines = [{ exten = '0199000001', digits = ['3x'] }]\n", "not a DTMF string"),
        (
            "[traffic]\ncallback_share = 1.5\n",
            "traffic.callback_share is a share of the callers, from 0 to 1",
        ),
        ("[traffic]\ncallback_share = -0.1\n", "traffic.callback_share"),
        ("[traffic]\ncallback_keys = '1 then 1'\n", "traffic.callback_keys: '1 then 1' is not a DTMF string"),
        (
            "[traffic]\nlines = [{ exten = '0199000001', digits = ['3'], digit_weights = [1, 2] }]\n",
            "one weight",
        ),
    ],
)
def test_bad_product_configs_fail_clearly(tmp_path: Path, extra: str, message: str) -> None:
    base = f"[sim]\ndialplan_conf = '{DIALPLAN}'\nqueues_conf = '{QUEUES}'\n"
    path = _write(tmp_path, "sim.toml", base + extra)
    profile = "x" if "[profiles.x]" in extra else None
    with pytest.raises(SimConfigError, match=re.escape(message)):
        load_product(path, profile)


def test_missing_conf_files_and_unknown_profiles_fail_clearly(tmp_path: Path) -> None:
    path = _write(tmp_path, "sim.toml", "[sim]\ndialplan_conf = 'missing/extensions.conf'\n")
    with pytest.raises(ConfError, match=r"cannot read .*missing/extensions.conf"):
        load_product(path)
    with pytest.raises(SimConfigError, match=r"unknown profile 'busy' \(profiles: normal, overflow\)"):
        product_config("busy")
    plain = _write(tmp_path, "plain.toml", "[sim]\nversion = '22.1.0'\n")
    assert load_product(plain).version == "22.1.0"  # a plain config still works (rig defaults)
    with pytest.raises(SimConfigError, match="has no \\[profiles\\]"):
        load_product(plain, "normal")


# -- ivr sim ------------------------------------------------------------------------------------------


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    return cli.run(parser.parse_args(["sim", *argv]))


def test_cli_rejects_bad_input_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "bad.toml", "[sim\n")
    cases = [
        (["--config", str(bad)], "invalid TOML"),
        (["--config", str(tmp_path / "none.toml")], "cannot read"),
        (["--profile", "busy"], "unknown profile"),
        (["--agi", "localhost"], "--agi must be HOST:PORT"),
        (["--agi", "localhost:70000"], "--agi must be HOST:PORT"),
        (["--speed", "0"], "--speed must be"),
        (["--duration", "-1"], "--duration must be"),
        (["--secret", ""], "--secret must not be empty"),
    ]
    for argv, message in cases:
        assert _cli(*argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_cli_runs_the_product_for_a_while(closed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli(
        "--profile", "overflow", "--duration", "300", "--speed", "600", "--ami-port", "0",
        "--agi", f"127.0.0.1:{closed_port}", "--seed", "2",
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert f"FastAGI to 127.0.0.1:{closed_port}" in err
    calls = int(re.search(r"(\d+) calls originated", err)[1])  # type: ignore[index]
    assert calls >= 10
