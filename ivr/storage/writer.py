"""The event log writer: call events from the controller into one Redis stream.

Why it is shaped like this:

* **The AMI reader never waits on Redis.** :meth:`EventLogWriter.submit` is a plain
  function: it puts the event in a bounded in-memory queue and returns. A background
  task takes batches (up to ``batch_size`` events, or whatever came within
  ``flush_interval``) and stores each batch with one ``EVALSHA`` — one round trip.
* **Exactly once.** The script stores an event only if ``SET ivr:seen:{id} 1 NX EX
  <seen_ttl_s>`` succeeds, atomically per event (a Lua script runs alone on the server).
  Whatever is sent twice — a batch retried after a timeout whose reply was lost, a
  spool re-sent after a crash mid-drain, the same AMI event seen by two controllers —
  is stored once, as long as the copies arrive within ``seen_ttl_s`` of each other.
* **Nothing lost when Redis is away.** A failed write (connection refused or reset,
  timeout, ``LOADING``, any error reply) sends the batch and the memory queue to the
  local :class:`~ivr.storage.spool.Spool`; new events keep going there (every
  ``flush_interval``) while a reconnect loop probes Redis with capped exponential
  backoff and jitter. Once Redis answers, the spool is drained **before** any newer
  event, then emptied. When the memory queue is over ``max_pending`` (Redis slow, not
  down) ``submit`` writes to the spool itself rather than dropping anything.
* **Order.** Events are stored in the order they were submitted. The invariant that
  makes it so: everything in Redis is older than everything in the spool, which is
  older than everything in memory. (When ``submit`` has to spill while a batch is in
  flight, it spools that batch too; if the batch did get stored, the spooled copy is a
  duplicate that the script drops.)
* **Stream ids follow Asterisk time.** Each entry is added as ``XADD <ms>-*`` where
  ``<ms>`` is the event's ``ts`` in milliseconds, raised to the stream's last id when an
  event comes late (so ids only grow and the order is the submission order) and
  lowered to the server clock + ``max_future_s`` (so one absurd timestamp cannot push
  every later id into the future). Redis still assigns the sequence part. Compared with
  plain ``*`` (arrival time), a spool drained an hour later keeps ids an hour earlier,
  where time-range reads and age-based trimming (``XTRIM MINID``) look for them.
  Needs Redis ≥ 7.0 (``<ms>-*``).
* **Per-call summary.** The same script keeps ``ivr:call:{call}`` (last type and time,
  service, queue, agent, outcome and milestone times) with a TTL, for call look-ups
  that should not scan the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from ivr.domain.events import CallEvent
from ivr.logs import get_logger
from ivr.storage.keys import DEFAULT_KEYS, Keys
from ivr.storage.privacy import NumberHasher, scrub_numbers
from ivr.storage.spool import Spool, SpoolError

__all__ = ["EventLogWriter", "WriterClosedError", "WriterStats", "call_summary", "make_client"]

log = get_logger(__name__)

RedisFactory = Callable[[], "redis.asyncio.Redis"]

# KEYS[1] = stream; for event i: KEYS[2i] = its seen key, KEYS[2i+1] = its call summary key.
# ARGV[1] = seen TTL (s), ARGV[2] = summary TTL (s), ARGV[3] = allowed future (ms), then one
# JSON record per event: [ts_ms, ts, [stream field, value, ...], [summary field, value, ...]].
# One argument per event rather than ~30: encoding arguments dominated the client's time.
# Returns the number of events stored (the others were already seen).
_STORE_LUA: Final = """
local stream = KEYS[1]
local seen_ttl = ARGV[1]
local call_ttl = ARGV[2]
local now = redis.call('TIME')
local ceiling = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
local last_ms = 0
if redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last_ms = tonumber(string.match(info[i + 1], '^(%d+)'))
      break
    end
  end
