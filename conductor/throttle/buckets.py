"""Admission in one Redis round trip: queue depth, then token buckets.

Buckets live in Redis (``<ns>:rl:...`` hashes of ``tokens`` and ``at``) and
one Lua script decides atomically, so every API process on every host
shares them and the Redis server's clock is the only clock.  A call is
admitted only when *every* bucket it draws on holds a whole token; then
one token is taken from each.  A refused call takes nothing.

For calls that create work the script first compares the length of the
work queue with the configured maximum, and on refusal also returns the
drain rate so that ``Retry-After`` can be estimated without another call.

Why the work queue's length rather than a count of ``queued`` rows in the
database: it is what the conductors actually have to get through, it costs
one O(1) ``LLEN`` inside the same atomic script (no database access for a
refusal), and the database count is no more exact under concurrency (two
API processes counting at once both see room).  The cost: continuations
of running requests (timer batches) count too, and requests sleeping in
timers do not, which is the load the workers feel.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence

import redis

from conductor import keys
from conductor.throttle import drain

OK = "ok"
RATE_LIMITED = "rate_limited"
QUEUE_FULL = "queue_full"

_ADMIT = """
local n = tonumber(ARGV[1])
local max_depth = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if max_depth > 0 then
  local depth = redis.call('LLEN', KEYS[n + 1])
  if depth >= max_depth then
    local d = redis.call('HMGET', KEYS[n + 2], 'rate', 'at')
    return {'queue_full', tostring(now), tostring(depth), d[1] or '0', d[2] or tostring(now)}
  end
end
local levels = {}
local wait = 0
for i = 1, n do
  local rate = tonumber(ARGV[2 + 2 * i])
  local burst = tonumber(ARGV[3 + 2 * i])
  local b = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local level = tonumber(b[1])
  local at = tonumber(b[2])
  if level == nil or at == nil then
    level = burst
  else
    level = math.min(burst, level + math.max(0, now - at) * rate)
  end
  levels[i] = level
  if level < 1 then wait = math.max(wait, (1 - level) / rate) end
end
local out
if wait > 0 then
  out = {'rate_limited', tostring(wait)}
else
  local grant = lease
  for i = 1, n do grant = math.min(grant, math.floor(levels[i])) end
  out = {'ok', tostring(grant)}
  for i = 1, n do
    local rate = tonumber(ARGV[2 + 2 * i])
    local burst = tonumber(ARGV[3 + 2 * i])
    levels[i] = levels[i] - grant
    redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i]), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
  end
