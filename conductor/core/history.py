"""Writing node history: every transition, request and error, in the transaction that made it.

Read back (listed, shown) by :mod:`conductor.service.history`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor.models import Node, NodeHistory, utcnow

#: The entries :func:`record` added to a session's current transaction, in order
#: (:func:`conductor.core.steps.commit` writes them with one INSERT).
PENDING_KEY = "history.pending"


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
    entry = NodeHistory(
        node_id=node.id,
        event=event,
        message=message,
        request_id=request_id,
        conductor=conductor,
        severity=severity,
        provision_state=node.provision_state,
        power_state=node.power_state,
        created_at=utcnow(),
    )
    session.add(entry)
    session.info.setdefault(PENDING_KEY, []).append(entry)


@sa.event.listens_for(Session, "after_transaction_end")
def _forget_pending(session: Session, transaction: Any) -> None:
    # Written by the flush (or rolled back) by now.
    if transaction.parent is None:
        session.info.pop(PENDING_KEY, None)


def take_pending(session: Session) -> list[dict[str, Any]]:
    """The entries added in this transaction and not yet written, as rows for :data:`INSERT`.

    They leave the session: the caller writes them (with one INSERT).
    """
    rows = []
    for entry in session.info.pop(PENDING_KEY, ()):
        if entry not in session.new:
            continue  # written by an earlier flush
        session.expunge(entry)
        rows.append({
            "node_id": entry.node_id,
            "created_at": entry.created_at,
            "event": entry.event,
            "severity": entry.severity,
            "message": entry.message,
            "request_id": entry.request_id,
            "conductor": entry.conductor,
            "provision_state": entry.provision_state,
            "power_state": entry.power_state,
        })
    return rows


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
