"""Callback requests in Redis: exactly once across restarts and several controllers.

Every state change is one Lua script, so it is atomic on the server whatever the number
of controllers (a script runs alone). The guarantees and how they are kept:

* **One open request per number.** ``ivr:cb:number:{hash}`` (keyed hash of the number,
  never the number) names the open request; a second request for the same number updates
  it (same queue: keeps the *earlier* join time; another queue: takes the new queue and its
  join time) instead of creating a second callback.
* **One dialler at a time.** A claim is ``SET ivr:cb:lease:{id} <owner> NX PX <ms>`` and
  the ``pending -> dialing`` transition in one script: of any number of concurrent
  claimers exactly one wins. The winner renews its lease while the call lasts.
* **Never forgotten.** A controller killed mid-dial stops renewing; its lease expires and
  the request stays in ``ivr:cb:inflight`` with an overdue score. Another dispatcher
  *adopts* it (a new lease, same dial number), checks with Asterisk whether the call is
  still up, and settles it: outcome seen -> recorded; call gone without an outcome -> back
  to ``pending`` with the attempt counted.
* **Never dialled again after it connected.** ``completed`` (like ``failed``, ``expired``
  and ``cancelled``) is terminal: every script checks the status first, and outcomes carry
  the dial number they belong to, so a late report of an older dial changes nothing.
* **Free agents are not over-booked.** ``ivr:cb:ringing:{queue}`` holds the callbacks whose
  Originate has not reached an agent yet; a claim passes the number of free agents and
  fails when that many are already ringing, across all controllers.

Closed requests lose their number and case (personal data kept only while needed),
stay readable for ``retention_s`` (a TTL on the hash) and are listed in ``ivr:cb:closed``.

Scripts receive every key they touch in ``KEYS``. Where a key depends on the request (its
queue, its number hash), the client reads it first and passes the expected value; the
script answers ``stale`` if it changed meanwhile and the client tries again.

Times are Asterisk epoch seconds passed in by the caller (the store has no clock); leases
are Redis milliseconds (process liveness, not call time).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal

import redis.asyncio

from ivr.storage.keys import DEFAULT_KEYS, Keys

__all__ = [
    "CLOSED_STATUSES",
    "OPEN_STATUSES",
    "STATUSES",
    "CallbackRequest",
    "CallbackStore",
    "CancelResult",
    "ClaimResult",
    "FinishResult",
    "LineCounts",
    "NewRequest",
    "RequestResult",
    "new_callback_id",
]

Status = Literal["pending", "dialing", "completed", "failed", "expired", "cancelled"]
STATUSES: Final = ("pending", "dialing", "completed", "failed", "expired", "cancelled")
OPEN_STATUSES: Final = frozenset({"pending", "dialing"})
CLOSED_STATUSES: Final = frozenset({"completed", "failed", "expired", "cancelled"})

#: Outcomes of a dial: ``completed`` / ``failed`` close the request; ``retry`` (the customer
#: was rung or the outcome is unknown) and ``agent_retry`` (no agent took it) send it back
#: to pending unless a limit is reached; ``release`` sends it back with nothing counted
#: (nothing was dialled).
Outcome = Literal["completed", "failed", "retry", "agent_retry", "release"]

_ROUNDS: Final = 5  # attempts when a request changed between the read and the script


def new_callback_id() -> str:
    """A random request id: 20 hex digits, safe in a Redis key and an Asterisk variable."""
    return "cb" + secrets.token_hex(10)


def _t(ts: float) -> str:
    """A time as the scripts store it: fixed-point text (Lua would print 1.7e+09)."""
    if not math.isfinite(ts):
        raise ValueError(f"not a finite time: {ts!r}")
    return f"{ts:.6f}"


def _s(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


# -- Lua ------------------------------------------------------------------------------------------

# Shared by the scripts that close a request. KEYS: 1 hash, 2 lease, 3 open set, 4 queue set,
# 5 inflight, 6 ringing set, 7 number key, 8 closed set. ARGV[1] is always the id.
_CLOSE_LUA: Final = """
local function close(status, now, reason, retention)
  local id = ARGV[1]
  redis.call('HSET', KEYS[1], 'status', status, 'closed_at', now, 'updated', now,
             'reason', reason, 'phase', '', 'owner', '')
  redis.call('HDEL', KEYS[1], 'number', 'case')
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
  redis.call('ZREM', KEYS[6], id)
  if redis.call('GET', KEYS[7]) == id then redis.call('DEL', KEYS[7]) end
  redis.call('DEL', KEYS[2])
  redis.call('ZADD', KEYS[8], now, id)
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', '(' .. (tonumber(now) - tonumber(retention)))
  redis.call('EXPIRE', KEYS[1], retention)
end
"""

# KEYS: 1 number key, 2 existing hash (or the new one), 3 new hash, 4 open set,
#       5 existing request's queue set (or the new one), 6 new queue set
# ARGV: 1 expected existing id ('' = none), 2 new id, 3 now, 4 join ts, 5 new queue,
#       6 JSON object of the fields a request carries (service, queue, number, ...)
_REQUEST_LUA: Final = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return {'stale'} end
local now = ARGV[3]
local fields = cjson.decode(ARGV[6])
if current ~= '' then
  local st = redis.call('HMGET', KEYS[2], 'status', 'queue', 'join_ts')
  if st[1] == 'dialing' then return {'in_progress', current} end
  if st[1] == 'pending' then
    local join = ARGV[4]
    if st[2] == ARGV[5] then
      if tonumber(st[3]) <= tonumber(join) then join = st[3] end
    else
      redis.call('ZREM', KEYS[5], current)
    end
    local changed = (join ~= st[3]) or (st[2] ~= ARGV[5])
    local args = {}
    for k, v in pairs(fields) do
      if k ~= 'call' then
        if redis.call('HGET', KEYS[2], k) ~= v then changed = true end
        table.insert(args, k)
        table.insert(args, v)
      end
    end
    if not changed then return {'unchanged', current} end
    redis.call('HSET', KEYS[2], 'join_ts', join, 'updated', now, unpack(args))
    redis.call('HINCRBY', KEYS[2], 'updates', 1)
    redis.call('ZADD', KEYS[4], join, current)
    redis.call('ZADD', KEYS[6], join, current)
    return {'updated', current}
  end
  -- the number key points at a closed or vanished request: start afresh
end
local args = {}
for k, v in pairs(fields) do
  table.insert(args, k)
  table.insert(args, v)
end
redis.call('HSET', KEYS[3], 'id', ARGV[2], 'status', 'pending', 'join_ts', ARGV[4],
           'created', now, 'updated', now, 'next_attempt_at', 0, 'attempts', 0, 'dial', 0,
           'agent_failures', 0, 'updates', 0, 'phase', '', 'owner', '', 'channel', '',
           'dialing_since', 0, 'answered_at', 0, 'closed_at', 0, 'reason', '', unpack(args))
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[2])
return {'created', ARGV[2]}
"""

# KEYS: 1 hash, 2 lease, 3 queue set, 4 inflight, 5 ringing set
# ARGV: 1 id, 2 owner, 3 lease ms, 4 now, 5 free agents, 6 inflight score, 7 expected queue
_CLAIM_LUA: Final = """
local f = redis.call('HMGET', KEYS[1], 'status', 'next_attempt_at', 'expires_at', 'queue')
if not f[1] then return {'missing'} end
if f[1] ~= 'pending' then return {'not_pending', f[1]} end
if f[4] ~= ARGV[7] then return {'stale'} end
local now = tonumber(ARGV[4])
if tonumber(f[2]) > now then return {'not_due'} end
if tonumber(f[3]) <= now then return {'expired'} end
if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[5]) then return {'no_agent'} end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'leased'} end
local dial = redis.call('HINCRBY', KEYS[1], 'dial', 1)
redis.call('HSET', KEYS[1], 'status', 'dialing', 'owner', ARGV[2], 'phase', 'agent',
           'dialing_since', ARGV[4], 'channel', '', 'answered_at', 0, 'updated', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
return {'claimed', tostring(dial)}
"""

# KEYS: 1 lease, 2 inflight. ARGV: 1 id, 2 owner, 3 lease ms, 4 inflight score
_RENEW_LUA: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[1])
return 1
"""

# KEYS: 1 hash, 2 ringing set. ARGV: 1 id, 2 dial, 3 now, 4 channel
_ANSWERED_LUA: Final = """
local f = redis.call('HMGET', KEYS[1], 'status', 'dial', 'phase')
if f[1] ~= 'dialing' or f[2] ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if f[3] == 'customer' then return 1 end
redis.call('HSET', KEYS[1], 'phase', 'customer', 'answered_at', ARGV[3], 'channel', ARGV[4],
           'updated', ARGV[3])
