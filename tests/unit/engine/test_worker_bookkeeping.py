"""The conductor's RQ worker: its trimmed per-job bookkeeping leaves Redis as RQ's own would."""

from __future__ import annotations

import sqlalchemy as sa
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from conductor.engine import jobs
from conductor.engine.worker import ConductorWorker
from conductor.models import Request
from conductor.service import nodes, submit


def _worker(conductor_ctx) -> ConductorWorker:  # type: ignore[no-untyped-def]
    jobs.install(conductor_ctx)
    worker = ConductorWorker([conductor_ctx.queue.queue], connection=conductor_ctx.redis, name="test-worker",
                             serializer=conductor_ctx.queue.queue.serializer)
    worker.conductor_ctx = conductor_ctx
    return worker


def test_a_step_job_done_leaves_no_job_execution_or_registry_entry(ctx, conductor_ctx) -> None:
    with ctx.db.session() as session:
        nodes.create(session, {"name": "n1", "driver": "fake"})
        session.commit()
    request_id = submit.submit_power(ctx, "n1", "power on").request.id
    conductor_ctx.name = "host-w0"
    redis = conductor_ctx.redis
    queue = conductor_ctx.queue.queue
    worker = _worker(conductor_ctx)
    worker.work(burst=True)
    with ctx.db.session() as session:
        assert session.scalar(sa.select(Request.state).where(Request.id == request_id)) == "succeeded"
    assert not redis.exists(Job.key_for(request_id))  # no result kept
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    assert FailedJobRegistry(queue=queue).get_job_ids() == []
    assert worker.executions == {}


def test_another_job_goes_the_rq_way(conductor_ctx) -> None:
    queue = conductor_ctx.queue.queue
    job = queue.enqueue_call("os.getpid", result_ttl=60)
    worker = _worker(conductor_ctx)
    worker.work(burst=True)
    job.refresh()
    assert job.get_status() == "finished" and job.return_value() is not None
    assert conductor_ctx.redis.ttl(job.key) > 0


def test_idle_heartbeats_are_spaced_but_never_leave_a_jobs_short_expiry(conductor_ctx) -> None:
    redis = conductor_ctx.redis
    worker = _worker(conductor_ctx)
    worker.register_birth()
    try:
        worker.heartbeat()
        assert redis.ttl(worker.key) > 400  # worker_ttl + 60
        redis.expire(worker.key, 50)
        worker.heartbeat()  # the same expiry again, a moment later: not sent
        assert redis.ttl(worker.key) <= 50
        worker.heartbeat(90)  # a job's beat: always sent ...
        assert 50 < redis.ttl(worker.key) <= 90
        worker.heartbeat()  # ... and the next idle beat goes out too
        assert redis.ttl(worker.key) > 400
    finally:
        worker.register_death()
