"""``/v1/conductors``: the conductors and whether they are alive."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from conductor.api import schemas
from conductor.api.common import Blueprint, context
from conductor.engine.conductors import list_conductors

blp = Blueprint("conductors", __name__, url_prefix="/v1/conductors", description="Conductors")


@blp.route("")
class Conductors(MethodView):
    @blp.response(200, schemas.ConductorList)
    def get(self) -> dict[str, Any]:
        """Every conductor that ever registered, with ``alive`` from its heartbeat."""
        ctx = context()
        return {"conductors": list_conductors(ctx.db, ctx.settings.heartbeat_timeout)}
