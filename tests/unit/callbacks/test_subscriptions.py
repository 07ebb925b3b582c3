"""Subscriptions: the API, event filters and wildcards, per-node ordering,
410 and deletion, and deliveries written atomically with the change."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from conductor.models import Node
from tests.callback_helpers import deliver_due, deliveries, drain_callbacks
from tests.conftest import drain


def make_node(client, name):  # type: ignore[no-untyped-def]
    response = client.post("/v1/nodes", json={"name": name, "driver": "fake"})
    assert response.status_code == 201
    return response.json


def subscribe(client, url, events, nodes=None):  # type: ignore[no-untyped-def]
    body = {"url": url, "events": events}
    if nodes is not None:
        body["nodes"] = nodes
    response = client.post("/v1/subscriptions", json=body)
    assert response.status_code == 201, response.json
    return response.json


def put(client, node, kind, target):  # type: ignore[no-untyped-def]
    response = client.put(f"/v1/nodes/{node}/states/{kind}", json={"target": target})
    assert response.status_code == 202, response.json
    return response.json["id"]


def test_create_show_list_delete(client, receiver) -> None:
    n1 = make_node(client, "n1")
    response = client.post("/v1/subscriptions",
                           json={"url": receiver.url(), "events": ["node.*"], "nodes": ["n1"]})
    assert response.status_code == 201
    created = response.json
    assert response.headers["Location"] == f"/v1/subscriptions/{created['id']}"
    assert created["id"].startswith("sub-") and created["active"] is True
    assert created["nodes"] == [n1["uuid"]] and created["events"] == ["node.*"]
    assert client.get(f"/v1/subscriptions/{created['id']}").json == created
    assert client.get("/v1/subscriptions").json["subscriptions"] == [created]
    assert client.delete(f"/v1/subscriptions/{created['id']}").status_code == 204
    missing = client.get(f"/v1/subscriptions/{created['id']}")
    assert missing.status_code == 404 and missing.json["code"] == "subscription_not_found"
    assert client.delete(f"/v1/subscriptions/{created['id']}").status_code == 404


@pytest.mark.parametrize("body, code", [
    ({"url": "http://127.0.0.1:9/", "events": []}, "validation_error"),
    ({"url": "http://127.0.0.1:9/", "events": ["node.warp_speed"]}, "validation_error"),
    ({"url": "http://127.0.0.1:9/", "events": ["request.*", "nope"]}, "validation_error"),
    ({"events": ["*"]}, "validation_error"),
    ({"url": "ftp://127.0.0.1/", "events": ["*"]}, "validation_error"),
    ({"url": "http://127.0.0.1:9/", "events": ["*"], "extra": 1}, "validation_error"),
    ({"url": "http://169.254.169.254/", "events": ["*"]}, "callback_url_denied"),
])
def test_bad_subscriptions_are_400(client, body, code) -> None:
    response = client.post("/v1/subscriptions", json=body)
    assert response.status_code == 400
    assert response.json["code"] == code
    assert client.get("/v1/subscriptions").json["subscriptions"] == []


def test_a_node_filter_naming_no_node_is_404(client) -> None:
    response = client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/", "events": ["*"],
                                                       "nodes": ["ghost"]})
    assert response.status_code == 404 and response.json["code"] == "node_not_found"


def test_event_patterns_and_node_filters(client, ctx, conductor_ctx, receiver) -> None:
    make_node(client, "n1")
    n2 = make_node(client, "n2")
    subscribe(client, receiver.url("/power-n1"), ["node.power_state.changed"], ["n1"])
    subscribe(client, receiver.url("/node-all"), ["node.*"])
    subscribe(client, receiver.url("/all-n2"), ["*"], [n2["uuid"]])
    subscribe(client, receiver.url("/finished"), ["request.finished"])
    put(client, "n1", "power", "power on")
    put(client, "n2", "power", "power on")
    drain(conductor_ctx)
    put(client, "n2", "provision", "manage")
    drain(conductor_ctx)
    client.patch("/v1/nodes/n1", json={"maintenance": True, "maintenance_reason": "disk"})
    drain_callbacks(ctx)

    def seen(path: str) -> set[tuple[str, str]]:
        return {(r.json["type"], r.json["data"]["node"]["name"]) for r in receiver.at(path)}

    power, provision = "node.power_state.changed", "node.provision_state.changed"
    assert seen("/power-n1") == {(power, "n1")}
    assert seen("/node-all") == {(power, "n1"), (power, "n2"), (provision, "n2"), ("node.maintenance", "n1")}
    assert seen("/all-n2") == {(power, "n2"), (provision, "n2"), ("request.finished", "n2")}
    assert seen("/finished") == {("request.finished", "n1"), ("request.finished", "n2")}
    assert len(receiver.at("/finished")) == 3
    transitions = [(r.json["data"]["previous"]["provision_state"], r.json["data"]["node"]["provision_state"],
                    r.json["data"]["event"]) for r in receiver.at("/all-n2") if r.json["type"] == provision]
    assert transitions == [("enroll", "verifying", "manage"), ("verifying", "manageable", "done")]
    powered = [r.json["data"] for r in receiver.at("/power-n1")]
    assert powered[-1]["previous"]["power_state"] == "power off"
    assert powered[-1]["node"]["power_state"] == "power on"
    assert powered[-1]["request"]["target"] == "power on"


def test_maintenance_events_only_when_it_changes(client, ctx, receiver) -> None:
    make_node(client, "n1")
    subscribe(client, receiver.url(), ["node.maintenance"])
    client.patch("/v1/nodes/n1", json={"maintenance": True, "maintenance_reason": "fans"})
    client.patch("/v1/nodes/n1", json={"maintenance": True})
    client.patch("/v1/nodes/n1", json={"name": "renamed"})
    client.patch("/v1/nodes/renamed", json={"maintenance": False})
    drain_callbacks(ctx)
    nodes = [r.json["data"]["node"] for r in receiver.received]
    assert [(n["maintenance"], n["maintenance_reason"]) for n in nodes] == [(True, "fans"), (False, None)]


def test_deliveries_are_written_with_the_change_or_not_at_all(client, ctx, receiver) -> None:
    make_node(client, "n1")
    make_node(client, "taken")
    subscribe(client, receiver.url(), ["*"])
    response = client.patch("/v1/nodes/n1", json={"maintenance": True, "name": "taken"})
    assert response.status_code == 409
    assert client.get("/v1/nodes/n1").json["maintenance"] is False
    assert deliveries(ctx) == []


def test_deliveries_are_in_order_per_subscription_and_node(client, ctx, conductor_ctx, receiver) -> None:
    make_node(client, "n1")
    make_node(client, "n2")
    subscribe(client, receiver.url(), ["*"])
    put(client, "n1", "power", "power on")
    drain(conductor_ctx)
    put(client, "n2", "power", "power on")
    drain(conductor_ctx)
    put(client, "n1", "power", "power off")
    drain(conductor_ctx)
    rows = deliveries(ctx)
    by_node: dict[str, list[str]] = {}
    for row in rows:
        by_node.setdefault(row.node_uuid, []).append(row.webhook_id)
    n1_ids, n2_ids = by_node.values()
    assert len(n1_ids) >= 4 and len(n2_ids) >= 2

    # The first delivery of n1 fails: later ones of n1 wait, n2's do not.
    receiver.script(500)
    deliver_due(ctx)
    assert [r.headers["webhook-id"] for r in receiver.received] == [n1_ids[0], n2_ids[0]]
    assert [r.status for r in receiver.received] == [500, 200]
    receiver.script(503, 500)
    drain_callbacks(ctx)
    order = [r.headers["webhook-id"] for r in receiver.received]
    n1_seen = [i for i in order if i in n1_ids]
    assert n1_seen[:3] == [n1_ids[0]] * 3  # retried until it got through ...
    assert list(dict.fromkeys(n1_seen)) == n1_ids  # ... and only then the rest, in order
    assert list(dict.fromkeys(i for i in order if i in n2_ids)) == n2_ids
    bodies = [r.json for r in receiver.received if r.headers["webhook-id"] in n1_ids and r.status == 200]
    assert [b["timestamp"] for b in bodies] == sorted(b["timestamp"] for b in bodies)


def test_410_disables_the_subscription_and_fails_its_pending_deliveries(client, ctx, conductor_ctx, receiver) -> None:
    make_node(client, "n1")
    sub = subscribe(client, receiver.url(), ["*"])
    put(client, "n1", "power", "power on")
    drain(conductor_ctx)
    receiver.script(410)
    drain_callbacks(ctx)
    assert len(receiver.received) == 1
    shown = client.get(f"/v1/subscriptions/{sub['id']}").json
    assert shown["active"] is False and "410" in shown["disabled_reason"]
    states = [d["state"] for d in client.get(f"/v1/subscriptions/{sub['id']}/deliveries").json["deliveries"]]
    assert states and set(states) == {"failed"}
    put(client, "n1", "power", "power off")
    drain(conductor_ctx)
    drain_callbacks(ctx)
    assert len(receiver.received) == 1  # a disabled subscription gets nothing more


def test_deleting_a_subscription_fails_its_pending_deliveries(client, ctx, conductor_ctx, receiver) -> None:
    make_node(client, "n1")
    sub = subscribe(client, receiver.url(), ["*"])
    put(client, "n1", "power", "power on")
    drain(conductor_ctx)
    assert {d.state for d in deliveries(ctx)} == {"pending"}
    client.delete(f"/v1/subscriptions/{sub['id']}")
    drain_callbacks(ctx)
    assert receiver.received == []
    rows = deliveries(ctx)
    assert rows and {(d.state, d.last_error) for d in rows} == {("failed", "The subscription was deleted.")}


def test_delivery_status_is_listed_newest_first_in_pages(client, ctx, conductor_ctx, receiver) -> None:
    make_node(client, "n1")
    sub = subscribe(client, receiver.url(), ["*"])
    put(client, "n1", "power", "power on")
    drain(conductor_ctx)
    receiver.script(500)
    deliver_due(ctx)
    listed = client.get(f"/v1/subscriptions/{sub['id']}/deliveries").json["deliveries"]
    oldest = listed[-1]
    assert oldest["state"] == "pending" and oldest["attempts"] == 1 and oldest["last_status"] == 500
    assert oldest["next_at"] is not None and oldest["event_type"] == "node.power_state.changed"
    assert all(d["attempts"] == 0 for d in listed[:-1])
    page = client.get(f"/v1/subscriptions/{sub['id']}/deliveries?limit=1").json
    assert page["deliveries"] == listed[:1] and page["next"]
    second = client.get(page["next"]).json
    assert second["deliveries"] == listed[1:2]
    bad = client.get(f"/v1/subscriptions/{sub['id']}/deliveries?marker=msg_nope")
    assert bad.status_code == 400


def test_abort_is_a_provision_event_and_its_request_calls_back(client, ctx, receiver) -> None:
    make_node(client, "n1")
    subscribe(client, receiver.url("/sub"), ["node.provision_state.changed"])
    with ctx.db.begin() as session:
        session.execute(sa.update(Node).values(provision_state="clean wait"))
    response = client.put("/v1/nodes/n1/states/provision",
                          json={"target": "abort", "callback_url": receiver.url("/own")})
    assert response.status_code == 202 and response.json["state"] == "succeeded"
    assert response.json["callback"]["state"] == "pending"
    drain_callbacks(ctx)
    (event,) = [r.json for r in receiver.at("/sub")]
    assert event["data"]["previous"] == {"provision_state": "clean wait"}
    assert event["data"]["node"]["provision_state"] == "clean failed" and event["data"]["event"] == "abort"
    (own,) = [r.json for r in receiver.at("/own")]
    assert own["type"] == "request.finished" and own["data"]["request"]["target"] == "abort"
    assert client.get(f"/v1/requests/{response.json['id']}").json["callback"]["state"] == "delivered"


def test_subscriptions_belong_to_their_creator(client, ctx, receiver) -> None:
    from tests.conftest import bearer, make_token

    alice, bob = bearer(make_token(ctx, "operator", "alice")), bearer(make_token(ctx, "operator", "bob"))
    created = client.post("/v1/subscriptions", json={"url": receiver.url("/a?key=s3cret"), "events": ["*"]},
                          headers=alice)
    assert created.status_code == 201
    sub_id = created.json["id"]
    assert client.get("/v1/subscriptions", headers=bob).json["subscriptions"] == []
    assert client.get(f"/v1/subscriptions/{sub_id}", headers=bob).status_code == 404
    assert client.delete(f"/v1/subscriptions/{sub_id}", headers=bob).status_code == 404
    assert [s["id"] for s in client.get("/v1/subscriptions", headers=alice).json["subscriptions"]] == [sub_id]
    assert client.get(f"/v1/subscriptions/{sub_id}").status_code == 200  # admin sees all


def test_revoking_a_token_stops_its_subscriptions(client, ctx, receiver) -> None:
    created = client.post("/v1/tokens", json={"role": "operator", "name": "leaving"}).json
    operator = {"Authorization": f"Bearer {created['token']}"}
    sub_id = client.post("/v1/subscriptions", json={"url": receiver.url("/x"), "events": ["*"]},
                         headers=operator).json["id"]
    assert client.delete(f"/v1/tokens/{created['id']}").status_code == 200
    shown = client.get(f"/v1/subscriptions/{sub_id}").json
    assert shown["active"] is False and "revoked" in shown["disabled_reason"]
