"""The power state observer: read every idle node's power state, record drift, fence dead BMCs.

Every ``power_sync_interval`` seconds one conductor (whichever first takes
the round's Redis key, ``SET NX PX``) lists the nodes that have no
transition in flight and enqueues them in jobs of ``power_sync_batch``
nodes, which any conductor's workers run like request steps (so BMC calls
stay serial per worker process, and the batches run in parallel across
processes), from a queue of their own that a worker serves only when no
request step waits (``<ns>-sync``): the observer never delays a request.  For each node, under its reservation:

* the power state the BMC reports differs from the recorded one: the record
  is corrected, with a ``power.drift`` history entry and a
  ``node.power_state.changed`` callback event;
* the BMC failed: the node's ``power_sync_failures`` grows; at
  ``power_sync_max_failures`` in a row the node is put into maintenance
  with ``fault = "power failure"`` (history ``maintenance.fault``, a
  ``node.maintenance`` event);
* the BMC answered: the count is reset, and a node this observer put into
  maintenance (its ``fault`` is ``power failure``) is taken out again.

Nodes skipped: with a request in flight or reserved, in ``enroll`` or
``verifying`` (credentials not proven yet), and in maintenance for any
other reason than ours (an operator's, left alone).  A BMC busy with
another call is skipped for this round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
import sqlalchemy as sa
from rq.timeouts import BaseTimeoutException
from sqlalchemy.orm import Session

from conductor import database, drivers, keys
from conductor.callbacks import events
from conductor.context import Context
from conductor.core import history, reservations, states
from conductor.drivers.base import Driver, TryLater
from conductor.engine import timing
from conductor.engine.task import release as release_node
from conductor.exceptions import DriverError
from conductor.fsm.states import PowerState, ProvisionState
from conductor.models import Node

LOG = logging.getLogger(__name__)

#: The ``fault`` the observer sets, and the only one it clears.
POWER_FAILURE = "power failure"
#: The job function of one batch (imported by name in the workers; it calls :func:`run_batch`).
BATCH_FUNCTION = "conductor.engine.jobs.sync_power"
_SKIPPED_STATES = (ProvisionState.ENROLL, ProvisionState.VERIFYING)

_nodes = Node.__table__
_CANDIDATES = (
    sa.select(_nodes.c.id)
    .where(
        _nodes.c.active_request_id.is_(None),
        _nodes.c.reservation.is_(None),
        _nodes.c.provision_state.not_in([str(s) for s in _SKIPPED_STATES]),
        sa.or_(_nodes.c.maintenance.is_(False), _nodes.c.fault == POWER_FAILURE),
    )
    .order_by(_nodes.c.id)
)


def _round_key(ctx: Context) -> str:
    return keys.power_sync_round(ctx.settings.redis_namespace)


def _pending_key(ctx: Context) -> str:
    return keys.power_sync_pending(ctx.settings.redis_namespace)


def start_round(ctx: Context) -> int | None:
    """Start a round if no conductor started one in the last ``power_sync_interval``.

    Returns how many nodes were enqueued, or None if another conductor has
    the round.

    :raises redis.RedisError: Redis cannot be reached.
    """
    settings = ctx.settings
    interval_ms = max(1, int(settings.power_sync_interval * 1000))
    pending = int(ctx.redis.get(_pending_key(ctx)) or 0)
    if pending > 0:
        # Rounds never pile up in the work queue (dead BMCs make a round
        # slower than the interval): this one is skipped.
        LOG.info("Power sync: %d batch(es) of the previous round still pending; round skipped", pending)
        return None
    # The key is left to expire: it marks the round as taken for one interval.
    if not ctx.redis.set(_round_key(ctx), ctx.name or "?", nx=True, px=interval_ms):
        return None
    with ctx.db.engine.connect() as conn:
        node_ids = list(conn.scalars(_CANDIDATES))
    size = max(1, settings.power_sync_batch)
    batches = [node_ids[start : start + size] for start in range(0, len(node_ids), size)]
    if batches:
        # Each batch job decrements the count when it ends; the expiry (every
        # batch's timeout, one after the other) forgets a batch whose worker died.
        budget_ms = sum(int(settings.job_timeout) * len(b) for b in batches) * 1000
        pipe = ctx.redis.pipeline()
        pipe.incrby(_pending_key(ctx), len(batches))
        pipe.pexpire(_pending_key(ctx), budget_ms)
        pipe.execute()
    for batch in batches:
        ctx.queue.sync_queue.enqueue_call(
            BATCH_FUNCTION,
            args=(batch,),
            # A dead BMC costs every retry (~17 s by default): bound per node.
            timeout=int(settings.job_timeout) * len(batch),
            result_ttl=0,
            failure_ttl=3600,
            description=f"power sync of {len(batch)} node(s)",
        )
    if node_ids:
        LOG.info("Power sync: %d node(s) in %d batch(es)", len(node_ids), -(-len(node_ids) // size))
    return len(node_ids)


def run_batch(ctx: Context, node_ids: Sequence[int]) -> None:
    """Sync the power state of each node (see the module docstring): one batch job."""
    try:
        for node_id in node_ids:
            try:
                sync_node(ctx, node_id)
            except BaseTimeoutException:
                raise  # the job's time is up: the batch ends here
            except Exception:
                # One node's trouble (database hiccup, a driver bug) must not stop the batch.
                LOG.exception("Power sync of node %s failed", node_id)
    finally:
        try:
            if ctx.redis.decr(_pending_key(ctx)) <= 0:
                ctx.redis.delete(_pending_key(ctx))
        except redis.RedisError as exc:
            LOG.warning("Power sync: could not count the batch as done (%s); the count expires", exc)


class SyncTask:
    """What a driver's ``get_power_state`` needs from a task, without a request."""

    request = None

    def __init__(self, ctx: Context, session: Session, node: Node, driver: Driver) -> None:
        self.ctx = ctx
        self.session = session
        self.node = node
        self.driver = driver
        self.progress: dict[str, Any] = {}
        self.settings = ctx.settings
        self.conductor = ctx.name
        self.held: dict[Any, Any] = {}
        self.cleanups: list[Any] = []

    def update_internal_info(self, **changes: Any) -> None:
        """Merge ``changes`` into ``driver_internal_info`` (None removes a key)."""
        merged = dict(self.node.driver_internal_info or {})
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        self.node.driver_internal_info = merged


