"""``/v1/callbacks/secret``: the caller's signing secret (fingerprint; rotate)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from conductor.api import admission, schemas
from conductor.api.common import Blueprint, context, session
from conductor.callbacks import secrets

blp = Blueprint("callbacks", __name__, url_prefix="/v1/callbacks", description="Callback signing")


@blp.route("/secret")
class Secret(MethodView):
    @blp.response(200, schemas.CallbackSecret)
    def get(self) -> dict[str, Any]:
        """The caller's signing secret: its fingerprint and dates, never the secret."""
        return secrets.describe(session(), admission.client())


@blp.route("/secret/rotate")
class Rotate(MethodView):
    @blp.response(201, schemas.CallbackSecretRotated)
    def post(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Make a new signing secret and show it, once.

        The previous secret keeps signing (both signatures are sent) for
        ``callback_secret_overlap`` seconds.
        """
        client = admission.client()
        secret = secrets.rotate(session(), client, context().settings.callback_secret_overlap)
        body = {**secrets.describe(session(), client), "secret": secret}
        return body, {"Cache-Control": "no-store"}
