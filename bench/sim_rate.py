"""Calls and AMI events per CPU second of the simulator running the shipped dialplan, AMI on the wire.

The simulated PBX runs the product configuration (``ivr/sim/product.toml``: the dialplan
of ``dialplans/``, the queues of ``asterisk-conf/queues.conf``) at ``speed=inf`` with many
concurrent calls: Poisson callers on the four public numbers, 200 agents shared by the
service queues. An AMI client is logged in with every event on and reads the socket, so
each event is really encoded and sent; it counts the events it receives, which must equal
what the AMI server delivered (``events_received`` == ``events_delivered``).

How it measures (``--reader``):

* ``process`` (default): the AMI client runs in a child process, as the controller does
  beside a real simulator. ``calls_per_s`` and ``events_per_s`` divide by the CPU time
  (user + system, ``time.process_time``) of the simulator's process alone, from the first
  call to the last event written: the engine, the AMI filtering, encoding and socket writes
  (the kernel's loopback sends are system time of this process), on one core -- the
  simulator is one asyncio thread. The client's own CPU is reported apart
  (``reader_cpu_s``), and ``calls_per_s_with_reader`` divides by both.
* ``same``: the client reads in the simulator's process and event loop; the figures then
  include the client's reads too (the stricter, older measure).

AMI user (``--filters``):

* ``ivr`` (default): the AMI server applies the ``eventfilter`` lines of the shipped
  ``asterisk-conf/manager.conf`` for the ``ivr`` user, as Asterisk does (Newexten,
  DeviceStateChange, NewCallerid, NewConnectedLine, LocalBridge, MusicOnHold and most
  VarSet never reach the controller; the simulator does not even build them).
  ``events_per_s`` counts the events the client receives; ``events_emitted``
  (``events_emitted_per_s``) what the engine raised, filtered or not.
* ``none``: no filter, the whole stream (as the recordings were made).

FastAGI (``--agi``):

* ``none`` (default): nothing listens at IVR_AGI_PORT, every ``AGI()`` fails at once and
  the dialplan fails open as it does when the controller is down (queue named after the
  service, IVR_DEFAULT_QTIMEOUT; after the queue, hang up). Each AGI() still costs a TCP
  connect attempt.
* ``fast``: a minimal in-process FastAGI server answers like the controller's contract
  (``ivr``: IVR_ACTION=queue and the queue variables in one ``EXEC MSet``, as the
  controller sets them; ``after-queue``: hangup), without
  menus, so each call makes two real FastAGI sessions (both ends in this process).

The round trips of a real IVR (prompts, GET DATA) take virtual time, not CPU; what costs
CPU is the sessions themselves, which ``fast`` measures.

``engine_only_*``: the same traffic with a listener that counts every event instead of
the AMI server (every event built, none encoded).

Goals (the simulator's brief): >= 500 calls/s and >= 15k AMI events/s on one core.

    python bench/sim_rate.py --json [--calls 2000] [--agents 200] [--rate 3] [--agi none|fast]
                                    [--filters ivr|none] [--reader process|same]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import select
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from ivr.protocol.agi import AGIServerConnection, Command, mset, set_variable
from ivr.sim.ami_server import AMIServer
from ivr.sim.conf_loader import product_config
from ivr.sim.config import AgentModel, MemberConfig, SimConfig
from ivr.sim.engine import Simulator
from ivr.sim.manager_conf import load_manager_user
from ivr.sim.traffic import TrafficGenerator

START = 1_800_000_000.0
SECRET = "bench-secret"
SERVICES = ("caf", "france-travail", "cpam", "carsat")
MANAGER_CONF = Path(__file__).resolve().parent.parent / "asterisk-conf" / "manager.conf"


def config(agents: int, rate: float, calls: int, agi_port: int) -> SimConfig:
    """The product configuration with ``agents`` agents (1000...) spread over the service queues."""
    cfg = product_config("normal")
    cfg.dialplan["agents"] = {**cfg.dialplan["agents"], "_1XXX": ["AgentPlan()"]}
    for i in range(agents):
        ext = str(1000 + i)
        queue = SERVICES[i % len(SERVICES)]
        q = cfg.queues[queue]
        cfg.queues[queue] = replace(
            q, members=(*q.members, MemberConfig(f"Local/{ext}@agents", f"Agent {ext}"))
        )
        cfg.agents[ext] = AgentModel(answer_delay=(1.0, 4.0), talk_time=(20.0, 60.0), no_answer=0.05)
    cfg.globals["IVR_AGI_PORT"] = str(agi_port)
    cfg.traffic = replace(cfg.traffic, arrivals_per_hour=3600 * rate, calls=calls, patience=(30.0, 300.0))
    return cfg


# -- a FastAGI server as small as the contract allows -----------------------------------------


class _FastAGI(asyncio.Protocol):
    """Answers ``ivr`` with a queue decision and everything else with a hangup decision."""

    def __init__(self) -> None:
        self.conn = AGIServerConnection()
        self.transport: asyncio.Transport | None = None
        self.pending: list[Command] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        from ivr.protocol.agi import NEED_DATA, AGIEnvironment, Reply

        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, AGIEnvironment):
                service = event.query.get("service", "caf")
                if event.script == "ivr":
                    variables = [("IVR_ACTION", "queue"), ("IVR_QUEUE", service), ("IVR_PRIO", "0")]
                    variables.append(("IVR_QTIMEOUT", "300"))
                else:
                    variables = [("IVR_ACTION", "hangup")]
                # As the controller sets them: one EXEC MSet (ivr.domain.ivr_ops.set_variables).
                self.pending = [mset(variables) if len(variables) > 1 else set_variable(*variables[0])]
                self._next()
            elif isinstance(event, Reply):
                self._next()
            else:  # hangup notice, closed
                self._close()
                return

    def _next(self) -> None:
        assert self.transport is not None
        if self.pending:
            self.transport.write(self.conn.send(self.pending.pop(0)))
        else:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


# -- an AMI client that reads everything -------------------------------------------------------


class _Reader(asyncio.Protocol):
    """Logs in with every event on and counts the events read (``--reader same``).

    A protocol rather than a stream reader: counting in ``data_received`` costs the
    shared event loop little beyond the reads themselves.
    """

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0
        self.tail = b""
        self.head = b""  # the login exchange, until SuccessfulAuth
        self.logging_in = True
        self.ready = asyncio.Event()
        self.caught_up = asyncio.Event()
        self.expected: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        login = f"Action: Login\r\nUsername: ivr\r\nSecret: {SECRET}\r\nEvents: on\r\n\r\n"
        transport.write(login.encode())

    def data_received(self, data: bytes) -> None:
        if self.logging_in:
            self.head += data
            # banner, the login response, FullyBooted, then the SuccessfulAuth security
            # event: the session's own events, not counted
            end = self.head.find(b"Event: SuccessfulAuth")
            if end < 0 or self.head.find(b"\r\n\r\n", end) < 0:
                return
            if b"Response: Success" not in self.head:
                raise RuntimeError(f"AMI login failed: {self.head!r}")
            cut = self.head.find(b"\r\n\r\n", end) + 4
            data = self.head[cut:]
            self.head = b""
            self.logging_in = False
            self.tail = b"\r\n\r\n"  # what follows starts a message
            self.ready.set()
        self.bytes += len(data)
        chunk = self.tail + data
        self.events += chunk.count(b"\r\n\r\nEvent: ")
        self.tail = chunk[-9:]
        if self.expected is not None and self.events >= self.expected:
            self.caught_up.set()

    def expect(self, events: int) -> None:
        """Set :attr:`caught_up` once ``events`` events have been read."""
        self.expected = events
        if self.events >= events:
            self.caught_up.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _read_in_child(port: int) -> None:
    """The ``--read-port`` mode: log in, say ``ready``, count events until told how many.

    Blocking sockets in a process of its own: the simulator's CPU time then holds none of
    the client's reads. The parent writes the number of events to expect on stdin; the
    answer (events, bytes, this process's CPU seconds) is one JSON line on stdout.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    data = b""

    def message() -> bytes:
        nonlocal data
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("AMI connection closed during login")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        return head

    while b"\r\n" not in data:
        data += sock.recv(1 << 16)
    data = data.split(b"\r\n", 1)[1]  # banner
    sock.sendall(f"Action: Login\r\nUsername: ivr\r\nSecret: {SECRET}\r\nEvents: on\r\n\r\n".encode())
    login = message()
    if b"Success" not in login:
        raise RuntimeError(f"AMI login failed: {login!r}")
    # FullyBooted, then the SuccessfulAuth security event: the session's own events
    while b"Event: SuccessfulAuth" not in message():
        pass
    cpu0 = time.process_time()
    print("ready", flush=True)
    # what follows SuccessfulAuth starts a message: as if after a blank line
    chunk = b"\r\n\r\n" + data
    events = chunk.count(b"\r\n\r\nEvent: ")
    total = len(data)
    tail = chunk[-9:]
    expected: int | None = None
    deadline = math.inf
    stdin = sys.stdin.fileno()
    while expected is None or events < expected:
        if time.monotonic() > deadline:
            break
        ready, _, _ = select.select([sock, stdin] if expected is None else [sock], [], [], 1.0)
        if stdin in ready:
            expected = int(sys.stdin.readline())
            deadline = time.monotonic() + 10.0
        if sock in ready:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            chunk = tail + chunk
            events += chunk.count(b"\r\n\r\nEvent: ")
            tail = chunk[-9:]
    cpu = time.process_time() - cpu0
    print(json.dumps({"events": events, "bytes": total, "cpu_s": cpu}), flush=True)
    sock.close()


class _ChildReader:
    """The AMI client in a child process (see :func:`_read_in_child`)."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--read-port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"AMI reader did not start: {line!r}")

    async def finish(self, expected: int) -> dict[str, Any]:
        """Tell the child how many events to wait for; its counts and CPU seconds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{expected}\n")
        self.proc.stdin.flush()
        line = await asyncio.to_thread(self.proc.stdout.readline)
        await asyncio.to_thread(self.proc.wait, 10)
        result: dict[str, Any] = json.loads(line)
        return result


async def engine_only(calls: int, agents: int, rate: float, seed: int, agi_port: int) -> tuple[float, float]:
    """The same traffic with a listener that only counts: (calls, events) per CPU second.

    Told apart from the AMI run, it shows what the engine itself costs and what the AMI
    encoding, the socket and the client add.
    """
    sim = Simulator(config(agents, rate, calls, agi_port), seed=seed, speed=math.inf, start_epoch=START)
    events = 0

    def count(name: str, headers: object) -> None:
        nonlocal events
        events += 1

    sim.add_listener(count)
    await sim.start()
    cpu0 = time.process_time()
    gen = TrafficGenerator(sim)
    await gen.run()
    await sim.idle()
    cpu = time.process_time() - cpu0
    await sim.stop()
    return gen.stats.placed / cpu, events / cpu


async def run(
    calls: int, agents: int, rate: float, seed: int, agi: str, filters: str, reader_mode: str = "process"
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    fast_server: asyncio.Server | None = None
    if agi == "fast":
        fast_server = await loop.create_server(_FastAGI, "127.0.0.1", 0)
        agi_port = fast_server.sockets[0].getsockname()[1]
        note = "FastAGI: in-process minimal server (2 sessions per answered call: ivr, after-queue)"
    else:
        # a bound socket that does not listen: connect() is refused at once
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        agi_port = closed.getsockname()[1]
        note = "FastAGI: none (connect refused; the dialplan fails open to the service queue)"
    sim = Simulator(config(agents, rate, calls, agi_port), seed=seed, speed=math.inf, start_epoch=START)
    await sim.start()
    event_filters = load_manager_user(MANAGER_CONF, "ivr").filters if filters == "ivr" else ()
    ami = AMIServer(
        sim, "127.0.0.1", 0, "ivr", secret=SECRET, max_output_buffer=1 << 30, event_filters=event_filters
    )
    await ami.start()
    child: _ChildReader | None = None
    if reader_mode == "process":
        child = _ChildReader(ami.port)
        await asyncio.wait_for(child.ready(), 20)  # logged in: it has read SuccessfulAuth
    else:
        reader = _Reader()
        await loop.create_connection(lambda: reader, "127.0.0.1", ami.port)
        await asyncio.wait_for(reader.ready.wait(), 10)
    emitted0 = sim.events_emitted
    delivered0 = ami.events_delivered
    peak = 0

    def count(name: str, headers: object) -> None:
        nonlocal peak
        if name == "Newchannel":
            peak = max(peak, len(sim.channels))

    # Newchannel only: a listener that took every event would make the engine build the
    # events the AMI filters spare it
    sim.add_listener(count, lambda name, privilege: name == "Newchannel")
    cpu0, wall0 = time.process_time(), time.perf_counter()
    gen = TrafficGenerator(sim)
    await gen.run()
    await sim.idle()
    emitted = sim.events_emitted - emitted0
    delivered = ami.events_delivered - delivered0
    reader_cpu: float | None = None
    if child is not None:
        # until the child has read the last event: the last writes count too
        got = await child.finish(delivered)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        received, ami_bytes, reader_cpu = got["events"], got["bytes"], got["cpu_s"]
    else:
        reader.expect(delivered)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.caught_up.wait(), 10)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        received, ami_bytes = reader.events, reader.bytes
        reader.close()
    virtual = sim.now() - START
    answered = sum(1 for line in sim.queue_log_lines if "|CONNECT|" in line)
    await ami.stop()
    await sim.stop()
    engine_calls, engine_events = await engine_only(calls, agents, rate, seed, agi_port)
    if fast_server is not None:
        fast_server.close()
        await fast_server.wait_closed()
    else:
        closed.close()
    placed = gen.stats.placed
    return {
        "benchmark": "sim_rate",
        "calls_per_s": round(placed / cpu),
        "events_per_s": round(received / cpu),
        "events_per_call": round(received / placed, 1),
        "events_emitted_per_s": round(emitted / cpu),
        "engine_only_calls_per_s": round(engine_calls),
        "engine_only_events_per_s": round(engine_events),
        "calls": placed,
        "answered": answered,
        "agents": agents,
        "agi": agi,
        "events_emitted": emitted,
        "events_delivered": delivered,
        "events_received": received,
        "ami_bytes": ami_bytes,
        "peak_channels": peak,
        "arrivals_per_s_virtual": rate,
        "virtual_s": round(virtual),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "reader": reader_mode,
        "reader_cpu_s": None if reader_cpu is None else round(reader_cpu, 3),
        "calls_per_s_with_reader": round(placed / (cpu + (reader_cpu or 0.0))),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "filters": filters,
        "notes": note
        + (
            f"; AMI eventfilters of the ivr user in asterisk-conf/manager.conf applied ({len(event_filters)}"
            " filters): events_per_s counts what the client receives, events_emitted what the engine raised"
            if event_filters
            else "; no AMI eventfilters: the client receives every event the engine raises"
        )
        + (
            "; per CPU second of the simulator's process (one core: engine + AMI filter/encode/send),"
            " the AMI client reading in a child process (reader_cpu_s)"
            if reader_mode == "process"
            else "; one process, one core: engine + AMI encode/send + AMI client reads"
        )
        + "; engine_only_*: the same traffic with a counting listener instead of the AMI server",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--rate", type=float, default=3.0, help="arrivals per virtual second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--agi", choices=("none", "fast"), default="none")
    parser.add_argument(
        "--filters",
        choices=("ivr", "none"),
        default="ivr",
        help="AMI eventfilters: those of the ivr user in asterisk-conf/manager.conf, or none",
    )
    parser.add_argument(
        "--reader",
        choices=("process", "same"),
        default="process",
        help="the AMI client in a child process (default) or in the simulator's process",
    )
    parser.add_argument("--read-port", type=int, help=argparse.SUPPRESS)  # the child reader
    args = parser.parse_args()
    if args.read_port is not None:
        _read_in_child(args.read_port)
        return
    if args.calls < 1 or args.agents < 1 or not args.rate > 0:
        parser.error("--calls, --agents and --rate must be positive")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    result = asyncio.run(
        run(args.calls, args.agents, args.rate, args.seed, args.agi, args.filters, args.reader)
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