return 1
"""

# KEYS: the 8 of close(). ARGV: 1 id, 2 dial ('' = current), 3 outcome, 4 now, 5 reason,
# 6 next attempt at, 7 count an attempt (0/1), 8 max agent failures, 9 only without a lease
# (0/1), 10 retention s, 11 expected queue
_FINISH_LUA: Final = (
    _CLOSE_LUA
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'dial', 'attempts', 'max_attempts',
                     'agent_failures', 'queue', 'join_ts')
if not f[1] then return {'missing'} end
local outcome = ARGV[3]
-- The customer was reached: whatever dial reports it, and even if the request went back to
-- pending meanwhile (its outcome had been lost), it is completed and never dialled again.
local late_answer = outcome == 'completed' and f[1] == 'pending'
if f[1] ~= 'dialing' and not late_answer then return {'not_dialing', f[1]} end
if outcome ~= 'completed' and ARGV[2] ~= '' and f[2] ~= ARGV[2] then return {'stale_dial', f[2]} end
if f[6] ~= ARGV[11] then return {'stale'} end
if ARGV[9] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return {'leased'} end
local now, reason, retention = ARGV[4], ARGV[5], ARGV[10]
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
local attempts = tonumber(f[3])
if ARGV[7] == '1' and not late_answer then attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
if outcome == 'completed' or outcome == 'failed' then
  close(outcome, now, reason, retention)
  return {outcome, tostring(attempts), reason, f[2]}
end
if outcome == 'agent_retry' then
  local failures = redis.call('HINCRBY', KEYS[1], 'agent_failures', 1)
  if failures >= tonumber(ARGV[8]) then
    close('failed', now, 'no_agent', retention)
    return {'failed', tostring(attempts), 'no_agent', f[2]}
  end
elseif outcome == 'retry' and attempts >= tonumber(f[4]) then
  close('failed', now, 'max_attempts', retention)
  return {'failed', tostring(attempts), 'max_attempts', f[2]}
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'phase', '', 'owner', '', 'channel', '',
           'next_attempt_at', ARGV[6], 'reason', reason, 'updated', now)
redis.call('ZADD', KEYS[4], f[7], ARGV[1])
return {'pending', tostring(attempts), reason, f[2]}
"""
)

