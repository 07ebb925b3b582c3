"""One call in flight per BMC, and paced commands: the guard every BMC driver's calls go through.

Across every worker process and host (Redis is shared):

* at most one call in flight per BMC (a short Redis lock per endpoint,
  held for the rest of the step that took it, so the several calls of a
  step cost one Redis round trip; the driver's ``*_one_in_flight``
  setting);
* for commands that change the BMC's state (power, boot device), the least
  interval ``bmc_min_interval`` (the live throttle knob) since the previous
  one.  Reads are not paced: the power workflow reads right before and
  after each command, and pacing those reads would starve the command;
* when either says "not now", the step ends with
  :class:`~conductor.drivers.base.TryLater` and the conductor runs it again
  later: no job ever sleeps waiting for a BMC.

See docs/ipmi.md ("Continuations") for the whole story; the ``ipmi`` and
``redfish`` drivers share this.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from typing import TYPE_CHECKING, Any

import redis

from conductor.drivers import base
from conductor.exceptions import DriverError
from conductor.throttle import bmc as bmc_throttle
from conductor.throttle import settings as throttle_settings

if TYPE_CHECKING:
    from conductor.context import Context

_owners = itertools.count()


def release_quietly(ctx: Context, endpoint: str, owner: str) -> None:
    """Give back ``endpoint``'s lock if ``owner`` holds it; a Redis failure is ignored (the lock expires)."""
    with contextlib.suppress(redis.RedisError):
        bmc_throttle.release(ctx, endpoint, owner)


def enter(ctx: Context, endpoint: str, *, kind: str, command: bool, holder: Any, ttl: float,
          one_in_flight: bool, busy_retry: float) -> str | None:
    """Take ``endpoint``'s in-flight lock (and, for a ``command``, its pacing slot) before a call.

    ``holder`` (a :class:`~conductor.engine.task.Task`, or anything with its
    ``held`` and ``cleanups``) keeps the lock until the step ends; without
    one, the lock is the caller's to give back after the call: the owner
    token to pass to :func:`release_quietly` is returned (None otherwise).
    ``kind`` names the driver in ``holder.held``; ``ttl`` is how long the
    lock outlives a holder that died.

    :raises TryLater: the BMC is busy with another call, or a command is too soon.
    :raises DriverError: Redis (which coordinates BMC access) is unavailable.
    """
    try:
        interval = throttle_settings.current(ctx).bmc_min_interval if command else 0.0
        if not one_in_flight:
            wait = bmc_throttle.claim(ctx, endpoint, interval) if interval > 0 else 0.0
            release_after = None
        else:
            key = (f"{kind}-bmc", endpoint)
            owner = holder.held.get(key) if holder is not None else None
            wait = 0.0
            release_after = None
            if owner is None or interval > 0:
                token = owner or f"{ctx.name}:{next(_owners)}"
                wait = bmc_throttle.enter(ctx, endpoint, token, ttl, interval)
                if wait == bmc_throttle.BUSY:
                    raise base.TryLater(busy_retry * random.uniform(0.5, 1.5),
                                        f"BMC {endpoint} is busy with another command")
                if wait == 0.0 and owner is None:
                    if holder is not None:
                        holder.held[key] = token
                        holder.cleanups.append(lambda: release_quietly(ctx, endpoint, token))
                    else:
                        release_after = token
        if wait > 0:
            raise base.TryLater(wait, f"BMC {endpoint}: bmc_min_interval")
    except redis.RedisError as exc:
        raise DriverError(f"Cannot coordinate access to BMC {endpoint}: Redis is unavailable ({exc}).") from exc
    return release_after
