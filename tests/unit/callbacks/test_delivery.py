"""Per-request callbacks against a real HTTP receiver on loopback: signing,
retries, 410, redirects, timeouts, status on the request, secrets."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conductor.bootstrap import build_context
from conductor.models import CallbackDelivery, Node, NodeHistory
from tests.callback_helpers import Reply, deliver_due, deliveries, drain_callbacks, verify_signature
from tests.conftest import drain, free_port


@pytest.fixture
def node(client):  # type: ignore[no-untyped-def]
    return client.post("/v1/nodes", json={"name": "n1", "driver": "fake"}).json


def finished_request(client, conductor_ctx, url, target="power on"):  # type: ignore[no-untyped-def]
    response = client.put("/v1/nodes/n1/states/power", json={"target": target, "callback_url": url})
    assert response.status_code == 202, response.json
    drain(conductor_ctx)
    return response.json["id"]


def callback_of(client, request_id):  # type: ignore[no-untyped-def]
    return client.get(f"/v1/requests/{request_id}").json["callback"]


def test_finished_request_is_posted_signed_with_node_and_request(client, ctx, conductor_ctx, node, receiver) -> None:
    secret = client.post("/v1/callbacks/secret/rotate").json["secret"]
    request_id = finished_request(client, conductor_ctx, receiver.url("/done?tag=1"))
    assert callback_of(client, request_id)["state"] == "pending"
    drain_callbacks(ctx)
    (got,) = receiver.received
    assert got.path == "/done?tag=1"
    assert got.headers["content-type"] == "application/json"
    assert verify_signature(secret, got.headers, got.body)
    assert not verify_signature("whsec_" + "A" * 43 + "=", got.headers, got.body)
    assert abs(int(got.headers["webhook-timestamp"]) - dt.datetime.now(dt.UTC).timestamp()) < 300
    event = got.json
    assert event["type"] == "request.finished"
    request = event["data"]["request"]
    assert request["id"] == request_id and request["kind"] == "power" and request["target"] == "power on"
    assert request["state"] == "succeeded" and request["error"] is None
    assert request["created_at"] and request["started_at"] and request["finished_at"]
    assert event["data"]["node"] == {
        "uuid": node["uuid"], "name": "n1", "power_state": "power on", "target_power_state": None,
        "provision_state": "enroll", "target_provision_state": None, "last_error": None,
        "maintenance": False, "maintenance_reason": None,
    }
    callback = callback_of(client, request_id)
    assert callback == {"id": got.headers["webhook-id"], "state": "delivered", "attempts": 1,
                        "last_status": 200, "last_error": None, "next_at": None}


def test_a_request_without_callback_url_has_callback_null(client, conductor_ctx, node) -> None:
    response = client.put("/v1/nodes/n1/states/power", json={"target": "power on"})
    assert response.json["callback"] is None
    drain(conductor_ctx)
    assert callback_of(client, response.json["id"]) is None


def test_failed_and_cancelled_requests_are_posted_too(client, ctx, conductor_ctx, receiver) -> None:
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake", "driver_info": {"fake_fail": "BMC on fire"}})
    failed = finished_request(client, conductor_ctx, receiver.url("/failed"))
    client.patch("/v1/nodes/n1", json={"driver_info": {"fake_fail": None}})
    cancelled = client.put("/v1/nodes/n1/states/power",
                           json={"target": "power on", "callback_url": receiver.url("/cancelled")}).json["id"]
    assert client.delete(f"/v1/requests/{cancelled}").json["callback"]["state"] == "pending"
    drain_callbacks(ctx)
    by_path = {r.path: r.json["data"] for r in receiver.received}
    assert by_path["/failed"]["request"]["state"] == "failed"
    assert "BMC on fire" in by_path["/failed"]["request"]["error"]
    assert "BMC on fire" in by_path["/failed"]["node"]["last_error"]
    assert by_path["/cancelled"]["request"]["id"] == cancelled
    assert by_path["/cancelled"]["request"]["state"] == "cancelled"
    assert callback_of(client, failed)["state"] == "delivered"


def test_5xx_and_429_are_retried_with_the_same_webhook_id(client, ctx, conductor_ctx, node, receiver) -> None:
    receiver.script(500, Reply(429, {"Retry-After": "0"}), 503)
    request_id = finished_request(client, conductor_ctx, receiver.url())
    deliver_due(ctx)
    callback = callback_of(client, request_id)
    assert callback["state"] == "pending" and callback["attempts"] == 1
    assert callback["last_status"] == 500 and callback["last_error"].startswith("HTTP 500")
    assert callback["next_at"] is not None
    drain_callbacks(ctx)
    statuses = [r.status for r in receiver.received]
    assert statuses == [500, 429, 503, 200]
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    assert len({r.body for r in receiver.received}) == 1
    callback = callback_of(client, request_id)
    assert callback["state"] == "delivered" and callback["attempts"] == 4 and callback["last_status"] == 200


def test_retry_after_is_honoured(client, ctx, conductor_ctx, node, receiver) -> None:
    receiver.script(Reply(429, {"Retry-After": "120"}))
    finished_request(client, conductor_ctx, receiver.url())
    before = dt.datetime.now(dt.UTC)
    deliver_due(ctx)
    (row,) = deliveries(ctx)
    assert row.state == "pending" and row.last_status == 429
    assert row.next_at >= before + dt.timedelta(seconds=119)
    assert deliver_due(ctx) == 0  # not due: nothing is attempted early


def test_410_stops_at_once(client, ctx, conductor_ctx, node, receiver) -> None:
    receiver.script(410)
    request_id = finished_request(client, conductor_ctx, receiver.url())
    drain_callbacks(ctx)
    assert len(receiver.received) == 1
    callback = callback_of(client, request_id)
    assert callback["state"] == "failed" and callback["attempts"] == 1 and callback["last_status"] == 410


@pytest.mark.parametrize("status", [400, 401, 404])
def test_other_4xx_fail_without_retry(client, ctx, conductor_ctx, node, receiver, status) -> None:
    receiver.script(status)
    request_id = finished_request(client, conductor_ctx, receiver.url())
    drain_callbacks(ctx)
    assert len(receiver.received) == 1
    callback = callback_of(client, request_id)
    assert callback["state"] == "failed" and callback["last_status"] == status


def test_redirects_are_not_followed(client, ctx, conductor_ctx, node, receiver) -> None:
    receiver.script(Reply(302, {"Location": receiver.url("/elsewhere")}))
    request_id = finished_request(client, conductor_ctx, receiver.url("/moved"))
    drain_callbacks(ctx)
    assert [r.path for r in receiver.received] == ["/moved"]
    callback = callback_of(client, request_id)
    assert callback["state"] == "failed" and callback["last_status"] == 302
    assert "redirects are not followed" in callback["last_error"]


def test_a_receiver_that_times_out_is_retried(client, settings, conductor_ctx, node, receiver) -> None:
    impatient = build_context(settings.replace(callback_timeout=0.3))
    try:
        receiver.script(Reply(200, hold=5))
        request_id = finished_request(client, conductor_ctx, receiver.url())
        deliver_due(impatient)
        callback = callback_of(client, request_id)
        assert callback["state"] == "pending" and callback["attempts"] == 1
        assert callback["last_status"] is None and "no answer within 0.3 s" in callback["last_error"]
        receiver.release()
        drain_callbacks(impatient)
        assert callback_of(client, request_id)["state"] == "delivered"
    finally:
        impatient.close()


def test_connection_refused_is_retried_then_given_up_after_the_window(client, settings, conductor_ctx, node) -> None:
    # (The first attempt must come inside the window: 0.5 s was too short on a loaded machine.)
    brief = build_context(settings.replace(callback_retry_window=3.0))
    try:
        request_id = finished_request(client, conductor_ctx, f"http://127.0.0.1:{free_port()}/closed")
        deliver_due(brief)
        callback = callback_of(client, request_id)
        assert callback["state"] == "pending" and "cannot connect" in callback["last_error"]
        drain_callbacks(brief)
        callback = callback_of(client, request_id)
        assert callback["state"] == "failed" and callback["attempts"] >= 2
        assert "gave up after" in callback["last_error"]
    finally:
        brief.close()


def test_a_destination_denied_by_the_time_of_delivery_fails(client, settings, conductor_ctx, node, receiver) -> None:
    request_id = finished_request(client, conductor_ctx, receiver.url())
    stricter = build_context(settings.replace(callback_deny="127.0.0.0/8"))
    try:
        drain_callbacks(stricter)
    finally:
        stricter.close()
    assert receiver.received == []
    callback = callback_of(client, request_id)
    assert callback["state"] == "failed" and "deny list" in callback["last_error"]


def test_a_delivery_never_changes_the_node(client, ctx, conductor_ctx, node, receiver) -> None:
    receiver.script(500)
    finished_request(client, conductor_ctx, receiver.url())

    def snapshot() -> tuple:
        with ctx.db.session() as session:
            row = session.scalars(sa.select(Node).where(Node.uuid == node["uuid"])).one()
            history = session.scalar(sa.select(sa.func.count()).select_from(NodeHistory))
            return (row.power_state, row.provision_state, row.last_error, row.updated_at,
                    row.reservation, row.active_request_id, history)

    before = snapshot()
    drain_callbacks(ctx)
    assert len(receiver.received) == 2
    assert snapshot() == before


def test_rotation_sends_both_signatures_during_the_overlap(client, ctx, conductor_ctx, node, receiver) -> None:
    old = client.post("/v1/callbacks/secret/rotate").json["secret"]
    rotated = client.post("/v1/callbacks/secret/rotate")
    assert rotated.status_code == 201 and rotated.headers["Cache-Control"] == "no-store"
    new = rotated.json["secret"]
    assert new != old and rotated.json["previous_expires_at"] is not None
    finished_request(client, conductor_ctx, receiver.url())
    drain_callbacks(ctx)
    (got,) = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verify_signature(old, got.headers, got.body) and verify_signature(new, got.headers, got.body)


def test_after_the_overlap_only_the_new_secret_signs(
    client, settings, conductor_ctx, node, receiver, admin_token
) -> None:
    from conductor.api import create_app

    no_overlap = build_context(settings.replace(callback_secret_overlap=0))
    try:
        api = create_app(ctx=no_overlap).test_client()
        api.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_token}"
        old = api.post("/v1/callbacks/secret/rotate").json["secret"]
        new = api.post("/v1/callbacks/secret/rotate").json["secret"]
        finished_request(client, conductor_ctx, receiver.url())
        drain_callbacks(no_overlap)
    finally:
        no_overlap.close()
    (got,) = receiver.received
    assert verify_signature(new, got.headers, got.body)
    assert not verify_signature(old, got.headers, got.body)


def test_secrets_are_shown_once_and_never_logged(client, ctx, conductor_ctx, node, receiver, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    assert client.get("/v1/callbacks/secret").json["exists"] is False
    secret = client.post("/v1/callbacks/secret/rotate").json["secret"]
    assert secret.startswith("whsec_")
    request_id = finished_request(client, conductor_ctx, receiver.url())
    receiver.script(500)
    drain_callbacks(ctx)
    shown = client.get("/v1/callbacks/secret")
    assert shown.json["exists"] is True and shown.json["fingerprint"]
    for response in (shown, client.get(f"/v1/requests/{request_id}"), client.get("/openapi.json")):
        assert secret not in response.get_data(as_text=True)
        assert secret.removeprefix("whsec_") not in response.get_data(as_text=True)
    assert secret.removeprefix("whsec_") not in caplog.text


def test_a_secret_is_created_on_first_need(client, ctx, conductor_ctx, node, receiver) -> None:
    finished_request(client, conductor_ctx, receiver.url())
    drain_callbacks(ctx)
    assert receiver.received[0].headers["webhook-signature"].startswith("v1,")
    assert client.get("/v1/callbacks/secret").json["exists"] is True


def test_the_callback_lease_of_a_vanished_worker_runs_out(client, ctx, conductor_ctx, node, receiver) -> None:
    finished_request(client, conductor_ctx, receiver.url())
    with ctx.db.begin() as session:
        # Another host's worker claimed it and died mid-delivery.
        session.execute(sa.update(CallbackDelivery).values(
            attempts=1, claimed_by="elsewhere:4242",
            lease_until=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)))
    assert deliver_due(ctx) == 0
    with ctx.db.begin() as session:
        session.execute(sa.update(CallbackDelivery).values(
            lease_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    drain_callbacks(ctx)
    (row,) = deliveries(ctx)
    assert row.state == "delivered" and row.attempts == 2 and row.claimed_by is None


def test_request_lists_show_each_callback(client, ctx, conductor_ctx, node, receiver) -> None:
    delivered = finished_request(client, conductor_ctx, receiver.url())
    drain_callbacks(ctx)
    plain = finished_request(client, conductor_ctx, None, "power off")
    pending = finished_request(client, conductor_ctx, receiver.url(), "power on")
    listed = {r["id"]: r["callback"] for r in client.get("/v1/requests").json["requests"]}
    assert listed[delivered]["state"] == "delivered" and listed[delivered]["attempts"] == 1
    assert listed[plain] is None
    assert listed[pending]["state"] == "pending" and listed[pending]["id"].startswith("msg_")


def test_the_standard_webhooks_reference_library_verifies_deliveries(
        client, ctx, conductor_ctx, node, receiver) -> None:
    old = client.post("/v1/callbacks/secret/rotate").json["secret"]
    new = client.post("/v1/callbacks/secret/rotate").json["secret"]
    finished_request(client, conductor_ctx, receiver.url())
    drain_callbacks(ctx)
    (got,) = receiver.received
    for secret in (old, new):  # both sign during the overlap
        assert Webhook(secret).verify(got.body, got.headers)["type"] == "request.finished"
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(got.body.replace(b"succeeded", b"failed"), got.headers)
