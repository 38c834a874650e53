"""Supervisors' callback routes: list and cancel, with clear 400/404/409 JSON errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ivr.callbacks.http import add_routes
from ivr.callbacks.service import CallbackService
from ivr.callbacks.store import CallbackStore
from ivr.config import CallbackConfig, QueueConfig
from ivr.domain.events import CallEvent
from ivr.storage.keys import Keys
from ivr.storage.privacy import NumberHasher

T0 = 1_800_000_000.0


class Harness:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.now = T0
        self.events: list[CallEvent] = []
        self.store = CallbackStore(client, Keys("http"))
        self.service = CallbackService(
            self.store,
            hasher=NumberHasher("h" * 32),
            emit=self.events.append,
            clock=lambda: self.now,
            callbacks=CallbackConfig(),
            queues={
                "caf": QueueConfig(name="caf", service="caf"),
                "cpam": QueueConfig(name="cpam", service="cpam"),
            },
        )


async def serve(
    app: web.Application, harness: Harness
) -> AsyncIterator[tuple[TestClient[Any, Any], Harness]]:
    """``app`` with the callback routes added, served to a test client while the test runs."""
    add_routes(app, harness.service)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, harness
    finally:
        await client.close()


@pytest.fixture
async def api(redis_client: redis.asyncio.Redis) -> AsyncIterator[tuple[TestClient[Any, Any], Harness]]:
    harness = Harness(redis_client)
    app = web.Application()
    async for pair in serve(app, harness):
        yield pair


async def test_list_open_callbacks_in_line_order_without_personal_data(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, h = api
    late = await h.service.request(call="u1", number="0611111111", queue="caf", join_ts=T0 - 10, case="77")
    early = await h.service.request(call="u2", number="0622222222", queue="cpam", join_ts=T0 - 90)
    resp = await client.get("/api/callbacks")
    assert resp.status == 200
    body = await resp.json()
    assert body["count"] == 2
    assert [c["id"] for c in body["callbacks"]] == [early.callback_id, late.callback_id]
    first = body["callbacks"][1]
    assert first["number"] == "06••••••11" and "case" not in first and first["status"] == "pending"
    assert "0611111111" not in await resp.text()
    only_caf = await (await client.get("/api/callbacks", params={"queue": "caf", "limit": "5"})).json()
    assert [c["id"] for c in only_caf["callbacks"]] == [late.callback_id]
    closed = await (await client.get("/api/callbacks", params={"status": "closed"})).json()
    assert closed == {"callbacks": [], "count": 0}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"status": "everything"}, "status"),
        ({"queue": "nope"}, "queue"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
async def test_bad_list_parameters(
    api: tuple[TestClient[Any, Any], Harness], params: dict[str, str], parameter: str
) -> None:
    client, _ = api
    resp = await client.get("/api/callbacks", params=params)
    assert resp.status == 400
    body = await resp.json()
    assert (body["code"], body["parameter"]) == ("invalid_parameter", parameter)
    assert parameter in body["error"]


async def test_cancel_by_a_supervisor(api: tuple[TestClient[Any, Any], Harness]) -> None:
    client, h = api
    req = await h.service.request(call="u1", number="0611111111", queue="caf")
    resp = await client.post(f"/api/callbacks/{req.callback_id}/cancel", json={"reason": "duplicate"})
    assert resp.status == 200
    assert await resp.json() == {"id": req.callback_id, "status": "cancelled"}
    cancelled = [e for e in h.events if e.type == "callback.cancelled"]
    assert len(cancelled) == 1 and cancelled[0].data["by"] == "supervisor"
    assert cancelled[0].data["reason"] == "duplicate"
    again = await client.post(f"/api/callbacks/{req.callback_id}/cancel")
    assert again.status == 409
    assert await again.json() == {
        "error": "the callback is already cancelled",
        "code": "closed",
        "status": "cancelled",
    }
    listed = await (await client.get("/api/callbacks", params={"status": "closed"})).json()
    assert [c["id"] for c in listed["callbacks"]] == [req.callback_id]


async def test_a_callback_being_dialled_cannot_be_cancelled(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, h = api
    req = await h.service.request(call="u1", number="0611111111", queue="caf")
    claim = await h.store.claim(req.callback_id, "caf", "x", lease_ms=10_000, now=T0, free_agents=1)
    assert claim.ok
    resp = await client.post(f"/api/callbacks/{req.callback_id}/cancel")
    assert resp.status == 409
    assert (await resp.json())["code"] == "dialing"
    got = await h.store.get(req.callback_id)
    assert got is not None and got.status == "dialing"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/callbacks/cbdoesnotexist/cancel", None, 404, "not_found"),
        ("/api/callbacks/bad%20id/cancel", None, 400, "invalid_id"),
        ("/api/callbacks/pending/cancel", None, 404, "not_found"),
        ("/api/callbacks/{id}/cancel", b"not json", 400, "invalid_body"),
        ("/api/callbacks/{id}/cancel", b"[1, 2]", 400, "invalid_body"),
        ("/api/callbacks/{id}/cancel", b'{"reason": "ok", "extra": 1}', 400, "invalid_body"),
        ("/api/callbacks/{id}/cancel", b'{"reason": "no spaces allowed"}', 400, "invalid_body"),
        ("/api/callbacks/{id}/cancel", b'{"reason": 12}', 400, "invalid_body"),
        ("/api/callbacks/{id}/cancel", b"x" * 5000, 400, "invalid_body"),
    ],
)
async def test_bad_cancel_requests(
    api: tuple[TestClient[Any, Any], Harness], path: str, body: bytes | None, status: int, code: str
) -> None:
    client, h = api
    req = await h.service.request(call="u1", number="0611111111", queue="caf")
    resp = await client.post(path.format(id=req.callback_id), data=body)
    assert resp.status == status
    assert (await resp.json())["code"] == code
    got = await h.store.get(req.callback_id)
    assert got is not None and got.status == "pending"  # nothing lost


# -- the supervisors' token ---------------------------------------------------------------------

TOKEN = "a-supervisor-token-0123456789"


@pytest.fixture
async def guarded(redis_client: redis.asyncio.Redis) -> AsyncIterator[tuple[TestClient[Any, Any], Harness]]:
    """The routes mounted as the controller mounts them: on the app of a token-guarded web side."""
    from ivr.web.app import WebSources, create_app

    harness = Harness(redis_client)
    sources = WebSources(queues=dict, live_kpi=lambda q: {}, health=dict, write_token=TOKEN)
    async for pair in serve(create_app(sources), harness):
        yield pair


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"],
)
async def test_a_cancel_without_the_token_is_refused_and_changes_nothing(
    guarded: tuple[TestClient[Any, Any], Harness], authorization: str | None
) -> None:
    client, h = guarded
    req = await h.service.request(call="u1", number="0611111111", queue="caf")
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await client.post(f"/api/callbacks/{req.callback_id}/cancel", headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token" in (await resp.json())["error"]
    stored = await h.store.get(req.callback_id)
    assert stored is not None and stored.status == "pending"
    assert not [e for e in h.events if e.type == "callback.cancelled"]


async def test_with_the_token_a_supervisor_cancels_and_reads_stay_open(
    guarded: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, h = guarded
    req = await h.service.request(call="u1", number="0611111111", queue="caf")
    listed = await client.get("/api/callbacks")  # no token: reading is open
    assert listed.status == 200 and (await listed.json())["count"] == 1
    resp = await client.post(
        f"/api/callbacks/{req.callback_id}/cancel", headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
