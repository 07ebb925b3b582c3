"""Subscriptions: standing orders to POST matching events to a URL.

A subscription names event type patterns (``node.*``, ``*``...) and,
optionally, the nodes it is about (by UUID or name, stored as UUIDs).  Its
deliveries are signed with the secret of the client that created it, and
go out in order for each node.  Deleting a subscription fails its pending
deliveries; so does a receiver answering 410 Gone, which also disables it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conductor.callbacks import delivery, destinations, events
from conductor.database import rowcount
from conductor.exceptions import InvalidInput, SubscriptionNotFound
from conductor.models import CallbackDelivery, CallbackSubscription, utcnow
from conductor.service import nodes as node_service
from conductor.settings import Settings


def new_subscription_id() -> str:
    """A new subscription id, ``sub-`` followed by 32 hex digits."""
    return f"sub-{uuid.uuid4().hex}"


def create(
    session: Session,
    settings: Settings,
    url: str,
    event_patterns: Sequence[str],
    node_idents: Sequence[str] | None = None,
    client: str | None = None,
) -> CallbackSubscription:
    """Create a subscription and commit.

    :raises InvalidInput: bad event patterns or URL.
    :raises CallbackUrlDenied: the URL's destination is refused.
    :raises NodeNotFound: a node of the filter does not exist.
    """
    patterns = events.check_patterns(event_patterns)
    destinations.check(settings, url)
    node_uuids: list[str] = []
    for ident in node_idents or ():
        found = node_service.find(session, ident).uuid
        if found not in node_uuids:
            node_uuids.append(found)
    subscription = CallbackSubscription(
        id=new_subscription_id(),
        url=url,
        events=patterns,
        nodes=node_uuids,
        client=client,
        active=True,
    )
    session.add(subscription)
    session.commit()
    return subscription


#: ``owner`` value that sees every subscription (admins, or auth off).
EVERYONE = None


def _owned(owner: str | None) -> sa.ColumnElement[bool]:
    return sa.true() if owner is EVERYONE else CallbackSubscription.client == owner


def get(session: Session, subscription_id: str, owner: str | None = EVERYONE) -> CallbackSubscription:
    """The subscription ``subscription_id``, if ``owner`` created it (``EVERYONE``: any).

    A client sees only its own subscriptions: their URLs may carry secrets.

    :raises SubscriptionNotFound: no such subscription (of that owner).
    """
    subscription = session.get(CallbackSubscription, subscription_id)
    if subscription is None or (owner is not EVERYONE and subscription.client != owner):
        raise SubscriptionNotFound(
            f"Subscription {subscription_id} not found.", subscription_id=subscription_id
        )
    return subscription


def list_subscriptions(session: Session, owner: str | None = EVERYONE) -> list[CallbackSubscription]:
    """The subscriptions ``owner`` created (``EVERYONE``: all), oldest first."""
    return list(
        session.scalars(
            sa.select(CallbackSubscription)
            .where(_owned(owner))
            .order_by(CallbackSubscription.created_at, CallbackSubscription.id)
        )
    )


def delete(session: Session, subscription_id: str, owner: str | None = EVERYONE) -> None:
    """Delete a subscription ``owner`` created, failing its pending deliveries, and commit.

    :raises SubscriptionNotFound: no such subscription (of that owner).
    """
    # The conditional write first (SQLite), then the deliveries.
    deleted = rowcount(session.execute(
        sa.delete(CallbackSubscription).where(CallbackSubscription.id == subscription_id, _owned(owner))
    ))
    if deleted != 1:
        session.rollback()
        raise SubscriptionNotFound(
            f"Subscription {subscription_id} not found.", subscription_id=subscription_id
        )
    now = utcnow()
    session.execute(
        sa.update(CallbackDelivery)
        .where(CallbackDelivery.subscription_id == subscription_id, CallbackDelivery.state == delivery.PENDING)
        .values(state=delivery.FAILED, last_error="The subscription was deleted.", next_at=None,
                finished_at=now, updated_at=now)
    )
    session.commit()


def deliveries(
    session: Session, subscription_id: str, limit: int, before: str | None = None, owner: str | None = EVERYONE
) -> list[CallbackDelivery]:
    """The subscription's deliveries, newest first, older than delivery ``before``.

    :raises SubscriptionNotFound: no such subscription.
    :raises InvalidInput: ``before`` names no delivery.
    """
    get(session, subscription_id, owner)
    query = sa.select(CallbackDelivery).where(CallbackDelivery.subscription_id == subscription_id)
    if before:
        anchor = session.scalar(sa.select(CallbackDelivery.id).where(CallbackDelivery.webhook_id == before))
        if anchor is None:
            raise InvalidInput(f"Marker delivery {before} not found.", errors={"marker": "unknown delivery"})
        query = query.where(CallbackDelivery.id < anchor)
    return list(session.scalars(query.order_by(CallbackDelivery.id.desc()).limit(limit)))


def deactivate_for_client(session: Session, client: str, reason: str) -> int:
    """Stop the subscriptions of ``client`` (its token was revoked), in the caller's transaction."""
    return rowcount(session.execute(
        sa.update(CallbackSubscription)
        .where(CallbackSubscription.client == client, CallbackSubscription.active.is_(True))
        .values(active=False, disabled_reason=reason, updated_at=utcnow())
    ))
