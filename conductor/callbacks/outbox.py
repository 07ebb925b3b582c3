"""From the outbox table to the ``<ns>-callbacks`` queue.

The database is the truth; the queue only says *which delivery to try
next*.  The pump, in every callback worker, queues the deliveries that
are due: new ones, retries whose time came, deliveries whose earlier
sibling (same subscription, same node) is finally done, and work whose
queue entry or worker was lost.  It runs every ``callback_poll_interval``
seconds, and at once when woken: a transaction that emitted deliveries
wakes the pumps when it commits (one cheap Redis command on the
conductor's path; RQ jobs are built in the callback workers).  A lost
wake-up only costs latency.

A delivery is queued at most once per ``requeue_after`` by the pumps (the
``enqueued_at`` mark, set by a conditional write); duplicates are harmless
anyway, since attempting a delivery starts with a conditional claim (see
``delivery.claim``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

import redis
import sqlalchemy as sa
from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy.orm import Session, aliased

from conductor import database, keys
from conductor.callbacks.events import PENDING_KEY
from conductor.database import Database
from conductor.models import CallbackDelivery, utcnow
from conductor.procs import pid_alive
from conductor.settings import Settings

LOG = logging.getLogger(__name__)

#: The job function of the callbacks queue.
DELIVER_FUNCTION = "conductor.callbacks.jobs.deliver"


def job_timeout(settings: Settings) -> int:
    """The RQ timeout of one delivery attempt (RQ kills the job after it)."""
    return int(4 * settings.callback_timeout + 30)


class CallbackQueue:
    """The RQ queue callback workers take deliveries from, and the pumps' wake-up."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        namespace = settings.redis_namespace
        self.queue = Queue(keys.callback_queue(namespace), connection=connection, serializer=JSONSerializer)
        self.wake_key = keys.callback_wake(namespace)
        # Longer than any one attempt may take (connect + reads + DNS).
        self.job_timeout = job_timeout(settings)

    def wake(self) -> None:
        """Tell a pump that deliveries were emitted (one round trip).

        :raises redis.RedisError: Redis cannot be reached.
        """
        pipe = self.connection.pipeline(transaction=False)
        pipe.lpush(self.wake_key, 1)
        pipe.ltrim(self.wake_key, 0, 0)  # many wake-ups are one
        pipe.execute()

    def sleep(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a wake-up; whether one came."""
        return self.connection.blpop([self.wake_key], timeout=timeout) is not None

    def enqueue(self, delivery_ids: Sequence[int]) -> None:
        """Queue one job per delivery.

        :raises redis.RedisError: Redis cannot be reached.
        """
        if not delivery_ids:
            return
        self.queue.enqueue_many(
            [
                Queue.prepare_data(
                    DELIVER_FUNCTION,
                    args=(int(i),),
                    timeout=self.job_timeout,
                    result_ttl=0,
                    failure_ttl=86400,
                    description=f"callback delivery {i}",
                )
                for i in delivery_ids
            ]
        )

    def depth(self) -> int:
        """How many jobs wait in the queue."""
        return int(self.queue.count)


def install_wakeup(db: Database, queue: CallbackQueue) -> None:
    """Wake the pumps whenever a transaction of ``db`` that emitted deliveries commits."""

    def after_commit(session: Session) -> None:
        if not session.info.pop(PENDING_KEY, None):
            return
        try:
            queue.wake()
        except Exception as exc:
            # The commit happened and must not look failed to the caller;
            # the pumps find the deliveries on their next round anyway.
            LOG.warning("Could not wake the callback pumps (%s); deliveries wait for their next round", exc)

    def after_rollback(session: Session) -> None:
        session.info.pop(PENDING_KEY, None)

    db.listen("after_commit", after_commit)
    db.listen("after_soft_rollback", lambda session, _previous: after_rollback(session))


def holder_name(hostname: str | None = None, pid: int | None = None) -> str:
    """The lease holder name of a process: ``<host>:<pid>``."""
    return f"{hostname or socket.gethostname()}:{pid or os.getpid()}"


def eligible(now: dt.datetime) -> list[Any]:
    """WHERE clauses of a delivery that may be attempted at ``now`` (bar its due time).

    Pending, not leased by a live attempt, and no earlier delivery with the
    same ordering key (one subscription, one node) is still pending.
    """
    earlier = aliased(CallbackDelivery)
    return [
        CallbackDelivery.state == "pending",
        sa.or_(CallbackDelivery.lease_until.is_(None), CallbackDelivery.lease_until < now),
        ~sa.exists().where(
            earlier.order_key == CallbackDelivery.order_key,
            earlier.id < CallbackDelivery.id,
            earlier.state == "pending",
        ),
    ]


def due(session: Session, now: dt.datetime, limit: int, requeue_after: float | None = None) -> list[int]:
    """Ids of deliveries that may be attempted now, oldest first.

    With ``requeue_after``, only those not queued in the last
    ``requeue_after`` seconds (what a pump should queue).
    """
    query = sa.select(CallbackDelivery.id).where(CallbackDelivery.next_at <= now, *eligible(now))
    if requeue_after is not None:
        query = query.where(
            sa.or_(
                CallbackDelivery.enqueued_at.is_(None),
                CallbackDelivery.enqueued_at < now - dt.timedelta(seconds=requeue_after),
            )
        )
    return list(session.scalars(query.order_by(CallbackDelivery.id).limit(limit)))


def pump(db: Database, queue: CallbackQueue, requeue_after: float, limit: int = 200) -> int:
    """Queue the deliveries that are due; returns how many were queued.

    Safe in every callback worker at once: each delivery is marked queued
    by a conditional write, and only the pump that marked it queues it.
    """
    now = utcnow()
    with db.session() as session:
        candidates = due(session, now, limit, requeue_after)
    if not candidates:
        return 0
    stale = now - dt.timedelta(seconds=requeue_after)
    marked = []
    with db.begin() as session:
        for delivery_id in candidates:
            taken = database.rowcount(session.execute(
                sa.update(CallbackDelivery)
                .where(
                    CallbackDelivery.id == delivery_id,
                    CallbackDelivery.state == "pending",
                    sa.or_(CallbackDelivery.enqueued_at.is_(None), CallbackDelivery.enqueued_at < stale),
                )
                .values(enqueued_at=now)
            ))
            if taken == 1:
                marked.append(delivery_id)
    # If Redis fails here, the marks hold these back for requeue_after.
    queue.enqueue(marked)
    return len(marked)


def release_dead_leases(db: Database, hostname: str | None = None) -> int:
    """Free the leases held by processes of this host that no longer exist.

    A callback worker killed in the middle of a delivery leaves its lease;
    this lets the delivery be tried again at once rather than when the
    lease runs out.  Returns how many leases were freed.
    """
    prefix = f"{hostname or socket.gethostname()}:"
    with db.session() as session:
        holders = set(
            session.scalars(
                sa.select(CallbackDelivery.claimed_by)
                .where(CallbackDelivery.state == "pending",
                       CallbackDelivery.claimed_by.startswith(prefix, autoescape=True))
                .distinct()
            )
        )
    dead = [h for h in holders if h and h[len(prefix):].isdigit() and not pid_alive(int(h[len(prefix):]))]
    if not dead:
        return 0
    with db.begin() as session:
        freed = database.rowcount(session.execute(
            sa.update(CallbackDelivery)
            .where(CallbackDelivery.claimed_by.in_(dead), CallbackDelivery.state == "pending")
            .values(lease_until=None, claimed_by=None, enqueued_at=None)
        ))
    LOG.warning("Freed %d callback delivery lease(s) of dead worker(s) %s", freed, ", ".join(sorted(dead)))
    return int(freed)
