"""Oversized requests to the real API server (``conductor up``: gunicorn) get our JSON error.

A raw socket client, since HTTP libraries refuse to send such requests or
stop reading at the first error.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import pytest

from conductor.api import limits


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` (from a thread: the server may answer before reading it all); read the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def send() -> None:
        with contextlib.suppress(OSError):  # the server answered and closed without reading the rest
            sock.sendall(request)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = b""
    try:
        while b"\r\n\r\n" not in received or len(received) < _length(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
        sender.join(30)
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def _length(received: bytes) -> int:
    head, _, _ = received.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            return len(head) + 4 + int(line.split(":")[1])
    return 1 << 62  # read to the end


def chunked(body: bytes, size: int = 65536) -> bytes:
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.fixture(params=["8", "1"], ids=["threaded", "sync"])
def api(service_factory, request):  # type: ignore[no-untyped-def]
    """The API with gunicorn's threaded worker (the default) and with its sync worker (``api_threads`` 1)."""
    return service_factory(workers=1, api_workers=1, env={"CONDUCTOR_API_THREADS": request.param})


def assert_json_error(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> dict:
    got, headers, body = answer
    assert got == status, body[:300]
    assert headers["content-type"] == "application/problem+json"
    error = json.loads(body)
    assert (error["code"], error["status"]) == (code, status) and error["message"]
    assert error["type"] == f"tag:baremetal-conductor,2026:error:{code}" and error["detail"] == error["message"]
    return error


def test_oversized_request_line_header_and_chunked_body_get_json_errors(api) -> None:
    token = api.admin_token.encode()
    long_path = b"/v1/nodes/" + b"n" * limits.MAX_REQUEST_LINE
    assert_json_error(exchange(api.port, b"GET " + long_path + b" HTTP/1.1\r\nHost: x\r\n\r\n"), 414, "uri_too_long")

    big_header = b"X-Big: " + b"a" * 100_000 + b"\r\n"
    answer = exchange(api.port, b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\n" + big_header + b"\r\n")
    assert_json_error(answer, 431, "headers_too_large")
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(limits.MAX_HEADER_FIELDS + 1))
    assert_json_error(exchange(api.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"), 431,
                      "headers_too_large")

    head = (b"POST /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
            b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    huge = b'{"name": "big", "driver": "fake", "properties": {"x": "' + b"a" * (10 << 20) + b'"}}'
    assert_json_error(exchange(api.port, head + chunked(huge)), 413, "payload_too_large")
    # A chunked body of exactly the limit is read whole (JSON may be padded with spaces); one more byte is 413.
    def padded(name: bytes, size: int) -> bytes:
        start, end = b'{"name": "' + name + b'", "driver": "fake"', b"}"
        return start + b" " * (size - len(start) - len(end)) + end

    status, _, body = exchange(api.port, head + chunked(padded(b"n1", limits.MAX_BODY)))
    assert status == 201, body[:300]
    assert_json_error(exchange(api.port, head + chunked(padded(b"n2", limits.MAX_BODY + 1))), 413,
                      "payload_too_large")
    status, _, body = exchange(api.port, head + chunked(b'{"name": "n3", "driver": "fake"}', size=7))
    assert status == 201, body
    for name, status in (("n1", 200), ("n2", 404), ("n3", 200), ("big", 404)):
        assert api.http.get(f"{api.url}/v1/nodes/{name}", timeout=10).status_code == status, name
