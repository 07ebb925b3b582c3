"""The clients' session retries a safe request whose kept-alive connection the server closed, and nothing else."""

from __future__ import annotations

import socket
import threading

import pytest
import requests

from conductor import httpclient


def _server(answers: list[bytes]) -> tuple[int, list[bytes], threading.Thread]:
    """A server that takes one request per connection; an answer of b"" resets the connection unanswered."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        with listener:
            for answer in answers:
                conn, _ = listener.accept()
                with conn:
                    seen.append(conn.recv(65536).split(b"\r\n", 1)[0])
                    if answer:
                        conn.sendall(answer)
                    else:  # closed without an answer, unread data pending: the peer sees a reset
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], seen, thread


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def test_a_get_is_sent_again_after_a_reset() -> None:
    port, seen, thread = _server([b"", OK])
    response = httpclient.session().get(f"http://127.0.0.1:{port}/v1/nodes", timeout=10)
    assert response.status_code == 200 and response.text == "ok"
    assert seen == [b"GET /v1/nodes HTTP/1.1"] * 2
    thread.join(5)


def test_a_write_is_never_sent_twice() -> None:
    port, seen, thread = _server([b"", OK])
    with pytest.raises(requests.ConnectionError):
        httpclient.session().put(f"http://127.0.0.1:{port}/v1/nodes/n1/states/power", json={"target": "power on"},
                                 timeout=10)
    assert seen == [b"PUT /v1/nodes/n1/states/power HTTP/1.1"]
    # (the server still waits for its second connection: end it)
    socket.create_connection(("127.0.0.1", port)).close()
    thread.join(5)
