"""Supervisors' HTTP routes for callbacks (aiohttp).

  ``GET  /api/callbacks``              open requests by place in line (``status=open``, the
                                       default), the recently closed (``closed``) or both
                                       (``all``); ``queue=NAME`` filters, ``limit`` 1-1000
  ``POST /api/callbacks/{id}/cancel``  cancel a pending request; optional JSON body
                                       ``{"reason": "slug"}``

Numbers are masked (``06••••••78``) and case numbers left out: a supervisor's screen is
not where personal data should be copied from. Errors are JSON with a stable ``code``:
400 (``invalid_parameter``, ``invalid_id``, ``invalid_body``), 404 (``not_found``), 409
(``dialing``: the call is being placed, it cannot be withdrawn; ``closed``: it is already
completed, failed, expired or cancelled).

:func:`add_routes` mounts them on the controller's application; the service is injected.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from aiohttp import web

from ivr.callbacks.service import CallbackService

__all__ = ["CALLBACKS_KEY", "add_routes"]

CALLBACKS_KEY: Final = web.AppKey("callbacks", CallbackService)

_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REASON_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_STATUSES: Final = ("open", "closed", "all")
_MAX_LIMIT: Final = 1000
_MAX_BODY: Final = 4096


def _error(http_status: int, code: str, message: str, /, **extra: Any) -> web.Response:
    return web.json_response({"error": message, "code": code, **extra}, status=http_status)


async def list_callbacks(request: web.Request) -> web.Response:
    service = request.app[CALLBACKS_KEY]
    status = request.query.get("status", "open")
    if status not in _STATUSES:
        return _error(
            400,
            "invalid_parameter",
            f"status: {status!r} is not one of {', '.join(_STATUSES)}",
            parameter="status",
        )
    queue = request.query.get("queue") or None
    if queue is not None and queue not in service.queues:
        return _error(400, "invalid_parameter", f"queue: unknown queue {queue!r}", parameter="queue")
    raw_limit = request.query.get("limit", "200")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = -1
    if not 1 <= limit <= _MAX_LIMIT:
        return _error(
            400,
            "invalid_parameter",
            f"limit: {raw_limit!r} is not an integer from 1 to {_MAX_LIMIT}",
            parameter="limit",
        )
    requests = await service.list_requests(status, queue=queue, limit=limit)
    items = [r.public() for r in requests]
    return web.json_response({"callbacks": items, "count": len(items)})


async def cancel_callback(request: web.Request) -> web.Response:
    service = request.app[CALLBACKS_KEY]
    callback_id = request.match_info["id"]
    if not _ID_RE.fullmatch(callback_id):
        return _error(400, "invalid_id", f"{callback_id!r} is not a callback id")
    reason = ""
    if request.can_read_body:
        if request.content_length is not None and request.content_length > _MAX_BODY:
            return _error(400, "invalid_body", f"body larger than {_MAX_BODY} bytes")
        raw = await request.content.read(_MAX_BODY + 1)
        if len(raw) > _MAX_BODY:
            return _error(400, "invalid_body", f"body larger than {_MAX_BODY} bytes")
        if raw.strip():
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return _error(400, "invalid_body", "body is not JSON")
            if not isinstance(body, dict) or set(body) - {"reason"}:
                return _error(400, "invalid_body", 'expected a JSON object {"reason": "..."}')
            value = body.get("reason", "")
            if not isinstance(value, str) or (value and not _REASON_RE.fullmatch(value)):
                return _error(400, "invalid_body", "reason: a short slug (letters, digits, '_.:-'), up to 64")
            reason = value
    result = await service.cancel(callback_id, by="supervisor", reason=reason)
    if result.outcome == "cancelled":
        return web.json_response({"id": callback_id, "status": "cancelled"})
    if result.outcome == "missing":
        return _error(404, "not_found", f"no callback {callback_id!r}")
    if result.outcome == "dialing":
        return _error(
            409, "dialing", "the callback is being dialled and cannot be withdrawn", status="dialing"
        )
    return _error(409, "closed", f"the callback is already {result.status}", status=result.status)


def add_routes(app: web.Application, service: CallbackService) -> None:
    """Mount the callback routes on ``app`` (before it starts)."""
    app[CALLBACKS_KEY] = service
    app.router.add_get("/api/callbacks", list_callbacks)
    app.router.add_post("/api/callbacks/{id}/cancel", cancel_callback)