# KEYS: the 8 of close(). ARGV: 1 id, 2 now, 3 reason, 4 retention, 5 expected queue
_CANCEL_LUA: Final = (
    _CLOSE_LUA
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'queue')
if not f[1] then return {'missing'} end
if f[1] == 'dialing' then return {'dialing'} end
if f[1] ~= 'pending' then return {'closed', f[1]} end
if f[2] ~= ARGV[5] then return {'stale'} end
close('cancelled', ARGV[2], ARGV[3], ARGV[4])
return {'cancelled'}
"""
)

# KEYS: the 8 of close(). ARGV: 1 id, 2 now, 3 retention, 4 expected queue
_EXPIRE_LUA: Final = (
    _CLOSE_LUA
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'queue', 'expires_at')
if not f[1] then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {'missing'}
end
if f[1] ~= 'pending' then return {'not_pending', f[1]} end
if f[2] ~= ARGV[4] then return {'stale'} end
if tonumber(f[3]) > tonumber(ARGV[2]) then return {'not_due'} end
close('expired', ARGV[2], 'expired', ARGV[3])
return {'expired'}
"""
)

# KEYS: 1 hash, 2 lease, 3 inflight. ARGV: 1 id, 2 owner, 3 lease ms, 4 inflight score
_ADOPT_LUA: Final = """
local f = redis.call('HMGET', KEYS[1], 'status', 'dial')
if f[1] ~= 'dialing' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {'not_dialing', f[1] or 'missing'}
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'leased'} end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return {'adopted', f[2]}
"""


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """One callback request as stored (``ivr:cb:{id}``).

    ``join_ts`` is the order key: the caller's original queue-join time. ``dial`` counts
    claims (each Originate has its own dial number); ``attempts`` counts the tries that
    reached the customer's line or whose outcome is unknown (limited by
    ``max_attempts``); ``agent_failures`` the tries no agent took. ``phase`` while dialing:
    ``agent`` (Originate not yet answered by an agent) or ``customer`` (agent reached, the
    customer is being rung or talking). ``number`` and ``case`` are empty once closed.
    """

    id: str
    status: str
    call: str
    service: str
    queue: str
    number: str
    number_hash: str
    join_ts: float
    created: float
    updated: float
    next_attempt_at: float
    expires_at: float
    window_start: float
    window_end: float
    attempts: int
    max_attempts: int
    dial: int
    agent_failures: int
    updates: int
    phase: str
    owner: str
    channel: str
    dialing_since: float
    answered_at: float
    closed_at: float
    reason: str
    case: str
    language: str

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> CallbackRequest | None:
        """From an HGETALL reply (str or bytes); None for an empty (missing) hash."""
        if not raw:
            return None
        h = {_s(k): _s(v) for k, v in raw.items()}
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = h.get(f.name, "")
            if f.type == "float":
                values[f.name] = float(text) if text else 0.0
            elif f.type == "int":
                values[f.name] = int(text) if text else 0
            else:
                values[f.name] = text
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """For supervisors and logs: everything but the number (masked) and the case."""
        out = asdict(self)
        out["number"] = mask_number(self.number)
        out.pop("case")
        out.pop("owner")
        return out


