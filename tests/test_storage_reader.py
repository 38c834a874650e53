"""Reading the event stream by Asterisk-time range, against a real Redis."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import redis.asyncio
from redis.typing import EncodableT, FieldT

from ivr.domain.events import CallEvent, make_id
from ivr.storage.keys import DEFAULT_KEYS
from ivr.storage.reader import EventLogReader, read_range, stream_id_for
from ivr.storage.writer import EventLogWriter

T0 = 1_700_000_000.0


def ev(i: int, ts: float) -> CallEvent:
    return CallEvent(type="queue.join", call=f"c{i}", ts=ts, id=make_id("reader-test", i), queue="caf")


async def store(url: str, tmp_path: Path, events: list[CallEvent]) -> None:
    async with EventLogWriter(url, spool_path=tmp_path / "spool", fsync=False, flush_interval=0) as w:
        for e in events:
            w.submit(e)
        await w.flush()


async def collect(
    reader: EventLogReader, since: float | None, until: float | None, batch: int = 7
) -> list[CallEvent]:
    return [e async for e in reader.read_range(since, until, batch=batch)]


async def test_range_is_half_open_and_paged(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    events = [ev(i, T0 + i) for i in range(100)]  # one a second
    await store(redis_url, tmp_path, events)
    reader = EventLogReader(redis_client)
    assert await collect(reader, T0 + 10, T0 + 20) == events[10:20]
    assert await collect(reader, T0 + 10.5, T0 + 11) == []
    assert await collect(reader, None, T0 + 3) == events[:3]
    assert await collect(reader, T0 + 97, None) == events[97:]
    assert await collect(reader, None, None, batch=1) == events
    # Consecutive ranges cover everything once.
    parts = [await collect(reader, T0 + a, T0 + a + 25) for a in range(0, 100, 25)]
    assert [e for p in parts for e in p] == events
    assert reader.skipped == 0


async def test_late_event_found_by_its_own_time(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    # Stored after a newer event, the late one gets an id later than its ts (the margin's job).
    late = ev(2, T0 + 50)
    events = [ev(0, T0 + 10), ev(1, T0 + 100), late, ev(3, T0 + 101)]
    await store(redis_url, tmp_path, events)
    entries: list[tuple[str, dict[str, str]]] = await redis_client.xrange(DEFAULT_KEYS.events)  # type: ignore[assignment]
    assert int(entries[2][0].split("-")[0]) == stream_id_for(T0 + 100)
    assert await collect(EventLogReader(redis_client, margin_s=60), T0 + 40, T0 + 60) == [late]
    # Without a margin it is missed: that is why margins exist.
    assert await collect(EventLogReader(redis_client, margin_s=0), T0 + 40, T0 + 60) == []
    assert [e async for e in read_range(redis_client, T0, T0 + 100.5)] == events[:3]


async def test_bytes_client_and_foreign_entries(redis_url: str, tmp_path: Path) -> None:
    await store(redis_url, tmp_path, [ev(0, T0)])
    client = redis.asyncio.Redis.from_url(redis_url)  # bytes replies
    try:
        await client.xadd(DEFAULT_KEYS.events, {"hello": "world"}, id=f"{stream_id_for(T0 + 1)}-0")
        bogus: dict[FieldT, EncodableT] = {k: v for k, v in ev(2, T0).to_fields().items()}
        bogus["type"] = "bogus"
        await client.xadd(DEFAULT_KEYS.events, bogus, id="*")
        reader = EventLogReader(client)
        assert await collect(reader, None, None) == [ev(0, T0)]
        assert reader.skipped == 2
        assert reader.last_id is not None and reader.last_id.count("-") == 1
    finally:
        await client.aclose()


async def test_empty_or_missing_stream(redis_client: redis.asyncio.Redis) -> None:
    assert await collect(EventLogReader(redis_client), None, None) == []
    assert await collect(EventLogReader(redis_client, stream_key="nope"), T0, T0 + 1) == []


async def test_bad_arguments(redis_client: redis.asyncio.Redis) -> None:
    reader = EventLogReader(redis_client)
    with pytest.raises(ValueError, match="batch"):
        await collect(reader, None, None, batch=0)
    with pytest.raises(ValueError, match="empty range"):
        await collect(reader, T0 + 1, T0)
    with pytest.raises(ValueError, match="NaN"):
        await collect(reader, float("nan"), None)
    with pytest.raises(ValueError, match="margin"):
        EventLogReader(redis_client, margin_s=-1)
    assert stream_id_for(-5) == 0


async def test_an_entry_that_is_not_utf8_is_skipped_alone(redis_url: str, tmp_path: Path) -> None:
    # Read by position like the writer's entries, the bad one fails alone: skipped, the rest
    # of its batch and of the range kept, whatever the batch size.
    events = [ev(i, T0 + i) for i in range(6)]
    await store(redis_url, tmp_path, events[:3])
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        bad: dict[FieldT, EncodableT] = {k: v for k, v in ev(9, T0 + 3).to_fields().items()}
        bad["queue"] = b"caf\xff"
        await client.xadd(DEFAULT_KEYS.events, bad, id=f"{stream_id_for(T0 + 3)}-*")
        await store(redis_url, tmp_path, events[3:])
        for batch in (2, 100):
            reader = EventLogReader(client)
            assert await collect(reader, None, None, batch=batch) == events
            assert reader.skipped == 1
    finally:
        await client.aclose()


async def test_entries_in_another_field_order_read_the_same(redis_url: str, tmp_path: Path) -> None:
    # An entry whose fields are not in the writer's order (another tool, a future writer) is
    # read by name, not by position, and gives the same event.
    events = [ev(i, T0 + i) for i in range(4)]
    events[1] = CallEvent(
        type="call.end", call="c1", ts=T0 + 1, id=make_id("x"), service="caf", data={"outcome": "answered"}
    )
    await store(redis_url, tmp_path, events[:1])
    for decode in (False, True):
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=decode)
        try:
            if not decode:
                for e in events[1:3]:
                    fields: dict[FieldT, EncodableT] = dict(reversed(e.to_fields().items()))
                    await client.xadd(DEFAULT_KEYS.events, fields, id=f"{stream_id_for(e.ts)}-*")
                await store(redis_url, tmp_path, events[3:])
            reader = EventLogReader(client)
            assert await collect(reader, None, None, batch=3) == events
            assert reader.skipped == 0
            # the caller's client still gets redis-py's usual replies
            entries = await client.xrange(DEFAULT_KEYS.events, count=1)
            assert isinstance(entries[0][1], dict)
        finally:
            await client.aclose()


async def test_reads_need_no_scripting(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    events = [ev(i, T0 + i) for i in range(5)]
    await store(redis_url, tmp_path, events)
    await redis_client.acl_setuser(
        "noscript", enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all", "-@scripting"]
    )
    url = redis_url.replace("redis://", "redis://noscript:pw@")
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        reader = EventLogReader(client)
        assert await collect(reader, None, None, batch=2) == events
        assert await collect(reader, T0 + 1, T0 + 3, batch=2) == events[1:3]
    finally:
        await client.aclose()
        await redis_client.acl_deluser("noscript")


async def test_a_reader_left_early_leaves_the_client_usable(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    events = [ev(i, T0 + i) for i in range(10)]
    await store(redis_url, tmp_path, events)
    reader = EventLogReader(redis_client)
    got = []
    async for event in reader.read_range(None, None, batch=3):  # the next batch is already asked for
        got.append(event)
        if len(got) == 4:
            break
    assert got == events[:4]
    assert await collect(reader, None, None, batch=3) == events


async def test_data_the_standard_json_writes_is_read_back(
    redis_url: str, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    # The writer's json.dumps writes what stricter decoders refuse: NaN, Infinity, integers
    # beyond 64 bits. They come back as written, and so do non-ASCII texts.
    event = CallEvent(
        type="survey.answer",
        call="c1",
        ts=T0,
        id=make_id("data"),
        queue="caf",
        data={"score": float("nan"), "wait_s": float("inf"), "big": 2**70, "note": "très bien"},
    )
    await store(redis_url, tmp_path, [event, ev(2, T0 + 1)])
    reader = EventLogReader(redis_client)
    got = await collect(reader, None, None)
    assert reader.skipped == 0 and len(got) == 2 and got[1] == ev(2, T0 + 1)
    data = got[0].data
    assert math.isnan(float(data["score"])) and data["wait_s"] == math.inf
    assert data["big"] == 2**70 and data["note"] == "très bien"
