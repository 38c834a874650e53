"""The simulator engine: virtual clock, dialplan model, config, FastAGI client, app_queue
semantics and manager actions, each checked against what Asterisk 22 does.

Scenario-level fidelity (the recorded transcripts) is in ``test_sim_scenarios.py`` and the
queue_log in ``test_sim_queue_log.py``; here each feature is exercised on its own, with the
exact replies and events Asterisk gives (res/res_agi.c, apps/app_queue.c, main/manager.c).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from rigs import action

from ivr.sim.api import ActionResult, Engine, Headers, HeaderTest, SelectiveEngine
from ivr.sim.clock import Scheduler
from ivr.sim.config import SimConfig, SimConfigError, default_config, load_config, parse_config
from ivr.sim.dialplan import Dialplan, match_pattern, parse_step, substitute
from ivr.sim.engine import OriginateRequest, Simulator
from ivr.sim.traffic import TrafficGenerator

EPOCH = 1_800_000_000.0
#: FastAGI round trips take real time, i.e. ``speed`` times more virtual time: keep it low
#: where a test races the IVR against the caller's DTMF.
AGI_SPEED = 20.0

# -- helpers ---------------------------------------------------------------------------------------


def h(headers: Headers, key: str) -> str | None:
    for k, v in headers:
        if k == key:
            return v
    return None


class Recorder:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.events: list[tuple[float, str, Headers]] = []
        sim.add_listener(self)

    def __call__(self, name: str, headers: Headers) -> None:
        self.events.append((self.sim.now() - EPOCH, name, list(headers)))

    def named(self, *names: str) -> list[tuple[float, str, Headers]]:
        return [e for e in self.events if e[1] in names]

    def values(self, name: str, key: str) -> list[str | None]:
        return [h(e[2], key) for e in self.events if e[1] == name]

    def queuestatus(self) -> list[str | None]:
        return [
            h(e[2], "Value") for e in self.events if e[1] == "VarSet" and h(e[2], "Variable") == "QUEUESTATUS"
        ]


@asynccontextmanager
async def running(
    cfg: SimConfig, *, speed: float = math.inf, seed: int = 1
) -> AsyncIterator[tuple[Simulator, Recorder]]:
    sim = Simulator(cfg, seed=seed, speed=speed, start_epoch=EPOCH)
    rec = Recorder(sim)
    await sim.start()
    try:
        yield sim, rec
    finally:
        await sim.stop()


def caller(sim: Simulator, n: int, exten: str = "100", *, script: str = "patient", **variables: str) -> None:
    """Place a caller the way the recording rig did (Local/<exten>@public, caller context)."""
    sim.originate(
        OriginateRequest(
            f"Local/{exten}@public",
            context="caller",
            exten=script,
            cid_num=f"06110000{n:02d}",
            cid_name=f"Client {n}",
            variables=list(variables.items()),
            action_id=f"caller-{n}",
        )
    )


def queue_config(
    queues: dict[str, Any], public: dict[str, list[str]] | None = None, **extra: Any
) -> SimConfig:
    plan = {
        "public": public or {"100": ["Answer()", "Queue(q,c,,,${DEFAULT(QTIMEOUT,60)})", "Hangup()"]},
        "queue-exit": {"5": ["NoOp(out)", "Hangup()"]},
        "caller": {
            "patient": ["Patience(${PATIENCE})", "Hangup()"],
            "key": ["Wait(${KEY_AT})", "SendDTMF(${KEY},250)", "Wait(${STAY})", "Hangup()"],
        },
        "agents": {"_2XX": ["AgentPlan()"]},
    }
    # ringinuse = yes is app_queue's default; call centres (and the rig) set it to no
    queues = {name: {"ringinuse": False, **body} for name, body in queues.items()}
    return parse_config({"dialplan": plan, "queues": queues, "globals": extra.pop("globals", {}), **extra})


# -- clock -------------------------------------------------------------------------------------------


async def test_virtual_time_runs_speed_times_faster() -> None:
    clock = Scheduler(EPOCH, speed=200.0)
    clock.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await clock.sleep(10.0)  # 10 virtual seconds = 50 ms
    elapsed = loop.time() - t0
    clock.stop()
    assert clock.now() == pytest.approx(EPOCH + 10.0)
    assert 0.045 <= elapsed < 1.0


async def test_timers_fire_in_due_order_with_exact_timestamps() -> None:
    clock = Scheduler(EPOCH, speed=math.inf)
    clock.start()
    seen: list[tuple[str, float]] = []
    for name, delay in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0)):
        clock.call_later(delay, lambda n=name: seen.append((n, clock.now())))
    await clock.sleep(5.0)
    clock.stop()
    assert seen == [("a", EPOCH + 1), ("a2", EPOCH + 1), ("b", EPOCH + 2), ("c", EPOCH + 3)]


async def test_external_inputs_never_overtake_pending_timers() -> None:
    clock = Scheduler(EPOCH, speed=1000.0)
    clock.start()
    clock.call_later(1.0, lambda: None)
    time.sleep(0.01)  # noqa: ASYNC251 - block the loop: 10 virtual seconds pass, the timer cannot run
    assert clock.sync_external() == EPOCH + 1.0
    await clock.sleep(0)
    time.sleep(0.01)  # noqa: ASYNC251
    assert clock.sync_external() > EPOCH + 5.0  # nothing pending any more: wall-clock time
    clock.stop()


def test_speed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="speed"):
        Scheduler(EPOCH, speed=0)


# -- dialplan model ------------------------------------------------------------------------------------


def test_extension_patterns_prefer_exact_then_most_specific() -> None:
    plan = Dialplan(
        {
            "agents": {"_2XX": ["NoOp(a)"], "_29X": ["NoOp(b)"], "205": ["NoOp(c)"]},
            "cb": {"_X.": ["NoOp(x)"], "_06XXXXXXXX": ["NoOp(y)"], "0600000486": ["Busy(10)"]},
        }
    )
    assert plan.find("agents", "291") == "_29X"
    assert plan.find("agents", "201") == "_2XX"
    assert plan.find("agents", "205") == "205"
    assert plan.find("agents", "2010") is None
    assert plan.find("cb", "0600000486") == "0600000486"
    assert plan.find("cb", "0612345678") == "_06XXXXXXXX"
    assert plan.find("cb", "17") == "_X."
    assert plan.find("nowhere", "1") is None
    assert match_pattern("_[1-3]N", "14") and not match_pattern("_[1-3]N", "41")
    assert not match_pattern("_X.", "5")  # '.' needs at least one more character


def test_substitution() -> None:
    vars_ = {"CHANNEL": "Local/100@public-00000000;1", "QT": "", "X": "abc"}
    look = vars_.get
    assert substitute("${CHANNEL:0:-1}2", look) == "Local/100@public-00000000;2"
    assert substitute("${DEFAULT(QT,60)}", look) == "60"
    assert substitute("${DEFAULT(X,60)}", look) == "abc"
    assert substitute("a${MISSING}b", look) == "ab"
    assert substitute("${X:1}", look) == "bc"
    assert substitute("${X:-2}", look) == "bc"
    assert substitute("AGI(agi://h/after-queue,${X})", look) == "AGI(agi://h/after-queue,abc)"


def test_steps_parse_and_bad_steps_are_rejected() -> None:
    step = parse_step("talking:Wait(600)")
    assert (step.label, step.app, step.args) == ("talking", "Wait", "600")
    assert parse_step("Queue(support,c,,,${QT})").args == "support,c,,,${QT}"
    for bad in ("Queue", "Set(X=${Y)", "(x)", ""):
        with pytest.raises(ValueError):
            parse_step(bad)


# -- config -------------------------------------------------------------------------------------------------


def test_default_config_is_the_recording_rig() -> None:
    cfg = default_config()
    support = cfg.queues["support"]
    assert (support.strategy, support.timeout, support.retry, support.context) == (
        "rrmemory",
        15,
        2,
        "queue-exit",
    )
    assert [m.interface for m in support.members] == ["Local/201@agents", "Local/202@agents"]
    assert cfg.autofill and not support.ringinuse
    assert cfg.queues["empty"].members == () and cfg.queues["empty"].joinempty
    overflow = cfg.queues["overflow"]
    assert (overflow.timeout, overflow.retry, [m.interface for m in overflow.members]) == (
        4,
        1,
        ["Local/291@agents"],
    )
    assert set(cfg.dialplan["public"]) == {"100", "105", "107"}


def test_toml_config_is_read_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(
        '[sim]\nanswer_media_wait = 0.2\n\n[prompts]\n"fr/accueil" = 3.5\n\n'
        '[queues.caf]\nstrategy = "ringall"\ntimeout = 20\nmembers = ["Local/301@agents", '
        '{interface = "Local/302@agents", name = "Agent 302", penalty = 2}]\n\n'
        "[agents.301]\nanswer_delay = [1, 2]\ntalk_time = 30\nno_answer = 0.1\n",
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.answer_media_wait == 0.2
    assert cfg.prompt_seconds("fr/accueil") == 3.5
    assert cfg.prompt_seconds("unknown") == cfg.default_prompt_seconds
    caf = cfg.queues["caf"]
    assert (
        caf.strategy == "ringall" and caf.members[1].membername == "Agent 302" and caf.members[1].penalty == 2
    )
    assert cfg.agents["301"].talk_time == (30.0, 30.0)
    assert "public" in cfg.dialplan  # untouched tables keep the rig's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sim]\nspeedy = 1\n", "sim.speedy"),
        ('[queues.q]\nstrategy = "fastest"\n', "unknown strategy"),
        ('[queues.q]\nmembers = ["201"]\n', "Local/201@agents"),
        ('[queues.q]\njoinempty = "sometimes"\n', "joinempty"),
        ("[queues.q]\ntimeout = -1\n", "queues.q.timeout"),
        ('[queues.q]\ncontext = "nowhere"\n', "no dialplan context"),
        ('[dialplan.public]\n"100" = ["Answer"]\n', "dialplan.public.100 step 1"),
        ("[agents.201]\nno_answer = 2\n", "probability"),
        ('[traffic]\ndigits = ["1x"]\n', "DTMF"),
        ("[nonsense]\n", "unknown top-level"),
        ("not toml = = 1", "invalid TOML"),
    ],
)
def test_bad_config_gets_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SimConfigError, match=message):
        load_config(path)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SimConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


# -- channels and ids ------------------------------------------------------------------------------------


async def test_listeners_get_only_the_events_their_interest_takes() -> None:
    """A listener with an interest is handed only what it may take; the full-stream
    listener beside it still sees everything, and every event is counted."""
    cfg = queue_config({"q": {"members": ["Local/201@agents"]}}, globals={"PLAN201": "1:2"})
    asked: list[tuple[str, str]] = []
    plain: list[tuple[str, Headers]] = []
    by_name: list[str] = []
    by_variable: list[str | None] = []
    by_channel: list[tuple[str, str | None]] = []

    def names(name: str, privilege: str) -> bool:
        asked.append((name, privilege))
        return name in ("Newchannel", "Hangup")

    def variable(name: str, privilege: str) -> bool | HeaderTest:
        if name != "VarSet":
            return False
        return HeaderTest(frozenset({"Variable"}), lambda headers: h(headers, "Variable") == "QUEUESTATUS")

    def channel(name: str, privilege: str) -> bool | HeaderTest:
        # reads a header the engine adds itself (the snapshot): it must get every such
        # event and decide for itself
        return name == "Newstate" and HeaderTest(frozenset({"Channel"}), lambda headers: False)

    async with running(cfg) as (sim, rec):
        assert isinstance(sim, SelectiveEngine)
        sim.add_listener(lambda name, headers: plain.append((name, headers)))
        sim.add_listener(lambda name, headers: by_name.append(name), names)
        sim.add_listener(lambda name, headers: by_variable.append(h(headers, "Value")), variable)
        sim.add_listener(lambda name, headers: by_channel.append((name, h(headers, "Channel"))), channel)
        for n in range(3):
            caller(sim, n, PATIENCE="40")
        await sim.run_for(60)
        assert len(set(asked)) == len(asked)  # asked once per name and class
        before = len(asked)
        sim.interest_changed()
        caller(sim, 9, PATIENCE="40")
        await sim.run_for(60)
    assert ("Newchannel", "call,all") in asked[:before] and ("Newchannel", "call,all") in asked[before:]
    assert by_name == [name for name, _ in plain if name in ("Newchannel", "Hangup")]
    assert by_name.count("Newchannel") >= 8
    statuses = [
        h(headers, "Value")
        for name, headers in plain
        if name == "VarSet" and h(headers, "Variable") == "QUEUESTATUS"
    ]
    assert by_variable == statuses and statuses
    assert by_channel == [
        ("Newstate", h(headers, "Channel")) for name, headers in plain if name == "Newstate"
    ]
    assert sim.events_emitted == len(plain) == len(rec.events)


async def test_local_channel_names_uniqueids_and_linkedids() -> None:
    cfg = queue_config({"q": {"members": ["Local/201@agents"]}}, globals={"PLAN201": "1:2"})
    async with running(cfg) as (sim, rec):
        engine: Engine = sim  # the AMI front-end's contract
        assert engine.now() == EPOCH
        for n in range(12):
            caller(sim, n, PATIENCE="1")
        await sim.run_for(30)
    names = rec.values("Newchannel", "Channel")
    assert names[0] == "Local/100@public-00000000;1" and names[1] == "Local/100@public-00000000;2"
    assert "Local/100@public-0000000a;1" in names  # hexadecimal counter
    uids = rec.values("Newchannel", "Uniqueid")
    assert uids[:2] == [f"{int(EPOCH)}.0", f"{int(EPOCH)}.1"]
    for _, _, headers in rec.named("Newchannel"):
        chan, uid, link = h(headers, "Channel"), h(headers, "Uniqueid"), h(headers, "Linkedid")
        assert chan is not None and uid is not None and link is not None
        if "@public" in chan and chan.endswith(";1"):
            assert link == uid  # the originated channel starts the linked group
    # member legs are linked to their caller
    called = rec.named("AgentCalled")[0][2]
    assert h(called, "DestLinkedid") == h(called, "Linkedid")


# -- FastAGI ------------------------------------------------------------------------------------------------

Script = Callable[["AgiPeer"], Awaitable[None]]


class AgiPeer:
    """The IVR side of one FastAGI session, with raw reply lines as Asterisk writes them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.env: list[tuple[str, str]] = []

    async def read_env(self) -> None:
        while True:
            line = (await self.reader.readline()).decode().rstrip("\n")
            if not line:
                return
            key, _, value = line.partition(": ")
            self.env.append((key, value))

    async def cmd(self, line: str) -> list[str]:
        self.writer.write((line + "\n").encode())
        await self.writer.drain()
        replies: list[str] = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                return [*replies, "EOF"]
            text = raw.decode().rstrip("\n")
            replies.append(text)
            if (
                text == "HANGUP"
                or text.startswith("520-")
                or (replies[0].startswith("520-") and not text.startswith("520 "))
            ):
                continue
            return replies


