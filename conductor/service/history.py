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


def list_entries_oldest_first(
    session: Session, node: Node, limit: int, after_id: int | None = None
) -> list[NodeHistory]:
    """Up to ``limit`` entries of ``node``, oldest first, newer than ``after_id``."""
    query = sa.select(NodeHistory).where(NodeHistory.node_id == node.id)
    if after_id is not None:
        query = query.where(NodeHistory.id > after_id)
    return list(session.scalars(query.order_by(NodeHistory.id).limit(limit)))


def get_entry(session: Session, node: Node, entry_id: int) -> NodeHistory | None:
    """Entry ``entry_id`` of ``node``'s history (None: no such entry of that node)."""
    return session.scalars(
        sa.select(NodeHistory).where(NodeHistory.node_id == node.id, NodeHistory.id == entry_id)
    ).one_or_none()
