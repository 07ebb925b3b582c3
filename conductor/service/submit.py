"""Accepting state changes: validate, de-duplicate, record, enqueue (and abort, which acts at once).

One transition per node at a time is enforced by the database, not by
check-then-act: a request row is inserted and, in the same transaction, the
node's ``active_request_id`` is set by a conditional UPDATE that also
requires the provision state the request was validated against
(:func:`conductor.core.requests.accept`).  Of any number of concurrent
submissions (in any number of API processes) exactly one wins; the others
see the winner and get it back (an identical request: 202, same id) or a
409.

A client's ``Idempotency-Key`` is recorded in the same transaction as the
request it produced (or the identical request it was given back), so a
retried call is answered with the original request, never run twice.

The request row is committed before its job is enqueued.  If Redis cannot
take the job, the request is failed and the node freed before the client
hears 503, so nothing is left dangling.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid as uuidlib
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from conductor import logs
from conductor.callbacks import destinations, events
from conductor.context import Context
from conductor.core import requests as core_requests
from conductor.core import states
from conductor.exceptions import (
    InvalidInput,
    InvalidTransition,
    NodeInMaintenance,
    NodeNotFound,
    QueueUnavailable,
    RequestNotCancellable,
    TransitionInProgress,
)
from conductor.fsm import machine, table
from conductor.fsm.states import (
    ACTIVE_REQUEST_STATES,
    ProvisionTarget,
    RequestKind,
    RequestState,
)
from conductor.models import Node, Request, new_request_id, utcnow
from conductor.service import nodes, params
from conductor.service.requests import drop_job, get
from conductor.throttle import idempotency
from conductor.throttle.idempotency import IdempotencyKey

LOG = logging.getLogger(__name__)

_SUBMIT_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Submitted:
    """The outcome of a submission: the request, and whether it is new."""

    request: Request
    created: bool


def _refuse_if_workflow_owns(node: Any, what: str) -> None:
    """:raises InvalidTransition: a provisioning workflow controls the node's power and boot."""
    if node.provision_state in table.POWER_OWNED_STATES:
        raise InvalidTransition(
            f"The {node.provision_state} workflow controls the power of node "
            f"{node.uuid}; {what} are refused in that state.",
            provision_state=node.provision_state,
            allowed_targets=machine.allowed_targets(node.provision_state),
        )


def submit_power(
    ctx: Context,
    ident: str,
    target: str,
    callback_url: str | None = None,
    client: str | None = None,
    idempotency_key: IdempotencyKey | None = None,
) -> Submitted:
    """Accept a power change of node ``ident``.

    :raises NodeNotFound, InvalidInput, InvalidTransition, TransitionInProgress,
        IdempotencyKeyReused, CallbackUrlDenied, QueueUnavailable: as the API documents.
    """
    if target not in params.POWER_TARGETS:
        raise InvalidInput(
            f"Unknown power target {target!r}; allowed: {', '.join(params.POWER_TARGETS)}.",
            errors={"target": "unknown power target"},
        )

    def validate(node: Any) -> str | None:
        _refuse_if_workflow_owns(node, "power targets")
        return target

    return _submit(
        ctx, ident, RequestKind.POWER, target, {}, callback_url, client, idempotency_key, validate
    )


def submit_boot_device(
    ctx: Context,
    ident: str,
    device: str,
    persistent: bool = False,
    callback_url: str | None = None,
    client: str | None = None,
    idempotency_key: IdempotencyKey | None = None,
) -> Submitted:
    """Accept setting node ``ident``'s boot device (a ``management`` request); errors as :func:`submit_power`."""
    if device not in params.BOOT_DEVICES:
        raise InvalidInput(f"Unknown boot device {device!r}; allowed: {', '.join(params.BOOT_DEVICES)}.",
                           errors={"boot_device": "unknown boot device"})

    def validate(node: Any) -> str | None:
        _refuse_if_workflow_owns(node, "boot device changes")
        return None  # no target column: the request itself says what it sets

    return _submit(
        ctx, ident, RequestKind.MANAGEMENT, device, {"persistent": bool(persistent)}, callback_url, client,
        idempotency_key, validate,
    )


def submit_provision(
    ctx: Context,
    ident: str,
    target: str,
    provision_params: Mapping[str, Any] | None = None,
    callback_url: str | None = None,
    client: str | None = None,
    idempotency_key: IdempotencyKey | None = None,
) -> Submitted:
    """Accept a provision state change of node ``ident`` (``abort`` acts at once).

    :raises NodeNotFound, InvalidTransition, NodeInMaintenance,
        TransitionInProgress, RequestNotCancellable, IdempotencyKeyReused, CallbackUrlDenied,
        QueueUnavailable: as the API documents.
    """
    if target == ProvisionTarget.ABORT:
        if provision_params:
            params.check_provision_params(target, provision_params)
        return abort(ctx, ident, callback_url, client, idempotency_key)
    checked = params.check_provision_params(target, provision_params or {}, params.image_rules(ctx))

    def validate(node: Any) -> str | None:
        machine.target_event(node.provision_state, target)
        if node.maintenance and target in params.REFUSED_IN_MAINTENANCE:
            raise NodeInMaintenance(
                f"Node {node.uuid} is in maintenance; {target} is refused until it is taken out.",
                maintenance_reason=node.maintenance_reason,
            )
        return str(table.TARGET_STABLE_STATES[ProvisionTarget(target)])

    return _submit(
        ctx, ident, RequestKind.PROVISION, target, checked, callback_url, client, idempotency_key, validate
    )


