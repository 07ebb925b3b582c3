"""Node history as the API shows it: listing and representation.

Entries are written by :mod:`conductor.core.history`, in the transaction
of the change they describe.
"""

from __future__ import annotations

from typing import Any

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


def to_dict(entry: NodeHistory) -> dict[str, Any]:
    """The API form of a history entry."""
    return {
        "id": entry.id,
        "created_at": entry.created_at,
        "event": entry.event,
        "severity": entry.severity,
        "message": entry.message,
        "request_id": entry.request_id,
        "conductor": entry.conductor,
        "provision_state": entry.provision_state,
        "power_state": entry.power_state,
    }
