"""The API the IVR calls: overflow advice, estimates, requests (real Redis, a given live queue)."""

from __future__ import annotations

import random

import pytest
import redis.asyncio

from ivr.callbacks.ordering import QueueSnapshot, merged_line, position_in_line
from ivr.callbacks.service import CallbackService, hours_check
from ivr.callbacks.store import CallbackStore, NewRequest
from ivr.config import CallbackConfig, QueueConfig
from ivr.domain.events import CallEvent
from ivr.domain.hours import schedule_from_mapping
from ivr.storage.keys import Keys
from ivr.storage.privacy import NumberHasher

T0 = 1_800_000_000.0  # Friday 15 January 2027, 09:00 in Paris
HOURS = schedule_from_mapping({"mon-fri": "08:30-12:00, 13:30-16:30"}, timezone="Europe/Paris", holidays=None)


class World:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.now = T0
        self.events: list[CallEvent] = []
        self.snapshot = QueueSnapshot("caf", waiting=(), logged_in=2, available=0)
        self.service = CallbackService(
            CallbackStore(client, Keys("svc")),
            hasher=NumberHasher("s" * 32),
            emit=self.events.append,
            clock=lambda: self.now,
            callbacks=CallbackConfig(expiry_s=8 * 3600),
            queues={
                "caf": QueueConfig(
                    name="caf",
                    service="caf",
                    max_estimated_wait_s=600,
                    max_callers_per_agent=5,
                    offer_callback=True,
                )
            },
            schedules={"caf": HOURS},
            live=lambda q: self.snapshot if q == "caf" else None,
        )

    def complete(self, talk_s: float, ts: float) -> None:
        self.service.observe(
            CallEvent(
                type="agent.complete", call="x", ts=ts, id=f"c{ts}", queue="caf", data={"talk_s": talk_s}
            )
        )


@pytest.fixture
def world(redis_client: redis.asyncio.Redis) -> World:
    return World(redis_client)


async def test_estimates_use_recent_handle_times_and_the_merged_line(world: World) -> None:
    svc = world.service
    world.complete(200, T0 - 600)
    world.complete(400, T0 - 300)
    world.service.observe(CallEvent(type="queue.join", call="y", ts=T0, id="j", queue="caf"))  # ignored
    assert svc.mean_handle_s("caf", T0) == 300
    world.snapshot = QueueSnapshot(
        "caf", waiting=(("a", T0 - 500), ("b", T0 - 100)), logged_in=2, available=0
    )
    req = await svc.request(call="u1", number="0611111111", queue="caf", join_ts=T0 - 300)
    assert (req.position, req.estimated_wait_s) == (2, 300.0)  # one caller ahead, 2 agents, 300 s each
    est = await svc.estimate("caf")  # a caller about to join: behind everyone
    assert est is not None and (est.position, est.waiting_callers, est.pending_callbacks) == (4, 2, 1)
    assert est.estimated_wait_s == 600.0
    assert await svc.estimate("nope") is None


async def test_overflow_on_entry(world: World) -> None:
    svc = world.service
    world.complete(300, T0 - 60)
    world.snapshot = QueueSnapshot("caf", waiting=tuple((f"c{i}", T0 - i) for i in range(3)), logged_in=2)
    calm = await svc.overflow("caf")
    assert calm is not None and (calm.offer, calm.reasons) == ("none", ())
    world.snapshot = QueueSnapshot("caf", waiting=tuple((f"c{i}", T0 - i) for i in range(12)), logged_in=2)
    busy = await svc.overflow("caf")
    assert busy is not None and busy.offer == "callback"
    assert busy.reasons == ("estimated_wait", "callers_per_agent")
    assert busy.estimated_wait_s == 13 * 300 / 2
    world.snapshot = QueueSnapshot("caf", logged_in=0)
    nobody = await svc.overflow("caf")
    assert nobody is not None and nobody.reasons == ("no_agent",) and nobody.offer == "callback"
    assert await svc.overflow("nope") is None