@asynccontextmanager
async def agi_server(script: Script) -> AsyncIterator[tuple[str, list[AgiPeer]]]:
    peers: list[AgiPeer] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = AgiPeer(reader, writer)
        peers.append(peer)
        await peer.read_env()
        try:
            await script(peer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", peers
    finally:
        server.close()
        await server.wait_closed()


def agi_config(address: str, after: list[str] | None = None) -> SimConfig:
    cfg = queue_config(
        {"q": {"members": ["Local/201@agents"]}},
        public={
            "100": [
                "Answer()",
                f"AGI(agi://{address}/ivr?service=caf,one,two)",
                *(after or ["Queue(q,c,,,5)", "Hangup()"]),
            ]
        },
        globals={"PLAN201": "N"},
        prompts={"hello": 1.0, "menu": 2.0, "long": 10.0},
    )
    cfg.dialplan["caller"]["dtmf"] = [
        "Wait(${WAIT1})",
        "SendDTMF(${DIGITS},250)",
        "Wait(${STAY})",
        "Hangup()",
    ]
    return cfg


async def test_agi_environment_is_asterisk_22s() -> None:
    async def script(agi: AgiPeer) -> None:
        return None

    async with agi_server(script) as (address, peers):
        async with running(agi_config(address), speed=AGI_SPEED) as (sim, rec):
            caller(sim, 1, script="dtmf", WAIT1="1", DIGITS="", STAY="3")
            await sim.run_for(4)
    env = peers[0].env
    keys = [k for k, _ in env]
    assert keys == [
        "agi_network",
        "agi_network_script",
        "agi_request",
        "agi_channel",
        "agi_language",
        "agi_type",
        "agi_uniqueid",
        "agi_version",
        "agi_callerid",
        "agi_calleridname",
        "agi_callingpres",
        "agi_callingani2",
        "agi_callington",
        "agi_callingtns",
        "agi_dnid",
        "agi_rdnis",
        "agi_context",
        "agi_extension",
        "agi_priority",
        "agi_enhanced",
        "agi_accountcode",
        "agi_threadid",
        "agi_arg_1",
        "agi_arg_2",
    ]
    values = dict(env)
    assert values["agi_network_script"] == "ivr?service=caf"
    assert values["agi_request"] == f"agi://{address}/ivr?service=caf"
    assert values["agi_channel"] == "Local/100@public-00000000;2"
    assert values["agi_version"] == "22.10.1"
    assert (values["agi_callerid"], values["agi_calleridname"]) == ("0611000001", "Client 1")
    assert (values["agi_priority"], values["agi_arg_1"], values["agi_arg_2"]) == ("2", "one", "two")
    # the server closed at once: the dialplan went on into the queue
    assert rec.named("QueueCallerJoin")
    assert [h(e[2], "Value") for e in rec.named("VarSet") if h(e[2], "Variable") == "AGISTATUS"] == [
        "SUCCESS"
    ]


async def run_ivr(
    commands: list[str],
    *,
    digits: str = "",
    wait1: float = 1.0,
    stay: float = 8.0,
    after: list[str] | None = None,
    gap: float = 0.0,
) -> tuple[list[list[str]], Recorder]:
    """Run an IVR that sends ``commands`` in turn; the caller sends ``digits`` at ``wait1``."""
    replies: list[list[str]] = []

    async def script(agi: AgiPeer) -> None:
        for command in commands:
            if command.startswith("sleep "):
                await asyncio.sleep(float(command[6:]))
                continue
            replies.append(await agi.cmd(command))

    async with agi_server(script) as (address, _):
        async with running(agi_config(address, after), speed=AGI_SPEED) as (sim, rec):
            caller(sim, 1, script="dtmf", WAIT1=str(wait1), DIGITS=digits, STAY=str(stay))
            await sim.run_for(wait1 + stay + 6)
    return replies, rec


async def test_answer_stream_file_and_variables() -> None:
    replies, rec = await run_ivr(
        [
            "ANSWER",
            'STREAM FILE hello ""',
            'STREAM FILE menu "" 8000',
            "GET VARIABLE IVR_CHOICE",
            "SET VARIABLE IVR_CHOICE 3",
            "GET VARIABLE IVR_CHOICE",
            "GET VARIABLE CALLERID(num)",
            'VERBOSE "hi" 1',
            "NOOP",
        ],
        stay=6,
    )
    assert replies == [
        ["200 result=0"],
        ["200 result=0 endpos=8000"],
        ["200 result=0 endpos=16000"],
        ["200 result=0"],
        ["200 result=1"],
        ["200 result=1 (3)"],
        ["200 result=1 (0611000001)"],
        ["200 result=1"],
        ["200 result=0"],
    ]
    starts = rec.named("AGIExecStart")
    ends = rec.named("AGIExecEnd")
    assert [h(e[2], "Command") for e in starts][:2] == ["ANSWER", 'STREAM FILE hello ""']
    assert (h(ends[0][2], "ResultCode"), h(ends[0][2], "Result")) == ("200", "Success")
    # a prompt takes its playing time in virtual time
    assert ends[1][0] - starts[1][0] == pytest.approx(1.0, abs=0.15)
    assert [h(e[2], "Value") for e in rec.named("VarSet") if h(e[2], "Variable") == "IVR_CHOICE"] == ["3"]


async def test_get_data_returns_digits_partial_digits_or_a_timeout() -> None:
    # prompt "hello" (1 s) starts ~0.5 s after answer; digits "12" arrive from 1.2 s on
    replies, _ = await run_ivr(["GET DATA hello 3000 4"], digits="12")
    assert replies == [["200 result=12 (timeout)"]]
    replies, _ = await run_ivr(["GET DATA hello 3000 2"], digits="12")
    assert replies == [["200 result=12"]]
    replies, _ = await run_ivr(["GET DATA hello 3000 5"], digits="12#")
    assert replies == [["200 result=12"]]
    replies, _ = await run_ivr(["GET DATA hello 2000 1"], digits="")
    assert replies == [["200 result= (timeout)"]]


async def test_wait_for_digit() -> None:
    replies, _ = await run_ivr(["WAIT FOR DIGIT 5000", "WAIT FOR DIGIT 1000"], digits="5")
    assert replies == [["200 result=53"], ["200 result=0"]]


async def test_stream_file_escape_digit_interrupts() -> None:
    replies, _ = await run_ivr(['STREAM FILE long "#9"'], digits="9", wait1=3.0)
    (reply,) = replies[0]
    assert reply.startswith("200 result=57 endpos=")
    assert 0 < int(reply.rsplit("=", 1)[1]) < 80000


async def test_unknown_commands_and_usage() -> None:
    replies, rec = await run_ivr(["FOOBAR", "SET VARIABLE", "GET VARIABLE", "WAIT FOR DIGIT"])
    assert replies[0] == ["510 Invalid or unknown command"]
    assert replies[1] == [
        "520-Invalid command syntax.  Proper usage follows:",
        "Sets a variable to the current channel.",
        "520 End of proper usage.",
    ]
    assert replies[2][0] == replies[3][0] == "520-Invalid command syntax.  Proper usage follows:"
    ends = [(h(e[2], "ResultCode"), h(e[2], "Result")) for e in rec.named("AGIExecEnd")]
    assert ends == [
        ("510", "Invalid or unknown command"),
        ("520", "Usage"),
        ("520", "Usage"),
        ("520", "Usage"),
    ]


async def test_dead_channel_replies_after_hangup() -> None:
    """The ``agi_hangup`` recording: HANGUP once, then 511 for media, 200 for variables."""
    replies, rec = await run_ivr(
        [
            "WAIT FOR DIGIT 15000",
            "GET VARIABLE CALLERID(num)",
            'STREAM FILE beep ""',
            'VERBOSE "x" 1',
            "WAIT FOR DIGIT 1000",
            "GET DATA beep 1000 1",
            "SET VARIABLE IVR_CHOICE dead",
            "ANSWER",
        ],
        stay=2,
    )
    dead = "511 Command Not Permitted on a dead channel or intercept routine"
    assert replies == [
        ["200 result=-1"],
        ["HANGUP", "200 result=1 (0611000001)"],
        [dead],
        ["200 result=1"],
        [dead],
        [dead],
        ["200 result=1"],
        [dead],
    ]
    assert next((h(e[2], "ResultCode"), h(e[2], "Result")) for e in rec.named("AGIExecEnd")) == (
        "-1",
        "Failure",
    )
    # the dialplan stops after an AGI on a dead channel: no queue
    assert not rec.named("QueueCallerJoin")
    assert [h(e[2], "Value") for e in rec.named("VarSet") if h(e[2], "Variable") == "AGISTATUS"] == ["HANGUP"]


async def test_unreachable_agi_server_fails_and_the_dialplan_continues() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with running(agi_config(f"127.0.0.1:{port}"), speed=AGI_SPEED) as (sim, rec):
        caller(sim, 1, script="dtmf", WAIT1="1", DIGITS="", STAY="2")
        await sim.run_for(4)
    assert [h(e[2], "Value") for e in rec.named("VarSet") if h(e[2], "Variable") == "AGISTATUS"] == [
        "FAILURE"
    ]
    assert not rec.named("AGIExecStart")
    assert rec.named("QueueCallerJoin")


async def test_exec_runs_dialplan_applications() -> None:
    replies, rec = await run_ivr(
        ["EXEC Playback hello", "EXEC NoSuchApp x", "EXEC Set IVR_X=1", "GET VARIABLE IVR_X"]
    )
    assert replies == [["200 result=0"], ["200 result=-2"], ["200 result=0"], ["200 result=1 (1)"]]
    starts = rec.named("AGIExecStart")
    ends = rec.named("AGIExecEnd")
    assert ends[0][0] - starts[0][0] == pytest.approx(1.0, abs=0.2)  # the prompt played


async def test_exec_mset_sets_each_variable_and_the_dialplan_reads_them() -> None:
    """``EXEC MSet``: ``200 result=0`` (handle_exec, res/res_agi.c), then each pair as SET
    VARIABLE would set it, one VarSet each, in order; an empty value is set, not unset."""
    replies, rec = await run_ivr(
        [
            "EXEC MSet IVR_QUEUE=q,IVR_SERVICE=caf,IVR_CASE=,IVR_LANG=fr,IVR_TAIL=",
            "GET VARIABLE IVR_QUEUE",
            "GET VARIABLE IVR_CASE",
            "GET VARIABLE IVR_TAIL",
            "GET VARIABLE IVR_UNSET",
        ],
        after=[
            "Set(CALLERID(name)=${IVR_SERVICE}/${IVR_CASE}/${IVR_LANG})",
            "Queue(${IVR_QUEUE},c,,,5)",
            "Hangup()",
        ],
    )
    assert replies == [
        ["200 result=0"],
        ["200 result=1 (q)"],
        ["200 result=1 ()"],
        ["200 result=1 ()"],
        ["200 result=0"],
    ]
    varsets = [(h(e[2], "Variable"), h(e[2], "Value")) for e in rec.named("VarSet")]
    assert [v for v in varsets if (v[0] or "").startswith("IVR_")] == [
        ("IVR_QUEUE", "q"),
        ("IVR_SERVICE", "caf"),
        ("IVR_CASE", ""),
        ("IVR_LANG", "fr"),
        ("IVR_TAIL", ""),
    ]
    ends = [(h(e[2], "Command"), h(e[2], "ResultCode")) for e in rec.named("AGIExecEnd")]
    assert ends[0] == ("EXEC MSet IVR_QUEUE=q,IVR_SERVICE=caf,IVR_CASE=,IVR_LANG=fr,IVR_TAIL=", "200")
    # The dialplan after the AGI sees them: the queue named by IVR_QUEUE, with the caller's name.
    (join,) = rec.named("QueueCallerJoin")
    assert (h(join[2], "Queue"), h(join[2], "CallerIDName")) == ("q", "caf//fr")


async def test_exec_mset_parses_its_argument_as_asterisk_does() -> None:
    """Commas split the pairs outside quotes and brackets; quotes and backslashes are removed
    (``__ast_app_separate_args``, main/app.c); each pair splits on its first ``=``; an item
    without ``=`` is skipped (``pbx_builtin_setvar_multiple``, main/pbx_variables.c)."""
    replies, _ = await run_ivr(
        [
            'EXEC MSet "IVR_A=\\"x,y\\",IVR_B=f(1,2),IVR_C=p\\\\,q,IVR_D=k=v,junk,IVR_E="',
            "GET VARIABLE IVR_A",
            "GET VARIABLE IVR_B",
            "GET VARIABLE IVR_C",
            "GET VARIABLE IVR_D",
            "GET VARIABLE IVR_E",
            "GET VARIABLE junk",
            "EXEC mset",
        ]
    )
    assert replies == [
        ["200 result=0"],
        ["200 result=1 (x,y)"],
        ["200 result=1 (f(1,2))"],
        ["200 result=1 (p,q)"],
        ["200 result=1 (k=v)"],
        ["200 result=1 ()"],
        ["200 result=0"],
        ["200 result=0"],  # no pairs: a warning on Asterisk's console, and 0
    ]


async def test_garbage_from_the_agi_server_is_survived() -> None:
    async def script(agi: AgiPeer) -> None:
        agi.writer.write(b"\xff\x01 nonsense\n")  # not UTF-8, not a command
        assert (await agi.reader.readline()) == b"510 Invalid or unknown command\n"
        agi.writer.write(b"VERBOSE " + b"x" * 40000 + b"\n")  # longer than Asterisk ever reads
        await agi.writer.drain()
        await agi.reader.read()  # the simulator hangs up on us

    async with agi_server(script) as (address, _):
        async with running(agi_config(address), speed=AGI_SPEED) as (sim, rec):
            caller(sim, 1, script="dtmf", WAIT1="1", DIGITS="", STAY="4")
            await sim.run_for(4)
    assert [h(e[2], "Value") for e in rec.named("VarSet") if h(e[2], "Variable") == "AGISTATUS"] == [
        "FAILURE"
    ]
    assert rec.named("QueueCallerJoin")  # the dialplan went on


async def test_an_unknown_queue_sets_queuestatus_unknown() -> None:
    cfg = queue_config(
        {"q": {"members": ["Local/201@agents"]}},
        public={"100": ["Answer()", "Queue(nosuch,c,,,5)", "Hangup()"]},
    )
    async with running(cfg) as (sim, rec):
        caller(sim, 1, PATIENCE="5")
        await sim.run_for(3)
    assert rec.queuestatus() == ["UNKNOWN"]
    assert not rec.named("QueueCallerJoin")


async def test_after_queue_agi_gets_queuestatus_as_argument() -> None:
    seen: list[list[tuple[str, str]]] = []

    async def script(agi: AgiPeer) -> None:
        seen.append(agi.env)

    async with agi_server(script) as (address, _):
        cfg = agi_config(address, ["Queue(q,c,,,3)", f"AGI(agi://{address}/after-queue,${{QUEUESTATUS}})"])
        async with running(cfg, speed=AGI_SPEED) as (sim, _rec):
            caller(sim, 1, script="dtmf", WAIT1="1", DIGITS="", STAY="8")
            await sim.run_for(9)
    assert dict(seen[1])["agi_network_script"] == "after-queue"
    assert dict(seen[1])["agi_arg_1"] == "TIMEOUT"


# -- app_queue ---------------------------------------------------------------------------------------


async def test_rrmemory_alternates_starting_with_the_first_member() -> None:
    cfg = queue_config(
        {
            "q": {
                "strategy": "rrmemory",
                "members": ["Local/201@agents", "Local/202@agents"],
                "ringinuse": False,
            }
        },
        globals={"DEF201": "1:2", "DEF202": "1:2"},
    )
    async with running(cfg) as (sim, rec):
        for n in range(4):
            caller(sim, n, PATIENCE="30")
            await sim.run_for(10)
    assert rec.values("AgentConnect", "MemberName") == ["Local/201@agents", "Local/202@agents"] * 2


async def test_ringall_rings_everyone_and_cancels_the_others() -> None:
    cfg = queue_config(
        {"q": {"strategy": "ringall", "members": ["Local/201@agents", "Local/202@agents"]}},
        globals={"DEF201": "3:2", "DEF202": "1:2"},
    )
    async with running(cfg) as (sim, rec):
        caller(sim, 1, PATIENCE="20")
        await sim.run_for(20)
    assert sorted(v or "" for v in rec.values("AgentCalled", "MemberName")) == [
        "Local/201@agents",
        "Local/202@agents",
    ]
    assert rec.values("AgentConnect", "MemberName") == ["Local/202@agents"]
    ends = [
        (h(e[2], "DestChannel"), h(e[2], "DialStatus")) for e in rec.named("DialEnd") if h(e[2], "Channel")
    ]
    assert ("Local/202@agents-00000002;1", "ANSWER") in ends
    assert ("Local/201@agents-00000001;1", "CANCEL") in ends


async def test_queue_prio_puts_callers_ahead() -> None:
    cfg = queue_config(
        {"q": {"members": ["Local/201@agents"]}},
        globals={"DEF201": "1:5"},
        public={
            "100": ["Answer()", "Queue(q,c,,,120)", "Hangup()"],
            "101": ["Answer()", "Set(QUEUE_PRIO=10)", "Queue(q,c,,,120)", "Hangup()"],
        },
    )
    async with running(cfg) as (sim, rec):
        caller(sim, 1, PATIENCE="60")  # connected at once, the member is then busy
        await sim.run_for(2)
        caller(sim, 2, PATIENCE="60")
        await sim.run_for(1)
        caller(sim, 3, "101", PATIENCE="60")
        await sim.run_for(60)
    joins = [
        (h(e[2], "CallerIDNum"), h(e[2], "Position"), h(e[2], "Count")) for e in rec.named("QueueCallerJoin")
    ]
    assert joins == [("0611000001", "1", "1"), ("0611000002", "1", "1"), ("0611000003", "1", "2")]
    assert rec.values("AgentConnect", "CallerIDNum") == ["0611000001", "0611000003", "0611000002"]


async def test_paused_members_are_not_rung_and_joinempty_refuses() -> None:
    cfg = queue_config(
        {"q": {"members": ["Local/201@agents", "Local/202@agents"], "joinempty": "paused"}},
        globals={"DEF201": "1:2", "DEF202": "1:2"},
    )
    async with running(cfg) as (sim, rec):
        await sim.handle_action(action("QueuePause", ("Interface", "Local/201@agents"), ("Paused", "true")))
        caller(sim, 1, PATIENCE="10")
        await sim.run_for(8)
        await sim.handle_action(action("QueuePause", ("Interface", "Local/202@agents"), ("Paused", "true")))
        caller(sim, 2, PATIENCE="10")
        await sim.run_for(5)
    assert rec.values("AgentCalled", "MemberName") == ["Local/202@agents"]
    assert rec.queuestatus() == ["CONTINUE", "JOINEMPTY"]
    assert not [line for line in sim.queue_log_lines if "0611000002" in line]  # no ENTERQUEUE for JOINEMPTY


async def test_leavewhenempty_exits_waiting_callers() -> None:
    cfg = queue_config(
        {"q": {"members": ["Local/201@agents"], "leavewhenempty": "paused"}}, globals={"DEF201": "N"}
    )
    async with running(cfg) as (sim, rec):
        caller(sim, 1, PATIENCE="60")
        await sim.run_for(20)  # 201 rings 15 s, no answer, retry
        await sim.handle_action(
            action(
                "QueuePause",
                ("Queue", "q"),
                ("Interface", "Local/201@agents"),
                ("Paused", "1"),
                ("Reason", "gone"),
            )
        )
        await sim.run_for(10)
    events = [line.split("|")[4] for line in sim.queue_log_lines]
    assert events[-2:] == ["PAUSE", "EXITEMPTY"]
    assert rec.queuestatus() == ["LEAVEEMPTY"]


async def test_wrapuptime_keeps_a_member_free_of_calls() -> None:
    cfg = queue_config(
        {"q": {"members": ["Local/201@agents"], "wrapuptime": 10, "retry": 1}}, globals={"DEF201": "1:2"}
    )
    async with running(cfg) as (sim, rec):
        caller(sim, 1, PATIENCE="30")
        caller(sim, 2, PATIENCE="40")
        await sim.run_for(40)
    connects = rec.named("AgentConnect")
    completes = rec.named("AgentComplete")
    assert len(connects) == 2
    # the second call is offered only once the 10 s of wrap-up after the first are over
    called_second = [e for e in rec.named("AgentCalled")][1]
    assert called_second[0] - completes[0][0] >= 10 - 1


async def test_queue_timeout_is_an_abandon_on_ami_but_timeout_in_the_queue_log() -> None:
    cfg = queue_config(
        {"q": {"members": ["Local/201@agents"], "timeout": 15}},
        globals={"DEF201": "N"},
        public={"100": ["Answer()", "Queue(q,c,,,10)", "Hangup()"]},
    )
    async with running(cfg) as (sim, rec):
        caller(sim, 1, PATIENCE="60")
        await sim.run_for(15)
    assert rec.values("AgentRingNoAnswer", "RingTime") == ["10000"]
    assert rec.values("QueueCallerAbandon", "HoldTime") == ["10"]
    assert rec.queuestatus() == ["TIMEOUT"]
    assert [line.split("|", 4)[4] for line in sim.queue_log_lines[-2:]] == [
        "RINGNOANSWER|10000",
        "EXITWITHTIMEOUT|1|1|10",
    ]
    dial_ends = [h(e[2], "DialStatus") for e in rec.named("DialEnd") if h(e[2], "Channel")]
    assert dial_ends == ["NOANSWER", "CANCEL"]


async def test_exit_with_a_key_of_the_queue_context() -> None:
    cfg = queue_config(
        {"q": {"members": ["Local/201@agents"], "context": "queue-exit"}}, globals={"DEF201": "N"}
    )
    async with running(cfg) as (sim, rec):
        caller(sim, 1, script="key", KEY_AT="2", KEY="7", STAY="2")  # 7: no such extension in queue-exit
        await sim.run_for(8)
        caller(sim, 2, script="key", KEY_AT="3", KEY="5", STAY="5")
        await sim.run_for(10)
    by_caller: dict[str, list[str]] = {}
    for line in sim.queue_log_lines[1:]:
        fields = line.split("|")
        by_caller.setdefault(fields[1], []).append("|".join(fields[4:]))
    first, second = by_caller.values()
    assert first[-1].startswith("ABANDON|1|1|")  # the wrong key was ignored, the caller gave up
    assert second[-2].startswith("RINGCANCELED|")  # the member was ringing when the key came
    assert second[-1].startswith("EXITWITHKEY|5|1|1|")
    assert rec.queuestatus() == []  # unset after an exit with a key and after an abandon
    out = [
        (h(e[2], "Context"), h(e[2], "Exten"), h(e[2], "AppData"))
        for e in rec.named("Newexten")
        if h(e[2], "Context") == "queue-exit"
    ]
    assert out[0] == ("queue-exit", "5", "out")


async def test_autofill_offers_several_callers_at_once() -> None:
    # ringall counts one available member at most (num_available_members): use rrmemory
    members = {"members": ["Local/201@agents", "Local/202@agents"], "strategy": "rrmemory"}
    for autofill, expect_parallel in ((True, True), (False, False)):
        cfg = queue_config(
            {"q": {**members, "autofill": autofill}}, globals={"DEF201": "4:5", "DEF202": "4:5"}
        )
        async with running(cfg) as (sim, rec):
            caller(sim, 1, PATIENCE="30")
            caller(sim, 2, PATIENCE="30")
            await sim.run_for(3)
        calls = rec.values("AgentCalled", "CallerIDNum")
        assert ("0611000002" in calls) is expect_parallel


# -- manager actions --------------------------------------------------------------------------------------


async def test_action_errors_have_asterisks_texts() -> None:
    async with running(default_config()) as (sim, _):

        async def ask(name: str, *pairs: tuple[str, str]) -> ActionResult:
            return await sim.handle_action(action(name, *pairs))

        cases = [
            (
                await ask("FooBar"),
                "Invalid/unknown command: FooBar. Use Action: ListCommands to show available commands.",
            ),
            (await ask("Originate", ("Exten", "100")), "Channel not specified"),
            (await ask("Originate", ("Channel", "Local/100@public"), ("Timeout", "soon")), "Invalid timeout"),
            (await ask("Originate", ("Channel", "nothing")), "Invalid channel"),
            (
                await ask("Getvar", ("Channel", "Local/nope@misc-ffffffff;2"), ("Variable", "X")),
                "No such channel",
            ),
            (await ask("Hangup", ("Channel", "Local/nope@misc-ffffffff;2")), "No such channel"),
            (await ask("Hangup"), "No channel specified"),
            (
                await ask("QueueRemove", ("Queue", "support"), ("Interface", "Local/299@agents")),
                "Unable to remove interface: Not there",
            ),
            (
                await ask("QueuePause", ("Interface", "Local/299@agents"), ("Paused", "true")),
                "Interface not found",
            ),
            (
                await ask("QueuePenalty", ("Interface", "Local/201@agents"), ("Penalty", "-3")),
                "Invalid interface, queuename or penalty",
            ),
            (
                await ask("QueueAdd", ("Queue", "nosuch"), ("Interface", "Local/209@agents")),
                "Unable to add interface to queue: No such queue",
            ),
            (
                await ask("QueueRemove", ("Queue", "support"), ("Interface", "Local/201@agents")),
                "Member not dynamic",
            ),
        ]
        for result, message in cases:
            assert result.status == "Error"
            assert result.headers == [("Message", message)]
        unset = await ask("Getvar", ("Variable", "NOT_SET_ANYWHERE"))
        assert (unset.status, unset.headers) == ("Success", [("Variable", "NOT_SET_ANYWHERE"), ("Value", "")])
        bad = await ask("Command", ("Command", "frobnicate now"))
        assert (
            bad.status == "Error"
            and h(
                bad.headers,
                "Output",
            )
            is not None
        )


async def test_member_admin_writes_queue_log_and_events() -> None:
    async with running(default_config()) as (sim, rec):
        ok = await sim.handle_action(
            action(
                "QueueAdd",
                ("Queue", "support"),
                ("Interface", "Local/203@agents"),
                ("MemberName", "Agent 203"),
                ("Penalty", "0"),
            )
        )
        again = await sim.handle_action(
            action("QueueAdd", ("Queue", "support"), ("Interface", "Local/203@agents"))
        )
        await sim.handle_action(
            action("QueuePause", ("Interface", "Local/201@agents"), ("Paused", "true"), ("Reason", "meeting"))
        )
        await sim.handle_action(action("QueuePause", ("Interface", "Local/201@agents"), ("Paused", "false")))
        await sim.handle_action(action("QueuePenalty", ("Interface", "Local/203@agents"), ("Penalty", "3")))
        status = await sim.handle_action(action("QueueStatus", ("Queue", "support")))
        await sim.handle_action(
            action("QueueRemove", ("Queue", "support"), ("Interface", "Local/203@agents"))
        )
    assert ok.headers == [("Message", "Added interface to queue")]
    assert again.headers == [("Message", "Unable to add interface: Already there")]
    tails = ["|".join(line.split("|")[1:]) for line in sim.queue_log_lines[1:]]
    assert tails == [
        "MANAGER|support|Local/203@agents|ADDMEMBER|",
        "NONE|NONE|Local/201@agents|PAUSEALL|meeting",
        "NONE|support|Local/201@agents|PAUSE|meeting",
        "NONE|NONE|Local/201@agents|UNPAUSEALL|",
        "NONE|support|Local/201@agents|UNPAUSE|",
        "NONE|support|Local/203@agents|PENALTY|3",
        "MANAGER|support|Local/203@agents|REMOVEMEMBER|",
    ]
    assert [
        n
        for _, n, _ in rec.named(
            "QueueMemberAdded", "QueueMemberPause", "QueueMemberPenalty", "QueueMemberRemoved"
        )
    ] == [
        "QueueMemberAdded",
        "QueueMemberPause",
        "QueueMemberPause",
        "QueueMemberPenalty",
        "QueueMemberRemoved",
    ]
    assert status.listing is not None
    members = [
        (h(i, "Name"), h(i, "Location"), h(i, "Membership"), h(i, "Penalty"))
        for n, i in status.listing.items
        if n == "QueueMember"
    ]
    # ao2 hash order of app_queue: 203, 202, 201
    assert members == [
        ("Agent 203", "Local/203@agents", "dynamic", "3"),
        ("Local/202@agents", "Local/202@agents", "static", "0"),
        ("Local/201@agents", "Local/201@agents", "static", "0"),
    ]


async def test_originate_application_getvar_setvar_hangup() -> None:
    async with running(default_config()) as (sim, rec):
        ack = await sim.handle_action(
            action(
                "Originate",
                ("Channel", "Local/live@misc"),
                ("Application", "Wait"),
                ("Data", "40"),
                ("CallerID", '"Live" <06 12 00-00.00>'),
                ("Async", "true"),
                action_id="live-1",
            )
        )
        assert ack.headers == [("Message", "Originate successfully queued")]
        await sim.run_for(2)
        response = rec.named("OriginateResponse")[0][2]
        assert [k for k, _ in response][:4] == ["Privilege", "Timestamp", "ActionID", "Response"]
        assert (h(response, "ActionID"), h(response, "Reason"), h(response, "Application")) == (
            "live-1",
            "4",
            "Wait",
        )
        assert h(response, "CallerIDNum") == "0612000000"
        chan = "Local/live@misc-00000000;2"
        assert (
            await sim.handle_action(
                action("Setvar", ("Channel", chan), ("Variable", "IVR_TAG"), ("Value", "hello world"))
            )
        ).status == "Success"
        got = await sim.handle_action(action("Getvar", ("Channel", chan), ("Variable", "IVR_TAG")))
        assert got.headers == [("Variable", "IVR_TAG"), ("Value", "hello world")]
        channels = await sim.handle_action(action("CoreShowChannels"))
        assert channels.listing is not None and len(channels.listing.items) == 2
        hung = await sim.handle_action(
            action("Hangup", ("Channel", "Local/live@misc-00000000;1"), ("Cause", "16"))
        )
        assert hung.headers == [("Message", "Channel Hungup")]
        await sim.run_for(1)
        assert not sim.channels
    causes = [(h(e[2], "Channel"), h(e[2], "Cause")) for e in rec.named("Hangup")]
    assert sorted(causes) == [("Local/live@misc-00000000;1", "16"), ("Local/live@misc-00000000;2", "16")]


async def test_originate_failures_report_asterisks_reasons() -> None:
    async with running(default_config()) as (sim, rec):
        for aid, chan, timeout in (
            ("noanswer", "Local/291@agents", "3000"),
            ("busy", "Local/0600000486@customers", "10000"),
            ("congestion", "Local/0600000503@customers", "10000"),
            ("nosuch", "Local/999@customers", "10000"),
        ):
            await sim.handle_action(
                action(
                    "Originate",
                    ("Channel", chan),
                    ("Context", "callback"),
                    ("Exten", "0612345678"),
                    ("Priority", "1"),
                    ("Timeout", timeout),
                    ("Async", "yes"),
                    action_id=aid,
                )
            )
        await sim.run_for(5)
    reasons = {
        h(e[2], "ActionID"): (h(e[2], "Response"), h(e[2], "Reason"), h(e[2], "Channel"), h(e[2], "Uniqueid"))
        for e in rec.named("OriginateResponse")
    }
    assert reasons == {
        "noanswer": ("Failure", "3", "Local/291@agents", "<unknown>"),
        "busy": ("Failure", "5", "Local/0600000486@customers", "<unknown>"),
        "congestion": ("Failure", "8", "Local/0600000503@customers", "<unknown>"),
        "nosuch": ("Failure", "0", "Local/999@customers", "<unknown>"),
    }
    hangup_causes = {h(e[2], "Channel"): h(e[2], "Cause") for e in rec.named("Hangup")}
    assert hangup_causes["Local/291@agents-00000000;1"] == "19"
    assert hangup_causes["Local/0600000486@customers-00000001;2"] == "17"
    assert hangup_causes["Local/0600000503@customers-00000002;2"] == "34"


async def test_callback_originate_dials_the_customer_once_the_agent_answers() -> None:
    cfg = default_config()
    cfg.globals["PLAN201"] = "2:30"
    async with running(cfg) as (sim, rec):
        await sim.handle_action(
            action(
                "Originate",
                ("Channel", "Local/201@agents"),
                ("Context", "callback"),
                ("Exten", "0612345678"),
                ("Priority", "1"),
                ("Async", "true"),
                ("Variable", "IVR_CALLBACK_ID=cb-42"),
                action_id="cb-42",
            )
        )
        await sim.run_for(15)
    assert rec.values("OriginateResponse", "Reason") == ["4"]
    dial_ends = [(h(e[2], "Channel"), h(e[2], "DialStatus")) for e in rec.named("DialEnd")]
    assert dial_ends == [(None, "ANSWER"), ("Local/201@agents-00000000;1", "ANSWER")]
    assert len(rec.named("BridgeEnter")) == 2
    statuses = [h(e[2], "Status") for e in rec.named("QueueMemberStatus")]
    assert statuses == ["2", "1"]  # the agent is busy for the queue meanwhile


async def test_user_event_and_command() -> None:
    async with running(default_config()) as (sim, rec):
        sent = await sim.handle_action(
            action("UserEvent", ("UserEvent", "IvrTest"), ("Header1", "one"), action_id="u-1")
        )
        version = await sim.handle_action(action("Command", ("Command", "core show version")))
    assert sent.headers == [("Message", "Event Sent")]
    ((_, _, headers),) = rec.named("UserEvent")
    assert [(k, v) for k, v in headers[2:]] == [
        ("UserEvent", "IvrTest"),
        ("ActionID", "u-1"),
        ("Header1", "one"),
    ]
    assert version.headers[0] == ("Message", "Command output follows")
    assert (
        h(
            version.headers,
            "Output",
        )
        == "Asterisk 22.10.1 built by root @ vm on a x86_64 running Linux on "
        "2026-11-27 03:11:59 UTC"
    )


# -- traffic -----------------------------------------------------------------------------------------


async def test_traffic_is_seeded_poisson_arrivals() -> None:
    cfg = default_config()
    cfg.traffic = parse_config(
        {"traffic": {"arrivals_per_hour": 3600, "calls": 400, "patience": [5, 50]}}
    ).traffic
    plans = []
    for _ in range(2):
        sim = Simulator(cfg, seed=3, speed=math.inf, start_epoch=EPOCH)
        gen = TrafficGenerator(sim)
        plans.append([gen.plan(EPOCH) for _ in range(400)])
    assert plans[0] == plans[1]
    gaps = [p.at - EPOCH for p in plans[0]]
    assert 0.8 < sum(gaps) / len(gaps) < 1.2  # mean inter-arrival 1 s
    assert all(5 <= p.patience <= 50 for p in plans[0])
    other = TrafficGenerator(Simulator(cfg, seed=4, speed=math.inf, start_epoch=EPOCH)).plan(EPOCH)
    assert other != plans[0][0]


async def test_the_example_config_runs_a_day_of_traffic(tmp_path: Path) -> None:
    cfg = load_config(Path(__file__).parent.parent / "ivr" / "sim" / "example.toml")
    assert cfg.traffic.enabled and len(cfg.queues["support"].members) == 4
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    cfg.agi_server = f"127.0.0.1:{port}"  # no IVR listening: AGI fails, callers go on to the queue
    cfg.traffic = parse_config(
        {"traffic": {"enabled": True, "calls": 40, "arrivals_per_hour": 60, "patience": [20, 600]}}
    ).traffic
    # finite speed: the (failing) FastAGI connections take real time, which must not let
    # virtual time race ahead of them as it would at speed=inf
    sim = Simulator(cfg, seed=5, speed=5000, start_epoch=EPOCH, queue_log_path=tmp_path / "queue_log")
    await sim.start()
    try:
        await TrafficGenerator(sim).run()
        await sim.idle(real_seconds=60)
    finally:
        await sim.stop()
    events = [line.split("|")[4] for line in (tmp_path / "queue_log").read_text().splitlines()]
    assert events.count("ENTERQUEUE") == 40
    assert events.count("CONNECT") > 20
