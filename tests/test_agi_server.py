"""The FastAGI server over real TCP, driven by a scripted Asterisk (``AGIClientConnection``).

:class:`ScriptedAsterisk` plays Asterisk's side of one session the way res_agi.c does and
the recordings show: the environment block first (the real bytes of a recorded session),
``200 result=...`` replies, ``(timeout)`` for GET DATA without input, ``result=-1`` then
an inline ``HANGUP`` line before the next reply when the caller hangs up, 511 for media
commands on a dead channel, 510 for unknown commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import structlog

from ivr.agi.server import AGIServer
from ivr.agi.session import AGISession, Outcome
from ivr.config import Config, default_config
from ivr.domain.events import CallEvent
from ivr.domain.ivr_ops import (
    HUNG_UP,
    OK,
    CallbackRecorded,
    CallInfo,
    CheckOverflow,
    Clock,
    Decision,
    EventSink,
    Flow,
    OverflowAdvice,
    Play,
    RecordCallback,
    Request,
    ServiceFlow,
    StepResult,
    fallback_reply,
    set_variables,
)
from ivr.domain.ivr_ops import Reply as ServiceReply
from ivr.domain.scripts import service_flows
from ivr.protocol.agi import CLOSED, NEED_DATA, AGIClientConnection, Command, UnknownCommand, mset_pairs
from ivr.recording import read_fastagi

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
PARIS = ZoneInfo("Europe/Paris")
THURSDAY_10H = datetime(2026, 11, 26, 10, 0, tzinfo=PARIS).timestamp()
SATURDAY_10H = datetime(2026, 11, 28, 10, 0, tzinfo=PARIS).timestamp()

#: The environment Asterisk 22.10.1 sent for ``ivr?service=caf`` (answered scenario).
RECORDED = read_fastagi(FIXTURES / "answered" / "fastagi.txt")
ENV_RAW: bytes = RECORDED[0].env_raw
ENV: dict[str, str] = dict(RECORDED[0].env)

MEDIA = {"ANSWER", "STREAM FILE", "GET DATA", "WAIT FOR DIGIT", "SAY DIGITS", "SAY NUMBER"}
HANG = "<hangup>"  # in ``dtmf``: the caller hangs up while this GET DATA waits
HANG_INLINE = "<hangup-inline>"  # same, with Asterisk's HANGUP line before the -1 reply
TIMEOUT = None
CLI = "0612345678"


def env_for(script: str, uniqueid: str = "1795751216.1", **extra: str) -> dict[str, str]:
    env = dict(ENV)
    env["agi_network_script"] = script
    env["agi_request"] = f"agi://127.0.0.1:4573/{script}"
    env["agi_uniqueid"] = uniqueid
    env.update({f"agi_{k}": v for k, v in extra.items()})
    return env


@dataclass
class Transcript:
    commands: list[Command] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    closed_by_server: bool = False

    @property
    def lines(self) -> list[str]:
        return [" ".join([c.name, *(a if a else '""' for a in c.args)]) for c in self.commands]

    def after(self, prefix: str) -> list[str]:
        lines = self.lines
        index = max(i for i, line in enumerate(lines) if line.startswith(prefix))
        return lines[index + 1 :]


class ScriptedAsterisk:
    """Asterisk's side of one FastAGI session, answering from a script of caller inputs.

    ``dtmf`` answers GET DATA in order: a string is what the caller typed (``"#"`` alone
    gives an empty result, ``"1234 (timeout)"`` digits then silence), ``None`` a timeout,
    :data:`HANG` / :data:`HANG_INLINE` a hangup. ``missing`` names prompts that do not
    exist (``STREAM FILE`` -> ``200 result=-1 endpos=0``). ``delay`` slows every reply;
    ``stall_on`` stops answering at that command name.
    """

    def __init__(
        self,
        port: int,
        env: Mapping[str, str] | bytes,
        *,
        dtmf: Iterable[str | None] = (),
        variables: Mapping[str, str] | None = None,
        missing: Iterable[str] = (),
        delay: float = 0.0,
        stall_on: str | None = None,
    ) -> None:
        self.port = port
        self.env = env
        self.dtmf = list(dtmf)
        self.missing = set(missing)
        self.delay = delay
        self.stall_on = stall_on
        self.dead = False
        self.hangup_line_pending = False
        self.t = Transcript(variables=dict(variables or {}))
        self.channel_vars: dict[str, str] = {"CHANNEL(state)": "Up", **(variables or {})}

    async def run(self, within: float = 10.0) -> Transcript:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            client = AGIClientConnection()
            start = client.start(self.env) if not isinstance(self.env, bytes) else self.env
            if isinstance(self.env, bytes):
                client.started = True
            writer.write(start)
            try:
                await self._loop(client, reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return self.t

    async def _loop(
        self, client: AGIClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            event = client.next_event()
            if event is NEED_DATA:
                try:
                    data = await reader.read(4096)
                except ConnectionError:
                    data = b""
                client.receive_data(data)
                continue
            if event is CLOSED:
                self.t.closed_by_server = True
                return
            if isinstance(event, UnknownCommand):
                self.t.unknown.append(event.line)
                writer.write(client.reply(510))
                continue
            assert isinstance(event, Command)
            self.t.commands.append(event)
            if self.stall_on is not None and event.name == self.stall_on:
                await asyncio.sleep(3600)
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(self._answer(client, event))
            await writer.drain()

    def _answer(self, client: AGIClientConnection, cmd: Command) -> bytes:
        first = self.hangup_line_pending
        self.hangup_line_pending = False
        if self.dead and cmd.name in MEDIA:
            return client.reply(511, hangup_first=first)
        name = cmd.name
        if name == "ANSWER":
            return client.reply(200, 0, hangup_first=first)
        if name == "STREAM FILE":
            if cmd.args[0] in self.missing:
                return client.reply(200, -1, endpos=0, hangup_first=first)
            return client.reply(200, 0, endpos=14560, hangup_first=first)
        if name == "SAY DIGITS":
            return client.reply(200, 0, hangup_first=first)
        if name == "GET DATA":
            typed = self.dtmf.pop(0) if self.dtmf else TIMEOUT
            if typed == HANG:  # what the recording shows: -1 now, HANGUP before the next reply
                self.dead = True
                self.hangup_line_pending = True
                return client.reply(200, -1, hangup_first=first)
            if typed == HANG_INLINE:
                self.dead = True
                return client.reply(200, -1, hangup_first=True)
            if typed is TIMEOUT:
                return client.reply(200, "", "timeout", hangup_first=first)
            if typed.endswith(" (timeout)"):
                return client.reply(200, typed.split()[0], "timeout", hangup_first=first)
            return client.reply(200, "" if typed == "#" else typed, hangup_first=first)
        if name == "SET VARIABLE":
            if len(cmd.args) != 2:
                return client.reply(520, usage=["Sets a variable to the current channel."])
            self.t.variables[cmd.args[0]] = cmd.args[1]
            return client.reply(200, 1, hangup_first=first)
        if name == "EXEC":
            if cmd.args[0].lower() != "mset":
                return client.reply(200, -2, hangup_first=first)  # "Could not find application"
            self.t.variables.update(mset_pairs(cmd.args[1] if len(cmd.args) > 1 else ""))
            return client.reply(200, 0, hangup_first=first)
        if name == "GET VARIABLE":
            value = self.channel_vars.get(cmd.args[0])
            if value is None:
                return client.reply(200, 0, hangup_first=first)
            return client.reply(200, 1, value, hangup_first=first)
        if name in ("VERBOSE", "HANGUP"):
            if name == "HANGUP":
                self.dead = True
            return client.reply(200, 1, hangup_first=first)
        return client.reply(510, hangup_first=first)


def server_config(**agi: Any) -> Config:
    config = default_config()
    base = {"env_timeout_s": 2.0, "command_timeout_s": 2.0, "media_timeout_s": 5.0, "shutdown_grace_s": 2.0}
    return dataclasses.replace(config, agi=dataclasses.replace(config.agi, **{**base, **agi}))


@dataclass
class Running:
    server: AGIServer
    events: list[CallEvent]

    @property
    def port(self) -> int:
        return self.server.port

    def caller(self, env: Mapping[str, str] | bytes, **kw: object) -> ScriptedAsterisk:
        return ScriptedAsterisk(self.port, env, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(config: Config | None = None, *, now: float = THURSDAY_10H) -> AsyncIterator[Running]:
    events: list[CallEvent] = []
    server = AGIServer(config or server_config(), None, events.append, "127.0.0.1", 0, clock=lambda: now)
    await server.start()
    try:
        yield Running(server, events)
    finally:
        await server.stop(grace=1.0)


async def eventually(predicate: Callable[[], object], within: float = 3.0) -> None:
    """Wait until ``predicate()`` holds (the server updates its counters in its own tasks)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# -- full paths ----------------------------------------------------------------------------------


