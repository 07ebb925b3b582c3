"""The CLI's polls send back the ETag they saw: a 304 stands for the body seen last.

Against a real HTTP server (http.server) holding one JSON document and its ETag.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conductor.cli.client import Client


class Document(ThreadingHTTPServer):
    """Serves ``body`` at any path with ETag ``"v<version>"``, 304 to an If-None-Match naming it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.version = 1
        self.body: dict[str, Any] = {"id": "req-1", "state": "running", "node_uuid": "n"}
        self.sent: list[tuple[str | None, int]] = []  # (If-None-Match, status)


class Handler(BaseHTTPRequestHandler):
    server: Document

    def do_GET(self) -> None:
        tag = f'"v{self.server.version}"'
        asked = self.headers.get("If-None-Match")
        if asked == tag:
            self.server.sent.append((asked, 304))
            self.send_response(304)
            self.send_header("ETag", tag)
            self.end_headers()
            return
        self.server.sent.append((asked, 200))
        body = json.dumps(self.server.body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", tag)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def document() -> Iterator[Document]:
    server = Document()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_poll_sends_the_tag_it_saw_and_a_304_returns_the_body_seen(document: Document) -> None:
    client = Client(f"http://127.0.0.1:{document.server_address[1]}", timeout=5)
    first = client.poll("/v1/requests/req-1")
    assert client.poll("/v1/requests/req-1") == first
    document.body = {**document.body, "state": "succeeded"}
    document.version = 2
    assert client.poll("/v1/requests/req-1")["state"] == "succeeded"
    assert client.poll("/v1/requests/req-1")["state"] == "succeeded"
    assert document.sent == [(None, 200), ('"v1"', 304), ('"v1"', 200), ('"v2"', 304)]
    # A plain call stays unconditional.
    assert client.call("GET", "/v1/requests/req-1")["state"] == "succeeded"
    assert document.sent[-1] == (None, 200)


def test_wait_polls_with_the_tag(document: Document) -> None:
    client = Client(f"http://127.0.0.1:{document.server_address[1]}", timeout=5)
    document.body = {**document.body, "state": "succeeded"}
    assert client.wait("req-1")["state"] == "succeeded"
    assert client.wait("req-1")["state"] == "succeeded"
    # The second wait starts afresh: a finished request's tag is not kept.
    assert document.sent == [(None, 200), (None, 200)]
