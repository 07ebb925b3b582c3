"""The request path: 202 + Location, 409, 400, de-duplication, cancel, Redis down."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa

from conductor.models import Node, Request
from tests.conftest import bearer, drain


@pytest.fixture
def node(client):  # type: ignore[no-untyped-def]
    return client.post("/v1/nodes", json={"name": "n1", "driver": "fake"}).json


def test_power_put_is_202_with_location_and_a_queued_request(client, ctx, node) -> None:
    response = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    assert response.status_code == 202
    body = response.json
    assert body["id"].startswith("req-")
    assert response.headers["Location"] == f"/v1/requests/{body['id']}"
    assert body["state"] == "queued" and body["kind"] == "power" and body["target"] == "power on"
    assert body["node_uuid"] == node["uuid"]
    assert client.get(response.headers["Location"]).json == body
    states = client.get("/v1/nodes/n1/states").json
    assert states["request_id"] == body["id"]
    assert states["target_power_state"] == "power on"
    # Recorded in the database and enqueued in Redis, job id = request id.
    assert body["id"] in ctx.queue.queue.job_ids


def test_identical_request_in_flight_returns_the_same_request(client, node) -> None:
    first = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    again = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    assert again.status_code == 202
    assert again.json["id"] == first.json["id"]
    assert len(client.get("/v1/requests?node=n1").json["requests"]) == 1


def test_a_repeated_submission_enqueues_its_request_when_redis_holds_no_job(client, ctx, node) -> None:
    # What a submission whose COMMIT outcome was unknown leaves (the API runs
    # it again): the request committed, its job never enqueued.
    first = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json["id"]
    ctx.queue.queue.empty()
    again = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    assert (again.status_code, again.json["id"]) == (202, first)
    assert ctx.queue.queue.job_ids == [first]  # not left for the sweep's requeue_after
    # While its job waits, a repeat enqueues nothing more.
    assert client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json["id"] == first
    assert ctx.queue.queue.job_ids == [first]


def test_other_request_in_flight_is_409_with_the_active_request(client, node) -> None:
    first = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    for path, target in (("power", "power off"), ("provision", "manage")):
        response = client.put(f"/v1/nodes/n1/states/{path}", json={"target": target})
        assert response.status_code == 409
        assert response.json["code"] == "transition_in_progress"
        assert response.json["request_id"] == first.json["id"]
    # A different callback is a different request, too.
    response = client.put("/v1/nodes/n1/states/power",
                          json={"target": "power on", "callback_url": "http://127.0.0.1:9/cb"})
    assert response.status_code == 409


def test_target_the_fsm_refuses_is_400_with_allowed_targets(client, node) -> None:
    body = {"target": "active", "image_source": "http://images.example/i.img", "image_checksum": "0" * 64}
    response = client.put("/v1/nodes/n1/states/provision", json=body)
    assert response.status_code == 400
    assert response.json["code"] == "invalid_transition"
    assert response.json["allowed_targets"] == ["manage"]
    assert "enroll" in response.json["message"]
    assert client.get("/v1/requests").json["requests"] == []


@pytest.mark.parametrize("body", [{}, {"target": "warp"}, {"target": "power on", "extra": 1},
                                  {"target": "power on", "callback_url": "ftp://x/y"}])
def test_bad_power_bodies_are_400_validation_error(client, node, body) -> None:
    response = client.put("/v1/nodes/n1/states/power", json=body)
    assert response.status_code == 400
    assert response.json["code"] == "validation_error"


def test_power_is_refused_where_a_workflow_owns_it(client, ctx, node) -> None:
    with ctx.db.begin() as session:
        session.execute(sa.update(Node).values(provision_state="deploying"))
    response = client.put("/v1/nodes/n1/states/power", json={"target": "power off"})
    assert response.status_code == 400
    assert response.json["code"] == "invalid_transition"


def test_power_is_accepted_in_enroll_and_stable_states(client, ctx, node) -> None:
    for state in ("enroll", "manageable", "active", "deploy failed", "error"):
        with ctx.db.begin() as session:
            session.execute(sa.update(Node).values(provision_state=state, active_request_id=None))
        response = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
        assert response.status_code == 202, state


def test_provision_refused_in_maintenance(client, node, conductor_ctx) -> None:
    client.put("/v1/nodes/n1/states/provision", json={"target": "manage"})
    drain(conductor_ctx)
    client.patch("/v1/nodes/n1", json={"maintenance": True, "maintenance_reason": "disk"})
    response = client.put("/v1/nodes/n1/states/provision", json={"target": "provide"})
    assert response.status_code == 400
    assert response.json["code"] == "node_in_maintenance"


def test_cancel_a_queued_request_frees_the_node(client, ctx, node) -> None:
    accepted = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json
    response = client.delete(f"/v1/requests/{accepted['id']}")
    assert response.status_code == 200
    assert response.json["state"] == "cancelled"
    assert response.json["finished_at"]
    states = client.get("/v1/nodes/n1/states").json
    assert states["request_id"] is None and states["target_power_state"] is None
    assert accepted["id"] not in ctx.queue.queue.job_ids
    # Cancelling again is harmless; the node takes a new request.
    assert client.delete(f"/v1/requests/{accepted['id']}").status_code == 200
    assert client.put("/v1/nodes/n1/states/power", json={"target": "power off"}).status_code == 202


def test_cancel_a_running_or_finished_request_is_409(client, ctx, conductor_ctx, node) -> None:
    accepted = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json
    with ctx.db.begin() as session:
        session.execute(sa.update(Request).values(state="running", conductor="elsewhere"))
    response = client.delete(f"/v1/requests/{accepted['id']}")
    assert response.status_code == 409
    assert response.json["code"] == "request_not_cancellable"
    with ctx.db.begin() as session:
        session.execute(sa.update(Request).values(state="queued", conductor=None))
    drain(conductor_ctx)
    response = client.delete(f"/v1/requests/{accepted['id']}")
    assert response.status_code == 409
    assert client.get(f"/v1/requests/{accepted['id']}").json["state"] == "succeeded"


def test_a_cancelled_request_is_skipped_by_the_worker(client, ctx, conductor_ctx, node) -> None:
    from conductor.engine import runner

    accepted = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}).json
    client.delete(f"/v1/requests/{accepted['id']}")
    runner.run_step(conductor_ctx, accepted["id"])
    assert client.get(f"/v1/requests/{accepted['id']}").json["state"] == "cancelled"
    assert client.get("/v1/nodes/n1").json["power_state"] is None


def test_redis_down_is_503_and_leaves_nothing_dangling(client, ctx, node, monkeypatch) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(ctx.queue.queue, "enqueue_call", refuse)
    response = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    assert response.status_code == 503
    assert response.json["code"] == "queue_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    states = client.get("/v1/nodes/n1/states").json
    assert states["request_id"] is None and states["target_power_state"] is None
    (recorded,) = client.get("/v1/requests").json["requests"]
    assert recorded["state"] == "failed"
    assert "not accepted" in recorded["error"]
    assert recorded["callback"] is None
    events = [h["event"] for h in client.get("/v1/nodes/n1/history").json["history"]]
    assert events[0] == "request.rejected"


def test_a_retry_with_the_same_idempotency_key_after_a_503_is_a_new_request(client, ctx, node, monkeypatch) -> None:
    headers = {"Idempotency-Key": '"retry-me"'}
    with monkeypatch.context() as patch:
        patch.setattr(ctx.queue.queue, "enqueue_call",
                      lambda *a, **k: (_ for _ in ()).throw(redis.ConnectionError("refused")))
        refused = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}, headers=headers)
    assert refused.status_code == 503
    retried = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}, headers=headers)
    assert retried.status_code == 202
    assert retried.json["state"] == "queued"
    again = client.put("/v1/nodes/n1/states/power", json={"target": "power on"}, headers=headers)
    assert again.json["id"] == retried.json["id"]


def test_a_real_unreachable_redis_is_503(settings, node, client, admin_token) -> None:
    from conductor.api import create_app
    from conductor.bootstrap import build_context

    broken = build_context(settings.replace(redis_url="redis://127.0.0.1:1/0"))
    response = create_app(ctx=broken).test_client().put(
        "/v1/nodes/n1/states/power", json={"target": "power on"}, headers=bearer(admin_token)
    )
    assert response.status_code == 503
    assert response.json["code"] == "queue_unavailable"
    assert "Traceback" not in response.get_data(as_text=True)
    assert client.get("/v1/nodes/n1/states").json["request_id"] is None


def test_request_list_filters_and_pages(client, conductor_ctx, node) -> None:
    client.post("/v1/nodes", json={"name": "n2", "driver": "fake"})
    ids = []
    for target in ("power on", "power off", "power on"):
        ids.append(client.put("/v1/nodes/n1/states/power", json={"target": target}).json["id"])
        drain(conductor_ctx)
    other = client.put("/v1/nodes/n2/states/provision", json={"target": "manage"}).json["id"]
    listed = client.get("/v1/requests?node=n1").json["requests"]
    assert [r["id"] for r in listed] == ids[::-1]
    assert [r["id"] for r in client.get("/v1/requests?kind=provision").json["requests"]] == [other]
    assert [r["id"] for r in client.get("/v1/requests?state=queued").json["requests"]] == [other]
    page = client.get("/v1/requests?limit=2").json
    assert len(page["requests"]) == 2
    rest = client.get(page["next"]).json["requests"]
    assert {r["id"] for r in page["requests"] + rest} == {*ids, other}
    assert client.get("/v1/requests/req-nope").json["code"] == "request_not_found"
    assert client.get("/v1/requests?state=bogus").status_code == 400


def test_history_is_newest_first_and_paginated(client, conductor_ctx, node) -> None:
    client.put("/v1/nodes/n1/states/provision", json={"target": "manage"})
    drain(conductor_ctx)
    history = client.get("/v1/nodes/n1/history").json["history"]
    events = [h["event"] for h in history]
    assert events[0] == "request.succeeded"
    assert events[-1] == "node.created"
    assert "provision.transition" in events and "request.accepted" in events
    ids = [h["id"] for h in history]
    assert ids == sorted(ids, reverse=True)
    page = client.get("/v1/nodes/n1/history?limit=2").json
    assert [h["id"] for h in page["history"]] == ids[:2]
    assert [h["id"] for h in client.get(page["next"]).json["history"]] == ids[2:4]