async def test_full_caf_menu_path_to_a_queue() -> None:
    async with running() as r:
        t = await r.caller(ENV_RAW, dtmf=["1", "12345678"]).run()
        await eventually(lambda: r.server.sessions_active == 0)
    assert t.lines == [
        "ANSWER",
        'STREAM FILE fr/decroche/caf-welcome ""',
        "GET DATA fr/decroche/caf-menu-main 5000 1",
        "GET DATA fr/decroche/caf-case-number 10000 8",
        'STREAM FILE fr/you-entered ""',
        'SAY DIGITS 12345678 ""',
        'STREAM FILE fr/pls-hold-while-try ""',
        "EXEC MSet IVR_ACTION=queue,IVR_QUEUE=caf,IVR_PRIO=0,IVR_QTIMEOUT=900,IVR_SERVICE=caf,"
        "IVR_REASON=aides-logement,IVR_CASE=12345678,IVR_LANG=fr",
    ]
    assert t.closed_by_server and not t.unknown
    assert [e.type for e in r.events] == [
        "ivr.start",
        "ivr.menu",
        "ivr.input",
        "ivr.input",
        "agent.requested",
        "ivr.end",
    ]
    assert {e.call for e in r.events} == {"1795751216.1"}  # agi_uniqueid of the recorded session
    stats = r.server.stats
    assert (stats.sessions_active, stats.sessions_total, stats.rejected, stats.failed) == (0, 1, 0, 0)


async def test_invalid_digits_then_fallback_to_a_human() -> None:
    async with running() as r:
        t = await r.caller(env_for("ivr?service=caf"), dtmf=["7", "A", "12"]).run()
    assert t.lines.count('STREAM FILE fr/pm-invalid-option ""') == 2
    assert t.variables["IVR_ACTION"] == "queue"
    assert t.variables["IVR_QUEUE"] == "caf"
    assert t.variables["IVR_REASON"] == "fallback_invalid"
    assert [e.data["reason"] for e in r.events if e.type == "ivr.invalid"] == [
        "invalid",
        "invalid",
        "too_many_digits",
    ]


