"""Node history for the API: listing.

Entries are written by :mod:`conductor.core.history`, in the transaction
of the change they describe.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor.models import Node, NodeHistory


def list_entries(
    session: Session, node: Node, limit: int, before_id: int | None = None
) -> list[NodeHistory]:
    """Up to ``limit`` entries of ``node``, newest first, older than ``before_id``."""
    query = sa.select(NodeHistory).where(NodeHistory.node_id == node.id)
    if before_id is not None:
        query = query.where(NodeHistory.id < before_id)
    return list(session.scalars(query.order_by(NodeHistory.id.desc()).limit(limit)))
