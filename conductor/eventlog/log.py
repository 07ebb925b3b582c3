"""The event log: a Redis stream of committed events, in commit order per node.

Why a Redis stream (and not a table): appending is one script call after
the commit (no extra write in the transaction that changes the node),
every API process reads it with one blocking ``XREAD``, ids are ordered
and carry their time (``<ms>-<n>``), and trimming by age is one
``XTRIM MINID``.  What it costs is measured by ``bench/event_stream.py``
(Redis memory per event) and written in docs/events.md.

**Order per node.**  A transaction that emits node events takes one
number per event for each node (:meth:`EventLog.allocate`, a ``HINCRBY``
in ``<ns>:events:order``) *after* writing the node's row, so while it
holds the row's lock (PostgreSQL) or the database's write lock (SQLite):
the numbers of one node follow the order its transactions commit in.  It
publishes after its commit; the publish script appends a node's event only
when every smaller number of that node was appended (or was given back by a
rollback: a *void*), and parks it meanwhile.  A number whose process died
between its commit and its publish would hold its node's later events
back for ever: after :data:`STALL` seconds they are appended anyway (and
the dead process's event is lost; webhooks, an outbox in the database,
lose nothing).  Events about no node (the throttle, conductors) and events
published by code that committed on a plain connection take no number
before their commit: the script gives them the next one when they arrive
(``auto``), which keeps them after every event of their node whose
transaction committed before theirs began.

**Retention.**  At most once a second the script deletes the entries older
than ``event_retention`` (and beyond ``event_max_length``) and records in
``floor`` the newest id it deleted: a reader that last saw an id at or
above ``floor`` has missed nothing.  When the stream is created (a new
deployment, or a Redis that lost its data) ``floor`` is its first id: an id
from before cannot be resumed from either.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import redis

from conductor import keys
from conductor.callbacks.events import StreamEvent
from conductor.models import utcnow
from conductor.settings import Settings

#: Seconds a parked event waits for the earlier events of its node.
STALL = 2.0
#: Entries one catch-up read returns.
PAGE = 500
_ID = re.compile(r"^(\d{1,18})-(\d{1,18})$")

_PUBLISH = """
-- KEYS: stream, order (hash), parked (hash), parked-at (zset), meta (hash)
-- ARGV: retention ms, max length, stall ms, then 6 per event:
--   node ('' for none), seq ('0' unordered, 'auto', or the number taken before the commit),
--   type ('' for a void: a number given back), request, commit time, body
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local created = redis.call('EXISTS', KEYS[1]) == 0
local first, added, late, skipped = nil, 0, 0, 0

local function xadd(kind, node, req, committed, body)
  local id = redis.call('XADD', KEYS[1], '*', 't', kind, 'n', node, 'r', req, 'c', committed, 'b', body)
  if created and first == nil then first = id end
  added = added + 1
end

local function drain(node, done)
  while true do
    local field = node .. '|' .. (done + 1)
    local parked = redis.call('HGET', KEYS[3], field)
    if not parked then break end
    redis.call('HDEL', KEYS[3], field)
    redis.call('ZREM', KEYS[4], field)
    if parked ~= '' then
      local e = cjson.decode(parked)
      xadd(e[1], e[2], e[3], e[4], e[5])
    end
    done = done + 1
  end
  redis.call('HSET', KEYS[2], 'd|' .. node, done)
end

local i = 4
while i + 5 <= #ARGV do
  local node, seq, kind, req, committed, body = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  i = i + 6
  if node == '' or seq == '0' then
    if kind ~= '' then xadd(kind, node, req, committed, body) end
  else
    if seq == 'auto' then
      seq = redis.call('HINCRBY', KEYS[2], 'a|' .. node, 1)
    else
      seq = tonumber(seq)
    end
    local done = tonumber(redis.call('HGET', KEYS[2], 'd|' .. node) or '0')
    if seq <= done then
      -- Its node's later events went out without it (it stalled): late, out of order.
      if kind ~= '' then late = late + 1; xadd(kind, node, req, committed, body) end
    elseif seq == done + 1 then
      if kind ~= '' then xadd(kind, node, req, committed, body) end
      drain(node, seq)
    else
      local field = node .. '|' .. seq
      local parked = ''
      if kind ~= '' then parked = cjson.encode({kind, node, req, committed, body}) end
      redis.call('HSET', KEYS[3], field, parked)
      redis.call('ZADD', KEYS[4], now, field)
    end
  end
