"""The only writers of a node's ``reservation``: the short lock a conductor holds while its BMC talks.

Each write is one conditional UPDATE checked by its row count (never
check-then-act), built once: these run on every step.  A conductor takes
the reservation with :data:`RESERVE` (for a request's step, together
with the request's claim) or :data:`RESERVE_IDLE` (the power state
observer, only for a node with no transition in flight), and gives it
back with :data:`RELEASE` (or :data:`RELEASE_UNCHANGED`, the observer's
fence).  The sweep and the recovery of a dead conductor take
reservations away (:func:`release_all_of`, :func:`release_stale`,
:func:`release_for_request`).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor.database import rowcount
from conductor.models import Node, Request

_nodes = Node.__table__
_requests = Request.__table__

#: Reserve the node of request ``rid`` for conductor ``me`` (taken again if ``me`` holds it).
RESERVE = (
    sa.update(_nodes)
    .where(
        _nodes.c.id == sa.select(_requests.c.node_id).where(_requests.c.id == sa.bindparam("rid")).scalar_subquery(),
        sa.or_(_nodes.c.reservation.is_(None), _nodes.c.reservation == sa.bindparam("me")),
    )
    .values(reservation=sa.bindparam("me"))
)
#: Who holds the node of request ``rid`` (uuid, reservation).
HOLDER = (
    sa.select(_nodes.c.uuid, _nodes.c.reservation)
    .join(_requests, _requests.c.node_id == _nodes.c.id)
    .where(_requests.c.id == sa.bindparam("rid"))
)
#: Give back node ``node_id`` if ``me`` holds it; rowcount 0 means ``me`` had lost it (the fence).
RELEASE = (
    sa.update(_nodes)
    .where(_nodes.c.id == sa.bindparam("node_id"), _nodes.c.reservation == sa.bindparam("me"))
    .values(reservation=None)
)
# The observer reserves only an idle node; the API may accept a request for
# it meanwhile (its step then finds the node reserved and retries shortly).
#: Reserve node ``node_id`` for ``me`` if it is neither reserved nor in a transition.
RESERVE_IDLE = (
    sa.update(_nodes)
    .where(_nodes.c.id == sa.bindparam("node_id"), _nodes.c.reservation.is_(None),
           _nodes.c.active_request_id.is_(None))
    .values(reservation=sa.bindparam("me"))
)
# The observer's findings are written only if nobody changed the node while
# the BMC talked (an operator's PATCH of maintenance, say): ``updated_at`` is
# the version, as for PATCH.
#: Give back node ``node_id`` held by ``me`` only if it was not updated since ``read_at``.
RELEASE_UNCHANGED = (
    sa.update(_nodes)
    .where(_nodes.c.id == sa.bindparam("node_id"), _nodes.c.reservation == sa.bindparam("me"),
           _nodes.c.updated_at == sa.bindparam("read_at"))
    .values(reservation=None)
)


def release(conn: sa.Connection, node_id: int, holder: str | None) -> bool:
    """Give back ``holder``'s reservation of node ``node_id``; whether it held it."""
    return conn.execute(RELEASE, {"node_id": node_id, "me": holder}).rowcount == 1


def release_all_of(conn: sa.Connection | Session, holder: str) -> int:
    """Take every reservation of conductor ``holder`` away (dead, or this one's previous life)."""
    return rowcount(conn.execute(sa.update(_nodes).where(_nodes.c.reservation == holder).values(reservation=None)))


def release_for_request(conn: sa.Connection, request_id: str, holder: str | None) -> None:
    """Give back ``holder``'s reservation of the node of request ``request_id``."""
    conn.execute(
        sa.update(_nodes)
        .where(_nodes.c.id == sa.select(_requests.c.node_id).where(_requests.c.id == request_id).scalar_subquery(),
               _nodes.c.reservation == holder)
        .values(reservation=None)
    )


def release_stale(conn: sa.Connection, node_id: int, holder: str, cutoff: dt.datetime) -> None:
    """Take ``holder``'s reservation of node ``node_id`` away if the node was not touched since ``cutoff``."""
    conn.execute(
        sa.update(_nodes)
        .where(_nodes.c.id == node_id, _nodes.c.reservation == holder, _nodes.c.updated_at < cutoff)
        .values(reservation=None)
    )


def drop(node: Node, holder: str | None) -> None:
    """In the caller's session: clear ``node``'s reservation if ``holder`` holds it (a failed request's)."""
    if holder is not None and node.reservation == holder:
        node.reservation = None
