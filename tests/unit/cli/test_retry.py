"""503 + Retry-After: the CLI's client waits as asked, within its budget, and only when a retry is safe.

Against a real HTTP server (http.server) that answers from a script.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conductor.cli import exits
from conductor.cli.client import ApiError, Client, Unreachable
from conductor.httpclient import retry_after_seconds


class Scripted(ThreadingHTTPServer):
    """Answers each call with the next (status, code, Retry-After) of ``script``, then 200."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[tuple[int, str, str | None]] = []
        self.seen: list[tuple[str, str | None]] = []


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((self.command, self.headers.get("Idempotency-Key")))
        status, code, retry_after = self.server.script.pop(0) if self.server.script else (200, "ok", None)
        body = json.dumps({"code": code, "status": status, "message": f"{code} answer"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Scripted]:
    scripted = Scripted()
    thread = threading.Thread(target=scripted.serve_forever, daemon=True)
    thread.start()
    yield scripted
    scripted.shutdown()
    scripted.server_close()
    thread.join()


def client(server: Scripted, budget: float = 10.0) -> Client:
    return Client(f"http://127.0.0.1:{server.server_address[1]}", token="cdt_x", max_retry_wait=budget)


def test_a_503_is_sent_again_after_retry_after_and_said_on_stderr(server, capsys) -> None:
    server.script = [(503, "rate_limited", "1"), (503, "queue_full", "0")]
    began = time.monotonic()
    assert client(server).call("PUT", "/v1/x", json={}, headers={"Idempotency-Key": "k1"})["code"] == "ok"
    assert time.monotonic() - began >= 1.0  # the time Retry-After asked for
    assert server.seen == [("PUT", "k1")] * 3  # the same key each time: the API answers a repeat once
    err = capsys.readouterr().err
    assert "503 rate_limited; retrying in 1." in err and "as Retry-After asks" in err


def test_a_retry_after_past_the_budget_is_not_waited_for(server) -> None:
    server.script = [(503, "rate_limited", "30")]
    began = time.monotonic()
    with pytest.raises(ApiError) as refused:
        client(server, budget=5).call("GET", "/v1/x")
    assert time.monotonic() - began < 5
    assert refused.value.status == 503 and refused.value.exit_code == exits.REFUSED
    assert len(server.seen) == 1


def test_only_safe_retries(server) -> None:
    # A POST the database failed on may have been done: not sent again.
    server.script = [(503, "database_unavailable", "0")]
    with pytest.raises(ApiError):
        client(server).call("POST", "/v1/x", json={})
    # ... but one refused by admission control recorded nothing.
    server.script = [(503, "rate_limited", "0")]
    assert client(server).call("POST", "/v1/x", json={})["code"] == "ok"
    # No Retry-After, or another status: no retry.
    server.script = [(503, "queue_unavailable", None)]
    with pytest.raises(ApiError):
        client(server).call("GET", "/v1/x")
    server.script = [(409, "transition_in_progress", "1")]
    with pytest.raises(ApiError):
        client(server).call("PUT", "/v1/x", json={})


def test_retry_after_as_seconds_or_http_date() -> None:
    now = time.time()
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-1") is None


def test_an_unreachable_api_exits_4(server) -> None:
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(Unreachable) as failed:
        Client(f"http://127.0.0.1:{port}").call("GET", "/v1/nodes")
    assert failed.value.exit_code == exits.UNREACHABLE