end

-- Events that waited too long for an earlier one of their node go out anyway.
for _, field in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, 100)) do
  if redis.call('HEXISTS', KEYS[3], field) == 1 then
    local sep = string.find(field, '|[^|]*$')
    local node = string.sub(field, 1, sep - 1)
    local seq = tonumber(string.sub(field, sep + 1))
    local done = tonumber(redis.call('HGET', KEYS[2], 'd|' .. node) or '0')
    if seq > done + 1 then
      skipped = skipped + seq - 1 - done
      done = seq - 1
    end
    drain(node, done)
  else
    redis.call('ZREM', KEYS[4], field)
  end
end

if first ~= nil then redis.call('HSET', KEYS[5], 'floor', first) end

if tonumber(redis.call('HGET', KEYS[5], 'trimmed') or '0') + 1000 <= now then
  redis.call('HSET', KEYS[5], 'trimmed', now)
  local retention = tonumber(ARGV[1])
  if retention > 0 then
    local threshold = (now - retention) .. '-0'
    local old = redis.call('XREVRANGE', KEYS[1], '(' .. threshold, '-', 'COUNT', 1)
    if #old > 0 then
      redis.call('HSET', KEYS[5], 'floor', old[1][1])
      redis.call('XTRIM', KEYS[1], 'MINID', threshold)
    end
  end
  local most = tonumber(ARGV[2])
  local length = redis.call('XLEN', KEYS[1])
  if most > 0 and length > most then
    local cut = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', length - most)
    redis.call('HSET', KEYS[5], 'floor', cut[#cut][1])
    redis.call('XTRIM', KEYS[1], 'MAXLEN', most)
  end
end
return {added, late, skipped}
"""

_PAGE = """
-- KEYS: stream, meta; ARGV: after (an id), count
-- {'ok', entries} | {'too_old', floor} | {'unknown'} (no stream: Redis lost it, or never had one)
local function parse(id)
  local dash = string.find(id, '-')
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function before(a, b)
  local am, an = parse(a)
  local bm, bn = parse(b)
  return am < bm or (am == bm and an < bn)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local floor = redis.call('HGET', KEYS[2], 'floor') or '0-0'
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local top = floor
if #newest > 0 then top = newest[1][1] end
if before(ARGV[1], floor) or before(top, ARGV[1]) then return {'too_old', floor} end
return {'ok', redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))}
"""


def parse_id(text: str) -> tuple[int, int] | None:
    """``<ms>-<n>`` as a pair that sorts like the ids; None when ``text`` is not one."""
    found = _ID.match(text)
    return (int(found.group(1)), int(found.group(2))) if found else None


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One event as the log holds it."""

    id: str
    type: str
    node: str | None
    request: str | None
    #: When its transaction committed (ISO 8601, UTC, ``Z``).
    committed_at: str
    #: ``{"type", "timestamp", "data"}`` (JSON).
    body: str

    @property
    def key(self) -> tuple[int, int]:
        """The id as a pair that sorts like the ids."""
        found = parse_id(self.id)
        assert found is not None  # Redis made it
        return found


class Page(NamedTuple):
    """What a catch-up read found: ``ok`` and entries, ``too_old`` (and the floor), or ``unknown``."""

    status: str
    entries: list[Entry]
    floor: str | None = None


class Publishable(NamedTuple):
    """An event (or a void) for :meth:`EventLog.publish`."""

    #: The node whose number ``seq`` is (an event's own node wins).
    node: str | None
    #: The number it took before its commit; 0 for none (published as it comes); -1: take one now.
    seq: int
    #: None: the number ``seq`` of ``node`` is given back (its transaction rolled back).
    event: StreamEvent | None
    committed_at: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(entry_id: Any, fields: Mapping[Any, Any]) -> Entry:
    got = {_text(k): _text(v) for k, v in fields.items()}
    return Entry(_text(entry_id), got.get("t", ""), got.get("n") or None, got.get("r") or None,
                 got.get("c", ""), got.get("b", "{}"))


def iso_now() -> str:
    """Now, as ISO 8601 UTC ending in ``Z`` (the form of the event bodies)."""
    return utcnow().isoformat().replace("+00:00", "Z")


