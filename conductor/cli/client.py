"""A small HTTP client of the conductor API for the CLI.

Only ``requests`` is imported here: the CLI must start fast and work
against a remote deployment.

Every call is retried, within a bounded total wait, when the API answers
503 with a ``Retry-After`` (admission control: a rate budget, a full queue,
a database blip): see :meth:`Client.call`.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import click
import requests

from conductor import httpclient
from conductor.cli import exits

# Imports inside functions: most commands are thin API clients, so each command
# imports the server side it needs (settings, database, Flask, RQ, workers) when
# it runs; `conductor --help` and the client commands stay quick to start.

DEFAULT_URL = "http://127.0.0.1:6385"
FINAL_STATES = ("succeeded", "failed", "cancelled")
#: The longest a call sleeps in all on 503 + Retry-After before it gives up (--max-retry-wait).
DEFAULT_MAX_RETRY_WAIT = 120.0
#: 503 codes of admission control: refused before anything was recorded, so
#: even a POST, PATCH or DELETE may be sent again.
_ADMISSION_REFUSALS = frozenset({"rate_limited", "queue_full"})
#: Methods sent again on any 503 + Retry-After (the CLI's PUTs of work carry an Idempotency-Key).
_REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS", "PUT"})
#: How long one long poll of a request asks the API to wait (its limit, request_wait_max, is 60 s).
LONG_POLL = 30.0
#: The same while a progress line is shown: how stale the line may get.
PROGRESS_POLL = 5.0
#: The pause after a long poll the API answered early, unfinished (its wait slots were busy).
EARLY_PAUSE = 1.0


class ApiError(click.ClickException):
    """The API answered with an error (its ``code`` and ``message`` are shown); exit status 3."""

    exit_code = exits.REFUSED

    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None = None) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("code", "error"))
        #: The response's ``Retry-After`` header, if any.
        self.retry_after = retry_after
        super().__init__(f"{body.get('message', 'request failed')} [{status} {self.code}]")


class Unreachable(click.ClickException):
    """The API cannot be reached; exit status 4."""

    exit_code = exits.UNREACHABLE


class Untrusted(Unreachable):
    """The API's TLS certificate is not trusted (or TLS failed); exit status 4."""


class PlainHttpRefused(click.ClickException):
    """A token would have gone over plain HTTP to another host; exit status 64 (fix the command line)."""

    exit_code = exits.USAGE


class WaitTimeout(click.ClickException):
    """``--timeout`` passed before the request finished (it goes on); exit status 2."""

    exit_code = exits.TIMEOUT


@dataclass(frozen=True)
class Credentials:
    """The token the CLI sends, and where it came from (for an honest 401 hint)."""

    token: str | None
    #: ``given`` (--token / CONDUCTOR_TOKEN), ``local`` (a local ``conductor up``'s file) or ``none``.
    source: str
    token_file: Path | None = None


