"""Following the Redis event stream for live pages.

``XREAD BLOCK`` from the last id a browser saw: Server-Sent Events carry the stream id as
their id, so a browser that reconnects sends ``Last-Event-ID`` and misses nothing that is
still in the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

Tail = Callable[[str], AsyncIterator[tuple[str, Mapping[str, str]]]]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redis_tail(client: Any, stream: str, *, block_ms: int = 5000, count: int = 500) -> Tail:
    """A tail function for :class:`ivr.web.app.WebSources` reading ``stream``.

    ``client`` is a ``redis.asyncio.Redis``; replies may be bytes or str depending on
    its ``decode_responses``.
    """

    async def tail(last_id: str) -> AsyncIterator[tuple[str, Mapping[str, str]]]:
        cursor = last_id or "$"
        while True:
            reply: list[tuple[Any, list[tuple[Any, dict[Any, Any]]]]] = await client.xread(
                {stream: cursor}, block=block_ms, count=count
            )
            for _key, entries in reply or ():
                for entry_id, fields in entries:
                    cursor = _text(entry_id)
                    yield cursor, {_text(k): _text(v) for k, v in fields.items()}

    return tail
