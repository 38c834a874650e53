"""Re-run a recorded Asterisk scenario in the simulator, the way the recording rig drove it.

The transcripts under ``tests/fixtures/asterisk/<scenario>`` were produced by a harness
that (1) set the agents' ``PLAN2xx`` globals, (2) sent AMI actions at known instants and
(3) answered FastAGI sessions with scripted commands. :func:`replay_scenario` does the
same against a :class:`~ivr.sim.engine.Simulator`: the actions recorded in ``ami.txt``
are handed to the engine at the same offsets (virtual time), a FastAGI server replays the
recorded command list of each session, and everything the engine emits is collected --
so a test can hold the simulated run next to the real one event by event, and the
simulated queue_log next to the real one line by line.

Nothing here knows about particular scenarios: what to do comes from the transcripts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ivr.protocol.agi import (
    NEED_DATA,
    AGIEnvironment,
    AGIServerConnection,
    HangupNotice,
    Reply,
    ServerState,
    parse_command,
)
from ivr.protocol.agi import Command as AgiCommand
from ivr.protocol.ami import Action
from ivr.recording import AgiSession, AmiRecord, read_ami, read_fastagi
from ivr.sim.api import ActionResult, Headers
from ivr.sim.config import SimConfig, default_config
from ivr.sim.engine import Simulator

__all__ = ["AgiMismatch", "RecordedScenario", "ReplayResult", "load_scenario", "replay_scenario"]

#: Actions the AMI front-end answers itself (the engine never sees them).
FRONT_END_ACTIONS = frozenset({"login", "logoff", "events", "ping", "challenge"})


@dataclass(slots=True)
class RecordedScenario:
    """What a recorded scenario consists of, read from its directory."""

    name: str
    start_epoch: float
    actions: list[tuple[float, Action]]
    globals: dict[str, str]
    sessions: list[AgiSession]
    events: list[tuple[float, str, Headers]]
    responses: dict[str, Headers]
    queue_log: list[str]
    duration: float
    lists: dict[str, list[tuple[str, Headers]]] = field(default_factory=dict)


@dataclass(slots=True)
class AgiMismatch:
    """A FastAGI reply of the simulator that differs from the recorded one."""

    session: str
    command: str
    expected: list[str]
    got: list[str]


@dataclass(slots=True)
class ReplayResult:
    """What the simulated run produced."""

    events: list[tuple[float, str, Headers]] = field(default_factory=list)
    responses: dict[str, ActionResult] = field(default_factory=dict)
    queue_log: list[str] = field(default_factory=list)
    agi_sessions: list[str] = field(default_factory=list)
    agi_mismatches: list[AgiMismatch] = field(default_factory=list)
    agi_replies: list[tuple[str, str, list[str]]] = field(default_factory=list)
    agi_envs: list[list[tuple[str, str]]] = field(default_factory=list)


def _epoch(dt: datetime) -> float:
    """The rig logged local wall-clock times on a UTC machine."""
    return dt.replace(tzinfo=UTC).timestamp() if dt.tzinfo is None else dt.timestamp()


_GLOBALS_RE = re.compile(r"`(PLAN\d+|DEF\d+)=([^`]*)`")


def load_scenario(directory: str | Path) -> RecordedScenario:
    """Read ``ami.txt``, ``fastagi.txt``, ``queue_log`` and the agent globals of ``notes.md``."""
    d = Path(directory)
    records: list[AmiRecord] = read_ami(d / "ami.txt")
    if not records:
        raise ValueError(f"{d}: empty ami.txt")
    t0 = records[0].time
    start = _epoch(t0)
    actions: list[tuple[float, Action]] = []
    events: list[tuple[float, str, Headers]] = []
    responses: dict[str, Headers] = {}
    lists: dict[str, list[tuple[str, Headers]]] = {}
    main_conn = records[0].conn
    for rec in records:
        offset = (rec.time - t0).total_seconds()
        headers = rec.headers()
        if not headers:
            continue
        key, value = headers[0]
        if rec.direction == "send" and key == "Action":
            if value.lower() in FRONT_END_ACTIONS:
                continue
            fields: dict[str, str] = {}
            for k, v in headers:
                fields.setdefault(k, v)
            actions.append((offset, Action(fields, tuple(headers), name=value)))
        elif rec.direction == "recv" and rec.conn == main_conn:
            if key == "Event":
                aid = rec.get("ActionID")
                if aid and rec.get("Timestamp") is None and value != "FullyBooted":
                    lists.setdefault(aid, []).append((value, headers[1:]))
                else:
                    events.append((offset, value, headers[1:]))
            elif key == "Response":
                aid = rec.get("ActionID")
                if aid:
                    responses[aid] = headers
    notes = (d / "notes.md").read_text(encoding="utf-8") if (d / "notes.md").exists() else ""
    globals_: dict[str, str] = {}
    for line in notes.splitlines():
        if "Agent globals set" in line:
            globals_.update(dict(_GLOBALS_RE.findall(line)))
    qlog_path = d / "queue_log"
    queue_log = qlog_path.read_text(encoding="utf-8").splitlines() if qlog_path.exists() else []
    sessions = read_fastagi(d / "fastagi.txt") if (d / "fastagi.txt").exists() else []
    duration = (records[-1].time - t0).total_seconds()
    return RecordedScenario(
        d.name, start, actions, globals_, sessions, events, responses, queue_log, duration, lists
    )


class _ReplayAgiServer:
    """A FastAGI server that plays, for each session, the commands recorded for it."""

    def __init__(self, sessions: Sequence[AgiSession], result: ReplayResult, sim: Simulator) -> None:
        self.unused = list(sessions)
        self.result = result
        self.sim = sim
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _pick(self, env: AGIEnvironment) -> AgiSession | None:
        for i, s in enumerate(self.unused):
            if (
                s.env.get("agi_network_script") == env.network_script
                and s.env.get("agi_channel") == env.channel
            ):
                return self.unused.pop(i)
        for i, s in enumerate(self.unused):
            if s.env.get("agi_network_script") == env.network_script:
                return self.unused.pop(i)
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AGIServerConnection()
        try:
            env = await self._next(conn, reader)
            if not isinstance(env, AGIEnvironment):
                return
            label = f"{env.network_script} {env.channel}"
            self.result.agi_sessions.append(label)
            self.result.agi_envs.append(list(env.variables.items()))
            session = self._pick(env)
            if session is None:
                return
            for ex in session.exchanges:
                cmd = parse_command(ex.command)
                if not isinstance(cmd, AgiCommand):
                    writer.write((ex.command + "\n").encode())
                else:
                    writer.write(conn.send(cmd))
                await writer.drain()
                got = await self._reply_lines(conn, reader)
                self.result.agi_replies.append((label, ex.command, got))
                if got != ex.replies:
                    self.result.agi_mismatches.append(AgiMismatch(label, ex.command, list(ex.replies), got))
                if got and got[-1] == "EOF":
                    return
        finally:
            writer.close()

    async def _next(self, conn: AGIServerConnection, reader: asyncio.StreamReader) -> object:
        while True:
            ev = conn.next_event()
            if ev is not NEED_DATA:
                return ev
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data:
                return conn.next_event()

    async def _reply_lines(self, conn: AGIServerConnection, reader: asyncio.StreamReader) -> list[str]:
        """The reply lines as Asterisk wrote them (HANGUP notices included)."""
        lines: list[str] = []
        # Unknown commands are written raw (the codec would refuse them): expect a reply.
        conn.state = ServerState.AWAITING_REPLY
        while True:
            ev = await self._next(conn, reader)
            if isinstance(ev, HangupNotice):
                lines.append("HANGUP")
                continue
            if isinstance(ev, Reply):
                if ev.code == 520:
                    lines += [ev.text, *ev.usage, "520 End of proper usage."]
                else:
                    lines.append(ev.text)
                return lines
            lines.append("EOF")
            return lines


async def replay_scenario(
    scenario: RecordedScenario,
    *,
    speed: float = 25.0,
    config: SimConfig | None = None,
    seed: int = 0,
    tail: float = 2.0,
    queue_log_path: str | Path | None = None,
) -> ReplayResult:
    """Run ``scenario`` in a fresh simulator and collect what it emits."""
    cfg = config if config is not None else default_config()
    result = ReplayResult()
    sim = Simulator(
        cfg, seed=seed, speed=speed, start_epoch=scenario.start_epoch, queue_log_path=queue_log_path
    )
    server = _ReplayAgiServer(scenario.sessions, result, sim)
    port = await server.start()
    cfg.agi_server = f"127.0.0.1:{port}"
    sim.globals.update(scenario.globals)

    def listener(name: str, headers: Headers) -> None:
        result.events.append((sim.now() - scenario.start_epoch, name, list(headers)))

    sim.add_listener(listener)
    await sim.start()
    try:
        for offset, action in scenario.actions:
            await sim.clock.sleep_until(scenario.start_epoch + offset)
            response = await sim.handle_action(action)
            if action.action_id:
                result.responses[action.action_id] = response
        await sim.clock.sleep_until(scenario.start_epoch + scenario.duration + tail)
    finally:
        await sim.stop()
        await server.stop()
    result.queue_log = list(sim.queue_log_lines)
    return result
