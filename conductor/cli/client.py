"""A small HTTP client of the conductor API for the CLI.

Only ``requests`` is imported here: the CLI must start fast and work
against a remote deployment.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import click
import requests

from conductor import httpclient

# Imports inside functions: most commands are thin API clients, so each command
# imports the server side it needs (settings, database, Flask, RQ, workers) when
# it runs; `conductor --help` and the client commands stay quick to start.

DEFAULT_URL = "http://127.0.0.1:6385"
FINAL_STATES = ("succeeded", "failed", "cancelled")
#: How long one long poll of a request asks the API to wait (its limit, request_wait_max, is 60 s).
LONG_POLL = 30.0
#: The same while a progress line is shown: how stale the line may get.
PROGRESS_POLL = 5.0
#: The pause after a long poll the API answered early, unfinished (its wait slots were busy).
EARLY_PAUSE = 1.0


class ApiError(click.ClickException):
    """The API answered with an error (its ``code`` and ``message`` are shown)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        code = body.get("code", "error")
        super().__init__(f"{body.get('message', 'request failed')} [{status} {code}]")


class Client:
    """The API at ``url``."""

    def __init__(self, url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = httpclient.session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API; the decoded JSON body (None for 204).

        :raises ApiError: an error response.
        :raises click.ClickException: the API cannot be reached.
        """
        timeout = kwargs.pop("timeout", self.timeout)
        try:
            response = self.session.request(method, self.url + path, timeout=timeout, **kwargs)
        except requests.ConnectionError:
            raise click.ClickException(
                f"Cannot reach the conductor API at {self.url} (is `conductor up` running? "
                "set --url or CONDUCTOR_URL)"
            ) from None
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:200] or response.reason}
        if response.status_code >= 400:
            if response.status_code == 401:
                body["message"] = (
                    f"{body.get('message', 'Unauthorized.')} Pass --token (or CONDUCTOR_TOKEN); "
                    "`conductor token create` makes one."
                )
            raise ApiError(response.status_code, body)
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

        :raises click.ClickException: ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        longest = PROGRESS_POLL if show is not None else LONG_POLL
        wait = 0.0  # the first answer at once (the progress line starts)
        while True:
            asked = time.monotonic()
            request = self.call("GET", f"/v1/requests/{request_id}", params={"wait": f"{wait:.3f}"} if wait else None,
                                timeout=self.timeout + wait)
            states = None
            if show is not None:
                try:
                    states = self.call("GET", f"/v1/nodes/{request['node_uuid']}/states")
                except ApiError:
                    states = None
                show(request, states)
            if request["state"] in FINAL_STATES:
                return cast("dict[str, Any]", request)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise click.ClickException(f"Request {request_id} still {request['state']} after {timeout} s")
            if wait and now - asked < wait / 2:
                time.sleep(EARLY_PAUSE)
            wait = longest if deadline is None else max(0.001, min(longest, deadline - time.monotonic()))


def progress_line(request: dict[str, Any], states: dict[str, Any] | None) -> None:
    """Show one live line of progress (rewritten in place on a terminal)."""
    parts = [f"{request['id']}: {request['state']}"]
    if request.get("step"):
        parts.append(f"step {request['step']}")
    if states:
        parts.append(f"provision {states['provision_state']}")
        parts.append(f"power {states['power_state'] or 'unknown'}")
    line = " | ".join(parts)
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[2K" + line)
        if request["state"] in FINAL_STATES:
            sys.stderr.write("\n")
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def default_url() -> str:
    """``CONDUCTOR_URL`` or the local default."""
    return os.environ.get("CONDUCTOR_URL", DEFAULT_URL)


def resolve_token(url: str, explicit: str | None) -> str | None:
    """The token to send to ``url``: ``explicit`` (``--token`` / ``CONDUCTOR_TOKEN``), else
    the admin token of the local ``conductor up`` when ``url`` is where it serves."""
    if explicit:
        return explicit
    from conductor.auth import tokenfile
    from conductor.settings import default_data_dir

    return tokenfile.local_token_for(url, default_data_dir())
