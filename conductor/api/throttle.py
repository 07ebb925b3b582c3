"""``/v1/throttle``: the operator's knobs (admin only)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from conductor.api import schemas
from conductor.api.common import Blueprint, context
from conductor.throttle import settings as throttle_settings

blp = Blueprint("throttle", __name__, url_prefix="/v1/throttle", description="Rate limits, queue depth, BMC pacing")


@blp.route("")
class Throttle(MethodView):
    @blp.response(200, schemas.ThrottleSettings)
    def get(self) -> dict[str, Any]:
        """The throttle settings in force."""
        return throttle_settings.current(context()).to_dict()

    @blp.arguments(schemas.ThrottlePatch, example={"write_rate": 50, "client_write_rate": 10})
    @blp.response(200, schemas.ThrottleSettings)
    def patch(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change some knobs; every API and conductor process applies them within a second."""
        return throttle_settings.update(context(), changes).to_dict()
