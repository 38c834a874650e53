"""The HTTP layer: JSON API, errors for bad requests, SSE with Redis tail, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from ivr.web.app import WebSources, create_app, parse_time
from ivr.web.tail import redis_tail


class Live:
    """Live sources with real, changing state (what a controller would hand over)."""

    def __init__(self) -> None:
        self.waiting: list[str] = []
        self.connected = True
        self.history_calls: list[tuple[float | None, float | None, str | None]] = []

    def queues(self) -> dict[str, Any]:
        return {"queues": {"caf": {"callers": [{"call": c} for c in self.waiting]}}}

    def kpi(self, queue: str | None) -> dict[str, Any]:
        return {"overall": {"asked_for_agent": len(self.waiting)}, "queue": queue}

    def health(self) -> dict[str, Any]:
        return {"ok": self.connected, "ami": self.connected}

    async def history(self, since: float | None, until: float | None, queue: str | None) -> dict[str, Any]:
        self.history_calls.append((since, until, queue))
        return {"overall": {"since": since, "until": until}, "queue": queue}


@pytest.fixture
async def live_client(
    redis_client: Any,
) -> AsyncIterator[tuple[TestClient[Any, Any], Live, CollectorRegistry]]:
    live = Live()
    registry = CollectorRegistry()
    sources = WebSources(
        queues=live.queues,
        live_kpi=live.kpi,
        health=live.health,
        history=live.history,
        tail=redis_tail(redis_client, "test:events", block_ms=100),
        registry=registry,
        snapshot_interval=0.05,
    )
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(sources)))
    await client.start_server()
    try:
        yield client, live, registry
    finally:
        await client.close()


async def test_health_follows_the_controller(live_client: Any) -> None:
    client, live, _ = live_client
    resp = await client.get("/healthz")
    assert resp.status == 200
    live.connected = False
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["ami"] is False


async def test_kpi_live_and_history(live_client: Any) -> None:
    client, live, _ = live_client
    live.waiting = ["a", "b"]
    body = await (await client.get("/api/kpi")).json()
    assert body["overall"]["asked_for_agent"] == 2
    resp = await client.get(
        "/api/kpi", params={"since": "2026-11-27T08:00:00", "until": "1795770000", "queue": "caf"}
    )
    assert resp.status == 200
    assert live.history_calls == [(1795766400.0, 1795770000.0, "caf")]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45"}, "until"),
        ({"since": "200", "until": "100"}, "until"),
        ({"sinse": "1"}, "sinse"),
    ],
)
async def test_bad_kpi_requests_get_a_clear_400(
    live_client: Any, params: dict[str, str], parameter: str
) -> None:
    client, live, _ = live_client
    resp = await client.get("/api/kpi", params=params)
    assert resp.status == 400
    body = await resp.json()
    assert body["parameter"] == parameter
    assert parameter in body["error"]
    assert live.history_calls == []


async def test_unknown_route_and_method_are_json_errors(live_client: Any) -> None:
    client, _, _ = live_client
    resp = await client.get("/nope")
    assert resp.status == 404
    assert "error" in await resp.json()
    resp = await client.post("/api/kpi", data=b"x")
    assert resp.status == 405
    assert "error" in await resp.json()


async def test_metrics_exposes_the_registry(live_client: Any) -> None:
    client, _, registry = live_client
    counter = Counter("ivr_test_events", "events seen", registry=registry)
    counter.inc(3)
    text = await (await client.get("/metrics")).text()
    assert "ivr_test_events_total 3.0" in text


async def test_dashboard_page_is_served(live_client: Any) -> None:
    client, _, _ = live_client
    resp = await client.get("/")
    assert resp.status == 200
    assert "EventSource" in await resp.text()


async def _read_sse(resp: Any, wanted: int, limit_s: float = 5.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    async def reader() -> None:
        nonlocal current
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if current:
                    events.append(current)
                    current = {}
                    if len(events) >= wanted:
                        return
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            current[key] = value

    await asyncio.wait_for(reader(), limit_s)
    return events


async def test_sse_sends_snapshots_on_change_and_stream_events(live_client: Any, redis_client: Any) -> None:
    client, live, _ = live_client
    resp = await client.get("/api/live")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    first = await _read_sse(resp, 1)
    assert first[0]["event"] == "snapshot"
    assert json.loads(first[0]["data"])["queues"]["queues"]["caf"]["callers"] == []
    live.waiting = ["c1"]
    await asyncio.sleep(0.1)
    entry_id = await redis_client.xadd("test:events", {"type": "queue.join", "call": "c1", "ts": "1.0"})
    got = await _read_sse(resp, 2)
    kinds = {e["event"] for e in got}
    assert kinds == {"snapshot", "call"}
    call = next(e for e in got if e["event"] == "call")
    assert call["id"] == entry_id
    assert json.loads(call["data"])["call"] == "c1"
    resp.close()


async def test_sse_resumes_after_last_event_id(live_client: Any, redis_client: Any) -> None:
    client, _, _ = live_client
    first = await redis_client.xadd("test:events", {"type": "call.start", "call": "a", "ts": "1"})
    second = await redis_client.xadd("test:events", {"type": "call.start", "call": "b", "ts": "2"})
    resp = await client.get("/api/live", headers={"Last-Event-ID": first})
    got = await _read_sse(resp, 2)
    calls = [e for e in got if e["event"] == "call"]
    assert [c["id"] for c in calls] == [second]
    resp.close()


def test_parse_time_forms() -> None:
    assert parse_time("since", None) is None
    assert parse_time("since", "12.5") == 12.5
    assert parse_time("since", "1970-01-01T00:01:00+00:00") == 60.0
