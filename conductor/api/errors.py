"""One mapping from errors to responses: RFC 9457 problem details.

Every error is ``application/problem+json``: ``type`` (a tag URI naming
the error's ``code``: ``tag:baremetal-conductor,2026:error:<code>``),
``title`` (the code in words, the same for every error of that type),
``status``, ``detail`` (this occurrence, for people), plus our own
``code`` and ``message`` (the same text as ``detail``) and the error's
details (:func:`problem`).  The Ironic-compatible API rewrites these into
Ironic's own envelope afterwards (:mod:`conductor.api.ironic.envelope`).

* :class:`~conductor.exceptions.ConductorError`: its status and code, plus
  its details (``request_id``, ``allowed_targets``, ``errors``...); a 5xx
  shows a generic message, never the exception text.
* HTTP errors (unknown route, wrong method, bad body): the same shape;
  webargs' validation errors become 400 ``validation_error`` with the field
  errors in ``errors``.
* A transient database error (connection lost, deadlock, SQLite busy):
  the view runs again from the start, a few times (:func:`retry_views`),
  unless that could do a write twice (a POST or DELETE that committed);
  when it keeps failing, 503 ``database_unavailable`` with ``Retry-After``.
* Anything else: logged with its traceback, answered 500 ``internal_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from flask import Flask, Response, current_app, g, has_request_context, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from conductor import database
from conductor.api import docs
from conductor.api.common import close_session
from conductor.exceptions import ConductorError, DatabaseUnavailable, QueueFull, RateLimited

LOG = logging.getLogger(__name__)

#: The media type of every error (RFC 9457).
PROBLEM_JSON = "application/problem+json"
#: An error's ``type``: this prefix and its ``code`` (a tag URI, RFC 4151: a
#: name, not a page to fetch; docs/api.md lists the codes).
PROBLEM_TYPE_PREFIX = "tag:baremetal-conductor,2026:error:"

#: The codes of the HTTP errors raised by Flask, Werkzeug and webargs.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
}


_ACRONYMS = {"url": "URL", "bmc": "BMC", "uri": "URI"}


def problem_type(code: str) -> str:
    """The problem ``type`` of error ``code``."""
    return PROBLEM_TYPE_PREFIX + code


def problem_title(code: str) -> str:
    """The problem ``title`` of error ``code``: the code in words (``node_not_found``: "Node not found")."""
    words = code.replace("_", " ").capitalize().split(" ")
    return " ".join(_ACRONYMS.get(word, word) for word in words)


def problem(status: int, code: str, message: str, **details: Any) -> dict[str, Any]:
    """The body of an error: RFC 9457's members, then ours (``code``, ``message``), then ``details``."""
    return {"type": problem_type(code), "title": problem_title(code), "status": status, "detail": message,
            "code": code, "message": message, **details}


