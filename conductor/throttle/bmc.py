"""Pacing of commands to one BMC, shared by every conductor: ``bmc_min_interval``.

BMCs are small computers that fall over when hammered.  Before sending a
command a driver claims the BMC's next slot; when it is too soon it gets
the seconds to wait instead, and (jobs never sleep on a BMC) returns a
``Poll(after=...)`` so that the step is retried then::

    wait = bmc.claim(task.ctx, f"{address}:{port}")
    if wait > 0:
        return Poll(wait, "BMC pacing")

The slot lives in Redis (``<ns>:bmc:<id>``) and is claimed by one atomic
script on the Redis server's clock, so two conductors never both send.
"""

from __future__ import annotations

from typing import Any

from conductor import keys
from conductor.context import Context
from conductor.throttle import settings as throttle_settings

_CLAIM = """
local interval = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local last = tonumber(redis.call('GET', KEYS[1]))
if last ~= nil and now - last < interval then
  return tostring(interval - (now - last))
end
redis.call('SET', KEYS[1], tostring(now), 'PX', math.ceil(interval * 1000) + 1000)
return '0'
"""
_SCRIPT = "throttle.bmc.claim"


def claim(ctx: Context, bmc: str, interval: float | None = None) -> float:
    """Claim BMC ``bmc``'s next command slot: 0.0 (send now) or the seconds to wait (nothing claimed).

    ``interval`` defaults to the operator's ``bmc_min_interval``.

    :raises redis.RedisError: Redis cannot be reached.
    """
    if interval is None:
        interval = throttle_settings.current(ctx).bmc_min_interval
    if interval <= 0:
        return 0.0
    script = ctx.cache.get(_SCRIPT)
    if script is None:
        script = ctx.cache[_SCRIPT] = ctx.redis.register_script(_CLAIM)
    reply = script(keys=[keys.bmc_pace(ctx.settings.redis_namespace, bmc)], args=[interval])
    return float(reply.decode() if isinstance(reply, bytes) else reply)


# --- one command in flight per BMC --------------------------------------------------------
#
# A short lock per BMC in Redis (``<ns>:bmc-busy:<id>``) held while a
# conductor talks to the BMC, so that two conductors (or the power-state
# observer and a request's step) never talk to one BMC at the same time.  It
# expires on its own (``ttl``) if its holder dies.  Taking it (or confirming
# we hold it) and, for a command, claiming the pacing slot is one script:
# one round trip.
_ENTER = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return '-1'
end
local interval = tonumber(ARGV[3])
if interval > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local last = tonumber(redis.call('GET', KEYS[2]))
  if last ~= nil and now - last < interval then
    return tostring(interval - (now - last))
  end
  redis.call('SET', KEYS[2], tostring(now), 'PX', math.ceil(interval * 1000) + 1000)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return '0'
"""
_ENTER_SCRIPT = "throttle.bmc.enter"
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_RELEASE_SCRIPT = "throttle.bmc.release"
#: What :func:`enter` returns when another holder has the BMC.
BUSY = -1.0


def _script(ctx: Context, name: str, source: str) -> Any:
    script = ctx.cache.get(name)
    if script is None:
        script = ctx.cache[name] = ctx.redis.register_script(source)
    return script


def enter(ctx: Context, bmc: str, owner: str, ttl: float, interval: float = 0.0) -> float:
    """Take (or keep) BMC ``bmc``'s in-flight lock for ``owner``; with ``interval``, also claim a command slot.

    Returns 0.0 (go ahead: ``owner`` holds the lock for ``ttl`` s more),
    :data:`BUSY` (another owner holds it), or the seconds until a command
    may be sent (``interval`` since the last one not over; the lock is then
    not taken, but kept if ``owner`` already held it).

    :raises redis.RedisError: Redis cannot be reached.
    """
    namespace = ctx.settings.redis_namespace
    locks = [keys.bmc_busy(namespace, bmc), keys.bmc_pace(namespace, bmc)]
    reply = _script(ctx, _ENTER_SCRIPT, _ENTER)(keys=locks, args=[owner, max(1, int(ttl * 1000)), interval])
    return float(reply.decode() if isinstance(reply, bytes) else reply)


def acquire(ctx: Context, bmc: str, owner: str, ttl: float) -> bool:
    """Take BMC ``bmc``'s in-flight lock for ``owner`` (at most ``ttl`` seconds); False if another holds it.

    :raises redis.RedisError: Redis cannot be reached.
    """
    return enter(ctx, bmc, owner, ttl) == 0.0


def release(ctx: Context, bmc: str, owner: str) -> None:
    """Give back BMC ``bmc``'s in-flight lock if ``owner`` still holds it.

    :raises redis.RedisError: Redis cannot be reached.
    """
    _script(ctx, _RELEASE_SCRIPT, _RELEASE)(keys=[keys.bmc_busy(ctx.settings.redis_namespace, bmc)], args=[owner])
