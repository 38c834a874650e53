"""FastAGI: IVR sessions per second and first-command latency, 500 sessions at a time.

The server under test is :class:`~ivr.agi.server.AGIServer` as ``ivr run`` runs it -- one
process, the standard asyncio loop, the collector frozen once started as
``Controller.start`` does -- with the packaged default configuration (the four services'
menus, opening hours, the shipped IVR flows) and its clock set to a Thursday at 10:00 in
Paris (every service open). One change: ``[agi] max_sessions`` is raised to the
concurrency, since the shipped 200 would refuse 300 of 500 simultaneous calls.

The load generator runs in child processes (``--generators``, one by default), each a
plain ``epoll`` loop over non-blocking sockets: ``--concurrency`` fake Asterisks, each
connecting again as soon as its session ends, until ``--sessions`` sessions are done.
Each fake Asterisk sends the environment block recorded from Asterisk 22.10.1
(``answered/fastagi.txt``), pre-encoded, with its own ``agi_uniqueid``/``agi_channel`` and
a service drawn from the configuration, and answers every command at once the way
res_agi.c does (``200 result=0 endpos=...`` for prompts, ``200 result=0`` for the
``EXEC MSet`` that sets the dialplan variables ...); a command line is parsed with the
codec the first time it is seen and its reply reused afterwards. ``GET DATA`` gets keys
that lead to a queue (drawn, seeded, among the menu's queue and submenu options) and a
case number of the expected length, so every session ends with ``IVR_ACTION=queue``.

All figures are taken on the generator's side. First-command latency: from the moment the
environment block is written to the socket to the moment the generator reads the first
command line, on its clock. Every fake Asterisk answers at once, so the server is
saturated: each exchange of a call in progress waits for the loop's round of all the
others (Little's law: the sessions in flight over the exchanges per second), and so
would a new call's first command, had the server not put new calls first
(``ivr.agi.server``: accept, environment and first command between the replies).
``first_command_*`` are the sessions that start while the others are in flight: 500
concurrent sessions, the steady state. The first ``--concurrency`` sessions all connect
in the same millisecond at start (500 callers picking up at once, which no line sees),
and the server does their first exchanges one after the other: their figures are
reported apart, ``ramp_first_command_*``. ``connect_*`` shows the TCP connect times,
where a listen backlog shorter than a burst of calls costs 1 s SYN retransmissions.
``*_cpu_ms_per_session`` (CPU time, not wall time) depend less on what else runs on the
machine than the rates do: compare runs made back to back.

``--floor`` measures, with the same generator, a server that does nothing but send 5
fixed command lines (a typical session's: its variables in one ``EXEC MSet``), one per
reply, and close: what the machine, the loop and the generator allow, to read the real
figures against.

    python bench/agi_sessions.py --json [--sessions N] [--concurrency C] [--generators G] [--seed S] [--floor]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import gc
import multiprocessing
import os
import random
import select
import socket
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import Any, Final, cast
from zoneinfo import ZoneInfo

from _util import FIXTURES, emit, percentile, quiet_logs, rate

from ivr.agi.server import AGIServer, AGIStats
from ivr.config import Config, default_config
from ivr.domain.events import CallEvent
from ivr.domain.ivr_ops import prompt_path
from ivr.protocol.agi import (
    AGIClientConnection,
    Command,
    UnknownCommand,
    encode_reply,
    mset_pairs,
    parse_command,
)
from ivr.recording import read_fastagi

#: Inside every default service's opening hours.
THURSDAY_10H = datetime(2026, 11, 26, 10, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
ENDPOS = 14560  # what the recording answers for a played prompt
FLOOR_VARIABLES: Final = (
    ("IVR_ACTION", "queue"),
    ("IVR_QUEUE", "caf"),
    ("IVR_PRIO", "1"),
    ("IVR_QTIMEOUT", "0"),
    ("IVR_SERVICE", "caf"),
    ("IVR_REASON", "menu"),
    ("IVR_CASE", ""),
    ("IVR_LANG", "fr"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Keypad:
    """What a caller types at each prompt of the configuration to get to a queue.

    ``menus``: per menu prompt, the keys of its queue and submenu options (one is drawn);
    ``inputs``: per input prompt (a case number), how many digits to type.
    """

    menus: dict[str, list[str]]
    inputs: dict[str, int]

    @classmethod
    def from_config(cls, config: Config) -> Keypad:
        menus: dict[str, list[str]] = {}
        inputs: dict[str, int] = {}
        for service in config.services.values():
            for menu in service.menus.values():
                keys = [key for key, option in menu.options.items() if option.kind in ("queue", "menu")]
                if keys:
                    menus[prompt_path(service.language, menu.prompt)] = keys
            for spec in service.inputs.values():
                inputs[prompt_path(service.language, spec.prompt)] = spec.max_digits
        return cls(menus, inputs)

    def digits(self, prompt: str, rng: random.Random) -> str:
        """The keys typed at ``prompt``; "" (a timeout) for a prompt the configuration lacks."""
        keys = self.menus.get(prompt)
        if keys:
            return rng.choice(keys)
        length = self.inputs.get(prompt, 0)
        return "".join(rng.choice("0123456789") for _ in range(length))


@dataclasses.dataclass(slots=True)
class Results:
    """What the generator saw."""

    sessions: int = 0
    commands: int = 0
    routed_to_queue: int = 0
    connect_errors: int = 0
    unanswered: int = 0  # sessions closed before any command
    latencies_ms: list[float] = dataclasses.field(default_factory=list)  # steady state
    ramp_ms: list[float] = dataclasses.field(default_factory=list)  # the first burst of connections
    connect_ms: list[float] = dataclasses.field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    cpu_s: float = 0.0  # the generator's CPU time during the run


class Answers:
    """What the fake Asterisk answers to each command line, as res_agi.c would.

    A line whose answer never changes (a prompt played, a variable set) is parsed with the
    codec (:func:`~ivr.protocol.agi.parse_command`) and answered once, then its reply bytes
    are looked up: the generator's CPU then goes to the sockets, not to parsing the same
    few lines again, so the one process keeps up with a faster server. ``GET DATA``
    (keys drawn per call) and the line that sets ``IVR_ACTION`` (counted) -- ``EXEC MSet``
    or ``SET VARIABLE`` -- are answered each time.
    """

    def __init__(self, keys: Keypad) -> None:
        self.keys = keys
        self.fixed: dict[bytes, bytes] = {}

    def answer(self, line: bytes, rng: random.Random, session: FakeAsterisk) -> bytes:
        cmd = parse_command(line.decode())
        if isinstance(cmd, UnknownCommand):
            return encode_reply(510)
        name = cmd.name
        if name == "GET DATA":
            digits = self.keys.digits(cmd.args[0], rng)
            return encode_reply(200, digits) if digits else encode_reply(200, "", "timeout")
        if name == "SET VARIABLE" and cmd.args[0] == "IVR_ACTION":
            session.action = cmd.args[1]
            return encode_reply(200, 1)
        mset = name == "EXEC" and len(cmd.args) > 0 and cmd.args[0].lower() == "mset"
        if mset:
            action = dict(mset_pairs(cmd.args[1] if len(cmd.args) > 1 else "")).get("IVR_ACTION")
            if action is not None:
                session.action = action
                return encode_reply(200, 0)
        if name in ("ANSWER", "SAY DIGITS", "SAY NUMBER"):
            reply = encode_reply(200, 0)
        elif name == "STREAM FILE":
            reply = encode_reply(200, 0, endpos=ENDPOS)
        elif name == "SET VARIABLE":
            reply = encode_reply(200, 1)
        elif name == "EXEC":
            # MSet returns 0; any other application is unknown here ("Could not find").
            reply = encode_reply(200, 0 if mset else -2)
        elif name == "GET VARIABLE":
            reply = encode_reply(200, 1, "Up") if cmd.args[0] == "CHANNEL(state)" else encode_reply(200, 0)
        elif name in ("VERBOSE", "HANGUP"):
            reply = encode_reply(200, 1)
        else:
            reply = encode_reply(510)
        if len(self.fixed) < 10_000:
            self.fixed[line] = reply
        return reply


class FakeAsterisk:
    """Asterisk's side of one FastAGI session on a non-blocking socket, answering at once.

    It works on the bytes: the environment block is pre-encoded, each command line is
    looked up in :class:`Answers`, and the replies to what one read brought are written in
    one ``send`` (there is one, since the server waits for each reply).
    """

    __slots__ = (
        "action",
        "asked_at",
        "buf",
        "commands",
        "env",
        "first_ms",
        "in_ramp",
        "rng",
        "sent_at",
        "sock",
    )

    def __init__(self, sock: socket.socket, env: bytes, rng: random.Random, in_ramp: bool) -> None:
        self.in_ramp = in_ramp
        self.sock = sock
        self.env = env
        self.rng = rng
        self.buf = b""
        self.asked_at = time.perf_counter()
        self.sent_at = 0.0
        self.first_ms: float | None = None
        self.commands = 0
        self.action = ""

    def connected(self) -> None:
        self.sock.sendall(self.env)  # a few hundred bytes: the socket buffer takes them at once
        self.sent_at = time.perf_counter()

    def received(self, data: bytes, answers: Answers) -> None:
        if self.first_ms is None:
            self.first_ms = (time.perf_counter() - self.sent_at) * 1000
        buf = self.buf + data if self.buf else data
        fixed = answers.fixed
        replies: list[bytes] = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = buf[start:end]
            start = end + 1
            reply = fixed.get(line)
            replies.append(reply if reply is not None else answers.answer(line, self.rng, self))
        self.buf = buf[start:]
        if replies:
            self.commands += len(replies)
            self.sock.sendall(replies[0] if len(replies) == 1 else b"".join(replies))


def environments(env: Mapping[str, str], services: list[str], count: int, seed: int) -> list[bytes]:
    """``count`` environment blocks: the recorded one, each with its own call and a drawn service."""
    rng = random.Random(seed)
    base = dict(env)
    epoch = int(THURSDAY_10H)
    out: list[bytes] = []
    for i in range(count):
        service = rng.choice(services)
        block = dict(base)
        block["agi_network_script"] = f"ivr?service={service}"
        block["agi_request"] = f"agi://127.0.0.1:4573/ivr?service={service}"
        block["agi_uniqueid"] = f"{epoch + i // 1000}.{i}"
        block["agi_channel"] = f"Local/100@public-{i:08x};2"
        out.append(AGIClientConnection().start(block))
    return out


def generate(
    port: int, envs: list[bytes], keys: Keypad, concurrency: int, seed: int, first_index: int = 0
) -> Results:
    """Run ``concurrency`` fake Asterisks until every environment in ``envs`` had its session.

    A plain ``epoll`` loop over non-blocking sockets, no asyncio: per session the generator
    then costs little more than its system calls, so that one process can load the server
    harder than the server can serve (what is measured is the server, not the generator).
    """
    poller = select.epoll()
    results = Results()
    answers = Answers(keys)
    live: dict[int, FakeAsterisk] = {}
    address = ("127.0.0.1", port)
    next_index = 0

    def open_one() -> None:
        nonlocal next_index
        index = next_index
        next_index += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rng = random.Random(seed * 1_000_003 + first_index + index)
        session = FakeAsterisk(sock, envs[index], rng, in_ramp=index < concurrency)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            results.connect_errors += 1
            return
        live[sock.fileno()] = session
        poller.register(sock.fileno(), select.EPOLLOUT)

    def finish(fd: int, session: FakeAsterisk) -> None:
        poller.unregister(fd)
        del live[fd]
        session.sock.close()
        results.sessions += 1
        results.commands += session.commands
        if session.first_ms is None:
            results.unanswered += 1
        elif session.in_ramp:
            results.ramp_ms.append(session.first_ms)
        else:
            results.latencies_ms.append(session.first_ms)
        if session.action == "queue":
            results.routed_to_queue += 1

    cpu = time.process_time()
    results.started = time.perf_counter()
    while next_index < len(envs) and len(live) < concurrency:
        open_one()
    while live:
        for fd, _events in poller.poll():
            session = live[fd]
            if session.sent_at == 0.0:  # connecting
                if session.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    poller.unregister(fd)
                    del live[fd]
                    session.sock.close()
                    results.connect_errors += 1
                else:
                    session.connected()
                    results.connect_ms.append((session.sent_at - session.asked_at) * 1000)
                    poller.modify(fd, select.EPOLLIN)
                    continue
            else:
                try:
                    data = session.sock.recv(65536)
                except ConnectionError:
                    data = b""
                if data:
                    session.received(data, answers)
                    continue
                finish(fd, session)  # the server closed: the session is over
            if next_index < len(envs):
                open_one()
    results.finished = time.perf_counter()
    results.cpu_s = time.process_time() - cpu
    poller.close()
    return results


def run_generator(
    conn: Connection, port: int, envs: list[bytes], keys: Keypad, concurrency: int, seed: int, first: int
) -> None:
    """Child-process entry point: say ``ready``, wait for ``go``, run the load, send :class:`Results`."""
    quiet_logs()
    conn.send("ready")
    conn.recv()
    conn.send(generate(port, envs, keys, concurrency, seed, first))


def _receive(conns: list[Connection], sentinels: list[int], timeout: float) -> list[Any]:
    """One message from each child; an error if one dies or is silent for ``timeout``."""
    messages: list[Any] = []
    for conn, sentinel in zip(conns, sentinels, strict=True):
        if conn not in wait([conn, sentinel], timeout):
            raise RuntimeError("a load generator died or said nothing in time")
        messages.append(conn.recv())
    return messages


def merge(parts: list[Results]) -> Results:
    """The generators' results as one (perf_counter is CLOCK_MONOTONIC: one clock for all)."""
    out = Results(started=min(p.started for p in parts), finished=max(p.finished for p in parts))
    for p in parts:
        out.sessions += p.sessions
        out.commands += p.commands
        out.routed_to_queue += p.routed_to_queue
        out.connect_errors += p.connect_errors
        out.unanswered += p.unanswered
        out.latencies_ms += p.latencies_ms
        out.ramp_ms += p.ramp_ms
        out.connect_ms += p.connect_ms
        out.cpu_s += p.cpu_s
    return out


