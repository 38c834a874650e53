"""The dispatcher end to end: the simulated Asterisk over real AMI, a real Redis, real time.

Each "node" is what a controller runs for callbacks: an AMI client, a state tracker fed by
its events (the live queue snapshot), the dispatcher, and the pump that hands every AMI
event to both. Faults: a node killed mid-dial (its tasks cancelled, its AMI session cut,
nothing cleaned up -- what ``kill -9`` leaves), a second node taking over, a node started
after the call was placed.

The simulator runs the dialplan of ``dialplans/dp-callback.conf`` in its own syntax:
``callback-queue`` queues the leg at a high priority, ``callback-dial`` dials the customer
once an agent answered; customers are scripted per number (answer, busy, slow answer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio
import structlog
from rigs import wait_for

from ivr.ami.client import AMIClient, Backoff
from ivr.callbacks.dispatcher import CallbackDispatcher, DispatchSettings
from ivr.callbacks.ordering import QueueSnapshot, snapshot_from_state
from ivr.callbacks.service import CallbackService
from ivr.callbacks.store import CallbackStore
from ivr.config import CallbackConfig, QueueConfig
from ivr.domain.events import CallEvent
from ivr.domain.state import StateTracker
from ivr.protocol.ami import AMIParser, Event, encode_event
from ivr.sim import actions as sim_actions
from ivr.sim.ami_server import AMIServer
from ivr.sim.api import Headers
from ivr.sim.config import MemberConfig, SimConfig, default_config, parse_empty_options
from ivr.sim.config import QueueConfig as SimQueueConfig
from ivr.sim.engine import Simulator
from ivr.storage.keys import Keys
from ivr.storage.privacy import NumberHasher
from ivr.storage.server import RedisServerProcess

SECRET = "callback-test-secret"
EPOCH = 1_800_000_000.0
SPEED = 20.0
FAST = Backoff(initial=0.01, factor=2.0, maximum=0.05, jitter=0.5)
KEYS = Keys("cbt")

#: Customers: a number that answers after 1 s and talks 3 s; one that is busy; one that rings
#: 20 s before answering and talks a minute (time to kill and restart a controller).
CUSTOMERS: dict[str, list[str]] = {
    "_06XXXXXXXX": ["Ringing()", "Wait(1)", "Answer()", "Wait(3)", "Hangup()"],
    "0600000486": ["Busy(10)"],
    "0655555555": ["Ringing()", "Wait(20)", "Answer()", "Wait(60)", "Hangup()"],
}


#: dp-callback.conf [callback-forget], inline.
FORGET = 'ExecIf($["${IVR_CB_FORGET}" != ""]?Set(DB_DELETE(decroche-cb/${IVR_CB_FORGET})=))'


def sim_config(agents: tuple[str, ...] = ("201", "202")) -> SimConfig:
    cfg = default_config()
    cfg.globals = {f"DEF{a}": "1:300" for a in agents}  # an agent answers in 1 s; the customer ends the call
    cfg.queues = {
        "caf": SimQueueConfig(
            name="caf",
            strategy="rrmemory",
            timeout=15,
            retry=1,
            ringinuse=False,
            joinempty=parse_empty_options("yes", joinempty=True),
            leavewhenempty=parse_empty_options("no", joinempty=False),
            members=tuple(MemberConfig(f"Local/{a}@agents") for a in agents),
        )
    }
    cfg.dialplan = {
        "agents": {"_2XX": ["AgentPlan()"]},
        # dp-callback.conf [callback-queue]: the leg waits in the queue at priority IVR_PRIO
        "callback-queue": {
            "_[a-z].": [
                "Set(QUEUE_PRIO=${DEFAULT(IVR_PRIO,10)})",
                "Queue(${EXTEN},r,,,${DEFAULT(IVR_QTIMEOUT,60)})",
                "Hangup()",
            ]
        },
        # [callback-dial]: once the agent answered, dial the customer; 'h' keeps the outcome in
        # AstDB ([callback-recorded] is left out: no AGI here), [callback-forget] deletes a key
        # the controller read back
        "callback-dial": {
            "_0[1-79]XXXXXXXX": [
                "NoOp(callback ${IVR_CALLBACK_ID}: agent answered, dialling ${EXTEN})",
                "Set(DP_CBSTATUS=CANCEL)",
                FORGET,
                "Dial(Local/${EXTEN}@customers,30)",
                "Hangup()",
            ],
            "h": [
                'ExecIf($["${DIALSTATUS}" != ""]?Set(DP_CBSTATUS=${DIALSTATUS}))',
                "Set(DB(decroche-cb/${IVR_CALLBACK_ID})=${IVR_CALLBACK_DIAL}:${DP_CBSTATUS})",
            ],
        },
        # caller-first: [callback-customer] dials the customer, [callback-caller-first] queues them
        "callback-customer": {"_0[1-79]XXXXXXXX": ["Dial(Local/${EXTEN}@customers,30)", "Hangup()"]},
        "callback-caller-first": {"_[a-z].": ["Queue(${EXTEN},,,,60)", "Hangup()"]},
        "customers": {k: list(v) for k, v in CUSTOMERS.items()},
    }
    return cfg


@dataclass
class Observed:
    """What the simulated PBX saw: customer legs per number, Originates per callback, and how
    many callback calls were up at once."""

    customer_legs: Counter[str] = field(default_factory=Counter)
    originates: Counter[str] = field(default_factory=Counter)
    up: set[str] = field(default_factory=set)
    max_up: int = 0

    def listener(self, name: str, headers: Headers) -> None:
        h = dict(headers)
        channel = h.get("Channel", "")
        if name == "Newchannel" and channel.endswith(";1") and "@customers-" in channel:
            self.customer_legs[channel.split("/", 1)[1].split("@", 1)[0]] += 1
        elif name == "VarSet" and h.get("Variable") == "IVR_CALLBACK_ID" and channel.endswith(";1"):
            self.originates[h.get("Value", "")] += 1
            self.up.add(channel)
            self.max_up = max(self.max_up, len(self.up))
        elif name == "Hangup":
            self.up.discard(channel)


@dataclass
class Rig:
    sim: Simulator
    server: AMIServer
    observed: Observed
    redis_url: str
    events: list[CallEvent] = field(default_factory=list)

    def clock(self) -> float:
        """Asterisk time as a controller knows it: the PBX's clock (here, virtual)."""
        return max(self.sim.now(), self.sim.clock.wall_now())

    def unique_events(self, type_: str | None = None) -> list[CallEvent]:
        seen: dict[str, CallEvent] = {}
        for e in self.events:
            seen.setdefault(e.id, e)
        return [e for e in seen.values() if type_ is None or e.type == type_]


