"""The per-process bundle of settings and connections, built once and passed in.

Only :mod:`conductor.bootstrap` builds one (it wires the pieces together);
everything else receives it.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import TYPE_CHECKING, Any

import redis

from conductor.database import Database
from conductor.settings import Settings
from conductor.workqueue import WorkQueue

if TYPE_CHECKING:
    from conductor.callbacks.outbox import CallbackQueue
    from conductor.eventlog.log import EventLog


@dataclasses.dataclass
class Context:
    """Settings, database, Redis, work queue, callbacks queue and event log of one process.

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
    events: EventLog
    name: str | None = None
    hostname: str = dataclasses.field(default_factory=socket.gethostname)
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    def close(self) -> None:
        """Release the database pool and the Redis connections."""
        self.db.dispose()
        self.redis.close()