def mask_number(number: str) -> str:
    """``0612345678`` -> ``06••••••78``: enough for a supervisor to confirm it with the caller."""
    if len(number) <= 4:
        return "•" * len(number)
    return number[:2] + "•" * (len(number) - 4) + number[-2:]


@dataclass(frozen=True, slots=True)
class NewRequest:
    """What a caller asks for (validated by the service before it gets here)."""

    call: str
    service: str
    queue: str
    number: str
    number_hash: str
    join_ts: float
    expires_at: float
    max_attempts: int
    window_start: float = 0.0
    window_end: float = 0.0
    case: str = ""
    language: str = ""

    def stored_fields(self) -> dict[str, str]:
        return {
            "call": self.call,
            "service": self.service,
            "queue": self.queue,
            "number": self.number,
            "number_hash": self.number_hash,
            "expires_at": _t(self.expires_at),
            "max_attempts": str(self.max_attempts),
            "window_start": _t(self.window_start),
            "window_end": _t(self.window_end),
            "case": self.case,
            "language": self.language,
        }


@dataclass(frozen=True, slots=True)
class RequestResult:
    """``created`` a new request, ``updated``/``unchanged`` the open one of this number, or
    ``in_progress``: it is being dialled right now and was left alone."""

    outcome: Literal["created", "updated", "unchanged", "in_progress"]
    request: CallbackRequest


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """``ok`` with the dial number, or why not (``not_pending``, ``not_due``, ``expired``,
    ``no_agent``, ``leased``, ``missing``)."""

    ok: bool
    reason: str = ""
    dial: int = 0


@dataclass(frozen=True, slots=True)
class FinishResult:
    """``status`` after the script (``pending`` again, or a closed status); ``changed`` is
    False when the outcome was not applied (``reason`` then says why: ``not_dialing``,
    ``stale_dial``, ``leased``, ``missing``)."""

    changed: bool
    status: str
    attempts: int = 0
    reason: str = ""
    dial: int = 0