end
local stored = 0
for i = 4, #ARGV do
  local k = 2 * (i - 3)
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', seen_ttl) then
    local rec = cjson.decode(ARGV[i])
    local ms = rec[1]
    if ms > ceiling then ms = ceiling end
    if ms < last_ms then ms = last_ms end
    local id = redis.call('XADD', stream, string.format('%.0f-*', ms), unpack(rec[3]))
    last_ms = tonumber(string.match(id, '^(%d+)'))
    local summary = rec[4]
    if #summary > 0 then
      local call_key = KEYS[k + 1]
      redis.call('HSET', call_key, unpack(summary))
      redis.call('HSETNX', call_key, 'first_ts', rec[2])
      redis.call('EXPIRE', call_key, call_ttl)
    end
    stored = stored + 1
  end
end
return stored
"""

#: Outcome recorded in the call summary by the event that decides it (the last one wins).
_OUTCOME_BY_TYPE: Final = {
    "agent.connect": "answered",
    "queue.abandon": "abandoned",
    "queue.timeout": "timeout",
    "queue.exit_key": "exit_key",
    "queue.join_empty": "join_empty",
    "callback.requested": "callback_requested",
    "callback.connected": "callback_connected",
    "callback.failed": "callback_failed",
    "callback.expired": "callback_expired",
    "callback.cancelled": "callback_cancelled",
    "appointment.booked": "appointment_booked",
}
#: Milestone times kept in the call summary.
_TIME_FIELD_BY_TYPE: Final = {
    "call.start": "start_ts",
    "agent.requested": "requested_ts",
    "queue.join": "join_ts",
    "agent.connect": "connect_ts",
    "agent.complete": "complete_ts",
    "call.end": "end_ts",
}


def call_summary(event: CallEvent) -> dict[str, str]:
    """Fields this event sets in ``ivr:call:{call}``; empty for events of no call (members)."""
    if not event.call:
        return {}
    ts = repr(event.ts)
    out = {"last_type": event.type, "last_ts": ts}
    if event.service:
        out["service"] = event.service
    if event.queue:
        out["queue"] = event.queue
    if event.agent:
        out["agent"] = event.agent
    milestone = _TIME_FIELD_BY_TYPE.get(event.type)
    if milestone:
        out[milestone] = ts
    outcome = _OUTCOME_BY_TYPE.get(event.type)
    if outcome:
        out["outcome"] = outcome
    return out


def make_client(url: str, *, socket_timeout: float = 5.0) -> redis.asyncio.Redis:
    """A client for the writer: explicit timeouts and a single quick retry.

    ``Redis.from_url`` (redis-py 8) retries nothing by default, so the first command on
    a pooled connection that the server closed (a restart) fails; one retry reconnects.
    The writer's own loop, not the client, waits out a longer outage. A retried store is
    safe: the script is idempotent.
    """
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 2.0),
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
    )


class WriterClosedError(RuntimeError):
    """``submit`` after ``close``: the event would have nowhere to go."""


@dataclasses.dataclass(slots=True)
class WriterStats:
    """Counters for /metrics and logs (monotonic, except the depths and ``redis_up``)."""

    events_submitted: int = 0
    events_written: int = 0  # stored in Redis for the first time, as acknowledged by Redis
    events_duplicate: int = 0  # sent but already stored: re-sends absorbed (e.g. a reply lost)
    events_spooled: int = 0  # appended to the spool file
    events_drained: int = 0  # sent from the spool
    events_rejected: int = 0  # undecodable spool lines moved to <spool>.rejected
    spool_depth: int = 0
    queue_depth: int = 0
    batches: int = 0  # successful store round trips
    write_errors: int = 0
    spool_errors: int = 0
    redis_up: bool = True
    last_error: str | None = None
    last_error_at: float | None = None  # epoch seconds

    def as_dict(self) -> dict[str, int | float | bool | str | None]:
        return dataclasses.asdict(self)


_dumps: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _utf8(text: str) -> None:
    """Raise ValueError (UnicodeEncodeError) for text that cannot go to Redis or the spool."""
    if not text.isascii():
        text.encode("utf-8")


def _ts_ms(ts: float) -> int:
    # A non-finite or negative time cannot be an id; 0 makes the script use the stream's last id.
    if not math.isfinite(ts) or ts < 0:
        return 0
    return int(ts * 1000)


_Item = tuple[int, CallEvent]  # (submission sequence number, event)


class EventLogWriter:
    """Batching, idempotent, spooling writer of :class:`CallEvent` to the Redis stream.

    ``redis`` is a URL or a factory returning a new ``redis.asyncio.Redis`` that the
    writer owns (and closes). Use as ``async with EventLogWriter(...) as w:`` or call
    :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        redis_source: str | RedisFactory,
        *,
        spool_path: str | os.PathLike[str],
        stream_key: str | None = None,
        keys: Keys = DEFAULT_KEYS,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        max_pending: int = 10_000,
        seen_ttl_s: int = 3 * 86_400,
        call_ttl_s: int = 2 * 86_400,
        max_future_s: float = 60.0,
        hasher: NumberHasher | None = None,
        fsync: bool = True,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if max_pending < batch_size:
            raise ValueError(f"max_pending ({max_pending}) must be >= batch_size ({batch_size})")
        if flush_interval < 0 or reconnect_min_s <= 0 or reconnect_max_s < reconnect_min_s:
            raise ValueError("flush_interval >= 0 and 0 < reconnect_min_s <= reconnect_max_s required")
        if seen_ttl_s < 1 or call_ttl_s < 1:
            raise ValueError("seen_ttl_s and call_ttl_s must be >= 1 second")
        if isinstance(redis_source, str):
            url = redis_source
            self._factory: RedisFactory = lambda: make_client(url)
        else:
            self._factory = redis_source
        self.keys = keys
        self.stream_key = stream_key if stream_key is not None else keys.events
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.seen_ttl_s = int(seen_ttl_s)
        self.call_ttl_s = int(call_ttl_s)
        self.max_future_ms = int(max_future_s * 1000)
        self.hasher = hasher
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.spool = Spool(spool_path, fsync=fsync, validate=self._check)
        self.stats = WriterStats()

        self._client: redis.asyncio.Redis | None = None
        self._script: redis.commands.core.AsyncScript | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: deque[_Item] = deque()
        self._seq = 0  # sequence number of the last submitted event
        self._inflight: list[_Item] | None = None  # memory batch being stored
        self._inflight_spooled = False  # ... and already copied to the spool by a spill
        self._down = False
        self._healthy = True  # no store has failed since the last one that worked
        self._backoff = reconnect_min_s
        self._next_probe = 0.0
        self._spool_retry_at = 0.0
        self._urgent = 0  # flush()/wait_drained() callers waiting: no lingering
        self._closing = False
        self._closed = False
        self._wake = asyncio.Event()  # new data, a full batch, flush or close
        self._progress = asyncio.Event()  # pulsed whenever events move

    # -- life cycle ------------------------------------------------------------

    async def start(self) -> EventLogWriter:
        """Open the spool (left-over events from a previous run are drained first) and start."""
        if self._task is not None:
            return self
        if self._closing:
            raise WriterClosedError("event log writer is closed")
        self.spool.open()
        self._sync_depths()
        self._client = self._factory()
        self._script = self._client.register_script(_STORE_LUA)
        self._task = asyncio.create_task(self._run(), name="event-log-writer")
        return self

    async def __aenter__(self) -> EventLogWriter:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop, leaving nothing in memory: it goes to Redis, or (Redis away or too slow) to the spool.

        Waits up to ``grace_s`` for the memory queue (and a left-over spool, if Redis is
        up) to reach Redis; then whatever is left is appended to the spool, which is
        synced and closed. The next writer on the same spool sends it.
        """
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), grace_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            log.error("event_log.writer_failed", exc_info=task.exception())
        leftovers: list[_Item] = []
        if self._inflight is not None and not self._inflight_spooled:
            leftovers.extend(self._inflight)  # cancelled mid-store: maybe stored, so maybe a duplicate
        self._inflight = None
        leftovers.extend(self._queue)
        self._queue.clear()
        if leftovers:
            if not self.spool.is_open:
                self.spool.open()
            try:
                self.spool.append([e for _, e in leftovers])
            except SpoolError:
                log.critical(
                    "event_log.events_lost_on_close", events=len(leftovers), path=str(self.spool.path)
                )
                raise
            self.stats.events_spooled += len(leftovers)
            log.warning("event_log.spooled_on_close", events=len(leftovers), path=str(self.spool.path))
        self._closed = True
        self._sync_depths()
        self.spool.close()
        self._pulse()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- producer side -----------------------------------------------------------

    def submit(self, event: CallEvent) -> None:
        """Queue one event for storage; never waits.

        Raises ValueError for an event that cannot be stored (an id or call id unusable in
        a key, a lone surrogate, a data value that is not a scalar), WriterClosedError
        after close.
        """
        if self._closing:
            raise WriterClosedError("event log writer is closed")
        self._check(event)
        if self.hasher is not None:
            scrubbed = scrub_numbers(event.data, self.hasher)
            if scrubbed is not None:
                event = dataclasses.replace(event, data=scrubbed)
        self._seq += 1
        self.stats.events_submitted += 1
        item = (self._seq, event)
        if len(self._queue) >= self.max_pending and self._spill(item):
            return
        self._queue.append(item)
        self.stats.queue_depth = len(self._queue)
        if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
            self._wake.set()

    def _check(self, event: CallEvent) -> None:
        """Refuse here what would fail later in the background task (and stop it there)."""
        self.keys.seen(event.id)
        if event.call:
            self.keys.call(event.call)
        for text in (event.id, event.call, event.service, event.queue, event.agent, event.source):
            _utf8(text)
        for name, value in event.data.items():
            if not isinstance(name, str) or not isinstance(value, str | int | float | bool):
                raise ValueError(f"event data {name!r}={value!r}: expected str keys and scalar values")
            _utf8(name)
            if isinstance(value, str):
                _utf8(value)

    def _spill(self, item: _Item) -> bool:
        """Memory queue full: move it, and ``item``, to the spool file right now.

        Keeps the order invariant (spool older than memory): a batch in flight is older
        than the queue, so it is spooled first; if it does get stored, its copy in the
        spool is dropped as a duplicate when the spool drains.
        """
        if time.monotonic() < self._spool_retry_at:
            return False  # the spool failed a moment ago (disk full?): do not retry per event
        items: list[_Item] = []
        if self._inflight is not None and not self._inflight_spooled:
            items.extend(self._inflight)
        items.extend(self._queue)
        items.append(item)
        try:
            self.spool.append([e for _, e in items])
        except SpoolError as exc:
            self._spool_failed(exc)
            return False  # keep the event in memory, over the bound, rather than lose it
        if self._inflight is not None:
            self._inflight_spooled = True
        self._queue.clear()
        self.stats.events_spooled += len(items)
        self._sync_depths()
        self._wake.set()  # the background step fsyncs what this wrote
        self._pulse()
        return True

    # -- waiting ---------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every event submitted so far is stored in Redis or synced in the spool.

        It takes one store round trip, or one spool append and fsync (Redis away, or a
        spool being drained: the memory queue is then appended to it, behind the older
        events). Bound the wait with ``asyncio.timeout`` if Redis may hang.
        """
        target = self._seq
        await self._wait_until(lambda: self._oldest_pending() > target)
        if self.spool.is_open and self.spool.needs_sync:
            await asyncio.to_thread(self.spool.sync)

    async def wait_drained(self) -> None:
        """Wait until memory and spool are empty: everything submitted is in Redis.

        Waits as long as Redis is away; bound it with ``asyncio.timeout``.
        """
        await self._wait_until(
            lambda: self._oldest_pending() > self._seq and self.spool.depth == 0 and not self._down
        )

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        self._urgent += 1
        self._wake.set()
        try:
            while not done():
                if self._task is None:
                    raise RuntimeError("event log writer is not started")
                if self._task.done():
                    raise RuntimeError("event log writer has stopped") from (
                        None if self._task.cancelled() else self._task.exception()
                    )
                await self._progress.wait()
        finally:
            self._urgent -= 1

    def _oldest_pending(self) -> int:
        """Sequence number of the oldest event neither in Redis nor in the spool."""
        if self._inflight and not self._inflight_spooled:
            return self._inflight[0][0]
        if self._queue:
            return self._queue[0][0]
        return self._seq + 1

    def _pulse(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _sync_depths(self) -> None:
        self.stats.spool_depth = self.spool.depth
        self.stats.queue_depth = len(self._queue)
        self.stats.events_rejected = self.spool.rejected

    @property
    def redis_up(self) -> bool:
        return not self._down

    # -- retention -------------------------------------------------------------

    async def trim(self, max_age_s: float, *, now: float | None = None, approximate: bool = False) -> int:
        """Drop stream entries older than ``max_age_s`` (by id, i.e. Asterisk time); returns how many.

        ``approximate=True`` (``XTRIM MINID ~``) only drops whole internal nodes: cheaper
        on a big stream, keeps a few extra entries. The ``seen`` markers and call
        summaries expire by their own TTLs. Raises the Redis error when Redis is away.
        """
        if self._client is None:
            raise RuntimeError("event log writer is not started")
        cutoff_ms = max(0, int(((time.time() if now is None else now) - max_age_s) * 1000))
        removed: int = await self._client.xtrim(
            self.stream_key, minid=f"{cutoff_ms}-0", approximate=approximate
        )
        if removed:
            log.info("event_log.trimmed", stream=self.stream_key, removed=removed, before_ms=cutoff_ms)
        return removed

    # -- background task -------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception:
            # Nothing is lost (submit() keeps queueing, then spilling to the spool), but
            # nothing reaches Redis either until a restart: say so at once.
            log.exception("event_log.writer_crashed", queued=len(self._queue), spool=self.spool.depth)
            raise

    async def _loop(self) -> None:
        while True:
            if self._down:
                await self._spool_queue()
                if self._closing:
                    return
                await self._probe()
            elif self.spool.depth:
                if self._urgent and self._queue:
                    await self._spool_queue()  # a flush() caller must not wait for the whole drain
                await self._drain_step()
            elif self._queue:
                await self._sleep(self.flush_interval, self._linger_over)
                await self._write_step()
            elif self._closing:
                return
            else:
                if self.spool.needs_sync:  # a spill from submit() was drained already or not yet
                    await asyncio.to_thread(self.spool.sync)
                self._wake.clear()
                if not (self._queue or self._closing or self.spool.depth):
                    await self._wake.wait()

    async def _sleep(self, seconds: float, until: Callable[[], bool]) -> None:
        """Sleep up to ``seconds``; re-check ``until`` whenever ``_wake`` is set, return once true."""
        deadline = time.monotonic() + seconds
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()

    def _linger_over(self) -> bool:
        return self._closing or self._urgent > 0 or len(self._queue) >= self.batch_size

    def _spool_now(self) -> bool:
        # Redis away: spool at once only for close() or a flush() caller, else once per interval.
        return self._closing or (self._urgent > 0 and bool(self._queue))

    async def _store(self, events: Sequence[CallEvent]) -> int:
        """One round trip: the script stores the new events of the batch, in order."""
        assert self._script is not None
        keys: list[str] = [self.stream_key]
        args: list[str | int] = [self.seen_ttl_s, self.call_ttl_s, self.max_future_ms]
        for event in events:
            fields = event.to_fields()
            summary = call_summary(event)
            keys.append(self.keys.seen(event.id))
            keys.append(self.keys.call(event.call) if summary else self.stream_key)
            record = [
                _ts_ms(event.ts),
                fields["ts"],
                [x for pair in fields.items() for x in pair],
                [x for pair in summary.items() for x in pair],
            ]
            args.append(_dumps(record))
        stored = int(await self._script(keys=keys, args=args))
        self._backoff = self.reconnect_min_s  # only a store proves Redis healthy, not a PING
        self._healthy = True
        self.stats.batches += 1
        self.stats.events_written += stored
        self.stats.events_duplicate += len(events) - stored
        return stored

    async def _write_step(self) -> None:
        n = min(self.batch_size, len(self._queue))
        batch = [self._queue.popleft() for _ in range(n)]
        self._inflight, self._inflight_spooled = batch, False
        self._sync_depths()
        try:
            await self._store([e for _, e in batch])
        except RedisError as exc:
            self._write_failed(exc)
            if not self._inflight_spooled:
                self._queue.extendleft(reversed(batch))  # back in front; _spool_queue takes all, in order
            self._inflight = None
            await self._spool_queue()
        else:
            self._inflight = None
        self._sync_depths()
        self._pulse()

    async def _drain_step(self) -> None:
        if self.spool.needs_sync:  # lines spilled by submit() since the last step
            await asyncio.to_thread(self.spool.sync)
        try:
            events, next_offset, lines = self.spool.read(self.batch_size)
        except (SpoolError, OSError) as exc:
            # The file changed under us (truncated by hand?): count its lines again.
            self._spool_failed(SpoolError(f"spool read failed, reopening: {exc}"))
            self.spool.close()
            self.spool.open()
            self._sync_depths()
            await asyncio.sleep(self.reconnect_min_s)
            return
        if events:
            try:
                await self._store(events)
            except RedisError as exc:
                self._write_failed(exc)
                return
        self.spool.advance(next_offset, lines)
        self.stats.events_drained += len(events)
        if self.spool.depth == 0:
            log.info("event_log.spool_drained", path=str(self.spool.path), drained=self.stats.events_drained)
        self._sync_depths()
        self._pulse()

    async def _spool_queue(self) -> None:
        """Redis away: move the memory queue to the spool and sync it (one fsync per step)."""
        if self._queue and time.monotonic() >= self._spool_retry_at:
            items = list(self._queue)
            try:
                self.spool.append([e for _, e in items])
            except SpoolError as exc:
                self._spool_failed(exc)
            else:
                self._queue.clear()
                self.stats.events_spooled += len(items)
        if self.spool.needs_sync:
            try:
                await asyncio.to_thread(self.spool.sync)
            except OSError as exc:
                self._spool_failed(SpoolError(f"fsync of {self.spool.path} failed: {exc}"))
        self._sync_depths()
        self._pulse()

    async def _probe(self) -> None:
        """Wait for the next probe time (spooling meanwhile), then PING; back off on failure."""
        now = time.monotonic()
        if now < self._next_probe:
            await self._sleep(min(max(self.flush_interval, 0.01), self._next_probe - now), self._spool_now)
            return
        assert self._client is not None
        try:
            await self._client.ping()
        except RedisError as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            self._schedule_probe()
            return
        self._down = False
        self.stats.redis_up = True
        log.info("event_log.redis_back", spool_depth=self.spool.depth, queued=len(self._queue))

    def _schedule_probe(self) -> None:
        self._next_probe = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
        self._backoff = min(self._backoff * 2, self.reconnect_max_s)

    def _write_failed(self, exc: RedisError) -> None:
        self.stats.write_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        self.stats.last_error_at = time.time()
        # Logged once per outage; retries are paced by the backoff and visible in the stats.
        if self._healthy:
            log.warning("event_log.redis_down", error=self.stats.last_error, spool=str(self.spool.path))
        self._healthy = False
        self._down = True
        self.stats.redis_up = False
        self._schedule_probe()

    def _spool_failed(self, exc: SpoolError) -> None:
        self.stats.spool_errors += 1
        self.stats.last_error = str(exc)
        self.stats.last_error_at = time.time()
        self._spool_retry_at = time.monotonic() + 1.0
        log.error("event_log.spool_failed", error=str(exc), queued=len(self._queue))