class Client:
    """The API at ``url``."""

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        token: str | None = None,
        *,
        credentials: Credentials | None = None,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        ca_cert: str | None = None,
        allow_plain_http: bool = False,
        client_cert: tuple[str, str] | str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.credentials = credentials or Credentials(token, "given" if token else "none")
        self.max_retry_wait = max_retry_wait
        self.ca_cert = ca_cert
        self.allow_plain_http = allow_plain_http
        self.client_cert = client_cert
        self.session = httpclient.session(ca_cert=ca_cert, client_cert=client_cert)
        #: What :meth:`poll` saw last, by path: (ETag, body).
        self._polled: dict[str, tuple[str, Any]] = {}
        if self.credentials.token:
            self.session.headers["Authorization"] = f"Bearer {self.credentials.token}"

    def copy(self) -> Client:
        """Another client of the same API and token, with its own connections (one per thread)."""
        return Client(self.url, self.timeout, credentials=self.credentials, max_retry_wait=self.max_retry_wait,
                      ca_cert=self.ca_cert, allow_plain_http=self.allow_plain_http, client_cert=self.client_cert)

    def check_transport(self) -> None:
        """Refuse to send a token in clear text off this machine.

        :raises PlainHttpRefused: a token is to go over ``http://`` to a
            host that is not the loopback, and plain HTTP was not allowed.
        """
        if (self.credentials.token and not self.allow_plain_http and self.url.lower().startswith("http://")
                and not httpclient.is_loopback(self.url)):
            raise PlainHttpRefused(
                f"Refusing to send the API token over plain HTTP to {self.url}: anyone on the path could "
                "read it. Use the https:// URL of the API (or of its TLS proxy), or, on a network you trust, "
                "--allow-plain-http (CONDUCTOR_ALLOW_PLAIN_HTTP=1)."
            )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API; the decoded JSON body (None for 204).

        A 503 with ``Retry-After`` is sent again after the time it asks for
        (said on stderr), as long as the sleeps add up to at most
        ``max_retry_wait`` seconds; for POST, PATCH and DELETE only when
        admission control refused it (nothing was recorded).

        :raises ApiError: an error response (a 503 when retries would pass the budget).
        :raises Unreachable: the API cannot be reached.
        """
        slept = 0.0
        while True:
            try:
                return self._call_once(method, path, **kwargs)
            except ApiError as exc:
                delay = _retry_delay(method, exc)
                if delay is None or slept + delay > self.max_retry_wait:
                    raise
                delay += random.uniform(0, min(0.5, delay / 4))  # callers told the same time do not return at once
                click.echo(f"{method} {path}: {exc.status} {exc.code}; retrying in {delay:.1f} s as Retry-After "
                           f"asks ({slept:.0f} s of at most {self.max_retry_wait:.0f} s waited so far)", err=True)
                time.sleep(delay)
                slept += delay

    def poll(self, path: str, **kwargs: Any) -> Any:
        """``GET path`` as a poller does: with the ETag of its last answer as ``If-None-Match``.

        A 304 (nothing changed) stands for the body seen last, which is returned
        again: the API sends no body, and this parses none.
        """
        seen = self._polled.get(path)
        headers = {"If-None-Match": seen[0]} if seen else {}
        return self.call("GET", path, headers=headers, poll=path, **kwargs)

    def _call_once(self, method: str, path: str, **kwargs: Any) -> Any:
        timeout = kwargs.pop("timeout", self.timeout)
        polled = kwargs.pop("poll", None)
        self.check_transport()
        try:
            response = self.session.request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise Untrusted(tls_failure(self.url, self.ca_cert, exc)) from None
        except requests.ConnectionError:
            raise Unreachable(
                f"Cannot reach the conductor API at {self.url} (is `conductor up` running? "
                "set --url or CONDUCTOR_URL)"
            ) from None
        except OSError as exc:  # requests: a --ca-cert file that does not exist
            raise Untrusted(tls_failure(self.url, self.ca_cert, exc)) from None
        if response.status_code == 204:
            return None
        if polled is not None and response.status_code == 304 and polled in self._polled:
            return self._polled[polled][1]
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:200] or response.reason}
        if response.status_code >= 400:
            if not isinstance(body, dict):
                body = {"message": str(body)[:200]}
            if response.status_code == 401:
                body["message"] = f"{body.get('message', 'Unauthorized.')} {unauthorized_hint(self.credentials)}"
            raise ApiError(response.status_code, body, response.headers.get("Retry-After"))
        tag = response.headers.get("ETag")
        if polled is not None and tag:
            self._polled[polled] = (tag, body)
        return body

    def every(self, path: str, key: str, params: dict[str, Any], limit: int | None = None) -> list[dict[str, Any]]:
        """The items ``key`` of every page of ``GET path`` (at most ``limit``), following ``next`` links."""
        items: list[dict[str, Any]] = []
        params = {**params, "limit": min(limit or 1000, 1000)}
        url: str | None = path
        while url and (limit is None or len(items) < limit):
            page = self.call("GET", url, params=params if url == path else None)
            items.extend(page[key])
            url = page.get("next")
        return items[:limit] if limit else items

    def wait(
        self,
        request_id: str,
        show: Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait for a request to finish; return it.

        Long polls (``GET /v1/requests/<id>?wait=N``): the API answers as
        soon as the request ends, so this neither sleeps nor hammers it.

        :raises WaitTimeout: ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        longest = PROGRESS_POLL if show is not None else LONG_POLL
        wait = 0.0  # the first answer at once (the progress line starts)
        while True:
            asked = time.monotonic()
            request = self.poll(f"/v1/requests/{request_id}", params={"wait": f"{wait:.3f}"} if wait else None,
                                timeout=self.timeout + wait)
            states = None
            if show is not None:
                try:
                    states = self.poll(f"/v1/nodes/{request['node_uuid']}/states")
                except ApiError:
                    states = None
                show(request, states)
            if request["state"] in FINAL_STATES:
                self._polled.pop(f"/v1/requests/{request_id}", None)  # (a bulk run waits for thousands)
                return cast("dict[str, Any]", request)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeout(f"Request {request_id} still {request['state']} after {timeout} s")
            if wait and now - asked < wait / 2:
                time.sleep(EARLY_PAUSE)
            wait = longest if deadline is None else max(0.001, min(longest, deadline - time.monotonic()))


def default_url() -> str:
    """``CONDUCTOR_URL`` or the local default."""
    return os.environ.get("CONDUCTOR_URL", DEFAULT_URL)


def find_token(url: str, explicit: str | None) -> Credentials:
    """The token to send to ``url``: ``explicit`` (``--token`` / ``CONDUCTOR_TOKEN``), else the admin
    token of the local ``conductor up`` serving ``url``: the one of the default data directory
    (``CONDUCTOR_DATA_DIR``), else the one this user's registry of local services names."""
    if explicit:
        return Credentials(explicit, "given")
    from conductor.auth import tokenfile
    from conductor.settings import default_data_dir

    data_dir = default_data_dir()
    token = tokenfile.local_token_for(url, data_dir)
    if token:
        return Credentials(token, "local", data_dir / "admin.token")
    token_file = tokenfile.registered_token_file(url)
    token = tokenfile.read_secret(token_file) if token_file else None
    if token:
        return Credentials(token, "local", token_file)
    return Credentials(None, "none")