async def test_overflow_near_and_after_closing(world: World) -> None:
    svc = world.service
    world.complete(300, T0)
    world.now = T0 + 3 * 3600 - 400  # 11:53, closes at 12:00
    world.snapshot = QueueSnapshot(
        "caf", waiting=tuple((f"c{i}", world.now - i) for i in range(3)), logged_in=2
    )
    late = await svc.overflow("caf")
    assert late is not None and late.reasons == ("closing_soon",) and late.offer == "callback"
    world.now = T0 + 8 * 3600  # 17:00, Friday: opens again on Monday, after the callbacks expire
    world.snapshot = QueueSnapshot("caf", logged_in=0)
    closed = await svc.overflow("caf")
    assert closed is not None and closed.reasons[0] == "closed" and closed.offer == "appointment"
    check = hours_check({"caf": HOURS})
    assert check("caf", T0) and not check("caf", T0 + 8 * 3600) and check("pool-without-hours", T0 + 8 * 3600)


async def test_disabled_callbacks_are_not_promised(redis_client: redis.asyncio.Redis) -> None:
    svc = CallbackService(
        CallbackStore(redis_client, Keys("svc")),
        hasher=NumberHasher("s" * 32),
        emit=lambda e: None,
        clock=lambda: T0,
        callbacks=CallbackConfig(enabled=False),
        queues={"caf": QueueConfig(name="caf", service="caf")},
    )
    out = await svc.request(call="u1", number="0611111111", queue="caf")
    assert (out.ok, out.reason) == (False, "callbacks_disabled")
    assert await svc.list_requests("all") == []


async def _add_pending(store: CallbackStore, joins: list[float]) -> list[str]:
    """Pending requests of queue caf with these join times (their ids, in the same order)."""
    ids = []
    for i, join in enumerate(joins):
        new = NewRequest(
            call=f"call{i}",
            service="caf",
            queue="caf",
            number=f"06{i:08d}",
            number_hash=f"h{i}",
            join_ts=join,
            expires_at=T0 + 8 * 3600,
            max_attempts=3,
        )
        ids.append((await store.request(new, T0)).request.id)
    return ids


async def _commands(client: redis.asyncio.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_estimate_counts_every_pending_callback_without_reading_one(
    world: World, redis_client: redis.asyncio.Redis
) -> None:
    """The estimate asks Redis a fixed handful of counts, however many callbacks wait: no
    request hash is read, and all of them count (beyond any scan limit)."""
    svc = world.service
    waiting = 2500
    await _add_pending(svc.store, [T0 - 3000 + i for i in range(waiting)])
    world.snapshot = QueueSnapshot("caf", waiting=(("a", T0 - 5000), ("b", T0 - 10)), logged_in=2)
    before = await _commands(redis_client)
    est = await svc.estimate("caf")
    after = await _commands(redis_client)
    assert est is not None
    assert (est.position, est.pending_callbacks, est.waiting_callers) == (waiting + 3, waiting, 2)
    used = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    used.pop("info", None)
    assert "hgetall" not in used and "hmget" not in used and "zrange" not in used
    assert sum(used.values()) <= 4, used
    mid = await svc.estimate("caf", T0 - 2000.5)  # joined between callbacks 999 and 1000
    assert mid is not None and mid.position == 1 + 1 + 1000


async def test_estimate_places_callbacks_and_callers_as_the_merged_line_does(
    world: World, redis_client: redis.asyncio.Redis
) -> None:
    """Counted positions equal those of the merged line, ties included (callers first on a
    tie, callbacks of one join time by id)."""
    rng = random.Random(7)
    svc = world.service
    joins = [T0 - rng.choice(range(0, 400, 20)) for _ in range(40)]
    ids = await _add_pending(svc.store, joins)
    callers = tuple((f"c{i}", T0 - rng.choice(range(0, 400, 20))) for i in range(15))
    world.snapshot = QueueSnapshot("caf", waiting=callers, logged_in=3, available=1)
    stored = {r.id: r.join_ts for r in await svc.store.pending("caf", 0, 100)}
    line = merged_line(callers, stored.items())
    for cid in ids:
        est = await svc.estimate("caf", callback_id=cid)
        assert est is not None and est.position == position_in_line(line, cid), cid
    for ts in (T0 - 400, T0 - 200, T0 - 199.5, T0):
        est = await svc.estimate("caf", ts)
        assert est is not None
        assert est.position == 1 + sum(1 for e in line if e.join_ts <= ts), ts
    # a request no longer pending (claimed, closed) is placed by its join time instead
    gone = await svc.estimate("caf", T0 - 100, callback_id="cb-not-pending")
    assert gone is not None and gone.position == 1 + sum(1 for e in line if e.join_ts <= T0 - 100)
