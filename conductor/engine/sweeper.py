"""The periodic sweep that keeps the system honest after crashes.

Every conductor sweeps (all operations are conditional, so concurrent
sweeps are harmless):

1. conductors whose heartbeat is older than ``heartbeat_timeout`` are
   marked offline;
2. reservations held by offline or unknown conductors are released;
3. requests that an offline conductor was in the middle of are failed
   (what the BMC did is unknown; a busy provision state fails through the
   state machine) - RQ alone would leave such a job ``started`` until its
   own cleanup, every 600 s;
4. queued requests older than ``requeue_after`` whose job is no longer in
   Redis are enqueued again, and sleeping requests whose timer is overdue
   and gone get a new one (Redis lost them: the database is the truth);
5. expired ``Idempotency-Key`` records are forgotten;
6. records older than their retention (finished requests, ended callback
   deliveries, node history) are deleted, by one conductor at a time
   (:mod:`conductor.engine.retention`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

import redis
import sqlalchemy as sa

from conductor import database, keys, workqueue
from conductor.callbacks import events
from conductor.context import Context
from conductor.core import reservations
from conductor.engine import conductors, retention
from conductor.engine.runner import fail_request
from conductor.fsm.states import RequestState
from conductor.models import ConductorRecord, Node, Request, utcnow
from conductor.settings import Settings
from conductor.throttle import idempotency

LOG = logging.getLogger(__name__)
#: At most this many queued (and as many sleeping) requests are checked per sweep.
SWEEP_BATCH = 1000


def recover_conductor(ctx: Context, name: str) -> int:
    """Clean up after conductor ``name`` (dead, or this one's previous life).

    Returns how many requests were failed.
    """
    with ctx.db.begin() as session:
        reservations.release_all_of(session, name)
        stuck = list(
            session.scalars(
                sa.select(Request.id).where(
                    Request.conductor == name, Request.state == RequestState.RUNNING
                )
            )
        )
    failed = 0
    _take_over_jobs(ctx, name)
    for request_id in stuck:
        LOG.warning("Request %s was being run by conductor %s, which stopped; failing it", request_id, name)
        failed += fail_request(
            ctx,
            request_id,
            f"Conductor {name} stopped while running this request; its outcome on the "
            "hardware is unknown.",
            owner=name,
        )
    return failed


def _take_over_jobs(ctx: Context, name: str) -> None:
    """Run again, on any conductor, the steps the dead conductor ``name`` had taken from the queue.

    Its RQ worker died holding a job (the first step of a request, or a
    batch of due steps): without this, the sweep would wait ``requeue_after``
    for a first step, and minutes (:data:`conductor.workqueue.PUMPED_MEMORY`)
    for a batch, before running them again.  Only requests still waiting
    for that step are re-armed: queued ones enqueued again, sleeping ones
    given a timer at their due time.  The ones it was running in the
    middle of are failed by :func:`recover_conductor`.
    """
    cutoff = utcnow() - dt.timedelta(seconds=ctx.settings.heartbeat_timeout)
    with ctx.db.session() as session:
        # A process that holds the name now (a restart took the slot back): its worker is alive.
        holder = session.scalar(sa.select(ConductorRecord.pid).where(
            ConductorRecord.name == name, ConductorRecord.online.is_(True), ConductorRecord.heartbeat_at >= cutoff))
    try:
        orphans = ctx.queue.orphaned_by(name, keep_pid=holder)
    except redis.RedisError as exc:
        LOG.error("Could not read the jobs of conductor %s from Redis: %s", name, exc)
        return
    if not orphans:
        return
    with ctx.db.session() as session:
        rows = session.execute(
            sa.select(Request.id, Request.state, Request.conductor, Request.wake_at).where(Request.id.in_(orphans))
        ).all()
    now = utcnow()
    handed = 0
    for request_id, state, conductor, wake_at in rows:
        try:
            if state == RequestState.QUEUED:
                ctx.queue.cancel(request_id)
                ctx.queue.enqueue_request(request_id)
            elif state == RequestState.RUNNING and conductor is None:
                if wake_at is not None and wake_at.tzinfo is None:
                    wake_at = wake_at.replace(tzinfo=dt.UTC)  # SQLite keeps no zone
                due = (wake_at - now).total_seconds() if wake_at is not None else 0.0
                ctx.queue.rearm(request_id, due)
            else:
                continue
            handed += 1
        except redis.RedisError as exc:  # the sweep's lost-job check gets it later
            LOG.error("Could not re-arm request %s of conductor %s: %s", request_id, name, exc)
    if handed:
        LOG.warning("Conductor %s stopped holding the steps of %d request(s): queued again", name, handed)


def sweep(ctx: Context) -> dict[str, int]:
    """One sweep; returns counts of what it fixed.

    Every step is conditional, so a transient database error runs the whole
    sweep again (a few times) rather than leaving it for the next interval.
    """
    return database.retrying(lambda: _sweep(ctx), "Sweep")


def _sweep(ctx: Context) -> dict[str, int]:
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=ctx.settings.heartbeat_timeout)
    with ctx.db.begin() as session:
        gone = session.execute(
            sa.update(ConductorRecord)
            .where(ConductorRecord.online.is_(True), ConductorRecord.heartbeat_at < cutoff)
            .values(online=False)
            .returning(ConductorRecord.name, ConductorRecord.hostname, ConductorRecord.pid)
        ).all()
        for name, hostname, pid in gone:
            events.announce(session, events.EventType.CONDUCTOR_DOWN,
                            conductor=conductors.described(name, hostname, pid), reason="heartbeat lost")
        alive = set(
            session.scalars(
                sa.select(ConductorRecord.name).where(
                    ConductorRecord.online.is_(True), ConductorRecord.heartbeat_at >= cutoff
                )
            )
        )
        holders = {
            name
            for name in session.scalars(sa.select(Node.reservation).where(Node.reservation.is_not(None)).distinct())
            if name is not None
        }
        runners = {
            name for name in session.scalars(
                sa.select(Request.conductor)
                .where(Request.conductor.is_not(None), Request.state == RequestState.RUNNING)
                .distinct()
            )
            if name is not None
        }
    # The conductors just declared dead too: one may hold nothing in the
    # database but a job it had taken from the queue.
    failed = sum(recover_conductor(ctx, name) for name in (holders | runners | {row[0] for row in gone}) - alive)
    forgotten = idempotency.purge_expired(ctx.db)
    return {"failed": failed, **_requeue_lost(ctx, now, alive), "keys_forgotten": forgotten,
            **retention.maybe_purge(ctx)}


def _requeue_lost(ctx: Context, now: dt.datetime, alive: set[str]) -> dict[str, int]:
    # One conductor per sweep interval does this (each would enqueue the
    # same lost requests again, multiplying the queue's length).
    if not conductors.my_turn(ctx, keys.Chore.REQUEUE_SWEEP, 0.9 * ctx.settings.sweep_interval):
        return {"requeued": 0, "rearmed": 0, "unclaimed": 0}
    grace = dt.timedelta(seconds=ctx.settings.requeue_after)
    unclaimed = _release_abandoned_claims(ctx, now - dt.timedelta(seconds=claim_lifetime(ctx.settings)), alive)
    with ctx.db.session() as session:
        queued = list(
            session.scalars(
                sa.select(Request.id)
                .where(Request.state == RequestState.QUEUED, Request.created_at < now - grace)
                .order_by(Request.created_at)
                .limit(SWEEP_BATCH)
            )
        )
        sleeping = list(
            session.scalars(
                sa.select(Request.id)
                .where(
                    Request.state == RequestState.RUNNING,
                    Request.conductor.is_(None),
                    Request.wake_at < now - grace,
                )
                .order_by(Request.wake_at)
                .limit(SWEEP_BATCH)
            )
        )
    requeued = rearmed = 0
    try:
        pending = ctx.queue.pending(queued + sleeping)
        for request_id in queued:
            if request_id not in pending:
                LOG.warning("Request %s is queued but its job is gone; enqueueing it again", request_id)
                ctx.queue.cancel(request_id)
                ctx.queue.enqueue_request(request_id)
                requeued += 1
        for request_id in sleeping:
            if request_id not in pending:
                LOG.warning("Request %s is overdue and its timer is gone; re-arming it", request_id)
                ctx.queue.schedule(request_id, 0)
                rearmed += 1
    except redis.RedisError as exc:
        LOG.error("Sweep could not reach Redis: %s", exc)
    return {"requeued": requeued, "rearmed": rearmed, "unclaimed": unclaimed}


def claim_lifetime(settings: Settings) -> float:
    """How long (s) a live conductor's claim may stay untouched before the sweep releases it.

    A step runs in a job of up to ``BATCH_SIZE`` steps whose RQ timeout is
    ``job_timeout`` per step: one hung step may last that long, not merely
    ``job_timeout``.
    """
    return settings.job_timeout * workqueue.BATCH_SIZE + settings.requeue_after


def _release_abandoned_claims(ctx: Context, cutoff: dt.datetime, alive: set[str]) -> int:
    """Give back the claims live conductors left on requests they no longer run.

    A step whose database stayed away longer than its retries leaves its
    claim (and node reservation) behind when it cannot give them back; no
    step lasts longer than its job's timeout, so a claim untouched for
    longer than :func:`claim_lifetime` is abandoned.  Released conditionally on the row being
    unchanged, then the request's step is due at once (sleeping, the timer
    re-arm below or its own timer picks it up).
    """
    requests_t = Request.__table__
    released: list[str] = []
    with ctx.db.engine.begin() as conn:
        rows = conn.execute(
            sa.select(requests_t.c.id, requests_t.c.conductor, requests_t.c.updated_at, requests_t.c.node_id)
            .where(requests_t.c.state == RequestState.RUNNING, requests_t.c.conductor.in_(sorted(alive)),
                   requests_t.c.updated_at < cutoff)
            .limit(SWEEP_BATCH)
        ).all()
        for row in rows:
            taken = conn.execute(
                sa.update(requests_t)
                .where(requests_t.c.id == row.id, requests_t.c.conductor == row.conductor,
                       requests_t.c.updated_at == row.updated_at, requests_t.c.state == RequestState.RUNNING)
                .values(conductor=None, wake_at=row.updated_at, updated_at=utcnow())
            ).rowcount
            if taken != 1:
                continue
            reservations.release_stale(conn, row.node_id, row.conductor, cutoff)
            LOG.warning("Request %s: conductor %s left its claim untouched since %s; released",
                        row.id, row.conductor, row.updated_at)
            released.append(row.id)
    with contextlib.suppress(redis.RedisError):  # (else the sleeping re-arm does it)
        for request_id in released:
            ctx.queue.schedule(request_id, 0)
    return len(released)
