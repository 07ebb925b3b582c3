"""Forgetting what is old: finished requests, node history, ended callback deliveries.

Every request and every step is recorded; without a retention the database
grows for ever (a thousand nodes with a few requests a day each leave
millions of rows a year).  The sweep (:mod:`conductor.engine.sweeper`)
deletes, at most every ``purge_interval`` seconds and in one conductor of
the deployment at a time (a Redis key):

* requests that finished (succeeded, failed, cancelled) more than
  ``request_retention`` seconds ago, together with their ended callback
  deliveries.  The cut-off is never sooner than ``idempotency_retention``,
  so a remembered ``Idempotency-Key`` always replays an existing request;
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

import redis
import sqlalchemy as sa

from conductor.callbacks.delivery import DELIVERED, FAILED
from conductor.context import Context
from conductor.fsm.states import FINAL_REQUEST_STATES
from conductor.models import CallbackDelivery, NodeHistory, Request, utcnow

LOG = logging.getLogger(__name__)
PURGE_BATCH = 500
PURGE_MAX_BATCHES = 20
_FINISHED = sorted(FINAL_REQUEST_STATES)
_ENDED_DELIVERY = [DELIVERED, FAILED]


def maybe_purge(ctx: Context) -> dict[str, int]:
    """Run :func:`purge` if no conductor did in the last ``purge_interval``; else count nothing."""
    none = {"requests_purged": 0, "deliveries_purged": 0, "history_purged": 0}
    settings = ctx.settings
    if settings.purge_interval <= 0 or (settings.request_retention <= 0 and settings.history_retention <= 0):
        return none
    try:
        if not ctx.redis.set(f"{settings.redis_namespace}:purge", ctx.name or "api", nx=True,
                             px=max(100, int(settings.purge_interval * 1000))):
            return none
    except redis.RedisError as exc:
        LOG.warning("Purge of old records skipped: Redis unavailable (%s)", exc)
        return none
    return purge(ctx)


def purge(ctx: Context, now: dt.datetime | None = None) -> dict[str, int]:
    """Delete the records older than their retention (see the module docstring); returns counts."""
    settings = ctx.settings
    now = now or utcnow()
    requests = deliveries = history = 0
    if settings.request_retention > 0:
        cutoff = now - dt.timedelta(seconds=max(settings.request_retention, settings.idempotency_retention))
        for purged, with_deliveries in _batches(ctx, lambda conn: _purge_requests(conn, cutoff)):
            requests += purged
            deliveries += with_deliveries
        ended = now - dt.timedelta(seconds=settings.request_retention)
        deliveries += sum(n for n, _ in _batches(ctx, lambda conn: (_purge_deliveries(conn, ended), 0)))
    if settings.history_retention > 0:
        old = now - dt.timedelta(seconds=settings.history_retention)
        history = sum(n for n, _ in _batches(ctx, lambda conn: (_purge_history(conn, old), 0)))
    if requests or deliveries or history:
        LOG.info("Purged old records: %d request(s), %d callback delivery(ies), %d history entry(ies)",
                 requests, deliveries, history)
    return {"requests_purged": requests, "deliveries_purged": deliveries, "history_purged": history}


def _batches(ctx: Context, one: Callable[[sa.Connection], tuple[int, int]]) -> list[tuple[int, int]]:
    """Run ``one`` batch per transaction until a batch is short (or the round's bound)."""
    done = []
    for _ in range(PURGE_MAX_BATCHES):
        with ctx.db.engine.begin() as conn:
            counts = one(conn)
        done.append(counts)
        if counts[0] < PURGE_BATCH:
            break
    return done


def _purge_requests(conn: sa.Connection, cutoff: dt.datetime) -> tuple[int, int]:
    ids = list(conn.scalars(
        sa.select(Request.id)
        .where(Request.state.in_(_FINISHED), Request.finished_at < cutoff)
        .order_by(Request.finished_at)
        .limit(PURGE_BATCH)
    ))
    if not ids:
        return 0, 0
    # Idempotency records of these requests go with them (ON DELETE CASCADE);
    # none is still unexpired (see the cut-off).  A delivery still pending
    # keeps its row: it does not need the request (its body is fixed).
    deliveries = conn.execute(
        sa.delete(CallbackDelivery).where(CallbackDelivery.request_id.in_(ids),
                                          CallbackDelivery.state.in_(_ENDED_DELIVERY))
    ).rowcount
    conn.execute(sa.delete(Request).where(Request.id.in_(ids)))
    return len(ids), deliveries


def _purge_deliveries(conn: sa.Connection, cutoff: dt.datetime) -> int:
    ids = (
        sa.select(CallbackDelivery.id)
        .where(CallbackDelivery.state.in_(_ENDED_DELIVERY), CallbackDelivery.finished_at < cutoff)
        .order_by(CallbackDelivery.finished_at)
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
