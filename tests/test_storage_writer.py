"""The event log writer against a real Redis: exactly once, in order, batched, and nothing
lost while Redis is away. Also the key plan and the number hashing it relies on."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date, datetime
from pathlib import Path

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from ivr.domain.events import CallEvent, make_id
from ivr.storage.keys import DEFAULT_KEYS, Keys
from ivr.storage.privacy import NumberHasher, normalize_number, scrub_numbers
from ivr.storage.server import RedisServerProcess
from ivr.storage.spool import Spool, SpoolLockedError, encode_event
from ivr.storage.writer import EventLogWriter, WriterClosedError, call_summary

T0 = 1_700_000_000.0
KEY = b"k" * 32


def ev(i: int, **kw: object) -> CallEvent:
    base: dict[str, object] = {
        "type": "queue.join",
        "call": f"{T0:.0f}.{i % 97}",
        "ts": T0 + i / 100,
        "id": make_id("writer-test", i),
        "service": "caf",
        "queue": "caf-allocations",
        "data": {"position": i % 7},
    }
    base.update(kw)
    return CallEvent(**base)  # type: ignore[arg-type]


def writer(url: str, tmp_path: Path, **kw: object) -> EventLogWriter:
    options: dict[str, object] = {
        "spool_path": tmp_path / "events.spool",
        "flush_interval": 0.005,
        "reconnect_min_s": 0.01,
        "reconnect_max_s": 0.1,
        "fsync": False,
    }
    options.update(kw)
    return EventLogWriter(url, **options)  # type: ignore[arg-type]


async def stored(client: redis.asyncio.Redis, key: str = DEFAULT_KEYS.events) -> list[tuple[str, CallEvent]]:
    entries: list[tuple[str, dict[str, str]]] = await client.xrange(key)  # type: ignore[assignment]
    return [(i, CallEvent.from_fields(f)) for i, f in entries]


async def eventually(pred: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a writer statistic (the writer offers no event for each of them)."""
    async with asyncio.timeout(within):
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


@pytest.fixture
def durable_redis() -> Iterator[RedisServerProcess]:
    """A server of the test's own with AOF (fsync always): a SIGKILL loses nothing acknowledged."""
    with RedisServerProcess(appendonly=True) as server:
        yield server


@pytest.fixture
async def durable_client(durable_redis: RedisServerProcess) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(durable_redis.url, decode_responses=True)
    yield client
    await client.aclose()


# -- storing -------------------------------------------------------------------------


