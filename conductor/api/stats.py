"""``/v1/stats``: the figures an operator watches, as JSON (the dashboard polls it)."""

from __future__ import annotations

from typing import Any

import redis
from flask.views import MethodView

from conductor.api import metrics, schemas
from conductor.api.common import Blueprint, context
from conductor.exceptions import QueueUnavailable

blp = Blueprint("stats", __name__, url_prefix="/v1/stats",
                description="Queue depth, drain rate, requests in flight, accepted and refused state changes")

#: What a client is told to wait when Redis cannot be reached (s).
RETRY_AFTER = 5


@blp.route("")
class Stats(MethodView):
    @blp.response(200, schemas.Stats)
    def get(self) -> dict[str, Any]:
        """The work queue, requests in flight and admission totals now (``GET /metrics/fleet`` has them all)."""
        try:
            return metrics.summary(context())
        except redis.RedisError:
            raise QueueUnavailable("The figures are unavailable: Redis cannot be reached; retry later.",
                                   retry_after=RETRY_AFTER) from None