async def test_timeouts_are_retried() -> None:
    async with running() as r:
        t = await r.caller(env_for("ivr?service=cpam"), dtmf=[TIMEOUT, TIMEOUT, "4"]).run()
    assert t.lines.count("GET DATA fr/decroche/cpam-menu-main 5000 1") == 3
    assert t.lines.count('STREAM FILE fr/please-try-again ""') == 2
    assert (t.variables["IVR_QUEUE"], t.variables["IVR_REASON"]) == ("cpam", "conseiller")


async def test_timeouts_exhausted_go_to_the_fallback_queue() -> None:
    async with running() as r:
        t = await r.caller(env_for("ivr?service=france-travail"), dtmf=[TIMEOUT, "#", TIMEOUT]).run()
    assert (t.variables["IVR_QUEUE"], t.variables["IVR_REASON"]) == ("france-travail", "fallback_no_input")


@pytest.mark.parametrize(
    ("typed", "case", "retries"),
    [
        (["12345678"], "12345678", 0),
        (["1234 (timeout)", "12345678"], "12345678", 1),
        (["12*45678", "1", "2"], "", 3),
        (["#"], "", 0),
    ],
)
async def test_case_number_valid_invalid_skipped(typed: list[str], case: str, retries: int) -> None:
    async with running() as r:
        t = await r.caller(env_for("ivr?service=caf"), dtmf=["3", *typed]).run()
    assert t.variables["IVR_CASE"] == case
    assert (t.variables["IVR_ACTION"], t.variables["IVR_QUEUE"]) == ("queue", "caf")
    assert len([e for e in r.events if e.type == "ivr.invalid"]) == retries
    assert ('SAY DIGITS 12345678 ""' in t.lines) == bool(case)


async def test_closed_hours_with_an_injected_clock() -> None:
    async with running(now=SATURDAY_10H) as r:
        t = await r.caller(env_for("ivr?service=caf"), dtmf=["1"]).run()
    assert t.lines[:2] == ["ANSWER", 'STREAM FILE fr/decroche/caf-closed ""']
    assert not any(line.startswith("GET DATA") for line in t.lines)
    assert (t.variables["IVR_ACTION"], t.variables["IVR_REASON"]) == ("closed", "closed")


async def test_missing_prompt_is_skipped_and_the_call_goes_on() -> None:
    async with running() as r:
        t = await r.caller(
            env_for("ivr?service=caf"), dtmf=["3", "#"], missing=["fr/decroche/caf-welcome"]
        ).run()
    # the -1 is probed once (no HANGUP comes with the probe's reply), then the menu plays
    assert t.lines[1:4] == [
        'STREAM FILE fr/decroche/caf-welcome ""',
        "GET VARIABLE CHANNEL(state)",
        "GET DATA fr/decroche/caf-menu-main 5000 1",
    ]
    assert t.variables["IVR_ACTION"] == "queue"


# -- hangups ---------------------------------------------------------------------------------------


async def test_caller_hangs_up_mid_menu_as_recorded() -> None:
    """-1 for GET DATA, then the HANGUP line before the next reply (agi_hangup recording)."""
    async with running() as r:
        t = await r.caller(env_for("ivr?service=caf"), dtmf=["2", HANG]).run()
        await eventually(lambda: r.server.sessions_active == 0)
    assert t.after("GET DATA fr/decroche/caf-menu-rsa") == ["GET VARIABLE CHANNEL(state)"]
    assert t.variables == {}
    assert t.closed_by_server
    assert r.events[-1].type == "ivr.end" and r.events[-1].data["reason"] == "caller_hangup"
    assert "ivr.invalid" not in [e.type for e in r.events]
    assert r.server.stats.failed == 0


async def test_inline_hangup_before_the_reply_sends_nothing_more() -> None:
    async with running() as r:
        t = await r.caller(env_for("ivr?service=caf"), dtmf=[HANG_INLINE]).run()
    assert t.lines[-1] == "GET DATA fr/decroche/caf-menu-main 5000 1"
    assert t.variables == {}
    assert r.events[-1].data["reason"] == "caller_hangup"


async def test_hangup_during_a_prompt_511_ends_the_session() -> None:
    """A caller gone before the welcome: ANSWER works, STREAM FILE gets HANGUP + 511."""

    class GoneAfterAnswer(ScriptedAsterisk):
        def _answer(self, client: AGIClientConnection, cmd: Command) -> bytes:
            if cmd.name == "ANSWER":
                self.dead, self.hangup_line_pending = True, True
                return client.reply(200, 0)
            return super()._answer(client, cmd)

    async with running() as r:
        t = await GoneAfterAnswer(r.port, env_for("ivr?service=caf")).run()
    assert t.lines == ["ANSWER", 'STREAM FILE fr/decroche/caf-welcome ""']
    assert t.closed_by_server


# -- bad clients -----------------------------------------------------------------------------------


