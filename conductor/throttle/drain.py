"""The drain rate of the work queue: a moving average of jobs completed per second.

Every conductor records each job it completes into one Redis hash
(``<ns>:drain``) with an atomic script, so the rate is the whole
deployment's.  The average decays exponentially with time constant
``TAU``: each completion adds ``1/TAU`` and the value decays by
``exp(-dt/TAU)``, which converges to the true rate of a steady stream and
falls towards zero when the workers stop.  The API reads it to tell a
client refused with ``queue_full`` how long the excess takes to drain.
"""

from __future__ import annotations

import math

import redis

from conductor import keys

#: Time constant of the moving average, in seconds.
TAU = 10.0
#: The range ``Retry-After`` of a full queue is clamped to.
RETRY_MIN, RETRY_MAX = 1, 60

_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local d = redis.call('HMGET', KEYS[1], 'rate', 'at')
local rate = tonumber(d[1]) or 0
local at = tonumber(d[2]) or now
local tau = tonumber(ARGV[2])
rate = rate * math.exp(-math.max(0, now - at) / tau) + tonumber(ARGV[1]) / tau
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 86400)
return tostring(rate)
"""


def key(namespace: str) -> str:
    """The Redis hash holding the average."""
    return keys.drain(namespace)


def decayed(rate: float, at: float, now: float) -> float:
    """The average ``rate`` recorded at ``at``, as of ``now`` (seconds since the epoch)."""
    return rate * math.exp(-max(0.0, now - at) / TAU)


def retry_after(excess: int, rate: float) -> int:
    """Whole seconds for ``excess`` jobs to drain at ``rate`` jobs/s, clamped to the sane range."""
    if rate <= excess / RETRY_MAX:
        return RETRY_MAX
    return max(RETRY_MIN, min(RETRY_MAX, math.ceil(excess / rate)))


class DrainMeter:
    """Records completions and reads the average for one deployment."""

    def __init__(self, connection: redis.Redis, namespace: str) -> None:
        self.connection = connection
        self.key = key(namespace)
        self._record = connection.register_script(_RECORD)

    def record(self, jobs: int = 1) -> float:
        """Count ``jobs`` completed now; returns the new average.

        :raises redis.RedisError: Redis cannot be reached.
        """
        return float(self._record(keys=[self.key], args=[jobs, TAU]))

    def rate(self) -> float:
        """The current average in jobs per second (0 when nothing was recorded)."""
        raw_rate, raw_at = self.connection.hmget(self.key, ["rate", "at"])
        if raw_rate is None or raw_at is None:
            return 0.0
        seconds, micros = self.connection.time()
        return decayed(float(raw_rate), float(raw_at), seconds + micros / 1e6)
