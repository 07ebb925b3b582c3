"""The API's size limits, and our JSON error when one is exceeded.

* request line (method, path, query, version): :data:`MAX_REQUEST_LINE`
  bytes, else 414 ``uri_too_long``;
* headers: :data:`MAX_HEADER_FIELDS` fields of at most
  :data:`MAX_HEADER_FIELD_SIZE` bytes each, else 431 ``headers_too_large``;
* body: :data:`MAX_BODY` bytes, else 413 ``payload_too_large``, with a
  ``Content-Length`` or chunked.

Gunicorn enforces the first two while it parses the request, before any
application code runs, and answers with an HTML page of its own:
:class:`JsonErrorWorker` answers with our ``{code, status, message}``
instead. Werkzeug enforces the body limit on a ``Content-Length`` at once,
but only truncates a chunked body at the limit (the JSON parse would then
fail with a 400): :func:`refuse_oversized_body` makes that a 413.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import request
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.sync import SyncWorker
from werkzeug.exceptions import RequestEntityTooLarge

LOG = logging.getLogger(__name__)

#: Gunicorn's defaults, named: the longest URL the API builds (a node's
#: history with a marker and a limit) is well under 1 KB.
MAX_REQUEST_LINE = 4094
MAX_HEADER_FIELDS = 100
MAX_HEADER_FIELD_SIZE = 8190
#: A node with its driver_info, properties and extra (64 KiB each) fits.
MAX_BODY = 1 << 20

#: Gunicorn's refusals of a malformed request, as (status, code, reason).
_REFUSALS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int, str, str], ...] = (
    (http_errors.LimitRequestLine, 414, "uri_too_long", "URI Too Long"),
    (http_errors.LimitRequestHeaders, 431, "headers_too_large", "Request Header Fields Too Large"),
    ((http_errors.InvalidRequestLine, http_errors.InvalidRequestMethod, http_errors.InvalidHTTPVersion,
      http_errors.InvalidHeader, http_errors.InvalidHeaderName, http_errors.ObsoleteFolding,
      http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension),
     400, "bad_request", "Bad Request"),
)
_MESSAGES = {
    414: f"The request line is longer than {MAX_REQUEST_LINE} bytes.",
    431: f"Too many header fields (at most {MAX_HEADER_FIELDS}) "
         f"or one longer than {MAX_HEADER_FIELD_SIZE} bytes.",
}


def gunicorn_options() -> dict[str, Any]:
    """The gunicorn settings that enforce these limits and answer in JSON."""
    return {
        "worker_class": f"{JsonErrorWorker.__module__}.{JsonErrorWorker.__qualname__}",
        "limit_request_line": MAX_REQUEST_LINE,
        "limit_request_fields": MAX_HEADER_FIELDS,
        "limit_request_field_size": MAX_HEADER_FIELD_SIZE,
    }


def error_bytes(status: int, code: str, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying our JSON error (the connection is closed after it)."""
    body = json.dumps({"code": code, "status": status, "message": message}).encode() + b"\n"
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrorWorker(SyncWorker):
    """Gunicorn's sync worker, answering the requests it refuses itself with our JSON error."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        refusal = next((refusal for refusal in _REFUSALS if isinstance(exc, refusal[0])), None)
        if refusal is None:
            super().handle_error(req, client, addr, exc)
            return
        _kinds, status, code, reason = refusal
        self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        try:
            util.write_nonblock(client, error_bytes(status, code, reason, _MESSAGES.get(status, str(exc))))
        except OSError:
            self.log.debug("Failed to send error message.")


def refuse_oversized_body() -> None:
    """Before every call: a chunked body over :data:`MAX_BODY` is 413, not silently truncated.

    :raises RequestEntityTooLarge: the body goes on past the limit.
    """
    limit = request.max_content_length
    if request.content_length is not None or limit is None or "wsgi.input_terminated" not in request.environ:
        return
    # Werkzeug reads at most ``limit`` bytes of it (and caches them for the view).
    if len(request.get_data(cache=True)) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge(f"The body is larger than {limit} bytes.")
