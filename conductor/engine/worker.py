"""A conductor worker process: RQ's worker loop plus the conductor's chores.

The job loop is RQ's ``SimpleWorker`` (jobs run in this process, no fork
per job): jobs are short steps that never sleep on hardware, and drivers
keep their BMC sessions open across jobs.  A background thread does the
chores: pump due timers into the work queue (every ``TIMER_TICK``), beat
the conductor's heart, fail agent waits past their timeout (the
watchdog), sweep for dead conductors and lost jobs, and start
the power state observer's rounds (whose reads run as jobs, never in this
thread: pyghmi is used by one thread per process).

The operator's ``worker_concurrency`` knob (see :mod:`conductor.throttle.settings`)
is obeyed between jobs: a worker whose slot (the ``-w<slot>`` of its
conductor name) is at or above it finishes its step, then takes no job
until the knob is raised.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import redis
import sqlalchemy.exc
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.utils import now

from conductor.bootstrap import build_context
from conductor.context import Context
from conductor.engine import conductors, jobs, power_sync, sweeper, watchdog
from conductor.settings import Settings
from conductor.throttle import settings as throttle_settings
from conductor.workqueue import STEP_FUNCTION

#: The jobs whose success :meth:`ConductorWorker.handle_job_success` handles itself.
_STEP_JOBS = frozenset({STEP_FUNCTION, power_sync.BATCH_FUNCTION})

LOG = logging.getLogger(__name__)
TIMER_TICK = 0.05
RQ_SOCKET_TIMEOUT = 600.0
#: How often a paused worker looks at ``worker_concurrency`` again.
PAUSE_TICK = 0.25
#: A worker's idle heartbeat is sent at most this often (its key lives minutes: ``worker_ttl`` + 60 s).
HEARTBEAT_MIN_INTERVAL = 5.0


def slot_of(name: str | None) -> int:
    """The slot of conductor ``name`` (``<base>-w<slot>``); 0 if it has none."""
    _base, sep, slot = (name or "").rpartition("-w")
    return int(slot) if sep and slot.isdigit() else 0


def may_take_jobs(ctx: Context) -> bool:
    """Whether ``worker_concurrency`` lets this conductor take a job now.

    When the settings cannot be read (database and Redis away) it works on:
    the knob protects, it must not stop the service.
    """
    try:
        limit = throttle_settings.current(ctx).worker_concurrency
    except (redis.RedisError, sqlalchemy.exc.SQLAlchemyError) as exc:
        LOG.warning("Cannot read worker_concurrency (%s); taking jobs", exc)
        return True
    return limit == 0 or slot_of(ctx.name) < limit


class QuickStopWorker(SimpleWorker):
    """RQ's SimpleWorker whose command listener (pubsub thread) wakes five times a second.

    RQ's listener blocks up to 60 s between wake-ups, and a warm shutdown
    waited for it in ``unsubscribe``: some stops took 60 s more than the step.
    (Each wake-up is one Redis read; a stop now waits at most 0.2 s for it.)
    """

    def subscribe(self) -> None:
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        # RQ declares the attribute as None; its own subscribe assigns a thread too.
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=0.2, daemon=True, exception_handler=self._pubsub_exception_handler
        )


class ConductorWorker(QuickStopWorker):
    """RQ's SimpleWorker, pausing between jobs while ``worker_concurrency`` excludes it.

    RQ beats the worker's heart three times around each job (after it, and
    before and after the dequeue), each beat three Redis round trips.  Here a
    beat is one round trip (pipelined), and a beat that would only push the
    worker's expiry to the same ``worker_ttl`` again is skipped for
    :data:`HEARTBEAT_MIN_INTERVAL`: one round trip a job instead of nine.
    A beat with a job's own timeout (or in RQ's pipeline) is always sent and
    makes the next idle beat go out too, so a blocking dequeue never starts
    under a job's shorter expiry.
    """

    conductor_ctx: Context
    #: When the last idle beat (``worker_ttl``) was sent; None after a job's beat.
    _idle_beat_at: float | None = None

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None or timeout is not None:
            self._idle_beat_at = None
            super().heartbeat(timeout, pipeline=pipeline)
            return
        clock = time.monotonic()
        if self._idle_beat_at is not None and clock - self._idle_beat_at < HEARTBEAT_MIN_INTERVAL:
            return
        with self.connection.pipeline(transaction=False) as beat:
            super().heartbeat(None, pipeline=beat)
            beat.execute()
        self._idle_beat_at = clock

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ also writes the job's last heartbeat into its hash here: one
        # round trip for a hash deleted a moment later (a step job keeps no
        # result), or kept only to show a failure.
        job.ended_at = job.last_heartbeat = now()

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry,
                           execution: Execution) -> None:
        """A step job done: its bookkeeping in one transaction.

        RQ's own first WATCHes and reads the job's dependents (two round
        trips); the conductor's jobs have none, repeat never and keep no
        result.  Any other job goes the RQ way.
        """
        if (job.get_result_ttl(self.default_result_ttl) != 0 or job.repeats_left or job.has_rate_limit
                or job.func_name not in _STEP_JOBS):
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        assert job.started_at is not None and job.ended_at is not None
        with self.connection.pipeline() as pipeline:
            self.increment_successful_job_count(pipeline=pipeline)
            self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
            job.set_status(JobStatus.FINISHED, pipeline=pipeline)
            job.cleanup(0, pipeline=pipeline, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        paused = False
        while not may_take_jobs(self.conductor_ctx):
            if not paused:
                LOG.info("Conductor %s paused by worker_concurrency", self.conductor_ctx.name)
                paused = True
            if self._stop_requested:
                return None
            self.heartbeat()
            time.sleep(PAUSE_TICK)
        if paused:
            LOG.info("Conductor %s resumed", self.conductor_ctx.name)
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)


class Chores(threading.Thread):
    """Timers, heartbeat and sweep, until stopped."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(name="conductor-chores", daemon=True)
        self.ctx = ctx
        self.stopping = threading.Event()

    def run(self) -> None:
        settings = self.ctx.settings
        next_beat = next_sweep = next_watch = time.monotonic()
        observer = power_sync.Observer(self.ctx)
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                self.ctx.queue.pump_timers()
                if now >= next_beat:
                    if not conductors.heartbeat(self.ctx):
                        LOG.error("Conductor %s was taken over by another process; stopping", self.ctx.name)
                        self.stopping.set()
                        os.kill(os.getpid(), signal.SIGTERM)  # RQ's warm shutdown
                        return
                    next_beat = now + settings.heartbeat_interval
                if now >= next_watch:
                    # One conductor per interval (a Redis lock) fails overdue agent waits.
                    timed_out = watchdog.check(self.ctx)
                    if timed_out:
                        LOG.warning("Watchdog: %d wait(s) timed out", timed_out)
                    next_watch = now + settings.wait_check_interval
                if now >= next_sweep:
                    fixed = sweeper.sweep(self.ctx)
                    if any(fixed.values()):
                        LOG.info("Sweep: %s", fixed)
                    next_sweep = now + settings.sweep_interval
                observer.tick(now)
            except Exception:
                # A chore failing (database or Redis briefly away) must not
                # stop the others; it is retried on the next tick.
                LOG.exception("Conductor chore failed; retrying")
                self.stopping.wait(1.0)
            self.stopping.wait(TIMER_TICK)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def run(settings: Settings, burst: bool = False) -> None:
    """Run one conductor worker until SIGTERM/SIGINT (or the queue is empty, if ``burst``)."""
    # RQ blocks up to ~405 s in BLMOVE waiting for work.
    ctx = build_context(settings, redis_timeout=RQ_SOCKET_TIMEOUT)
    registration = conductors.register(ctx)
    ctx.name = registration.name
    LOG.info("Conductor %s starting (pid %s)", ctx.name, os.getpid())
    if registration.reclaimed:
        failed = sweeper.recover_conductor(ctx, ctx.name)
        if failed:
            LOG.warning("Conductor %s: failed %d request(s) left running by its previous life", ctx.name, failed)
    jobs.install(ctx)
    chores = Chores(ctx)
    chores.start()
    try:
        worker = ConductorWorker(
            # In this order: RQ takes from the first queue that has a job, so the
            # power state observer's batches wait while any request step does.
            [ctx.queue.queue, ctx.queue.sync_queue], connection=ctx.redis, name=f"{ctx.name}.{os.getpid()}",
            serializer=JSONSerializer
        )
        worker.conductor_ctx = ctx
        # RQ's work() sets its loggers to the level it is given, which undid
        # logs.setup()'s quieting of RQ: two INFO lines per job, about a tenth
        # of the workers' CPU in the 1000-reboot benchmark (docs/ipmi.md).
        rq_level = logging.getLevelName(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
        worker.work(burst=burst, logging_level=rq_level, with_scheduler=False)
    finally:
        chores.stop()
        conductors.unregister(ctx)
        LOG.info("Conductor %s stopped", ctx.name)
        ctx.close()