#: What the ``--floor`` server sends, one line per reply: the commands of a typical session.
FLOOR_COMMANDS: Final = tuple(
    Command(name, args).encode()
    for name, args in [
        ("ANSWER", ()),
        ("STREAM FILE", ("fr/decroche/caf-welcome", "")),
        ("GET DATA", ("fr/decroche/caf-menu", "5000", "1")),
        ("STREAM FILE", ("fr/decroche/queue-transfer", "")),
        ("EXEC", ("MSet", ",".join(f"{name}={value}" for name, value in FLOOR_VARIABLES))),
    ]
)


class FloorSession(asyncio.BufferedProtocol):
    """``--floor``: the cheapest FastAGI server there is, to show what the machine and the
    generator allow: after the environment block, the next fixed line per reply, then close.
    No codec, no flow, no time limit."""

    def __init__(self, server: FloorServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.env = b""
        self.sent = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self.transport is not None
        if self.sent < 0:
            self.env += self.server.buffer[:nbytes]
            if b"\n\n" not in self.env:
                return
            self.server.sessions_total += 1
        self.sent += 1
        if self.sent < len(FLOOR_COMMANDS):
            self.transport.write(FLOOR_COMMANDS[self.sent])
        else:
            self.transport.close()


class FloorServer:
    """The ``--floor`` server, with the few members of :class:`AGIServer` the bench uses."""

    def __init__(self) -> None:
        self.buffer = memoryview(bytearray(65536))
        self.sessions_total = 0
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    @property
    def stats(self) -> AGIStats:
        return AGIStats(0, self.sessions_total, 0, 0, 0)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FloorSession(self), "127.0.0.1", 0, backlog=500)

    async def stop(self, grace: float = 0.0) -> None:
        if self.server is not None:
            self.server.close()


