"""Pollers against the real server (``conductor up``: gunicorn's threaded worker, keep-alive).

A 304 has no body, and the connection it came on serves the next poll.
"""

from __future__ import annotations

import http.client
import json

from tests.conftest import Service


def test_a_304_on_a_kept_alive_connection_then_a_200_when_the_node_changed(service_factory) -> None:
    service: Service = service_factory(workers=0, api_workers=1)
    assert service.http.post(f"{service.url}/v1/nodes", json={"name": "k1", "driver": "fake"}).status_code == 201
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        conn.request("GET", "/v1/nodes/k1/states", headers=service.auth_headers)
        first = conn.getresponse()
        body = json.loads(first.read())
        tag = first.getheader("ETag")
        assert first.status == 200 and body["provision_state"] == "enroll" and tag
        sock = conn.sock
        for _poll in range(3):
            conn.request("GET", "/v1/nodes/k1/states", headers={**service.auth_headers, "If-None-Match": tag})
            same = conn.getresponse()
            assert (same.status, same.read(), same.getheader("ETag")) == (304, b"", tag)
        # A change through the API (the node's power target, no worker to run it): 200, a new tag.
        accepted = service.http.put(f"{service.url}/v1/nodes/k1/states/power", json={"target": "power on"})
        assert accepted.status_code == 202
        conn.request("GET", "/v1/nodes/k1/states", headers={**service.auth_headers, "If-None-Match": tag})
        changed = conn.getresponse()
        assert changed.status == 200 and json.loads(changed.read())["request_id"] == accepted.json()["id"]
        assert changed.getheader("ETag") not in (None, tag)
        assert conn.sock is sock  # every poll on the one connection
    finally:
        conn.close()
