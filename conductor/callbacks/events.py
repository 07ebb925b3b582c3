"""Events and the outbox: what happened, recorded as deliveries to make.

:func:`emit` is called by the code that changes a node or finishes a
request, in the same transaction, so a delivery exists if and only if the
change was committed.  It writes one ``callback_deliveries`` row for the
request's own ``callback_url`` (``request.finished`` only) and one for each
active subscription whose event patterns and node filter match.  The body
is fixed at that moment: a receiver sees the state the event is about,
however late the delivery.

The body follows Standard Webhooks' shape::

    {"type": "node.power_state.changed", "timestamp": "2026-...Z",
     "data": {"node": {...}, "request": {...} | null, "previous": {...}}}
"""

from __future__ import annotations

import datetime as dt
import enum
import fnmatch
import json
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor.callbacks import secrets
from conductor.exceptions import InvalidInput
from conductor.models import CallbackDelivery, CallbackSubscription, Node, Request, utcnow

#: The delivery rows :func:`emit` buffered in a session's ``info``.
_ROWS_KEY = "callbacks.rows"
#: Set in a session's ``info`` once its deliveries are written: committing
#: it wakes the pumps.
PENDING_KEY = "callbacks.pending"
#: The active subscriptions, read once per transaction.
_SUBSCRIPTIONS_KEY = "callbacks.subscriptions"


class EventType(enum.StrEnum):
    """The events a receiver can be told about."""

    REQUEST_FINISHED = "request.finished"
    POWER_STATE_CHANGED = "node.power_state.changed"
    PROVISION_STATE_CHANGED = "node.provision_state.changed"
    MAINTENANCE = "node.maintenance"


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether ``event_type`` matches one of ``patterns`` (``*`` matches anything)."""
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """Validate subscription event patterns: each must match some event type.

    :raises InvalidInput: an empty list or a pattern matching no event type.
    """
    patterns = list(patterns)
    known = [str(e) for e in EventType]
    if not patterns:
        raise InvalidInput("A subscription needs at least one event type.", errors={"events": "empty"})
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(e, p) for e in known)]
    if unknown:
        raise InvalidInput(
            f"Unknown event type(s) {', '.join(unknown)}; known: {', '.join(known)} (* is a wildcard).",
            errors={"events": f"unknown: {', '.join(unknown)}"},
        )
    return patterns


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def node_snapshot(node: Node) -> dict[str, Any]:
    """The node as a callback shows it."""
    return {
        "uuid": node.uuid,
        "name": node.name,
        "power_state": node.power_state,
        "target_power_state": node.target_power_state,
        "provision_state": node.provision_state,
        "target_provision_state": node.target_provision_state,
        "last_error": node.last_error,
        "maintenance": node.maintenance,
        "maintenance_reason": node.maintenance_reason,
    }


def request_snapshot(request: Request) -> dict[str, Any]:
    """The request as a callback shows it."""
    return {
        "id": request.id,
        "node_uuid": request.node_uuid,
        "kind": request.kind,
        "target": request.target,
        "state": request.state,
        "error": request.error,
        "created_at": _iso(request.created_at),
        "started_at": _iso(request.started_at),
        "finished_at": _iso(request.finished_at),
    }


def _subscriptions(session: Session) -> list[Any]:
    """The active subscriptions, read once per transaction of ``session``."""
    cached = session.info.get(_SUBSCRIPTIONS_KEY)
    if cached is None:
        # No autoflush: the caller may be between two BMC calls with changes
        # pending; flushing now would hold the database's write lock meanwhile.
        with session.no_autoflush:
            cached = session.execute(
                sa.select(
                    CallbackSubscription.id,
                    CallbackSubscription.url,
                    CallbackSubscription.events,
                    CallbackSubscription.nodes,
                    CallbackSubscription.client,
                )
                .where(CallbackSubscription.active.is_(True))
                .order_by(CallbackSubscription.created_at)
            ).all()
        session.info[_SUBSCRIPTIONS_KEY] = cached
    return list(cached)


@sa.event.listens_for(Session, "after_transaction_end")
def _forget_subscriptions(session: Session, transaction: Any) -> None:
    # The next transaction reads them again: a new subscription gets the
    # events of every transaction that starts after it was committed.
    if transaction.parent is None:
        session.info.pop(_SUBSCRIPTIONS_KEY, None)


def new_webhook_id() -> str:
    """A new delivery id (the ``webhook-id`` header): ``msg_`` and 32 hex digits."""
    return f"msg_{uuid.uuid4().hex}"


def emit(
    session: Session,
    event_type: EventType,
    node: Node,
    request: Request | None = None,
    **details: Any,
) -> int:
    """Record ``event_type`` for ``node`` as deliveries, in the caller's transaction.

    ``details`` (e.g. ``previous={...}``) are added to the body's ``data``.
    The rows are written when the session commits (one INSERT for all the
    deliveries of the transaction, after its other changes); a rollback
    drops them.  Returns how many deliveries the event makes.
    """
    now = utcnow()
    targets: list[tuple[str, str, str | None, str | None]] = []
    if event_type == EventType.REQUEST_FINISHED and request is not None and request.callback_url:
        targets.append((request.callback_url, secrets.signer_for(request.client), None, None))
    for sub in _subscriptions(session):
        if matches(sub.events, event_type) and (not sub.nodes or node.uuid in sub.nodes):
            targets.append((sub.url, secrets.signer_for(sub.client), sub.id, f"{sub.id}/{node.uuid}"))
    if not targets:
        return 0
    data: dict[str, Any] = {
        "node": node_snapshot(node),
        "request": request_snapshot(request) if request is not None else None,
        **details,
    }
    body = json.dumps({"type": str(event_type), "timestamp": _iso(now), "data": data})
    rows = session.info.setdefault(_ROWS_KEY, [])
    for url, signer, subscription_id, order_key in targets:
        rows.append({
            "webhook_id": new_webhook_id(),
            "event_type": str(event_type),
            "url": url,
            "signer": signer,
            "subscription_id": subscription_id,
            "request_id": request.id if request is not None else None,
            "node_uuid": node.uuid,
            "order_key": order_key,
            "body": body,
            "state": "pending",
            "attempts": 0,
            "next_at": now,
            "created_at": now,
            "updated_at": now,
        })
    return len(targets)


_INSERT = sa.insert(CallbackDelivery.__table__)


@sa.event.listens_for(Session, "before_commit")
def _write_deliveries(session: Session) -> None:
    rows = session.info.pop(_ROWS_KEY, None)
    if not rows:
        return
    # The transaction's other changes first: on PostgreSQL the node's row
    # lock then orders the delivery ids of concurrent transactions.
    session.flush()
    session.execute(_INSERT, rows)
    session.info[PENDING_KEY] = True


@sa.event.listens_for(Session, "after_soft_rollback")
def _drop_deliveries(session: Session, _previous: Any) -> None:
    session.info.pop(_ROWS_KEY, None)
