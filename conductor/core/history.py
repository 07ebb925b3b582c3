"""Writing node history: every transition, request and error, in the transaction that made it.

Read back (listed, shown) by :mod:`conductor.service.history`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor.models import Node, NodeHistory, utcnow


def record(
    session: Session,
    node: Node,
    event: str,
    message: str,
    *,
    request_id: str | None = None,
    conductor: str | None = None,
    severity: str = "info",
) -> None:
    """Add a history entry for ``node`` in the caller's transaction."""
    session.add(
        NodeHistory(
            node_id=node.id,
            event=event,
            message=message,
            request_id=request_id,
            conductor=conductor,
            severity=severity,
            provision_state=node.provision_state,
            power_state=node.power_state,
        )
    )


INSERT = sa.insert(NodeHistory.__table__)


def values(
    node_id: int,
    event: str,
    message: str,
    *,
    provision_state: str | None = None,
    power_state: str | None = None,
    request_id: str | None = None,
    conductor: str | None = None,
    severity: str = "info",
) -> dict[str, Any]:
    """The row of a history entry, for :data:`INSERT` on a plain connection."""
    return {
        "node_id": node_id,
        "created_at": utcnow(),
        "event": event,
        "severity": severity,
        "message": message,
        "request_id": request_id,
        "conductor": conductor,
        "provision_state": provision_state,
        "power_state": power_state,
    }
