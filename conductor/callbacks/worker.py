"""A callback worker process: RQ's loop over ``<ns>-callbacks``, plus the pump.

Callback workers are separate processes from conductor workers, so a slow
or dead receiver (up to ``callback_timeout`` per attempt) never holds up
a step that powers or provisions a node.  A background thread pumps due
deliveries from the database into the queue every
``callback_poll_interval`` seconds, or at once when a commit that emitted
deliveries wakes it, and frees the leases of callback workers of this
host that died mid-delivery.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis
from rq.serializers import JSONSerializer

from conductor.bootstrap import build_context
from conductor.callbacks import destinations, outbox, retry
from conductor.context import Context
from conductor.engine import jobs
from conductor.engine.worker import QuickStopWorker
from conductor.settings import Settings

LOG = logging.getLogger(__name__)
RQ_SOCKET_TIMEOUT = 600.0
#: Rounds of the pump start at least this far apart: a burst of commits
#: waking it costs one round, not one each.
MIN_ROUND_INTERVAL = 0.05


class Pump(threading.Thread):
    """Queue due deliveries and free dead leases, until stopped."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(name="callback-pump", daemon=True)
        self.ctx = ctx
        self.stopping = threading.Event()

    def run(self) -> None:
        settings = self.ctx.settings
        next_release = time.monotonic() + settings.sweep_interval
        last_round = 0.0
        while not self.stopping.is_set():
            self.stopping.wait(max(0.0, last_round + MIN_ROUND_INTERVAL - time.monotonic()))
            last_round = time.monotonic()
            try:
                queued = outbox.pump(self.ctx.db, self.ctx.callbacks, settings.requeue_after)
                if queued:
                    LOG.debug("Pump: queued %d delivery(ies)", queued)
                if time.monotonic() >= next_release:
                    outbox.release_dead_leases(self.ctx.db, self.ctx.hostname)
                    next_release = time.monotonic() + settings.sweep_interval
            except Exception:
                # The database or Redis briefly away must not stop the pump.
                LOG.exception("Callback pump failed; retrying")
                self.stopping.wait(1.0)
                continue
            try:
                self.ctx.callbacks.sleep(settings.callback_poll_interval)
            except redis.RedisError as exc:
                LOG.warning("Callback pump cannot wait on Redis (%s); polling", exc)
                self.stopping.wait(settings.callback_poll_interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def run(settings: Settings, burst: bool = False) -> None:
    """Run one callback worker until SIGTERM/SIGINT (or the queue is empty, if ``burst``).

    :raises InvalidInput: a malformed callback setting.
    """
    # Refuse to start on settings that would fail every delivery.
    destinations.Policy.from_settings(settings)
    retry.schedule(settings)
    ctx = build_context(settings, redis_timeout=RQ_SOCKET_TIMEOUT)
    ctx.name = outbox.holder_name(ctx.hostname)
    LOG.info("Callback worker %s starting", ctx.name)
    outbox.release_dead_leases(ctx.db, ctx.hostname)
    jobs.install(ctx)
    pump = Pump(ctx)
    pump.start()
    try:
        worker = QuickStopWorker(
            [ctx.callbacks.queue], connection=ctx.redis, name=f"callbacks.{ctx.hostname}.{os.getpid()}",
            serializer=JSONSerializer,
        )
        worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    finally:
        pump.stop()
        LOG.info("Callback worker %s stopped", ctx.name)
        ctx.close()
