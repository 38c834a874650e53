"""Throughput of the simulated PBX engine: calls and AMI events generated per CPU second.

A seeded load runs at ``speed=inf`` (virtual time as fast as the CPU allows) without any
network peer: callers arrive as Poisson traffic into ``Answer() -> Queue(support)``, agents
answer after a random ring, sometimes never, and talk a random time. Every event goes to a
listener that only counts it, so the figure is the engine's own cost (building the events
Asterisk would send), not the AMI encoding or the sockets.

Goals (see the engine's brief): >= 500 calls/s and >= 15k events/s on one core with many
concurrent calls; a real Asterisk does ~170 calls/s at ~77 events per call.

    python bench/sim_engine.py --json [--calls 3000] [--agents 200] [--rate 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import time
from typing import Any

import structlog

from ivr.sim.config import parse_config
from ivr.sim.engine import Simulator
from ivr.sim.traffic import TrafficGenerator


def config(agents: int, rate: float, calls: int) -> Any:
    members = [f"Local/{1000 + i}@agents" for i in range(agents)]
    return parse_config(
        {
            "dialplan": {
                "public": {"100": ["Answer()", "Queue(support,c,,,120)", "Hangup()"]},
                "caller": {"patient": ["Patience(${PATIENCE})", "Hangup()"]},
                "agents": {"_1XXX": ["AgentPlan()"]},
            },
            "globals": {},
            "queues": {
                "support": {
                    "strategy": "rrmemory",
                    "timeout": 15,
                    "retry": 2,
                    "ringinuse": False,
                    "members": members,
                }
            },
            "agents": {
                m[6:10]: {"answer_delay": [1, 4], "talk_time": [20, 60], "no_answer": 0.1} for m in members
            },
            "traffic": {"arrivals_per_hour": 3600 * rate, "calls": calls, "patience": [10, 90]},
        }
    )


async def run(calls: int, agents: int, rate: float, seed: int) -> dict[str, Any]:
    sim = Simulator(config(agents, rate, calls), seed=seed, speed=math.inf, start_epoch=1_800_000_000.0)
    events = 0
    peak = 0

    def count(name: str, headers: object) -> None:
        nonlocal events, peak
        events += 1
        if name == "Newchannel":
            peak = max(peak, len(sim.channels))

    sim.add_listener(count)
    await sim.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    gen = TrafficGenerator(sim)
    await gen.run()
    await sim.idle()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    virtual = sim.now() - 1_800_000_000.0
    await sim.stop()
    return {
        "benchmark": "sim_engine",
        "calls": gen.stats.placed,
        "agents": agents,
        "arrivals_per_s_virtual": rate,
        "peak_channels": peak,  # Local channels alive at once (4 per bridged call, 2 per waiting one)
        "events": events,
        "events_per_call": round(events / gen.stats.placed, 1),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "calls_per_cpu_s": round(gen.stats.placed / cpu),
        "events_per_cpu_s": round(events / cpu),
        "virtual_s": round(virtual),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--rate", type=float, default=4.0, help="arrivals per virtual second")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = asyncio.run(run(args.calls, args.agents, args.rate, args.seed))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
