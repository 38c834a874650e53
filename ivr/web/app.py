"""The supervisor's HTTP side: dashboard, JSON API, live updates and Prometheus metrics.

The web layer owns no state. Everything it shows comes from a :class:`WebSources` bundle
that the controller builds and injects (live queue state and live KPIs from memory,
historical KPIs and the event tail from Redis), so the same app serves a real controller,
the demo and the tests, and it can never drift from what the controller computes.

Routes
  ``GET /``                  the dashboard (static page that listens to ``/api/live``)
  ``GET /healthz``           200 when the controller is connected to Asterisk and Redis, else 503
  ``GET /api/queues``        live queues, waiting callers and members
  ``GET /api/kpi``           KPIs for ``since``/``until`` (ISO 8601 or epoch seconds) and ``queue``;
                             without a range, the live counters
  ``GET /api/live``          Server-Sent Events: a ``snapshot`` now and on every change, and every
                             stored call event as ``call`` with the Redis stream id as SSE id
                             (``Last-Event-ID`` resumes after a reconnect)
  ``GET /metrics``           Prometheus text format
Bad requests get a 400 with a JSON body that says which parameter is wrong and why.

With a token configured (``[web] token`` / ``token_env``), every request that changes
something (any method but GET and HEAD, e.g. ``POST /api/callbacks/{id}/cancel``) must
carry ``Authorization: Bearer <token>``, else it gets a 401; reads stay open.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger(__name__)

JSON = dict[str, Any]
#: (since, until, queue) -> KPI report computed from the stored events.
HistoryFn = Callable[[float | None, float | None, str | None], Awaitable[JSON]]
#: last stream id seen ("$" for only new ones) -> (stream id, event fields) as they are stored.
TailFn = Callable[[str], AsyncIterator[tuple[str, Mapping[str, str]]]]

SOURCES_KEY: web.AppKey[WebSources] = web.AppKey("sources")


@dataclass(slots=True)
class WebSources:
    """What the web layer reads, injected by whoever runs it."""

    queues: Callable[[], JSON]
    live_kpi: Callable[[str | None], JSON]
    health: Callable[[], JSON]
    history: HistoryFn | None = None
    tail: TailFn | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    snapshot_interval: float = 1.0
    #: Bearer token that changes (any method but GET/HEAD) must carry; None: no check.
    write_token: str | None = None


class BadRequest(ValueError):
    """A request parameter we cannot use; becomes a 400 with this message."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter
        self.problem = problem


def parse_time(parameter: str, raw: str | None) -> float | None:
    """An ISO 8601 date/time (naive = UTC) or epoch seconds, as epoch seconds."""
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(parameter, f"{raw!r} is neither ISO 8601 nor epoch seconds") from None
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """JSON errors everywhere, so API clients never have to parse an HTML error page."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc), parameter=exc.parameter)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("http handler failed", path=request.path)
        return _error(500, "internal error")


def _bearer_check(token: str) -> Middleware:
    """A middleware that refuses changes without the supervisors' token."""
    expected = token.encode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method in ("GET", "HEAD"):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            response = _error(401, "this change needs the supervisors' token (Authorization: Bearer ...)")
            response.headers["WWW-Authenticate"] = 'Bearer realm="decroche"'
            return response
        return await handler(request)

    return check


def _sources(request: web.Request) -> WebSources:
    return request.app[SOURCES_KEY]


async def healthz(request: web.Request) -> web.Response:
    report = _sources(request).health()
    ok = bool(report.get("ok", False))
    return web.json_response(report, status=200 if ok else 503)


async def api_queues(request: web.Request) -> web.Response:
    return web.json_response(_sources(request).queues())


async def api_kpi(request: web.Request) -> web.Response:
    allowed = {"since", "until", "queue"}
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise BadRequest(unknown[0], f"unknown parameter (allowed: {', '.join(sorted(allowed))})")
    since = parse_time("since", request.query.get("since"))
    until = parse_time("until", request.query.get("until"))
    queue = request.query.get("queue") or None
    if since is not None and until is not None and until <= since:
        raise BadRequest("until", "must be after since")
    sources = _sources(request)
    if since is None and until is None:
        return web.json_response(sources.live_kpi(queue))
    if sources.history is None:
        raise web.HTTPServiceUnavailable(reason="historical KPIs need the Redis event log")
    return web.json_response(await sources.history(since, until, queue))


def _sse(event: str, data: Any, event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in json.dumps(data, separators=(",", ":")).split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


async def api_live(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: snapshots on change plus the tail of the call event stream."""
    sources = _sources(request)
    last_id = request.headers.get("Last-Event-ID") or request.query.get("after") or "$"
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

    async def snapshots() -> None:
        previous = None
        while True:
            current = {"queues": sources.queues(), "kpi": sources.live_kpi(None)}
            encoded = json.dumps(current, sort_keys=True)
            if encoded != previous:
                previous = encoded
                await queue.put(_sse("snapshot", current))
            await asyncio.sleep(sources.snapshot_interval)

    async def tail() -> None:
        assert sources.tail is not None
        async for stream_id, fields in sources.tail(last_id):
            try:
                queue.put_nowait(_sse("call", dict(fields), stream_id))
            except asyncio.QueueFull:
                # A browser that cannot keep up gets a fresh snapshot instead of a backlog.
                log.warning("sse client too slow, events skipped", path=request.path)

    tasks = [asyncio.create_task(snapshots())]
    if sources.tail is not None:
        tasks.append(asyncio.create_task(tail()))
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(queue.get(), timeout=15)
            except TimeoutError:
                chunk = b": keep-alive\n\n"
            await response.write(chunk)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return response


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(_sources(request).registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.Response:
    page = resources.files("ivr.web").joinpath("static/index.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html", charset="utf-8")


def create_app(sources: WebSources) -> web.Application:
    """Build the aiohttp application around injected sources."""
    middlewares: list[Middleware] = [_errors]
    if sources.write_token:
        middlewares.append(_bearer_check(sources.write_token))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[SOURCES_KEY] = sources
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/queues", api_queues)
    app.router.add_get("/api/kpi", api_kpi)
    app.router.add_get("/api/live", api_live)
    app.router.add_get("/metrics", metrics)
    return app
