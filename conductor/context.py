"""The per-process bundle of settings and connections, built once and passed in."""

from __future__ import annotations

import dataclasses
import socket

import redis

from conductor.database import Database
from conductor.settings import Settings
from conductor.workqueue import WorkQueue, connect


@dataclasses.dataclass
class Context:
    """Settings, database, Redis and work queue of one process.

    ``name`` is the conductor name of a worker process (None in the API).
    """

    settings: Settings
    db: Database
    redis: redis.Redis
    queue: WorkQueue
    name: str | None = None
    hostname: str = dataclasses.field(default_factory=socket.gethostname)

    @classmethod
    def build(
        cls, settings: Settings, name: str | None = None, redis_timeout: float = 10.0
    ) -> Context:
        """Connect to what ``settings`` name (connections open lazily)."""
        connection = connect(settings, redis_timeout)
        return cls(
            settings=settings,
            db=Database.from_settings(settings),
            redis=connection,
            queue=WorkQueue(connection, settings),
            name=name,
        )

    def close(self) -> None:
        """Release the database pool and the Redis connections."""
        self.db.dispose()
        self.redis.close()
