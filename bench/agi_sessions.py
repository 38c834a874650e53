"""FastAGI: IVR sessions per second and first-command latency, 500 sessions at a time.

The server under test is :class:`~ivr.agi.server.AGIServer` with the packaged default
configuration (the four services' menus, opening hours) and its clock set to a Thursday at
10:00 in Paris (every service open). One change: ``[agi] max_sessions`` is raised to the
concurrency, since the shipped 200 would refuse 300 of 500 simultaneous calls.

The load generator runs in child processes (``--generators``, one by default: their own
loops and cores, so they do not steal the server's loop): ``--concurrency`` fake Asterisks
(:class:`~ivr.protocol.agi.AGIClientConnection`, Asterisk's side of the codec), each
connecting again as soon as its session ends, until ``--sessions`` sessions are done. A
generator needs about 0.7 ms of CPU per session, so one caps the measurable rate near
1,500/s: give it more processes on a machine with cores to spare. Each fake Asterisk
sends the environment block recorded from Asterisk 22.10.1 (``answered/fastagi.txt``) with
its own ``agi_uniqueid``/``agi_channel`` and a service drawn from the configuration, and
answers every command at once the way res_agi.c does (``200 result=0 endpos=...`` for
prompts, ``200 result=1`` for SET VARIABLE ...). ``GET DATA`` gets keys that lead to a
queue (drawn, seeded, among the menu's queue and submenu options) and a case number of the
expected length, so every session ends with ``IVR_ACTION=queue``.

First-command latency: from the moment the environment block is written to the socket
to the moment the first command line has arrived, on the generator's clock. Every fake
Asterisk answers at once, so the server is saturated and the latency is mostly queueing
(Little's law: 500 sessions in flight / commands per second); ``connect_*`` shows the TCP
connect times, where a listen backlog shorter than a burst of calls costs 1 s SYN
retransmissions. ``*_cpu_ms_per_session`` (CPU time, not wall time) depend less on what
else runs on the machine than the rates do.

    python bench/agi_sessions.py --json [--sessions N] [--concurrency C] [--generators G] [--seed S]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import Any
from zoneinfo import ZoneInfo

from _util import FIXTURES, emit, percentile, quiet_logs, rate

from ivr.agi.server import AGIServer
from ivr.config import Config, default_config
from ivr.domain.events import CallEvent
from ivr.domain.ivr_ops import prompt_path
from ivr.protocol.agi import CLOSED, NEED_DATA, AGIClientConnection, Command, UnknownCommand
from ivr.recording import read_fastagi

#: Inside every default service's opening hours.
THURSDAY_10H = datetime(2026, 11, 26, 10, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
ENDPOS = 14560  # what the recording answers for a played prompt


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
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    connect_ms: list[float] = dataclasses.field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    cpu_s: float = 0.0  # the generator's CPU time during the run


class FakeAsterisk(asyncio.Protocol):
    """Asterisk's side of one FastAGI session, answering every command at once."""

    def __init__(self, env: bytes, keys: Keypad, rng: random.Random, done: asyncio.Future[None]) -> None:
        self.env = env
        self.keys = keys
        self.rng = rng
        self.done = done
        self.conn = AGIClientConnection()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.first_ms: float | None = None
        self.commands = 0
        self.action = ""

    def itself(self) -> FakeAsterisk:
        """The protocol factory of ``create_connection``."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.started = True  # the block is pre-encoded by the generator
        transport.write(self.env)
        self.sent_at = time.perf_counter()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._serve()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self._serve()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _serve(self) -> None:
        transport = self.transport
        assert transport is not None
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            if event is CLOSED:
                transport.close()
                return
            if self.first_ms is None:
                self.first_ms = (time.perf_counter() - self.sent_at) * 1000
            self.commands += 1
            if isinstance(event, UnknownCommand):
                transport.write(self.conn.reply(510))
            else:
                assert isinstance(event, Command)
                transport.write(self._answer(event))

    def _answer(self, cmd: Command) -> bytes:
        reply = self.conn.reply
        name = cmd.name
        if name in ("ANSWER", "SAY DIGITS", "SAY NUMBER"):
            return reply(200, 0)
        if name == "STREAM FILE":
            return reply(200, 0, endpos=ENDPOS)
        if name == "GET DATA":
            digits = self.keys.digits(cmd.args[0], self.rng)
            return reply(200, digits) if digits else reply(200, "", "timeout")
        if name == "SET VARIABLE":
            if cmd.args[0] == "IVR_ACTION":
                self.action = cmd.args[1]
            return reply(200, 1)
        if name == "GET VARIABLE":
            return reply(200, 1, "Up") if cmd.args[0] == "CHANNEL(state)" else reply(200, 0)
        if name in ("VERBOSE", "HANGUP"):
            return reply(200, 1)
        return reply(510)


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


async def generate(
    port: int, envs: list[bytes], keys: Keypad, concurrency: int, seed: int, first_index: int = 0
) -> Results:
    """Run ``concurrency`` fake Asterisks until every environment in ``envs`` had its session."""
    loop = asyncio.get_running_loop()
    results = Results()
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(envs):
            index = next_index
            next_index += 1
            done: asyncio.Future[None] = loop.create_future()
            rng = random.Random(seed * 1_000_003 + first_index + index)
            session = FakeAsterisk(envs[index], keys, rng, done)
            asked = time.perf_counter()
            try:
                await loop.create_connection(session.itself, "127.0.0.1", port)
            except OSError:
                results.connect_errors += 1
                continue
            results.connect_ms.append((session.sent_at - asked) * 1000)
            await done
            results.sessions += 1
            results.commands += session.commands
            if session.first_ms is None:
                results.unanswered += 1
            else:
                results.latencies_ms.append(session.first_ms)
            if session.action == "queue":
                results.routed_to_queue += 1

    cpu = time.process_time()
    results.started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    results.finished = time.perf_counter()
    results.cpu_s = time.process_time() - cpu
    return results


def run_generator(
    conn: Connection, port: int, envs: list[bytes], keys: Keypad, concurrency: int, seed: int, first: int
) -> None:
    """Child-process entry point: say ``ready``, wait for ``go``, run the load, send :class:`Results`."""
    quiet_logs()
    conn.send("ready")
    conn.recv()
    conn.send(asyncio.run(generate(port, envs, keys, concurrency, seed, first)))


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
        out.connect_ms += p.connect_ms
        out.cpu_s += p.cpu_s
    return out


async def serve_and_measure(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    types: Counter[str] = Counter()

    def sink(event: CallEvent) -> None:
        types[event.type] += 1

    server = AGIServer(config, None, sink, "127.0.0.1", 0, clock=lambda: THURSDAY_10H)
    await server.start()
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
        "seed": args.seed,
        "loadavg_1m_before": args.loadavg,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sessions", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument(
        "--generators", type=int, default=1, help="load generator processes (one per spare core)"
    )
    parser.add_argument("--seed", type=int, default=20261127)
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
