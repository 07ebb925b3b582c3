"""``GET /v1/events`` and long polls through the Flask test client: what is refused, and why."""

from __future__ import annotations

from typing import Any

import pytest

from conductor.context import Context
from tests.conftest import bearer, drain, make_token


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    """Two stream slots per process, heartbeats every 0.2 s."""
    return settings.replace(event_stream_slots=2, event_heartbeat=0.2)


def error_of(response: Any) -> tuple[int, str, dict]:
    return response.status_code, response.json["code"], response.json.get("errors", {})


@pytest.mark.parametrize(("query", "field"), [
    ("type=node.powr_state.*", "type"),
    ("type=request.finished,nothing.*", "type"),
    ("node=ghost", "node"),
])
def test_a_bad_filter_is_refused(client: Any, query: str, field: str) -> None:
    status, code, errors = error_of(client.get(f"/v1/events?{query}"))
    assert (status, code) == (400, "invalid_event_filter") and field in errors


def test_a_malformed_last_event_id_is_refused(client: Any) -> None:
    status, code, errors = error_of(client.get("/v1/events", headers={"Last-Event-ID": "yesterday"}))
    assert (status, code) == (400, "invalid_event_filter") and "Last-Event-ID" in errors


def test_a_stream_needs_a_token_and_a_reader_s_is_enough(app: Any, anonymous: Any, ctx: Context) -> None:
    response = anonymous.get("/v1/events")
    assert (response.status_code, response.json["code"]) == (401, "unauthorized")
    bad = anonymous.get("/v1/events", headers=bearer("cdt_not-a-token"))
    assert bad.status_code == 401
    stream = anonymous.get("/v1/events?type=node.*&node=", headers=bearer(make_token(ctx, "reader")),
                           buffered=False)
    try:
        assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
        assert stream.headers["Cache-Control"] == "no-store"
        assert next(iter(stream.response)).startswith(b"retry: ")
    finally:
        stream.close()


def test_streams_and_long_polls_share_the_slots(app: Any, client: Any, conductor_ctx: Context) -> None:
    first = client.get("/v1/events", buffered=False)
    second = client.get("/v1/events", buffered=False)
    try:
        assert (first.status_code, second.status_code) == (200, 200)
        refused = client.get("/v1/events")
        assert (refused.status_code, refused.json["code"]) == (503, "streams_busy")
        assert refused.headers["Retry-After"] == "5"
        # A long poll without a slot answers at once with the current state.
        client.post("/v1/nodes", json={"name": "n1", "driver": "fake", "driver_info": {"fake_delay": 5}})
        request_id = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json["id"]
        answer = client.get(f"/v1/requests/{request_id}?wait=30")
        assert answer.status_code == 200 and answer.json["state"] == "queued"
    finally:
        first.close()
        second.close()
    again = client.get("/v1/events", buffered=False)
    assert again.status_code == 200  # closing gave the slots back
    again.close()


@pytest.mark.parametrize("wait", ["-1", "61", "nan", "soon"])
def test_a_bad_wait_is_refused(client: Any, wait: str) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    request_id = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json["id"]
    response = client.get(f"/v1/requests/{request_id}?wait={wait}")
    assert (response.status_code, response.json["code"]) == (400, "validation_error")
    assert "wait" in response.json["errors"]


def test_a_long_poll_of_a_finished_request_answers_at_once(client: Any, conductor_ctx: Context) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    request_id = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json["id"]
    drain(conductor_ctx)
    answer = client.get(f"/v1/requests/{request_id}?wait=60")
    assert answer.json["state"] == "succeeded"
    assert client.get("/v1/requests/req-nothing?wait=1").status_code == 404


def test_a_stream_never_read_gives_its_slot_back(client: Any) -> None:
    for _ in range(3):
        head = client.head("/v1/events")
        assert head.status_code == 200
        head.close()  # as a server does, without iterating the body
    first, second = client.get("/v1/events", buffered=False), client.get("/v1/events", buffered=False)
    try:
        assert (first.status_code, second.status_code) == (200, 200)
    finally:
        first.close()
        second.close()
