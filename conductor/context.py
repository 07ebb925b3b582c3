"""The per-process bundle of settings and connections, built once and passed in."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import redis

from conductor.callbacks.outbox import CallbackQueue, install_wakeup
from conductor.database import Database
from conductor.settings import Settings
from conductor.workqueue import WorkQueue, connect


@dataclasses.dataclass
class Context:
    """Settings, database, Redis, work queue and callbacks queue of one process.

    ``name`` is the conductor name of a worker process (None in the API),
    or the lease holder name of a callback worker.  ``cache`` holds
    short-lived per-process copies of shared state (throttle settings, token
    look-ups), owned by the modules that fill it.
    """

    settings: Settings
    db: Database
    redis: redis.Redis
    queue: WorkQueue
    callbacks: CallbackQueue
    name: str | None = None
    hostname: str = dataclasses.field(default_factory=socket.gethostname)
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(
        cls, settings: Settings, name: str | None = None, redis_timeout: float = 10.0
    ) -> Context:
        """Connect to what ``settings`` name (connections open lazily).

        A transaction of this context's database that emitted callback
        deliveries wakes the callback pumps when it commits.
        """
        from conductor import metrics

        connection = connect(settings, redis_timeout)
        db = Database.from_settings(settings)
        callbacks = CallbackQueue(connection, settings)
        install_wakeup(db, callbacks)
        ctx = cls(
            settings=settings,
            db=db,
            redis=connection,
            queue=WorkQueue(connection, settings),
            callbacks=callbacks,
            name=name,
        )
        metrics.attach(ctx)
        return ctx

    def close(self) -> None:
        """Release the database pool and the Redis connections."""
        self.db.dispose()
        self.redis.close()
