"""The callback store against a real Redis: one request per number, exclusive claims, leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from ivr.callbacks.store import CallbackStore, NewRequest, Outcome
from ivr.storage.keys import Keys

T0 = 1_800_000_000.0


def new(
    number: str = "0612345678",
    *,
    queue: str = "caf",
    join_ts: float = T0,
    call: str = "1800000000.1",
    max_attempts: int = 3,
    expires_at: float = T0 + 3600,
    case: str = "",
) -> NewRequest:
    return NewRequest(
        call=call,
        service="caf",
        queue=queue,
        number=number,
        number_hash=f"h{number}",
        join_ts=join_ts,
        expires_at=expires_at,
        max_attempts=max_attempts,
        case=case,
    )


@pytest.fixture
async def store(redis_client: redis.asyncio.Redis) -> CallbackStore:
    return CallbackStore(redis_client, Keys("t"), retention_s=600)


async def test_a_request_is_stored_with_its_place_in_line(store: CallbackStore) -> None:
    res = await store.request(new(case="A12"), now=T0 + 60)
    req = res.request
    assert res.outcome == "created"
    assert (req.status, req.queue, req.join_ts, req.created, req.attempts, req.dial) == (
        "pending",
        "caf",
        T0,
        T0 + 60,
        0,
        0,
    )
    assert (req.number, req.case, req.max_attempts, req.expires_at) == ("0612345678", "A12", 3, T0 + 3600)
    assert [r.id for r in await store.pending("caf")] == [req.id]
    assert [r.id for r in await store.open_requests()] == [req.id]
    assert (await store.open_for_number("h0612345678")) == req
    assert await store.get("cbdoesnotexist") is None


async def test_one_open_request_per_number(store: CallbackStore) -> None:
    first = (await store.request(new(join_ts=T0 + 100), now=T0 + 200)).request
    # asked again later, same queue: same request, and it keeps the earlier place
    again = await store.request(new(join_ts=T0 + 500, case="B7"), now=T0 + 600)
    assert again.outcome == "updated" and again.request.id == first.id
    assert again.request.join_ts == T0 + 100 and again.request.case == "B7" and again.request.updates == 1
    # an earlier join time (a caller who had waited since then) moves it up
    earlier = await store.request(new(join_ts=T0 + 50, case="B7"), now=T0 + 700)
    assert earlier.request.join_ts == T0 + 50
    # another queue: the place of the other queue does not transfer
    moved = await store.request(new(queue="cpam", join_ts=T0 + 800), now=T0 + 900)
    assert (
        moved.request.id == first.id and moved.request.queue == "cpam" and moved.request.join_ts == T0 + 800
    )
    assert await store.pending("caf") == [] and [r.id for r in await store.pending("cpam")] == [first.id]
    # another number: another request
    other = await store.request(new("0698765432"), now=T0 + 900)
    assert other.outcome == "created" and other.request.id != first.id
    assert len(await store.open_requests()) == 2


async def test_concurrent_requests_for_one_number_make_one_request(store: CallbackStore) -> None:
    results = await asyncio.gather(*(store.request(new(join_ts=T0 + i), now=T0 + 100) for i in range(20)))
    ids = {r.request.id for r in results}
    assert len(ids) == 1
    assert sum(r.outcome == "created" for r in results) == 1
    assert (await store.get(ids.pop())).join_ts == T0  # type: ignore[union-attr]


async def test_exactly_one_of_many_concurrent_claimers_wins(redis_url: str) -> None:
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]  # two controllers
    try:
        stores = [CallbackStore(c, Keys("t")) for c in clients]
        req = (await stores[0].request(new(), now=T0)).request
        claims = await asyncio.gather(
            *(
                stores[i % 2].claim(req.id, "caf", f"owner{i}", lease_ms=30_000, now=T0 + 1, free_agents=5)
                for i in range(40)
            )
        )
        winners = [i for i, c in enumerate(claims) if c.ok]
        assert len(winners) == 1
        assert {c.reason for c in claims if not c.ok} <= {"not_pending", "leased"}
        assert await stores[1].lease_owner(req.id) == f"owner{winners[0]}"
        got = await stores[1].get(req.id)
        assert got is not None and (got.status, got.dial, got.phase) == ("dialing", 1, "agent")
        assert await stores[0].pending("caf") == []
    finally:
        for c in clients:
            await c.aclose()


async def test_never_more_ringing_callbacks_than_free_agents(store: CallbackStore) -> None:
    a = (await store.request(new("0611111111"), now=T0)).request
    b = (await store.request(new("0622222222", join_ts=T0 + 1), now=T0)).request
    assert (await store.claim(a.id, "caf", "x", lease_ms=10_000, now=T0 + 5, free_agents=1)).ok
    refused = await store.claim(b.id, "caf", "y", lease_ms=10_000, now=T0 + 5, free_agents=1)
    assert (refused.ok, refused.reason) == (False, "no_agent")
    assert await store.ringing_count("caf") == 1
    # the agent answered the first one: it is no longer a free agent being rung for us
    assert await store.agent_answered(a.id, "caf", 1, T0 + 8, "Local/caf@callback-queue-00000001;1")
    assert await store.ringing_count("caf") == 0
    got = await store.get(a.id)
    assert got is not None and (got.phase, got.channel) == ("customer", "Local/caf@callback-queue-00000001;1")
    assert (await store.claim(b.id, "caf", "y", lease_ms=10_000, now=T0 + 9, free_agents=1)).ok


async def test_claim_respects_retry_delay_and_expiry(store: CallbackStore) -> None:
    req = (await store.request(new(expires_at=T0 + 100), now=T0)).request
    assert (await store.claim(req.id, "caf", "x", lease_ms=10_000, now=T0 + 1, free_agents=1)).ok
    res = await store.finish(req.id, "retry", now=T0 + 2, dial=1, next_attempt_at=T0 + 60, count_attempt=True)
    assert (res.changed, res.status, res.attempts) == (True, "pending", 1)
    early = await store.claim(req.id, "caf", "x", lease_ms=10_000, now=T0 + 30, free_agents=1)
    assert early.reason == "not_due"
    late = await store.claim(req.id, "caf", "x", lease_ms=10_000, now=T0 + 100, free_agents=1)
    assert late.reason == "expired"
    assert await store.expire(req.id, now=T0 + 100)
    gone = await store.get(req.id)
    assert gone is not None and gone.status == "expired" and gone.number == ""
    assert await store.open_for_number("h0612345678") is None


async def test_a_lease_that_expires_returns_the_request_to_pending_with_the_attempt_counted(
    store: CallbackStore,
) -> None:
    req = (await store.request(new(), now=T0)).request
    claim = await store.claim(req.id, "caf", "dead-controller", lease_ms=150, now=T0 + 1, free_agents=1)
    assert claim.ok
    # the owner is alive: nobody can take it over
    assert await store.adopt(req.id, "rescuer", 10_000) is None
    assert await store.due_for_check(await store.server_ms()) == []
    await asyncio.sleep(0.3)  # ... then it dies: no renewal
    assert not await store.renew(req.id, "dead-controller", 150)
    assert await store.due_for_check(await store.server_ms()) == [req.id]
    assert await store.adopt(req.id, "rescuer", 10_000) == claim.dial
    assert await store.adopt(req.id, "someone-else", 10_000) is None
    res = await store.finish(
        req.id, "retry", now=T0 + 40, dial=claim.dial, reason="outcome_unknown", count_attempt=True
    )
    assert (res.changed, res.status, res.attempts) == (True, "pending", 1)
    got = await store.get(req.id)
    assert got is not None and (got.status, got.attempts, got.reason, got.join_ts) == (
        "pending",
        1,
        "outcome_unknown",
        T0,
    )
    assert [r.id for r in await store.pending("caf")] == [req.id]  # same place in line
    assert await store.due_for_check(await store.server_ms()) == []
    assert await store.lease_owner(req.id) is None


async def test_completed_is_terminal(store: CallbackStore) -> None:
    req = (await store.request(new(case="C1"), now=T0)).request
    claim = await store.claim(req.id, "caf", "x", lease_ms=10_000, now=T0 + 1, free_agents=1)
    done = await store.finish(req.id, "completed", now=T0 + 30, dial=claim.dial, count_attempt=True)
    assert (done.changed, done.status, done.attempts) == (True, "completed", 1)
    got = await store.get(req.id)
    assert got is not None and (got.status, got.number, got.case, got.closed_at) == (
        "completed",
        "",
        "",
        T0 + 30,
    )
    assert (await store.claim(req.id, "caf", "x", lease_ms=10_000, now=T0 + 40, free_agents=9)).reason == (
        "not_pending"
    )
    outcomes: tuple[Outcome, ...] = ("retry", "failed", "agent_retry", "completed")
    for outcome in outcomes:
        again = await store.finish(req.id, outcome, now=T0 + 50, dial=claim.dial)
        assert (again.changed, again.status) == (False, "completed")
    assert (await store.cancel(req.id, now=T0 + 60)).outcome == "closed"
    assert await store.pending("caf") == [] and await store.open_requests() == []
    assert [r.id for r in await store.closed_requests()] == [req.id]
    assert await store.lease_owner(req.id) is None
    ttl = await store.redis.ttl(store.keys.cb(req.id))
    assert 0 < ttl <= 600
    # the same person asking again later is a new request
    fresh = await store.request(new(), now=T0 + 100)
    assert fresh.outcome == "created" and fresh.request.id != req.id


async def test_a_late_answer_completes_a_request_sent_back_to_pending(store: CallbackStore) -> None:
    req = (await store.request(new(), now=T0)).request
    claim = await store.claim(req.id, "caf", "x", lease_ms=10_000, now=T0 + 1, free_agents=1)
    await store.finish(
        req.id, "retry", now=T0 + 90, dial=claim.dial, reason="outcome_unknown", count_attempt=True
    )
    res = await store.finish(req.id, "completed", now=T0 + 95, dial=claim.dial, count_attempt=True)
    assert (res.changed, res.status, res.attempts) == (True, "completed", 1)  # not counted twice
    # whereas a late failure of an older dial changes nothing
    req2 = (await store.request(new("0699999999"), now=T0)).request
    c1 = await store.claim(req2.id, "caf", "x", lease_ms=10_000, now=T0 + 1, free_agents=5)
    await store.finish(req2.id, "retry", now=T0 + 2, dial=c1.dial, count_attempt=True, next_attempt_at=T0 + 2)
    c2 = await store.claim(req2.id, "caf", "x", lease_ms=10_000, now=T0 + 3, free_agents=5)
    assert c2.dial == c1.dial + 1
    stale = await store.finish(req2.id, "retry", now=T0 + 4, dial=c1.dial, count_attempt=True)
    assert (stale.changed, stale.reason) == (False, "stale_dial")


async def test_attempt_limits(store: CallbackStore) -> None:
    req = (await store.request(new(max_attempts=2), now=T0)).request
    for i in range(2):
        c = await store.claim(req.id, "caf", "x", lease_ms=10_000, now=T0 + 10 * i, free_agents=1)
        res = await store.finish(
            req.id, "retry", now=T0 + 10 * i + 1, dial=c.dial, reason="busy", count_attempt=True
        )
    assert (res.status, res.reason, res.attempts) == ("failed", "max_attempts", 2)
    other = (await store.request(new("0644444444"), now=T0)).request
    for i in range(3):
        c = await store.claim(other.id, "caf", "x", lease_ms=10_000, now=T0 + 10 * i, free_agents=1)
        res = await store.finish(
            other.id, "agent_retry", now=T0 + 10 * i + 1, dial=c.dial, max_agent_failures=3
        )
    assert (res.status, res.reason, res.attempts) == ("failed", "no_agent", 0)


async def test_cancel(store: CallbackStore) -> None:
    req = (await store.request(new(), now=T0)).request
    assert (await store.cancel("cbnope", now=T0)).outcome == "missing"
    c = await store.claim(req.id, "caf", "x", lease_ms=10_000, now=T0 + 1, free_agents=1)
    assert (await store.cancel(req.id, now=T0 + 2)).outcome == "dialing"
    await store.finish(req.id, "retry", now=T0 + 3, dial=c.dial, count_attempt=True)
    res = await store.cancel(req.id, now=T0 + 4, reason="by_caller")
    assert res.outcome == "cancelled"
    got = await store.get(req.id)
    assert got is not None and (got.status, got.reason, got.number) == ("cancelled", "by_caller", "")
    assert await store.open_for_number("h0612345678") is None
    assert (await store.cancel(req.id, now=T0 + 5)).outcome == "closed"


async def test_bad_ids_are_refused_before_reaching_redis(store: CallbackStore) -> None:
    for bad in ("", "a b", "x:y", "pending", "lease"):
        with pytest.raises(ValueError):
            await store.get(bad)


@pytest.fixture
async def two_clients(redis_url: str) -> AsyncIterator[tuple[redis.asyncio.Redis, redis.asyncio.Redis]]:
    a = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    b = redis.asyncio.Redis.from_url(redis_url)
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_decoded_and_raw_clients_read_the_same(
    two_clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis],
) -> None:
    a, b = (CallbackStore(c, Keys("t")) for c in two_clients)
    req = (await a.request(new(), now=T0)).request
    assert await b.get(req.id) == await a.get(req.id) == req
