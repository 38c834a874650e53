"""Shared pieces of the ingest, AGI and state-tracking benchmarks.

* :func:`iter_stream` turns the AMI transcripts recorded from a real Asterisk 22 into an
  arbitrarily long, deterministic event stream: whole recordings played one after the
  other (the scenario of each copy and the pause between copies drawn from a seeded
  ``random.Random``), with every Uniqueid, Linkedid, channel name and bridge id rewritten so
  that the calls of different copies are distinct, and every ``Timestamp`` shifted so that
  time keeps increasing. Copies do not overlap: they share the recordings' queue and
  agents, and two overlapping copies would describe one agent in two calls at once, which
  no PBX sends. A rewritten copy therefore yields the same call events as the original.
* :class:`ReplayEngine` implements :class:`ivr.sim.api.Engine` for the simulator's AMI
  front-end (:class:`ivr.sim.ami_server.AMIServer`): on ``Action: UserEvent`` /
  ``UserEvent: ReplayStart`` it writes the stream between two marker events as fast as the
  client reads it, pausing whenever the session's output buffer passes a high-water mark,
  so the measured rate is the reader's and the front-end never drops a slow client.
* :func:`serve_replay` runs that front-end in a child process, so the client under test
  has a core (and an event loop) of its own.
* :class:`LagProbe` measures event-loop lag; :func:`percentile` and :func:`emit` report.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from ivr.protocol.ami import Action, AMIParser, Event, encode_event
from ivr.replay import transcript_events
from ivr.sim.ami_server import AMIServer
from ivr.sim.api import ActionResult, EventListener, Headers

ROOT: Final = Path(__file__).resolve().parent.parent
FIXTURES: Final = ROOT / "tests" / "fixtures" / "asterisk"
#: Recordings with the most calls per event: random load (15 callers) and simultaneous callers.
DEFAULT_SCENARIOS: Final = ("mixed_a", "concurrent")
#: The first copy starts on a Thursday at 09:00, Paris time (inside every service's hours).
STREAM_START: Final = datetime(2026, 11, 26, 9, 0, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
#: The AMI account of the replay server.
AMI_USER: Final = "ivr"
AMI_SECRET: Final = "bench-secret"
#: Marker events around a replayed stream (``UserEvent: <marker>``).
BEGIN_MARKER: Final = "ReplayBegin"
END_MARKER: Final = "ReplayEnd"
START_TAG: Final = "ReplayStart"

# Uniqueids are "<epoch>.<counter>", counter unique within one Asterisk run (< 1000 in every
# recording); channel names end in an 8-hex-digit sequence number, then ";1"/";2" for Local
# channels. Each copy adds its index times these strides.
_UID_STRIDE: Final = 1000
_CHAN_STRIDE: Final = 0x1000
_UID_RE: Final = re.compile(r"(\d+)\.(\d+)")
_CHAN_RE: Final = re.compile(r"-([0-9a-f]{8})(?=;[12]|$|[^0-9a-f])")

_STATIC, _TIME, _UID, _CHAN, _BRIDGE = range(5)


@dataclass(frozen=True, slots=True)
class _Template:
    """One recorded event: its name and its headers, each tagged with how a copy rewrites it."""

    name: str
    headers: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class Recording:
    """The events of one recorded scenario, ready to be copied."""

    name: str
    events: tuple[_Template, ...]
    first_ts: float
    span: float


def _kind(key: str, value: str) -> int:
    if key == "Timestamp":
        return _TIME
    if key.endswith(("Uniqueid", "Linkedid")) and _UID_RE.fullmatch(value):
        return _UID
    if key == "BridgeUniqueid" and len(value) == 36:
        return _BRIDGE
    if _CHAN_RE.search(value):
        return _CHAN
    return _STATIC


@cache
def load_recording(scenario: str) -> Recording:
    """The timestamped events Asterisk sent in ``scenario`` (login artefacts left out).

    Events without a ``Timestamp`` (FullyBooted, list items of the rig's actions) and the
    security event of the rig's own login are not part of the call traffic.
    """
    templates: list[_Template] = []
    stamps: list[float] = []
    for event in transcript_events(FIXTURES / scenario / "ami.txt"):
        raw = event.fields.get("Timestamp")
        if raw is None or event.name == "SuccessfulAuth":
            continue
        stamps.append(float(raw))
        headers = tuple((k, v, _kind(k, v)) for k, v in event.headers if k != "Event")
        templates.append(_Template(event.name, headers))
    if not templates:
        raise ValueError(f"no timestamped AMI events in scenario {scenario!r}")
    return Recording(scenario, tuple(templates), min(stamps), max(stamps) - min(stamps))


class _Copy:
    """Rewrites the values of one copy of a recording (copy index ``g``, time ``shift``)."""

    def __init__(self, index: int, shift: float) -> None:
        self.index = index
        self.shift = shift
        self.whole_shift = math.floor(shift)
        self.cache: dict[tuple[int, str], str] = {}

    def _chan(self, match: re.Match[str]) -> str:
        return f"-{int(match.group(1), 16) + self.index * _CHAN_STRIDE:08x}"

    def value(self, kind: int, value: str) -> str:
        if kind == _TIME:
            return f"{float(value) + self.shift:.6f}"
        key = (kind, value)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if kind == _UID:
            epoch, counter = value.split(".")
            out = f"{int(epoch) + self.whole_shift}.{int(counter) + self.index * _UID_STRIDE}"
        elif kind == _BRIDGE:
            out = f"{value[:24]}{self.index:012x}"
        else:
            out = _CHAN_RE.sub(self._chan, value)
        self.cache[key] = out
        return out

    def event(self, template: _Template) -> tuple[str, Headers]:
        value = self.value
        return template.name, [
            (k, v if kind == _STATIC else value(kind, v)) for k, v, kind in template.headers
        ]


def iter_stream(
    n_events: int, seed: int, scenarios: Sequence[str] = DEFAULT_SCENARIOS
) -> Iterator[tuple[str, Headers]]:
    """``n_events`` AMI events ``(name, headers)`` made of rewritten copies of the recordings.

    Same arguments, same stream. The last copy is cut at ``n_events``.
    """
    if n_events < 0:
        raise ValueError("n_events must be >= 0")
    recordings = [load_recording(name) for name in scenarios]
    rng = random.Random(seed)
    start = STREAM_START
    emitted = 0
    index = 0
    while emitted < n_events:
        recording = rng.choice(recordings)
        copy = _Copy(index, start - recording.first_ts)
        for template in recording.events[: n_events - emitted]:
            yield copy.event(template)
        emitted += min(len(recording.events), n_events - emitted)
        start += recording.span + rng.uniform(0.5, 5.0)
        index += 1


def encoded_stream(n_events: int, seed: int, scenarios: Sequence[str] = DEFAULT_SCENARIOS) -> list[bytes]:
    """The stream's events as wire bytes, one item per event (what the front-end would write)."""
    return [encode_event(name, headers) for name, headers in iter_stream(n_events, seed, scenarios)]


def parse_events(chunks: Sequence[bytes]) -> list[Event]:
    """Wire bytes back into :class:`Event` objects, with the product's parser."""
    parser = AMIParser(expect_banner=False)
    parser.receive_data(b"".join(chunks))
    events = [m for m in parser.events() if isinstance(m, Event)]
    if len(events) != len(chunks):
        raise RuntimeError(f"parsed {len(events)} events out of {len(chunks)}")
    return events


def event_batches(
    n_events: int, seed: int, scenarios: Sequence[str] = DEFAULT_SCENARIOS, batch: int = 20_000
) -> Iterator[list[Event]]:
    """The stream as parsed events, ``batch`` at a time (all of it at once would take GBs)."""
    pending: list[bytes] = []
    for name, headers in iter_stream(n_events, seed, scenarios):
        pending.append(encode_event(name, headers))
        if len(pending) == batch:
            yield parse_events(pending)
            pending = []
    if pending:
        yield parse_events(pending)


def _marker(tag: str, count: int) -> bytes:
    return encode_event(
        "UserEvent",
        [
            ("Privilege", "user,all"),
            ("Timestamp", f"{time.time():.6f}"),
            ("UserEvent", tag),
            ("Count", str(count)),
        ],
    )


# -- the replay engine -----------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayRun:
    """One replay: how many events, and when (``time.monotonic``, comparable across processes on
    Linux: CLOCK_MONOTONIC is system-wide) the first was handed to the transport and the last."""

    count: int
    started: float = 0.0
    finished: float = 0.0
    pauses: int = 0


@dataclass(slots=True)
class ReplayEngine:
    """The simulator engine of the ingest benchmark: replays pre-encoded events on request.

    The events are encoded once, before any clock starts, with the front-end's own
    :func:`encode_event`, and written with :meth:`AMIServer.send_raw` in bursts of ``burst``
    events: the front-end encoding every event again (``broadcast``, ~12 µs an event here)
    would cap the sender below the client's rate and the benchmark would measure the
    sender. ``broadcast=True`` takes that path instead (each event through the listeners,
    as the simulator's engine does).

    Flow control: after each burst the engine yields to the loop; while a session's
    transport holds more than ``high_water`` unsent bytes it waits (polling every 0.5 ms,
    the front-end exposes no drain signal) until it is under ``low_water``.
    """

    events: Sequence[bytes]
    headers: Sequence[tuple[str, Headers]] = ()
    burst: int = 64
    high_water: int = 1 << 20
    low_water: int = 256 << 10
    broadcast: bool = False
    on_done: Callable[[ReplayRun], None] | None = None
    server: AMIServer | None = None
    listeners: list[EventListener] = field(default_factory=list)
    runs: list[ReplayRun] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def add_listener(self, listener: EventListener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def now(self) -> float:
        return time.time()

    async def handle_action(self, action: Action) -> ActionResult:
        if action.name.lower() != "userevent":
            return ActionResult.error(
                f"Invalid/unknown command: {action.name}. "
                "Use Action: ListCommands to show available commands."
            )
        if action.get("UserEvent") != START_TAG:
            return ActionResult("Success")
        if self._task is not None and not self._task.done():
            return ActionResult.error("a replay is running")
        raw = action.get("Count")
        count = len(self.events) if not raw else max(0, min(int(raw), len(self.events)))
        run = ReplayRun(count)
        self.runs.append(run)
        self._task = asyncio.get_running_loop().create_task(self._replay(run))
        return ActionResult("Success")  # action_userevent: astman_send_ack(s, m, NULL), no Message

    def _backlog(self) -> int:
        assert self.server is not None
        return max(
            (s.transport.get_write_buffer_size() for s in self.server.sessions if s.transport is not None),
            default=0,
        )

    def _send(self, start: int, end: int) -> None:
        assert self.server is not None
        if not self.broadcast:
            self.server.send_raw(b"".join(self.events[start:end]))
            return
        for name, headers in self.headers[start:end]:
            for listener in self.listeners:
                listener(name, headers)

    async def _replay(self, run: ReplayRun) -> None:
        server = self.server
        if server is None:
            raise RuntimeError("ReplayEngine.server is not set")
        run.started = time.monotonic()
        server.send_raw(_marker(BEGIN_MARKER, run.count))
        for start in range(0, run.count, self.burst):
            self._send(start, min(start + self.burst, run.count))
            await asyncio.sleep(0)
            if self._backlog() > self.high_water:
                run.pauses += 1
                # The front-end has no drain signal to wait on: poll its buffers.
                while self._backlog() > self.low_water and server.sessions:  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)
        run.finished = time.monotonic()
        server.send_raw(_marker(END_MARKER, run.count))
        if self.on_done is not None:
            self.on_done(run)


async def start_replay_server(
    n_events: int, seed: int, scenarios: Sequence[str], *, broadcast: bool = False
) -> tuple[AMIServer, ReplayEngine]:
    """Build the stream and start a front-end serving it on a free loopback port."""
    pairs = list(iter_stream(n_events, seed, scenarios))
    events = [encode_event(name, headers) for name, headers in pairs]
    engine = ReplayEngine(events, headers=pairs if broadcast else (), broadcast=broadcast)
    server = AMIServer(
        engine,
        port=0,
        username=AMI_USER,
        secret=AMI_SECRET,
        auth_failure_delay=0.0,
        max_output_buffer=8 << 20,
    )
    engine.server = server
    await server.start()
    return server, engine


def serve_replay(
    conn: Connection, n_events: int, seed: int, scenarios: Sequence[str], broadcast: bool
) -> None:
    """Child-process entry point: serve the stream until the parent sends anything on ``conn``.

    Sends ``("ready", port, n_events)`` once listening and ``("done", count, started,
    finished, pauses)`` after each replay.
    """
    quiet_logs()

    async def main() -> None:
        server, engine = await start_replay_server(n_events, seed, scenarios, broadcast=broadcast)
        engine.on_done = lambda run: conn.send(("done", run.count, run.started, run.finished, run.pauses))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), stop.set)
        conn.send(("ready", server.port, len(engine.events)))
        try:
            await stop.wait()
        finally:
            loop.remove_reader(conn.fileno())
            await server.stop()

    asyncio.run(main())


# -- measuring and reporting -------------------------------------------------------------------------


class LagProbe:
    """Event-loop lag: a task sleeps ``interval`` seconds again and again and records the overshoot.

    A loop busy with a long callback (a big parse, a slow consumer) shows here as lag,
    which is what every other task on that loop (Ping replies, AGI sessions, the web) feels.
    """

    def __init__(self, interval: float = 0.010) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        clock = time.perf_counter
        while True:
            before = clock()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, clock() - before - self.interval))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def quiet_logs(level: str = "WARNING") -> None:
    """Logs to stderr only, at ``level``: stdout carries the JSON figures alone."""
    from ivr.logs import configure_logging

    configure_logging(level, json=True)


def emit(figures: dict[str, Any], as_json: bool) -> None:
    """Print the figures: one JSON object (``--json``) or one ``key: value`` line each."""
    if as_json:
        sys.stdout.write(json.dumps(figures, separators=(",", ":")) + "\n")
    else:
        for key, value in figures.items():
            sys.stdout.write(f"{key}: {value}\n")
    sys.stdout.flush()


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0
