"""HTTP sessions for the API's clients (the CLI, the demo, tests and benchmarks).

The API keeps connections alive between requests (gunicorn's threaded
worker, whose ``keepalive`` closes a connection idle for 10 s).  A client
that sends on a pooled connection just as the server closes it for
idleness gets a reset instead of an answer: the server never read the
request.  HTTP/1.1 lets a client retry an idempotent request then (RFC
9112, section 9.3.1), and browsers do; ``requests`` does not by default.
:func:`session` does, for the methods that are safe to send again (GET,
HEAD, OPTIONS): a write (PUT, POST, PATCH, DELETE) is never sent twice by
the client library; a caller that wants to retry one sends an
``Idempotency-Key``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

#: Methods sent again after a connection error (RFC 9110 "safe" methods).
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session(retries: int = 3) -> requests.Session:
    """A ``requests`` session that retries safe requests on connection errors (never on an HTTP status)."""
    http = requests.Session()
    retry = Retry(total=retries, connect=retries, read=retries, status=0, redirect=0, other=0,
                  allowed_methods=RETRIED_METHODS, backoff_factor=0.05, raise_on_status=False,
                  respect_retry_after_header=False)
    adapter = HTTPAdapter(max_retries=retry)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` value (delay seconds, or an HTTP date) as seconds from ``now`` (epoch; default: the
    present), never negative; None when absent or malformed.  A date without a zone is taken as UTC."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))