@dataclass(frozen=True, slots=True)
class CancelResult:
    """``cancelled``, or ``missing`` / ``dialing`` / ``closed`` (with the current status)."""

    outcome: Literal["cancelled", "missing", "dialing", "closed"]
    status: str = ""


@dataclass(frozen=True, slots=True)
class LineCounts:
    """Where one time (and one callback) stands among a queue's pending callbacks.

    Read from the queue's ordered set (score: original join time) with ZCARD, ZCOUNT and
    ZRANK -- O(log n) whatever the number waiting -- so that an estimate never reads the
    requests themselves. ``pending``: callbacks waiting to be dialled; ``up_to``: those
    whose join time is at or before the time asked about; ``rank``/``join_ts``: 0-based
    place and join time of the callback asked about (None when it is not pending). Ties
    of join time rank by id, as Redis and :class:`~ivr.callbacks.ordering.LineEntry` both do.
    """

    pending: int
    up_to: int
    rank: int | None = None
    join_ts: float | None = None


class CallbackStore:
    """The callback requests of one deployment (one key prefix) in one Redis database.

    ``redis`` may decode responses or not; the store copes with both. It never closes
    the client it is given.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys = DEFAULT_KEYS,
        *,
        retention_s: int = 7 * 86_400,
    ) -> None:
        if retention_s < 1:
            raise ValueError("retention_s must be >= 1")
        self.redis = client
        self.keys = keys
        self.retention_s = int(retention_s)
        self._request = client.register_script(_REQUEST_LUA)
        self._claim = client.register_script(_CLAIM_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._answered = client.register_script(_ANSWERED_LUA)
        self._finish = client.register_script(_FINISH_LUA)
        self._cancel = client.register_script(_CANCEL_LUA)
        self._expire = client.register_script(_EXPIRE_LUA)
        self._adopt = client.register_script(_ADOPT_LUA)

    # -- reading ---------------------------------------------------------------------------

    async def get(self, callback_id: str) -> CallbackRequest | None:
        raw = await self.redis.hgetall(self.keys.cb(callback_id))
        return CallbackRequest.from_hash(raw)

    async def get_many(self, ids: Sequence[str]) -> list[CallbackRequest]:
        """The requests that still exist, in the order of ``ids``."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(self.keys.cb(cid))
            replies = await pipe.execute()
        return [r for r in map(CallbackRequest.from_hash, replies) if r is not None]

    async def open_for_number(self, number_hash: str) -> CallbackRequest | None:
        """The open request of a (hashed) number, if any."""
        cid = _s(await self.redis.get(self.keys.cb_number(number_hash)))
        if not cid:
            return None
        req = await self.get(cid)
        return req if req is not None and req.is_open else None

    async def pending(self, queue: str, start: int = 0, count: int = 100) -> list[CallbackRequest]:
        """Requests of ``queue`` waiting to be dialled, earliest join time first."""
        ids = await self.redis.zrange(self.keys.cb_queue(queue), start, start + count - 1)
        return await self.get_many([_s(i) for i in ids])

    async def line_counts(self, queue: str, at: float, callback_id: str | None = None) -> LineCounts:
        """Counts of ``queue``'s pending callbacks around join time ``at`` (one round trip)."""
        if not math.isfinite(at):
            raise ValueError(f"not a finite time: {at!r}")
        key = self.keys.cb_queue(queue)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(key)
            pipe.zcount(key, "-inf", repr(float(at)))
            if callback_id:
                pipe.zrank(key, callback_id)
                pipe.zscore(key, callback_id)
            replies = await pipe.execute()
        rank = join = None
        if callback_id and replies[2] is not None and replies[3] is not None:
            rank, join = int(replies[2]), float(replies[3])
        return LineCounts(pending=int(replies[0]), up_to=int(replies[1]), rank=rank, join_ts=join)

    async def open_requests(self, limit: int = 1000) -> list[CallbackRequest]:
        """Open requests (pending and dialing) of every queue, by original join time."""
        ids = await self.redis.zrange(self.keys.cb_pending, 0, max(0, limit - 1))
        return await self.get_many([_s(i) for i in ids])

    async def closed_requests(self, limit: int = 100) -> list[CallbackRequest]:
        """The most recently closed requests, newest first."""
        ids = await self.redis.zrevrange(self.keys.cb_closed, 0, max(0, limit - 1))
        return await self.get_many([_s(i) for i in ids])

    async def due_for_check(self, now_score: float, limit: int = 100) -> list[str]:
        """In-flight requests whose lease check time (Redis clock, ms) has passed."""
        ids = await self.redis.zrangebyscore(self.keys.cb_inflight, "-inf", now_score, start=0, num=limit)
        return [_s(i) for i in ids]

    async def ringing_count(self, queue: str) -> int:
        return int(await self.redis.zcard(self.keys.cb_ringing(queue)))

    async def server_ms(self) -> int:
        """Redis' own clock in ms: lease check times are on it, shared by every controller."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- writing -----------------------------------------------------------------------------

    async def request(self, new: NewRequest, now: float, callback_id: str | None = None) -> RequestResult:
        """Create the request of ``new.number_hash``, or update its open one."""
        k = self.keys
        cid = callback_id or new_callback_id()
        number_key = k.cb_number(new.number_hash)
        payload = json.dumps(new.stored_fields(), separators=(",", ":"))
        for _ in range(_ROUNDS):
            current = _s(await self.redis.get(number_key))
            old_queue = new.queue
            if current:
                q = _s(await self.redis.hget(k.cb(current), "queue"))
                old_queue = q or new.queue
            reply = await self._request(
                keys=[
                    number_key,
                    k.cb(current or cid),
                    k.cb(cid),
                    k.cb_pending,
                    k.cb_queue(old_queue),
                    k.cb_queue(new.queue),
                ],
                args=[current, cid, _t(now), _t(new.join_ts), new.queue, payload],
            )
            outcome = _s(reply[0])
            if outcome == "stale":
                continue
            stored = await self.get(_s(reply[1]))
            if stored is None:  # expired between the script and the read: vanishingly rare
                continue
            return RequestResult(outcome, stored)  # type: ignore[arg-type]
        raise RuntimeError(f"callback request for {new.number_hash} kept changing; giving up")

    async def claim(
        self, callback_id: str, queue: str, owner: str, *, lease_ms: int, now: float, free_agents: int
    ) -> ClaimResult:
        """Take a pending request for dialling: lease + ``pending -> dialing``, atomically."""
        k = self.keys
        check = await self.server_ms() + lease_ms
        reply = await self._claim(
            keys=[
                k.cb(callback_id),
                k.cb_lease(callback_id),
                k.cb_queue(queue),
                k.cb_inflight,
                k.cb_ringing(queue),
            ],
            args=[callback_id, owner, int(lease_ms), _t(now), int(free_agents), check, queue],
        )
        outcome = _s(reply[0])
        if outcome == "claimed":
            return ClaimResult(True, "", int(_s(reply[1])))
        return ClaimResult(False, outcome)

    async def renew(self, callback_id: str, owner: str, lease_ms: int) -> bool:
        """Extend our lease; False if it is no longer ours (expired, or adopted by another)."""
        k = self.keys
        check = await self.server_ms() + lease_ms
        reply = await self._renew(
            keys=[k.cb_lease(callback_id), k.cb_inflight], args=[callback_id, owner, int(lease_ms), check]
        )
        return bool(int(reply))

    async def agent_answered(self, callback_id: str, queue: str, dial: int, now: float, channel: str) -> bool:
        """The Originate reached an agent: phase ``customer``, the agent is no longer a free one."""
        k = self.keys
        reply = await self._answered(
            keys=[k.cb(callback_id), k.cb_ringing(queue)], args=[callback_id, str(dial), _t(now), channel]
        )
        return bool(int(reply))

    def _close_keys(self, callback_id: str, queue: str, number_hash: str) -> list[str]:
        k = self.keys
        return [
            k.cb(callback_id),
            k.cb_lease(callback_id),
            k.cb_pending,
            k.cb_queue(queue),
            k.cb_inflight,
            k.cb_ringing(queue),
            k.cb_number(number_hash or "none"),
            k.cb_closed,
        ]

    async def _routing(self, callback_id: str) -> tuple[str, str] | None:
        q, h = await self.redis.hmget(self.keys.cb(callback_id), ["queue", "number_hash"])
        if q is None:
            return None
        return _s(q), _s(h)

    async def finish(
        self,
        callback_id: str,
        outcome: Outcome,
        *,
        now: float,
        dial: int | None = None,
        reason: str = "",
        next_attempt_at: float | None = None,
        count_attempt: bool = False,
        max_agent_failures: int = 10,
        only_without_lease: bool = False,
    ) -> FinishResult:
        """Record the outcome of a dial (of ``dial``, or of the current one when None)."""
        for _ in range(_ROUNDS):
            routing = await self._routing(callback_id)
            if routing is None:
                return FinishResult(False, "", reason="missing")
            queue, number_hash = routing
            reply = await self._finish(
                keys=self._close_keys(callback_id, queue, number_hash),
                args=[
                    callback_id,
                    "" if dial is None else str(dial),
                    outcome,
                    _t(now),
                    reason,
                    _t(now if next_attempt_at is None else next_attempt_at),
                    "1" if count_attempt else "0",
                    int(max_agent_failures),
                    "1" if only_without_lease else "0",
                    self.retention_s,
                    queue,
                ],
            )
            status = _s(reply[0])
            if status == "stale":
                continue
            if status in ("missing", "not_dialing", "stale_dial", "leased"):
                current = _s(reply[1]) if len(reply) > 1 else ""
                return FinishResult(False, current, reason=status)
            return FinishResult(True, status, int(_s(reply[1])), _s(reply[2]), int(_s(reply[3]) or 0))
        raise RuntimeError(f"callback {callback_id} kept changing; giving up")

    async def cancel(self, callback_id: str, *, now: float, reason: str = "cancelled") -> CancelResult:
        """Cancel a pending request (a dialing one is refused: the call is already placed)."""
        for _ in range(_ROUNDS):
            routing = await self._routing(callback_id)
            if routing is None:
                return CancelResult("missing")
            queue, number_hash = routing
            reply = await self._cancel(
                keys=self._close_keys(callback_id, queue, number_hash),
                args=[callback_id, _t(now), reason, self.retention_s, queue],
            )
            outcome = _s(reply[0])
            if outcome == "stale":
                continue
            if outcome == "cancelled":
                return CancelResult("cancelled", "cancelled")
            if outcome == "dialing":
                return CancelResult("dialing", "dialing")
            if outcome == "closed":
                return CancelResult("closed", _s(reply[1]))
            return CancelResult("missing")
        raise RuntimeError(f"callback {callback_id} kept changing; giving up")

    async def expire(self, callback_id: str, *, now: float) -> bool:
        """Close a pending request whose expiry has passed; True if this call did it."""
        for _ in range(_ROUNDS):
            routing = await self._routing(callback_id)
            if routing is None:
                await self.redis.zrem(self.keys.cb_pending, callback_id)
                return False
            queue, number_hash = routing
            reply = await self._expire(
                keys=self._close_keys(callback_id, queue, number_hash),
                args=[callback_id, _t(now), self.retention_s, queue],
            )
            outcome = _s(reply[0])
            if outcome == "stale":
                continue
            return outcome == "expired"
        return False

    async def adopt(self, callback_id: str, owner: str, lease_ms: int) -> int | None:
        """Take over a dialing request whose lease expired; its dial number, or None."""
        k = self.keys
        check = await self.server_ms() + lease_ms
        reply = await self._adopt(
            keys=[k.cb(callback_id), k.cb_lease(callback_id), k.cb_inflight],
            args=[callback_id, owner, int(lease_ms), check],
        )
        if _s(reply[0]) != "adopted":
            return None
        return int(_s(reply[1]))

    async def lease_owner(self, callback_id: str) -> str | None:
        value = await self.redis.get(self.keys.cb_lease(callback_id))
        return _s(value) if value is not None else None
