"""Requests for the API: look-ups, listings, cancel.

How a request is accepted is :mod:`conductor.service.submit`; how it ends
(and frees its node) is :mod:`conductor.core.requests`.
"""

from __future__ import annotations

import logging

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from conductor.context import Context
from conductor.core import requests as core_requests
from conductor.exceptions import RequestNotCancellable, RequestNotFound
from conductor.fsm.states import ACTIVE_REQUEST_STATES, RequestState
from conductor.models import Node, Request
from conductor.service import nodes

LOG = logging.getLogger(__name__)


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
            assert node is not None  # the request's foreign key
            core_requests.abort_waiting(session, node, request, "Cancelled by the user.", ctx.settings)
            session.commit()
            drop_job(ctx, request.id)
            return request
        if not core_requests.cancel_queued(session, request):
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
        session.commit()
    drop_job(ctx, request.id)
    return request


def drop_job(ctx: Context, request_id: str) -> None:
    """Drop the queued job of a request that ended (best effort: a worker skips it anyway)."""
    try:
        ctx.queue.cancel(request_id)
    except redis.RedisError:
        LOG.warning("Could not drop the job of request %s; the worker will skip it.", request_id)
