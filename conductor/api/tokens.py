"""``/v1/tokens``: API tokens (admin only, but ``/v1/tokens/self``); a secret is shown once, at creation."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from conductor.api import admission, schemas
from conductor.api.common import Blueprint, context, session
from conductor.auth import tokens
from conductor.models import ApiToken

blp = Blueprint("tokens", __name__, url_prefix="/v1/tokens", description="API tokens and their roles")


@blp.route("")
class Tokens(MethodView):
    @blp.arguments(schemas.TokenQuery, location="query")
    @blp.response(200, schemas.TokenList)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List tokens (never their secrets)."""
        return {"tokens": tokens.list_tokens(session(), args["all"])}

    @blp.arguments(schemas.TokenCreate, example={"role": "operator", "name": "ci-pipeline"})
    @blp.response(201, schemas.TokenCreated)
    def post(self, body: dict[str, Any]) -> tuple[tokens.Issued, dict[str, str]]:
        """Create a token with a role: ``reader``, ``operator`` or ``admin``.

        The response is the only place its secret and its callback signing
        secret are ever shown.
        """
        db_session = session()
        issued = tokens.issue(db_session, body["role"], body["name"])
        db_session.commit()
        return issued, {"Location": f"/v1/tokens/{issued.token.id}", "Cache-Control": "no-store"}


@blp.route("/self")
class TokenSelf(MethodView):
    @blp.response(200, schemas.Caller)
    def get(self) -> tokens.Principal:
        """Who the token of this call is: its id, name and role (any role may ask; without auth: admin)."""
        return admission.principal()


@blp.route("/<token_id>")
class TokenItem(MethodView):
    @blp.response(200, schemas.Token)
    def delete(self, token_id: str) -> ApiToken:
        """Revoke a token; every API process refuses it within a second."""
        return tokens.revoke(context(), token_id)