class ErrorSchema(ma.Schema):
    """Every error response: RFC 9457 problem details (``type``, ``title``, ``status``, ``detail``),
    our ``code`` and ``message``, plus the details of that error.

    The details are documented field by field (each names the codes that
    carry it); clients must ignore fields they do not know, since new
    details may be added, so the schema allows additional properties.
    """

    class Meta:
        unknown = ma.INCLUDE  # -> "additionalProperties": true in /openapi.json

    type = ma.fields.String(required=True, metadata={
        "description": "The error's type: 'tag:baremetal-conductor,2026:error:' and its code (a name, not a URL "
                       "to fetch)",
        "example": "tag:baremetal-conductor,2026:error:node_not_found"})
    title = ma.fields.String(required=True, metadata={
        "description": "The code in words: the same for every error of this type", "example": "Node not found"})
    status = ma.fields.Integer(required=True, metadata={"description": "HTTP status", "example": 404})
    detail = ma.fields.String(required=True, metadata={
        "description": "What went wrong this time, for people (the same text as message)",
        "example": "Node n1 not found."})
    code = ma.fields.String(required=True, metadata={"description": "Machine-readable error code",
                                                     "example": "node_not_found"})
    message = ma.fields.String(required=True, metadata={"description": "What went wrong, for people",
                                                        "example": "Node n1 not found."})
    errors = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.String(),
        metadata={"description": "Field -> message (validation_error and its kinds; callback_url_denied)"},
    )
    request_id = ma.fields.String(metadata={
        "description": "The request concerned: the one in progress (transition_in_progress), the one "
                       "not found or not cancellable, the original of a reused Idempotency-Key"})
    allowed_targets = ma.fields.List(ma.fields.String(), metadata={
        "description": "The targets the node's state allows (invalid_transition)"})
    provision_state = ma.fields.String(metadata={
        "description": "The node's provision state (invalid_transition, node_not_deletable, node_not_waiting)"})
    state = ma.fields.String(metadata={"description": "The request's state (request_not_cancellable)"})
    node = ma.fields.String(metadata={
        "description": "The node name or UUID asked for (node_not_found); the node owning the MAC "
                       "(port_address_in_use); the node associated with the instance (instance_associated)"})
    port = ma.fields.String(metadata={
        "description": "The port asked for (port_not_found); the port owning the MAC (port_address_in_use)"})
    address = ma.fields.String(metadata={"description": "The MAC address already in use (port_address_in_use)"})
    name = ma.fields.String(metadata={
        "description": "The node name already in use (node_name_in_use); the image name (image_name_in_use)"})
    image = ma.fields.String(metadata={"description": "The image asked for (image_not_found)"})
    request_ids = ma.fields.List(ma.fields.String(), metadata={
        "description": "The requests in progress deploying the image (image_in_use)"})
    uuid = ma.fields.String(metadata={"description": "The node UUID already in use (node_name_in_use)"})
    instance_uuid = ma.fields.String(metadata={
        "description": "The instance already associated with another node (instance_associated)"})
    holder = ma.fields.String(metadata={"description": "The conductor holding the node's reservation (node_locked)"})
    maintenance_reason = ma.fields.String(allow_none=True, metadata={
        "description": "Why the node is in maintenance (node_in_maintenance)"})
    token_id = ma.fields.String(metadata={"description": "The API token asked for (token_not_found)"})
    subscription_id = ma.fields.String(metadata={
        "description": "The callback subscription asked for (subscription_not_found)"})
    reason = ma.fields.String(metadata={
        "description": "Why the callback destination is refused (callback_url_denied)"})
    required_role = ma.fields.String(metadata={"description": "The role the call needs (forbidden)"})
    retry_after = ma.fields.Integer(metadata={
        "description": "Seconds to wait before retrying, as the Retry-After header (503s)"})
    etag = ma.fields.String(metadata={
        "description": "The node's current entity tag, as its ETag header (precondition_failed)"})


def _flatten(messages: Any, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key in ("json", "query", "form") and not prefix:
                flat.update(_flatten(value, ""))
            else:
                flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        flat[prefix or "_schema"] = " ".join(messages)
    else:
        flat[prefix or "_schema"] = str(messages)
    return flat


def problem_response(body: dict[str, Any]) -> Response:
    """The response of a :func:`problem` body."""
    response = current_app.response_class(current_app.json.dumps(body) + "\n", status=body["status"],
                                          mimetype=PROBLEM_JSON)
    return response


def error_response(status: int, code: str, message: str, **details: Any) -> Response:
    """An error response (problem details)."""
    return problem_response(problem(status, code, message, **details))


def handle_conductor_error(error: ConductorError) -> Response:
    # Admission refusals are the system working as meant (and, under
    # overload, thousands a second): counted in /metrics/fleet, not logged.
    if error.status >= 500 and not isinstance(error, RateLimited | QueueFull):
        LOG.error("%s: %s", error.code, error.message)
    body = error.to_dict()
    response = problem_response(problem(body.pop("status"), body.pop("code"), body.pop("message"), **body))
    retry_after = error.details.get("retry_after")
    if retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after))
    return response


