"""A request's callback delivery, as far as it can be read without a query.

The API shows it (``callback`` in :class:`conductor.api.schemas.RequestOut`).
"""

from __future__ import annotations

import sqlalchemy as sa

from conductor.models import CallbackDelivery, Request


def request_delivery(request: Request) -> CallbackDelivery | None:
    """The delivery of the request's ``callback_url``, or None when there is none to show.

    None until the request finishes (the delivery is made then), and when
    the request was read in a session that is gone and never loaded it (no
    query is possible; its delivery is shown as not made yet).
    """
    state = sa.inspect(request)
    if "callback_delivery" in state.unloaded and state.session is None:
        return None
    return request.callback_delivery
