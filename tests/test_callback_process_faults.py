"""Callbacks dialled exactly once by real controller processes: ``ivr run`` killed with SIGKILL
mid-dial, and two controllers running side by side.

``tests/test_callback_dispatcher.py`` imitates a ``kill -9`` inside the test process (tasks
cancelled, sockets cut). Here the controller is the product as ops run it -- ``python -m
ivr.cli run --config FILE`` in a process of its own -- and it is killed by the kernel
(``SIGKILL``): no ``finally`` runs, its Redis connections, AMI session and FastAGI port go
away at once, whatever it was awaiting. What is left to keep the guarantee is what the
product relies on in production: the leases in Redis, the AMI events every controller sees,
the ``callback-result`` AGI of the shipped dialplan and the liveness checks of the
dispatcher that adopts a dial.

The PBX is the built-in simulator, in the test process, running the shipped dialplan and
queues (``ivr.sim.conf_loader.product_config``) in real time (speed 1, started at the wall
clock's now), so that the controllers' clock and Asterisk's agree. Agents answer in 1 s and
stay until the customer hangs up; each customer number is scripted (ring, answer, talk a
few seconds, hang up). What the simulator saw is the ground truth: how many times each
customer's phone was dialled (``Local/<number>@sim-customers`` legs), how many Originates
each request got, how many callback calls were up at once.

Requests are recorded as the IVR records them: :class:`~ivr.callbacks.service.CallbackService`
built from the controllers' own configuration, on the same Redis and key prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis.asyncio
from rigs import wait_for

from ivr.callbacks.service import CallbackService
from ivr.callbacks.store import CallbackStore
from ivr.config import Config, load_config
from ivr.domain.events import CallEvent
from ivr.sim.api import Headers
from ivr.sim.conf_loader import product_config
from ivr.sim.config import MemberConfig, SimConfig
from ivr.sim.run import RunningSim, start_sim
from ivr.storage.keys import Keys
from ivr.storage.privacy import NumberHasher
from ivr.storage.reader import read_range

SECRET = "process-faults-secret"
PREFIX = "pf"
HASH_KEY = "process-faults-hash-key-0123456789"
#: Bounds on the waits: generous (the machine may be loaded), never endless.
READY_S = 30.0
CLOSED_S = 100.0


def customer(ring_s: float, talk_s: float) -> list[str]:
    """A customer's phone: rings ``ring_s``, answers, talks ``talk_s``, hangs up."""
    return ["Ringing()", f"Wait({ring_s:g})", "Answer()", f"Wait({talk_s:g})", "Hangup()"]


def sim_config(agents: tuple[str, ...], customers: dict[str, list[str]], agi_port: int) -> SimConfig:
    """The shipped dialplan and queues, ``agents`` alone in queue caf, scripted customers.

    ``DEF<agent>`` = ``1:300``: the agent answers after 1 s and stays on the line for 300 s,
    so the customer's hang-up ends each call. The dialplan's AGIs go to ``agi_port``.
    """
    cfg = product_config("normal")
    cfg.traffic = replace(cfg.traffic, enabled=False)
    members = tuple(MemberConfig(f"Local/{a}@agents", f"Agent {a}") for a in agents)
    cfg.queues["caf"] = replace(cfg.queues["caf"], members=members)
    cfg.globals.update({f"DEF{a}": "1:300" for a in agents})
    cfg.globals.update({"IVR_AGI_HOST": "127.0.0.1", "IVR_AGI_PORT": str(agi_port)})
    # [endpoints] maps PJSIP/<number>@trunk-operator (dp-callback.conf's Dial) to this context.
    cfg.dialplan["sim-customers"] = {number: list(steps) for number, steps in customers.items()}
    return cfg