async def test_client_disconnects_inside_its_environment_frees_the_slot() -> None:
    async with running(server_config(max_sessions=1)) as r:
        _, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(ENV_RAW[:200])  # half an environment, then gone
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: r.server.sessions_active == 0 and r.server.stats.failed == 1)
        # the only slot is free again: the next call is served at once
        t = await r.caller(env_for("ivr?service=caf"), dtmf=["3", "#"]).run(within=3)
    assert t.variables["IVR_ACTION"] == "queue"
    assert r.server.stats.rejected == 0


async def test_environment_timeout_closes_a_silent_client() -> None:
    async with running(server_config(env_timeout_s=0.2)) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(b"agi_network: yes\n")
        await writer.drain()
        async with asyncio.timeout(3):
            assert await reader.read() == b""  # the server hung up on us, having sent nothing
        writer.close()
        await eventually(lambda: r.server.sessions_active == 0)
    assert r.server.stats.failed == 1


async def test_malformed_environment_is_refused() -> None:
    async with running() as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(3):
            assert await reader.read() == b""
        writer.close()
        await eventually(lambda: r.server.sessions_active == 0)
    assert r.server.stats.failed == 1


async def test_command_timeout_frees_the_session() -> None:
    async with running(server_config(command_timeout_s=0.2, media_timeout_s=0.2)) as r:
        caller = r.caller(env_for("ivr?service=caf"), stall_on="ANSWER")
        task = asyncio.create_task(caller.run(within=5))
        await eventually(lambda: r.server.stats.failed == 1 and r.server.sessions_active == 0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert caller.t.lines == ["ANSWER"]


async def test_client_outside_the_allowlist_is_denied() -> None:
    config = server_config(allowed_clients=(ipaddress.ip_network("10.0.0.0/8"),))
    async with running(config) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(ENV_RAW)
        async with asyncio.timeout(3):
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""
        writer.close()
    assert (r.server.stats.denied, r.server.stats.sessions_total) == (1, 0)
    assert r.events == []


async def test_max_sessions_rejects_the_extra_connection_at_once() -> None:
    async with running(server_config(max_sessions=1)) as r:
        first = r.caller(env_for("ivr?service=caf", "u-first"), stall_on="ANSWER")
        task = asyncio.create_task(first.run(within=10))
        await eventually(lambda: r.server.sessions_active == 1 and first.t.commands)
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(AGIClientConnection().start(env_for("ivr?service=caf", "u-second")))
        async with asyncio.timeout(3):
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""
        writer.close()
        assert r.server.stats.rejected == 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await eventually(lambda: r.server.sessions_active == 0)
        # with the slot free again, a call goes through
        t = await r.caller(env_for("ivr?service=caf", "u-third"), dtmf=["3", "#"]).run()
    assert t.variables["IVR_ACTION"] == "queue"


async def test_unknown_script_is_logged_and_hung_up() -> None:
    with structlog.testing.capture_logs() as logs:
        async with running() as r:
            t = await r.caller(env_for("foo?x=1")).run()
    assert t.commands[0] == Command("VERBOSE", ("decroche: unknown FastAGI script 'foo'", "1"))
    assert t.lines[1:] == [
        "EXEC MSet IVR_ACTION=hangup,IVR_REASON=unknown_script",
        "HANGUP",
    ]
    assert any(entry["event"] == "agi.unknown_script" and entry["script"] == "foo" for entry in logs)


async def test_unknown_service_is_hung_up_with_a_reason() -> None:
    async with running() as r:
        t = await r.caller(env_for("ivr?service=nope")).run()
    assert t.variables == {"IVR_ACTION": "hangup", "IVR_REASON": "unknown_service"}
    assert t.lines[-1] == "HANGUP"


async def test_the_variables_go_in_one_exec_mset_and_an_unsafe_value_by_set_variable() -> None:
    """One line for a run of plain pairs; a value MSet would parse goes alone, quoted, in order."""
    variables = {"IVR_ACTION": "queue", "IVR_QUEUE": "caf", "IVR_REASON": 'say "hi", (twice)', "IVR_CASE": ""}
    results: list[StepResult] = []

    def flow(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        for step in set_variables(variables):
            results.append((yield step))
        return Decision(action="queue", service="caf", lang="fr", queue="caf")

    server = AGIServer(server_config(), {"ivr": flow}, None, "127.0.0.1", 0)
    async with server:
        t = await ScriptedAsterisk(server.port, env_for("ivr?service=caf")).run()
    assert t.lines == [
        "EXEC MSet IVR_ACTION=queue,IVR_QUEUE=caf",
        'SET VARIABLE IVR_REASON say "hi", (twice)',
        'SET VARIABLE IVR_CASE ""',
    ]
    assert [c.encode() for c in t.commands][:2] == [
        b"EXEC MSet IVR_ACTION=queue,IVR_QUEUE=caf\n",
        b'SET VARIABLE IVR_REASON "say \\"hi\\", (twice)"\n',
    ]
    assert t.variables == variables
    assert results == [OK, OK, OK]


async def test_an_mset_not_answered_200_result_0_is_a_failed_step() -> None:
    """``200 result=-2`` (no such application, res_agi.c ``handle_exec``): the step failed and
    the refusal is logged; the call goes on."""
    results: list[StepResult] = []

    def flow(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        for step in set_variables({"IVR_ACTION": "hangup", "IVR_REASON": "x"}):
            results.append((yield step))
        results.append((yield Play("fr/goodbye")))
        return Decision(action="hangup", service="caf", lang="fr")

    class NoMSet(ScriptedAsterisk):
        def _answer(self, client: AGIClientConnection, cmd: Command) -> bytes:
            if cmd.name == "EXEC":
                return client.reply(200, -2)
            return super()._answer(client, cmd)

    server = AGIServer(server_config(), {"ivr": flow}, None, "127.0.0.1", 0)
    with structlog.testing.capture_logs() as logs:
        async with server:
            t = await NoMSet(server.port, env_for("ivr?service=caf")).run()
    assert t.lines == ["EXEC MSet IVR_ACTION=hangup,IVR_REASON=x", 'STREAM FILE fr/goodbye ""']
    assert results == [StepResult(failed=True), OK]
    refused = [e for e in logs if e["event"] == "agi.command_refused"]
    assert [(e["code"], e["reply"]) for e in refused] == [(200, "200 result=-2")]
    assert server.stats.failed == 0


# -- post-queue scripts ----------------------------------------------------------------------------

QUEUED = {
    "IVR_SERVICE": "caf",
    "IVR_QUEUE": "caf",
    "IVR_LANG": "fr",
    "IVR_PRIO": "0",
    "QUEUEWAIT": "10",
}


async def test_after_queue_timeout_routing() -> None:
    async with running() as r:
        t = await r.caller(env_for("after-queue", arg_1="TIMEOUT"), variables=QUEUED).run()
    assert [(e.type, e.queue, e.data["status"]) for e in r.events] == [("queue.timeout", "caf", "TIMEOUT")]
    assert 'STREAM FILE fr/please-try-call-later ""' in t.lines
    assert (t.variables["IVR_ACTION"], t.variables["IVR_REASON"]) == ("hangup", "timeout")


async def test_exit_key_routes_back_to_the_queue() -> None:
    async with running() as r:
        t = await r.caller(env_for("exit-key", arg_1="", extension="1"), variables=QUEUED).run()
    assert [(e.type, e.data["key"]) for e in r.events] == [("queue.exit_key", "1")]
    assert (t.variables["IVR_ACTION"], t.variables["IVR_QUEUE"]) == ("queue", "caf")


async def test_survey_answer_is_recorded() -> None:
    async with running() as r:
        t = await r.caller(env_for("survey"), variables=QUEUED, dtmf=["4"]).run()
    assert [(e.type, e.data["score"]) for e in r.events] == [("survey.answer", 4)]
    assert t.lines[-2] == 'STREAM FILE fr/auth-thankyou ""'
    assert t.lines[-1].startswith("EXEC MSet IVR_ACTION=hangup,")
    assert t.variables["IVR_REASON"] == "survey_answered"


@pytest.mark.parametrize(
    ("scenario", "event", "data"),
    [
        ("timeout", "queue.timeout", {"status": "TIMEOUT", "wait_s": 10}),
        ("join_empty", "queue.join_empty", {"status": "JOINEMPTY", "wait_s": 10}),
        ("exit_with_key", "queue.exit_key", {"key": "1", "wait_s": 10}),
    ],
)
async def test_recorded_post_queue_environments(scenario: str, event: str, data: dict[str, object]) -> None:
    """The exact environment bytes Asterisk sent after Queue() in each recorded scenario."""
    session = read_fastagi(FIXTURES / scenario / "fastagi.txt")[-1]
    async with running() as r:
        await r.caller(session.env_raw, variables=QUEUED).run()
    assert [(e.type, e.call, dict(e.data)) for e in r.events] == [(event, session.env["agi_uniqueid"], data)]


# -- concurrency, logs, shutdown -------------------------------------------------------------------


async def test_concurrent_sessions_keep_their_own_calls_and_log_context() -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with running() as r:
            paths = [["1", "#"], ["3", "#"], ["2", "1", "#"]]
            callers = [
                r.caller(env_for("ivr?service=caf", f"call-{i}"), dtmf=paths[i % 3], delay=0.005)
                for i in range(8)
            ]
            results = await asyncio.gather(*(c.run() for c in callers))
    expected = ["aides-logement", "conseiller", "rsa"]
    for i, t in enumerate(results):
        assert (t.variables["IVR_QUEUE"], t.variables["IVR_REASON"]) == ("caf", expected[i % 3])
    ends = [entry for entry in logs if entry["event"] == "agi.session_end"]
    assert sorted(entry["uniqueid"] for entry in ends) == sorted(f"call-{i}" for i in range(8))
    by_call: dict[str, set[str]] = {}
    for e in r.events:
        by_call.setdefault(e.call, set()).add(e.type)
    assert all("ivr.end" in types for types in by_call.values()) and len(by_call) == 8
    assert r.server.stats.sessions_total == 8


async def test_graceful_shutdown_lets_sessions_finish_and_refuses_new_ones() -> None:
    events: list[CallEvent] = []
    server = AGIServer(server_config(), None, events.append, "127.0.0.1", 0, clock=lambda: THURSDAY_10H)
    await server.start()
    port = server.port
    slow = ScriptedAsterisk(port, env_for("ivr?service=caf"), dtmf=["3", "#"], delay=0.05)
    task = asyncio.create_task(slow.run())
    await eventually(lambda: bool(slow.t.commands))
    stopping = asyncio.create_task(server.stop(grace=5.0))
    await asyncio.sleep(0.05)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer listening
    t = await task
    await stopping
    assert t.variables["IVR_ACTION"] == "queue"  # the running call was not cut
    assert server.stats.sessions_active == 0


async def test_shutdown_deadline_cancels_stuck_sessions() -> None:
    server = AGIServer(server_config(command_timeout_s=60, media_timeout_s=60), None, None, "127.0.0.1", 0)
    await server.start()
    stuck = ScriptedAsterisk(server.port, env_for("ivr?service=caf"), stall_on="ANSWER")
    task = asyncio.create_task(stuck.run(within=30))
    await eventually(lambda: server.stats.sessions_active == 1 and bool(stuck.t.commands))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.stop(grace=0.2)
    assert loop.time() - started < 3
    assert server.stats.sessions_active == 0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_event_sink_failure_does_not_break_the_call() -> None:
    def broken(event: CallEvent) -> None:
        raise RuntimeError("redis writer queue full")

    server = AGIServer(server_config(), None, broken, "127.0.0.1", 0, clock=lambda: THURSDAY_10H)
    async with server:
        t = await ScriptedAsterisk(server.port, env_for("ivr?service=caf"), dtmf=["3", "#"]).run()
    assert t.variables["IVR_ACTION"] == "queue"


# -- the protocol-driven session: time limits, flow control, ends ----------------------------------


def only_session(server: AGIServer) -> AGISession:
    (session,) = server._sessions
    return session


async def test_a_call_outlives_the_environment_deadline() -> None:
    """The deadline moves with each command: a call longer than env_timeout is not cut."""
    async with running(server_config(env_timeout_s=0.1, command_timeout_s=1.0, media_timeout_s=1.0)) as r:
        t = await r.caller(env_for("ivr?service=caf"), dtmf=["3", "#"], delay=0.03).run()
    assert t.variables["IVR_ACTION"] == "queue"  # 6 commands at 30 ms: 0.18 s in all
    assert r.server.stats.failed == 0


async def test_a_trickling_client_is_cut_at_the_environment_deadline() -> None:
    """Bytes arriving do not move the deadline: one byte every 20 ms never completes in time."""
    async with running(server_config(env_timeout_s=0.3)) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in ENV_RAW:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.02)

        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.create_task(trickle())
        async with asyncio.timeout(3):
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""
        elapsed = loop.time() - started
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.close()
        await eventually(lambda: r.server.sessions_active == 0)
    assert 0.25 < elapsed < 1.0  # the whole block would take 10 s
    assert r.server.stats.failed == 1


async def test_commands_wait_while_the_transport_is_paused() -> None:
    """Flow control: after ``pause_writing`` the next command is held until ``resume_writing``."""
    async with running() as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        client = AGIClientConnection()
        writer.write(client.start(env_for("ivr?service=caf")))

        async def next_command() -> Command:
            while True:
                event = client.next_event()
                if isinstance(event, Command):
                    return event
                assert event is NEED_DATA
                client.receive_data(await reader.read(4096))

        async with asyncio.timeout(3):
            assert (await next_command()).name == "ANSWER"
            session = only_session(r.server)
            session.pause_writing()  # what the transport calls above its high-water mark
            writer.write(client.reply(200, 0))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await next_command()
            assert session.commands_sent == 2  # sent as far as the session goes, held in it
            session.resume_writing()
            assert await next_command() == Command("STREAM FILE", ("fr/decroche/caf-welcome", ""))
        writer.close()


async def test_a_held_command_still_times_out() -> None:
    async with running(server_config(command_timeout_s=0.2, media_timeout_s=0.2)) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        client = AGIClientConnection()
        writer.write(client.start(env_for("ivr?service=caf")))
        await eventually(lambda: r.server.sessions_active == 1 and only_session(r.server).commands_sent == 1)
        only_session(r.server).pause_writing()
        client.receive_data(await reader.readline())
        assert client.next_event() == Command("ANSWER")
        writer.write(client.reply(200, 0))
        await eventually(lambda: r.server.stats.failed == 1 and r.server.sessions_active == 0)
        writer.close()


async def test_peer_gone_mid_call_is_not_a_failure() -> None:
    """Asterisk closing while a command is pending (the dialplan moved on) ends the session."""
    with structlog.testing.capture_logs() as logs:
        async with running() as r:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            writer.write(AGIClientConnection().start(env_for("ivr?service=caf", "gone-1")))
            assert await reader.readline() == b"ANSWER\n"
            writer.close()
            await eventually(lambda: r.server.sessions_active == 0)
    assert r.server.stats.failed == 0
    (end,) = [entry for entry in logs if entry["event"] == "agi.session_end"]
    assert (end["outcome"], end["commands"], end["error"]) == (
        "peer_closed",
        1,
        "closed while ANSWER was pending",
    )


async def test_connection_reset_mid_call_frees_the_slot() -> None:
    async with running(server_config(max_sessions=1)) as r:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        writer.write(AGIClientConnection().start(env_for("ivr?service=caf")))
        assert await reader.readline() == b"ANSWER\n"
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN
        await eventually(lambda: r.server.sessions_active == 0)
        t = await r.caller(env_for("ivr?service=caf"), dtmf=["3", "#"]).run()
    assert t.variables["IVR_ACTION"] == "queue"
    assert (r.server.stats.failed, r.server.stats.rejected) == (0, 0)


async def test_an_unsolicited_line_is_a_protocol_error() -> None:
    with structlog.testing.capture_logs() as logs:
        async with running() as r:
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            writer.write(AGIClientConnection().start(env_for("ivr?service=caf")))
            assert await reader.readline() == b"ANSWER\n"
            writer.write(b"hello there\n")
            async with asyncio.timeout(3):
                assert await reader.read() == b""  # closed on us
            writer.close()
            await eventually(lambda: r.server.sessions_active == 0)
    assert r.server.stats.failed == 1
    assert [e["event"] for e in logs if e["log_level"] in ("error", "warning")] == ["agi.protocol_error"]


async def test_a_flow_factory_that_raises_fails_only_its_call() -> None:
    def broken(call: CallInfo, clock: Clock, sink: EventSink) -> Flow:
        raise RuntimeError("no flow today")

    server = AGIServer(server_config(), {"broken": broken}, None, "127.0.0.1", 0)
    with structlog.testing.capture_logs() as logs:
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(AGIClientConnection().start(env_for("broken")))
            async with asyncio.timeout(3):
                assert await reader.read() == b""
            writer.close()
            await eventually(lambda: server.sessions_active == 0)
            t = await ScriptedAsterisk(server.port, env_for("ivr?service=caf")).run()  # unknown script
    assert t.lines[-1] == "HANGUP"
    assert server.stats.failed == 1
    failed = [e for e in logs if e["event"] == "agi.flow_failed"]
    assert len(failed) == 1 and isinstance(failed[0]["exc_info"], RuntimeError)


async def test_one_info_line_per_call() -> None:
    """Logging stays cheap: a call that goes well writes ``agi.session_end`` and nothing else."""
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with running() as r:
            await r.caller(env_for("ivr?service=caf", "one-line"), dtmf=["3", "#"]).run()
            await eventually(lambda: r.server.sessions_active == 0)
    calls = [e for e in logs if e.get("uniqueid") == "one-line" and e["log_level"] != "debug"]
    assert [(e["event"], e["log_level"]) for e in calls] == [("agi.session_end", "info")]
    assert (calls[0]["outcome"], calls[0]["action"], calls[0]["commands"]) == ("done", "queue", 6)
    assert not [e for e in logs if "uniqueid" in e and e["uniqueid"] != "one-line"]


# -- service requests: answered by the server's performer, the channel left alone ----------------


class AnsweringService:
    """A performer for the server: answers after ``hold`` is set, and keeps what was asked."""

    def __init__(self, reply: Callable[[Request], ServiceReply], *, held: bool = False) -> None:
        self.reply = reply
        self.asked: list[Request] = []
        self.answered: list[ServiceReply] = []
        self.asking = asyncio.Event()
        self.hold = asyncio.Event()
        if not held:
            self.hold.set()

    async def __call__(self, request: Request) -> ServiceReply:
        self.asked.append(request)
        self.asking.set()
        await self.hold.wait()
        await asyncio.sleep(0.02)  # an answer from Redis takes a turn of the loop or more
        answer = self.reply(request)
        self.answered.append(answer)
        return answer


def busy_caf(request: Request) -> ServiceReply:
    """The callback service of an overloaded ``caf`` queue: offers a callback and records it."""
    if isinstance(request, CheckOverflow):
        return OverflowAdvice("callback", ("estimated_wait",), position=5, estimated_wait_s=900.0)
    if isinstance(request, RecordCallback):
        return CallbackRecorded(
            True, "created", callback_id="cb-from-redis", number=request.number, position=6
        )
    return fallback_reply(request)


class OutcomeServer(AGIServer):
    """The server, with each session's outcome kept for the test."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.outcomes: list[tuple[Outcome, bool]] = []

    def session_ended(
        self, session: AGISession, outcome: Outcome, error: str, exc: BaseException | None
    ) -> None:
        self.outcomes.append((outcome, session.hung_up))
        super().session_ended(session, outcome, error, exc)


async def test_requests_are_awaited_and_answered_into_the_flow_without_polling() -> None:
    """The IVR's callback offer over FastAGI: the channel sees the flow's own commands only."""
    config = server_config()
    service = AnsweringService(busy_caf)
    server = AGIServer(
        config, service_flows(config), None, "127.0.0.1", 0, clock=lambda: THURSDAY_10H, perform=service
    )
    async with server:
        t = await ScriptedAsterisk(
            server.port,
            env_for("ivr?service=caf"),
            dtmf=["3", "#", "1", "1"],
            variables={"CALLERID(num)": CLI},
        ).run()
        await eventually(lambda: server.sessions_active == 0)
    assert [type(r).__name__ for r in service.asked] == ["FindOpen", "CheckOverflow", "RecordCallback"]
    # The only variable read is the flow's own (the caller's number): no poll while waiting.
    assert [c.args for c in t.commands if c.name == "GET VARIABLE"] == [("CALLERID(num)",)]
    # The recorded callback's reply reached the flow: its id is what the dialplan gets.
    assert t.variables["IVR_ACTION"] == "callback"
    assert t.variables["IVR_CALLBACK_ID"] == "cb-from-redis"
    assert server.stats.failed == 0


async def raw_session(
    port: int, env: Mapping[str, str]
) -> tuple[AGIClientConnection, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = AGIClientConnection()
    writer.write(client.start(env))
    return client, reader, writer


async def next_command(client: AGIClientConnection, reader: asyncio.StreamReader) -> Command | None:
    """The next command the server sends; None when it closes the connection."""
    while True:
        event = client.next_event()
        if isinstance(event, Command):
            return event
        if event is CLOSED:
            return None
        assert event is NEED_DATA
        client.receive_data(await reader.read(4096))


def confirming_flow(seen: list[object]) -> Callable[[CallInfo, Clock, EventSink], ServiceFlow]:
    """Plays a prompt, records a callback, then tells the caller it is done."""

    def flow(call: CallInfo, clock: Clock, sink: EventSink) -> ServiceFlow:
        yield Play("fr/hello")
        reply = yield RecordCallback(call=call.uniqueid, number=CLI, queue="caf", service="caf")
        seen.append(reply)
        assert isinstance(reply, CallbackRecorded)
        result = yield Play("fr/confirmed")
        seen.append(result)
        assert isinstance(result, StepResult)
        return Decision("callback", "caf", "fr", callback_id=reply.callback_id, hung_up=result.hangup)

    return flow


async def test_a_hangup_while_a_request_is_answered_keeps_the_request_and_ends_the_flow() -> None:
    """HANGUP arrives while the callback is being recorded: recorded once, then the flow sees it."""
    seen: list[object] = []
    service = AnsweringService(busy_caf, held=True)
    server = OutcomeServer(
        server_config(), {"confirm": confirming_flow(seen)}, None, "127.0.0.1", 0, perform=service
    )
    async with server:
        client, reader, writer = await raw_session(server.port, env_for("confirm"))
        async with asyncio.timeout(3):
            assert await next_command(client, reader) == Command("STREAM FILE", ("fr/hello", ""))
            writer.write(client.reply(200, 0, endpos=14560))
            await service.asking.wait()
            writer.write(b"HANGUP\n")  # res_agi.c, run_agi: sent at once while it waits for a command
            await writer.drain()
            with pytest.raises(TimeoutError):  # nothing is sent while the request is answered
                async with asyncio.timeout(0.2):
                    await next_command(client, reader)
            service.hold.set()
            assert await next_command(client, reader) is None  # no prompt to a dead channel: closed
        writer.close()
        await eventually(lambda: server.sessions_active == 0)
    assert len(service.asked) == 1 and len(service.answered) == 1
    assert seen == [service.answered[0], HUNG_UP]  # the reply first, then the hangup
    assert server.outcomes == [(Outcome.DONE, True)]
    assert server.stats.failed == 0


async def test_a_request_outlives_its_session_and_delays_the_shutdown() -> None:
    """Asterisk closes the connection mid-request: the request still completes, once, and
    ``stop`` waits for it rather than drop it."""
    seen: list[object] = []
    service = AnsweringService(busy_caf, held=True)
    server = OutcomeServer(
        server_config(), {"confirm": confirming_flow(seen)}, None, "127.0.0.1", 0, perform=service
    )
    await server.start()
    client, reader, writer = await raw_session(server.port, env_for("confirm"))
    async with asyncio.timeout(3):
        assert await next_command(client, reader) == Command("STREAM FILE", ("fr/hello", ""))
        writer.write(client.reply(200, 0, endpos=14560))
        await service.asking.wait()
        writer.write(b"HANGUP\n")
        writer.close()
        await eventually(lambda: server.sessions_active == 0)
        stopping = asyncio.create_task(server.stop(grace=2.0))
        await asyncio.sleep(0.1)
        assert not stopping.done()  # the request of the ended call still runs
        service.hold.set()
        await stopping
    assert len(service.asked) == 1 and [a.callback_id for a in service.answered] == ["cb-from-redis"]  # type: ignore[union-attr]
    assert seen == []  # the flow had ended with its session
    assert server.outcomes == [(Outcome.PEER_CLOSED, True)]
    assert server.stats.failed == 0


async def test_a_request_not_answered_in_time_gets_the_fallback() -> None:
    seen: list[object] = []
    service = AnsweringService(busy_caf, held=True)
    config = server_config(command_timeout_s=0.2)
    server = AGIServer(config, {"confirm": confirming_flow(seen)}, None, "127.0.0.1", 0, perform=service)
    with structlog.testing.capture_logs() as logs:
        async with server:
            t = await ScriptedAsterisk(server.port, env_for("confirm")).run()
            service.hold.set()  # answered too late: dropped
            await eventually(lambda: len(service.answered) == 1)
    assert seen == [fallback_reply(service.asked[0], "timeout"), OK]
    assert t.lines == ['STREAM FILE fr/hello ""', 'STREAM FILE fr/confirmed ""']
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["agi.request_timeout"]


async def test_a_request_that_fails_gets_the_fallback() -> None:
    seen: list[object] = []

    async def broken(request: Request) -> ServiceReply:
        raise ConnectionError("redis went away")

    server = AGIServer(
        server_config(), {"confirm": confirming_flow(seen)}, None, "127.0.0.1", 0, perform=broken
    )
    async with server:
        t = await ScriptedAsterisk(server.port, env_for("confirm")).run()
    assert seen == [CallbackRecorded(False, "refused", "error"), OK]
    assert t.lines[-1] == 'STREAM FILE fr/confirmed ""'
    assert server.stats.failed == 0


async def test_without_a_performer_requests_get_the_fallback_at_once() -> None:
    seen: list[object] = []
    server = AGIServer(server_config(), {"confirm": confirming_flow(seen)}, None, "127.0.0.1", 0)
    async with server:
        t = await ScriptedAsterisk(server.port, env_for("confirm")).run()
    assert seen == [CallbackRecorded(False, "refused", "no_service"), OK]
    assert len(t.commands) == 2
