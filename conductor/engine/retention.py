"""Forgetting what is old: finished requests, node history, ended callback deliveries.

Every request and every step is recorded; without a retention the database
grows for ever (a thousand nodes with a few requests a day each leave
millions of rows a year).  The sweep (:mod:`conductor.engine.sweeper`)
deletes, at most every ``purge_interval`` seconds and in one conductor of
the deployment at a time (a Redis key):

* requests that finished (succeeded, failed, cancelled) more than
  ``request_retention`` seconds ago.  The cut-off is never sooner than
  ``idempotency_retention``, so a remembered ``Idempotency-Key`` always
  replays an existing request;
* callback deliveries (subscriptions' too) that ended (delivered or
  failed) more than ``request_retention`` ago.  A pending delivery is never
  deleted;
* node history entries older than ``history_retention``.

A retention of 0 keeps those records for ever.  Deletes run in batches of
:data:`PURGE_BATCH` rows, one transaction each, so that a large backlog
(a retention shortened, a purge switched on late) never holds long locks;
a round stops after :data:`PURGE_MAX_BATCHES` batches of each kind and the
next round goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import sqlalchemy as sa

from conductor import keys
from conductor.callbacks.delivery import DELIVERED, FAILED
from conductor.context import Context
from conductor.engine import conductors
from conductor.fsm.states import FINAL_REQUEST_STATES
from conductor.models import CallbackDelivery, NodeHistory, Request, utcnow

LOG = logging.getLogger(__name__)
PURGE_BATCH = 500
PURGE_MAX_BATCHES = 20
_FINISHED = sorted(FINAL_REQUEST_STATES)
_ENDED_DELIVERY = [DELIVERED, FAILED]


def maybe_purge(ctx: Context) -> dict[str, int]:
    """Run :func:`purge` if no conductor did in the last ``purge_interval``; else count nothing."""
    settings = ctx.settings
    if (settings.purge_interval <= 0 or (settings.request_retention <= 0 and settings.history_retention <= 0)
            or not conductors.my_turn(ctx, keys.Chore.PURGE, settings.purge_interval)):
        return {"requests_purged": 0, "deliveries_purged": 0, "history_purged": 0}
    return purge(ctx)


def purge(ctx: Context, now: dt.datetime | None = None) -> dict[str, int]:
    """Delete the records older than their retention (see the module docstring); returns counts."""
    settings = ctx.settings
    now = now or utcnow()
    requests = deliveries = history = 0
    if settings.request_retention > 0:
        finished = now - dt.timedelta(seconds=max(settings.request_retention, settings.idempotency_retention))
        requests = _in_batches(ctx, lambda conn: _purge_requests(conn, finished))
        ended = now - dt.timedelta(seconds=settings.request_retention)
        deliveries = _in_batches(ctx, lambda conn: _purge_deliveries(conn, ended))
    if settings.history_retention > 0:
        old = now - dt.timedelta(seconds=settings.history_retention)
        history = _in_batches(ctx, lambda conn: _purge_history(conn, old))
    if requests or deliveries or history:
        LOG.info("Purged old records: %d request(s), %d callback delivery(ies), %d history entry(ies)",
                 requests, deliveries, history)
    return {"requests_purged": requests, "deliveries_purged": deliveries, "history_purged": history}


def _in_batches(ctx: Context, one: Callable[[sa.Connection], int]) -> int:
    """Run ``one`` batch per transaction until a batch is short (or the round's bound); rows deleted."""
    total = 0
    for _ in range(PURGE_MAX_BATCHES):
        with ctx.db.engine.begin() as conn:
            deleted = one(conn)
        total += deleted
        if deleted < PURGE_BATCH:
            break
    return total


def _purge_requests(conn: sa.Connection, cutoff: dt.datetime) -> int:
    # Idempotency records of these requests go with them (ON DELETE CASCADE);
    # none is still unexpired (see the cut-off).  Their deliveries have no
    # foreign key and go by their own age (:func:`_purge_deliveries`).
    # No ORDER BY: every row past the cut-off goes, in whatever order the
    # index (state, finished_at) yields them, so a batch reads ~PURGE_BATCH
    # index entries.  Sorting by finished_at read every finished request
    # past the cut-off (all of a backlog) for each batch.
    ids = (
        sa.select(Request.id)
        .where(Request.state.in_(_FINISHED), Request.finished_at < cutoff)
        .limit(PURGE_BATCH)
        .scalar_subquery()
    )
    return int(conn.execute(sa.delete(Request).where(Request.id.in_(ids))).rowcount)


def _purge_deliveries(conn: sa.Connection, cutoff: dt.datetime) -> int:
    ids = (
        sa.select(CallbackDelivery.id)
        .where(CallbackDelivery.state.in_(_ENDED_DELIVERY), CallbackDelivery.finished_at < cutoff)
        .limit(PURGE_BATCH)
        .scalar_subquery()
    )
    return int(conn.execute(sa.delete(CallbackDelivery).where(CallbackDelivery.id.in_(ids))).rowcount)


def _purge_history(conn: sa.Connection, cutoff: dt.datetime) -> int:
    ids = (
        sa.select(NodeHistory.id)
        .where(NodeHistory.created_at < cutoff)
        .order_by(NodeHistory.created_at)
        .limit(PURGE_BATCH)
        .scalar_subquery()
    )
    return int(conn.execute(sa.delete(NodeHistory).where(NodeHistory.id.in_(ids))).rowcount)