@dataclass
class Observed:
    """What the simulated PBX did (its own events, before any AMI client sees them)."""

    customer_legs: Counter[str] = field(default_factory=Counter)
    originates: Counter[str] = field(default_factory=Counter)
    up: set[str] = field(default_factory=set)
    max_up: int = 0
    first_originate: asyncio.Event = field(default_factory=asyncio.Event)

    def listener(self, name: str, headers: Headers) -> None:
        h = dict(headers)
        channel = h.get("Channel", "")
        if name == "Newchannel" and channel.endswith(";1") and "@sim-customers-" in channel:
            self.customer_legs[channel.split("/", 1)[1].split("@", 1)[0]] += 1
        elif (
            name == "VarSet"
            and h.get("Variable") == "IVR_CALLBACK_ID"
            and channel.endswith(";1")
            and h.get("ChannelState") != "6"  # an Originate's variables come before any answer
        ):
            # An Originate of a callback: Local/caf@callback-queue-...;1, the queue ringing an agent.
            self.originates[h.get("Value", "")] += 1
            self.up.add(channel)
            self.max_up = max(self.max_up, len(self.up))
            self.first_originate.set()
        elif name == "Hangup":
            self.up.discard(channel)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(path: Path, *, ami_port: int, agi_port: int, redis_url: str, spool: Path) -> Path:
    """A controller configuration: queue caf of service caf, open round the clock.

    Callbacks are retried 2 s after an attempt (``[callbacks] retry_delay_s`` accepts 1 s
    and up). Every other dispatcher timing is the product's default, which ``ivr run``
    uses (it has no setting for them): 15 s leases renewed every 5 s, a pass every second,
    a liveness check every 20 s.
    """
    q = json.dumps  # a JSON string is a TOML basic string
    path.write_text(
        f"""
[calendar]
timezone = "UTC"
holidays = "none"

[ami]
host = "127.0.0.1"
port = {ami_port}
username = "ivr"
secret = {q(SECRET)}
reconnect_min_s = 0.1
reconnect_max_s = 1.0

[agi]
host = "127.0.0.1"
port = {agi_port}

[redis]
url = {q(redis_url)}
key_prefix = {q(PREFIX)}
spool_path = {q(str(spool))}
hash_key = {q(HASH_KEY)}

[web]
host = "127.0.0.1"
port = 0

[callbacks]
enabled = true
mode = "agent_first"
attempts = 3
retry_delay_s = 2

[queues.caf]
service = "caf"
# wrapuptime of the [service-queue] template of asterisk-conf/queues.conf
wrapup_s = 10

[services.caf]
fallback_queue = "caf"
[services.caf.hours.weekly]
mon-sun = "00:00-24:00"
[services.caf.menus.main]
prompt = "decroche/caf-menu-main"
[services.caf.menus.main.options]
"1" = {{ queue = "caf" }}
""",
        encoding="utf-8",
    )
    return path


class ControllerProcess:
    """``python -m ivr.cli run`` in a process of its own; its output goes to files."""

    def __init__(self, name: str, config: Path, workdir: Path) -> None:
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr"
        self.stdout_path = workdir / f"{name}.stdout"
        argv = [sys.executable, "-m", "ivr.cli", "--log-format", "json", "run", "--config", str(config)]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logged(self, event: str) -> int:
        """How many log lines of this event the controller wrote (JSON lines on stderr)."""
        count = 0
        for line in self.stderr_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                count += isinstance(record, dict) and record.get("event") == event
        return count

    async def ready(self) -> None:
        """Until its AMI session is up and its live state rebuilt (``controller.resynced``)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with status {self.proc.returncode}")
            return self.logged("controller.resynced") > 0

        await wait_for(up, READY_S, f"{self.name} connected")

    def kill(self) -> None:
        """SIGKILL: nothing of the controller runs after this."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a graceful stop: calls settle, events are flushed); the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} still running {timeout_s} s after SIGTERM")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def output(self, tail: int = 150) -> str:
        lines = self.stderr_path.read_text(encoding="utf-8", errors="replace").splitlines()
        status = self.proc.poll()
        text = f"--- {self.name} (pid {self.pid}, exit status {status}), last {tail} lines of stderr:\n"
        text += "\n".join(lines[-tail:])
        out = self.stdout_path.read_text(encoding="utf-8", errors="replace").strip()
        return text + (f"\n--- {self.name}, stdout:\n{out}" if out else "")


@contextlib.contextmanager
def children(procs: list[ControllerProcess]) -> Iterator[None]:
    """Kill every controller still running on the way out; on a failure, show their logs."""
    try:
        yield
    except BaseException:
        for p in procs:
            print(p.output(), file=sys.stderr)
        raise
    finally:
        for p in procs:
            p.reap()