@pytest.fixture
async def rig(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    agents = getattr(request, "param", ("201", "202"))
    sim = Simulator(sim_config(agents), seed=3, speed=SPEED, start_epoch=EPOCH)
    await sim.start()
    observed = Observed()
    sim.add_listener(observed.listener)
    server = AMIServer(sim, secret=SECRET, auth_failure_delay=0.05, shutdown_grace=1.0)
    await server.start()
    try:
        yield Rig(sim, server, observed, redis_url)
    finally:
        await server.stop()
        await sim.stop()


def settings(**overrides: Any) -> DispatchSettings:
    values: dict[str, Any] = {
        "lease_s": 1.0,
        "poll_interval_s": 0.05,
        "check_interval_s": 0.5,
        "sweep_interval_s": 5.0,
        "originate_timeout_s": 60.0,
        "retry_delay_s": 10.0,
        "agent_retry_delay_s": 5.0,
        "ami_timeout_s": 2.0,
        "outcome_grace_s": 5.0,
        # The simulator's app_queue does not answer a queue caller that was not answered
        # when an agent connects (Asterisk does: main/features.c, pre_bridge_setup), so the
        # callback-queue route never sees its Originate answered there: dial members.
        "route": "member",
    }
    values.update(overrides)
    return DispatchSettings(**values)


class Node:
    """One controller's callback side (see the module docstring)."""

    def __init__(
        self,
        rig: Rig,
        name: str,
        *,
        config: DispatchSettings | None = None,
        live: Callable[[str], QueueSnapshot | None] | None = None,
    ) -> None:
        self.rig = rig
        self.name = name
        self.client = AMIClient(
            "127.0.0.1", rig.server.port, "ivr", SECRET, action_timeout=2.0, connect_timeout=1.0, backoff=FAST
        )
        self.redis = redis.asyncio.Redis.from_url(rig.redis_url)
        self.store = CallbackStore(self.redis, KEYS)
        self.tracker = StateTracker()
        self.dispatcher = CallbackDispatcher(
            self.store,
            self.client,
            live or self.live,
            rig.events.append,
            rig.clock,
            queues=["caf"],
            settings=config or settings(),
            owner=name,
        )
        self.service = CallbackService(
            self.store,
            hasher=NumberHasher("k" * 32),
            emit=rig.events.append,
            clock=rig.clock,
            callbacks=CallbackConfig(attempts=2, retry_delay_s=10.0),
            queues={"caf": QueueConfig(name="caf", service="caf", offer_callback=True)},
            live=live or self.live,
            dispatcher=self.dispatcher,
        )
        self._pump: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None

    def live(self, queue: str) -> QueueSnapshot | None:
        q = self.tracker.queues.get(queue)
        return snapshot_from_state(q, self.tracker.calls) if q is not None else None

    async def start(self, *, dispatch: bool = True) -> Node:
        await self.client.start()
        queues = await self.client.queue_status()
        channels = await self.client.core_show_channels()
        self.tracker.resync(queues.items, channels.items)
        self._pump = asyncio.create_task(self._feed())
        if dispatch:
            self.run()
        return self

    def run(self) -> None:
        self._runner = asyncio.create_task(self.dispatcher.run())

    async def _feed(self) -> None:
        async for event in self.client.events():
            self.tracker.feed(event)
            self.dispatcher.feed(event)

    async def kill(self) -> None:
        """What kill -9 leaves: tasks gone mid-await, the AMI session cut, Redis untouched."""
        tasks = [t for t in (self._runner, self._pump) if t is not None]
        for task in tasks:
            task.cancel()
        _, stuck = await asyncio.wait(tasks, timeout=10.0)
        assert not stuck, f"tasks ignored their cancellation: {stuck}"
        async with asyncio.timeout(10.0):
            await self.client.close(timeout=0.2)
            await self.redis.aclose()

    async def stop(self) -> None:
        if self._runner is not None and not self._runner.done():
            await self.dispatcher.stop(grace_s=2.0)
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        await self.client.close(timeout=0.5)
        await self.redis.aclose()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started


@pytest.fixture(autouse=True)
async def _stop_nodes(nodes: list[Node]) -> AsyncIterator[None]:
    yield
    for node in nodes:
        with contextlib.suppress(Exception):
            await node.stop()


async def all_closed(store: CallbackStore, ids: list[str]) -> bool:
    reqs = await store.get_many(ids)
    return len(reqs) == len(ids) and all(not r.is_open for r in reqs)


async def ask(node: Node, number: str, join_offset: float, call: str) -> str:
    outcome = await node.service.request(
        call=call, number=number, queue="caf", join_ts=node.rig.clock() + join_offset
    )
    assert outcome.ok, outcome
    return outcome.callback_id


# -- the normal path ---------------------------------------------------------------------------------


async def test_agent_first_callbacks_connect_retry_and_fail(rig: Rig, nodes: list[Node]) -> None:
    node = Node(rig, "ctl-a")
    nodes.append(node)
    await node.start(dispatch=False)
    ids = {
        "0611111111": await ask(node, "0611111111", -300, "u1"),
        "0622222222": await ask(node, "06 22 22 22 22", -200, "u2"),
        "0600000486": await ask(node, "+33600000486", -100, "u3"),
    }
    node.run()
    await wait_for(lambda: all_closed(node.store, list(ids.values())), what="every callback closed")

    reqs = {r.id: r for r in await node.store.get_many(list(ids.values()))}
    assert reqs[ids["0611111111"]].status == "completed"
    assert reqs[ids["0622222222"]].status == "completed"
    busy = reqs[ids["0600000486"]]
    assert (busy.status, busy.reason, busy.attempts) == ("failed", "max_attempts", 2)
    # each answering customer was rung once; the busy one once per attempt
    assert rig.observed.customer_legs == Counter({"0611111111": 1, "0622222222": 1, "0600000486": 2})
    assert rig.observed.max_up <= 2  # never more callbacks in flight than agents

    # A request's closing event follows the store's update: wait for all three.
    await wait_for(
        lambda: len(rig.unique_events("callback.connected")) + len(rig.unique_events("callback.failed")) == 3,
        what="the closing events",
    )
    by_type = Counter(e.type for e in rig.unique_events())
    assert by_type == Counter(
        {
            "callback.requested": 3,
            "callback.dialing": 4,
            "callback.connected": 2,
            "callback.retry": 1,
            "callback.failed": 1,
        }
    )
    dialing = [e for e in rig.unique_events("callback.dialing")]
    # the two earliest in line were dialled first, in join order
    assert [e.data["callback_id"] for e in dialing[:2]] == [ids["0611111111"], ids["0622222222"]]
    connected = rig.unique_events("callback.connected")
    assert {e.call for e in connected} == {"u1", "u2"}
    for e in connected:
        assert (
            float(e.data["wait_s"]) > 200
            and e.source == "callback"
            and e.queue == "caf"
            and e.service == "caf"
        )
    retry = rig.unique_events("callback.retry")[0]
    assert (retry.data["reason"], retry.data["attempts"]) == ("busy", 1)
    assert retry.data["next_attempt_at"] == pytest.approx(retry.ts + 10.0, abs=1e-5)
    assert node.dispatcher.in_flight == 0
    assert await node.store.ringing_count("caf") == 0


async def test_a_callback_waits_behind_an_earlier_caller(rig: Rig, nodes: list[Node]) -> None:
    now = rig.clock()
    snapshot = {"caf": QueueSnapshot("caf", waiting=(("u-wait", now - 100),), logged_in=1, available=1)}
    node = Node(rig, "ctl-a", live=lambda q: snapshot.get(q))
    nodes.append(node)
    await node.start(dispatch=False)
    later = await ask(node, "0611111111", -50, "u1")
    assert await node.dispatcher.tick() == 0  # the caller who joined earlier takes the agent
    earlier = await ask(node, "0622222222", -150, "u2")
    assert await node.dispatcher.tick() == 1  # joined before that caller: its turn
    got = {r.id: r.status for r in await node.store.get_many([later, earlier])}
    assert got == {later: "pending", earlier: "dialing"}
    # no free agent: nothing more
    snapshot["caf"] = QueueSnapshot("caf", waiting=(), logged_in=1, available=0)
    assert await node.dispatcher.tick() == 0
    # the estimate the IVR announces sees the same line
    est = await node.service.estimate("caf", callback_id=later)
    assert est is not None and est.position == 1 and est.pending_callbacks == 1


async def test_caller_first(rig: Rig, nodes: list[Node]) -> None:
    node = Node(rig, "ctl-a", config=settings(mode="caller_first", originate_timeout_s=45.0))
    nodes.append(node)
    await node.start(dispatch=False)
    ok = await ask(node, "0611111111", -60, "u1")
    busy = await ask(node, "0600000486", -30, "u2")
    node.run()
    await wait_for(lambda: all_closed(node.store, [ok, busy]), what="both closed")
    got = {r.id: r for r in await node.store.get_many([ok, busy])}
    assert got[ok].status == "completed" and got[ok].attempts == 1
    assert (got[busy].status, got[busy].attempts) == ("failed", 2)
    assert rig.observed.customer_legs == Counter({"0611111111": 1, "0600000486": 2})


# -- faults ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rig", [("201", "202")], indirect=True)
async def test_a_controller_killed_mid_dial_loses_nothing_and_dials_nobody_twice(
    rig: Rig, nodes: list[Node]
) -> None:
    a = Node(rig, "ctl-a")
    b = Node(rig, "ctl-b")
    nodes.extend([a, b])
    await a.start(dispatch=False)
    await b.start(dispatch=False)
    numbers = [f"06{i:08d}" for i in range(10_000_001, 10_000_007)]
    ids = [await ask(a, n, -600 + 10 * i, f"u{i}") for i, n in enumerate(numbers)]
    a.run()
    await wait_for(lambda: a.dispatcher.stats.originates >= 1, what="a first Originate")
    b.run()
    assert a.dispatcher.in_flight >= 1
    await a.kill()  # mid-dial: the agent is ringing, nothing is settled yet
    nodes.remove(a)
    await wait_for(lambda: all_closed(b.store, ids), limit_s=30.0, what="every callback closed")

    reqs = await b.store.get_many(ids)
    assert [r.status for r in reqs] == ["completed"] * len(ids)
    assert rig.observed.customer_legs == Counter({n: 1 for n in numbers})  # zero duplicates
    assert all(rig.observed.originates[cid] == 1 for cid in ids)
    assert rig.observed.max_up <= 2
    await wait_for(  # each closing event follows the store's update
        lambda: len(rig.unique_events("callback.connected")) == len(ids), what="every callback.connected"
    )
    assert await b.store.ringing_count("caf") == 0
    assert await b.store.due_for_check(float("inf")) == []


async def test_a_controller_started_after_the_crash_adopts_the_call_in_progress(
    rig: Rig, nodes: list[Node]
) -> None:
    a = Node(rig, "ctl-a")
    nodes.append(a)
    await a.start(dispatch=False)
    cid = await ask(a, "0655555555", -60, "u1")  # rings 20 s (1 s here), then talks a minute
    a.run()

    async def customer_phase() -> bool:
        req = await a.store.get(cid)
        return req is not None and req.phase == "customer"

    await wait_for(customer_phase, what="the agent answered")
    await a.kill()
    nodes.remove(a)
    b = Node(rig, "ctl-b")  # knows nothing of the call: it was not connected when it began
    nodes.append(b)
    await b.start()
    await wait_for(lambda: b.dispatcher.stats.adopted >= 1, what="adoption")
    await wait_for(lambda: all_closed(b.store, [cid]), limit_s=30.0, what="the callback closed")
    req = await b.store.get(cid)
    assert req is not None and (req.status, req.attempts) == ("completed", 1)
    assert rig.observed.customer_legs == Counter({"0655555555": 1})
    assert rig.observed.originates[cid] == 1
    assert b.dispatcher.stats.liveness_checks >= 1


async def dialled_then_killed(rig: Rig, nodes: list[Node], number: str) -> str:
    """A callback dialled by a controller killed right after its Originate; the call then
    ends while no controller runs. Returns the request's id."""
    a = Node(rig, "ctl-a")
    nodes.append(a)
    await a.start(dispatch=False)
    cid = await ask(a, number, -60, "u1")
    a.run()
    await wait_for(lambda: a.dispatcher.stats.originates >= 1, what="the Originate")
    await a.kill()
    nodes.remove(a)
    await wait_for(lambda: not rig.sim.channels, what="the call over")
    return cid


async def test_a_call_gone_while_no_controller_ran_is_settled_from_astdb(rig: Rig, nodes: list[Node]) -> None:
    """Every controller was down when the call ended: the outcome 'h' kept in AstDB settles
    it (DBGet), the customer is not dialled again, and the next call deletes the key."""
    cid = await dialled_then_killed(rig, nodes, "0611111111")  # answers after 1 s, talks 3 s
    assert rig.sim.astdb.get("decroche-cb", cid) == "1:ANSWER"
    b = Node(rig, "ctl-b", config=settings(retry_delay_s=3600.0))
    nodes.append(b)
    await b.start()

    async def settled() -> bool:
        req = await b.store.get(cid)
        return req is not None and req.status != "dialing"

    await wait_for(settled, what="the request settled")
    req = await b.store.get(cid)
    assert req is not None and (req.status, req.reason, req.attempts) == ("completed", "answered", 1)
    assert b.dispatcher.stats.outcomes_kept == 1 and b.dispatcher.stats.adopted == 1
    await wait_for(lambda: rig.unique_events("callback.connected"), what="callback.connected")
    [connected] = rig.unique_events("callback.connected")
    assert connected.data["source"] == "astdb"
    assert not rig.unique_events("callback.retry")
    assert rig.observed.customer_legs == Counter({"0611111111": 1})
    # the key stays until the next callback call deletes it (IVR_CB_FORGET)
    assert rig.sim.astdb.get("decroche-cb", cid) == "1:ANSWER"
    other = await ask(b, "0622222222", -10, "u2")
    await wait_for(lambda: all_closed(b.store, [other]), what="the next callback")
    assert rig.sim.astdb.get("decroche-cb", cid) is None
    assert rig.observed.customer_legs == Counter({"0611111111": 1, "0622222222": 1})


async def test_a_dbget_that_asterisk_does_not_answer_keeps_the_lease_and_is_asked_again(
    rig: Rig, nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asterisk does not answer the first DBGet in time (busy, restarting): the dispatcher keeps
    the lease, nothing is dialled, and the next check reads the kept outcome."""
    asked: list[float] = []
    real_dbget = sim_actions.ACTIONS["dbget"]

    async def slow_once(sim: Any, action: Any) -> Any:
        asked.append(rig.clock())
        if len(asked) == 1:
            await asyncio.sleep(3.0)  # past the client's 2-s action timeout
        return await real_dbget(sim, action)

    monkeypatch.setitem(sim_actions.ACTIONS, "dbget", slow_once)
    cid = await dialled_then_killed(rig, nodes, "0611111111")  # answers after 1 s, talks 3 s
    b = Node(rig, "ctl-b", config=settings(retry_delay_s=3600.0))
    nodes.append(b)
    with structlog.testing.capture_logs() as logs:
        await b.start()

        async def settled() -> bool:
            req = await b.store.get(cid)
            return req is not None and req.status != "dialing"

        await wait_for(settled, limit_s=30.0, what="the request settled")
    failed = [e for e in logs if e["event"] == "callback.dbget_failed"]
    assert len(failed) == 1 and failed[0]["callback_id"] == cid
    assert len(asked) >= 2
    req = await b.store.get(cid)
    assert req is not None and (req.status, req.reason, req.attempts) == ("completed", "answered", 1)
    assert b.dispatcher.stats.outcomes_kept == 1
    assert rig.observed.customer_legs == Counter({"0611111111": 1})
    assert rig.observed.originates[cid] == 1


@pytest.mark.parametrize("kept", [None, "7:ANSWER"], ids=["no key", "another dial's key"])
async def test_a_call_gone_without_any_outcome_is_dialled_again(
    rig: Rig, nodes: list[Node], kept: str | None
) -> None:
    """Nobody saw how the call ended and AstDB kept nothing for this dial: back to pending,
    counted (an outcome kept for another dial of the request does not count)."""
    a = Node(rig, "ctl-a")
    nodes.append(a)
    await a.start(dispatch=False)
    cid = await ask(a, "0600000486", -60, "u1")  # busy: the call ends at once
    a.run()
    await wait_for(lambda: a.dispatcher.stats.originates >= 1, what="the Originate")
    await a.kill()
    nodes.remove(a)
    # the call is over while no controller is watching
    await wait_for(lambda: not rig.sim.channels, what="the call over")
    assert rig.sim.astdb.get("decroche-cb", cid) == "1:BUSY"
    rig.sim.astdb.delete("decroche-cb", cid)  # e.g. an AstDB lost with its disk
    if kept is not None:
        rig.sim.astdb.put("decroche-cb", cid, kept)
    b = Node(rig, "ctl-b", config=settings(retry_delay_s=3600.0))
    nodes.append(b)
    await b.start()

    async def retried() -> bool:
        req = await b.store.get(cid)
        return req is not None and req.status == "pending" and req.attempts == 1

    await wait_for(retried, what="the request back in line")
    # The event follows the store's update (emitted once the script has answered).
    await wait_for(lambda: rig.unique_events("callback.retry"), what="the retry event")
    req = await b.store.get(cid)
    assert req is not None and req.reason == "outcome_unknown" and req.join_ts < req.created
    assert [e.data["reason"] for e in rig.unique_events("callback.retry")] == ["outcome_unknown"]
    assert b.dispatcher.stats.outcomes_kept == 0


async def test_the_result_agi_settles_a_dial(rig: Rig, nodes: list[Node]) -> None:
    snapshot = QueueSnapshot("caf", waiting=(), logged_in=1, available=1)
    node = Node(rig, "ctl-a", live=lambda q: snapshot)
    nodes.append(node)
    await node.start(dispatch=False)
    cid = await ask(node, "0655555555", -30, "u1")
    assert await node.dispatcher.tick() == 1
    req = await node.store.get(cid)
    assert req is not None and req.status == "dialing"
    result = await node.service.report_result(cid, "ANSWER", dial=req.dial)
    assert (result.changed, result.status) == (True, "completed")
    again = await node.service.report_result(cid, "NOANSWER", dial=req.dial)
    assert not again.changed
    assert len(rig.unique_events("callback.connected")) == 1
    assert (await node.service.report_result("cbnosuchthing", "ANSWER")).reason == "missing"


async def test_requests_are_checked_and_cancellable(rig: Rig, nodes: list[Node]) -> None:
    node = Node(rig, "ctl-a")
    nodes.append(node)
    await node.start(dispatch=False)
    refused = await node.service.request(call="u1", number="0899123456", queue="caf")
    assert (refused.ok, refused.status, refused.reason) == (False, "refused", "premium_not_allowed")
    assert (await node.service.request(call="u1", number="anonymous", queue="caf")).reason == "withheld"
    assert (
        await node.service.request(call="u1", number="0611111111", queue="nope")
    ).reason == "unknown_queue"
    bad_case = await node.service.request(call="u1", number="0611111111", queue="caf", case="1,2")
    assert bad_case.reason == "invalid_case"
    first = await node.service.request(call="u1", number="0611111111", queue="caf", join_ts=rig.clock() - 90)
    assert first.ok and first.status == "created" and first.number == "0611111111" and first.position == 1
    again = await node.service.request(call="u2", number="+33611111111", queue="caf")
    assert again.status == "updated" and again.callback_id == first.callback_id
    found = await node.service.find("06 11 11 11 11")
    assert found is not None and found.id == first.callback_id
    cancelled = await node.service.cancel_number("0611111111")
    assert cancelled.outcome == "cancelled"
    assert (await node.service.cancel(first.callback_id)).outcome == "closed"
    types = [e.type for e in rig.unique_events()]
    assert types == ["callback.requested", "callback.updated", "callback.cancelled"]
    cancel = rig.unique_events("callback.cancelled")[0]
    assert (cancel.call, cancel.data["by"]) == ("u1", "caller")


# -- reading outcomes from AMI events -----------------------------------------------------------------


def parse_events(*blocks: tuple[str, list[tuple[str, str]]]) -> list[Event]:
    """Events as the AMI client gets them: encoded to wire bytes, parsed back."""
    parser = AMIParser(expect_banner=False)
    parser.receive_data(b"".join(encode_event(name, headers) for name, headers in blocks))
    return [m for m in parser.events() if isinstance(m, Event)]


async def test_outcomes_are_read_from_the_channel_that_dials_the_customer(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    store = CallbackStore(client, KEYS)
    events: list[CallEvent] = []
    unused = AMIClient("127.0.0.1", 9, "ivr", SECRET)  # never started: nothing is originated here
    dispatcher = CallbackDispatcher(
        store, unused, lambda q: None, events.append, lambda: EPOCH, queues=["caf"], settings=settings()
    )
    runner = asyncio.create_task(dispatcher.run())
    try:
        service = CallbackService(
            store,
            hasher=NumberHasher("k" * 32),
            emit=events.append,
            clock=lambda: EPOCH,
            callbacks=CallbackConfig(),
            queues={"caf": QueueConfig(name="caf", service="caf")},
        )
        cid = (await service.request(call="u1", number="0611111111", queue="caf")).callback_id
        claim = await store.claim(cid, "caf", "elsewhere", lease_ms=60_000, now=EPOCH, free_agents=1)
        caller = "PJSIP/trunk-00000001"
        leg = "Local/201@agents-00000009;1"
        dial = str(claim.dial)
        up, down = ("ChannelState", "6"), ("ChannelState", "0")
        feed = parse_events(
            # the IVR recording the request on the caller's answered channel, then the caller leaves
            ("VarSet", [("Channel", caller), up, ("Variable", "IVR_CALLBACK_ID"), ("Value", cid)]),
            ("Hangup", [("Channel", caller), up, ("Cause", "16")]),
            # our Originate: the dial number may come before the id
            ("VarSet", [("Channel", leg), down, ("Variable", "IVR_CALLBACK_DIAL"), ("Value", dial)]),
            ("VarSet", [("Channel", leg), down, ("Variable", "IVR_CALLBACK_ID"), ("Value", cid)]),
            # the Originate's own dial: no Channel header
            ("DialEnd", [("DestChannel", leg), ("DialStatus", "ANSWER")]),
            (
                "DialEnd",
                [("Channel", leg), ("DestChannel", "Local/0611111111@x-1;1"), ("DialStatus", "BUSY")],
            ),
            ("Hangup", [("Channel", leg), up, ("Cause", "16")]),
        )
        for event in feed:
            dispatcher.feed(event)

        async def retried() -> bool:
            req = await store.get(cid)
            return req is not None and req.status == "pending"

        await wait_for(retried, what="the busy outcome recorded")
        req = await store.get(cid)
        assert req is not None and (req.attempts, req.reason, req.dial) == (1, "busy", claim.dial)
        retry = [e for e in events if e.type == "callback.retry"]
        assert len(retry) == 1 and retry[0].data["source"] == "ami"
    finally:
        await dispatcher.stop(grace_s=0.1)
        await runner
        await client.aclose()


async def test_the_dispatcher_survives_a_redis_outage(rig: Rig, nodes: list[Node]) -> None:
    with RedisServerProcess(appendonly=True) as server:
        rig.redis_url = server.url
        node = Node(rig, "ctl-a")
        nodes.append(node)
        await node.start()
        server.kill()
        await asyncio.sleep(0.3)  # passes fail meanwhile: logged, not fatal
        server.restart()
        await wait_for(
            lambda: node.dispatcher.stats.errors > 0 or node.dispatcher.stats.passes > 10, what="passes"
        )
        cid = await ask(node, "0611111111", -30, "u1")
        await wait_for(lambda: all_closed(node.store, [cid]), what="the callback after the outage")
        req = await node.store.get(cid)
        assert req is not None and req.status == "completed"
        assert node.dispatcher.stats.errors > 0
        await node.stop()
        nodes.remove(node)