def _identical(active: Any, kind: str, target: str, request_params: Mapping[str, Any],
               callback_url: str | None) -> bool:
    return (
        active.kind == kind
        and active.target == target
        and (active.params or {}) == dict(request_params)
        and active.callback_url == callback_url
    )


_nodes_t = Node.__table__
_requests_t = Request.__table__
# Accepting a request is the API's hot path: its reads are built once.
_NODE_COLUMNS = (
    _nodes_t.c.id,
    _nodes_t.c.uuid,
    _nodes_t.c.provision_state,
    _nodes_t.c.power_state,
    _nodes_t.c.active_request_id,
    _nodes_t.c.maintenance,
    _nodes_t.c.maintenance_reason,
    # The rest of what the event stream shows of the node (request.queued).
    _nodes_t.c.name,
    _nodes_t.c.target_power_state,
    _nodes_t.c.target_provision_state,
    _nodes_t.c.last_error,
)
_NODE_BY_UUID = sa.select(*_NODE_COLUMNS).where(_nodes_t.c.uuid == sa.bindparam("ident"))
_NODE_BY_NAME = sa.select(*_NODE_COLUMNS).where(_nodes_t.c.name == sa.bindparam("ident"))
_ACTIVE_REQUEST = sa.select(_requests_t).where(_requests_t.c.id == sa.bindparam("rid"))


def _submit(
    ctx: Context,
    ident: str,
    kind: RequestKind,
    target: str,
    request_params: Mapping[str, Any],
    callback_url: str | None,
    client: str | None,
    idempotency_key: IdempotencyKey | None,
    validate: Callable[[Any], str | None],
) -> Submitted:
    """Accept a request; ``validate(node)`` raises if the node refuses it, else returns the target state it shows."""
    if callback_url:
        destinations.check(ctx.settings, callback_url)
    by_uuid = nodes.looks_like_uuid(ident)
    key = str(uuidlib.UUID(ident)) if by_uuid else ident
    retention = ctx.settings.idempotency_retention
    for _attempt in range(_SUBMIT_ATTEMPTS):
        with ctx.db.engine.connect() as conn:
            if idempotency_key is not None:
                replayed = idempotency.find(conn, idempotency_key)
                if replayed is not None:
                    logs.bind_request_id(replayed)
                    row = conn.execute(_ACTIVE_REQUEST, {"rid": replayed}).one()
                    return Submitted(_enqueue_if_lost(ctx, _request_from_row(row)), created=False)
            node = conn.execute(_NODE_BY_UUID if by_uuid else _NODE_BY_NAME, {"ident": key}).one_or_none()
            if node is None:
                raise NodeNotFound(f"Node {ident} not found.", node=ident)
            stale_active: str | None = None
            if node.active_request_id is not None:
                active = conn.execute(_ACTIVE_REQUEST, {"rid": node.active_request_id}).one_or_none()
                if active is not None and active.state in ACTIVE_REQUEST_STATES:
                    if _identical(active, kind, target, request_params, callback_url):
                        logs.bind_request_id(active.id)
                        if idempotency_key is not None:
                            if not _remember(conn, idempotency_key, active.id, retention):
                                continue
                            conn.commit()
                        return Submitted(_enqueue_if_lost(ctx, _request_from_row(active)), created=False)
                    raise TransitionInProgress(
                        f"Node {node.uuid} has a transition in progress "
                        f"({active.kind} {active.target}, request {active.id}, {active.state}).",
                        request_id=active.id,
                    )
                # The pointer outlived its request (should not happen); take it over.
                stale_active = node.active_request_id
            target_state = validate(node)
            now = utcnow()
            request = Request(
                id=new_request_id(),
                node_id=node.id,
                node_uuid=node.uuid,
                kind=str(kind),
                target=str(target),
                params=dict(request_params),
                progress={},
                state=RequestState.QUEUED,
                callback_url=callback_url,
                client=client,
                created_at=now,
                updated_at=now,
            )
            try:
                won = core_requests.accept(conn, request, expected_state=node.provision_state,
                                           target_state=target_state, stale=stale_active,
                                           power_state=node.power_state)
            except IntegrityError:
                # The node was deleted since we read it: look again (-> 404).
                conn.rollback()
                continue
            if not won:
                # Someone else changed the node since we read it: look again.
                conn.rollback()
                continue
            if idempotency_key is not None and not _remember(conn, idempotency_key, request.id, retention):
                continue
            conn.commit()
        logs.bind_request_id(request.id)
        LOG.info("Accepted %s request %s of node %s from %s", kind, target, request.node_uuid, client)
        # Before the job exists: its request.running cannot overtake it.
        _announce_queued(ctx, node, request, target_state)
        _enqueue_or_abandon(ctx, request)
        return Submitted(request, created=True)
    raise TransitionInProgress(
        f"Node {ident} is changing too fast to accept the request; retry.", request_id=None
    )


