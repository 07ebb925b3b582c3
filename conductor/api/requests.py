"""``/v1/requests``: poll, list and cancel asynchronous requests."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView

from conductor.api import events, schemas
from conductor.api.common import Blueprint, context, next_link, session, tagged_json
from conductor.models import Request
from conductor.service import requests as request_service

_REQUEST_OUT = schemas.RequestOut()

blp = Blueprint("requests", __name__, url_prefix="/v1/requests", description="Asynchronous requests")


@blp.route("")
class Requests(MethodView):
    @blp.arguments(schemas.RequestQuery, location="query")
    @blp.response(200, schemas.RequestList)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List requests, newest first, filtered by node, state and kind."""
        limit, marker = args.pop("limit"), args.pop("marker")
        items = request_service.list_requests(session(), limit=limit, marker=marker, **args)
        return {"requests": items, "next": next_link(items, limit, items[-1].id if items else None)}


@blp.route("/<request_id>")
class RequestItem(MethodView):
    @blp.arguments(schemas.RequestWait, location="query")
    @blp.response(200, schemas.RequestOut)
    def get(self, args: dict[str, Any], request_id: str) -> Response:
        """Show a request; with ``wait``, as soon as it finishes or after ``wait`` seconds (a long poll)."""
        if args["wait"] > 0:
            found = events.wait_for_end(request_id, args["wait"])
        else:
            found = request_service.get(session(), request_id)
        # With an ETag (a digest of the body) and 304 to an If-None-Match naming it: at the end
        # of a long poll too, so a client that already saw the request finished is told so in 304.
        return tagged_json(_REQUEST_OUT.dump(found))

    @blp.response(200, schemas.RequestOut)
    def delete(self, request_id: str) -> Request:
        """Cancel a queued request (or abort a waiting one); 409 once it runs."""
        return request_service.cancel(context(), request_id)
