"""The only code that binds a request to its node and ends it.

A node's ``active_request_id`` (the long lock: "a transition is in
progress", 409 to anyone else) is set by :func:`accept`, a conditional
UPDATE that also requires the provision state the request was validated
against, and cleared by :func:`free_node`, which every way a request ends
goes through: :func:`finish` (succeeded, failed, cancelled: history,
metrics, the ``request.finished`` webhook) and :func:`abandon` (accepted
but never enqueued: the client was told 503).

Everything runs in the caller's transaction.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor import metrics
from conductor.callbacks import events
from conductor.core import history, states
from conductor.database import rowcount
from conductor.exceptions import RequestNotCancellable
from conductor.fsm import table
from conductor.fsm.states import RequestKind, RequestState
from conductor.models import IdempotencyRecord, Node, Request, utcnow
from conductor.settings import Settings

_nodes_t = Node.__table__
_requests_t = Request.__table__

# Accepting a request is the API's hot path: its statements are built once.
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
#: The node column that shows a request's target, by kind (a management request has none).
TARGET_COLUMNS: dict[str, str | None] = {
    RequestKind.POWER: "target_power_state",
    RequestKind.PROVISION: "target_provision_state",
    RequestKind.MANAGEMENT: None,
}


def row_of(request: Request) -> dict[str, Any]:
    """The columns of a request not yet added to a session, for a Core INSERT."""
    return {column.key: getattr(request, column.key) for column in _requests_t.columns}


def accept(
    conn: sa.Connection,
    request: Request,
    *,
    expected_state: str,
    target_state: str | None,
    stale: str | None,
    power_state: str | None,
) -> bool:
    """Insert ``request`` and make it its node's active request, on a plain connection.

    The node must still be in ``expected_state`` and have no active
    request (or exactly ``stale``, a pointer that outlived its request).
    Returns False (the caller rolls back and reads again) when the node
    changed meanwhile.  The INSERT comes first so that SQLite takes its
    write lock (waiting, not failing) before the conditional UPDATE.

    :raises IntegrityError: the node was deleted since it was read.
    """
    conn.execute(_INSERT_REQUEST, row_of(request))
    target_column = TARGET_COLUMNS[request.kind]
    won = conn.execute(
        _CLAIM_NODE[(target_column, stale is not None)],
        {"node_id": request.node_id, "stale": stale, "expected_state": expected_state,
         "rid": request.id, "now": request.created_at, "target_state": target_state},
    ).rowcount
    if won != 1:
        return False
    conn.execute(
        history.INSERT,
        history.values(request.node_id, "request.accepted", f"Accepted {request.kind} request {request.target}.",
                       provision_state=expected_state, power_state=power_state, request_id=request.id),
    )
    return True


def free_node(node: Node, request: Request) -> None:
    """Clear ``node``'s active request (and the target it showed) if it is ``request``."""
    if node.active_request_id != request.id:
        return
    node.active_request_id = None
    column = TARGET_COLUMNS.get(request.kind)
    if column is not None:
        setattr(node, column, None)


def finish(
    session: Session,
    node: Node,
    request: Request,
    state: RequestState,
    error: str | None = None,
    conductor: str | None = None,
) -> None:
    """End ``request`` in ``state`` and free its node.

    Records the history entry, the request's duration and the
    ``request.finished`` webhooks (the request's own ``callback_url`` and
    matching subscriptions).
    """
    now = utcnow()
    request.state = str(state)
    request.error = error
    request.finished_at = now
    request.conductor = None
    request.wake_at = None
    free_node(node, request)
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


def abandon(session: Session, request_id: str, reason: str) -> bool:
    """Undo the acceptance of a queued request the client is told was not accepted.

    The row stays (failed, for the record) but nothing else treats it as
    accepted: its node is freed, its ``Idempotency-Key`` is forgotten (a
    retry with the same key makes a new request) and no webhook fires.
    Returns False (rolled back) when the request is no longer queued.
    """
    now = utcnow()
    with session.no_autoflush:
        taken = rowcount(session.execute(
            sa.update(_requests_t)
            .where(_requests_t.c.id == request_id, _requests_t.c.state == RequestState.QUEUED)
            .values(state=RequestState.FAILED, error=reason, finished_at=now, updated_at=now)
        ))
    if taken != 1:
        session.rollback()
        return False
    session.execute(sa.delete(IdempotencyRecord).where(IdempotencyRecord.request_id == request_id))
    request = session.get(Request, request_id)
    assert request is not None  # updated just above, in this transaction
    node = session.get(Node, request.node_id)
    assert node is not None  # the request's foreign key
    free_node(node, request)
    history.record(session, node, "request.rejected",
                   f"Request {request.kind} {request.target} not accepted: {reason}",
                   request_id=request_id, severity="error")
    # The event stream showed it queued: it shows it end (no webhook: never accepted).
    events.emit(session, events.EventType.REQUEST_FINISHED, node, request, webhooks=False)
    return True


def _mark_cancelled(session: Session, request: Request, *conditions: sa.ColumnElement[bool]) -> bool:
    """Mark ``request`` cancelled if ``conditions`` hold (one conditional UPDATE); else roll back."""
    taken = rowcount(session.execute(
        sa.update(Request).where(Request.id == request.id, *conditions)
        .values(state=RequestState.CANCELLED, updated_at=utcnow())
    ))
    if taken != 1:
        session.rollback()
        return False
    return True


def cancel_queued(session: Session, request: Request) -> bool:
    """Cancel ``request`` if it is queued and never started; False (rolled back) otherwise.

    A request queued again mid-workflow (an agent just reported) owns a
    busy or wait state that a cancel would leave with nobody to finish it.
    """
    if not _mark_cancelled(session, request, Request.state == RequestState.QUEUED, Request.started_at.is_(None)):
        return False
    node = session.get(Node, request.node_id)
    assert node is not None  # the request's foreign key
    session.refresh(request)
    finish(session, node, request, RequestState.CANCELLED, "Cancelled by the user.")
    return True


def abort_waiting(session: Session, node: Node, request: Request, reason: str, settings: Settings) -> None:
    """End the wait of ``request`` on ``node`` (``wait call-back`` and friends): cancelled.

    The node's wait state is aborted through the state machine.

    :raises RequestNotCancellable: a step of it is running right now (rolled back).
    """
    if not _mark_cancelled(session, request, Request.state == RequestState.WAITING, Request.conductor.is_(None)):
        raise RequestNotCancellable(
            f"Request {request.id} is running a step that cannot be interrupted; retry shortly.",
            request_id=request.id,
        )
    session.refresh(request)
    if node.provision_state in table.WAIT_STATES:
        states.abort(session, node, request, settings, reason)
    finish(session, node, request, RequestState.CANCELLED, reason)
