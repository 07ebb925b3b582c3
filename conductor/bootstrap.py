"""Wiring at the top: build a process's :class:`~conductor.context.Context`.

The API (``create_app``), the conductor workers and the callback workers
each build theirs here, once.  This is where the pieces that do not know
each other are connected: a transaction that emitted webhook deliveries
wakes the callback pumps when it commits, its events go to the event
stream's log once it committed, and what a transaction stashed for the
metrics is written when it commits.  Nothing below the entry
points imports this module (``tests/unit/test_layers.py`` checks).
"""

from __future__ import annotations

from conductor import metrics
from conductor.callbacks.outbox import CallbackQueue, install_wakeup
from conductor.context import Context
from conductor.database import Database
from conductor.eventlog.log import EventLog
from conductor.eventlog.publisher import install_publisher
from conductor.settings import Settings
from conductor.workqueue import WorkQueue, connect


def build_context(settings: Settings, name: str | None = None, redis_timeout: float = 10.0) -> Context:
    """Connect to what ``settings`` name (connections open lazily) and wire the hooks.

    ``name``: the conductor's name in a worker process (None in the API).
    """
    connection = connect(settings, redis_timeout)
    db = Database.from_settings(settings)
    callbacks = CallbackQueue(connection, settings)
    install_wakeup(db, callbacks)
    events = EventLog(connection, settings)
    install_publisher(db, events)
    ctx = Context(
        settings=settings,
        db=db,
        redis=connection,
        queue=WorkQueue(connection, settings),
        callbacks=callbacks,
        events=events,
        name=name,
    )
    metrics.attach(ctx)
    return ctx