@dataclass
class Rig:
    """The simulator, the Redis of the controllers, and the service that records requests."""

    running: RunningSim
    observed: Observed
    config: Config
    agi_port: int
    redis_url: str
    client: redis.asyncio.Redis
    store: CallbackStore
    service: CallbackService
    workdir: Path

    async def ask(self, number: str, join_offset_s: float, call: str) -> str:
        outcome = await self.service.request(
            call=call, number=number, queue="caf", join_ts=time.time() + join_offset_s
        )
        assert outcome.ok and outcome.status == "created", outcome
        return outcome.callback_id

    async def all_closed(self, ids: list[str]) -> bool:
        reqs = await self.store.get_many(ids)
        return len(reqs) == len(ids) and all(not r.is_open for r in reqs)

    async def wait_closed(self, ids: list[str]) -> None:
        """Until every request is closed; on a time-out the failure says where each one stands."""
        try:
            await wait_for(lambda: self.all_closed(ids), CLOSED_S, "every callback closed")
        except AssertionError as exc:
            lines = [str(exc)]
            for x in await self.store.get_many(ids):
                lines.append(
                    f"  {x.id} {x.number or '-'}: {x.status} phase={x.phase} dial={x.dial} "
                    f"attempts={x.attempts} reason={x.reason} owner={x.owner} "
                    f"next attempt in {x.next_attempt_at - time.time():.1f} s"
                )
            lines.append(f"  callbacks ringing an agent: {await self.store.ringing_count('caf')}")
            lines.append(f"  the simulator saw: {self.observed}")
            raise AssertionError("\n".join(lines)) from None

    def controller(self, name: str, *, spool: str = "spool.jsonl", agi: bool = True) -> ControllerProcess:
        """A controller process on a configuration of its own.

        Two running at once need a spool each (the product locks it) and cannot both listen
        on the port the dialplan's AGIs go to (``agi=False``: a port nobody calls). One
        started after another died takes over both, as a controller restarted on the same
        host does.
        """
        assert self.running.ami is not None
        path = write_config(
            self.workdir / f"{name}.toml",
            ami_port=self.running.ami.port,
            agi_port=self.agi_port if agi else 0,
            redis_url=self.redis_url,
            spool=self.workdir / spool,
        )
        return ControllerProcess(name, path, self.workdir)

    async def stored(self) -> list[CallEvent]:
        """The event log the controllers wrote."""
        return [
            e async for e in read_range(self.client, stream_key=self.config.redis.stream, keys=Keys(PREFIX))
        ]


@contextlib.asynccontextmanager
async def rig(
    redis_url: str, workdir: Path, agents: tuple[str, ...], customers: dict[str, list[str]]
) -> AsyncIterator[Rig]:
    agi_port = free_port()
    cfg = sim_config(agents, customers, agi_port)
    cfg.queue_log = str(workdir / "queue_log")
    running = await start_sim(
        cfg, seed=5, speed=1.0, ami_port=0, secret=SECRET, traffic=False, start_epoch=time.time()
    )
    observed = Observed()
    running.sim.add_listener(observed.listener)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert running.ami is not None
        # What every controller reads: the same key prefix, hash key and numbering policy.
        config = load_config(
            write_config(
                workdir / "decroche.toml",
                ami_port=running.ami.port,
                agi_port=agi_port,
                redis_url=redis_url,
                spool=workdir / "spool.jsonl",
            )
        )
        store = CallbackStore(client, Keys(config.redis.key_prefix))
        service = CallbackService.from_config(
            config,
            store,
            hasher=NumberHasher(config.redis.resolve_hash_key()),
            emit=lambda event: None,  # the IVR's controller would log callback.requested
            clock=time.time,
        )
        yield Rig(running, observed, config, agi_port, redis_url, client, store, service, workdir)
    finally:
        await client.aclose()
        await running.stop()


def once_each(keys: list[str]) -> Counter[str]:
    return Counter({k: 1 for k in keys})


