"""The end of a conductor's step, written in SQLAlchemy Core: the fenced commit of a node and its request.

A step works on ORM objects (its node and request, loaded once), but
its commit is the hot path of every request, so the ORM's unit of work
is left out of it: :func:`commit` writes what the step changed with
three statements, each built once and given the changed columns as
parameters (Core derives the SET clause from them):

* the node: its changes, and the release of this conductor's reservation,
  ``WHERE reservation = me`` (the fence: a conductor declared dead has lost it);
* the request: its changes, ``WHERE conductor = me`` (the claim's fence);
* the step's history entries: one INSERT of several rows.

What else the step added to the session (webhook deliveries) is flushed
by the commit as before.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstanceState, Session

from conductor.core import history
from conductor.database import rowcount
from conductor.models import Node, Request, utcnow

_nodes = Node.__table__
_requests = Request.__table__
_NODE_COLUMNS = frozenset(column.key for column in _nodes.columns)
_REQUEST_COLUMNS = frozenset(column.key for column in _requests.columns)

# The where-clause parameters have names no column has (``b_``): the
# other parameters are the columns to set.
_WRITE_NODE = sa.update(_nodes).where(_nodes.c.id == sa.bindparam("b_id"),
                                      _nodes.c.reservation == sa.bindparam("b_me"))
_WRITE_REQUEST = sa.update(_requests).where(_requests.c.id == sa.bindparam("b_id"),
                                            _requests.c.conductor == sa.bindparam("b_me"))


def _changes(instance: Node | Request, columns: frozenset[str]) -> dict[str, Any]:
    """The columns of ``instance`` changed since it was loaded (or last flushed), with their new values."""
    state: InstanceState[Any] = sa.inspect(instance)
    return {key: state.dict.get(key) for key in state.committed_state if key in columns}


def commit(session: Session, node: Node, request: Request, conductor: str) -> bool:
    """Write the step's changes to ``node`` and ``request`` and its history, in the session's transaction.

    The node's reservation is released in the same statement.  Returns
    False (nothing of the step's own to keep: the caller rolls back) when
    ``conductor`` no longer holds the node's reservation or the request's
    claim.  The node, the request and the history entries leave the
    session (they are written); the caller commits.
    """
    with session.no_autoflush:
        node_values = _changes(node, _NODE_COLUMNS)
        node_values["reservation"] = None
        node_values.setdefault("updated_at", utcnow())
        if rowcount(session.execute(_WRITE_NODE, {**node_values, "b_id": node.id, "b_me": conductor})) != 1:
            return False
        request_values = _changes(request, _REQUEST_COLUMNS)
        request_values["updated_at"] = utcnow()
        if rowcount(session.execute(_WRITE_REQUEST, {**request_values, "b_id": request.id, "b_me": conductor})) != 1:
            return False
        rows = history.take_pending(session)
        if rows:
            session.execute(history.INSERT, rows)
    session.expunge(node)
    session.expunge(request)
    return True
