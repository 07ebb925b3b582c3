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

The same events, with the same bodies, feed the event stream
(``GET /v1/events``, docs/events.md): in a session whose database has the
publisher installed (:data:`STREAM_ENABLED`, see
:mod:`conductor.eventlog.publisher`), :func:`emit` and :func:`announce`
also buffer a :class:`StreamEvent`, published once the transaction
commits.  Only :data:`WEBHOOK_TYPES` are ever posted to receivers; the
other types (a request queued, running or waiting, a node created or
deleted, the throttle, conductors) are on the stream only.
"""

from __future__ import annotations

import datetime as dt
import enum
import fnmatch
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

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
#: Set (by the event stream's publisher) in the ``info`` of the sessions
#: whose events go to the stream.
STREAM_ENABLED = "events.stream.enabled"
#: The :class:`StreamEvent` list buffered in a session's ``info``.
STREAM_KEY = "events.stream"


class EventType(enum.StrEnum):
    """Everything that is told: to webhook receivers (:data:`WEBHOOK_TYPES`) and on the event stream (all)."""

    REQUEST_FINISHED = "request.finished"
    POWER_STATE_CHANGED = "node.power_state.changed"
    PROVISION_STATE_CHANGED = "node.provision_state.changed"
    MAINTENANCE = "node.maintenance"
    #: Accepted (``previous: null``), or queued again after the agent reported (``previous: waiting``).
    REQUEST_QUEUED = "request.queued"
    #: A conductor started a step of it (from ``queued``).
    REQUEST_RUNNING = "request.running"
    #: It waits for the node's agent (no conductor holds it).
    REQUEST_WAITING = "request.waiting"
    NODE_CREATED = "node.created"
    NODE_DELETED = "node.deleted"
    #: An operator changed the throttle knobs.
    THROTTLE_CHANGED = "throttle.changed"
    #: A conductor registered (started).
    CONDUCTOR_UP = "conductor.up"
    #: A conductor stopped, or the others declared it dead (its heartbeat lapsed).
    CONDUCTOR_DOWN = "conductor.down"


#: The types webhook receivers can subscribe to (the others are on the event stream only).
WEBHOOK_TYPES = frozenset({
    EventType.REQUEST_FINISHED, EventType.POWER_STATE_CHANGED, EventType.PROVISION_STATE_CHANGED,
    EventType.MAINTENANCE,
})


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """Whether ``event_type`` matches one of ``patterns`` (``*`` matches anything)."""
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def check_patterns(
    patterns: Iterable[str], known: Iterable[str] = WEBHOOK_TYPES, field: str = "events"
) -> list[str]:
    """Validate event patterns: each must match some type of ``known`` (by default the webhook types).

    :raises InvalidInput: an empty list or a pattern matching no event type
        (``errors`` names ``field``).
    """
    patterns = list(patterns)
    names = sorted(str(e) for e in known)
    if not patterns:
        raise InvalidInput("A subscription needs at least one event type.", errors={field: "empty"})
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(e, p) for e in names)]
    if unknown:
        raise InvalidInput(
            f"Unknown event type(s) {', '.join(unknown)}; known: {', '.join(names)} (* is a wildcard).",
            errors={field: f"unknown: {', '.join(unknown)}"},
        )
    return patterns


class StreamEvent(NamedTuple):
    """An event on its way to the stream: its type, node and request (for filters and ordering), its body."""

    type: str
    node: str | None
    request: str | None
    #: ``{"type", "timestamp", "data"}``, the very body a webhook receiver gets.
    body: str


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


def _body(event_type: str, now: dt.datetime, data: Mapping[str, Any]) -> str:
    return json.dumps({"type": event_type, "timestamp": _iso(now), "data": data})


def stream_event(
    event_type: EventType, node: Any, request: Request | None = None, **details: Any
) -> StreamEvent:
    """The stream's form of an event about ``node`` (a :class:`Node`, or a row with its columns).

    For the code that commits on a plain connection and publishes itself
    (:meth:`conductor.eventlog.log.EventLog.publish_committed`); everyone
    else calls :func:`emit`.
    """
    data = {"node": node_snapshot(node), "request": request_snapshot(request) if request is not None else None,
            **details}
    return StreamEvent(str(event_type), node.uuid, request.id if request is not None else None,
                       _body(str(event_type), utcnow(), data))


def announce(session: Session, event_type: EventType, **data: Any) -> None:
    """Put an event about no node (the throttle, a conductor) on the stream when ``session`` commits.

    ``data`` is the body's ``data``.  Such events go to no webhook.
    """
    if session.info.get(STREAM_ENABLED):
        session.info.setdefault(STREAM_KEY, []).append(
            StreamEvent(str(event_type), None, None, _body(str(event_type), utcnow(), data)))


def emit(
    session: Session,
    event_type: EventType,
    node: Node,
    request: Request | None = None,
    *,
    webhooks: bool = True,
    **details: Any,
) -> int:
    """Record ``event_type`` for ``node`` as deliveries and for the stream, in the caller's transaction.

    ``details`` (e.g. ``previous={...}``) are added to the body's ``data``.
    The rows are written when the session commits (one INSERT for all the
    deliveries of the transaction, after its other changes); the stream
    gets the event after the commit; a rollback drops both.  Only
    :data:`WEBHOOK_TYPES` make deliveries, and none with ``webhooks=False``.
    Returns how many deliveries the event makes.
    """
    now = utcnow()
    to_stream = bool(session.info.get(STREAM_ENABLED))
    targets: list[tuple[str, str, str | None, str | None]] = []
    if webhooks and event_type in WEBHOOK_TYPES:
        if event_type == EventType.REQUEST_FINISHED and request is not None and request.callback_url:
            targets.append((request.callback_url, secrets.signer_for(request.client), None, None))
        for sub in _subscriptions(session):
            if matches(sub.events, event_type) and (not sub.nodes or node.uuid in sub.nodes):
                targets.append((sub.url, secrets.signer_for(sub.client), sub.id, f"{sub.id}/{node.uuid}"))
    if not targets and not to_stream:
        return 0
    data: dict[str, Any] = {
        "node": node_snapshot(node),
        "request": request_snapshot(request) if request is not None else None,
        **details,
    }
    body = _body(str(event_type), now, data)
    if to_stream:
        session.info.setdefault(STREAM_KEY, []).append(
            StreamEvent(str(event_type), node.uuid, request.id if request is not None else None, body))
    if not targets:
        return 0
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