def resolve_token(url: str, explicit: str | None) -> str | None:
    """The token :func:`find_token` finds for ``url`` (None: none)."""
    return find_token(url, explicit).token


def unauthorized_hint(credentials: Credentials) -> str:
    """What to do about a 401, given the token that was sent (or not)."""
    how = ("Get a token: on the host running `conductor up`, the CLI finds its admin token by itself "
           "when --url is the URL `conductor up` printed (or pass --token \"$(cat <data dir>/admin.token)\"); "
           "an admin makes others with `conductor token create --role operator`; on a server host of a "
           "multi-host deployment, `conductor token create --role admin --direct` makes the first one.")
    if credentials.source == "given":
        return (f"The token given (--token or CONDUCTOR_TOKEN) was refused: revoked, mistyped or of another "
                f"deployment. {how}")
    if credentials.source == "local":
        return (f"The local admin token in {credentials.token_file} was refused: the service at this URL is "
                f"not the `conductor up` of that data directory, or the token was revoked (restarting "
                f"`conductor up` makes a new one). {how}")
    return f"No token was sent: none given and no local `conductor up` is known to serve this URL. {how}"


def _retry_delay(method: str, error: ApiError) -> float | None:
    """Seconds to wait before sending ``method`` again after ``error`` (None: do not)."""
    if error.status != 503 or error.retry_after is None:
        return None
    if method.upper() not in _REPEATABLE and error.code not in _ADMISSION_REFUSALS:
        return None
    return httpclient.retry_after_seconds(error.retry_after)


def tls_failure(url: str, ca_cert: str | None, error: Exception) -> str:
    """What to say when the TLS handshake with ``url`` failed."""
    reason = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        # "... [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: <why> (_ssl.c:1006) ..."
        found = re.search(r"certificate verify failed: ([^()]+)", reason)
        detail = found.group(1).strip() if found else "certificate verify failed"
        trusted = f"the CAs in {ca_cert}" if ca_cert else "the system's CAs"
        return (f"The TLS certificate of {url} is not trusted ({detail}) by {trusted}. Give the CA that "
                "signed it with --ca-cert FILE (or CONDUCTOR_CA_CERT); never turn verification off.")
    if "Could not find a suitable TLS CA certificate bundle" in reason:
        return f"Cannot read the CA certificate file {ca_cert} (--ca-cert / CONDUCTOR_CA_CERT)."
    if "Could not find the TLS certificate file" in reason or "Could not find the TLS key file" in reason:
        return f"{reason} (--client-cert / --client-key)."
    if "CERTIFICATE_REQUIRED" in reason.upper().replace(" ", "_"):
        return (f"{url} asks for a client certificate (mutual TLS): give it with --client-cert FILE "
                "[--client-key FILE] (or CONDUCTOR_CLIENT_CERT, CONDUCTOR_CLIENT_KEY).")
    return f"TLS with {url} failed: {reason}"
