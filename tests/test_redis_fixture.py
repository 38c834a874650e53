"""The Redis test fixtures and ``RedisServerProcess`` work against a real server."""

from __future__ import annotations

import os

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.typing import EncodableT, FieldT

from ivr.storage.server import (
    RedisServerNotFoundError,
    RedisServerProcess,
    find_redis_server_binary,
)


async def test_stream_round_trip(redis_client: redis.asyncio.Redis) -> None:
    fields: dict[FieldT, EncodableT] = {
        "type": "CallQueued",
        "uniqueid": "1700000000.42",
        "queue": "caf-allocations",
        "caller": "+33612345678",
        "note": "délai estimé 3 min",
    }
    entry_id = await redis_client.xadd("ivr:events", fields)
    entries = await redis_client.xrange("ivr:events")
    assert entries == [(entry_id, fields)]


async def test_database_is_flushed_between_tests(redis_client: redis.asyncio.Redis) -> None:
    # test_stream_round_trip wrote this stream; each test must start empty.
    assert await redis_client.exists("ivr:events") == 0
    assert await redis_client.dbsize() == 0


async def test_client_reconnects_after_restart(private_redis_server: RedisServerProcess) -> None:
    server = private_redis_server
    port = server.port
    # No retries, so that "server down" shows up as an error at once rather
    # than being hidden (and slowed down) by the client's retry policy.
    client = redis.asyncio.Redis.from_url(server.url, decode_responses=True, retry=Retry(NoBackoff(), 0))
    try:
        await client.xadd("s", {"n": "1"})
        server.kill()
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            await client.xadd("s", {"n": "2"})
        server.restart()
        assert server.port == port
        # Same client object, new connection: it works again. Data written
        # before the crash is gone, since persistence is off by default.
        assert await client.ping()
        await client.xadd("s", {"n": "3"})
        assert [fields for _, fields in await client.xrange("s") or []] == [{"n": "3"}]
    finally:
        await client.aclose()


def _retrying_client(url: str) -> redis.asyncio.Redis:
    # Note: redis-py's from_url() does not apply the Redis() constructor's
    # default retry policy; connections get 0 retries unless told otherwise.
    return redis.asyncio.Redis.from_url(
        url, decode_responses=True, retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), 5)
    )


async def test_from_url_without_retry_fails_once_after_restart(
    private_redis_server: RedisServerProcess,
) -> None:
    # Documents the library behaviour that product code must account for.
    client = redis.asyncio.Redis.from_url(private_redis_server.url, decode_responses=True)
    try:
        assert await client.set("k", "v")
        private_redis_server.restart()
        with pytest.raises(redis.ConnectionError):
            await client.get("k")  # the pooled connection is stale
        assert await client.get("k") is None  # the next command reconnects
    finally:
        await client.aclose()


async def test_client_with_retry_survives_restart(private_redis_server: RedisServerProcess) -> None:
    client = _retrying_client(private_redis_server.url)
    try:
        assert await client.set("k", "v")
        private_redis_server.restart()
        assert await client.get("k") is None
        assert await client.set("k", "w")
    finally:
        await client.aclose()


async def test_appendonly_keeps_stream_across_kill() -> None:
    with RedisServerProcess(appendonly=True) as server:
        client = _retrying_client(server.url)
        try:
            entry_id = await client.xadd("ivr:events", {"type": "CallAnswered", "uniqueid": "1.1"})
            server.kill()
            server.restart()
            assert await client.xrange("ivr:events") == [
                (entry_id, {"type": "CallAnswered", "uniqueid": "1.1"})
            ]
        finally:
            await client.aclose()


def test_stop_removes_temporary_data_dir() -> None:
    server = RedisServerProcess().start()
    data_dir = server.data_dir
    assert server.ping()
    assert data_dir.is_dir()
    server.stop()
    assert not server.running
    assert not data_dir.exists()


def test_session_server_is_brought_back_after_kill(
    redis_server: RedisServerProcess, request: pytest.FixtureRequest
) -> None:
    # If a test kills the shared server, the next redis_url restarts it.
    port = redis_server.port
    redis_server.kill()
    assert not redis_server.ping()
    url = request.getfixturevalue("redis_url")
    assert redis_server.ping()
    assert url == f"redis://127.0.0.1:{port}/0"


def test_missing_binary_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IVR_REDIS_SERVER", raising=False)
    with pytest.raises(RedisServerNotFoundError, match="not executable"):
        find_redis_server_binary("/nonexistent/redis-server")
    monkeypatch.setenv("IVR_REDIS_SERVER", os.devnull)
    with pytest.raises(RedisServerNotFoundError, match="IVR_REDIS_SERVER"):
        RedisServerProcess().start()
