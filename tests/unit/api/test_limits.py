"""The body limit in the application itself, for any WSGI server that streams chunked bodies.

(The request line and header limits are the server's: see
tests/functional/test_http_limits.py for gunicorn, as ``conductor up`` runs it.)
"""

from __future__ import annotations

import io

from conductor.api import limits


def post_streamed(client, body: bytes):  # type: ignore[no-untyped-def]
    """POST ``body`` without a Content-Length, as a server passes a chunked body on."""
    return client.post("/v1/nodes", input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})


def padded(name: str, size: int) -> bytes:
    start, end = f'{{"name": "{name}", "driver": "fake"'.encode(), b"}"
    return start + b" " * (size - len(start) - len(end)) + end


def test_a_streamed_body_over_the_limit_is_413(client) -> None:
    response = post_streamed(client, padded("n1", limits.MAX_BODY + 1))
    assert response.status_code == 413 and response.json["code"] == "payload_too_large"
    assert client.get("/v1/nodes/n1").status_code == 404


def test_a_streamed_body_of_exactly_the_limit_is_read_whole(client) -> None:
    response = post_streamed(client, padded("n1", limits.MAX_BODY))
    assert response.status_code == 201, response.json


def test_a_body_with_a_content_length_over_the_limit_is_413(client) -> None:
    response = client.post("/v1/nodes", data=padded("n1", limits.MAX_BODY + 1), content_type="application/json")
    assert response.status_code == 413 and response.json["code"] == "payload_too_large"
