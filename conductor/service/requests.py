"""Requests: accept, de-duplicate, cancel, abort and finish state changes.

One transition per node at a time is enforced by the database, not by
check-then-act: a request row is inserted and, in the same transaction, the
node's ``active_request_id`` is set by a conditional UPDATE that also
requires the provision state the request was validated against.  Of any
number of concurrent submissions (in any number of API processes) exactly
one wins; the others see the winner and get it back (an identical request:
202, same id) or a 409.

A client's ``Idempotency-Key`` is recorded in the same transaction as the
request it produced (or the identical request it was given back), so a
retried call is answered with the original request, never run twice.

The request row is committed before its job is enqueued.  If Redis cannot
take the job, the request is failed and the node freed before the client
hears 503, so nothing is left dangling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import urllib.parse
import uuid as uuidlib
from collections.abc import Callable, Mapping
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from conductor import logs, metrics
from conductor.callbacks import destinations, events, status
from conductor.context import Context
from conductor.drivers.base import ManagementInterface
from conductor.exceptions import (
    InvalidInput,
    InvalidTransition,
    NodeInMaintenance,
    NodeNotFound,
    QueueUnavailable,
    RequestNotCancellable,
    RequestNotFound,
    TransitionInProgress,
)
from conductor.drivers import pxe
from conductor.fsm import machine, table
from conductor.fsm.states import (
    ACTIVE_REQUEST_STATES,
    Event,
    PowerState,
    ProvisionTarget,
    RequestKind,
    RequestState,
)
from conductor.models import IdempotencyRecord, Node, Request, new_request_id, utcnow
from conductor.service import history, nodes
from conductor.settings import Settings
from conductor.throttle import idempotency
from conductor.throttle.idempotency import IdempotencyKey

LOG = logging.getLogger(__name__)

POWER_TARGETS = (
    PowerState.POWER_ON,
    PowerState.POWER_OFF,
    PowerState.REBOOTING,
    PowerState.SOFT_POWER_OFF,
)
#: Provision targets refused while a node is in maintenance.
REFUSED_IN_MAINTENANCE = frozenset(
    {
        ProvisionTarget.PROVIDE,
        ProvisionTarget.ACTIVE,
        ProvisionTarget.REBUILD,
        ProvisionTarget.INSPECT,
        ProvisionTarget.CLEAN,
    }
)
#: Boot devices a management request may set.
BOOT_DEVICES = ManagementInterface.BOOT_DEVICES
_SUBMIT_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Submitted:
    """The outcome of a submission: the request, and whether it is new."""

    request: Request
    created: bool


def get(session: Session, request_id: str) -> Request:
    """The request ``request_id``.

    :raises RequestNotFound: no such request.
    """
    request = session.get(Request, request_id)
    if request is None:
        raise RequestNotFound(f"Request {request_id} not found.", request_id=request_id)
    return request


def list_requests(
    session: Session,
    *,
    limit: int,
    marker: str | None = None,
    node: str | None = None,
    state: str | None = None,
    kind: str | None = None,
) -> list[Request]:
    """Up to ``limit`` requests, newest first, older than request ``marker``.

    :raises NodeNotFound: ``node`` names no node.
    :raises RequestNotFound: the marker names no request.
    """
    query = sa.select(Request)
    if node:
        query = query.where(Request.node_id == nodes.find(session, node).id)
    if state:
        query = query.where(Request.state == state)
    if kind:
        query = query.where(Request.kind == kind)
    if marker:
        anchor = get(session, marker)
        query = query.where(
            sa.or_(
                Request.created_at < anchor.created_at,
                sa.and_(Request.created_at == anchor.created_at, Request.id < anchor.id),
            )
        )
    query = query.order_by(Request.created_at.desc(), Request.id.desc()).limit(limit)
    # One more query for the page's callback deliveries, not one per request.
    query = query.options(selectinload(Request.callback_delivery))
    return list(session.scalars(query))


def active_counts(ctx: Context) -> dict[str, int]:
    """How many requests are in each unfinished state."""
    with ctx.db.session() as session:
        rows = session.execute(
            sa.select(Request.state, sa.func.count())
            .where(Request.state.in_(ACTIVE_REQUEST_STATES))
            .group_by(Request.state)
        )
        counts = {str(state): 0 for state in ACTIVE_REQUEST_STATES}
        counts.update({state: int(count) for state, count in rows})
        return counts


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
    if target not in POWER_TARGETS:
        raise InvalidInput(
            f"Unknown power target {target!r}; allowed: {', '.join(POWER_TARGETS)}.",
            errors={"target": "unknown power target"},
        )

    def validate(node: Any) -> dict[str, Any]:
        _refuse_if_workflow_owns(node, "power targets")
        return {"target_power_state": target}

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
    if device not in BOOT_DEVICES:
        raise InvalidInput(f"Unknown boot device {device!r}; allowed: {', '.join(BOOT_DEVICES)}.",
                           errors={"boot_device": "unknown boot device"})

    def validate(node: Any) -> dict[str, Any]:
        _refuse_if_workflow_owns(node, "boot device changes")
        return {}  # no target column: the request itself says what it sets

    return _submit(
        ctx, ident, RequestKind.MANAGEMENT, device, {"persistent": bool(persistent)}, callback_url, client,
        idempotency_key, validate,
    )


def submit_provision(
    ctx: Context,
    ident: str,
    target: str,
    params: Mapping[str, Any] | None = None,
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
        if params:
            check_provision_params(target, params)
        return abort(ctx, ident, callback_url, client, idempotency_key)
    params = check_provision_params(target, params or {})

    def validate(node: Any) -> dict[str, Any]:
        machine.target_event(node.provision_state, target)
        if node.maintenance and target in REFUSED_IN_MAINTENANCE:
            raise NodeInMaintenance(
                f"Node {node.uuid} is in maintenance; {target} is refused until it is taken out.",
                maintenance_reason=node.maintenance_reason,
            )
        return {"target_provision_state": str(table.TARGET_STABLE_STATES[ProvisionTarget(target)])}

    return _submit(
        ctx,
        ident,
        RequestKind.PROVISION,
        target,
        dict(params or {}),
        callback_url,
        client,
        idempotency_key,
        validate,
    )


#: Targets that deploy an image: they need ``image_source``, may take ``configdrive``.
IMAGE_TARGETS = frozenset({ProvisionTarget.ACTIVE, ProvisionTarget.REBUILD})
MAX_CONFIGDRIVE = 64 * 1024
MAX_IMAGE_SOURCE = 2048
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
_IMAGE_SCHEMES = frozenset({"http", "https", "file"})


def check_provision_params(target: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The provision request's extra inputs, checked (``image_source``, ``configdrive``).

    :raises InvalidInput: a missing, malformed or oversized input, or one the target does not take.
    """
    errors: dict[str, str] = {}
    known = {"image_source", "configdrive"}
    for key in sorted(set(params) - known):
        errors[key] = "unknown field"
    if target not in IMAGE_TARGETS:
        for key in sorted(known & set(params)):
            errors[key] = f"only taken by the targets {', '.join(sorted(IMAGE_TARGETS))}"
    else:
        image = params.get("image_source")
        if image is None or image == "":
            errors["image_source"] = "required: an http(s) or file URL, or an image name"
        elif not isinstance(image, str) or len(image) > MAX_IMAGE_SOURCE:
            errors["image_source"] = f"must be a string of at most {MAX_IMAGE_SOURCE} characters"
        elif "://" in image:
            parsed = urllib.parse.urlsplit(image)
            if parsed.scheme not in _IMAGE_SCHEMES or (parsed.scheme != "file" and not parsed.hostname):
                errors["image_source"] = "must be an http(s) or file URL, or an image name"
        elif not _IMAGE_NAME.match(image):
            errors["image_source"] = "an image name is letters, digits and . _ : - (at most 255)"
        drive = params.get("configdrive")
        if drive is not None:
            if not isinstance(drive, str | dict):
                errors["configdrive"] = "must be a string or a JSON object"
            else:
                size = len((drive if isinstance(drive, str) else json.dumps(drive)).encode())
                if size > MAX_CONFIGDRIVE:
                    errors["configdrive"] = f"is {size} bytes; at most {MAX_CONFIGDRIVE} (64 KiB)"
    if errors:
        raise InvalidInput(
            "Invalid provision request: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())),
            errors=errors,
        )
    return {k: v for k, v in params.items() if v is not None}


