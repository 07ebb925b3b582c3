"""The functions RQ runs, and the process context they run in.

RQ imports job functions by name, so the context (settings, database,
Redis) a worker built at start-up is installed here once and fetched by
the job entry point, which passes it down explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from rq.timeouts import BaseTimeoutException

from conductor import metrics
from conductor.context import Context
from conductor.throttle.drain import DrainMeter

LOG = logging.getLogger(__name__)

_context: Context | None = None


def install(ctx: Context) -> None:
    """Make ``ctx`` the context jobs of this process run with."""
    global _context
    _context = ctx


def current() -> Context:
    """The installed context.

    :raises RuntimeError: this process is not a conductor worker.
    """
    if _context is None:
        raise RuntimeError("No conductor context installed: run jobs with `conductor worker`.")
    return _context


def sync_power(node_ids: Sequence[int]) -> None:
    """Sync the power state of a batch of nodes (the power state observer's job)."""
    # Callback workers import this module too (for :func:`current`): what
    # only conductors run is imported when a conductor's job runs.
    from conductor.engine import power_sync

    power_sync.run_batch(current(), node_ids)


def run_steps(request_ids: Sequence[str]) -> None:
    """Run the next step of each request (the work queue's request job)."""
    # Callback workers import this module too: see sync_power.
    from conductor.engine.runner import DATABASE_RETRY_DELAY, run_step

    ctx = current()
    # The steps' metrics go to Redis once, when the job ends.
    with metrics.held(ctx):
        for done, request_id in enumerate(request_ids):
            try:
                run_step(ctx, request_id)
            except BaseTimeoutException:
                # The hung step's request was failed; the rest of the batch runs
                # in a new job rather than being lost with this one.
                rest = list(request_ids[done + 1 :])
                for other in rest:
                    ctx.queue.schedule(other, 0)
                LOG.warning("Job timed out; %d request(s) of its batch rescheduled", len(rest))
                raise
            except Exception:
                # run_step resolves its request on every way out it knows; should
                # one escape, the request (maybe popped from a timer) is not lost
                # with this job: it gets a timer again, and the batch goes on.
                LOG.exception("Request %s: step crashed; trying again in %.0f s", request_id, DATABASE_RETRY_DELAY)
                try:
                    ctx.queue.schedule(request_id, DATABASE_RETRY_DELAY)
                except redis.RedisError as exc:
                    LOG.error("Request %s: could not set its timer (%s); the sweeper will re-arm it",
                              request_id, exc)
    # One job left the work queue: what the API's queue_full Retry-After is based on.
    try:
        DrainMeter(ctx.redis, ctx.settings.redis_namespace).record(1)
    except redis.RedisError as exc:
        LOG.warning("Could not record the drain rate: %s", exc)
