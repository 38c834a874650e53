"""Read the call event stream by Asterisk-time range, in batches.

Historical KPIs (``ivr report``) and exports read days of events; they must neither load
the whole stream at once nor miss an event near the edges of the range.

Stream ids are milliseconds, so a time range maps to an ``XRANGE`` between two ids.
The ids the writer assigns are the event's Asterisk time, raised when an event comes
after a later one (it then gets the stream's last id) and capped at the Redis clock
plus the writer's ``max_future_s`` (see ``ivr.storage.writer``). An entry's id can
therefore differ from its ``ts``: later than it for an event stored out of order (two
controllers on one stream, one draining an old spool), earlier than it only for an
Asterisk clock running ahead of Redis by more than ``max_future_s``. Hence:

* the ids read span ``[since - margin_s, until + margin_s]``;
* the events handed out are filtered on ``since <= ts < until`` (half-open, so
  consecutive ranges never count an event twice);
* they come in stream order (the order they were submitted), not sorted by ``ts``.

An event stored later than ``margin_s`` after a newer one would be missed by a range
read (never by a full read); raise ``margin_s`` if controllers may spool for longer
while another one keeps writing.

An entry that does not decode as a :class:`CallEvent` (written by a foreign tool, or by
a future schema) is skipped with a warning naming its id, and counted in ``skipped``;
the rest of the range is still read.

Batches: redis-py's pure-Python reply parser costs about 80 µs per stream entry (some
23 RESP elements each): 40 s for a day of 500,000 events. Unless ``hiredis`` (its C
parser) is installed, each batch is therefore one ``XRANGE`` run by a read-only server
script that returns the reply as one JSON string (``cjson``), which the C ``json`` module
parses in one go: ten times faster. A batch that is not valid JSON (bytes that are not
UTF-8, from a foreign writer) is read again with a plain ``XRANGE``, and a server that
refuses the script (Redis < 7, an ACL without ``EVALSHA``) gets plain ``XRANGE`` from then
on: same entries, slower. With ``hiredis``, plain ``XRANGE`` is as fast for the client
and cheaper for the server. The next batch is asked for before the current one is handed
out, so that the server reads it while the caller works.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Mapping
from typing import Final, cast

import redis.asyncio
from redis.exceptions import ResponseError
from redis.utils import HIREDIS_AVAILABLE

from ivr.domain.events import CallEvent
from ivr.logs import get_logger
from ivr.storage.keys import DEFAULT_KEYS, Keys

__all__ = ["DEFAULT_MARGIN_S", "EventLogReader", "read_range", "stream_id_for"]

log = get_logger(__name__)

DEFAULT_MARGIN_S: Final = 300.0

#: XRANGE, its reply encoded as one JSON string (see the module docstring). ``#!lua
#: flags=no-writes`` lets replicas run it.
_XRANGE_JSON_LUA: Final = """#!lua flags=no-writes
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
if #entries == 0 then return '[]' end
return cjson.encode(entries)
"""

_Fields = Mapping[str, str] | Mapping[bytes, bytes]
#: (entry id, fields); fields None for an entry deleted while we read.
_Entry = tuple[str, _Fields | None]


def stream_id_for(ts: float) -> int:
    """The millisecond part of stream ids at time ``ts`` (epoch seconds), never negative."""
    if math.isnan(ts):
        raise ValueError("time is NaN")
    return max(0, math.floor(ts * 1000))


def _text(value: str | bytes | None) -> str:
    if value is None:
        raise ValueError("stream entry without an id")
    return value.decode() if isinstance(value, bytes) else value


def _retrieve(future: asyncio.Future[list[_Entry]]) -> None:
    """Take the outcome of an abandoned read, so that asyncio does not report it as lost."""
    if not future.cancelled():
        future.exception()


class EventLogReader:
    """Range reads over the event stream with a client the caller owns."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        stream_key: str | None = None,
        keys: Keys = DEFAULT_KEYS,
        margin_s: float = DEFAULT_MARGIN_S,
    ) -> None:
        if margin_s < 0:
            raise ValueError(f"margin_s must be >= 0, not {margin_s}")
        self.client = client
        self.stream_key = stream_key if stream_key is not None else keys.events
        self.margin_s = margin_s
        self.skipped = 0
        self.last_id: str | None = None  # id of the last entry read, for resuming
        self._script = client.register_script(_XRANGE_JSON_LUA)
        self._use_script = not HIREDIS_AVAILABLE

    async def _batch(self, start: str, end: str, count: int) -> list[_Entry]:
        """Up to ``count`` entries with ids in ``[start, end]``."""
        if self._use_script:
            try:
                raw = await self._script(keys=[self.stream_key], args=[start, end, count])
                return [(i, dict(zip(kv[::2], kv[1::2], strict=True))) for i, kv in json.loads(raw)]
            except ValueError:  # not UTF-8 (or not JSON): this batch the plain way
                pass
            except ResponseError as exc:  # (a key of another type fails the plain way too, below)
                self._use_script = False
                log.warning("event_log.read_script_refused", stream=self.stream_key, error=str(exc))
        entries = await self.client.xrange(self.stream_key, min=start, max=end, count=count)
        if not entries:
            return []
        return [(_text(raw_id), cast("_Fields | None", fields)) for raw_id, fields in entries]

    async def read_range(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        batch: int = 10_000,
    ) -> AsyncIterator[CallEvent]:
        """Events with ``since <= ts < until`` (either bound may be None: open), stream order."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, not {batch}")
        if since is not None and until is not None and until < since:
            raise ValueError(f"empty range: until ({until}) is before since ({since})")
        start = "-" if since is None else str(stream_id_for(since - self.margin_s))
        end = "+" if until is None else str(stream_id_for(until + self.margin_s))
        pending: asyncio.Future[list[_Entry]] | None = asyncio.ensure_future(self._batch(start, end, batch))
        from_fields = CallEvent.from_fields
        try:
            while pending is not None:
                entries = await pending
                pending = None
                if len(entries) == batch:  # ask for the next one now (module docstring)
                    pending = asyncio.ensure_future(self._batch("(" + entries[-1][0], end, batch))
                for entry_id, fields in entries:
                    if fields is None:  # an entry deleted while we read
                        continue
                    self.last_id = entry_id
                    try:
                        # str or bytes throughout, depending on the client's decode_responses
                        event = from_fields(fields)
                    except (KeyError, ValueError, TypeError) as exc:
                        self.skipped += 1
                        log.warning(
                            "event_log.entry_skipped", stream=self.stream_key, id=entry_id, error=repr(exc)
                        )
                        continue
                    if (since is None or event.ts >= since) and (until is None or event.ts < until):
                        yield event
        finally:
            if pending is not None:  # the caller stopped early, or a batch failed
                pending.cancel()
                pending.add_done_callback(_retrieve)


async def read_range(
    client: redis.asyncio.Redis,
    since: float | None = None,
    until: float | None = None,
    *,
    batch: int = 10_000,
    stream_key: str | None = None,
    keys: Keys = DEFAULT_KEYS,
    margin_s: float = DEFAULT_MARGIN_S,
) -> AsyncIterator[CallEvent]:
    """Shortcut for ``EventLogReader(client, ...).read_range(since, until, batch=batch)``."""
    reader = EventLogReader(client, stream_key=stream_key, keys=keys, margin_s=margin_s)
    async for event in reader.read_range(since, until, batch=batch):
        yield event