def public_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Request parameters as shown: the config drive (user data, keys) by size only, URL passwords masked."""
    shown = dict(params or {})
    drive = shown.get("configdrive")
    if drive is not None:
        size = len((drive if isinstance(drive, str) else json.dumps(drive)).encode())
        shown["configdrive"] = f"<{size} bytes>"
    image = shown.get("image_source")
    if isinstance(image, str) and "@" in image and "://" in image:
        parsed = urllib.parse.urlsplit(image)
        if parsed.password:
            netloc = f"{parsed.username}:******@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
            shown["image_source"] = urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return shown


def _identical(active: Any, kind: str, target: str, params: Mapping[str, Any], callback_url: str | None) -> bool:
    return (
        active.kind == kind
        and active.target == target
        and (active.params or {}) == dict(params)
        and active.callback_url == callback_url
    )


_nodes_t = Node.__table__
_requests_t = Request.__table__
# Accepting a request is the API's hot path: its statements are built once.
_NODE_COLUMNS = (
    _nodes_t.c.id,
    _nodes_t.c.uuid,
    _nodes_t.c.provision_state,
    _nodes_t.c.power_state,
    _nodes_t.c.active_request_id,
    _nodes_t.c.maintenance,
    _nodes_t.c.maintenance_reason,
)
_NODE_BY_UUID = sa.select(*_NODE_COLUMNS).where(_nodes_t.c.uuid == sa.bindparam("ident"))
_NODE_BY_NAME = sa.select(*_NODE_COLUMNS).where(_nodes_t.c.name == sa.bindparam("ident"))
_ACTIVE_REQUEST = sa.select(_requests_t).where(_requests_t.c.id == sa.bindparam("rid"))
_INSERT_REQUEST = sa.insert(_requests_t)


def _claim_node(target_column: str | None, stale: bool) -> sa.Update:
    owner = (
        _nodes_t.c.active_request_id == sa.bindparam("stale")
        if stale
        else _nodes_t.c.active_request_id.is_(None)
    )
    return (
        sa.update(_nodes_t)
        .where(_nodes_t.c.id == sa.bindparam("node_id"), owner,
               _nodes_t.c.provision_state == sa.bindparam("expected_state"))
        .values({"active_request_id": sa.bindparam("rid"), "updated_at": sa.bindparam("now"),
                 **({target_column: sa.bindparam("target_state")} if target_column else {})})
    )


_CLAIM_NODE = {
    (column, stale): _claim_node(column, stale)
    for column in ("target_power_state", "target_provision_state", None)
    for stale in (False, True)
}


def _submit(
    ctx: Context,
    ident: str,
    kind: RequestKind,
    target: str,
    params: Mapping[str, Any],
    callback_url: str | None,
    client: str | None,
    idempotency_key: IdempotencyKey | None,
    validate: Callable[[Any], dict[str, Any]],
) -> Submitted:
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
                    if _identical(active, kind, target, params, callback_url):
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
            # The node column showing the target (none for a management request).
            target_column, target_state = next(iter(validate(node).items()), (None, None))
            now = utcnow()
            request = Request(
                id=new_request_id(),
                node_id=node.id,
                node_uuid=node.uuid,
                kind=str(kind),
                target=str(target),
                params=dict(params),
                progress={},
                state=RequestState.QUEUED,
                callback_url=callback_url,
                client=client,
                created_at=now,
                updated_at=now,
            )
            # The INSERT comes first so that SQLite takes its write lock
            # (waiting, not failing) before the conditional UPDATE.
            try:
                conn.execute(_INSERT_REQUEST, _row_of(request))
            except IntegrityError:
                # The node was deleted since we read it: look again (-> 404).
                conn.rollback()
                continue
            won = conn.execute(
                _CLAIM_NODE[(target_column, stale_active is not None)],
                {"node_id": node.id, "stale": stale_active, "expected_state": node.provision_state,
                 "rid": request.id, "now": now, "target_state": target_state},
            ).rowcount
            if won != 1:
                # Someone else changed the node since we read it: look again.
                conn.rollback()
                continue
            if idempotency_key is not None and not _remember(conn, idempotency_key, request.id, retention):
                continue
            conn.execute(
                history.INSERT,
                history.values(node.id, "request.accepted", f"Accepted {kind} request {target}.",
                               provision_state=node.provision_state, power_state=node.power_state,
                               request_id=request.id),
            )
            conn.commit()
        logs.bind_request_id(request.id)
        LOG.info("Accepted %s request %s of node %s from %s", kind, target, request.node_uuid, client)
        _enqueue_or_abandon(ctx, request)
        return Submitted(request, created=True)
    raise TransitionInProgress(
        f"Node {ident} is changing too fast to accept the request; retry.", request_id=None
    )


def _remember(conn: sa.Connection, key: IdempotencyKey, request_id: str, retention: float) -> bool:
    """Record ``key`` in the transaction; False (rolled back) when a concurrent use of it won."""
    try:
        idempotency.remember(conn, key, request_id, retention)
    except IntegrityError:
        conn.rollback()
        return False
    return True


def _row_of(request: Request) -> dict[str, Any]:
    return {column.key: getattr(request, column.key) for column in _requests_t.columns}


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
        _abandon(ctx, request.id, "The work queue is unavailable; the request was not accepted.")
        raise QueueUnavailable(
            "The work queue is unavailable; the request was not accepted. Retry later.",
            retry_after=5,
        ) from None


def _abandon(ctx: Context, request_id: str, reason: str) -> None:
    """Undo the acceptance of a request the client is told was not accepted.

    The row stays (failed, for the record) but nothing else treats it as
    accepted: its node is freed, its ``Idempotency-Key`` is forgotten (a
    retry with the same key makes a new request) and no callback fires.
    """
    with ctx.db.session() as session:
        with session.no_autoflush:
            taken = session.execute(
                sa.update(_requests_t)
                .where(_requests_t.c.id == request_id, _requests_t.c.state == RequestState.QUEUED)
                .values(state=RequestState.FAILED, error=reason, finished_at=utcnow(), updated_at=utcnow())
            ).rowcount
        if taken != 1:
            session.rollback()
            return
        session.execute(sa.delete(IdempotencyRecord).where(IdempotencyRecord.request_id == request_id))
        request = session.get(Request, request_id)
        assert request is not None
        node = session.get(Node, request.node_id)
        assert node is not None
        if node.active_request_id == request_id:
            node.active_request_id = None
            if request.kind == RequestKind.POWER:
                node.target_power_state = None
            elif request.kind == RequestKind.PROVISION:
                node.target_provision_state = None
        history.record(session, node, "request.rejected", f"Request {request.kind} {request.target} not accepted: {reason}",
                       request_id=request_id, severity="error")
        session.commit()


def finish(
    session: Session,
    node: Node,
    request: Request,
    state: RequestState,
    error: str | None = None,
    conductor: str | None = None,
) -> None:
    """End ``request`` in ``state`` and free its node, in the caller's transaction.

    Records the ``request.finished`` callbacks (the request's own
    ``callback_url`` and matching subscriptions) in the same transaction.
    """
    now = utcnow()
    request.state = str(state)
    request.error = error
    request.finished_at = now
    request.conductor = None
    request.wake_at = None
    if node.active_request_id == request.id:
        node.active_request_id = None
        if request.kind == RequestKind.POWER:
            node.target_power_state = None
        elif request.kind == RequestKind.PROVISION:
            node.target_provision_state = None
    node.updated_at = now
    metrics.request_finished(session, request)
    history.record(
        session,
        node,
        f"request.{state}",
        f"Request {request.kind} {request.target} {state}" + (f": {error}" if error else "."),
        request_id=request.id,
        conductor=conductor,
        severity="error" if state == RequestState.FAILED else "info",
    )
    events.emit(session, events.EventType.REQUEST_FINISHED, node, request)


def cancel(ctx: Context, request_id: str) -> Request:
    """Cancel a queued request, or abort a waiting one.

    Cancelling an already cancelled request returns it unchanged.

    :raises RequestNotFound: no such request.
    :raises RequestNotCancellable: it is running or has finished.
    """
    with ctx.db.session() as session:
        request = get(session, request_id)
        if request.state == RequestState.CANCELLED:
            return request
        if request.state == RequestState.WAITING:
            node = session.get(Node, request.node_id)
            assert node is not None
            _abort_waiting(session, node, request, "Cancelled by the user.", ctx.settings)
            session.commit()
            _drop_job(ctx, request.id)
            return request
        # Only a request that never started: one queued again mid-workflow
        # (an agent just reported) owns a busy or wait state that a cancel
        # would leave behind with nobody to finish it.
        cancelled = session.execute(
            sa.update(Request)
            .where(Request.id == request.id, Request.state == RequestState.QUEUED, Request.started_at.is_(None))
            .values(state=RequestState.CANCELLED, updated_at=utcnow())
        ).rowcount
        if cancelled != 1:
            session.rollback()
            session.refresh(request)
            if request.state == RequestState.QUEUED:
                raise RequestNotCancellable(
                    f"Request {request.id} has started and is between two steps that cannot be "
                    "interrupted; retry shortly (or abort it while it waits for the agent).",
                    request_id=request.id,
                    state=request.state,
                )
            raise RequestNotCancellable(
                f"Request {request.id} is {request.state} and can no longer be cancelled.",
                request_id=request.id,
                state=request.state,
            )
        node = session.get(Node, request.node_id)
        assert node is not None
        session.refresh(request)
        finish(session, node, request, RequestState.CANCELLED, "Cancelled by the user.")
        session.commit()
    _drop_job(ctx, request.id)
    return request


def _drop_job(ctx: Context, request_id: str) -> None:
    try:
        ctx.queue.cancel(request_id)
    except redis.RedisError:
        LOG.warning("Could not drop the job of request %s; the worker will skip it.", request_id)


def _abort_waiting(session: Session, node: Node, request: Request, reason: str, settings: Settings) -> None:
    """Abort the wait of ``request`` on ``node`` (``wait call-back`` and friends).

    :raises RequestNotCancellable: a step of it is running right now.
    """
    taken = session.execute(
        sa.update(Request)
        .where(
            Request.id == request.id,
            Request.state == RequestState.WAITING,
            Request.conductor.is_(None),
        )
        .values(state=RequestState.CANCELLED, updated_at=utcnow())
    ).rowcount
    if taken != 1:
        session.rollback()
        raise RequestNotCancellable(
            f"Request {request.id} is running a step that cannot be interrupted; retry shortly.",
            request_id=request.id,
        )
    session.refresh(request)
    if node.provision_state in table.WAIT_STATES:
        # The agent's token dies with the wait (a late heartbeat gets 401).
        pxe.forget_agent(settings, node)
        before = node.provision_state
        node.provision_state = str(machine.next_state(before, Event.ABORT))
        node.last_error = f"Aborted in {before}: {reason}"
        history.record(
            session,
            node,
            "provision.abort",
            f"{before} -> {node.provision_state} (aborted).",
            request_id=request.id,
        )
        _emit_abort(session, node, request, before)
    finish(session, node, request, RequestState.CANCELLED, reason)


def _emit_abort(session: Session, node: Node, request: Request, before: str) -> None:
    events.emit(
        session,
        events.EventType.PROVISION_STATE_CHANGED,
        node,
        request,
        previous={"provision_state": before},
        event=str(Event.ABORT),
    )


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
            _abort_waiting(session, node, waiting, f"Aborted by request {abort_request.id}.", ctx.settings)
        else:
            before = node.provision_state
            pxe.forget_agent(ctx.settings, node)
            node.provision_state = str(machine.next_state(before, Event.ABORT))
            node.target_provision_state = None
            history.record(session, node, "provision.abort", f"{before} -> {node.provision_state} (aborted).")
            _emit_abort(session, node, abort_request, before)
        finish(session, node, abort_request, RequestState.SUCCEEDED)
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
            _drop_job(ctx, waiting.id)
        return Submitted(abort_request, created=True)


def to_dict(request: Request) -> dict[str, Any]:
    """The API form of a request."""
    return {
        "id": request.id,
        "node_uuid": request.node_uuid,
        "kind": request.kind,
        "target": request.target,
        "params": public_params(request.params),
        "state": request.state,
        "step": request.step,
        "error": request.error,
        "conductor": request.conductor,
        "callback_url": request.callback_url,
        "callback": status.request_callback(request),
        "created_at": request.created_at,
        "started_at": request.started_at,
        "finished_at": request.finished_at,
        "updated_at": request.updated_at,
    }