def handle_http_error(error: HTTPException) -> Response:
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    if "messages" in data:
        errors = _flatten(data["messages"])
        message = "Invalid request: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
        return error_response(400, "validation_error", message, errors=errors)
    code = HTTP_CODES.get(status, "http_error")
    message = data.get("message") or error.description or error.name
    response = error_response(status, code, message)
    for key, value in (data.get("headers") or {}).items():
        response.headers[key] = value
    if status == 405 and error.get_headers():
        for key, value in error.get_headers():
            if key.lower() == "allow":
                response.headers["Allow"] = value
    return response


def handle_database_error(error: sa.exc.DBAPIError) -> Response:
    if database.is_transient(error):
        LOG.warning("%s %s: the database kept failing: %s", request.method, request.path,
                    str(error.orig or error).strip().splitlines()[0])
        return handle_conductor_error(DatabaseUnavailable(
            "The database is unavailable; retry later.", retry_after=database.UNAVAILABLE_RETRY_AFTER))
    return handle_unexpected(error)


#: Methods whose views may run again even after a commit (of unknown outcome,
#: or done): a submission's retry finds its own request (202, same id).  Not
#: DELETE: repeating one that was done answers 404 (or 409), as if it were not.
_REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS", "PUT"})


def _note_commit(_session: Any) -> None:
    if has_request_context():
        g.committed = True


def _may_repeat(error: sa.exc.DBAPIError) -> bool:
    if request.method in _REPEATABLE:
        return True
    # A failed statement means its transaction did not commit; a failure
    # without one may be a COMMIT whose outcome is unknown.  And a view
    # that committed before (more than one transaction, e.g. a rotation,
    # then a read for the answer) would do that part twice.
    return error.statement is not None and not g.get("committed")


def _with_retries(stage: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        g.pop("committed", None)  # (set by _note_commit: this stage committed)
        return database.retrying(stage, f"{request.method} {request.path}", may_repeat=_may_repeat,
                                 before_retry=close_session)

    return run


def retry_views(app: Flask) -> None:
    """Run a view (and, apart, the before-request hooks: authentication, admission)
    again from the start, with a new session, on a transient database error."""
    # Instance attributes: Flask's full_dispatch_request calls
    # self.preprocess_request() for the hooks, then self.dispatch_request()
    # for the view alone.
    app.extensions["conductor"].db.listen("after_commit", _note_commit)
    app.preprocess_request = _with_retries(app.preprocess_request)  # type: ignore[method-assign]
    app.dispatch_request = _with_retries(app.dispatch_request)  # type: ignore[method-assign]


def handle_unexpected(error: Exception) -> Response:
    LOG.exception("Unhandled error: %s", type(error).__name__)
    return error_response(500, "internal_error", "Internal error; see the conductor logs.")


class ConductorApi(Api):
    """flask-smorest's Api with the conductor's error shape."""

    ERROR_SCHEMA = ErrorSchema
    #: No "default" response: conductor/api/contract.py documents each status, 500 included.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _openapi_swagger_ui(self) -> Response:
        # Our page, not flask-smorest's template, whose inline script a
        # same-origin Content-Security-Policy would block.
        return docs.page()

    def handle_http_exception(self, error: HTTPException) -> Response:
        return handle_http_error(error)


def reject_nul() -> Response | None:
    """Refuse NUL characters anywhere in the path, query or JSON body (400).

    PostgreSQL cannot store them and would answer with a 500; no field of
    this API has a use for them.
    """
    if "\x00" in request.path or any("\x00" in v for v in request.args.values()):
        return error_response(400, "validation_error", "NUL characters are not allowed in the URL.",
                              errors={"url": "NUL character"})
    if request.content_length and request.mimetype == "application/json":
        body = request.get_data(cache=True)
        if b"\\u0000" in body or b"\x00" in body:
            return error_response(400, "validation_error", "NUL characters are not allowed in the body.",
                                  errors={"json": "NUL character"})
    return None


def register(app: Flask) -> None:
    """Install the error handlers on ``app`` (and the NUL guard, which runs first)."""
    app.before_request(reject_nul)
    app.register_error_handler(ConductorError, handle_conductor_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(sa.exc.DBAPIError, handle_database_error)
    retry_views(app)
    app.register_error_handler(Exception, handle_unexpected)