async def serve_and_measure(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    types: Counter[str] = Counter()

    def sink(event: CallEvent) -> None:
        types[event.type] += 1

    server: AGIServer | FloorServer
    if args.floor:
        server = FloorServer()
    else:
        server = AGIServer(config, None, sink, "127.0.0.1", 0, clock=lambda: THURSDAY_10H)
    await server.start()
    # As ``Controller.start`` does once everything is built: what lives as long as the
    # process is kept out of the collector's way.
    gc.collect()
    gc.freeze()
    recorded = read_fastagi(FIXTURES / "answered" / "fastagi.txt")[0]
    envs = environments(recorded.env, sorted(config.services), args.sessions, args.seed)
    keypad = Keypad.from_config(config)
    ctx = multiprocessing.get_context("spawn")
    conns: list[Connection] = []
    processes: list[multiprocessing.process.BaseProcess] = []
    n = args.generators
    for g in range(n):
        first, last = g * len(envs) // n, (g + 1) * len(envs) // n
        concurrency = args.concurrency // n + (g < args.concurrency % n)
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=run_generator,
            args=(child, server.port, envs[first:last], keypad, concurrency, args.seed, first),
            name=f"bench-agi-load-{g}",
            daemon=True,
        )
        process.start()
        conns.append(parent)
        processes.append(process)
    sentinels = [p.sentinel for p in processes]
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, _receive, conns, sentinels, 120.0)
        cpu = time.process_time()
        for conn in conns:
            conn.send("go")
        results = merge(await loop.run_in_executor(None, _receive, conns, sentinels, 600.0))
        server_cpu = time.process_time() - cpu
    finally:
        for child_process in processes:
            child_process.join(10)
            if child_process.is_alive():
                child_process.terminate()
        await server.stop(grace=2.0)  # waits for the sessions still finishing their bookkeeping
    stats = server.stats
    seconds = results.finished - results.started
    return {
        "sessions": results.sessions,
        "concurrency": args.concurrency,
        "sessions_per_s": rate(results.sessions, seconds),
        "first_command_p50_ms": round(percentile(results.latencies_ms, 50), 2),
        "first_command_p99_ms": round(percentile(results.latencies_ms, 99), 2),
        "first_command_max_ms": round(max(results.latencies_ms, default=0.0), 2),
        "ramp_sessions": len(results.ramp_ms),
        "ramp_first_command_p50_ms": round(percentile(results.ramp_ms, 50), 2),
        "ramp_first_command_p99_ms": round(percentile(results.ramp_ms, 99), 2),
        "ramp_first_command_max_ms": round(max(results.ramp_ms, default=0.0), 2),
        # TCP connect (to the environment written): a listen backlog too short for a burst
        # of calls shows here as SYN retransmissions, 1 s or more.
        "connect_p99_ms": round(percentile(results.connect_ms, 99), 2),
        "connect_max_ms": round(max(results.connect_ms, default=0.0), 2),
        "commands": results.commands,
        "routed_to_queue": results.routed_to_queue,
        "agent_requested_events": types["agent.requested"],
        "call_events": sum(types.values()),
        "connect_errors": results.connect_errors,
        "unanswered": results.unanswered,
        "server_sessions_total": stats.sessions_total,
        "server_rejected": stats.rejected,
        "server_failed": stats.failed,
        "elapsed_s": round(seconds, 3),
        # CPU time per session: less sensitive than the rates to what else runs on the machine.
        "server_cpu_ms_per_session": round(server_cpu * 1000 / max(1, results.sessions), 3),
        "generator_cpu_ms_per_session": round(results.cpu_s * 1000 / max(1, results.sessions), 3),
        "max_sessions": config.agi.max_sessions,
        "generators": args.generators,
        "server": "floor" if args.floor else "ivr",
        "seed": args.seed,
        "loadavg_1m_before": args.loadavg,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument(
        "--generators", type=int, default=1, help="load generator processes (one per spare core)"
    )
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="measure a do-nothing server instead (what the machine and the generator allow)",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.generators < 1 or args.concurrency < args.generators:
        parser.error("--sessions and --generators must be >= 1, --concurrency >= --generators")
    args.loadavg = round(os.getloadavg()[0], 2)  # the machine's load before we add ours
    quiet_logs(args.log_level)
    config = default_config()
    agi = dataclasses.replace(config.agi, max_sessions=max(config.agi.max_sessions, args.concurrency))
    config = dataclasses.replace(config, agi=agi)
    emit(asyncio.run(serve_and_measure(args, config)), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