def sync_node(ctx: Context, node_id: int) -> str:
    """Read one node's power state and act on the outcome.

    Returns what happened: ``skipped`` (busy, or not idle any more),
    ``same``, ``drift``, ``failed``, ``maintenance`` (just put there) or
    ``recovered`` (just taken out).
    """
    with ctx.db.engine.begin() as conn:
        if conn.execute(reservations.RESERVE_IDLE, {"node_id": node_id, "me": ctx.name}).rowcount != 1:
            return "skipped"
    try:
        with ctx.db.session() as session:
            node = session.get(Node, node_id)
            if node is None:
                return "skipped"
            read_at = node.updated_at
            session.commit()  # nothing is held while the BMC talks
            task = SyncTask(ctx, session, node, timing.timed_driver(drivers.get(node.driver), session))
            state: PowerState | None = None
            error: str | None = None
            busy = False
            try:
                state = task.driver.power.get_power_state(task)  # type: ignore[arg-type]
            except TryLater:
                busy = True
            except DriverError as exc:
                error = exc.message
            finally:
                for cleanup in task.cleanups:
                    cleanup()
            with session.no_autoflush:
                params = {"node_id": node_id, "me": ctx.name, "read_at": read_at}
                still_ours = database.rowcount(session.execute(reservations.RELEASE_UNCHANGED, params)) == 1
            if not still_ours:
                # The node changed meanwhile (an operator's PATCH), or a sweep
                # declared this conductor dead: drop the findings.
                session.rollback()
                return "skipped"
            if busy:
                outcome = "skipped"
            elif error is not None:
                outcome = _failed(task, error)
            else:
                outcome = _answered(task, state)
            session.commit()
            return outcome
    finally:
        release_node(ctx, node_id)  # if the findings were not written (a no-op otherwise)


def _answered(task: SyncTask, state: PowerState | None) -> str:
    node, session = task.node, task.session
    outcome = "same"
    node.power_sync_failures = 0
    before = node.power_state
    if states.observe_power(session, node, state, None, task.conductor, drift=True):
        LOG.info("Node %s: power state drifted %s -> %s", node.uuid, before, state)
        outcome = "drift"
    if node.maintenance and node.fault == POWER_FAILURE:
        node.maintenance = False
        node.maintenance_reason = None
        node.fault = None
        history.record(session, node, "maintenance.cleared",
                       "The BMC answers again: out of maintenance (power failure).", conductor=task.conductor)
        events.emit(session, events.EventType.MAINTENANCE, node)
        LOG.info("Node %s: BMC answers again; out of maintenance", node.uuid)
        outcome = "recovered"
    return outcome


def _failed(task: SyncTask, message: str) -> str:
    node, session = task.node, task.session
    node.power_sync_failures = (node.power_sync_failures or 0) + 1
    limit = task.settings.power_sync_max_failures
    LOG.warning("Node %s: power state sync failed (%d in a row): %s", node.uuid, node.power_sync_failures, message)
    if node.maintenance or node.power_sync_failures < limit:
        return "failed"
    node.maintenance = True
    node.fault = POWER_FAILURE
    node.maintenance_reason = (f"Power state sync failed {node.power_sync_failures} times in a row; "
                               f"last error: {message}")
    node.last_error = message
    history.record(session, node, "maintenance.fault", f"Into maintenance: {node.maintenance_reason}",
                   conductor=task.conductor, severity="error")
    events.emit(session, events.EventType.MAINTENANCE, node)
    return "maintenance"


class Observer:
    """Starts rounds from a conductor's chores thread, every ``power_sync_interval`` (0: never)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.next_round = time.monotonic() + min(ctx.settings.power_sync_interval, 5.0)

    def tick(self, now: float) -> None:
        """Start a round when due (a failure is logged and retried next interval)."""
        interval = self.ctx.settings.power_sync_interval
        if interval <= 0 or now < self.next_round:
            return
        self.next_round = now + interval
        try:
            start_round(self.ctx)
        except (redis.RedisError, sa.exc.SQLAlchemyError) as exc:
            LOG.warning("Power sync round not started: %s", exc)
