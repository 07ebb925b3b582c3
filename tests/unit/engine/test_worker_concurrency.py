"""``worker_concurrency``: workers in slots at or above it take no job until it is raised."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from conductor.engine import jobs
from conductor.engine.worker import ConductorWorker, may_take_jobs, slot_of
from conductor.models import Request
from conductor.service import nodes, submit
from conductor.throttle import settings as throttle_settings


def test_slot_of_reads_the_conductor_name() -> None:
    assert slot_of("host-w0") == 0 and slot_of("rack-1-w12") == 12
    assert slot_of("odd") == 0 and slot_of(None) == 0


def test_may_take_jobs_follows_the_knob(ctx) -> None:
    ctx.name = "host-w1"
    assert may_take_jobs(ctx)
    throttle_settings.update(ctx, {"worker_concurrency": 1})
    assert not may_take_jobs(ctx)
    throttle_settings.update(ctx, {"worker_concurrency": 2})
    assert may_take_jobs(ctx)


def test_a_paused_worker_takes_the_job_once_the_knob_is_raised(ctx, conductor_ctx) -> None:
    with ctx.db.session() as session:
        nodes.create(session, {"name": "n1", "driver": "fake"})
        session.commit()
    request_id = submit.submit_power(ctx, "n1", "power on").request.id
    conductor_ctx.name = "host-w1"
    throttle_settings.update(ctx, {"worker_concurrency": 1})
    seen_while_paused: list[str] = []

    def raise_knob() -> None:
        time.sleep(1.0)  # several pause ticks, and the knob's cache TTL, go by
        with ctx.db.session() as session:
            seen_while_paused.append(session.scalar(sa.select(Request.state).where(Request.id == request_id)))
        throttle_settings.update(ctx, {"worker_concurrency": 0})

    jobs.install(conductor_ctx)
    worker = ConductorWorker([conductor_ctx.queue.queue], connection=conductor_ctx.redis, name="test-worker",
                             serializer=conductor_ctx.queue.queue.serializer)
    worker.conductor_ctx = conductor_ctx
    flipper = threading.Thread(target=raise_knob)
    flipper.start()
    worker.work(burst=True)  # RQ installs signal handlers: the main thread must run it
    flipper.join()
    assert seen_while_paused == ["queued"]
    with ctx.db.session() as session:
        assert session.scalar(sa.select(Request.state).where(Request.id == request_id)) in ("running", "succeeded")


def test_a_worker_keeps_rq_quiet_at_info(settings) -> None:
    """RQ's work() would set its loggers to INFO (two lines per job); the worker keeps them at WARNING."""
    import logging

    from conductor import logs
    from conductor.engine import worker

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in ("rq.worker", "rq.job")})
    try:
        logs.setup("INFO")
        worker.run(settings, burst=True)
        assert logging.getLogger("rq.worker").level >= logging.WARNING
        assert logging.getLogger("rq.job").level >= logging.WARNING
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
