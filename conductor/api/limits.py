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
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker
from werkzeug.exceptions import RequestEntityTooLarge

from conductor.api import errors

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


#: How long the threaded worker keeps an idle connection open (gunicorn's
#: default is 2 s).  OpenStack's clients retry a 409 or 503 and poll a
#: node's state every 2 s on a kept-alive connection: with a 2 s keep-alive
#: their next request races the server's close and fails with "Remote end
#: closed connection without response".  10 s is clear of every interval
#: they use (2 s; 0.5 s doubling).
KEEPALIVE = 10


def gunicorn_options(threads: int = 1, client_timeout: float = 60.0, held: int = 0) -> dict[str, Any]:
    """The gunicorn settings that enforce these limits and answer in JSON.

    :param threads: more than 1: the threaded worker (:class:`JsonErrorThreadWorker`).
    :param client_timeout: the threaded worker's socket timeout (see :class:`JsonErrorThreadWorker`).
    :param held: the threaded worker's threads for connections held open
        (event streams, long polls: ``event_stream_slots``), on top of ``threads``.
    """
    worker = JsonErrorThreadWorker if threads > 1 else JsonErrorWorker
    JsonErrorThreadWorker.client_timeout = client_timeout
    return {
        "worker_class": f"{worker.__module__}.{worker.__qualname__}",
        "threads": max(1, threads) + (max(0, held) if threads > 1 else 0),
        "keepalive": KEEPALIVE,
        "limit_request_line": MAX_REQUEST_LINE,
        "limit_request_fields": MAX_HEADER_FIELDS,
        "limit_request_field_size": MAX_HEADER_FIELD_SIZE,
    }


def error_bytes(status: int, code: str, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying our error, as problem details (the connection is closed after it)."""
    body = json.dumps(errors.problem(status, code, message)).encode() + b"\n"
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {errors.PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _refuse(worker: Any, client: Any, addr: Any, exc: BaseException) -> bool:
    """Answer one of gunicorn's own refusals with our JSON error; False when ``exc`` is not one."""
    refusal = next((refusal for refusal in _REFUSALS if isinstance(exc, refusal[0])), None)
    if refusal is None:
        return False
    _kinds, status, code, reason = refusal
    worker.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
    try:
        util.write_nonblock(client, error_bytes(status, code, reason, _MESSAGES.get(status, str(exc))))
    except OSError:
        worker.log.debug("Failed to send error message.")
    return True


class JsonErrorWorker(SyncWorker):
    """Gunicorn's sync worker, answering the requests it refuses itself with our JSON error."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if not _refuse(self, client, addr, exc):
            super().handle_error(req, client, addr, exc)


class JsonErrorThreadWorker(ThreadWorker):
    """Gunicorn's threaded worker, answering the requests it refuses itself with our JSON error.

    Gunicorn leaves a request's socket blocking without a timeout: here each
    request's socket gets ``client_timeout``, so a client that stops reading
    a download (or sending its body) for that long frees its thread and
    loses its connection, as the sync worker's process would be killed after
    gunicorn's timeout.  The timeout is per wait, not per request: a slow
    download that keeps moving is not cut.
    """

    client_timeout = 60.0

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if not _refuse(self, client, addr, exc):
            super().handle_error(req, client, addr, exc)

    def handle_request(self, req: Any, conn: Any) -> Any:
        conn.sock.settimeout(self.client_timeout)
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self.log.warning("Dropped a client that neither sent nor read for %s s: ip=%s %s %s",
                             self.client_timeout, (conn.client or ("",))[0], req.method, req.path)
            return False


def refuse_oversized_body() -> None:
    """Before every call: a chunked body over :data:`MAX_BODY` is 413, not silently truncated.

    :raises RequestEntityTooLarge: the body goes on past the limit.
    """
    # Only a chunked body has no length (HTTP/1.1): every other call, most GETs, leaves here.
    if "HTTP_TRANSFER_ENCODING" not in request.environ:
        return
    limit = request.max_content_length
    if request.content_length is not None or limit is None or "wsgi.input_terminated" not in request.environ:
        return
    # Werkzeug reads at most ``limit`` bytes of it (and caches them for the view).
    if len(request.get_data(cache=True)) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge(f"The body is larger than {limit} bytes.")
