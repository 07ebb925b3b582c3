"""``/v1/subscriptions``: standing callback subscriptions and their deliveries."""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView

from conductor.api import admission, schemas
from conductor.api.common import Blueprint, context, next_link, session
from conductor.auth.roles import Role
from conductor.callbacks import subscriptions
from conductor.models import CallbackSubscription

blp = Blueprint(
    "subscriptions", __name__, url_prefix="/v1/subscriptions", description="Callback subscriptions"
)


def _owner() -> str | None:
    """Whose subscriptions the caller may see: its own, or every one for admins."""
    principal = g.principal
    return subscriptions.EVERYONE if principal.role == Role.ADMIN else principal.client


@blp.route("")
class Subscriptions(MethodView):
    @blp.response(200, schemas.SubscriptionList)
    def get(self) -> dict[str, Any]:
        """List the subscriptions."""
        found = subscriptions.list_subscriptions(session(), _owner())
        return {"subscriptions": found}

    @blp.arguments(schemas.SubscriptionCreate, example={
        "url": "https://hooks.example.com/conductor", "events": ["request.finished", "node.*"], "nodes": []})
    @blp.response(201, schemas.Subscription)
    def post(self, body: dict[str, Any]) -> tuple[CallbackSubscription, dict[str, str]]:
        """Subscribe a URL to events, optionally of some nodes only (400 ``callback_url_denied``)."""
        created = subscriptions.create(
            session(), context().settings, body["url"], body["events"], body["nodes"], admission.client()
        )
        return created, {"Location": f"/v1/subscriptions/{created.id}"}


@blp.route("/<subscription_id>")
class SubscriptionItem(MethodView):
    @blp.response(200, schemas.Subscription)
    def get(self, subscription_id: str) -> CallbackSubscription:
        """Show a subscription."""
        return subscriptions.get(session(), subscription_id, _owner())

    @blp.response(204)
    def delete(self, subscription_id: str) -> None:
        """Delete a subscription; its pending deliveries fail."""
        subscriptions.delete(session(), subscription_id, _owner())


@blp.route("/<subscription_id>/deliveries")
class SubscriptionDeliveries(MethodView):
    @blp.arguments(schemas.DeliveryQuery, location="query")
    @blp.response(200, schemas.DeliveryList)
    def get(self, args: dict[str, Any], subscription_id: str) -> dict[str, Any]:
        """The subscription's deliveries, newest first, in pages of ``limit`` before ``marker``."""
        items = subscriptions.deliveries(session(), subscription_id, args["limit"], args["marker"], _owner())
        return {
            "deliveries": items,
            "next": next_link(items, args["limit"], items[-1].webhook_id if items else None),
        }
