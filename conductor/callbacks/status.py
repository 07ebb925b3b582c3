"""How deliveries look in the API: on a request (``callback``) and in lists."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from conductor.models import CallbackDelivery, Request


def delivery_to_dict(delivery: CallbackDelivery) -> dict[str, Any]:
    """The API form of a delivery (its body is not shown)."""
    return {
        "id": delivery.webhook_id,
        "event_type": delivery.event_type,
        "node_uuid": delivery.node_uuid,
        "request_id": delivery.request_id,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "next_at": delivery.next_at,
        "created_at": delivery.created_at,
        "finished_at": delivery.finished_at,
    }


def request_callback(request: Request) -> dict[str, Any] | None:
    """The ``callback`` of a request: None without ``callback_url``.

    Until the request finishes (or when the request was read in a session
    that is gone) there is no delivery to show yet: ``pending``, no attempts.
    """
    if not request.callback_url:
        return None
    delivery = None
    state = sa.inspect(request)
    if "callback_delivery" not in state.unloaded or state.session is not None:
        delivery = request.callback_delivery
    if delivery is None:
        return {"id": None, "state": "pending", "attempts": 0, "last_status": None,
                "last_error": None, "next_at": None}
    return {
        "id": delivery.webhook_id,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "next_at": delivery.next_at,
    }
