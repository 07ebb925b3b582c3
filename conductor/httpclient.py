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
import ipaddress
import time
import urllib.parse
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

#: Methods sent again after a connection error (RFC 9110 "safe" methods).
RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _Session(requests.Session):
    """A session whose CA file wins over ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``.

    (``requests`` lets those environment variables replace a session's
    ``verify`` on every request; a CA given on the command line must not
    lose to the environment.)
    """

    def __init__(self, ca_cert: str | None) -> None:
        super().__init__()
        self.ca_cert = ca_cert

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> Any:
        if verify is None and self.ca_cert:
            verify = self.ca_cert
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


def session(retries: int = 3, ca_cert: str | None = None,
            client_cert: tuple[str, str] | str | None = None) -> requests.Session:
    """A ``requests`` session that retries safe requests on connection errors (never on an HTTP status).

    ``ca_cert`` (a PEM file of CA certificates) is what an ``https`` API's
    certificate must be signed by; None: the system's CAs (or
    ``REQUESTS_CA_BUNDLE``).  An untrusted certificate is never accepted.
    ``client_cert`` (a PEM file holding certificate and key, or the two
    files) is shown to an API that asks for one (mutual TLS).
    """
    http = _Session(ca_cert)
    if client_cert:
        http.cert = client_cert
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


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

