"""Ingest: AMI events per second from the socket to the Redis stream, on one core.

Our path, as the controller wires it: :class:`~ivr.ami.client.AMIClient` ->
:meth:`StateTracker.feed <ivr.domain.state.StateTracker.feed>` ->
:meth:`EventLogWriter.submit <ivr.storage.writer.EventLogWriter.submit>` (batched, idempotent
store script) -> a real Redis (:class:`~ivr.storage.server.RedisServerProcess`), caller numbers
hashed as in the controller. The clock runs from the first replayed event handed to the
sender's transport to the moment the last call event is acknowledged by Redis
(``writer.flush()`` after the end marker, the tracker flushed too).

Baseline, same server, same stream: panoramisk 1.4's ``Manager`` with one
``await redis.xadd(...)`` per AMI event (the raw event's headers, one connection, in order:
the callback queues each event and one consumer task stores them) -- the design the event
log writer replaces.

The sender is the simulator's AMI front-end (:class:`~ivr.sim.ami_server.AMIServer`) serving
:class:`_util.ReplayEngine`: recorded Asterisk 22 traffic (``mixed_a`` and ``concurrent`` by
default) rewritten into a long stream of distinct calls, written as fast as the client reads
(flow control on the server's output buffer). The events are encoded before the clock
starts (``--broadcast``: the front-end encodes each one, as the simulator's engine makes it
do, and the sender becomes the bottleneck). By default the front-end runs in a child
process (``--server process``), so the measured client has its event loop to itself and,
on an otherwise idle machine, a core; ``--server inline`` shares one loop, as the simplest
design would. ``sender_pauses`` > 0 shows the sender had to wait for the client, i.e. the
client was the bottleneck. ``client_cpu_us_per_event`` (CPU, not wall time) depends less
on what else runs on the machine than the rate does.

``loop_lag_p99_ms``: p99 of how late a 10 ms sleep on the client's loop wakes during our
run -- what the controller's other tasks (Ping, AGI sessions, web) would feel while ingesting.

    python bench/ingest.py --json [--events N] [--baseline-events N] [--seed S]
                          [--server process|inline] [--broadcast]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import redis.asyncio
from _util import (
    AMI_SECRET,
    AMI_USER,
    BEGIN_MARKER,
    DEFAULT_SCENARIOS,
    END_MARKER,
    START_TAG,
    LagProbe,
    emit,
    percentile,
    quiet_logs,
    rate,
    serve_replay,
    start_replay_server,
)
from panoramisk import Manager
from redis.typing import EncodableT, FieldT

from ivr.ami.client import AMIClient
from ivr.domain.state import StateTracker
from ivr.storage.privacy import NumberHasher
from ivr.storage.server import RedisServerProcess
from ivr.storage.writer import EventLogWriter

HASH_KEY = "bench-hash-key-0123456789abcdef"
NAIVE_STREAM = "bench:naive"


@dataclass(slots=True)
class Sender:
    """Where the replay server listens, and how to learn when it sent what."""

    port: int
    available: int
    wait_done: Any  # () -> awaitable of (count, started, finished, pauses)


@dataclass(slots=True)
class OurRun:
    events: int
    call_events: int
    written: int
    xlen: int
    dropped: int
    seconds: float
    lag_ms: list[float]
    batches: int
    spooled: int
    cpu_s: float
    send_s: float  # the sender's time from the first event to the last
    pauses: int  # times the sender waited for the client to catch up


@dataclass(slots=True)
class BaselineRun:
    events: int
    xlen: int
    seconds: float


async def run_ours(sender: Sender, redis_url: str, count: int, spool_dir: Path) -> OurRun:
    hasher = NumberHasher(HASH_KEY)
    tracker = StateTracker(hash_number=hasher)
    writer = EventLogWriter(redis_url, spool_path=spool_dir / "spool.jsonl", hasher=hasher)
    await writer.start()
    client = AMIClient("127.0.0.1", sender.port, AMI_USER, AMI_SECRET)
    await client.start()
    probe = LagProbe()
    feed = tracker.feed
    submit = writer.submit

    async def consume() -> tuple[int, int]:
        counting = False
        events = 0
        emitted = 0
        async for event in client.events():
            if event.name == "UserEvent":
                tag = event.get("UserEvent")
                if tag == BEGIN_MARKER:
                    counting = True
                    continue
                if tag == END_MARKER:
                    break
            events += counting
            for call_event in feed(event):
                submit(call_event)
                emitted += 1
        for call_event in tracker.flush():
            submit(call_event)
            emitted += 1
        return events, emitted

    try:
        consumer = asyncio.create_task(consume())
        probe.start()
        cpu = time.process_time()
        await client.action("UserEvent", [("UserEvent", START_TAG), ("Count", str(count))])
        events, emitted = await consumer
        await writer.flush()
        finished = time.monotonic()
        cpu = time.process_time() - cpu
        await probe.stop()
        _, started, sent, pauses = await sender.wait_done()
        dropped = client.stats.events_dropped
    finally:
        await probe.stop()
        await client.close()
        await writer.close()
    stats = writer.stats
    check = redis.asyncio.Redis.from_url(redis_url)
    try:
        xlen = int(await check.xlen(writer.stream_key))
    finally:
        await check.aclose()
    return OurRun(
        events=events,
        call_events=emitted,
        written=stats.events_written,
        xlen=xlen,
        dropped=dropped,
        seconds=finished - started,
        lag_ms=[s * 1000 for s in probe.samples],
        batches=stats.batches,
        spooled=stats.events_spooled,
        cpu_s=cpu,
        send_s=sent - started,
        pauses=pauses,
    )


async def run_baseline(sender: Sender, redis_url: str, count: int) -> BaselineRun:
    loop = asyncio.get_running_loop()
    logged_in = asyncio.Event()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    manager = Manager(
        loop=loop,
        host="127.0.0.1",
        port=sender.port,
        username=AMI_USER,
        secret=AMI_SECRET,
        ping_delay=3600,
        on_login=lambda _m: logged_in.set(),
    )
    manager.register_event("*", lambda _m, message: inbox.put_nowait(message))
    store = redis.asyncio.Redis.from_url(redis_url)

    async def consume() -> int:
        counting = False
        events = 0
        while True:
            message = await inbox.get()
            if message.event == "UserEvent":
                if message.userevent == BEGIN_MARKER:
                    counting = True
                    continue
                if message.userevent == END_MARKER:
                    return events
            if not counting:
                continue
            fields: dict[FieldT, EncodableT] = {
                k: v if isinstance(v, str) else ",".join(v) for k, v in message.items()
            }
            await store.xadd(NAIVE_STREAM, fields)
            events += 1

    try:
        manager.connect()
        async with asyncio.timeout(10):
            await logged_in.wait()
        consumer = asyncio.create_task(consume())
        await manager.send_action({"Action": "UserEvent", "UserEvent": START_TAG, "Count": str(count)})
        events = await consumer
        finished = time.monotonic()
        _, started, _, _ = await sender.wait_done()
        xlen = int(await store.xlen(NAIVE_STREAM))
    finally:
        manager.close()
        await store.aclose()
    return BaselineRun(events=events, xlen=xlen, seconds=finished - started)


async def flush_redis(url: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def measure(args: argparse.Namespace, sender: Sender, redis_url: str) -> dict[str, Any]:
    spool_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        await flush_redis(redis_url)
        ours = await run_ours(sender, redis_url, args.events, spool_dir)
        baseline_count = min(args.events, 30_000) if args.baseline_events is None else args.baseline_events
        base: BaselineRun | None = None
        if baseline_count > 0:
            await flush_redis(redis_url)
            base = await run_baseline(sender, redis_url, baseline_count)
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    ours_rate = rate(ours.events, ours.seconds)
    base_rate = rate(base.events, base.seconds) if base is not None else 0.0
    return {
        "events": ours.events,
        "events_per_s": ours_rate,
        "call_events_written": ours.xlen,
        "baseline_events_per_s": base_rate,
        "ratio": round(ours_rate / base_rate, 2) if base_rate else None,
        "loop_lag_p99_ms": round(percentile(ours.lag_ms, 99), 2),
        "loop_lag_max_ms": round(max(ours.lag_ms, default=0.0), 2),
        "call_events": ours.call_events,
        "writer_events_written": ours.written,
        "writer_batches": ours.batches,
        "events_spooled": ours.spooled,
        "events_dropped": ours.dropped,
        "elapsed_s": round(ours.seconds, 3),
        # This process's CPU time per event (AMI client, tracker, writer; Redis apart): less
        # sensitive than the rate to what else runs on the machine. Inline, it includes the sender.
        "client_cpu_us_per_event": round(ours.cpu_s * 1e6 / max(1, ours.events), 2),
        # The sender waited for the client this many times (flow control): when it never
        # waits and sends as slowly as the client reads, the sender is the bottleneck.
        "sender_pauses": ours.pauses,
        "sender_events_per_s": rate(ours.events, ours.send_s),
        "baseline_events": base.events if base is not None else 0,
        "baseline_events_written": base.xlen if base is not None else 0,
        "baseline_elapsed_s": round(base.seconds, 3) if base is not None else 0.0,
        "server": args.server,
        "server_encoding": "per event (broadcast)" if args.broadcast else "pre-encoded",
        "scenarios": list(args.scenarios),
        "seed": args.seed,
        "loadavg_1m_before": args.loadavg,
    }


def run_with_child(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=serve_replay,
        args=(child, args.events, args.seed, tuple(args.scenarios), args.broadcast),
        name="bench-ami-replay",
        daemon=True,
    )
    process.start()
    try:

        def receive(timeout: float) -> tuple[Any, ...]:
            """The child's next message; an error if it died or said nothing in time."""
            if parent not in wait([parent, process.sentinel], timeout):
                raise RuntimeError(f"the replay server sent nothing (exit code {process.exitcode})")
            message: tuple[Any, ...] = parent.recv()
            return message

        tag, port, available = receive(120)
        assert tag == "ready"

        async def wait_done() -> tuple[int, float, float, int]:
            # Sent by the server when it wrote the end marker, so before the client saw it.
            message = await asyncio.get_running_loop().run_in_executor(None, receive, 30)
            return message[1], message[2], message[3], message[4]

        return asyncio.run(measure(args, Sender(port, available, wait_done), redis_url))
    finally:
        if process.is_alive():
            parent.send("stop")
            process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


def run_inline(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        server, engine = await start_replay_server(
            args.events, args.seed, tuple(args.scenarios), broadcast=args.broadcast
        )
        done: asyncio.Queue[tuple[int, float, float, int]] = asyncio.Queue()
        engine.on_done = lambda run: done.put_nowait((run.count, run.started, run.finished, run.pauses))
        try:
            return await measure(args, Sender(server.port, len(engine.events), done.get), redis_url)
        finally:
            await server.stop()

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--events", type=int, default=200_000, help="AMI events in the stream")
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=None,
        help="events for the baseline (default: --events, at most 30000 -- it runs ~4k/s; 0: skip)",
    )
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--scenarios", nargs="+", default=list(DEFAULT_SCENARIOS))
    parser.add_argument("--server", choices=("process", "inline"), default="process")
    parser.add_argument(
        "--broadcast", action="store_true", help="the front-end encodes every event (the simulator's path)"
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be >= 1")
    args.loadavg = round(os.getloadavg()[0], 2)  # the machine's load before we add ours
    quiet_logs(args.log_level)
    with RedisServerProcess() as redis_server:
        runner = run_with_child if args.server == "process" else run_inline
        figures = runner(args, redis_server.url)
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