end
for i = 1, n do out[#out + 1] = tostring(levels[i]) end
return out
"""


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A budget: ``rate`` tokens per second, at most ``burst`` saved up."""

    policy: str
    key: str
    rate: float
    burst: int

    @property
    def window(self) -> int:
        """Seconds an empty bucket takes to fill (the draft's ``w``)."""
        return max(1, math.ceil(self.burst / self.rate))


@dataclasses.dataclass(frozen=True)
class Level:
    """How full a bucket was after the decision."""

    bucket: Bucket
    tokens: float

    @property
    def remaining(self) -> int:
        """Whole calls left right now (the draft's ``r``)."""
        return max(0, math.floor(self.tokens))

    @property
    def reset(self) -> int:
        """Whole seconds until the bucket is full again (the draft's ``t``)."""
        return max(0, math.ceil((self.bucket.burst - self.tokens) / self.bucket.rate))


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`Limiter.admit`."""

    outcome: str
    #: Whole seconds a refused client should wait (>= 1); 0 when admitted.
    retry_after: int = 0
    levels: tuple[Level, ...] = ()
    #: Jobs in the work queue and the drain rate (jobs/s), on ``queue_full``.
    depth: int | None = None
    drain_rate: float | None = None
    #: Tokens taken from every bucket when admitted (more than one: a lease, see :class:`Leases`).
    granted: int = 1

    @property
    def admitted(self) -> bool:
        return self.outcome == OK


class Limiter:
    """The buckets and the work-queue check of one deployment."""

    def __init__(self, connection: redis.Redis, namespace: str, queue_key: str) -> None:
        self.namespace = namespace
        self.queue_key = queue_key
        self.drain_key = drain.key(namespace)
        self._admit = connection.register_script(_ADMIT)

    def bucket(self, policy: str, scope: str, rate: float, burst: int) -> Bucket:
        """The bucket of ``policy`` for ``scope`` (a client, or ``*`` for everyone)."""
        return Bucket(policy, keys.rate_bucket(self.namespace, policy, scope), rate, burst)

    def admit(self, buckets: Sequence[Bucket], max_depth: int = 0, lease: int = 1) -> Decision:
        """Take one token from every bucket, or none if any is empty.

        Buckets whose rate is 0 are unlimited and skipped.  With
        ``max_depth`` > 0 the call is refused first if the work queue holds
        that many jobs.  With ``lease`` > 1, up to that many tokens are
        taken from every bucket (as many as the emptiest holds whole), and
        :attr:`Decision.granted` says how many; the levels are after them.

        :raises redis.RedisError: Redis cannot be reached.
        """
        active = [b for b in buckets if b.rate > 0]
        if not active and max_depth <= 0:
            return Decision(OK)  # nothing to check: no round trip
        args: list[float | int] = [len(active), max_depth, max(1, lease)]
        for b in active:
            args += [b.rate, b.burst]
        script_keys = [b.key for b in active] + [self.queue_key, self.drain_key]
        reply = [r.decode() if isinstance(r, bytes) else str(r) for r in self._admit(keys=script_keys, args=args)]
        outcome = reply[0]
        if outcome == QUEUE_FULL:
            now, depth, rate, at = float(reply[1]), int(reply[2]), float(reply[3]), float(reply[4])
            current = drain.decayed(rate, at, now)
            return Decision(
                QUEUE_FULL,
                retry_after=drain.retry_after(depth - max_depth + 1, current),
                depth=depth,
                drain_rate=current,
            )
        levels = tuple(Level(b, float(v)) for b, v in zip(active, reply[2:], strict=True))
        if outcome == RATE_LIMITED:
            return Decision(RATE_LIMITED, retry_after=max(1, math.ceil(float(reply[1]))), levels=levels)
        return Decision(OK, levels=levels, granted=int(reply[1]))


@dataclasses.dataclass
class _Lease:
    left: int  # tokens taken from Redis and not yet spent
    level: float  # the bucket's level in Redis when they were taken (after them)
    until: float  # monotonic: unspent tokens are dropped then
    size: int  # how many were asked for
    used: int = 0


class Leases:
    """One process's leases of single-bucket budgets (a client's reads): one Redis round trip per lease.

    A read takes a token from its client's bucket.  Asking Redis for each
    costs more of an API process's CPU than the read itself (docs/
    benchmarks.md, "Pollers"), so a process takes several tokens at once and
    spends them locally:

    * Every token spent was taken from the shared bucket first, so over
      time no client gets more than its rate across all processes and
      hosts.  Its burst is exact to the leases: tokens taken into a lease
      are spent up to ``lifetime`` later, while the bucket refills, so a
      client that has saved up a full bucket *and* holds leases can spend
      both at once: at most one lease more per process (``most``, and a
      twentieth of the burst).  One thread per process and client fetches
      a lease; the others meanwhile take single tokens.
    * From below it is exact to the leases too: a client can be refused
      while another process still holds tokens it leased, at most one
      lease per process (a refusal always asks Redis, so its
      ``Retry-After`` is the bucket's own).
    * A lease lives ``lifetime`` seconds; its unspent tokens are then dropped
      (spent, as far as the bucket knows).  The size adapts so that little
      is dropped: a client's first lease is one token, a lease used up
      before its end doubles the next (up to ``most``, and a twentieth of
      the burst), one that ends unspent shrinks the next to what was spent.
      A slow poller therefore leases one token at a time, as without leases.

    ``most`` <= 1 turns leasing off.  Thread-safe (the API's threads share it).
    """

    def __init__(self, limiter: Limiter, most: int, lifetime: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = limiter
        self.most = most
        self.lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[tuple[str, float, int], _Lease] = {}
        self._fetching: set[tuple[str, float, int]] = set()

    def admit(self, bucket: Bucket) -> Decision:
        """Spend one token of ``bucket`` from this process's lease, or take a new lease from Redis.

        :raises redis.RedisError: Redis cannot be reached.
        """
        if bucket.rate <= 0:
            return self.limiter.admit([bucket])
        ident = (bucket.key, bucket.rate, bucket.burst)
        now = self._clock()
        with self._lock:
            lease = self._leases.get(ident)
            if lease is not None and now < lease.until and lease.left >= 1:
                lease.left -= 1
                lease.used += 1
                return Decision(OK, levels=(Level(bucket, lease.level + lease.left),))
            if ident in self._fetching or min(self.most, bucket.burst // 20) <= 1:
                fetch = False  # another thread is taking this client's next lease (or leasing is off)
            else:
                fetch = True
                self._fetching.add(ident)
                size = self._next_size(bucket, lease, now)
                if len(self._leases) >= MAX_LEASES and lease is None:
                    self._leases.clear()  # a process serving that many clients at once: start afresh
        if not fetch:
            return self.limiter.admit([bucket])
        try:
            decision = self.limiter.admit([bucket], lease=size)
            if not decision.admitted:
                return decision
            level = decision.levels[0].tokens
            with self._lock:
                self._leases[ident] = _Lease(left=decision.granted - 1, level=level, until=now + self.lifetime,
                                             size=size, used=1)
        finally:
            with self._lock:
                self._fetching.discard(ident)
        return Decision(OK, levels=(Level(bucket, level + decision.granted - 1),))

    def _next_size(self, bucket: Bucket, lease: _Lease | None, now: float) -> int:
        most = min(self.most, bucket.burst // 20)
        if lease is None:
            return 1
        if lease.left < 1 and now < lease.until:
            return min(most, lease.size * 2)  # spent before its end: the client reads fast
        return max(1, min(most, lease.used))


#: Most clients' leases one process keeps.
MAX_LEASES = 10_000


def headers(decision: Decision) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (IETF draft-ietf-httpapi-ratelimit-headers)."""
    if not decision.levels:
        return {}
    policies = ", ".join(
        f'"{lv.bucket.policy}";q={lv.bucket.burst};w={lv.bucket.window}' for lv in decision.levels
    )
    limits = ", ".join(
        f'"{lv.bucket.policy}";r={lv.remaining};t={lv.reset}' for lv in decision.levels
    )
    return {"RateLimit-Policy": policies, "RateLimit": limits}