async def test_round_trip_with_summary_and_ttls(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    call = "1700000000.7"
    events = [
        ev(0, type="call.start", call=call, queue="", ts=T0),
        ev(1, type="queue.join", call=call, ts=T0 + 2.5),
        ev(2, type="agent.connect", call=call, agent="PJSIP/agent-3", ts=T0 + 30.25, data={"wait_s": 27.75}),
        ev(3, type="member.paused", call="", agent="PJSIP/agent-3", ts=T0 + 31),
    ]
    async with writer(redis_url, tmp_path, seen_ttl_s=3600, call_ttl_s=600) as w:
        for e in events:
            w.submit(e)
        await w.flush()
        assert w.stats.events_written == 4
        assert w.stats.spool_depth == w.stats.queue_depth == 0
    entries = await stored(redis_client)
    assert [e for _, e in entries] == events
    # Ids carry the Asterisk time (see ivr.storage.writer).
    assert [ms(i) for i, _ in entries] == [int(e.ts * 1000) for e in events]
    summary = await redis_client.hgetall(DEFAULT_KEYS.call(call))
    assert summary == {
        "first_ts": repr(T0),
        "start_ts": repr(T0),
        "join_ts": repr(T0 + 2.5),
        "connect_ts": repr(T0 + 30.25),
        "last_ts": repr(T0 + 30.25),
        "last_type": "agent.connect",
        "service": "caf",
        "queue": "caf-allocations",
        "agent": "PJSIP/agent-3",
        "outcome": "answered",
    }
    assert 0 < await redis_client.ttl(DEFAULT_KEYS.call(call)) <= 600
    assert 3000 < await redis_client.ttl(DEFAULT_KEYS.seen(events[0].id)) <= 3600
    # A member event has no call: no summary key was made for it.
    assert await redis_client.keys(DEFAULT_KEYS.call("*")) == [DEFAULT_KEYS.call(call)]


async def test_duplicates_are_stored_once(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    events = [ev(i) for i in range(10)]
    async with writer(redis_url, tmp_path) as w:
        for e in events:
            w.submit(e)
        w.submit(events[3])  # same batch
        await w.flush()
        for e in events[5:]:
            w.submit(e)  # later batch
        await w.flush()
        assert (w.stats.events_written, w.stats.events_duplicate) == (10, 6)
    async with writer(redis_url, tmp_path) as other:  # another controller seeing the same events
        for e in events:
            other.submit(e)
        await other.flush()
        assert other.stats.events_written == 0
    assert [e for _, e in await stored(redis_client)] == events


async def test_submission_order_kept_whatever_the_timestamps(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    now = time.time()
    events = [
        ev(0, ts=T0 + 10),
        ev(1, ts=T0 + 10),  # same millisecond
        ev(2, ts=T0 + 5),  # late: keeps its place, gets the last id
        ev(3, ts=float("nan")),  # no usable time: likewise
        ev(4, ts=T0 + 20),
        ev(5, ts=now + 86_400),  # a clock a day ahead: the id is capped near the server's clock
    ]
    async with writer(redis_url, tmp_path, max_future_s=60) as w:
        for e in events:
            w.submit(e)
        await w.flush()
    entries = await stored(redis_client)
    assert [e.id for _, e in entries] == [e.id for e in events]
    assert entries[2][1].ts == T0 + 5  # the event keeps its own time
    id_ms = [ms(i) for i, _ in entries]
    assert id_ms[:5] == [int((T0 + 10) * 1000)] * 4 + [int((T0 + 20) * 1000)]
    assert now * 1000 <= id_ms[5] <= (time.time() + 61) * 1000


async def test_batches_are_one_round_trip_each(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    async with writer(redis_url, tmp_path, batch_size=500, flush_interval=0.05) as w:
        await w.flush()
        await redis_client.config_resetstat()
        for i in range(2000):
            w.submit(ev(i))
        await w.flush()
        assert w.stats.batches == 4
    stats = await redis_client.info("commandstats")
    scripts = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("eval", "evalsha", "script|load"))
    assert 4 <= scripts <= 6  # + loading the script into this server once
    assert await redis_client.xlen(DEFAULT_KEYS.events) == 2000


async def test_overflow_goes_to_the_spool_and_keeps_order(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    # The producer never yields: the queue fills past max_pending, the rest is spooled
    # by submit() itself, and everything arrives, in order, once.
    events = [ev(i) for i in range(5000)]
    async with writer(redis_url, tmp_path, batch_size=100, max_pending=300) as w:
        for i, e in enumerate(events):
            w.submit(e)
            if i == 1500:
                await asyncio.sleep(0)  # let a batch go in flight, then overflow during it
        assert w.stats.events_spooled > 4000
        await asyncio.wait_for(w.wait_drained(), 20)
        assert w.stats.events_written == 5000
    assert [e.id for _, e in await stored(redis_client)] == [e.id for e in events]


async def test_custom_prefix_and_stream(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    keys = Keys("site2:ivr")
    async with writer(redis_url, tmp_path, keys=keys, stream_key="other:stream") as w:
        w.submit(ev(1))
        await w.flush()
    assert [e for _, e in await stored(redis_client, "other:stream")] == [ev(1)]
    assert await redis_client.exists(keys.seen(ev(1).id), keys.call(ev(1).call)) == 2


async def test_caller_numbers_are_hashed_before_storage(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    hasher = NumberHasher(KEY)
    async with writer(redis_url, tmp_path, hasher=hasher) as w:
        w.submit(ev(1, type="callback.requested", data={"caller": "06 12 34 56 78", "position": 3}))
        await w.flush()
    ((_, event),) = await stored(redis_client)
    assert event.data == {"caller_hash": hasher("+33612345678"), "position": 3}
    raw = str(await redis_client.xrange(DEFAULT_KEYS.events)) + str(
        await redis_client.hgetall(DEFAULT_KEYS.call(event.call))
    )
    assert "612345678" not in raw


async def test_bad_events_are_refused_at_submit(redis_url: str, tmp_path: Path) -> None:
    w = writer(redis_url, tmp_path)
    with pytest.raises(ValueError, match="event id"):
        w.submit(ev(1, id="a b"))
    with pytest.raises(ValueError, match="call id"):
        w.submit(ev(1, call="x:y"))
    with pytest.raises(ValueError, match="surrogate"):
        w.submit(ev(1, agent="PJSIP/\udc80"))
    with pytest.raises(ValueError, match="scalar"):
        w.submit(ev(1, data={"when": datetime(2025, 1, 1)}))
    assert w.stats.events_submitted == 0
    await w.start()
    await w.close()
    with pytest.raises(WriterClosedError):
        w.submit(ev(1))
    with pytest.raises(ValueError, match="max_pending"):
        writer(redis_url, tmp_path, batch_size=100, max_pending=10)


async def test_retention_trim_by_age(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    day = 86_400.0
    events = [ev(i, ts=T0 + i * day / 4) for i in range(12)]  # three days, every 6 h
    async with writer(redis_url, tmp_path) as w:
        for e in events:
            w.submit(e)
        await w.flush()
        now = T0 + 3 * day
        assert await w.trim(day, now=now) == 8  # exact MINID: strictly older than one day
        assert await w.trim(day, now=now) == 0
    assert [e for _, e in await stored(redis_client)] == events[8:]


# -- Redis away ------------------------------------------------------------------------


async def test_redis_killed_mid_run_loses_and_duplicates_nothing(
    durable_redis: RedisServerProcess, durable_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    events = [ev(i) for i in range(3000)]
    async with writer(durable_redis.url, tmp_path, batch_size=100, fsync=True) as w:
        for i, e in enumerate(events):
            w.submit(e)
            if i % 25 == 0:
                await asyncio.sleep(0.001)
            if i == 1000:
                await eventually(lambda: w.stats.events_written > 0)
                durable_redis.kill()
            if i == 2000:
                await eventually(lambda: w.stats.spool_depth > 0)
                assert not w.redis_up
                await asyncio.to_thread(durable_redis.restart)
        await asyncio.wait_for(w.wait_drained(), 30)
        assert w.stats.write_errors >= 1
        assert w.stats.events_spooled >= 900
        # A batch the server stored just before dying, unacknowledged, is sent again
        # from the spool and dropped there: counted as a duplicate, not as written.
        assert 3000 - 100 <= w.stats.events_written <= 3000
        assert w.stats.last_error is not None
        assert w.redis_up
    entries = await stored(durable_client)
    assert [e.id for _, e in entries] == [e.id for e in events]
    assert w.spool.path.stat().st_size == 0


async def test_flush_while_redis_is_down_means_safe_in_the_spool(
    private_redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    async with writer(private_redis_server.url, tmp_path, flush_interval=10.0) as w:
        w.submit(ev(0))
        await w.flush()
        private_redis_server.kill()
        for i in range(1, 50):
            w.submit(ev(i))
        with capture_logs() as logs:
            await asyncio.wait_for(w.flush(), 5)  # not 10 s: a flush caller does not wait for the interval
        assert w.stats.spool_depth == 49 and w.stats.queue_depth == 0
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["event_log.redis_down"]
        spool_lines = w.spool.path.read_bytes().splitlines(keepends=True)
        assert spool_lines == [encode_event(ev(i)) for i in range(1, 50)]
        private_redis_server.restart()
        await asyncio.wait_for(w.wait_drained(), 10)


async def test_spool_survives_a_writer_restart(durable_redis: RedisServerProcess, tmp_path: Path) -> None:
    events = [ev(i) for i in range(300)]
    first = writer(durable_redis.url, tmp_path)
    await first.start()
    for e in events[:50]:
        first.submit(e)
    await first.flush()
    durable_redis.kill()
    for e in events[50:]:
        first.submit(e)
    await first.close(grace_s=2)
    assert first.stats.events_spooled == 250
    with Spool(tmp_path / "events.spool") as left:  # on disk, lock released
        assert left.depth == 250

    durable_redis.restart()
    async with writer(durable_redis.url, tmp_path, batch_size=10) as second:
        second.submit(ev(300))  # submitted while the old spool drains: stored after it
        await second.flush()  # does not wait for the whole drain: appended behind it instead
        assert second.stats.spool_depth > 0
        await asyncio.wait_for(second.wait_drained(), 10)
        assert second.stats.events_drained == 251
    client = redis.asyncio.Redis.from_url(durable_redis.url, decode_responses=True)
    try:
        assert [e for _, e in await stored(client)] == [*events, ev(300)]
    finally:
        await client.aclose()


async def test_crash_mid_drain_resends_are_absorbed(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    # What a crash between storing spool lines and emptying the file leaves behind.
    events = [ev(i) for i in range(20)]
    async with writer(redis_url, tmp_path) as w:
        for e in events[:12]:
            w.submit(e)
        await w.flush()
    (tmp_path / "events.spool").write_bytes(b"".join(encode_event(e) for e in events))
    async with writer(redis_url, tmp_path) as w:
        await asyncio.wait_for(w.wait_drained(), 10)
        assert (w.stats.events_written, w.stats.events_duplicate) == (8, 12)
    assert [e for _, e in await stored(redis_client)] == events


async def test_torn_spool_line_after_a_crash(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    events = [ev(i) for i in range(5)]
    spool = tmp_path / "events.spool"
    spool.write_bytes(b"".join(encode_event(e) for e in events) + encode_event(ev(5))[:30])
    with capture_logs() as logs:
        async with writer(redis_url, tmp_path) as w:
            w.submit(ev(6))
            await asyncio.wait_for(w.wait_drained(), 10)
            assert w.stats.events_rejected == 1
    rejected = [e for e in logs if e["event"] == "spool.line_rejected"]
    assert len(rejected) == 1 and rejected[0]["log_level"] == "error"
    assert (tmp_path / "events.spool.rejected").read_bytes() == encode_event(ev(5))[:30] + b"\n"
    assert [e for _, e in await stored(redis_client)] == [*events, ev(6)]


async def test_error_replies_are_retried_not_dropped(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    await redis_client.set(DEFAULT_KEYS.events, "not a stream")  # every XADD fails: WRONGTYPE
    async with writer(redis_url, tmp_path) as w:
        for i in range(10):
            w.submit(ev(i))
        await eventually(lambda: w.stats.write_errors >= 2)
        assert "WRONGTYPE" in (w.stats.last_error or "")
        await w.flush()
        assert w.stats.spool_depth == 10
        await redis_client.delete(DEFAULT_KEYS.events)
        await asyncio.wait_for(w.wait_drained(), 10)
    assert [e for _, e in await stored(redis_client)] == [ev(i) for i in range(10)]


async def test_close_with_redis_down_and_one_spool_per_writer(
    private_redis_server: RedisServerProcess, tmp_path: Path
) -> None:
    private_redis_server.kill()
    w = writer(private_redis_server.url, tmp_path, flush_interval=0)
    await w.start()
    with pytest.raises(SpoolLockedError):
        await writer(private_redis_server.url, tmp_path).start()
    for i in range(10):
        w.submit(ev(i))
    await w.flush()
    await asyncio.sleep(0.05)  # the down-mode loop sleeps between probes even with flush_interval=0
    assert w.stats.write_errors == 1 and w.stats.spool_depth == 10
    for i in range(10, 15):
        w.submit(ev(i))
    await w.close(grace_s=1)
    with Spool(tmp_path / "events.spool") as left:
        assert left.read(100)[0] == [ev(i) for i in range(15)]


# -- summary, keys, numbers ------------------------------------------------------------


def test_call_summary_fields() -> None:
    assert call_summary(ev(1, call="")) == {}
    assert call_summary(ev(1, type="queue.abandon", agent="")) == {
        "last_type": "queue.abandon",
        "last_ts": repr(ev(1).ts),
        "service": "caf",
        "queue": "caf-allocations",
        "outcome": "abandoned",
    }


def test_key_plan() -> None:
    k = Keys()
    assert (k.events, k.cb_pending) == ("ivr:events", "ivr:cb:pending")
    assert k.call("1700000000.12") == "ivr:call:1700000000.12"
    assert k.seen("ab12") == "ivr:seen:ab12"
    assert k.cb("cb-1") == "ivr:cb:cb-1"
    assert k.cb_lease("cb-1") == "ivr:cb:lease:cb-1"
    assert k.cb_number("f00d") == "ivr:cb:number:f00d"
    assert k.slots("caf", date(2025, 3, 4)) == k.slots("caf", "2025-03-04") == "ivr:slots:caf:2025-03-04"
    assert k.slots("caf", datetime(2025, 3, 4, 23, 59)) == "ivr:slots:caf:2025-03-04"
    assert k.kpi("caf", datetime(2025, 3, 4, 9, 30)) == k.kpi("caf", "2025030409") == "ivr:kpi:caf:2025030409"
    assert k.hb("ctl-a") == "ivr:hb:ctl-a"
    assert Keys("test:1").events == "test:1:events"


@pytest.mark.parametrize(
    "make",
    [
        lambda k: k.call(""),
        lambda k: k.call("a:b"),
        lambda k: k.seen("a b"),
        lambda k: k.cb("pending"),
        lambda k: k.slots("caf", "4/3/2025"),
        lambda k: k.kpi("caf", "2025-03-04"),
        lambda k: k.hb("x\n"),
        lambda k: Keys(""),
        lambda k: Keys("ivr:"),
    ],
)
def test_key_parts_that_would_collide_are_refused(make: Callable[[Keys], object]) -> None:
    with pytest.raises(ValueError):
        make(Keys())


def test_number_hash_is_stable_keyed_and_truncated() -> None:
    h = NumberHasher(KEY)
    forms = ["0612345678", "+33612345678", "33612345678", "0033612345678", "06 12 34 56 78", "06.12.34.56.78"]
    assert {normalize_number(f) for f in forms} == {"+33612345678"}
    assert len({h(f) for f in forms}) == 1
    expected = hmac.new(KEY, b"+33612345678", hashlib.sha256).hexdigest()[:16]
    assert h("0612345678") == expected
    assert NumberHasher(KEY)("0612345678") == expected  # stable across instances
    assert NumberHasher(b"j" * 32)("0612345678") != expected  # keyed
    assert h("0612345679") != expected
    assert hashlib.sha256(b"+33612345678").hexdigest()[:16] != expected
    assert len(NumberHasher(KEY, length=24)("0612345678")) == 24
    assert h("anonymous") == h("") == ""  # withheld: no pseudo-caller
    assert "kkkk" not in repr(h)


def test_number_hasher_refuses_weak_settings() -> None:
    with pytest.raises(ValueError, match="too short"):
        NumberHasher("short")
    with pytest.raises(ValueError, match="length"):
        NumberHasher(KEY, length=4)
    with pytest.raises(ValueError, match="country"):
        NumberHasher(KEY, country_code="+33")


def test_scrub_renames_number_fields() -> None:
    h = NumberHasher(KEY)
    assert scrub_numbers({"position": 2}, h) is None
    assert scrub_numbers({"caller": "0612345678", "x": 1}, h) == {"caller_hash": h("0612345678"), "x": 1}