class EventLog:
    """The event stream of one deployment in Redis (the keys ``<ns>:events*``)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        namespace = settings.redis_namespace
        self.connection = connection
        self.key = keys.events(namespace)
        self.order_key = keys.events_order(namespace)
        self.meta_key = keys.events_meta(namespace)
        self._keys = [self.key, self.order_key, keys.events_parked(namespace), keys.events_parked_at(namespace),
                      self.meta_key]
        self.retention_ms = max(0, int(settings.event_retention * 1000))
        self.max_length = max(0, settings.event_max_length)
        self._publish = connection.register_script(_PUBLISH)
        self._page = connection.register_script(_PAGE)

    # --- writing -----------------------------------------------------------------------------

    def allocate(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Take ``counts[node]`` numbers for each node; the last one taken for each.

        :raises redis.RedisError: Redis cannot be reached.
        """
        pipe = self.connection.pipeline(transaction=False)
        for node, count in counts.items():
            pipe.hincrby(self.order_key, f"a|{node}", count)
        return {node: int(last) for node, last in zip(counts, pipe.execute(), strict=True)}

    def publish(self, items: Sequence[Publishable]) -> tuple[int, int, int]:
        """Append committed events (and give back voided numbers), in order per node.

        Returns how many entries were appended, how many of them late (out of
        their node's order), and how many numbers were skipped as lost.

        :raises redis.RedisError: Redis cannot be reached.
        """
        args: list[Any] = [self.retention_ms, self.max_length, int(STALL * 1000)]
        for item in items:
            event = item.event
            node = event.node if event is not None else item.node
            args += [node or "", "auto" if item.seq < 0 else item.seq,
                     event.type if event is not None else "", (event.request or "") if event is not None else "",
                     item.committed_at, event.body if event is not None else ""]
        added, late, skipped = self._publish(keys=self._keys, args=args)
        return int(added), int(late), int(skipped)

    def publish_committed(self, events: Sequence[StreamEvent]) -> None:
        """Append events whose transaction (on a plain connection) has just committed.

        Each takes its node's next number now (see the module docstring).

        :raises redis.RedisError: Redis cannot be reached.
        """
        committed = iso_now()
        self.publish([Publishable(e.node, -1 if e.node else 0, e, committed) for e in events])

    # --- reading -----------------------------------------------------------------------------

    def read(self, after: str, count: int = PAGE, block_ms: int | None = None) -> list[Entry]:
        """Entries after id ``after`` (waiting up to ``block_ms`` for one when there is none).

        :raises redis.RedisError: Redis cannot be reached.
        """
        # RESP2: [[stream, [(id, {field: value}), ...]]] (redis-py's annotation covers RESP3's dict too).
        found: Any = self.connection.xread({self.key: after}, count=count, block=block_ms)
        if not found:
            return []
        _stream, entries = found[0]
        return [_entry(entry_id, fields) for entry_id, fields in entries]

    def page(self, after: str, count: int = PAGE) -> Page:
        """Up to ``count`` entries after ``after``, if nothing after it was trimmed (one atomic script).

        :raises redis.RedisError: Redis cannot be reached.
        """
        answer = self._page(keys=[self.key, self.meta_key], args=[after, count])
        status = _text(answer[0])
        if status == "ok":
            entries = [_entry(item[0], dict(zip(item[1][::2], item[1][1::2], strict=True))) for item in answer[1]]
            return Page("ok", entries)
        return Page(status, [], _text(answer[1]) if len(answer) > 1 else None)

    def floor(self) -> str | None:
        """The newest id that may have been lost (None: no stream yet)."""
        value = self.connection.hget(self.meta_key, "floor")
        return _text(value) if value is not None else None

    def tail(self) -> str:
        """The id of the newest event (``0-0`` when there is none): where "from now on" starts.

        :raises redis.RedisError: Redis cannot be reached.
        """
        newest = self.connection.xrevrange(self.key, count=1)
        if newest:
            return _text(newest[0][0])
        return self.floor() or "0-0"

    def usage(self) -> tuple[int, int]:
        """How many entries the stream holds and the bytes Redis uses for it."""
        length = int(self.connection.xlen(self.key))
        size = self.connection.memory_usage(self.key, samples=0) or 0
        return length, int(size)