# -- a controller killed with SIGKILL mid-dial, another one started after it -----------------------


async def test_a_controller_killed_mid_dial_leaves_every_callback_dialled_exactly_once(
    redis_url: str, tmp_path: Path
) -> None:
    # The first three in line are claimed by A, which dies with their agents ringing. Their
    # customers talk 12 s: B comes up meanwhile and hears how they end (the callback-result
    # AGI, or its liveness check once A's lease has run out). The others talk 2 s.
    numbers = [f"06120000{i:02d}" for i in range(1, 7)]
    scripts = {n: customer(2, 12) if i < 3 else customer(1, 2) for i, n in enumerate(numbers)}
    procs: list[ControllerProcess] = []
    async with rig(redis_url, tmp_path, ("201", "202", "203"), scripts) as r:
        with children(procs):
            a = r.controller("controller-a")
            procs.append(a)
            await a.ready()
            ids = [await r.ask(n, -600.0 + 10 * i, f"caller-{i}") for i, n in enumerate(numbers)]
            await asyncio.wait_for(r.observed.first_originate.wait(), READY_S)
            a.kill()  # its first agent leg is ringing (agents answer after 1 s): nothing settled yet
            assert a.proc.returncode == -signal.SIGKILL
            originated_by_a = sum(r.observed.originates.values())
            assert "dialing" in [x.status for x in await r.store.get_many(ids)]

            b = r.controller("controller-b")
            procs.append(b)
            await r.wait_closed(ids)

            reqs = await r.store.get_many(ids)
            assert [x.status for x in reqs] == ["completed"] * len(ids)
            # the PBX's own count: each customer's phone rang once, each request was originated
            # once, never more callbacks up than agents
            assert r.observed.customer_legs == once_each(numbers)
            assert r.observed.originates == once_each(ids)
            assert r.observed.max_up <= 3
            assert await r.store.ringing_count("caf") == 0
            assert await r.store.due_for_check(float("inf")) == []

            assert await b.terminate() == 0
            stored = await r.stored()
            connected = [e for e in stored if e.type == "callback.connected"]
            assert Counter(str(e.data["callback_id"]) for e in connected) == once_each(ids)
            sources = Counter(str(e.data.get("source", "")) for e in connected)
            print(
                f"A originated {originated_by_a} before SIGKILL; B adopted {b.logged('callback.adopted')} "
                f"dial(s); outcomes by source: {dict(sources)}"
            )


# -- two controllers at once --------------------------------------------------------------------


async def test_two_controllers_at_once_dial_each_callback_once_never_beyond_the_free_agents(
    redis_url: str, tmp_path: Path
) -> None:
    numbers = [f"06340000{i:02d}" for i in range(1, 7)]
    procs: list[ControllerProcess] = []
    async with rig(redis_url, tmp_path, ("201", "202"), {n: customer(1, 2) for n in numbers}) as r:
        with children(procs):
            a = r.controller("controller-a", spool="spool-a.jsonl")
            b = r.controller("controller-b", spool="spool-b.jsonl", agi=False)
            procs.extend([a, b])
            await asyncio.gather(a.ready(), b.ready())
            ids = [await r.ask(n, -600.0 + 10 * i, f"caller-{i}") for i, n in enumerate(numbers)]
            await r.wait_closed(ids)

            reqs = await r.store.get_many(ids)
            assert [x.status for x in reqs] == ["completed"] * len(ids)
            assert [x.attempts for x in reqs] == [1] * len(ids)
            assert r.observed.customer_legs == once_each(numbers)
            assert r.observed.originates == once_each(ids)
            assert 1 <= r.observed.max_up <= 2  # never more callbacks in flight than agents
            assert a.proc.poll() is None and b.proc.poll() is None  # both ran throughout

            assert await a.terminate() == 0
            assert await b.terminate() == 0
            stored = await r.stored()
            for type_ in ("callback.dialing", "callback.connected"):
                got = Counter(str(e.data["callback_id"]) for e in stored if e.type == type_)
                assert got == once_each(ids), type_
            print(
                f"agents answered callbacks of A: {a.logged('callback.agent_answered')}, "
                f"of B: {b.logged('callback.agent_answered')}"
            )
