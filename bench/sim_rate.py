"""Calls and AMI events per CPU second of the simulator running the shipped dialplan, AMI on the wire.

The simulated PBX runs the product configuration (``ivr/sim/product.toml``: the dialplan
of ``dialplans/``, the queues of ``asterisk-conf/queues.conf``) at ``speed=inf`` with many
concurrent calls: Poisson callers on the four public numbers, 200 agents shared by the
service queues. An AMI client is logged in with every event on and reads the socket, so
each event is really encoded and sent; it counts the events it receives, which must equal
what the AMI server delivered. Everything runs in this one process (one core): the
figures include the AMI encoding, the socket writes and the client's reads.

AMI user (``--filters``):

* ``ivr`` (default): the AMI server applies the ``eventfilter`` lines of the shipped
  ``asterisk-conf/manager.conf`` for the ``ivr`` user, as Asterisk does (Newexten,
  DeviceStateChange, NewCallerid, NewConnectedLine, LocalBridge, MusicOnHold and most
  VarSet never reach the controller). ``events_per_s`` counts the events the client
  receives; ``events_emitted`` (``events_emitted_per_s``) what the engine raised,
  filtered or not.
* ``none``: no filter, the whole stream (as the recordings were made).

FastAGI (``--agi``):

* ``none`` (default): nothing listens at IVR_AGI_PORT, every ``AGI()`` fails at once and
  the dialplan fails open as it does when the controller is down (queue named after the
  service, IVR_DEFAULT_QTIMEOUT; after the queue, hang up). Each AGI() still costs a TCP
  connect attempt.
* ``fast``: a minimal in-process FastAGI server answers like the controller's contract
  (``ivr``: IVR_ACTION=queue and the queue variables; ``after-queue``: hangup), without
  menus, so each call makes two real FastAGI sessions.

The round trips of a real IVR (prompts, GET DATA) take virtual time, not CPU; what costs
CPU is the sessions themselves, which ``fast`` measures.

Goals (the simulator's brief): >= 500 calls/s and >= 15k AMI events/s on one core.

    python bench/sim_rate.py --json [--calls 2000] [--agents 200] [--rate 3] [--agi none|fast]
                                    [--filters ivr|none]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from ivr.protocol.agi import AGIServerConnection, Command, set_variable
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
                self.pending = [set_variable(k, v) for k, v in variables]
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


class _Reader:
    """Logs in with every event on and counts the events read until told to stop."""

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0
        self.tail = b""
        self.ready = asyncio.Event()
        self.caught_up = asyncio.Event()
        self.expected: int | None = None

    def expect(self, events: int) -> None:
        """Set :attr:`caught_up` once ``events`` events have been read."""
        self.expected = events
        if self.events >= events:
            self.caught_up.set()

    async def run(self, port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()  # banner
        writer.write(f"Action: Login\r\nUsername: ivr\r\nSecret: {SECRET}\r\nEvents: on\r\n\r\n".encode())
        login = await reader.readuntil(b"\r\n\r\n")
        if b"Success" not in login:
            raise RuntimeError(f"AMI login failed: {login!r}")
        # FullyBooted, then the SuccessfulAuth security event: the session's own events
        while b"Event: SuccessfulAuth" not in await reader.readuntil(b"\r\n\r\n"):
            pass
        self.ready.set()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                read = asyncio.ensure_future(reader.read(1 << 20))
                done, _ = await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    break
                chunk = read.result()
                if not chunk:
                    break
                self.bytes += len(chunk)
                data = self.tail + chunk
                self.events += data.count(b"\r\n\r\nEvent: ") + data.startswith(b"Event: ")
                self.tail = data[-9:]
                if self.expected is not None and self.events >= self.expected:
                    self.caught_up.set()
        finally:
            writer.close()


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


async def run(calls: int, agents: int, rate: float, seed: int, agi: str, filters: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    fast_server: asyncio.Server | None = None
    if agi == "fast":
        fast_server = await loop.create_server(_FastAGI, "127.0.0.1", 0)
        agi_port = fast_server.sockets[0].getsockname()[1]
        note = "FastAGI: in-process minimal server (2 sessions per answered call: ivr, after-queue)"
    else:
        # a bound socket that does not listen: connect() is refused at once
        import socket

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
    reader = _Reader()
    stop = asyncio.Event()
    reading = asyncio.create_task(reader.run(ami.port, stop))
    await asyncio.wait_for(reader.ready.wait(), 10)
    emitted0 = sim.events_emitted
    delivered0 = ami.events_delivered
    peak = 0

    def count(name: str, headers: object) -> None:
        nonlocal peak
        if name == "Newchannel":
            peak = max(peak, len(sim.channels))

    sim.add_listener(count)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    gen = TrafficGenerator(sim)
    await gen.run()
    await sim.idle()
    # the last events may still be in the socket
    emitted = sim.events_emitted - emitted0
    delivered = ami.events_delivered - delivered0
    reader.expect(delivered)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.caught_up.wait(), 10)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    received = reader.events
    virtual = sim.now() - START
    answered = sum(1 for line in sim.queue_log_lines if "|CONNECT|" in line)
    stop.set()
    await reading
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
        "ami_bytes": reader.bytes,
        "peak_channels": peak,
        "arrivals_per_s_virtual": rate,
        "virtual_s": round(virtual),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "filters": filters,
        "notes": note
        + (
            f"; AMI eventfilters of the ivr user in asterisk-conf/manager.conf applied ({len(event_filters)}"
            " filters): events_per_s counts what the client receives, events_emitted what the engine raised"
            if event_filters
            else "; no AMI eventfilters: the client receives every event the engine raises"
        )
        + "; one process, one core: engine + AMI encode/send + AMI client reads; engine_only_*: the same"
        " traffic with a counting listener instead of the AMI server",
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
    args = parser.parse_args()
    if args.calls < 1 or args.agents < 1 or not args.rate > 0:
        parser.error("--calls, --agents and --rate must be positive")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    result = asyncio.run(run(args.calls, args.agents, args.rate, args.seed, args.agi, args.filters))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