def _announce_queued(ctx: Context, node: Any, request: Request, target_state: str | None) -> None:
    """Put ``request.queued`` on the event stream (the acceptance committed on a plain connection)."""
    shown = dict(node._mapping)
    column = core_requests.TARGET_COLUMNS[request.kind]
    if column is not None:
        shown[column] = target_state
    event = events.stream_event(events.EventType.REQUEST_QUEUED, SimpleNamespace(**shown), request, previous=None)
    try:
        ctx.events.publish_committed([event])
    except redis.RedisError as exc:
        # Accepted all the same; the stream misses this one event.
        LOG.warning("Request %s: could not publish request.queued (%s)", request.id, exc)


def _remember(conn: sa.Connection, key: IdempotencyKey, request_id: str, retention: float) -> bool:
    """Record ``key`` in the transaction; False (rolled back) when a concurrent use of it won."""
    try:
        idempotency.remember(conn, key, request_id, retention)
    except IntegrityError:
        conn.rollback()
        return False
    return True


def _request_from_row(row: Any) -> Request:
    return Request(**dict(row._mapping))


def _enqueue_if_lost(ctx: Context, request: Request) -> Request:
    """Enqueue a queued request for which Redis holds nothing; returns it.

    A submission run again after a commit of unknown outcome (the API's
    retry) finds its own request committed but never enqueued: it is
    enqueued now rather than after the sweep's ``requeue_after``.
    """
    if request.state != RequestState.QUEUED:
        return request
    try:
        if not ctx.queue.has_job(request.id):
            LOG.warning("Request %s is queued but has no job; enqueueing it", request.id)
            ctx.queue.enqueue_request(request.id)
    except redis.RedisError as exc:
        # Accepted already: not abandoned; the sweep enqueues it.
        LOG.error("Cannot enqueue request %s (%s); the sweep will", request.id, exc)
    return request


def _enqueue_or_abandon(ctx: Context, request: Request) -> None:
    try:
        ctx.queue.enqueue_request(request.id)
    except redis.RedisError as exc:
        LOG.error("Cannot enqueue request %s: %s", request.id, exc)
        reason = "The work queue is unavailable; the request was not accepted."
        with ctx.db.session() as session:
            if core_requests.abandon(session, request.id, reason):
                session.commit()
        raise QueueUnavailable(
            "The work queue is unavailable; the request was not accepted. Retry later.",
            retry_after=5,
        ) from None


def abort(
    ctx: Context,
    ident: str,
    callback_url: str | None = None,
    client: str | None = None,
    idempotency_key: IdempotencyKey | None = None,
) -> Submitted:
    """Abort the wait a node is in; record the abort as a finished request.

    :raises NodeNotFound: no such node.
    :raises InvalidTransition: the node is not in a wait state.
    :raises RequestNotCancellable: the waiting request is running a step.
    :raises IdempotencyKeyReused: the key was used for another request.
    :raises CallbackUrlDenied: the callback destination is refused.
    """
    if callback_url:
        destinations.check(ctx.settings, callback_url)
    with ctx.db.session() as session:
        if idempotency_key is not None:
            replayed = idempotency.find(session, idempotency_key)
            if replayed is not None:
                return Submitted(get(session, replayed), created=False)
        node = nodes.find(session, ident)
        machine.target_event(node.provision_state, ProvisionTarget.ABORT)
        waiting = session.get(Request, node.active_request_id) if node.active_request_id else None
        abort_request = Request(
            id=new_request_id(),
            node_id=node.id,
            node_uuid=node.uuid,
            kind=RequestKind.PROVISION,
            target=ProvisionTarget.ABORT,
            params={},
            progress={},
            state=RequestState.RUNNING,
            callback_url=callback_url,
            client=client,
            started_at=utcnow(),
        )
        session.add(abort_request)
        session.flush()
        if waiting is not None and waiting.state in ACTIVE_REQUEST_STATES:
            if waiting.state != RequestState.WAITING:
                session.rollback()
                raise RequestNotCancellable(
                    f"Request {waiting.id} is running a step that cannot be interrupted; retry shortly.",
                    request_id=waiting.id,
                )
            core_requests.abort_waiting(session, node, waiting, f"Aborted by request {abort_request.id}.",
                                        ctx.settings)
        else:
            states.abort(session, node, abort_request, ctx.settings, None)
        core_requests.finish(session, node, abort_request, RequestState.SUCCEEDED)
        try:
            if idempotency_key is not None:
                idempotency.remember(
                    session, idempotency_key, abort_request.id, ctx.settings.idempotency_retention
                )
            session.commit()
        except IntegrityError:
            # The same key, used at the same moment, won: answer with its request.
            session.rollback()
            if idempotency_key is not None:
                replayed = idempotency.find(session, idempotency_key)
                if replayed is not None:
                    return Submitted(get(session, replayed), created=False)
            raise
        if waiting is not None:
            drop_job(ctx, waiting.id)
        return Submitted(abort_request, created=True)
