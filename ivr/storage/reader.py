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

Batches: a day holds some 500,000 entries of 10 fields each, so the client's work per
entry is what a day's report costs. Each batch is one plain ``XRANGE``, its reply left
as hiredis parsed it (redis-py would build a dict per entry): an entry whose field names
are those of the writer (:meth:`CallEvent.to_fields`), in that order, is read by
position; any other entry (a foreign writer, a future schema) goes through
:meth:`CallEvent.from_fields`. A server-side script returning only the values would save
the client a little parsing but cost the server more than the client saves (some 5 µs
an entry, while every other client of that Redis waits). The next batch is asked for
before the current one is handed out, so that the server reads it while the caller
works.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Final

import orjson
import redis.asyncio

from ivr.domain.events import EVENT_TYPES, CallEvent, load_data, unchecked_event
from ivr.logs import get_logger
from ivr.storage.keys import DEFAULT_KEYS, Keys

__all__ = ["DEFAULT_MARGIN_S", "EventLogReader", "read_range", "stream_id_for"]

log = get_logger(__name__)

DEFAULT_MARGIN_S: Final = 300.0

#: The field names of an entry written by the writer, in their order (``CallEvent.to_fields``).
_NAMES: Final = ["v", "id", "type", "call", "ts", "service", "queue", "agent", "source", "data"]
_NAMES_BYTES: Final = [name.encode() for name in _NAMES]

#: Loop turns that redis-py takes from a command's call to its request being written (a
#: connection from the pool, then the write): 3 with redis-py 8, one more to spare.
_SEND_TURNS: Final = 4

#: One ``XRANGE`` reply as hiredis parses it: ``[[id, [name, value, ...]], ...]``.
_Reply = list[Any]


def stream_id_for(ts: float) -> int:
    """The millisecond part of stream ids at time ``ts`` (epoch seconds), never negative."""
    if math.isnan(ts):
        raise ValueError("time is NaN")
    return max(0, math.floor(ts * 1000))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _as_is(response: Any, **options: Any) -> Any:
    """Response callback that keeps a reply as parsed (see the module docstring)."""
    return response


class _Known(dict[Any, str]):
    """The text of the few values that repeat: event types, services, queues, agents, sources.

    Looked up rather than decoded again (half a million events share a few hundred), and
    one string each instead of one per event. Bounded, in case a field is less repetitive.
    """

    def __missing__(self, raw: str | bytes) -> str:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if len(self) < 4096:
            self[raw] = text
        return text


class _Types(_Known):
    """The text of event types, each checked once (:class:`CallEvent` rejects unknown ones)."""

    def __missing__(self, raw: str | bytes) -> str:
        text = raw.decode() if isinstance(raw, bytes) else raw
        if text not in EVENT_TYPES:
            raise ValueError(f"unknown call event type {text!r}")
        self[raw] = text
        return text


def _retrieve(future: asyncio.Future[_Reply]) -> None:
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
        self._last_id: str | bytes | None = None
        self._known = _Known()
        self._types = _Types()
        # The caller's connections, through a client object of our own whose XRANGE replies
        # stay as parsed: the caller's client keeps its callbacks (it does not own the pool).
        self._raw = redis.asyncio.Redis(connection_pool=client.connection_pool)
        self._raw.set_response_callback("XRANGE", _as_is)

    @property
    def last_id(self) -> str | None:
        """Id of the last entry read, for resuming (None before the first)."""
        return None if self._last_id is None else _text(self._last_id)

    async def _batch(self, start: str, end: str, count: int) -> _Reply:
        """Up to ``count`` entries with ids in ``[start, end]``."""
        reply: _Reply | None = await self._raw.xrange(self.stream_key, min=start, max=end, count=count)
        return reply or []

    def _skip(self, entry_id: str | bytes, exc: Exception) -> None:
        self.skipped += 1
        log.warning("event_log.entry_skipped", stream=self.stream_key, id=_text(entry_id), error=repr(exc))

    def _events(self, entries: Sequence[Any], lo: float, hi: float) -> list[CallEvent]:
        """The events of one batch with ``lo <= ts < hi``; entries that are no event are skipped."""
        out: list[CallEvent] = []
        if not entries:
            return out
        append = out.append
        # str or bytes throughout, depending on the client's decode_responses
        if isinstance(entries[0][0], bytes):
            names: list[Any] = _NAMES_BYTES
            text: Callable[[Any], str] = bytes.decode
        else:
            names, text = _NAMES, str
        from_fields = CallEvent.from_fields
        known, types = self._known, self._types
        build, loads, decode_error = unchecked_event, orjson.loads, orjson.JSONDecodeError
        for entry_id, fields in entries:
            if fields is None:  # an entry deleted while we read
                continue
            try:
                if fields[::2] == names:  # the writer's fields, read by position
                    (_, v, _, id_, _, type_, _, call, _, ts) = fields[:10]
                    (_, service, _, queue, _, agent, _, source, _, data) = fields[10:]
                    when = float(ts)  # float() and int() read ASCII bytes as they are
                    if not lo <= when < hi:
                        continue
                    try:
                        payload = loads(data)
                    except decode_error:  # empty, or what only json reads (see load_data)
                        payload = load_data(data)
                    append(
                        build(
                            types[type_],
                            text(call),
                            when,
                            text(id_),
                            known[service],
                            known[queue],
                            known[agent],
                            known[source],
                            payload,
                            int(v),
                        )
                    )
                else:
                    event = from_fields(dict(zip(fields[::2], fields[1::2], strict=True)))
                    if lo <= event.ts < hi:
                        append(event)
            except (KeyError, ValueError, TypeError) as exc:
                self._skip(entry_id, exc)
        return out

    async def read_batches(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        batch: int = 10_000,
    ) -> AsyncGenerator[list[CallEvent], None]:
        """The events of :meth:`read_range`, a list per batch read (none empty).

        For bulk readers such as the KPI report: the same events, without a step of the
        async iterator for each.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, not {batch}")
        if since is not None and until is not None and until < since:
            raise ValueError(f"empty range: until ({until}) is before since ({since})")
        start = "-" if since is None else str(stream_id_for(since - self.margin_s))
        end = "+" if until is None else str(stream_id_for(until + self.margin_s))
        lo = -math.inf if since is None else since
        hi = math.inf if until is None else until
        pending: asyncio.Future[_Reply] | None = asyncio.ensure_future(self._batch(start, end, batch))
        try:
            while pending is not None:
                entries = await pending
                pending = None
                if not entries:
                    break
                self._last_id = entries[-1][0]
                if len(entries) == batch:  # ask for the next one now (module docstring)
                    pending = asyncio.ensure_future(self._batch("(" + _text(self._last_id), end, batch))
                    # Let the task send its request before the caller works on this batch: a
                    # task runs only when the loop gets control, which the caller's fold of
                    # the batch (no await) would otherwise put off until the next batch.
                    for _ in range(_SEND_TURNS):
                        await asyncio.sleep(0)
                events = self._events(entries, lo, hi)
                if events:
                    yield events
        finally:
            if pending is not None:  # the caller stopped early, or a batch failed
                pending.cancel()
                pending.add_done_callback(_retrieve)

    async def read_range(
        self,
        since: float | None = None,
        until: float | None = None,
        *,
        batch: int = 10_000,
    ) -> AsyncIterator[CallEvent]:
        """Events with ``since <= ts < until`` (either bound may be None: open), stream order."""
        batches = self.read_batches(since, until, batch=batch)
        try:
            async for events in batches:
                for event in events:
                    yield event
        finally:
            await batches.aclose()


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
