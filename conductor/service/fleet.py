"""The deployment's figures read from the database for ``GET /metrics/fleet``: nodes by state, the
callback backlog.  Every figure is of the whole deployment, the same whichever API host reads it."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from conductor.context import Context
from conductor.models import CallbackDelivery, Node, utcnow


def node_counts(ctx: Context) -> dict[tuple[str, str, bool], int]:
    """How many nodes are in each (provision state, power state, maintenance); a power state not yet
    read is ``none``.  One grouped scan of the nodes."""
    with ctx.db.session() as session:
        rows = session.execute(
            sa.select(Node.provision_state, Node.power_state, Node.maintenance, sa.func.count())
            .group_by(Node.provision_state, Node.power_state, Node.maintenance)
        )
        return {(str(provision), str(power or "none"), bool(maintenance)): int(count)
                for provision, power, maintenance, count in rows}


@dataclass(frozen=True)
class CallbackBacklog:
    """Deliveries not yet delivered nor given up."""

    #: Every pending delivery (waiting for a retry or due).
    pending: int
    #: Pending deliveries whose attempt is due now or overdue (what the workers have not caught up with).
    due: int
    #: Age in seconds of the oldest pending delivery (0 when none).
    oldest_seconds: float


def callback_backlog(ctx: Context) -> CallbackBacklog:
    """The callback backlog now: three look-ups in the index ``state, next_at`` (the pending rows only, never
    the delivered ones), and one row."""
    now = utcnow()
    pending = CallbackDelivery.state == "pending"
    with ctx.db.session() as session:
        count = session.scalar(sa.select(sa.func.count()).where(pending))
        due = session.scalar(sa.select(sa.func.count()).where(
            pending, sa.or_(CallbackDelivery.next_at.is_(None), CallbackDelivery.next_at <= now)))
        # Ids grow with time: the oldest is the lowest id, found in the index without reading every row.
        first = session.scalar(sa.select(sa.func.min(CallbackDelivery.id)).where(pending))
        oldest = None if first is None else session.scalar(
            sa.select(CallbackDelivery.created_at).where(CallbackDelivery.id == first))
    age = 0.0
    if oldest is not None:
        if oldest.tzinfo is None and now.tzinfo is not None:
            oldest = oldest.replace(tzinfo=now.tzinfo)
        age = max(0.0, (now - oldest).total_seconds())
    return CallbackBacklog(int(count or 0), int(due or 0), age)
